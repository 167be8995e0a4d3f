/// @brief HRNet backbone (mmpose `backbones/hrnet.py` structure, names and forward), configurable:
/// W32 and W48 as in the DEKR configs, and a tiny variant for fast tests.
///
/// Structure: stem (two 3x3 s2 conv+BN+ReLU, 64 ch) -> layer1 (Bottlenecks) -> transition1 ->
/// stage2 -> transition2 -> stage3 -> transition3 -> stage4 (multiscale output). Each stage is a
/// sequence of HRModules: per-branch BasicBlocks, then fuse layers
///   y_i = relu( sum_j f_ij(x_j) ),  f_ii = id,
///   f_ij (j > i) = nearest-upsample x2^(j-i) of BN(conv1x1(x_j)),
///   f_ij (j < i) = (i-j) 3x3 stride-2 conv+BN, with ReLU between them but not after the last.
/// A transition for a new branch reads the LAST branch of the previous stage (as mmpose does).
/// Parameter names: `backbone.conv1.weight`, `backbone.layer1.0.downsample.0.weight`,
/// `backbone.transition1.1.0.0.weight`, `backbone.stage2.0.branches.1.0.conv1.weight`,
/// `backbone.stage3.0.fuse_layers.2.0.1.0.weight` ... exactly as in mmpose's state dict.
/// Gradient contract: backward() takes the output gradients (moved in) and accumulates (+=) every
/// parameter gradient; the image gradient is not formed.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "ampkit/nn/branch_scope.hpp"
#include "ampkit/nn/conv_bn.hpp"
#include "ampkit/nn/ops/concat.hpp"
#include "ampkit/nn/ops/elementwise.hpp"
#include "ampkit/nn/ops/upsample_nearest.hpp"
#include "ampkit/nn/residual_blocks.hpp"

namespace ampkit::models {

/// One HRNet stage made of BasicBlock branches (stages 2-4).
struct HRNetStage {
  int n_modules = 1;
  std::vector<int> n_blocks;             ///< blocks per branch
  std::vector<std::int64_t> channels;    ///< channels per branch
  bool multiscale_output = true;         ///< last module outputs every branch (DEKR: true)
  int n_branches() const { return static_cast<int>(channels.size()); }
};

struct HRNetConfig {
  std::int64_t in_channels = 3;
  std::int64_t stem_channels = 64;       ///< mmpose hard-codes 64; the tiny test variant narrows it
  int stage1_blocks = 4;                 ///< Bottlenecks in layer1
  std::int64_t stage1_channels = 64;     ///< Bottleneck planes (output = 4x)
  HRNetStage stage2, stage3, stage4;

  /// The `extra` of mmpose's HRNet with base width w (32 or 48).
  static HRNetConfig width(std::int64_t w) {
    HRNetConfig c;
    c.stage2 = {1, {4, 4}, {w, 2 * w}, true};
    c.stage3 = {4, {4, 4, 4}, {w, 2 * w, 4 * w}, true};
    c.stage4 = {3, {4, 4, 4, 4}, {w, 2 * w, 4 * w, 8 * w}, true};
    return c;
  }
  static HRNetConfig w32() { return width(32); }
  static HRNetConfig w48() { return width(48); }
  /// A few thousand parameters with the full topology (branch widths must extend the previous
  /// stage's: mmpose feeds a changed-width transition from the LAST branch) (every fuse kind, 2 modules in stage 4,
  /// a 2-block branch, downsample in layer1): for golden tests at small inputs.
  static HRNetConfig tiny() {
    HRNetConfig c;
    c.stem_channels = 8;
    c.stage1_blocks = 1;
    c.stage1_channels = 4;
    c.stage2 = {1, {2, 1}, {4, 8}, true};
    c.stage3 = {1, {1, 1, 1}, {4, 8, 8}, true};
    c.stage4 = {2, {1, 1, 1, 1}, {4, 8, 8, 8}, true};
    return c;
  }
  /// Channels of the concatenated multiscale output (480 for W32, 720 for W48).
  std::int64_t output_channels() const {
    std::int64_t s = 0;
    for (auto ch : stage4.channels) s += ch;
    return s;
  }
};

/// One high-resolution module: parallel BasicBlock branches and the fuse layers.
template <PrecisionPolicy P, class Backend>
class HRModule {
 public:
  using T = storage_t<P>;
  using Store = nn::ParameterStore<P, Backend>;
  template <class U>
  using Tensor = typename Store::template Tensor<U>;
  using Block = nn::BasicBlock<P, Backend>;
  using ConvBn = nn::ConvBn<P, Backend>;

  /// @param in_channels  channels of each incoming branch
  HRModule(Store& s, const std::string& prefix, const std::vector<std::int64_t>& in_channels, const HRNetStage& st,
           bool multiscale_output, nn::ConvInit init)
      : store_(&s), n_branches_(st.n_branches()), channels_(st.channels) {
    AMPKIT_CHECK(static_cast<int>(in_channels.size()) == n_branches_ &&
                     static_cast<int>(st.n_blocks.size()) == n_branches_,
                 "HRModule '", prefix, "': ", n_branches_, " branches but ", in_channels.size(), " inputs and ",
                 st.n_blocks.size(), " block counts");
    branches_.resize(static_cast<std::size_t>(n_branches_));
    for (int b = 0; b < n_branches_; ++b) {
      std::int64_t in = in_channels[b];
      for (int k = 0; k < st.n_blocks[b]; ++k) {
        branches_[b].emplace_back(s, prefix + ".branches." + std::to_string(b) + "." + std::to_string(k), in,
                                  st.channels[b], 1, init);
        in = st.channels[b];
      }
    }
    n_out_ = n_branches_ == 1 ? 1 : (multiscale_output ? n_branches_ : 1);
    if (n_branches_ > 1) {
      fuse_.resize(static_cast<std::size_t>(n_out_));
      for (int i = 0; i < n_out_; ++i) {
        fuse_[i].resize(static_cast<std::size_t>(n_branches_));
        for (int j = 0; j < n_branches_; ++j) {
          const std::string f = prefix + ".fuse_layers." + std::to_string(i) + "." + std::to_string(j);
          auto& link = fuse_[i][j];
          if (j > i) {
            link.up.emplace(s, f + ".0", f + ".1", nn::ConvSpec{st.channels[j], st.channels[i], 1, 1},
                            BatchNormEpilogue::kNone, init);
            link.scale = 1 << (j - i);
          } else if (j < i) {
            for (int k = 0; k < i - j; ++k) {
              const bool last = k == i - j - 1;
              const std::string fk = f + "." + std::to_string(k);
              link.down.emplace_back(s, fk + ".0", fk + ".1",
                                     nn::ConvSpec{st.channels[j], last ? st.channels[i] : st.channels[j], 3, 2},
                                     last ? BatchNormEpilogue::kNone : BatchNormEpilogue::kRelu, init);
            }
          }
        }
      }
    }
  }

  int n_outputs() const { return n_out_; }
  std::int64_t out_channels(int i) const { return channels_[static_cast<std::size_t>(i)]; }

  /// Branch inputs in, fused outputs out (views of tensors this module keeps).
  /// The branches run concurrently where the backend has streams (nn::BranchScope), and so may
  /// the fuse layers' outputs (each reads every branch output and writes only its own sum; off by
  /// default, nn::kDefaultBranchSites says why); the first call runs them in order, so that
  /// benchmark mode times its algorithms on a quiet device.
  std::vector<TensorView<const T>> forward(Backend& ctx, const std::vector<TensorView<const T>>& xs, bool training) {
    AMPKIT_CHECK(static_cast<int>(xs.size()) == n_branches_, "HRModule: ", xs.size(), " inputs, ", n_branches_,
                 " branches");
    const bool concurrent = forward_calls_++ > 0;
    std::vector<TensorView<const T>> bo(xs);
    {
      Branches scope(ctx, *store_, n_branches_, concurrent, nn::kBranchModuleForward);
      for (int b = 0; b < n_branches_; ++b) {
        scope.enter(b);
        for (auto& blk : branches_[b]) bo[b] = blk.forward(ctx, bo[b], training);
      }
      scope.join();
    }
    if (n_branches_ == 1) return bo;
    y_.resize(static_cast<std::size_t>(n_out_));
    std::vector<TensorView<const T>> out;
    Branches fuse(ctx, *store_, n_out_, concurrent, nn::kBranchFuseForward);
    for (int i = 0; i < n_out_; ++i) {
      fuse.enter(i);
      std::vector<Tensor<T>> temps;  // upsampled terms; freed after the sum
      std::vector<TensorView<const T>> terms;
      for (int j = 0; j < n_branches_; ++j) {
        auto& link = fuse_[i][j];
        if (j == i) {
          terms.push_back(bo[j]);
        } else if (j > i) {
          const auto z = link.up->forward(ctx, bo[j], training);
          temps.push_back(ctx.template tensor<T>(bo[i].shape));
          upsample_nearest_forward(ctx, z, temps.back().view(), link.scale);
          link.up->release_output();  // read once, by the upsample; no backward needs it
          terms.push_back(temps.back().cview());
        } else {
          TensorView<const T> h = bo[j];
          for (auto& c : link.down) h = c.forward(ctx, h, training);
          // The chain's inner conv+BN+ReLU outputs: read by the next conv of the chain only.
          for (std::size_t k = 0; k + 1 < link.down.size(); ++k)
            nn::recompute_after_forward(link.down[k], link.down[k + 1]);
          terms.push_back(h);
        }
      }
      if (y_[i].shape() != bo[i].shape) y_[i] = ctx.template tensor<T>(bo[i].shape);
      sum_relu_forward(ctx, std::span<const TensorView<const T>>(terms), y_[i].view());
      // The down chains' last (plain) BN outputs were read only by the sum; its backward needs
      // y_[i] for the mask, and the BN backward needs its input, not its output.
      for (int j = 0; j < i; ++j) fuse_[i][j].down.back().release_output();
      out.push_back(y_[i].cview());
    }
    fuse.join();
    return out;
  }

  /// Output gradients in (moved; WRITTEN in place as the ReLU gradient), branch-input gradients out.
  std::vector<Tensor<T>> backward(Backend& ctx, std::vector<Tensor<T>> dL_dys) {
    AMPKIT_CHECK(static_cast<int>(dL_dys.size()) == n_out_, "HRModule::backward: ", dL_dys.size(),
                 " gradients for ", n_out_, " outputs");
    std::vector<Tensor<T>> dbo(static_cast<std::size_t>(n_branches_));
    if (n_branches_ == 1) {
      dbo[0] = std::move(dL_dys[0]);
    } else {
      for (int i = 0; i < n_out_; ++i) {
        auto& g = dL_dys[i];
        relu_backward(ctx, y_[i].cview(), g.cview(), g.view());
        for (int j = 0; j < n_branches_; ++j) {
          if (j == i) continue;
          auto& link = fuse_[i][j];
          if (j > i) {
            auto dz = ctx.template tensor<T>(link.up->output_shape());
            upsample_nearest_backward(ctx, g.cview(), dz.view(), link.scale);
            nn::add_into(ctx, dbo[j], link.up->backward(ctx, dz.cview()));
          } else {
            auto& dn = link.down;
            const int n = static_cast<int>(dn.size());
            // recompute_bn_outputs: each inner output is rebuilt before the next conv's backward;
            // with recompute_conv_outputs a rebuild reads the previous one: front to back first.
            if (dn.front().rebuild_reads_input())
              for (int k = 1; k < n; ++k) nn::rebuild_before_backward(ctx, dn[k - 1], dn[k]);
            if (n > 1) nn::rebuild_before_backward(ctx, dn[n - 2], dn[n - 1]);
            Tensor<T> d = dn.back().backward(ctx, g.cview());
            for (int k = n - 2; k >= 0; --k) {
              if (k > 0) nn::rebuild_before_backward(ctx, dn[k - 1], dn[k]);
              d = dn[k].backward(ctx, d.cview());
            }
            nn::add_into(ctx, dbo[j], std::move(d));
          }
        }
        nn::add_into(ctx, dbo[i], std::move(g));  // the identity term, last: g was read above
      }
    }
    for (int b = 0; b < n_branches_; ++b)
      AMPKIT_CHECK(!nn::is_empty(dbo[b]), "HRModule::backward: branch ", b, " received no gradient");
    // The branches' backward may run concurrently too (site kBranchModuleBackward, off by
    // default: nn::kDefaultBranchSites). The fuse layers' backward above stays in order: every
    // output's gradient is added into several branches' dbo.
    Branches scope(ctx, *store_, n_branches_, backward_calls_++ > 0, nn::kBranchModuleBackward);
    for (int b = 0; b < n_branches_; ++b) {
      scope.enter(b);
      for (int k = static_cast<int>(branches_[b].size()) - 1; k >= 0; --k)
        dbo[b] = branches_[b][k].backward(ctx, dbo[b].cview());
    }
    scope.join();
    return dbo;
  }

 private:
  using Branches = nn::BranchScope<Backend, Store>;
  struct FuseLink {
    std::optional<ConvBn> up;  ///< j > i: conv1x1 + BN, then upsample by `scale`
    int scale = 1;
    std::vector<ConvBn> down;  ///< j < i: chain of 3x3 stride-2 conv+BN(+ReLU)
  };
  const Store* store_ = nullptr;  ///< for BranchScope (gradient-ready notifications held per fork)
  int forward_calls_ = 0, backward_calls_ = 0;
  int n_branches_ = 0, n_out_ = 0;
  std::vector<std::int64_t> channels_;
  std::vector<std::vector<Block>> branches_;
  std::vector<std::vector<FuseLink>> fuse_;
  std::vector<Tensor<T>> y_;
};

/// The HRNet backbone. Registers `prefix.*` parameters (prefix "backbone" in DEKR).
template <PrecisionPolicy P, class Backend>
class HRNet {
 public:
  using T = storage_t<P>;
  using Store = nn::ParameterStore<P, Backend>;
  template <class U>
  using Tensor = typename Store::template Tensor<U>;
  using ConvBn = nn::ConvBn<P, Backend>;
  using Module = HRModule<P, Backend>;

  HRNet(Store& s, const std::string& prefix, const HRNetConfig& cfg, nn::ConvInit init = {}) : cfg_(cfg) {
    const std::int64_t st = cfg.stem_channels;
    stem1_ = ConvBn(s, prefix + ".conv1", prefix + ".bn1", {cfg.in_channels, st, 3, 2}, BatchNormEpilogue::kRelu, init);
    stem2_ = ConvBn(s, prefix + ".conv2", prefix + ".bn2", {st, st, 3, 2}, BatchNormEpilogue::kRelu, init);
    const std::int64_t l1_out = cfg.stage1_channels * nn::Bottleneck<P, Backend>::kExpansion;
    std::int64_t in = st;
    for (int k = 0; k < cfg.stage1_blocks; ++k) {
      layer1_.emplace_back(s, prefix + ".layer1." + std::to_string(k), in, l1_out, 1, init);
      in = l1_out;
    }
    std::vector<std::int64_t> pre{l1_out};
    const HRNetStage* stages[3] = {&cfg.stage2, &cfg.stage3, &cfg.stage4};
    for (int t = 0; t < 3; ++t) {
      const HRNetStage& stg = *stages[t];
      transitions_[t] = make_transition(s, prefix + ".transition" + std::to_string(t + 1), pre, stg.channels, init);
      std::vector<std::int64_t> ch = stg.channels;
      for (int m = 0; m < stg.n_modules; ++m) {
        const bool ms = stg.multiscale_output || m + 1 < stg.n_modules;
        stages_[t].emplace_back(s, prefix + ".stage" + std::to_string(t + 2) + "." + std::to_string(m), ch, stg, ms,
                                init);
      }
      pre = stg.channels;
    }
  }

  const HRNetConfig& config() const { return cfg_; }

  /// image (N,H,W,3) -> the stage-4 outputs at 1/4, 1/8, 1/16, 1/32 (views kept by this net).
  std::vector<TensorView<const T>> forward(Backend& ctx, TensorView<const T> image, bool training) {
    auto h = stem1_.forward(ctx, image, training);
    h = stem2_.forward(ctx, h, training);
    nn::recompute_after_forward(stem1_, stem2_);  // (recompute_bn_outputs; rebuilt in backward)
    for (auto& b : layer1_) h = b.forward(ctx, h, training);
    if (!layer1_.empty()) nn::recompute_after_forward(stem2_, layer1_.front());
    std::vector<TensorView<const T>> ys{h};
    for (int t = 0; t < 3; ++t) {
      std::vector<TensorView<const T>> xs;
      for (std::size_t i = 0; i < transitions_[t].size(); ++i) {
        if (transitions_[t][i].empty()) {
          xs.push_back(ys[i]);
        } else {
          TensorView<const T> x = ys.back();
          for (auto& c : transitions_[t][i]) x = c.forward(ctx, x, training);
          xs.push_back(x);
        }
      }
      for (auto& m : stages_[t]) xs = m.forward(ctx, xs, training);
      ys = std::move(xs);
    }
    return ys;
  }

  /// Gradients of the outputs in (moved); every parameter gradient accumulated.
  void backward(Backend& ctx, std::vector<Tensor<T>> dL_dys) {
    for (int t = 2; t >= 0; --t) {
      for (int m = static_cast<int>(stages_[t].size()) - 1; m >= 0; --m)
        dL_dys = stages_[t][m].backward(ctx, std::move(dL_dys));
      // Undo the transition: identity branches pass through, new/changed ones go through their
      // convs into the previous stage's last branch.
      const std::size_t n_pre = t == 0 ? 1 : stages_[t - 1].back().n_outputs();
      std::vector<Tensor<T>> prev(n_pre);
      std::vector<Tensor<T>> via_transition;
      for (std::size_t i = 0; i < transitions_[t].size(); ++i) {
        if (transitions_[t][i].empty()) {
          nn::add_into(ctx, prev[i], std::move(dL_dys[i]));
        } else {
          auto& chain = transitions_[t][i];
          Tensor<T> d = chain.back().backward(ctx, dL_dys[i].cview());
          for (int k = static_cast<int>(chain.size()) - 2; k >= 0; --k) d = chain[k].backward(ctx, d.cview());
          via_transition.push_back(std::move(d));
        }
      }
      for (auto& d : via_transition) nn::add_into(ctx, prev.back(), std::move(d));
      dL_dys = std::move(prev);
    }
    Tensor<T> d = std::move(dL_dys[0]);
    for (int k = static_cast<int>(layer1_.size()) - 1; k >= 0; --k) {
      if (k == 0) {
        // The stem's outputs (recompute_bn_outputs): stem2's is read by layer1.0, stem1's by stem2;
        // with recompute_conv_outputs rebuilding stem2's output reads stem1's: that one first.
        if (stem2_.rebuild_reads_input()) nn::rebuild_before_backward(ctx, stem1_, stem2_);
        nn::rebuild_before_backward(ctx, stem2_, layer1_.front());
      }
      d = layer1_[k].backward(ctx, d.cview());
    }
    nn::rebuild_before_backward(ctx, stem1_, stem2_);
    d = stem2_.backward(ctx, d.cview());
    stem1_.backward(ctx, d.cview(), /*need_dx=*/false);
  }

 private:
  static std::vector<std::vector<ConvBn>> make_transition(Store& s, const std::string& name,
                                                          const std::vector<std::int64_t>& pre,
                                                          const std::vector<std::int64_t>& cur, nn::ConvInit init) {
    std::vector<std::vector<ConvBn>> t(cur.size());
    for (std::size_t i = 0; i < cur.size(); ++i) {
      const std::string f = name + "." + std::to_string(i);
      if (i < pre.size()) {
        if (cur[i] != pre[i])
          t[i].emplace_back(s, f + ".0", f + ".1", nn::ConvSpec{pre[i], cur[i], 3, 1}, BatchNormEpilogue::kRelu, init);
      } else {
        for (std::size_t j = 0; j < i + 1 - pre.size(); ++j) {
          const std::int64_t in = pre.back();
          const std::int64_t out = j == i - pre.size() ? cur[i] : in;
          const std::string fj = f + "." + std::to_string(j);
          t[i].emplace_back(s, fj + ".0", fj + ".1", nn::ConvSpec{in, out, 3, 2}, BatchNormEpilogue::kRelu, init);
        }
      }
    }
    return t;
  }

  HRNetConfig cfg_;
  ConvBn stem1_, stem2_;
  std::vector<nn::Bottleneck<P, Backend>> layer1_;
  std::array<std::vector<std::vector<ConvBn>>, 3> transitions_;
  std::array<std::vector<Module>, 3> stages_;
};

}  // namespace ampkit::models

/// @brief DEKR (HRNet backbone + concat neck + DEKR head), as mmpose's
/// `dekr_hrnet-w32_8xb10-140e_coco-512x512` builds it: structure, parameter names, initialisation.
///
/// Neck: the 4 backbone outputs resized bilinearly (align_corners=False) to the 1/4 map and
/// concatenated (480 ch for W32, 720 for W48).
/// Heatmap branch (`head.heatmap_conv_layers`): 0 ConvModule 1x1 (conv+BN+ReLU) -> 1 BasicBlock ->
///   2 conv1x1 with bias -> K+1 maps, the root (center) map LAST.
/// Displacement branch (`head.displacement_conv_layers`): 0 ConvModule 1x1 -> K*F channels,
///   1, 2 AdaptiveActivationBlock (groups K) -> 3 grouped conv1x1 with bias -> 2K channels
///   (dx, dy of keypoint k at 2k, 2k+1).
/// AdaptiveActivationBlock (mmpose): affine = conv3x3(x, groups K, bias) (6K ch) -> per-pixel 2x3
///   matrices -> deformable-conv offsets (nn/ops/affine_offsets.hpp) -> adapt_conv = deform conv
///   3x3 (groups K, offset groups K, no bias) -> BN -> relu(. + x).
/// Init (mmpose defaults; the backbone would load ImageNet weights, see load_weights()):
///   every Conv2d Normal(0, 0.001) with bias 0, BN weight 1 / bias 0; the deformable conv keeps
///   mmcv's kaiming_uniform_(nonlinearity='relu'): U(-b, b) with b = sqrt(6 / fan_in),
///   fan_in = (C/groups)*9 (mmengine's init_cfg matches layers by class name and DeformConv2d is
///   not a Conv2d).
/// The rescore net (inference-only, a separate pretrained checkpoint) is not part of this model.
#pragma once

#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "ampkit/models/hrnet.hpp"
#include "ampkit/nn/ops/affine_offsets.hpp"
#include "ampkit/nn/ops/concat.hpp"
#include "ampkit/nn/ops/deform_conv2d.hpp"

namespace ampkit::models {

struct DekrConfig {
  HRNetConfig backbone = HRNetConfig::w32();
  int n_keypoints = 17;
  std::int64_t heatmap_filters = 32;             ///< num_heatmap_filters
  std::int64_t displacement_filters_per_kpt = 15;  ///< num_displacement_filters_per_keypoint
  /// Free every ConvBn's conv output after forward and recompute it in backward
  /// (nn::ParameterStore::set_recompute_conv_outputs): ~40 % fewer activations for one more
  /// forward conv per ConvBn; gradients unchanged (nn/conv_bn.hpp, ConvBn::backward).
  bool recompute_conv_outputs = false;
  /// Free the conv+BN+ReLU outputs read only inside their block / chain / head branch and rebuild
  /// them in backward from the kept BN input and the saved batch statistics
  /// (nn::ParameterStore::set_recompute_bn_outputs, nn/conv_bn.hpp BatchNorm::drop_output): one
  /// elementwise pass each, bit-identical, so on by default (false reproduces older peaks).
  bool recompute_bn_outputs = true;

  static DekrConfig w32() { return {}; }
  static DekrConfig w48() { return {HRNetConfig::w48(), 17, 48, 15, false}; }
  /// For golden tests: tiny backbone, 4 heatmap filters, 2 displacement filters per keypoint.
  static DekrConfig tiny() { return {HRNetConfig::tiny(), 17, 4, 2, false}; }
  static DekrConfig by_name(const std::string& name) {
    if (name == "w32") return w32();
    if (name == "w48") return w48();
    if (name == "tiny") return tiny();
    AMPKIT_FAIL("unknown DEKR variant '", name, "': use w32, w48 or tiny");
  }
};

/// mmpose's AdaptiveActivationBlock (in = out channels, groups = keypoints).
template <PrecisionPolicy P, class Backend>
class AdaptiveActivationBlock {
 public:
  using T = storage_t<P>;
  using Store = nn::ParameterStore<P, Backend>;
  template <class U>
  using Tensor = typename Store::template Tensor<U>;

  AdaptiveActivationBlock(Store& s, const std::string& prefix, std::int64_t channels, int groups)
      : store_(&s),
        transform_(s, prefix + ".transform_matrix_conv", nn::ConvSpec{channels, 6 * groups, 3, 1, 1, groups}, true),
        groups_(groups) {
    AMPKIT_CHECK(channels % groups == 0, "AdaptiveActivationBlock '", prefix, "': ", channels,
                 " channels not divisible by ", groups, " groups");
    const std::int64_t cg = channels / groups;
    // mmcv DeformConv2d.init_weights: kaiming_uniform_(relu) -> bound = sqrt(2) * sqrt(3 / fan_in).
    const float bound = std::sqrt(6.f / static_cast<float>(cg * 9));
    adapt_w_ = s.add(prefix + ".adapt_conv.weight", {channels, 3, 3, cg}, Shape{channels, 3, 3, cg}, nn::ParamKind::kCompute,
                     nn::ParamInit::uniform(bound));
    bn_ = nn::BatchNorm<P, Backend>(s, prefix + ".norm", channels, BatchNormEpilogue::kAddRelu);
    params_.groups = groups;
    params_.offset_groups = groups;
  }

  TensorView<const T> forward(Backend& ctx, TensorView<const T> x, bool training) {
    x_ = x;
    const auto affine = transform_.forward(ctx, x);  // (N,H,W,6G)
    const Shape os{x.shape.n, x.shape.h, x.shape.w, 18 * groups_};
    if (offsets_.shape() != os) offsets_ = ctx.template tensor<T>(os);
    affine_offsets_forward(ctx, affine, offsets_.view());
    // The affine maps are read only here: the offsets op is linear (its backward takes dL_doff
    // alone) and the transform conv's backward reads x, so the (N,H,W,6G) output is freed now.
    transform_.release_output();
    const Shape ds = deform_conv2d_output_shape(x.shape, x.shape.c, params_);
    if (d_.shape() != ds) d_ = ctx.template tensor<T>(ds);
    deform_conv2d_forward(ctx, x, offsets_.cview(), store_->weight(adapt_w_), d_.view(), params_);
    return bn_.forward(ctx, d_.cview(), training, x);
  }

  Tensor<T> backward(Backend& ctx, TensorView<const T> dL_dy) {
    AMPKIT_CHECK(x_.data != nullptr, "AdaptiveActivationBlock::backward: the input was freed after forward "
                                     "(forget_input) and not rebuilt (rebind_input)");
    auto dL_dd = bn_.backward(ctx, dL_dy);
    auto dL_dres = bn_.take_dL_dresidual();
    auto dL_dx = ctx.template tensor<T>(x_.shape);
    auto dL_doff = ctx.template tensor<T>(offsets_.shape());
    deform_conv2d_backward(ctx, x_, offsets_.cview(), store_->weight(adapt_w_), dL_dd.cview(), dL_dx.view(),
                           dL_doff.view(), store_->weight_grad(adapt_w_), params_);
    store_->notify_grads_ready(adapt_w_);
    // Each intermediate gradient goes back to the allocator as soon as its one reader is issued
    // (stream order makes the reuse safe): this block's backward is where the displacement
    // branch peaks (bench/results/memory_plan_w32_breakdown.md).
    dL_dd = Tensor<T>();
    auto dL_daff = ctx.template tensor<T>(transform_.output_shape());
    affine_offsets_backward(ctx, dL_doff.cview(), dL_daff.view());
    dL_doff = Tensor<T>();
    auto d2 = transform_.backward(ctx, dL_daff.cview());
    dL_daff = Tensor<T>();
    nn::accumulate(ctx, dL_dx.view(), d2.cview());
    nn::accumulate(ctx, dL_dx.view(), dL_dres.cview());
    return dL_dx;
  }

  /// Input recompute (nn/conv_bn.hpp recompute_after_forward): the block's backward reads its
  /// input in the deformable conv's and the transform conv's backward (the residual only in forward).
  void forget_input() {
    x_.data = nullptr;
    transform_.forget_input();
  }
  void rebind_input(TensorView<const T> x) {
    check_shape("AdaptiveActivationBlock::rebind_input", "x", x, x_.shape);
    x_ = x;
    transform_.rebind_input(x);
  }

  std::size_t saved_bytes() const {
    return transform_.saved_bytes() + static_cast<std::size_t>(offsets_.numel() + d_.numel()) * sizeof(T) +
           bn_.saved_bytes();
  }

 private:
  Store* store_;
  nn::Conv<P, Backend> transform_;
  int groups_;
  nn::ParamId adapt_w_;
  nn::BatchNorm<P, Backend> bn_;
  DeformConv2dParams params_;
  TensorView<const T> x_;
  Tensor<T> offsets_, d_;
};

/// DEKR head: the heatmap and displacement branches on the concatenated feature map.
template <PrecisionPolicy P, class Backend>
class DekrHead {
 public:
  using T = storage_t<P>;
  using Store = nn::ParameterStore<P, Backend>;
  template <class U>
  using Tensor = typename Store::template Tensor<U>;

  DekrHead(Store& s, const std::string& prefix, std::int64_t in, const DekrConfig& cfg) : store_(&s) {
    const std::string h = prefix + ".heatmap_conv_layers", d = prefix + ".displacement_conv_layers";
    const std::int64_t fh = cfg.heatmap_filters, k = cfg.n_keypoints, fd = k * cfg.displacement_filters_per_kpt;
    heat0_ = nn::ConvBn<P, Backend>(s, h + ".0.conv", h + ".0.bn", {in, fh, 1, 1}, BatchNormEpilogue::kRelu);
    heat1_.emplace(s, h + ".1", fh, fh);
    heat2_ = nn::Conv<P, Backend>(s, h + ".2", {fh, k + 1, 1, 1}, true);
    disp0_ = nn::ConvBn<P, Backend>(s, d + ".0.conv", d + ".0.bn", {in, fd, 1, 1}, BatchNormEpilogue::kRelu);
    disp1_.emplace(s, d + ".1", fd, static_cast<int>(k));
    disp2_.emplace(s, d + ".2", fd, static_cast<int>(k));
    disp3_ = nn::Conv<P, Backend>(s, d + ".3", {fd, 2 * k, 1, 1, 0, k}, true);
  }

  /// x (N,H,W,C_in) -> heatmaps (N,H,W,K+1), displacements (N,H,W,2K). The two branches run
  /// concurrently where the backend has streams (nn::BranchScope; in order on the first call).
  std::pair<TensorView<const T>, TensorView<const T>> forward(Backend& ctx, TensorView<const T> x, bool training) {
    nn::BranchScope<Backend, Store> scope(ctx, *store_, 2, forward_calls_++ > 0, nn::kBranchHeadForward);
    scope.enter(0);
    auto hm = heat0_.forward(ctx, x, training);
    hm = heat1_->forward(ctx, hm, training);
    // recompute_bn_outputs: the first ConvModule's output of each branch is read by the next
    // block only (rebuilt before its backward).
    nn::recompute_after_forward(heat0_, *heat1_);
    hm = heat2_.forward(ctx, hm);
    scope.enter(1);
    auto ds = disp0_.forward(ctx, x, training);
    ds = disp1_->forward(ctx, ds, training);
    nn::recompute_after_forward(disp0_, *disp1_);
    ds = disp2_->forward(ctx, ds, training);
    ds = disp3_.forward(ctx, ds);
    scope.join();
    return {hm, ds};
  }

  /// In order, the displacement branch first: its backward (two deformable blocks) is the step's
  /// peak, and run first it does not have the heatmap branch's input gradient (the 480-channel
  /// neck size) held across it. Run concurrently (site kBranchHeadBackward, off by default:
  /// nn::kDefaultBranchSites) that gradient is held across part of it: the price of the overlap.
  /// The sum at the end is the same either way (a + b == b + a in IEEE).
  Tensor<T> backward(Backend& ctx, TensorView<const T> dL_dheatmaps, TensorView<const T> dL_ddisplacements) {
    Tensor<T> dL_dx, g_heat;
    {
      nn::BranchScope<Backend, Store> scope(ctx, *store_, 2, backward_calls_++ > 0, nn::kBranchHeadBackward);
      scope.enter(0);
      auto g = disp3_.backward(ctx, dL_ddisplacements);
      g = disp2_->backward(ctx, g.cview());
      nn::rebuild_before_backward(ctx, disp0_, *disp1_);
      g = disp1_->backward(ctx, g.cview());
      dL_dx = disp0_.backward(ctx, g.cview());
      scope.enter(1);
      g_heat = heat2_.backward(ctx, dL_dheatmaps);
      nn::rebuild_before_backward(ctx, heat0_, *heat1_);
      g_heat = heat1_->backward(ctx, g_heat.cview());
      g_heat = heat0_.backward(ctx, g_heat.cview());
      scope.join();
    }
    nn::accumulate(ctx, dL_dx.view(), g_heat.cview());
    return dL_dx;
  }

 private:
  const Store* store_;
  int forward_calls_ = 0, backward_calls_ = 0;
  nn::ConvBn<P, Backend> heat0_;
  std::optional<nn::BasicBlock<P, Backend>> heat1_;
  nn::Conv<P, Backend> heat2_;
  nn::ConvBn<P, Backend> disp0_;
  std::optional<AdaptiveActivationBlock<P, Backend>> disp1_, disp2_;
  nn::Conv<P, Backend> disp3_;
};

/// The whole network, owning its parameter store. Not movable: layers point at the store.
/// @tparam P        precision policy
/// @tparam Backend  ampkit::Host or ampkit::Cuda
template <PrecisionPolicy P, class Backend>
class Dekr {
 public:
  using T = storage_t<P>;
  using Store = nn::ParameterStore<P, Backend>;
  template <class U>
  using Tensor = typename Store::template Tensor<U>;

  /// Build, lay out the store and initialise (mmpose defaults) with `seed`.
  Dekr(Backend& ctx, const DekrConfig& cfg, std::uint64_t seed = 0)
      : cfg_(cfg),
        backbone_(store_, "backbone", cfg.backbone),
        head_(store_, "head", cfg.backbone.output_channels(), cfg) {
    store_.allocate(ctx, seed);
    store_.set_recompute_conv_outputs(cfg.recompute_conv_outputs);
    store_.set_recompute_bn_outputs(cfg.recompute_bn_outputs);
  }
  Dekr(const Dekr&) = delete;
  Dekr& operator=(const Dekr&) = delete;

  const DekrConfig& config() const { return cfg_; }
  Store& store() { return store_; }
  const Store& store() const { return store_; }
  std::int64_t n_params() const { return store_.n_params(); }

  struct Outputs {
    TensorView<const T> heatmaps;       ///< (N, H/4, W/4, K+1), root last
    TensorView<const T> displacements;  ///< (N, H/4, W/4, 2K)
  };

  /// image (N,H,W,3), normalised; H and W multiples of 32.
  Outputs forward(Backend& ctx, TensorView<const T> image, bool training) {
    AMPKIT_CHECK(image.shape.c == cfg_.backbone.in_channels, "Dekr::forward: image has ", image.shape.c,
                 " channels, the backbone takes ", cfg_.backbone.in_channels);
    AMPKIT_CHECK(image.shape.h % 32 == 0 && image.shape.w % 32 == 0, "Dekr::forward: image is ", image.shape.h, "x",
                 image.shape.w, "; HRNet needs multiples of 32");
    feats_ = backbone_.forward(ctx, image, training);
    const Shape cs{image.shape.n, feats_[0].shape.h, feats_[0].shape.w, cfg_.backbone.output_channels()};
    if (cat_.shape() != cs) cat_ = ctx.template tensor<T>(cs);
    resize_concat_forward(ctx, std::span<const TensorView<const T>>(feats_), cat_.view());
    const auto [hm, ds] = head_.forward(ctx, cat_.cview(), training);
    return {hm, ds};
  }

  /// Accumulates (+=) every parameter gradient from the output gradients.
  void backward(Backend& ctx, TensorView<const T> dL_dheatmaps, TensorView<const T> dL_ddisplacements) {
    auto dL_dcat = head_.backward(ctx, dL_dheatmaps, dL_ddisplacements);
    std::vector<Tensor<T>> dfeats;
    std::vector<TensorView<T>> views;
    for (const auto& f : feats_) {
      dfeats.push_back(ctx.template tensor<T>(f.shape));
      views.push_back(dfeats.back().view());
    }
    resize_concat_backward(ctx, dL_dcat.cview(), std::span<const TensorView<T>>(views));
    dL_dcat = Tensor<T>();  // free before the backbone runs
    backbone_.backward(ctx, std::move(dfeats));
  }

 private:
  DekrConfig cfg_;
  Store store_;
  HRNet<P, Backend> backbone_;
  DekrHead<P, Backend> head_;
  std::vector<TensorView<const T>> feats_;
  Tensor<T> cat_;
};

}  // namespace ampkit::models

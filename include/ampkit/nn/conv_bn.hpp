/// @brief The two leaf layers of HRNet/DEKR: Conv (conv2d + optional bias) and ConvBn (conv2d
/// without bias + BatchNorm, fused with ReLU or residual-add + ReLU), on the flat parameter store.
///
/// Layer protocol (every layer in nn/ and models/):
///   forward(ctx, x, training)  computes and KEEPS what backward needs (its output and the BN
///                              input); it keeps a view of x, which the caller keeps alive.
///   backward(ctx, dL_dy, need_dx) returns dL_dx as a fresh tensor (WRITTEN) and ACCUMULATES (+=)
///                              its parameter gradients into the store's flat gradient buffers.
/// Eval mode (training = false) uses the running statistics; backward then is an error (PyTorch's
/// eval-mode BN backward is a different function, and nobody trains through it here).
/// Ops are called unqualified on the context, so the same code runs on ampkit::Host and ampkit::Cuda
/// (include the backend's op headers before instantiating: backend/host/*.hpp or backend/cuda/*.cuh).
#pragma once

#include <cstdint>
#include <string>
#include <utility>

#include "ampkit/core/error.hpp"
#include "ampkit/core/tensor.hpp"
#include "ampkit/nn/ops/batch_norm.hpp"
#include "ampkit/nn/ops/conv2d.hpp"
#include "ampkit/nn/parameter_store.hpp"
#include "ampkit/precision.hpp"

namespace ampkit::nn {

/// Geometry of a square convolution. pad < 0 means "same" for odd kernels (kernel / 2).
struct ConvSpec {
  std::int64_t in = 0, out = 0, kernel = 1, stride = 1, pad = -1, groups = 1;
  Conv2dParams params() const {
    return Conv2dParams::square(stride, pad < 0 ? kernel / 2 : pad, 1, groups);
  }
  std::vector<std::int64_t> weight_dims() const { return {out, kernel, kernel, in / groups}; }
  Shape weight_shape() const { return {out, kernel, kernel, in / groups}; }
};

/// Weight/bias initialisation of one conv (mmpose: Normal(0.001) with bias 0 everywhere).
struct ConvInit {
  ParamInit weight = ParamInit::normal(0.001f);
  ParamInit bias = ParamInit::constant(0.f);
};

/// Output shape of a conv on input x.
inline Shape conv_output_shape(Shape x, const ConvSpec& s) {
  return conv2d_output_shape(x, s.weight_shape(), s.params(), "conv");
}

/// conv2d with an optional bias; `name` is the module path, parameters are `name.weight` and
/// `name.bias` (mmpose's plain nn.Conv2d).
/// @tparam P        precision policy (activations and weights in storage_t<P>)
/// @tparam Backend  ampkit::Host or ampkit::Cuda
template <PrecisionPolicy P, class Backend>
class Conv {
 public:
  using T = storage_t<P>;
  using Store = ParameterStore<P, Backend>;
  template <class U>
  using Tensor = typename Store::template Tensor<U>;

  Conv() = default;
  Conv(Store& store, const std::string& name, ConvSpec spec, bool bias, ConvInit init = {})
      : store_(&store), spec_(spec) {
    w_ = store.add(name + ".weight", spec.weight_dims(), spec.weight_shape(), ParamKind::kCompute, init.weight);
    if (bias) b_ = store.add(name + ".bias", {spec.out}, {1, 1, 1, spec.out}, ParamKind::kCompute, init.bias);
  }

  const ConvSpec& spec() const { return spec_; }

  /// y = conv(x) (+ bias). Returns a view of the output this layer keeps.
  TensorView<const T> forward(Backend& ctx, TensorView<const T> x) {
    x_ = x;
    const Shape ys = conv_output_shape(x.shape, spec_);
    ys_ = ys;
    if (y_.shape() != ys) y_ = ctx.template tensor<T>(ys);
    const TensorView<const T> b = b_.valid() ? store_->weight(b_) : TensorView<const T>{};
    conv2d_forward(ctx, x, store_->weight(w_), b, y_.view(), spec_.params());
    return y_.cview();
  }

  /// dL_dw (+=), dL_db (+=); returns dL_dx (=) when need_dx, else an empty tensor.
  Tensor<T> backward(Backend& ctx, TensorView<const T> dL_dy, bool need_dx = true) {
    check_shape("Conv::backward", "dL_dy", dL_dy, ys_);
    AMPKIT_CHECK(x_.data != nullptr, "Conv::backward: the input was freed after forward (forget_input) and not "
                                     "rebuilt (rebind_input)");
    conv2d_backward_filter(ctx, x_, dL_dy, store_->weight_grad(w_), spec_.params());
    if (b_.valid()) conv2d_backward_bias(ctx, dL_dy, store_->weight_grad(b_));
    // Before the input gradient: the data-parallel all-reduce of these can start during it.
    // (The bias is registered right after the weight, so the two are one range.)
    store_->notify_grads_ready(w_, b_.valid() ? 2 : 1);
    Tensor<T> dL_dx;
    if (need_dx) {
      dL_dx = ctx.template tensor<T>(x_.shape);
      conv2d_backward_data(ctx, dL_dy, store_->weight(w_), dL_dx.view(), spec_.params());
    }
    return dL_dx;
  }

  TensorView<const T> output() const { return y_.cview(); }
  /// The last forward's input (a view the caller keeps alive) and the store.
  TensorView<const T> input() const { return x_; }
  /// Input recompute (the producer's output was freed after forward and rebuilt for backward,
  /// recompute_bn_outputs): forget_input() drops the view of the freed tensor (the shape stays,
  /// so a backward without a rebuild fails loudly instead of reading freed memory);
  /// rebind_input() points backward at the rebuilt copy (same shape, the forward's values).
  void forget_input() { x_.data = nullptr; }
  void rebind_input(TensorView<const T> x) {
    check_shape("Conv::rebind_input", "x", x, x_.shape);
    x_ = x;
  }
  const Store& store() const { return *store_; }
  /// Whether the output is held (false after release_output(), until the next forward).
  bool has_output() const { return y_.numel() > 0; }
  /// Shape of the last forward's output (also after release_output()).
  Shape output_shape() const { return ys_; }
  /// Frees the output once the caller has consumed it. Why this is allowed: backward reads only
  /// x and dL_dy, never y; the output is kept by default because a following layer usually keeps
  /// a view of it (a BN's input). A caller whose consumer needs nothing of y in backward (the
  /// DEKR head's affine transform, read once by the offsets op) frees it and lowers the
  /// activations kept between forward and backward. Next forward allocates it again.
  void release_output() { y_ = Tensor<T>(); }
  /// Bytes of activations this layer keeps between forward and backward.
  std::size_t saved_bytes() const { return static_cast<std::size_t>(y_.numel()) * sizeof(T); }

 private:
  Store* store_ = nullptr;
  ConvSpec spec_;
  ParamId w_, b_;
  TensorView<const T> x_;
  Shape ys_{};  ///< output shape of the last forward (y_ may have been released)
  Tensor<T> y_;
};

/// BatchNorm2d [+ ReLU | + residual + ReLU] on its own (after a deformable conv, or inside
/// ConvBn). Parameters `name.{weight,bias}` (fp32), buffers `name.{running_mean,running_var}`.
template <PrecisionPolicy P, class Backend>
class BatchNorm {
 public:
  using T = storage_t<P>;
  using Store = ParameterStore<P, Backend>;
  template <class U>
  using Tensor = typename Store::template Tensor<U>;

  BatchNorm() = default;
  BatchNorm(Store& store, const std::string& name, std::int64_t channels, BatchNormEpilogue epilogue,
            BatchNormConfig cfg = {})
      : store_(&store), c_(channels), epilogue_(epilogue), cfg_(cfg) {
    const Shape v{1, 1, 1, channels};
    gamma_ = store.add(name + ".weight", {channels}, v, ParamKind::kFp32, ParamInit::constant(1.f));
    beta_ = store.add(name + ".bias", {channels}, v, ParamKind::kFp32, ParamInit::constant(0.f));
    mean_ = store.add_buffer(name + ".running_mean", {channels}, v, 0.f);
    var_ = store.add_buffer(name + ".running_var", {channels}, v, 1.f);
  }

  BatchNormEpilogue epilogue() const { return epilogue_; }

  /// y = epilogue(bn(x) [, residual]); `residual` exactly with kAddRelu.
  TensorView<const T> forward(Backend& ctx, TensorView<const T> x, bool training, TensorView<const T> residual = {}) {
    AMPKIT_CHECK((residual.data != nullptr) == (epilogue_ == BatchNormEpilogue::kAddRelu),
                 "BatchNorm::forward: a residual is needed exactly for the add+relu epilogue");
    AMPKIT_CHECK(x.shape.c == c_, "BatchNorm::forward: input has ", x.shape.c, " channels, the layer ", c_);
    x_ = x;
    training_ = training;
    dropped_ = false;
    if (y_.shape() != x.shape) y_ = ctx.template tensor<T>(x.shape);
    if (save_mean_.numel() != c_) {
      save_mean_ = ctx.template tensor<float>({1, 1, 1, c_});
      save_invstd_ = ctx.template tensor<float>({1, 1, 1, c_});
    }
    const auto g = store_->fp32_param(gamma_), b = store_->fp32_param(beta_);
    const auto rm = store_->buffer(mean_), rv = store_->buffer(var_);
    if (training) {
      switch (epilogue_) {
        case BatchNormEpilogue::kNone:
          batch_norm_forward_training(ctx, x, g, b, rm, rv, save_mean_.view(), save_invstd_.view(), y_.view(), cfg_);
          break;
        case BatchNormEpilogue::kRelu:
          batch_norm_relu_forward_training(ctx, x, g, b, rm, rv, save_mean_.view(), save_invstd_.view(), y_.view(),
                                           cfg_);
          break;
        case BatchNormEpilogue::kAddRelu:
          batch_norm_add_relu_forward_training(ctx, x, residual, g, b, rm, rv, save_mean_.view(), save_invstd_.view(),
                                               y_.view(), cfg_);
          break;
      }
    } else {
      const TensorView<const float> crm = rm, crv = rv;
      switch (epilogue_) {
        case BatchNormEpilogue::kNone: batch_norm_forward_inference(ctx, x, g, b, crm, crv, y_.view(), cfg_); break;
        case BatchNormEpilogue::kRelu:
          batch_norm_relu_forward_inference(ctx, x, g, b, crm, crv, y_.view(), cfg_);
          break;
        case BatchNormEpilogue::kAddRelu:
          batch_norm_add_relu_forward_inference(ctx, x, residual, g, b, crm, crv, y_.view(), cfg_);
          break;
      }
    }
    return y_.cview();
  }

  /// gamma/beta gradients ACCUMULATED (fp32); returns dL_dx (WRITTEN). With kAddRelu the
  /// residual's gradient is left for take_dL_dresidual() (WRITTEN).
  Tensor<T> backward(Backend& ctx, TensorView<const T> dL_dy) {
    AMPKIT_CHECK(training_, "BatchNorm::backward after an eval-mode forward: backward needs batch statistics");
    check_shape("BatchNorm::backward", "dL_dy", dL_dy, x_.shape);
    AMPKIT_CHECK(!dropped_ || y_.numel() > 0,
                 "BatchNorm::backward: the output was freed after forward (drop_output) and not rebuilt (rebuild_output)");
    auto dL_dx = ctx.template tensor<T>(x_.shape);
    const auto g = store_->fp32_param(gamma_);
    const TensorView<const float> sm = save_mean_.cview(), si = save_invstd_.cview();
    const auto dg = store_->fp32_grad(gamma_), db = store_->fp32_grad(beta_);
    switch (epilogue_) {
      case BatchNormEpilogue::kNone: batch_norm_backward(ctx, x_, dL_dy, g, sm, si, dL_dx.view(), dg, db); break;
      case BatchNormEpilogue::kRelu:
        batch_norm_relu_backward(ctx, x_, y_.cview(), dL_dy, g, sm, si, dL_dx.view(), dg, db);
        break;
      case BatchNormEpilogue::kAddRelu:
        dL_dres_ = ctx.template tensor<T>(x_.shape);
        batch_norm_add_relu_backward(ctx, x_, y_.cview(), dL_dy, g, sm, si, dL_dx.view(), dL_dres_.view(), dg, db);
        break;
    }
    store_->notify_grads_ready(gamma_, 2);  // gamma and beta: registered together
    if (dropped_) y_ = Tensor<T>();  // the rebuilt copy: its consumers' backward ran before this one
    return dL_dx;
  }

  /// The residual's gradient after a kAddRelu backward (moved out: the caller owns it).
  Tensor<T> take_dL_dresidual() { return std::move(dL_dres_); }
  TensorView<const T> output() const { return y_.cview(); }
  /// Shape of the last forward's output (= its input's; also after release_output()).
  Shape output_shape() const { return x_.shape; }
  /// Point backward at a recomputed copy of the forward's input (ConvBn's recompute mode: the
  /// tensor x was in is freed after forward). Same shape; the values must be the forward's.
  void rebind_input(TensorView<const T> x) {
    check_shape("BatchNorm::rebind_input", "x", x, x_.shape);
    x_ = x;
  }
  /// Frees the output once the caller has consumed it; kNone only. Why: the plain BN's backward
  /// reads x, the saved statistics and dL_dy, never y (the fused epilogues read y for the ReLU
  /// mask). In HRNet a plain BN's output is only ever summed or added as a residual (fuse links,
  /// downsample), and no backward needs it; keeping it until the next forward held ~4 % of
  /// DEKR-W32's activations. The caller frees it right after its consumer ran (same stream, so
  /// the CUDA caching allocator reuses the block only after that kernel). Next forward allocates
  /// it again.
  void release_output() {
    AMPKIT_CHECK(epilogue_ == BatchNormEpilogue::kNone,
                 "BatchNorm::release_output: only a plain BN's output is unused by its backward (ReLU epilogues "
                 "read y for the mask)");
    y_ = Tensor<T>();
  }
  /// Output recompute (the store's recompute_bn_outputs(); training forward, kRelu only): frees
  /// y after every layer reading it has run forward. Returns whether it did; the caller then makes
  /// those consumers forget their view of it (recompute_after_forward below). Why this is cheap:
  /// y = relu(x*scale + shift) with x (the conv output, kept for this BN's backward) and the saved
  /// batch statistics (2 floats per channel), so rebuild_output() brings back the same bits with
  /// one elementwise pass (batch_norm_relu_forward_saved), where recomputing a conv output costs a
  /// convolution. kAddRelu outputs are not dropped: they are block outputs, read by the next
  /// block and the residual, and rebuilding one would need the residual too.
  bool drop_output() {
    if (!training_ || epilogue_ != BatchNormEpilogue::kRelu || !store_->recompute_bn_outputs()) return false;
    y_ = Tensor<T>();
    dropped_ = true;
    return true;
  }
  bool output_dropped() const { return dropped_; }
  /// Rebuilds the dropped output from the (kept or rebound) input and the saved statistics, bit
  /// for bit; backward frees it again once it has read the ReLU mask. Idempotent until then.
  TensorView<const T> rebuild_output(Backend& ctx) {
    AMPKIT_CHECK(dropped_, "BatchNorm::rebuild_output: the output was not dropped");
    AMPKIT_CHECK(x_.data != nullptr, "BatchNorm::rebuild_output: the input is not available");
    if (y_.numel() == 0) {
      y_ = ctx.template tensor<T>(x_.shape);
      batch_norm_relu_forward_saved(ctx, x_, store_->fp32_param(gamma_), store_->fp32_param(beta_),
                                    save_mean_.cview(), save_invstd_.cview(), y_.view());
    }
    return y_.cview();
  }
  std::size_t saved_bytes() const { return static_cast<std::size_t>(y_.numel()) * sizeof(T) + 2 * sizeof(float) * c_; }

 private:
  Store* store_ = nullptr;
  std::int64_t c_ = 0;
  BatchNormEpilogue epilogue_ = BatchNormEpilogue::kNone;
  BatchNormConfig cfg_;
  ParamId gamma_, beta_;
  BufferId mean_, var_;
  bool training_ = false;
  bool dropped_ = false;  ///< the last forward's output was freed by drop_output()
  TensorView<const T> x_;
  Tensor<T> y_, dL_dres_;
  Tensor<float> save_mean_, save_invstd_;
};

/// conv2d (no bias) + BatchNorm2d [+ ReLU | + residual + ReLU], as mmpose's Sequential(conv, bn,
/// relu) / ConvModule / the tail of a residual block. Parameters: `conv_name.weight`,
/// `bn_name.{weight,bias}`; buffers `bn_name.{running_mean,running_var}` (fp32).
template <PrecisionPolicy P, class Backend>
class ConvBn {
 public:
  using T = storage_t<P>;
  using Store = ParameterStore<P, Backend>;
  template <class U>
  using Tensor = typename Store::template Tensor<U>;

  ConvBn() = default;
  ConvBn(Store& store, const std::string& conv_name, const std::string& bn_name, ConvSpec spec,
         BatchNormEpilogue epilogue, ConvInit init = {}, BatchNormConfig bn = {})
      : conv_(store, conv_name, spec, false, init), bn_(store, bn_name, spec.out, epilogue, bn) {}

  const ConvSpec& spec() const { return conv_.spec(); }
  BatchNormEpilogue epilogue() const { return bn_.epilogue(); }

  /// y = epilogue(bn(conv(x)) [, residual]). `residual` only with kAddRelu.
  /// With the store's recompute_conv_outputs() set, a training forward frees the conv output z
  /// once the BN has read it (see backward()). The BN output y is freed by the caller once its
  /// consumers ran (recompute_bn_outputs: drop_output(), recompute_after_forward below).
  TensorView<const T> forward(Backend& ctx, TensorView<const T> x, bool training,
                              TensorView<const T> residual = {}) {
    const auto y = bn_.forward(ctx, conv_.forward(ctx, x), training, residual);
    recompute_ = training && conv_.store().recompute_conv_outputs();
    if (recompute_) conv_.release_output();
    return y;
  }

  /// Conv weight and BN gamma/beta gradients ACCUMULATED; returns dL_dx (WRITTEN) when need_dx.
  /// With kAddRelu the residual's gradient is left for take_dL_dresidual() (WRITTEN).
  ///
  /// Recompute mode (the store's recompute_conv_outputs()): the BN backward needs z = conv(x),
  /// about 40 % of DEKR's activations (the BN output y is kept anyway: the next conv reads it
  /// and the ReLU epilogues need it for the mask). Instead of keeping z from forward to backward,
  /// z is computed again here by the SAME conv2d_forward call on the same x (the caller keeps x:
  /// it is the previous layer's kept output) and freed as soon as the BN backward has read it.
  /// Cost: one more forward conv per ConvBn in backward. Values: the host conv is deterministic,
  /// so gradients are bit-identical to the keeping mode; on CUDA the conv plan cache picks one
  /// algorithm per shape, and cuDNN's forward algorithms are deterministic (guaranteed with
  /// randomness.deterministic), so the same holds there.
  ///
  /// With the output dropped (recompute_bn_outputs, drop_output()), rebuild_output() must have
  /// run before this (its consumers' backward needed it first); the BN backward frees it again.
  Tensor<T> backward(Backend& ctx, TensorView<const T> dL_dy, bool need_dx = true) {
    recompute_z(ctx);
    auto dL_dz = bn_.backward(ctx, dL_dy);
    if (recompute_) conv_.release_output();  // conv backward reads x and dL_dz, not z
    return conv_.backward(ctx, dL_dz.cview(), need_dx);
  }

  Tensor<T> take_dL_dresidual() { return bn_.take_dL_dresidual(); }
  TensorView<const T> output() const { return bn_.output(); }
  Shape output_shape() const { return bn_.output_shape(); }
  /// Frees the BN output after the caller consumed it (kNone only: BatchNorm::release_output).
  void release_output() { bn_.release_output(); }

  /// Output recompute, producer side (BatchNorm::drop_output): frees the BN+ReLU output once its
  /// consumers ran forward; true when it did (store switch on, training, kRelu).
  bool drop_output() { return bn_.drop_output(); }
  bool output_dropped() const { return bn_.output_dropped(); }
  /// Whether rebuild_output() reads this layer's input (recompute_conv_outputs: z is recomputed
  /// from it), so a dropped input must be rebuilt first (chains: Bottleneck, stem, fuse links).
  bool rebuild_reads_input() const { return recompute_; }
  /// Rebuilds the dropped output for the consumers' backward. With recompute_conv_outputs the
  /// BN input z was freed too: it is recomputed first (the same conv2d_forward call) and kept
  /// until this layer's BN backward, which needs it as well.
  TensorView<const T> rebuild_output(Backend& ctx) {
    recompute_z(ctx);
    return bn_.rebuild_output(ctx);
  }
  /// Output recompute, consumer side: the input's producer freed it (Conv::forget_input) or
  /// rebuilt it (Conv::rebind_input). With recompute_conv_outputs the rebound input is also what
  /// backward recomputes z from.
  void forget_input() { conv_.forget_input(); }
  void rebind_input(TensorView<const T> x) { conv_.rebind_input(x); }
  std::size_t saved_bytes() const { return conv_.saved_bytes() + bn_.saved_bytes(); }

 private:
  /// Recompute mode: z = conv(x) again unless an earlier rebuild_output() already did.
  void recompute_z(Backend& ctx) {
    if (!recompute_ || conv_.has_output()) return;
    AMPKIT_CHECK(conv_.input().data != nullptr,
                 "ConvBn: the input was freed after forward (forget_input) and not rebuilt (rebind_input)");
    bn_.rebind_input(conv_.forward(ctx, conv_.input()));
  }

  Conv<P, Backend> conv_;
  BatchNorm<P, Backend> bn_;
  bool recompute_ = false;  ///< the last forward freed z (training with recompute_conv_outputs)
};

/// Output recompute between a producer (ConvBn with a ReLU epilogue) and the layers that read its
/// output, all in one place (a block, a conv chain), with the store's recompute_bn_outputs():
///   forward, after the last consumer ran:  recompute_after_forward(producer, consumers...)
///   backward, before the first consumer:   rebuild_before_backward(ctx, producer, consumers...)
/// The producer's backward must come after every consumer's (it reads the rebuilt output as its
/// ReLU mask and frees it); rebuilding twice is a no-op. Where a producer's input is itself a
/// dropped output and rebuild_reads_input() (recompute_conv_outputs on), rebuild front to back.
/// Why only where the consumers are local: the rebuilt tensor lives from the first consumer's
/// backward to the producer's, so across a block boundary it would be held about as long as it
/// was kept before, and a rebuild that needs another rebuild first would chain. Consumers: anything with forget_input() / rebind_input() (Conv, ConvBn, the blocks).
template <class Producer, class... Consumers>
void recompute_after_forward(Producer& producer, Consumers&... consumers) {
  if (producer.drop_output()) (consumers.forget_input(), ...);
}
template <class Backend, class Producer, class... Consumers>
void rebuild_before_backward(Backend& ctx, Producer& producer, Consumers&... consumers) {
  if (!producer.output_dropped()) return;
  const auto y = producer.rebuild_output(ctx);
  (consumers.rebind_input(y), ...);
}

/// dst += src in place (activation gradients where branches merge).
template <class Backend, class T>
void accumulate(Backend& ctx, TensorView<T> dst, TensorView<const T> src) {
  add_forward(ctx, TensorView<const T>(dst), src, dst);
}

/// True for a default-constructed (empty) tensor of either backend.
template <class Tn>
bool is_empty(const Tn& t) {
  return t.numel() == 0;
}

/// dst += src where dst may still be empty (then src is moved in): merging branch gradients.
template <class Backend, class Tn>
void add_into(Backend& ctx, Tn& dst, Tn&& src) {
  if (is_empty(dst)) {
    dst = std::move(src);
    return;
  }
  accumulate(ctx, dst.view(), src.cview());
}

}  // namespace ampkit::nn

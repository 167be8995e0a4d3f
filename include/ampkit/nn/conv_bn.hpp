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
  const Store& store() const { return *store_; }
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
  std::size_t saved_bytes() const { return static_cast<std::size_t>(y_.numel()) * sizeof(T) + 2 * sizeof(float) * c_; }

 private:
  Store* store_ = nullptr;
  std::int64_t c_ = 0;
  BatchNormEpilogue epilogue_ = BatchNormEpilogue::kNone;
  BatchNormConfig cfg_;
  ParamId gamma_, beta_;
  BufferId mean_, var_;
  bool training_ = false;
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
  /// once the BN has read it (see backward()).
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
  Tensor<T> backward(Backend& ctx, TensorView<const T> dL_dy, bool need_dx = true) {
    if (recompute_) bn_.rebind_input(conv_.forward(ctx, conv_.input()));
    auto dL_dz = bn_.backward(ctx, dL_dy);
    if (recompute_) conv_.release_output();  // conv backward reads x and dL_dz, not z
    return conv_.backward(ctx, dL_dz.cview(), need_dx);
  }

  Tensor<T> take_dL_dresidual() { return bn_.take_dL_dresidual(); }
  TensorView<const T> output() const { return bn_.output(); }
  Shape output_shape() const { return bn_.output_shape(); }
  /// Frees the BN output after the caller consumed it (kNone only: BatchNorm::release_output).
  void release_output() { bn_.release_output(); }
  std::size_t saved_bytes() const { return conv_.saved_bytes() + bn_.saved_bytes(); }

 private:
  Conv<P, Backend> conv_;
  BatchNorm<P, Backend> bn_;
  bool recompute_ = false;  ///< the last forward freed z (training with recompute_conv_outputs)
};

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

/// @brief Host backend BatchNorm2d: training and inference forward, plain and fused with ReLU or
/// residual-add + ReLU, and the training-mode backward. Semantics and the gradient contract are in
/// nn/ops/batch_norm.hpp.
///
/// Per-channel statistics are reduced in double here: this is the reference the CUDA kernels
/// (fp32 Welford) are measured against, so it should carry less error than they do. Activations
/// are read as stored and every output is rounded to T once.
#pragma once

#include <cmath>
#include <type_traits>
#include <vector>

#include "ampkit/backend/host/context.hpp"
#include "ampkit/backend/host/host_scalar.hpp"
#include "ampkit/core/tensor.hpp"
#include "ampkit/nn/ops/batch_norm.hpp"

namespace ampkit {

namespace host::detail {

/// The per-channel affine map y = x*scale + shift from the statistics backward reads (fp32 in
/// storage-type mode, unrounded in double mode), in double, rounded to the accumulation type once.
/// One function for the training forward and the rebuild from saved statistics: same bits.
template <HostScalar T>
void bn_affine(double mean_f, double invstd_f, float gamma, float beta, acc_t<T>& scale, acc_t<T>& shift) {
  using A = acc_t<T>;
  scale = static_cast<A>(invstd_f * gamma);
  shift = static_cast<A>(beta - mean_f * invstd_f * gamma);
}

/// y = epilogue(x*scale[c] + shift[c] [+ residual]): the elementwise pass of every forward.
template <HostScalar T>
void bn_apply(TensorView<const T> x, TensorView<const T> residual, const std::vector<acc_t<T>>& scale,
              const std::vector<acc_t<T>>& shift, TensorView<T> y, BatchNormEpilogue e) {
  using A = acc_t<T>;
  const std::int64_t C = x.shape.c, M = x.shape.n * x.shape.h * x.shape.w;
  for (std::int64_t i = 0; i < M; ++i)
    for (std::int64_t c = 0; c < C; ++c) {
      const std::int64_t j = i * C + c;
      A z = widen(x.data[j]) * scale[c] + shift[c];
      if (e == BatchNormEpilogue::kAddRelu) z += widen(residual.data[j]);
      if (e != BatchNormEpilogue::kNone) z = z > A(0) ? z : A(0);
      y.data[j] = narrow<T>(z);
    }
}

template <HostScalar T>
void bn_forward(const ampkit::detail::BatchNormForwardArgs<T>& a, BatchNormEpilogue e, bool training,
                const BatchNormConfig& cfg) {
  a.validate(ampkit::detail::bn_forward_name(e, training), e, training, cfg);
  using A = acc_t<T>;
  const std::int64_t C = a.x.shape.c, M = a.x.shape.n * a.x.shape.h * a.x.shape.w;
  std::vector<A> scale(static_cast<std::size_t>(C)), shift(static_cast<std::size_t>(C));
  for (std::int64_t c = 0; c < C; ++c) {
    double mean, invstd;
    if (training) {
      double s = 0;
      for (std::int64_t i = 0; i < M; ++i) s += static_cast<double>(widen(a.x.data[i * C + c]));
      mean = s / static_cast<double>(M);
      double ss = 0;
      for (std::int64_t i = 0; i < M; ++i) {
        const double d = static_cast<double>(widen(a.x.data[i * C + c])) - mean;
        ss += d * d;
      }
      const double var = ss / static_cast<double>(M);
      invstd = 1.0 / std::sqrt(var + static_cast<double>(cfg.eps));
      const double m = cfg.momentum;
      a.running_mean.data[c] = static_cast<float>((1 - m) * a.running_mean.data[c] + m * mean);
      a.running_var.data[c] = static_cast<float>(
          (1 - m) * a.running_var.data[c] + m * var * static_cast<double>(M) / static_cast<double>(M - 1));
      a.save_mean.data[c] = static_cast<float>(mean);
      a.save_invstd.data[c] = static_cast<float>(invstd);
    } else {
      mean = a.running_mean.data[c];
      invstd = 1.0 / std::sqrt(static_cast<double>(a.running_var.data[c]) + static_cast<double>(cfg.eps));
    }
    // Normalise with the fp32-rounded statistics, exactly what backward will read back (in
    // double mode, with the exact ones: finite differences need a smooth function of x).
    const bool exact = std::is_same_v<T, double>;
    const double mean_f = exact ? mean : static_cast<float>(mean);
    const double invstd_f = exact ? invstd : static_cast<float>(invstd);
    bn_affine<T>(mean_f, invstd_f, a.gamma.data[c], a.beta.data[c], scale[c], shift[c]);
  }
  bn_apply<T>(a.x, a.residual, scale, shift, a.y, e);
}

/// relu(bn(x)) from the saved fp32 statistics: the training forward's affine map and pass.
template <HostScalar T>
void bn_forward_saved(const ampkit::detail::BatchNormSavedArgs<T>& a) {
  a.validate("batch_norm_relu_forward_saved");
  const std::int64_t C = a.x.shape.c;
  std::vector<acc_t<T>> scale(static_cast<std::size_t>(C)), shift(static_cast<std::size_t>(C));
  for (std::int64_t c = 0; c < C; ++c)
    bn_affine<T>(a.save_mean.data[c], a.save_invstd.data[c], a.gamma.data[c], a.beta.data[c], scale[c], shift[c]);
  bn_apply<T>(a.x, {}, scale, shift, a.y, BatchNormEpilogue::kRelu);
}

template <HostScalar T>
void bn_backward(const ampkit::detail::BatchNormBackwardArgs<T>& a, BatchNormEpilogue e) {
  a.validate(ampkit::detail::bn_backward_name(e), e);
  using A = acc_t<T>;
  const std::int64_t C = a.x.shape.c, M = a.x.shape.n * a.x.shape.h * a.x.shape.w;
  auto dz = [&](std::int64_t j) -> A {
    const A g = widen(a.dL_dy.data[j]);
    if (e == BatchNormEpilogue::kNone) return g;
    return widen(a.y.data[j]) > A(0) ? g : A(0);
  };
  for (std::int64_t c = 0; c < C; ++c) {
    const double mean = a.save_mean.data[c], invstd = a.save_invstd.data[c], gamma = a.gamma.data[c];
    double sum_dz = 0, sum_dz_xmu = 0;
    for (std::int64_t i = 0; i < M; ++i) {
      const std::int64_t j = i * C + c;
      const double d = static_cast<double>(dz(j));
      sum_dz += d;
      sum_dz_xmu += d * (static_cast<double>(widen(a.x.data[j])) - mean);
    }
    a.dL_dgamma.data[c] += static_cast<float>(sum_dz_xmu * invstd);
    a.dL_dbeta.data[c] += static_cast<float>(sum_dz);
    // dx = gamma*invstd * (dz - mean(dz) - xhat * mean(dz*xhat))
    const double k = gamma * invstd, mdz = sum_dz / static_cast<double>(M),
                 mxz = sum_dz_xmu * invstd * invstd / static_cast<double>(M);
    for (std::int64_t i = 0; i < M; ++i) {
      const std::int64_t j = i * C + c;
      const double d = static_cast<double>(dz(j));
      const double xmu = static_cast<double>(widen(a.x.data[j])) - mean;
      a.dL_dx.data[j] = narrow<T>(static_cast<A>(k * (d - mdz - xmu * mxz)));
      if (e == BatchNormEpilogue::kAddRelu) a.dL_dresidual.data[j] = narrow<T>(static_cast<A>(d));
    }
  }
}

}  // namespace host::detail

// ---- training forward --------------------------------------------------------------------------
/// y = bn(x) with batch statistics; updates running stats, writes save_mean / save_invstd.
template <HostScalar T>
void batch_norm_forward_training(Host&, TensorView<const T> x, TensorView<const float> gamma,
                                 TensorView<const float> beta, TensorView<float> running_mean,
                                 TensorView<float> running_var, TensorView<float> save_mean,
                                 TensorView<float> save_invstd, TensorView<T> y,
                                 const BatchNormConfig& cfg = {}) {
  host::detail::bn_forward<T>({x, {}, gamma, beta, running_mean, running_var, save_mean, save_invstd, y},
                              BatchNormEpilogue::kNone, true, cfg);
}
/// y = relu(bn(x)) with batch statistics.
template <HostScalar T>
void batch_norm_relu_forward_training(Host&, TensorView<const T> x, TensorView<const float> gamma,
                                      TensorView<const float> beta, TensorView<float> running_mean,
                                      TensorView<float> running_var, TensorView<float> save_mean,
                                      TensorView<float> save_invstd, TensorView<T> y,
                                      const BatchNormConfig& cfg = {}) {
  host::detail::bn_forward<T>({x, {}, gamma, beta, running_mean, running_var, save_mean, save_invstd, y},
                              BatchNormEpilogue::kRelu, true, cfg);
}
/// y = relu(bn(x) + residual) with batch statistics.
template <HostScalar T>
void batch_norm_add_relu_forward_training(Host&, TensorView<const T> x, TensorView<const T> residual,
                                          TensorView<const float> gamma, TensorView<const float> beta,
                                          TensorView<float> running_mean, TensorView<float> running_var,
                                          TensorView<float> save_mean, TensorView<float> save_invstd,
                                          TensorView<T> y, const BatchNormConfig& cfg = {}) {
  host::detail::bn_forward<T>(
      {x, residual, gamma, beta, running_mean, running_var, save_mean, save_invstd, y},
      BatchNormEpilogue::kAddRelu, true, cfg);
}

// ---- rebuild from the saved statistics ----------------------------------------------------------
/// y = relu(bn(x)) with save_mean / save_invstd of the training forward that wrote them; nothing
/// is updated. Bit-identical to that forward's y for fp32/fp16/bf16 (nn/ops/batch_norm.hpp).
template <HostScalar T>
void batch_norm_relu_forward_saved(Host&, TensorView<const T> x, TensorView<const float> gamma,
                                   TensorView<const float> beta, TensorView<const float> save_mean,
                                   TensorView<const float> save_invstd, TensorView<T> y) {
  host::detail::bn_forward_saved<T>({x, gamma, beta, save_mean, save_invstd, y});
}

// ---- inference forward -------------------------------------------------------------------------
/// y = bn(x) with the running statistics (eval mode); nothing is updated.
template <HostScalar T>
void batch_norm_forward_inference(Host&, TensorView<const T> x, TensorView<const float> gamma,
                                  TensorView<const float> beta, TensorView<const float> running_mean,
                                  TensorView<const float> running_var, TensorView<T> y,
                                  const BatchNormConfig& cfg = {}) {
  host::detail::bn_forward<T>({x,
                               {},
                               gamma,
                               beta,
                               {const_cast<float*>(running_mean.data), running_mean.shape},
                               {const_cast<float*>(running_var.data), running_var.shape},
                               {},
                               {},
                               y},
                              BatchNormEpilogue::kNone, false, cfg);
}
template <HostScalar T>
void batch_norm_relu_forward_inference(Host&, TensorView<const T> x, TensorView<const float> gamma,
                                       TensorView<const float> beta, TensorView<const float> running_mean,
                                       TensorView<const float> running_var, TensorView<T> y,
                                       const BatchNormConfig& cfg = {}) {
  host::detail::bn_forward<T>({x,
                               {},
                               gamma,
                               beta,
                               {const_cast<float*>(running_mean.data), running_mean.shape},
                               {const_cast<float*>(running_var.data), running_var.shape},
                               {},
                               {},
                               y},
                              BatchNormEpilogue::kRelu, false, cfg);
}
template <HostScalar T>
void batch_norm_add_relu_forward_inference(Host&, TensorView<const T> x, TensorView<const T> residual,
                                           TensorView<const float> gamma, TensorView<const float> beta,
                                           TensorView<const float> running_mean,
                                           TensorView<const float> running_var, TensorView<T> y,
                                           const BatchNormConfig& cfg = {}) {
  host::detail::bn_forward<T>({x,
                               residual,
                               gamma,
                               beta,
                               {const_cast<float*>(running_mean.data), running_mean.shape},
                               {const_cast<float*>(running_var.data), running_var.shape},
                               {},
                               {},
                               y},
                              BatchNormEpilogue::kAddRelu, false, cfg);
}

// ---- training backward -------------------------------------------------------------------------
/// dL_dx (=), dL_dgamma (+=), dL_dbeta (+=) of y = bn(x).
template <HostScalar T>
void batch_norm_backward(Host&, TensorView<const T> x, TensorView<const T> dL_dy,
                         TensorView<const float> gamma, TensorView<const float> save_mean,
                         TensorView<const float> save_invstd, TensorView<T> dL_dx,
                         TensorView<float> dL_dgamma, TensorView<float> dL_dbeta) {
  host::detail::bn_backward<T>({x, {}, dL_dy, gamma, save_mean, save_invstd, dL_dx, {}, dL_dgamma, dL_dbeta},
                               BatchNormEpilogue::kNone);
}
/// Backward of y = relu(bn(x)); y is the forward output (the ReLU mask).
template <HostScalar T>
void batch_norm_relu_backward(Host&, TensorView<const T> x, TensorView<const T> y, TensorView<const T> dL_dy,
                              TensorView<const float> gamma, TensorView<const float> save_mean,
                              TensorView<const float> save_invstd, TensorView<T> dL_dx,
                              TensorView<float> dL_dgamma, TensorView<float> dL_dbeta) {
  host::detail::bn_backward<T>({x, y, dL_dy, gamma, save_mean, save_invstd, dL_dx, {}, dL_dgamma, dL_dbeta},
                               BatchNormEpilogue::kRelu);
}
/// Backward of y = relu(bn(x) + residual): dL_dx and dL_dresidual written.
template <HostScalar T>
void batch_norm_add_relu_backward(Host&, TensorView<const T> x, TensorView<const T> y,
                                  TensorView<const T> dL_dy, TensorView<const float> gamma,
                                  TensorView<const float> save_mean, TensorView<const float> save_invstd,
                                  TensorView<T> dL_dx, TensorView<T> dL_dresidual,
                                  TensorView<float> dL_dgamma, TensorView<float> dL_dbeta) {
  host::detail::bn_backward<T>(
      {x, y, dL_dy, gamma, save_mean, save_invstd, dL_dx, dL_dresidual, dL_dgamma, dL_dbeta},
      BatchNormEpilogue::kAddRelu);
}

}  // namespace ampkit

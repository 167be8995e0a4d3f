/// @brief BatchNorm2d on both backends (training and inference, plain and fused with ReLU or
/// residual-add + ReLU): configuration, validation and the gradient contract, shared.
///
/// x, y, residual and their gradients are (N,H,W,C) in the storage type T; gamma, beta, the
/// running statistics and the saved statistics are fp32 views of shape (1,1,1,C). Why fp32: the
/// running variance of a small feature is below fp16's normal range, and autocast / Apex O2 keep
/// BN parameters fp32 too.
///
/// Training forward (M = N*H*W values per channel):
///   mean = sum(x)/M, var = sum((x-mean)^2)/M (biased), invstd = 1/sqrt(var + eps)
///   z = (x - mean) * invstd * gamma + beta;  y = z | relu(z) | relu(z + residual)
///   running_mean = (1-momentum)*running_mean + momentum*mean
///   running_var  = (1-momentum)*running_var  + momentum*var*M/(M-1)   (unbiased, as PyTorch)
///   save_mean = mean, save_invstd = invstd (for backward).
/// Inference forward uses running_mean / running_var instead and updates nothing.
///
/// Gradient contract (training-mode backward, using the saved batch statistics):
///   dL_dx, dL_dresidual  WRITTEN (=)
///   dL_dgamma, dL_dbeta  ACCUMULATED (+=), fp32
/// The fused backward takes y (the forward output) for the ReLU mask: dz = dL_dy * (y > 0).
/// For y = relu(bn(x) + residual), dL_dresidual = dz.
///
/// Rebuild from the saved statistics (batch_norm_relu_forward_saved): y = relu(bn(x)) with
/// save_mean / save_invstd of the training forward that wrote them, nothing updated. Each backend
/// forms the per-channel affine map (scale, shift) from those fp32 values with the arithmetic its
/// training forward uses and runs the same elementwise pass, so on the same x it writes the same
/// bits as that forward (storage types fp32/fp16/bf16; the host's double mode normalises with
/// unrounded statistics and is not reproduced). Why: a layer may free a BN+ReLU output between
/// forward and backward and rebuild it for the backward (nn/conv_bn.hpp, recompute_bn_outputs).
#pragma once

#include <cstdint>

#include "ampkit/core/error.hpp"
#include "ampkit/core/tensor.hpp"

namespace ampkit {

/// PyTorch's BatchNorm2d defaults.
struct BatchNormConfig {
  float momentum = 0.1f;
  float eps = 1e-5f;
};

/// What follows the normalisation inside one fused pass.
enum class BatchNormEpilogue {
  kNone,     ///< y = bn(x)
  kRelu,     ///< y = relu(bn(x))
  kAddRelu,  ///< y = relu(bn(x) + residual)
};

namespace detail {

/// Check a (1,1,1,C) fp32 parameter/statistics view.
inline void check_bn_vector(const char* op, const char* arg, const TensorView<const float>& v,
                            std::int64_t c) {
  check_shape(op, arg, v, Shape{1, 1, 1, c});
}

/// Shapes of an activation-sized argument against x.
template <class T>
void check_bn_activation(const char* op, const char* arg, const TensorView<T>& t, Shape x) {
  check_shape(op, arg, t, x);
}

inline void check_bn_config(const char* op, const BatchNormConfig& cfg) {
  AMPKIT_CHECK(cfg.eps > 0.f, op, ": eps must be > 0, given ", cfg.eps);
  AMPKIT_CHECK(cfg.momentum >= 0.f && cfg.momentum <= 1.f, op, ": momentum must be in [0,1], given ",
               cfg.momentum);
}

inline void check_bn_input(const char* op, Shape x, bool training) {
  AMPKIT_CHECK(x.n >= 1 && x.h >= 1 && x.w >= 1 && x.c >= 1, op, ": input shape ", x,
               " has an empty dimension");
  // As PyTorch: the unbiased running variance needs at least two values per channel.
  AMPKIT_CHECK(!training || x.n * x.h * x.w > 1, op,
               ": training needs more than 1 value per channel, input is ", x);
}

inline const char* bn_forward_name(BatchNormEpilogue e, bool training) {
  switch (e) {
    case BatchNormEpilogue::kRelu:
      return training ? "batch_norm_relu_forward_training" : "batch_norm_relu_forward_inference";
    case BatchNormEpilogue::kAddRelu:
      return training ? "batch_norm_add_relu_forward_training" : "batch_norm_add_relu_forward_inference";
    default:
      return training ? "batch_norm_forward_training" : "batch_norm_forward_inference";
  }
}

inline const char* bn_backward_name(BatchNormEpilogue e) {
  switch (e) {
    case BatchNormEpilogue::kRelu:
      return "batch_norm_relu_backward";
    case BatchNormEpilogue::kAddRelu:
      return "batch_norm_add_relu_backward";
    default:
      return "batch_norm_backward";
  }
}

/// Arguments of one forward pass, validated once for both backends.
template <class T>
struct BatchNormForwardArgs {
  TensorView<const T> x, residual;
  TensorView<const float> gamma, beta;
  TensorView<float> running_mean, running_var;  ///< read (inference) or updated (training)
  TensorView<float> save_mean, save_invstd;     ///< written in training
  TensorView<T> y;

  void validate(const char* op, BatchNormEpilogue e, bool training, const BatchNormConfig& cfg) const {
    check_bn_config(op, cfg);
    check_bn_input(op, x.shape, training);
    check_shape(op, "x", x, x.shape);
    const std::int64_t c = x.shape.c;
    check_bn_vector(op, "gamma", gamma, c);
    check_bn_vector(op, "beta", beta, c);
    check_bn_vector(op, "running_mean", running_mean, c);
    check_bn_vector(op, "running_var", running_var, c);
    if (training) {
      check_bn_vector(op, "save_mean", save_mean, c);
      check_bn_vector(op, "save_invstd", save_invstd, c);
    }
    if (e == BatchNormEpilogue::kAddRelu) check_bn_activation(op, "residual", residual, x.shape);
    check_bn_activation(op, "y", y, x.shape);
  }
};

/// Arguments of a rebuild from the saved statistics (see the file comment).
template <class T>
struct BatchNormSavedArgs {
  TensorView<const T> x;
  TensorView<const float> gamma, beta, save_mean, save_invstd;
  TensorView<T> y;

  void validate(const char* op) const {
    check_bn_input(op, x.shape, true);
    const std::int64_t c = x.shape.c;
    check_bn_vector(op, "gamma", gamma, c);
    check_bn_vector(op, "beta", beta, c);
    check_bn_vector(op, "save_mean", save_mean, c);
    check_bn_vector(op, "save_invstd", save_invstd, c);
    check_bn_activation(op, "y", y, x.shape);
  }
};

/// Arguments of one backward pass.
template <class T>
struct BatchNormBackwardArgs {
  TensorView<const T> x, y, dL_dy;
  TensorView<const float> gamma, save_mean, save_invstd;
  TensorView<T> dL_dx, dL_dresidual;
  TensorView<float> dL_dgamma, dL_dbeta;

  void validate(const char* op, BatchNormEpilogue e) const {
    check_bn_input(op, x.shape, true);
    const Shape s = x.shape;
    check_shape(op, "x", x, s);
    if (e != BatchNormEpilogue::kNone) check_bn_activation(op, "y", y, s);
    check_bn_activation(op, "dL_dy", dL_dy, s);
    check_bn_activation(op, "dL_dx", dL_dx, s);
    if (e == BatchNormEpilogue::kAddRelu) check_bn_activation(op, "dL_dresidual", dL_dresidual, s);
    check_bn_vector(op, "gamma", gamma, s.c);
    check_bn_vector(op, "save_mean", save_mean, s.c);
    check_bn_vector(op, "save_invstd", save_invstd, s.c);
    check_bn_vector(op, "dL_dgamma", dL_dgamma, s.c);
    check_bn_vector(op, "dL_dbeta", dL_dbeta, s.c);
  }
};

}  // namespace detail
}  // namespace ampkit

/// @brief Conv2d on both backends: parameters, output shape and input validation (shared), and
/// the gradient contract. The kernels are in backend/host/conv2d.hpp and backend/cuda/conv2d.cuh.
///
/// Layouts: x (N,H,W,C), weights KRSC viewed as (K,R,S,C/groups), bias (1,1,1,K), y (N,P,Q,K).
/// Cross-correlation as PyTorch's nn.Conv2d: y[n,p,q,k] = b[k] + sum_{r,s,c'} w[k,r,s,c'] *
/// x[n, p*stride_h - pad_h + r*dilation_h, q*stride_w - pad_w + s*dilation_w, g*C/groups + c']
/// with g = k / (K/groups); taps outside the image read zero.
///
/// Gradient contract (both backends):
///   conv2d_backward_data    dL_dx  is WRITTEN (=)
///   conv2d_backward_filter  dL_dw  is ACCUMULATED (+=), in the storage type T
///   conv2d_backward_bias    dL_db  is ACCUMULATED (+=), in the storage type T
/// Accumulation is fp32 inside every op; results are rounded to T once, at the end.
#pragma once

#include <cstdint>

#include "ampkit/core/error.hpp"
#include "ampkit/core/tensor.hpp"

namespace ampkit {

/// Stride, zero padding, dilation and groups of a 2-D convolution (kernel size comes from the
/// weight view). Defaults: a plain stride-1, unpadded, ungrouped conv.
struct Conv2dParams {
  std::int64_t stride_h = 1, stride_w = 1;
  std::int64_t pad_h = 0, pad_w = 0;
  std::int64_t dilation_h = 1, dilation_w = 1;
  std::int64_t groups = 1;

  /// Square kernel helper: `Conv2dParams::square(stride, pad, dilation, groups)`.
  static constexpr Conv2dParams square(std::int64_t stride, std::int64_t pad, std::int64_t dilation = 1,
                                       std::int64_t groups = 1) {
    return {stride, stride, pad, pad, dilation, dilation, groups};
  }
  constexpr bool operator==(const Conv2dParams&) const = default;
};

/// Output shape of conv2d(x, w) (shapes only), validating everything that can be wrong:
/// non-positive stride/dilation/groups, negative padding, channel counts that do not match or
/// do not divide by groups, and a kernel larger than the padded input.
/// `op` names the entry point in messages.
inline Shape conv2d_output_shape(Shape x, Shape w, const Conv2dParams& p, const char* op = "conv2d") {
  AMPKIT_CHECK(p.stride_h >= 1 && p.stride_w >= 1, op, ": stride must be >= 1, given (", p.stride_h, ",",
               p.stride_w, ")");
  AMPKIT_CHECK(p.dilation_h >= 1 && p.dilation_w >= 1, op, ": dilation must be >= 1, given (", p.dilation_h,
               ",", p.dilation_w, ")");
  AMPKIT_CHECK(p.pad_h >= 0 && p.pad_w >= 0, op, ": padding must be >= 0, given (", p.pad_h, ",", p.pad_w,
               ")");
  AMPKIT_CHECK(p.groups >= 1, op, ": groups must be >= 1, given ", p.groups);
  AMPKIT_CHECK(x.n >= 1 && x.h >= 1 && x.w >= 1 && x.c >= 1, op, ": input shape ", x,
               " has an empty dimension");
  AMPKIT_CHECK(w.n >= 1 && w.h >= 1 && w.w >= 1 && w.c >= 1, op, ": weight shape ", w,
               " (K,R,S,C/groups) has an empty dimension");
  AMPKIT_CHECK(x.c % p.groups == 0, op, ": input has ", x.c, " channels, not divisible by groups=", p.groups);
  AMPKIT_CHECK(w.n % p.groups == 0, op, ": weights have ", w.n,
               " output channels, not divisible by groups=", p.groups);
  AMPKIT_CHECK(x.c == w.c * p.groups, op, ": input has ", x.c, " channels, weights ", w,
               " (K,R,S,C/groups) with groups=", p.groups, " expect ", w.c * p.groups);
  const std::int64_t ekh = (w.h - 1) * p.dilation_h + 1, ekw = (w.w - 1) * p.dilation_w + 1;
  AMPKIT_CHECK(x.h + 2 * p.pad_h >= ekh && x.w + 2 * p.pad_w >= ekw, op, ": padded input ", x.h + 2 * p.pad_h,
               "x", x.w + 2 * p.pad_w, " is smaller than the dilated kernel ", ekh, "x", ekw);
  return {x.n, (x.h + 2 * p.pad_h - ekh) / p.stride_h + 1, (x.w + 2 * p.pad_w - ekw) / p.stride_w + 1, w.n};
}

namespace detail {

/// Full validation at a conv entry point. `x`, `w` and `y` are the shapes of the input (or its
/// gradient), weights (or their gradient) and output (or its gradient); `bias` may be empty.
template <class TB>
void check_conv2d(const char* op, Shape x, Shape w, Shape y, const TensorView<TB>* bias,
                  const Conv2dParams& p) {
  const Shape expect = conv2d_output_shape(x, w, p, op);
  AMPKIT_CHECK(y == expect, op, ": output has shape ", y, ", expected ", expect, " for input ", x,
               " and weights ", w, " (N,H,W,C)");
  if (bias && bias->data)
    AMPKIT_CHECK(bias->shape == (Shape{1, 1, 1, w.n}), op, ": bias has shape ", bias->shape, ", expected ",
                 Shape{1, 1, 1, w.n});
}

}  // namespace detail
}  // namespace ampkit

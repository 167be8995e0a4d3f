/// @brief Nearest-neighbour upsampling by an integer factor (HRNet's fuse path, ×2/×4/×8):
/// shapes and validation shared by the host and CUDA backends.
///
/// Semantics are PyTorch's `F.interpolate(mode='nearest', scale_factor=s)` for integer s:
/// y(n, i, j, c) = x(n, i / s, j / s, c). The backward sums each s×s block of dL_dy.
#pragma once

#include "ampkit/core/error.hpp"
#include "ampkit/core/tensor.hpp"
#include "ampkit/nn/ops/sampling_common.hpp"

namespace ampkit {

/// (N, H, W, C) -> (N, H·s, W·s, C).
inline Shape upsample_nearest_output_shape(Shape x, int scale) {
  AMPKIT_CHECK(scale >= 1, "upsample_nearest: scale must be a positive integer, given ", scale);
  return {x.n, x.h * scale, x.w * scale, x.c};
}

/// Validate x (input or its gradient) against y (output or its gradient) for a scale factor.
template <class X, class Y>
void check_upsample_nearest(const TensorView<X>& x, const TensorView<Y>& y, int scale, const char* x_name,
                            const char* y_name) {
  const Shape want = upsample_nearest_output_shape(x.shape, scale);
  AMPKIT_CHECK(x.data != nullptr || x.numel() == 0, "upsample_nearest: ", x_name, " has no data");
  check_shape("upsample_nearest", y_name, y, want);
}

}  // namespace ampkit

/// @brief Bilinear resize to an arbitrary size with `align_corners=False` (the DEKR neck's
/// branch resize): shapes and validation shared by the host and CUDA backends.
///
/// Semantics are PyTorch's `F.interpolate(x, size=(H, W), mode='bilinear', align_corners=False)`
/// (see detail::linear_tap). The output size is the shape of `y`; batch and channels must match.
#pragma once

#include "ampkit/core/error.hpp"
#include "ampkit/core/tensor.hpp"
#include "ampkit/nn/ops/sampling_common.hpp"

namespace ampkit {

template <class X, class Y>
void check_resize_bilinear(const char* op, const TensorView<X>& x, const TensorView<Y>& y, const char* x_name,
                           const char* y_name) {
  AMPKIT_CHECK(x.data != nullptr || x.numel() == 0, op, ": ", x_name, " has no data");
  AMPKIT_CHECK(y.data != nullptr || y.numel() == 0, op, ": ", y_name, " has no data");
  AMPKIT_CHECK(x.shape.n == y.shape.n, op, ": ", x_name, " has batch ", x.shape.n, ", ", y_name, " has batch ",
               y.shape.n, " (shapes ", x.shape, " and ", y.shape, ")");
  AMPKIT_CHECK(x.shape.c == y.shape.c, op, ": ", x_name, " has ", x.shape.c, " channels, ", y_name, " has ",
               y.shape.c);
  AMPKIT_CHECK(y.numel() == 0 || (x.shape.h > 0 && x.shape.w > 0), op, ": cannot resize an empty ", x_name,
               " of shape ", x.shape, " to ", y.shape);
}

}  // namespace ampkit

/// @brief Host backend: channel concat / split and the DEKR neck's fused resize + concat.
#pragma once

#include <span>

#include "ampkit/backend/host/context.hpp"
#include "ampkit/backend/host/resize_bilinear.hpp"
#include "ampkit/nn/ops/concat.hpp"

namespace ampkit {

/// y (N,H,W,ΣC) = [x_0 | x_1 | ...]; every x_i is (N,H,W,C_i).
template <StorageScalar T>
void concat_forward(Host&, std::span<const TensorView<const T>> xs, TensorView<T> y) {
  check_concat("concat", xs, y, false);
  std::int64_t c0 = 0;
  for (const auto& x : xs) {
    detail::host_resize_into<T>(x, y, c0);
    c0 += x.shape.c;
  }
}

/// Split: dL_dx_i (=) channel slice i of dL_dy.
template <StorageScalar T>
void concat_backward(Host&, TensorView<const T> dL_dy, std::span<const TensorView<T>> dL_dxs) {
  check_concat("concat", dL_dxs, dL_dy, false);
  std::int64_t c0 = 0;
  for (const auto& dx : dL_dxs) {
    detail::host_resize_from<T>(dL_dy, dx, c0);
    c0 += dx.shape.c;
  }
}

/// y (N,H,W,ΣC) = [resize(x_0) | resize(x_1) | ...], each x_i (N,h_i,w_i,C_i) resized bilinearly
/// (align_corners=False) to (H,W); an x_i already at (H,W) is copied.
template <StorageScalar T>
void resize_concat_forward(Host&, std::span<const TensorView<const T>> xs, TensorView<T> y) {
  check_concat("resize_concat", xs, y, true);
  std::int64_t c0 = 0;
  for (const auto& x : xs) {
    detail::host_resize_into<T>(x, y, c0);
    c0 += x.shape.c;
  }
}

/// dL_dx_i (=) adjoint of resize_i applied to channel slice i of dL_dy.
template <StorageScalar T>
void resize_concat_backward(Host&, TensorView<const T> dL_dy, std::span<const TensorView<T>> dL_dxs) {
  check_concat("resize_concat", dL_dxs, dL_dy, true);
  std::int64_t c0 = 0;
  for (const auto& dx : dL_dxs) {
    detail::host_resize_from<T>(dL_dy, dx, c0);
    c0 += dx.shape.c;
  }
}

}  // namespace ampkit

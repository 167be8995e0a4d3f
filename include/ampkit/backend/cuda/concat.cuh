/// @brief CUDA backend: channel concat / split and the DEKR neck's fused resize + concat (each
/// branch is resized straight into its channel slice: no intermediate resized tensors).
#pragma once

#include <span>

#include "ampkit/backend/cuda/context.cuh"
#include "ampkit/backend/cuda/resize_bilinear.cuh"
#include "ampkit/nn/ops/concat.hpp"

namespace ampkit {

/// y (N,H,W,ΣC) = [x_0 | x_1 | ...]; every x_i is (N,H,W,C_i).
template <StorageScalar T>
void concat_forward(Cuda& ctx, std::span<const TensorView<const T>> xs, TensorView<T> y) {
  check_concat("concat", xs, y, false);
  std::int64_t c0 = 0;
  for (const auto& x : xs) {
    cuda::sampling::resize_into<T>(ctx, x, y, c0);
    c0 += x.shape.c;
  }
}

/// Split: dL_dx_i (=) channel slice i of dL_dy.
template <StorageScalar T>
void concat_backward(Cuda& ctx, TensorView<const T> dL_dy, std::span<const TensorView<T>> dL_dxs) {
  check_concat("concat", dL_dxs, dL_dy, false);
  std::int64_t c0 = 0;
  for (const auto& dx : dL_dxs) {
    cuda::sampling::resize_from<T>(ctx, dL_dy, dx, c0);
    c0 += dx.shape.c;
  }
}

/// y (N,H,W,ΣC) = [resize(x_0) | resize(x_1) | ...], bilinear, align_corners=False.
template <StorageScalar T>
void resize_concat_forward(Cuda& ctx, std::span<const TensorView<const T>> xs, TensorView<T> y) {
  check_concat("resize_concat", xs, y, true);
  std::int64_t c0 = 0;
  for (const auto& x : xs) {
    cuda::sampling::resize_into<T>(ctx, x, y, c0);
    c0 += x.shape.c;
  }
}

/// dL_dx_i (=) adjoint of resize_i applied to channel slice i of dL_dy.
template <StorageScalar T>
void resize_concat_backward(Cuda& ctx, TensorView<const T> dL_dy, std::span<const TensorView<T>> dL_dxs) {
  check_concat("resize_concat", dL_dxs, dL_dy, true);
  std::int64_t c0 = 0;
  for (const auto& dx : dL_dxs) {
    cuda::sampling::resize_from<T>(ctx, dL_dy, dx, c0);
    c0 += dx.shape.c;
  }
}

}  // namespace ampkit

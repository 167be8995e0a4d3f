/// @brief Host backend: nearest-neighbour upsampling by an integer factor, forward and backward.
#pragma once

#include "ampkit/backend/host/context.hpp"
#include "ampkit/core/numeric_types.hpp"
#include "ampkit/core/tensor.hpp"
#include "ampkit/nn/ops/upsample_nearest.hpp"

namespace ampkit {

/// y(n,i,j,c) (=|+=) x(n, i/s, j/s, c).  x (N,H,W,C) -> y (N,H·s,W·s,C).
template <StorageScalar T>
void upsample_nearest_forward(Host&, TensorView<const T> x, TensorView<T> y, int scale,
                              Accumulate mode = Accumulate::kNo) {
  check_upsample_nearest(x, y, scale, "x", "y");
  const Shape ys = y.shape;
  for (std::int64_t n = 0; n < ys.n; ++n)
    for (std::int64_t i = 0; i < ys.h; ++i)
      for (std::int64_t j = 0; j < ys.w; ++j) {
        const T* src = &x(n, i / scale, j / scale, 0);
        T* dst = &y(n, i, j, 0);
        for (std::int64_t c = 0; c < ys.c; ++c)
          dst[c] = mode == Accumulate::kYes ? convert<T>(static_cast<float>(dst[c]) + static_cast<float>(src[c]))
                                            : src[c];
      }
}

/// dL_dx(n,i,j,c) (=|+=) sum over the s×s block of dL_dy, summed in float.
template <StorageScalar T>
void upsample_nearest_backward(Host&, TensorView<const T> dL_dy, TensorView<T> dL_dx, int scale,
                               Accumulate mode = Accumulate::kNo) {
  check_upsample_nearest(dL_dx, dL_dy, scale, "dL_dx", "dL_dy");
  const Shape xs = dL_dx.shape;
  for (std::int64_t n = 0; n < xs.n; ++n)
    for (std::int64_t i = 0; i < xs.h; ++i)
      for (std::int64_t j = 0; j < xs.w; ++j)
        for (std::int64_t c = 0; c < xs.c; ++c) {
          float acc = mode == Accumulate::kYes ? static_cast<float>(dL_dx(n, i, j, c)) : 0.f;
          for (int a = 0; a < scale; ++a)
            for (int b = 0; b < scale; ++b) acc += static_cast<float>(dL_dy(n, i * scale + a, j * scale + b, c));
          dL_dx(n, i, j, c) = convert<T>(acc);
        }
}

}  // namespace ampkit

/// @brief Host backend: DEKR's adaptive offsets (per-pixel 2×3 affine matrix applied to the
/// regular 3×3 grid), forward and backward. See nn/ops/affine_offsets.hpp for the exact maps.
#pragma once

#include "ampkit/backend/host/context.hpp"
#include "ampkit/core/numeric_types.hpp"
#include "ampkit/core/tensor.hpp"
#include "ampkit/nn/ops/affine_offsets.hpp"
#include "ampkit/nn/ops/sampling_common.hpp"

namespace ampkit {
namespace detail {

template <class T>
void host_affine_offsets_forward(TensorView<const T> affine, TensorView<T> offsets) {
  using A = host_acc_t<T>;
  const std::int64_t pixels = affine.shape.n * affine.shape.h * affine.shape.w, groups = affine.shape.c / 6;
  for (std::int64_t p = 0; p < pixels * groups; ++p) {
    const T* m = affine.data + p * 6;  // M[r][q] = m[3r + q]
    T* o = offsets.data + p * 18;
    for (int k = 0; k < 9; ++k)
      for (int r = 0; r < 2; ++r)
        o[2 * k + r] = store_as<T>(load_as<A>(m[3 * r]) * A(affine_grid_dy(k)) +
                                   load_as<A>(m[3 * r + 1]) * A(affine_grid_dx(k)) + load_as<A>(m[3 * r + 2]));
  }
}

template <class T>
void host_affine_offsets_backward(TensorView<const T> dL_doffsets, TensorView<T> dL_daffine) {
  using A = host_acc_t<T>;
  const std::int64_t pixels = dL_daffine.shape.n * dL_daffine.shape.h * dL_daffine.shape.w,
                     groups = dL_daffine.shape.c / 6;
  for (std::int64_t p = 0; p < pixels * groups; ++p) {
    const T* g = dL_doffsets.data + p * 18;
    T* m = dL_daffine.data + p * 6;
    for (int r = 0; r < 2; ++r) {
      A a = 0, b = 0, t = 0;
      for (int k = 0; k < 9; ++k) {
        const A v = load_as<A>(g[2 * k + r]);
        a += v * A(affine_grid_dy(k));
        b += v * A(affine_grid_dx(k));
        t += v;
      }
      m[3 * r] = store_as<T>(a);
      m[3 * r + 1] = store_as<T>(b);
      m[3 * r + 2] = store_as<T>(t);
    }
  }
}

}  // namespace detail

/// offsets (N,H,W,18G) = M·R per pixel and group, from affine (N,H,W,6G).
template <StorageScalar T>
void affine_offsets_forward(Host&, TensorView<const T> affine, TensorView<T> offsets) {
  check_affine_offsets("affine_offsets", affine, offsets, "affine", "offsets");
  detail::host_affine_offsets_forward<T>(affine, offsets);
}

/// dL_daffine (N,H,W,6G) (=) from dL_doffsets (N,H,W,18G).
template <StorageScalar T>
void affine_offsets_backward(Host&, TensorView<const T> dL_doffsets, TensorView<T> dL_daffine) {
  check_affine_offsets("affine_offsets", dL_daffine, dL_doffsets, "dL_daffine", "dL_doffsets");
  detail::host_affine_offsets_backward<T>(dL_doffsets, dL_daffine);
}

}  // namespace ampkit

/// @brief CUDA backend: DEKR's adaptive offsets (per-pixel 2×3 affine matrix applied to the
/// regular 3×3 grid), forward and backward. See nn/ops/affine_offsets.hpp for the exact maps.
///
/// Kept as its own small pass rather than fused into deform_conv2d's sampling: it moves
/// 6+18 values per (pixel, group) once, against the 9·C/G samples and GEMM of the conv, so fusing
/// would save well under 5% of the block while tying the conv to one offset parameterisation.
#pragma once

#include "ampkit/backend/cuda/check.cuh"
#include "ampkit/backend/cuda/context.cuh"
#include "ampkit/backend/cuda/sampling_common.cuh"
#include "ampkit/nn/ops/affine_offsets.hpp"

namespace ampkit {
namespace cuda::sampling {

template <class T>
__global__ void affine_offsets_forward_kernel(const T* __restrict__ affine, T* __restrict__ offsets, std::int64_t units) {
  for (std::int64_t u = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; u < units;
       u += std::int64_t(gridDim.x) * blockDim.x) {
    float m[6];
#pragma unroll
    for (int q = 0; q < 6; ++q) m[q] = load_f(affine + u * 6 + q);
#pragma unroll
    for (int k = 0; k < 9; ++k)
#pragma unroll
      for (int r = 0; r < 2; ++r)  // same operation order as the host: (a·dy + b·dx) + t
        store_f(offsets + u * 18 + 2 * k + r,
                __fadd_rn(__fadd_rn(__fmul_rn(m[3 * r], float(::ampkit::detail::affine_grid_dy(k))),
                                    __fmul_rn(m[3 * r + 1], float(::ampkit::detail::affine_grid_dx(k)))),
                          m[3 * r + 2]));
  }
}

template <class T>
__global__ void affine_offsets_backward_kernel(const T* __restrict__ d_off, T* __restrict__ d_aff, std::int64_t units) {
  for (std::int64_t u = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; u < units;
       u += std::int64_t(gridDim.x) * blockDim.x) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float a = 0.f, b = 0.f, t = 0.f;
#pragma unroll
      for (int k = 0; k < 9; ++k) {
        const float v = load_f(d_off + u * 18 + 2 * k + r);
        a += v * float(::ampkit::detail::affine_grid_dy(k));
        b += v * float(::ampkit::detail::affine_grid_dx(k));
        t += v;
      }
      store_f(d_aff + u * 6 + 3 * r, a);
      store_f(d_aff + u * 6 + 3 * r + 1, b);
      store_f(d_aff + u * 6 + 3 * r + 2, t);
    }
  }
}

}  // namespace cuda::sampling

/// offsets (N,H,W,18G) = M·R per pixel and group, from affine (N,H,W,6G).
template <StorageScalar T>
void affine_offsets_forward(Cuda& ctx, TensorView<const T> affine, TensorView<T> offsets) {
  check_affine_offsets("affine_offsets", affine, offsets, "affine", "offsets");
  const std::int64_t units = affine.numel() / 6;
  if (units == 0) return;
  cuda::sampling::affine_offsets_forward_kernel<T>
      <<<cuda::sampling::grid_for(units, 256), 256, 0, ctx.stream()>>>(affine.data, offsets.data, units);
  AMPKIT_CUDA_CHECK_LAUNCH();
}

/// dL_daffine (N,H,W,6G) (=) from dL_doffsets (N,H,W,18G).
template <StorageScalar T>
void affine_offsets_backward(Cuda& ctx, TensorView<const T> dL_doffsets, TensorView<T> dL_daffine) {
  check_affine_offsets("affine_offsets", dL_daffine, dL_doffsets, "dL_daffine", "dL_doffsets");
  const std::int64_t units = dL_daffine.numel() / 6;
  if (units == 0) return;
  cuda::sampling::affine_offsets_backward_kernel<T>
      <<<cuda::sampling::grid_for(units, 256), 256, 0, ctx.stream()>>>(dL_doffsets.data, dL_daffine.data, units);
  AMPKIT_CUDA_CHECK_LAUNCH();
}

}  // namespace ampkit

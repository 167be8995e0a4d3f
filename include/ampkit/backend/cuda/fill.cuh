/// @brief CUDA twins of backend/host/fill.hpp: zero a view (cudaMemsetAsync) and round an fp32
/// view into a storage-type view (master weights -> compute copies), in stream order.
#pragma once

#include <cuda_runtime.h>

#include "ampkit/backend/cuda/check.cuh"
#include "ampkit/backend/cuda/context.cuh"
#include "ampkit/core/numeric_types.hpp"
#include "ampkit/core/tensor.hpp"
#include "ampkit/precision.hpp"

namespace ampkit {

namespace cuda::kernels {
template <class N>
__global__ void convert_copy(const float* __restrict__ g_src, N* __restrict__ g_dst, std::int64_t n) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    if constexpr (std::is_same_v<N, float>) g_dst[i] = g_src[i];
    else if constexpr (std::is_same_v<N, __half>) g_dst[i] = __float2half_rn(g_src[i]);
    else g_dst[i] = __float2bfloat16_rn(g_src[i]);
  }
}
}  // namespace cuda::kernels

/// dst = 0 (every element); all-zero bits is 0 in every storage type.
template <class T>
void zero_fill(Cuda& ctx, TensorView<T> dst) {
  if (dst.numel()) AMPKIT_CUDA_CHECK(cudaMemsetAsync(dst.data, 0, dst.bytes(), ctx.stream()));
}

/// dst = round_to_T(src), round-to-nearest-even.
template <StorageScalar T>
void convert_copy(Cuda& ctx, TensorView<const float> src, TensorView<T> dst) {
  AMPKIT_CHECK(src.numel() == dst.numel(), "convert_copy: source holds ", src.numel(), " elements, destination ",
               dst.numel());
  const std::int64_t n = src.numel();
  if (!n) return;
  const int threads = 256;
  const int blocks = static_cast<int>(std::min<std::int64_t>((n + threads - 1) / threads, 4096));
  cuda::kernels::convert_copy<native_t<T>><<<blocks, threads, 0, ctx.stream()>>>(
      src.data, reinterpret_cast<native_t<T>*>(dst.data), n);
  AMPKIT_CUDA_CHECK_LAUNCH();
}

}  // namespace ampkit

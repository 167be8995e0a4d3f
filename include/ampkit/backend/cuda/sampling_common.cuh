/// @brief Device helpers shared by the CUDA resampling and deformable-conv kernels: float
/// loads/stores of the storage types through the native conversion intrinsics, and grid sizing.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <type_traits>

#include "ampkit/core/numeric_types.hpp"
#include "ampkit/precision.hpp"

namespace ampkit::cuda::sampling {

/// Storage value -> float with the hardware conversion (ampkit::half's own operator float is an
/// integer routine meant for the host).
template <StorageScalar T>
__device__ __forceinline__ float load_f(const T* p) {
  if constexpr (std::is_same_v<T, float>)
    return *p;
  else if constexpr (std::is_same_v<T, half>)
    return __half2float(*reinterpret_cast<const __half*>(p));
  else
    return __bfloat162float(*reinterpret_cast<const __nv_bfloat16*>(p));
}

/// float -> storage value, round to nearest even (the same rounding as ampkit::convert).
template <StorageScalar T>
__device__ __forceinline__ void store_f(T* p, float v) {
  if constexpr (std::is_same_v<T, float>)
    *p = v;
  else if constexpr (std::is_same_v<T, half>)
    *reinterpret_cast<__half*>(p) = __float2half_rn(v);
  else
    *reinterpret_cast<__nv_bfloat16*>(p) = __float2bfloat16_rn(v);
}

/// Blocks for a 1-D grid-stride launch over `n` items, capped so huge tensors reuse threads.
inline unsigned grid_for(std::int64_t n, int block) {
  const std::int64_t blocks = (n + block - 1) / block;
  return static_cast<unsigned>(std::clamp<std::int64_t>(blocks, 1, std::int64_t{1} << 20));
}

/// Widest vector (in elements, 16 bytes at most) that divides every channel count/offset given
/// and keeps every base pointer aligned, so NHWC rows move in 16-byte accesses.
template <class T>
int vector_width(std::initializer_list<std::int64_t> counts, std::initializer_list<const void*> ptrs) {
  int v = static_cast<int>(16 / sizeof(T));
  for (; v > 1; v /= 2) {
    bool ok = true;
    for (auto c : counts) ok = ok && c % v == 0;
    for (auto p : ptrs) ok = ok && reinterpret_cast<std::uintptr_t>(p) % (v * sizeof(T)) == 0;
    if (ok) break;
  }
  return v;
}

/// V storage elements moved as one aligned access.
template <class T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

}  // namespace ampkit::cuda::sampling

/// @brief Device helpers for the nn kernels: storage <-> fp32 conversion on the hardware units,
/// 16-byte packed loads/stores, and the launch-shape helpers they share.
///
/// Why packs: activations are fp16/bf16 and the elementwise/BN kernels are bandwidth bound; one
/// 16-byte access per thread (8 halves) keeps the memory pipeline full where 2-byte accesses
/// would not. Every kernel also has a scalar (V = 1) instantiation for sizes and addresses that do
/// not allow packs (e.g. DEKR's 255- and 34-channel tensors).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "ampkit/core/numeric_types.hpp"
#include "ampkit/precision.hpp"

namespace ampkit::cuda::detail {

__device__ __forceinline__ float to_float(float x) {
  return x;
}
__device__ __forceinline__ float to_float(__half x) {
  return __half2float(x);
}
__device__ __forceinline__ float to_float(__nv_bfloat16 x) {
  return __bfloat162float(x);
}

template <class N>
__device__ __forceinline__ N from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

/// V elements of N loaded or stored as one access.
template <class N, int V>
struct alignas(sizeof(N) * V) Pack {
  N v[V];
};

template <class N, int V>
__device__ __forceinline__ void load_pack(const N* p, float (&out)[V]) {
  const Pack<N, V> pk = *reinterpret_cast<const Pack<N, V>*>(p);
#pragma unroll
  for (int i = 0; i < V; ++i) out[i] = to_float(pk.v[i]);
}

template <class N, int V>
__device__ __forceinline__ void store_pack(N* p, const float (&in)[V]) {
  Pack<N, V> pk;
#pragma unroll
  for (int i = 0; i < V; ++i) pk.v[i] = from_float<N>(in[i]);
  *reinterpret_cast<Pack<N, V>*>(p) = pk;
}

/// The widest pack (<= 16 bytes) such that `n_inner` is a multiple of it and every pointer is
/// aligned to it. `n_inner` is the channel count for per-channel kernels, or numel otherwise.
template <class T>
int pack_width(std::int64_t n_inner, std::initializer_list<const void*> ptrs) {
  for (int v = static_cast<int>(16 / sizeof(T)); v > 1; v /= 2) {
    bool ok = n_inner % v == 0;
    for (const void* p : ptrs)
      ok = ok && (p == nullptr || reinterpret_cast<std::uintptr_t>(p) % (v * sizeof(T)) == 0);
    if (ok) return v;
  }
  return 1;
}

/// Grid size for a grid-stride loop over `n` items with `threads` per block: enough blocks to
/// fill the device a few times over, never more than there is work for.
inline unsigned grid_for(std::int64_t n, int threads, int n_sm) {
  const std::int64_t need = (n + threads - 1) / threads;
  return static_cast<unsigned>(
      std::max<std::int64_t>(1, std::min<std::int64_t>(need, std::int64_t{n_sm} * 8)));
}

/// The CUDA-native pointer for an ampkit storage pointer (same bit layout, checked in numeric_types).
template <StorageScalar T>
auto native(T* p) {
  return reinterpret_cast<native_t<T>*>(p);
}
template <StorageScalar T>
auto native(const T* p) {
  return reinterpret_cast<const native_t<T>*>(p);
}

}  // namespace ampkit::cuda::detail

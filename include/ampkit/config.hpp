/// @brief Compiler and platform switches shared by every ampkit header.
///
/// `.hpp` headers compile with a plain C++20 host compiler; `.cuh` headers need nvcc. This is the
/// one place that papers over the difference, so that numeric types and small helpers can be
/// written once and used from host code and from kernels alike.
#pragma once

#if defined(__CUDACC__)
#define AMPKIT_HOST_DEVICE __host__ __device__
#define AMPKIT_DEVICE __device__
#define AMPKIT_FORCEINLINE __forceinline__
#else
#define AMPKIT_HOST_DEVICE
#define AMPKIT_DEVICE
#define AMPKIT_FORCEINLINE inline __attribute__((always_inline))
#endif

/// Set when the CUDA toolkit headers (cuda_runtime.h, cudnn.h, cublas, nccl.h) may be included:
/// always under nvcc, and in host translation units of targets that link `ampkit::cuda`.
#if defined(__CUDACC__) || defined(AMPKIT_ENABLE_CUDA)
#define AMPKIT_HAS_CUDA_HEADERS 1
#else
#define AMPKIT_HAS_CUDA_HEADERS 0
#endif

#define AMPKIT_VERSION_MAJOR 0
#define AMPKIT_VERSION_MINOR 1
#define AMPKIT_VERSION_PATCH 0

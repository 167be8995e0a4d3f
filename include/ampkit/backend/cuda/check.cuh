/// @brief AMPKIT_CUDA_CHECK / _CUDNN_ / _CUBLAS_ / _NCCL_ and the after-launch check: each throws
/// ampkit::Error with the call text, file:line and the library's own message.
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>
#include <nccl.h>

#include <string>

#include "ampkit/core/error.hpp"

namespace ampkit::cuda::detail {

[[noreturn]] inline void throw_cuda(cudaError_t e, const char* expr, const char* file, int line) {
  (void)cudaGetLastError();  // clear a non-sticky error so the next check starts clean
  std::string msg = ::ampkit::detail::concat(expr, " failed: ", cudaGetErrorName(e), " (",
                                             cudaGetErrorString(e), ")");
  auto where = ::ampkit::detail::location(file, line);
  if (e == cudaErrorMemoryAllocation) throw OutOfMemoryError(msg, where);
  throw Error(msg, where);
}

[[noreturn]] inline void throw_cudnn(cudnnStatus_t s, const char* expr, const char* file, int line) {
  char last[512] = {0};
  cudnnGetLastErrorString(last, sizeof(last));  // cuDNN 9: the detailed reason, if it kept one
  throw Error(::ampkit::detail::concat(expr, " failed: ", cudnnGetErrorString(s),
                                       last[0] ? std::string(" (") + last + ")" : std::string()),
              ::ampkit::detail::location(file, line));
}

[[noreturn]] inline void throw_cublas(cublasStatus_t s, const char* expr, const char* file, int line) {
  throw Error(::ampkit::detail::concat(expr, " failed: ", cublasGetStatusName(s), " (",
                                       cublasGetStatusString(s), ")"),
              ::ampkit::detail::location(file, line));
}

[[noreturn]] inline void throw_nccl(ncclResult_t r, const char* expr, const char* file, int line) {
  throw Error(::ampkit::detail::concat(expr, " failed: ", ncclGetErrorString(r),
                                       " (set NCCL_DEBUG=WARN for NCCL's own explanation)"),
              ::ampkit::detail::location(file, line));
}

}  // namespace ampkit::cuda::detail

#define AMPKIT_CUDA_CHECK(expr)                                                                  \
  do {                                                                                           \
    const cudaError_t ampkit_e_ = (expr);                                                        \
    if (ampkit_e_ != cudaSuccess) [[unlikely]]                                                   \
      ::ampkit::cuda::detail::throw_cuda(ampkit_e_, #expr, __FILE__, __LINE__);                  \
  } while (0)

#define AMPKIT_CUDNN_CHECK(expr)                                                                 \
  do {                                                                                           \
    const cudnnStatus_t ampkit_s_ = (expr);                                                      \
    if (ampkit_s_ != CUDNN_STATUS_SUCCESS) [[unlikely]]                                          \
      ::ampkit::cuda::detail::throw_cudnn(ampkit_s_, #expr, __FILE__, __LINE__);                 \
  } while (0)

#define AMPKIT_CUBLAS_CHECK(expr)                                                                \
  do {                                                                                           \
    const cublasStatus_t ampkit_s_ = (expr);                                                     \
    if (ampkit_s_ != CUBLAS_STATUS_SUCCESS) [[unlikely]]                                         \
      ::ampkit::cuda::detail::throw_cublas(ampkit_s_, #expr, __FILE__, __LINE__);                \
  } while (0)

#define AMPKIT_NCCL_CHECK(expr)                                                                  \
  do {                                                                                           \
    const ncclResult_t ampkit_r_ = (expr);                                                       \
    if (ampkit_r_ != ncclSuccess) [[unlikely]]                                                   \
      ::ampkit::cuda::detail::throw_nccl(ampkit_r_, #expr, __FILE__, __LINE__);                  \
  } while (0)

/// After every kernel launch: catches bad launch configurations at once. With AMPKIT_DEBUG_SYNC
/// defined it also synchronises, so an illegal access is reported at the kernel that caused it.
#ifdef AMPKIT_DEBUG_SYNC
#define AMPKIT_CUDA_CHECK_LAUNCH()                                                               \
  do {                                                                                           \
    AMPKIT_CUDA_CHECK(cudaGetLastError());                                                       \
    AMPKIT_CUDA_CHECK(cudaDeviceSynchronize());                                                  \
  } while (0)
#else
#define AMPKIT_CUDA_CHECK_LAUNCH() AMPKIT_CUDA_CHECK(cudaGetLastError())
#endif

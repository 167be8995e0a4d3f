/// @brief Device discovery: query a CUDA device and check it against a precision policy, with
/// messages that say what to do instead.
#pragma once

#include <cuda_runtime.h>

#include "ampkit/backend/cuda/check.cuh"
#include "ampkit/core/device_info.hpp"

namespace ampkit::cuda {

/// Number of usable devices; 0 (never an exception) when there is no driver or no GPU.
inline int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

/// Describe device `index`, or throw the "no device" message explaining why there is none.
inline DeviceInfo query_device(int index = 0) {
  DeviceInfo info;
  info.index = index;
  (void)cudaDriverGetVersion(&info.driver_version);
  (void)cudaRuntimeGetVersion(&info.runtime_version);
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    (void)cudaGetLastError();
    throw Error(no_device_message(e != cudaSuccess ? cudaGetErrorString(e) : "device count is 0",
                                  info.driver_version, info.runtime_version));
  }
  AMPKIT_CHECK(index >= 0 && index < n, "CUDA device ", index, " requested but only ", n,
               " visible (CUDA_VISIBLE_DEVICES / LOCAL_RANK)");
  cudaDeviceProp p{};
  AMPKIT_CUDA_CHECK(cudaGetDeviceProperties(&p, index));
  info.name = p.name;
  info.cc_major = p.major;
  info.cc_minor = p.minor;
  info.total_bytes = p.totalGlobalMem;
  info.multiprocessors = p.multiProcessorCount;
  return info;
}

}  // namespace ampkit::cuda

/// @file
/// @brief Telling compute-sanitizer's initcheck about device stores it cannot observe.
///
/// Why: on the H200, initcheck does not see the stores of some library kernels. The probe
/// tools/probes/initcheck_conv_fwd.cu (2026-11-30, cuDNN 9.19, compute-sanitizer 2025.3.1)
/// runs every cuDNN forward algorithm into a freshly allocated output and copies it to the host:
/// for fp16 NHWC 1x1 convolutions, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM wrote every
/// element correctly (checked against a host reference) yet initcheck reported the whole output
/// as never written; 3x3 convolutions and IMPLICIT_GEMM were clean. Every later read of such an
/// output (our BatchNorm statistics, the padded GEMM's compaction) was then reported as an
/// uninitialised read, tens of thousands per DEKR step, burying any real report. cuBLASLt's sm_90
/// kernels (nvjet) are suspected of the same (their outputs were the other reported source).
///
/// NVTX's memory API (nvtxMemCudaMarkInitialized, in the CUDA toolkit's nvtx3 headers) is
/// NVIDIA's channel for this: after a library call has written an output range, we mark the
/// range initialised, in stream order. Only outputs the library computes in full are marked
/// (conv / GEMM results, compared with the host backend in the GPU tests), never our own
/// kernels' outputs: initcheck keeps checking those.
///
/// Cost: without a tool attached, NVTX's first call finds no injection library and every call
/// after it returns at once (one indirect call); under CUDA graph capture the mark is a host-side
/// call at capture time (the ranges stay marked: the caching allocator never returns them).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

// nvtxMemCudaMarkInitialized arrived with a later NVTX 3 than some supported CUDA toolkits ship
// (its callback id is defined with it): without it the marks compile to nothing, and initcheck
// runs on such a toolkit report the blind spot's reads again.
#if __has_include(<nvtx3/nvToolsExtMemCudaRt.h>)
#include <nvtx3/nvToolsExtMemCudaRt.h>
#endif
#if defined(NVTX3EXT_CBID_nvtxMemCudaMarkInitialized)
#define AMPKIT_SANITIZER_MARKS 1
#else
#define AMPKIT_SANITIZER_MARKS 0
#endif

namespace ampkit::cuda {

#if AMPKIT_SANITIZER_MARKS
/// The NVTX domain ampkit's marks are made in (created once; NVTX makes creation thread-safe).
inline nvtxDomainHandle_t sanitizer_domain() {
  static const nvtxDomainHandle_t domain = nvtxDomainCreateA("ampkit");
  return domain;
}
#endif

/// Marks [p, p + bytes) initialised for compute-sanitizer's initcheck once the work queued on
/// `stream` so far has run. A no-op for an empty range, and without NVTX's call (see above).
inline void mark_initialized([[maybe_unused]] cudaStream_t stream, [[maybe_unused]] const void* p,
                             [[maybe_unused]] std::size_t bytes) {
#if AMPKIT_SANITIZER_MARKS
  if (p == nullptr || bytes == 0) return;
  nvtxMemVirtualRangeDesc_t range{};
  range.size = bytes;
  range.ptr = p;
  nvtxMemMarkInitializedBatch_t batch{};
  batch.extCompatID = NVTX_EXT_COMPATID_MEM;
  batch.structSize = sizeof(batch);
  batch.regionType = NVTX_MEM_TYPE_VIRTUAL_ADDRESS;
  batch.regionDescCount = 1;
  batch.regionDescElementSize = sizeof(range);
  batch.regionDescElements = &range;
  nvtxMemCudaMarkInitialized(sanitizer_domain(), stream, 0, &batch);
#endif
}

}  // namespace ampkit::cuda

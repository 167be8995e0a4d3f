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
#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <string_view>

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

/// One device range handed to a library call, for trace_ranges().
struct TracedRange {
  const char* name;
  const void* p;
  std::size_t bytes;
};

/// Whether AMPKIT_SANITIZER_TRACE is set (to anything but "" or "0"); read once.
inline bool sanitizer_trace_on() {
  static const bool on = [] {
    const char* e = std::getenv("AMPKIT_SANITIZER_TRACE");
    return e != nullptr && *e != '\0' && std::string_view(e) != "0";
  }();
  return on;
}

/// With AMPKIT_SANITIZER_TRACE=1, one stderr line `ampkit-trace: WHAT name=0xADDR+BYTES ...` naming
/// the device ranges a library call is given (a conv's tensors, every workspace). Why: an initcheck
/// or memcheck report inside a cuDNN kernel gives only the address it touched; whether that byte
/// belongs to a tensor ampkit passed in (ampkit's to fix) or to the call's workspace (the
/// library's own scratch, whose content on entry is undefined by contract) decides who owns the
/// report. tools/sanitizer_report.py reads these lines next to the tool's reports and attributes
/// each reported address to the latest traced range holding it. Off (one cached branch) unless set.
inline void trace_ranges(const char* what, std::initializer_list<TracedRange> ranges) {
  if (!sanitizer_trace_on()) return;
  char line[512];
  int n = std::snprintf(line, sizeof line, "ampkit-trace: %s", what);
  for (const TracedRange& r : ranges) {
    if (n < 0 || static_cast<std::size_t>(n) >= sizeof line) break;
    n += std::snprintf(line + n, sizeof line - static_cast<std::size_t>(n), " %s=%p+%zu", r.name, r.p, r.bytes);
  }
  std::fprintf(stderr, "%s\n", line);
  std::fflush(stderr);
}

/// trace_ranges() for a conv call's three tensors (spelled out: nvcc's front end mangles a
/// braced list of braced ranges inside the conv templates).
inline void trace_conv(const char* what, const char* n1, const void* p1, std::size_t b1, const char* n2,
                       const void* p2, std::size_t b2, const char* n3, const void* p3, std::size_t b3) {
  if (!sanitizer_trace_on()) return;
  trace_ranges(what, {TracedRange{n1, p1, b1}, TracedRange{n2, p2, b2}, TracedRange{n3, p3, b3}});
}

}  // namespace ampkit::cuda

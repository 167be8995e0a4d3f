/// @brief 1x1 convolutions (stride 1, no padding, one group) as cuBLASLt GEMMs over the M = N*H*W
/// rows of NHWC data: the engine conv2d.cuh may choose instead of cuDNN, per shape and direction.
///
/// Why: on the H200 (bench/results/ops_vs_torch_h200_20261130_b.json, b32 fp16) cuDNN's legacy-API
/// algorithms ran DEKR's 1x1 convs at 0.48-0.78x PyTorch. A 1x1 conv on NHWC data is exactly one
/// GEMM with no im2col, and cuBLASLt's Hopper kernels are the fastest GEMMs there are.
///
/// Row-major NHWC matrices seen column-major by cuBLASLt: X (M,C) row-major is X' (C,M) with
/// ld C; Y (M,K) is Y' (K,M) with ld K; W (K,1,1,C) = (K,C) row-major is W' (C,K) with ld C.
///   forward   Y' (K,M)  = W'^T (K,C) . X' (C,M)     A = W' (op T), B = X',         ld_D = K
///   dgrad     dX' (C,M) = W' (C,K) . dY' (K,M)       A = W',        B = dY',        ld_D = C
///   wgrad     dW' (C,K) += X' (C,M) . dY'^T (M,K)    A = X',        B = dY' (op T), ld_D = C, beta 1
///
/// Numerics: CUBLAS_COMPUTE_32F (fp32 products and sums, fp32 alpha/beta) and one rounding to T,
/// as cuDNN does. Split-K is allowed only with the COMPUTE_TYPE reduction (fp32 partials in the
/// workspace, summed by a separate pass); the INPLACE and OUTPUT_TYPE schemes add partial sums in
/// the output type (fp16/bf16) and would break the "fp32 accumulation in every GEMM" contract of
/// precision.hpp, so they are masked out in every mode. fp32 storage never takes this path: it
/// stays on cuDNN with FMA math, so the fp32 policy (the parity reference) is unchanged.
///
/// Determinism: cuBLAS documents bit-identical results run to run for a given toolkit, GPU
/// architecture and SM count when the call has its own workspace (cublasLtMatmul with a
/// user-owned workspace, as here) and one stream. The remaining source of run-to-run differences
/// in a GEMM is a split-K reduction whose order depends on timing; the two schemes left (NONE: one
/// sequence per dot product; COMPUTE_TYPE: partials reduced in a fixed order by a second pass) do
/// not have one, and the chosen algorithm's scheme is read back and checked. So the GEMM path is
/// deterministic under both values of CudnnOptions::deterministic; the test checks it bit for bit.
///
/// Alignment: the algorithms are chosen for base pointers aligned to kGemmPointerAlign bytes (our
/// allocator gives 512); conv2d.cuh checks each call's pointers and runs cuDNN for a call whose
/// views are less aligned. Channel counts whose rows are not 16-byte aligned (255, 34, 17 ...)
/// are described to cuBLASLt with their true leading dimension; its heuristic returns only kernels
/// that support it, or none (then cuDNN runs).
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <limits>

#include "ampkit/backend/cuda/check.cuh"
#include "ampkit/backend/cuda/context.cuh"
#include "ampkit/core/tensor.hpp"
#include "ampkit/nn/ops/conv2d.hpp"

namespace ampkit {

namespace cuda {

/// The three directions of a conv, for per-direction engine choices.
enum class ConvDirection { kForward, kBackwardData, kBackwardFilter };

/// What runs a conv direction. kUnplanned: that direction has not run yet for the shape and
/// options asked about (choices are made at the first call).
enum class ConvEngine { kUnplanned, kCudnn, kCublasLt, kDirectGrouped };

inline const char* conv_engine_name(ConvEngine e) {
  switch (e) {
    case ConvEngine::kCudnn:
      return "cudnn";
    case ConvEngine::kCublasLt:
      return "cublaslt";
    case ConvEngine::kDirectGrouped:
      return "direct-grouped";
    case ConvEngine::kUnplanned:
      break;
  }
  return "unplanned";
}

/// Policy of the 1x1 GEMM path for fp16/bf16 1x1 convs (stride 1, no padding, one group).
///   kAuto   (default) benchmark mode: the fastest of cuDNN's choice and cuBLASLt's top
///           candidates, timed once per shape and direction; heuristic mode: cuBLASLt when every
///           row is 16-byte aligned (C and K multiples of 8), cuDNN otherwise.
///   kAlways cuBLASLt whenever it has an algorithm for the shape (tests, benchmarks).
///   kNever  cuDNN only (the older path).
/// The environment variable AMPKIT_CONV_GEMM=auto|always|never sets it at first use;
/// conv_force_cudnn() also turns it off. Part of the plan key, so changing it replans.
enum class Conv1x1Gemm { kAuto, kAlways, kNever };

inline std::atomic<Conv1x1Gemm>& conv1x1_gemm() {
  static std::atomic<Conv1x1Gemm> mode{[] {
    const char* e = std::getenv("AMPKIT_CONV_GEMM");
    if (e != nullptr && std::strcmp(e, "always") == 0) return Conv1x1Gemm::kAlways;
    if (e != nullptr && std::strcmp(e, "never") == 0) return Conv1x1Gemm::kNever;
    return Conv1x1Gemm::kAuto;
  }()};
  return mode;
}

}  // namespace cuda

namespace cuda::detail {

/// Workspace a cuBLASLt algorithm may use (split-K partials: splits * C * K * 4 bytes here).
inline constexpr std::size_t kGemmWorkspaceLimit = std::size_t{32} << 20;
/// Heuristic candidates timed in benchmark mode (its ranking is good; the top few cover the
/// tile shapes that matter for these skinny GEMMs).
inline constexpr int kGemmCandidates = 8;
/// Timed runs per candidate after one warm-up run.
inline constexpr int kGemmTimingReps = 5;
/// Base pointer alignment the chosen algorithms may assume.
inline constexpr std::uint32_t kGemmPointerAlign = 16;
/// fp32-accumulating, fixed-order reductions only (see the file comment).
inline constexpr std::uint32_t kGemmReductionSchemes =
    CUBLASLT_REDUCTION_SCHEME_NONE | CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;

/// conv(x, w, p) is one GEMM: 1x1 kernel, stride 1, no padding, one group (dilation has no
/// effect on a 1x1 kernel), and not empty.
inline bool conv1x1_gemm_shape_ok(Shape x, Shape w, const Conv2dParams& p) {
  return w.h == 1 && w.w == 1 && p.stride_h == 1 && p.stride_w == 1 && p.pad_h == 0 && p.pad_w == 0 &&
         p.groups == 1 && x.c == w.c && x.numel() > 0 && w.n > 0;
}

/// Every row of X, Y and W starts on a 16-byte boundary (the tensor-core kernels' vector width).
inline bool conv1x1_gemm_rows_aligned(std::int64_t c, std::int64_t k, std::size_t elem) {
  return (static_cast<std::size_t>(c) * elem) % 16 == 0 && (static_cast<std::size_t>(k) * elem) % 16 == 0;
}

inline bool gemm_pointers_aligned(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs)
    if (reinterpret_cast<std::uintptr_t>(p) % kGemmPointerAlign != 0) return false;
  return true;
}

/// One direction of a 1x1 conv as a cuBLASLt matmul: descriptors and the chosen algorithm.
/// C and D share a layout and a pointer (beta = 1 accumulates in place for wgrad).
struct GemmPlan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
  std::size_t ws = 0;
  float beta = 0.f;

  GemmPlan() = default;
  GemmPlan(const GemmPlan&) = delete;
  GemmPlan& operator=(const GemmPlan&) = delete;
  ~GemmPlan() {
    for (auto l : {a, b, d})
      if (l) (void)cublasLtMatrixLayoutDestroy(l);
    if (op) (void)cublasLtMatmulDescDestroy(op);
  }
};

/// Describe direction `dir` of a 1x1 conv over M rows with C input and K output channels, in
/// storage type `t` (see the table in the file comment).
inline void gemm_describe(GemmPlan& g, ConvDirection dir, cudaDataType_t t, std::int64_t M, std::int64_t C,
                          std::int64_t K) {
  AMPKIT_CUBLAS_CHECK(cublasLtMatmulDescCreate(&g.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  cublasOperation_t op_a = CUBLAS_OP_N, op_b = CUBLAS_OP_N;
  const auto u = [](std::int64_t v) { return static_cast<std::uint64_t>(v); };
  switch (dir) {
    case ConvDirection::kForward:  // Y' (K,M) = W'^T . X'
      op_a = CUBLAS_OP_T;
      AMPKIT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&g.a, t, u(C), u(K), C));  // W' (C,K)
      AMPKIT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&g.b, t, u(C), u(M), C));  // X' (C,M)
      AMPKIT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&g.d, t, u(K), u(M), K));  // Y' (K,M)
      g.beta = 0.f;
      break;
    case ConvDirection::kBackwardData:                                          // dX' (C,M) = W' . dY'
      AMPKIT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&g.a, t, u(C), u(K), C));  // W' (C,K)
      AMPKIT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&g.b, t, u(K), u(M), K));  // dY' (K,M)
      AMPKIT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&g.d, t, u(C), u(M), C));  // dX' (C,M)
      g.beta = 0.f;
      break;
    case ConvDirection::kBackwardFilter:  // dW' (C,K) += X' . dY'^T
      op_b = CUBLAS_OP_T;
      AMPKIT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&g.a, t, u(C), u(M), C));  // X' (C,M)
      AMPKIT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&g.b, t, u(K), u(M), K));  // dY' (K,M)
      AMPKIT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&g.d, t, u(C), u(K), C));  // dW' (C,K)
      g.beta = 1.f;  // the gradient contract: parameter gradients accumulate
      break;
  }
  AMPKIT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(g.op, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
  AMPKIT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(g.op, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
}

/// The reduction scheme an algorithm was configured with (NONE when it cannot be read).
inline std::uint32_t gemm_reduction_scheme(const cublasLtMatmulAlgo_t& algo) {
  std::uint32_t scheme = CUBLASLT_REDUCTION_SCHEME_NONE;
  std::size_t written = 0;
  if (cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &scheme,
                                           sizeof(scheme), &written) != CUBLAS_STATUS_SUCCESS)
    return CUBLASLT_REDUCTION_SCHEME_NONE;
  return scheme;
}

/// cuBLASLt's ranked algorithms for `g` (at most `want`, at most kGemmCandidates), filtered to
/// the ones that are usable: reported supported, within the workspace limit, and with an allowed
/// reduction scheme. Returns how many were written to `out`; 0 when cuBLASLt has none.
inline int gemm_heuristic(const Cuda& ctx, const GemmPlan& g, int want,
                          cublasLtMatmulHeuristicResult_t* out) {
  cublasLtMatmulPreference_t pref = nullptr;
  AMPKIT_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const std::uint64_t ws_limit = kGemmWorkspaceLimit;
  const std::uint32_t schemes = kGemmReductionSchemes, align = kGemmPointerAlign;
  cublasStatus_t s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                          &ws_limit, sizeof(ws_limit));
  if (s == CUBLAS_STATUS_SUCCESS)
    s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &schemes,
                                             sizeof(schemes));
  for (auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES})
    if (s == CUBLAS_STATUS_SUCCESS)
      s = cublasLtMatmulPreferenceSetAttribute(pref, attr, &align, sizeof(align));
  int n = 0;
  cublasLtMatmulHeuristicResult_t res[kGemmCandidates] = {};
  want = want < 1 ? 1 : (want > kGemmCandidates ? kGemmCandidates : want);
  if (s == CUBLAS_STATUS_SUCCESS)
    s = cublasLtMatmulAlgoGetHeuristic(ctx.cublaslt(), g.op, g.a, g.b, g.d, g.d, pref, want, res, &n);
  (void)cublasLtMatmulPreferenceDestroy(pref);
  if (s == CUBLAS_STATUS_NOT_SUPPORTED) return 0;  // no algorithm for this layout
  AMPKIT_CUBLAS_CHECK(s);
  int kept = 0;
  for (int i = 0; i < n; ++i) {
    if (res[i].state != CUBLAS_STATUS_SUCCESS || res[i].workspaceSize > kGemmWorkspaceLimit) continue;
    if ((gemm_reduction_scheme(res[i].algo) & ~kGemmReductionSchemes) != 0) continue;
    out[kept++] = res[i];
  }
  return kept;
}

/// D = A . B (+ beta D) with `algo`, on the context's stream, workspace from its allocator.
/// Returns cuBLASLt's status (the planner skips a candidate that fails; the op checks it).
inline cublasStatus_t gemm_run(const Cuda& ctx, const GemmPlan& g, const cublasLtMatmulAlgo_t& algo,
                               std::size_t ws_bytes, const void* a, const void* b, void* d) {
  auto ws = ctx.workspace(ws_bytes);
  const float alpha = 1.f;
  return cublasLtMatmul(ctx.cublaslt(), g.op, &alpha, a, g.a, b, g.b, &g.beta, d, g.d, d, g.d, &algo,
                        ws.data(), ws_bytes, ctx.stream());
}

/// Mean device time in ms of `f` over kGemmTimingReps runs after one warm-up run (CUDA events on
/// the context's stream); +inf when any run reports failure (f returns false).
template <class F>
float time_on_stream(const Cuda& ctx, F&& f) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  if (!f()) {
    (void)cudaGetLastError();  // a failed launch must not poison the next check
    return kInf;
  }
  cudaEvent_t start = nullptr, stop = nullptr;
  AMPKIT_CUDA_CHECK(cudaEventCreate(&start));
  AMPKIT_CUDA_CHECK(cudaEventCreate(&stop));
  bool ok = true;
  AMPKIT_CUDA_CHECK(cudaEventRecord(start, ctx.stream()));
  for (int i = 0; i < kGemmTimingReps && ok; ++i) ok = f();
  AMPKIT_CUDA_CHECK(cudaEventRecord(stop, ctx.stream()));
  AMPKIT_CUDA_CHECK(cudaEventSynchronize(stop));
  float ms = 0.f;
  AMPKIT_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  (void)cudaEventDestroy(start);
  (void)cudaEventDestroy(stop);
  if (!ok) {
    (void)cudaGetLastError();
    return kInf;
  }
  return ms / kGemmTimingReps;
}

}  // namespace cuda::detail

}  // namespace ampkit

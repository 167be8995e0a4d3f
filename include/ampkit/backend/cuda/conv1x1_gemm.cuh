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
/// have two GEMM variants:
///   direct  (kCublasLt) the true leading dimension; cuBLASLt's heuristic returns only the
///           kernels that support it (no TMA, 2-byte accesses: the slow ones), or none;
///   padded  (kCublasLtPadded) every matrix whose rows are not 16-byte aligned is staged in a
///           scratch with its leading dimension rounded up to 8 elements (Cp, Kp; pad lanes
///           zero), and the GEMM runs on the aligned kernels with the padded leading dimensions
///           and the true reduction length (C for forward / dgrad, M for wgrad), so a pad lane
///           never enters a sum. Inputs are copied in (X or dY: (M,C)->(M,Cp) / (M,K)->(M,Kp); W:
///           (K,C)->(K,Cp)). A written output (Y, dX) goes to the scratch and is compacted back
///           ((M,Kp)->(M,K) ...); its GEMM covers the pad lanes too (forward: the staged weight
///           gets Kp-K zero rows; dgrad: W's zero pad lanes), so every element the compaction
///           reads was written (zeros in the pad lanes; compute-sanitizer's initcheck stays
///           quiet). wgrad's dW (K,C), which accumulates (beta = 1), is copied in, accumulated
///           in place and copied back, so the rounding is the one of the aligned path (fp32
///           alpha.AB + beta.C, one rounding to T). The copies are bit copies (repack_rows); the
///           result is bit-identical run to run as the aligned GEMM is. DEKR's head 480->255 (C
///           aligned) stages Y / dY and, for forward, the 245 KB weight with one zero row.
/// Memory of the padded variant: the staged matrices live for the call only, from the context's
/// caching allocator (ctx.workspace, stream-ordered like cuDNN's workspace). For 480->255 that is
/// one (M,256) buffer per direction: 256 MiB at DEKR's head at batch 32, 512x512 (M = 524288), the
/// size of the output once more. The plan refuses the variant when the staging plus the GEMM's
/// workspace would exceed conv2d.cuh's per-call workspace cap (kConvWorkspaceLimit, 1 GiB), the
/// cap train/memory_plan.hpp's workspace allowance is stated against (256 MiB + 5 % of the peak:
/// 1.2 GiB for fp16 batch 32). The host and Meta backends never take this path, so the dry-run
/// plan itself is unchanged.
/// In benchmark mode both variants' candidates are timed (the padded ones with their copies) and
/// against cuDNN under kAuto; heuristic mode under kAlways takes the padded variant first.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <memory>

#include "ampkit/backend/cuda/check.cuh"
#include "ampkit/backend/cuda/context.cuh"
#include "ampkit/backend/cuda/packed_io.cuh"
#include "ampkit/backend/cuda/sanitizer_marks.cuh"
#include "ampkit/core/env_choice.hpp"
#include "ampkit/core/tensor.hpp"
#include "ampkit/nn/ops/conv2d.hpp"

namespace ampkit {

namespace cuda {

/// The three directions of a conv, for per-direction engine choices.
enum class ConvDirection { kForward, kBackwardData, kBackwardFilter };

/// What runs a conv direction. kUnplanned: that direction has not run yet for the shape and
/// options asked about (choices are made at the first call). kCublasLtPadded: the GEMM on
/// operands staged with 16-byte aligned rows (see the file comment). kCudnnGraph: an execution
/// plan of cuDNN's backend (graph) API (conv_cudnn_graph.cuh; opt-in, CudnnOptions::graph_api).
enum class ConvEngine { kUnplanned, kCudnn, kCublasLt, kDirectGrouped, kCublasLtPadded, kCudnnGraph };

/// Whether `e` is one of the cuBLASLt GEMM engines (the plan then holds a GemmPlan).
inline bool is_gemm_engine(ConvEngine e) {
  return e == ConvEngine::kCublasLt || e == ConvEngine::kCublasLtPadded;
}

inline const char* conv_engine_name(ConvEngine e) {
  switch (e) {
    case ConvEngine::kCudnn:
      return "cudnn";
    case ConvEngine::kCublasLt:
      return "cublaslt";
    case ConvEngine::kCublasLtPadded:
      return "cublaslt-padded";
    case ConvEngine::kDirectGrouped:
      return "direct-grouped";
    case ConvEngine::kCudnnGraph:
      return "cudnn-graph";
    case ConvEngine::kUnplanned:
      break;
  }
  return "unplanned";
}

/// Policy of the 1x1 GEMM path for fp16/bf16 1x1 convs (stride 1, no padding, one group).
///   kAuto   (default) benchmark mode: the fastest of cuDNN's choice and cuBLASLt's top
///           candidates (direct and, for unaligned rows, padded), timed once per shape and
///           direction; heuristic mode: cuBLASLt when every row is 16-byte aligned (C and K
///           multiples of 8), cuDNN otherwise.
///   kAlways cuBLASLt whenever it has an algorithm for the shape (tests, benchmarks); rows that
///           are not 16-byte aligned take the padded variant in heuristic mode and the faster
///           variant in benchmark mode.
///   kNever  cuDNN only (the older path).
/// The environment variable AMPKIT_CONV_GEMM=auto|always|never sets it at first use;
/// conv_force_cudnn() also turns it off. Part of the plan key, so changing it replans.
enum class Conv1x1Gemm { kAuto, kAlways, kNever };

inline std::atomic<Conv1x1Gemm>& conv1x1_gemm() {
  static std::atomic<Conv1x1Gemm> mode{env_choice(
      "AMPKIT_CONV_GEMM",
      {{"auto", Conv1x1Gemm::kAuto}, {"always", Conv1x1Gemm::kAlways}, {"never", Conv1x1Gemm::kNever}},
      Conv1x1Gemm::kAuto, "auto")};
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

/// Timed runs per candidate in benchmark mode (the 1x1 GEMMs' and the cuDNN graph-API plans'
/// time_on_stream): kGemmTimingReps, or AMPKIT_TIMING_REPS (1 to 5). Why a switch: under
/// compute-sanitizer every kernel runs 10-100x slower and timings mean nothing, yet the timing
/// loops dominated the run time of the GEMM test cases (cut off at 470 s, 2026-11-30);
/// tools/sanitize_gpu.sh sets 1, which still runs every candidate through the same code (a
/// warm-up and one timed run).
inline int timing_reps() {
  static const int reps = env_choice<int>("AMPKIT_TIMING_REPS", {{"1", 1}, {"2", 2}, {"3", 3}, {"4", 4}, {"5", 5}},
                                          kGemmTimingReps, "5 timed runs per candidate");
  return reps;
}
/// Base pointer alignment the chosen algorithms may assume.
inline constexpr std::uint32_t kGemmPointerAlign = 16;
/// fp32-accumulating, fixed-order reductions only (see the file comment).
inline constexpr std::uint32_t kGemmReductionSchemes =
    CUBLASLT_REDUCTION_SCHEME_NONE | CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
/// Most bytes the padded variant may stage per call: with the GEMM's own workspace it stays
/// within conv2d.cuh's per-call cap kConvWorkspaceLimit (1 GiB; static_assert there), which is
/// what the memory plan's workspace allowance assumes a conv call may take.
inline constexpr std::size_t kGemmStagingLimit = (std::size_t{1} << 30) - kGemmWorkspaceLimit;
/// Elements per 16 bytes of fp16/bf16: padded leading dimensions are multiples of it.
inline constexpr std::int64_t kGemmRowPack = 8;

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
/// ld_c / ld_k: the leading dimensions the matmul sees for the C-wide (X, dX, W, dW) and K-wide
/// (Y, dY) matrices; equal to c / k for the direct variant, rounded up to kGemmRowPack where the
/// padded variant stages that matrix.
struct GemmPlan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
  std::size_t ws = 0;
  float beta = 0.f;
  ConvDirection dir = ConvDirection::kForward;
  std::int64_t m = 0, c = 0, k = 0, ld_c = 0, ld_k = 0;
  std::size_t elem_bytes = 2;  ///< of the storage type (4 for fp32)

  bool padded() const { return ld_c != c || ld_k != k; }

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
/// storage type `t` (see the table in the file comment), the C-wide matrices with leading
/// dimension ld_c >= C and the K-wide ones with ld_k >= K (the padded variant's staging).
inline void gemm_describe(GemmPlan& g, ConvDirection dir, cudaDataType_t t, std::int64_t M, std::int64_t C,
                          std::int64_t K, std::int64_t ld_c, std::int64_t ld_k) {
  AMPKIT_CUBLAS_CHECK(cublasLtMatmulDescCreate(&g.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  cublasOperation_t op_a = CUBLAS_OP_N, op_b = CUBLAS_OP_N;
  const auto u = [](std::int64_t v) { return static_cast<std::uint64_t>(v); };
  g.dir = dir;
  g.m = M, g.c = C, g.k = K, g.ld_c = ld_c, g.ld_k = ld_k;
  g.elem_bytes = t == CUDA_R_32F ? 4 : 2;
  // A written output staged with padded rows is computed over its pad lanes too, from zero rows
  // of the staged weight (gemm_operands), so the scratch holds no unwritten element.
  switch (dir) {
    case ConvDirection::kForward: {  // Y' (Kd,M) = W'^T . X', Kd = ld_k (K, or Kp when staged)
      op_a = CUBLAS_OP_T;
      AMPKIT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&g.a, t, u(C), u(ld_k), ld_c));  // W' (C,Kd)
      AMPKIT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&g.b, t, u(C), u(M), ld_c));     // X' (C,M)
      AMPKIT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&g.d, t, u(ld_k), u(M), ld_k));  // Y' (Kd,M)
      g.beta = 0.f;
      break;
    }
    case ConvDirection::kBackwardData:  // dX' (Cd,M) = W' . dY', Cd = ld_c (C, or Cp when staged)
      AMPKIT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&g.a, t, u(ld_c), u(K), ld_c));  // W' (Cd,K)
      AMPKIT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&g.b, t, u(K), u(M), ld_k));     // dY' (K,M)
      AMPKIT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&g.d, t, u(ld_c), u(M), ld_c));  // dX' (Cd,M)
      g.beta = 0.f;
      break;
    case ConvDirection::kBackwardFilter:  // dW' (C,K) += X' . dY'^T
      op_b = CUBLAS_OP_T;
      AMPKIT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&g.a, t, u(C), u(M), ld_c));  // X' (C,M)
      AMPKIT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&g.b, t, u(K), u(M), ld_k));  // dY' (K,M)
      AMPKIT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&g.d, t, u(C), u(K), ld_c));  // dW' (C,K)
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

/// D = A . B (+ beta D) with `algo` on the pointers as given (already in the plan's layouts).
inline cublasStatus_t gemm_matmul(const Cuda& ctx, const GemmPlan& g, const cublasLtMatmulAlgo_t& algo,
                                  std::size_t ws_bytes, const void* a, const void* b, void* d) {
  auto ws = ctx.workspace(ws_bytes);
  const float alpha = 1.f;
  return cublasLtMatmul(ctx.cublaslt(), g.op, &alpha, a, g.a, b, g.b, &g.beta, d, g.d, d, g.d, &algo,
                        ws.data(), ws_bytes, ctx.stream());
}

/// Threads per block of the repack kernel, and the shared memory a tile may use.
inline constexpr int kRepackThreads = 256;
inline constexpr std::int64_t kRepackTileBytes = 16 << 10;
inline constexpr std::int64_t kRepackMaxTileBytes = 48 << 10;  // the default dynamic shared limit

/// dst(rows, dst_ld)[:, :cols] = src(rows, src_ld)[:, :cols] and dst[:, cols:dst_ld] = 0, for
/// 2-byte elements (bits copied, no conversion). One block moves `tile_rows` rows (a multiple of
/// 8): with 16-byte aligned bases every tile's span, (8j).ld elements in, starts on a 16-byte
/// boundary in both layouts whatever ld is, so the tile is read and written in 16-byte packs
/// (coalesced, whole sectors) and re-strided in shared memory; only the ends of the last tile can
/// need 2-byte accesses. Used both ways: pad (ld K -> Kp) and compact (ld Kp -> K).
/// E: a 2-byte bit container (std::uint16_t).
template <class E>
__global__ void repack_rows_tiled(const E* __restrict__ src, std::int64_t src_ld, E* __restrict__ dst,
                                  std::int64_t dst_ld, std::int64_t rows, std::int64_t cols, int tile_rows) {
  static_assert(sizeof(E) == 2);
  extern __shared__ uint4 repack_smem[];  // uint4: 16-byte aligned
  auto* s = reinterpret_cast<E*>(repack_smem);
  const std::int64_t r0 = std::int64_t{blockIdx.x} * tile_rows;
  const int nr = static_cast<int>(rows - r0 < tile_rows ? rows - r0 : tile_rows);
  const int s_ld = static_cast<int>(src_ld), d_ld = static_cast<int>(dst_ld), n_cols = static_cast<int>(cols);
  const E* sp = src + r0 * src_ld;
  const int n_src = nr * s_ld, n_src_vec = n_src / 8;
  for (int i = threadIdx.x; i < n_src_vec; i += blockDim.x)
    repack_smem[i] = reinterpret_cast<const uint4*>(sp)[i];
  for (int i = n_src_vec * 8 + threadIdx.x; i < n_src; i += blockDim.x) s[i] = sp[i];
  __syncthreads();
  E* dp = dst + r0 * dst_ld;
  const int n_dst = nr * d_ld, n_dst_vec = n_dst / 8;
  for (int j = threadIdx.x; j < n_dst_vec; j += blockDim.x) {
    int r = (j * 8) / d_ld, c = j * 8 - r * d_ld;
    union {
      uint4 v;
      E e[8];
    } pk;
#pragma unroll
    for (int t = 0; t < 8; ++t) {
      pk.e[t] = c < n_cols ? s[r * s_ld + c] : E{0};
      if (++c == d_ld) c = 0, ++r;
    }
    reinterpret_cast<uint4*>(dp)[j] = pk.v;
  }
  for (int e = n_dst_vec * 8 + threadIdx.x; e < n_dst; e += blockDim.x) {
    const int r = e / d_ld, c = e - r * d_ld;
    dp[e] = c < n_cols ? s[r * s_ld + c] : E{0};
  }
}

/// The same copy one element per thread, for rows too wide for a shared-memory tile of 8 rows
/// (ld > 3072: no DEKR layer).
template <class E>
__global__ void repack_rows_scalar(const E* __restrict__ src, std::int64_t src_ld, E* __restrict__ dst,
                                   std::int64_t dst_ld, std::int64_t rows, std::int64_t cols) {
  const std::int64_t total = rows * dst_ld;
  for (std::int64_t e = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; e < total;
       e += std::int64_t{gridDim.x} * blockDim.x) {
    const std::int64_t r = e / dst_ld, c = e - r * dst_ld;
    dst[e] = c < cols ? src[r * src_ld + c] : E{0};
  }
}

/// Launch the repack of `rows` rows (see repack_rows_tiled) on the context's stream. `src` and
/// `dst` are 16-byte aligned (checked by the callers: the conv's views, or allocator scratch).
inline void repack_rows(const Cuda& ctx, const void* src, std::int64_t src_ld, void* dst, std::int64_t dst_ld,
                        std::int64_t rows, std::int64_t cols) {
  if (rows == 0) return;
  const auto* s = static_cast<const std::uint16_t*>(src);
  auto* d = static_cast<std::uint16_t*>(dst);
  const std::int64_t row_bytes = src_ld * 2;
  if (8 * row_bytes <= kRepackMaxTileBytes) {
    std::int64_t tile = (kRepackTileBytes / row_bytes) / 8 * 8;
    tile = tile < 8 ? 8 : tile;
    const std::int64_t blocks = (rows + tile - 1) / tile;
    AMPKIT_CHECK(blocks <= std::numeric_limits<int>::max(), "conv 1x1 GEMM: ", rows, " rows to repack");
    repack_rows_tiled<std::uint16_t>
        <<<static_cast<unsigned>(blocks), kRepackThreads, static_cast<std::size_t>(tile * row_bytes),
           ctx.stream()>>>(s, src_ld, d, dst_ld, rows, cols, static_cast<int>(tile));
  } else {
    repack_rows_scalar<std::uint16_t><<<grid_for(rows * dst_ld, kRepackThreads, ctx.device().multiprocessors),
                                        kRepackThreads, 0, ctx.stream()>>>(s, src_ld, d, dst_ld, rows, cols);
  }
  AMPKIT_CUDA_CHECK_LAUNCH();
}

/// One matrix of a direction in row-major terms: `rows` rows of `ld` elements, staged as
/// `rows_pad` rows of `ld_pad` (the extra rows and lanes zero); not staged when both are equal.
struct GemmOperand {
  std::int64_t rows, ld, ld_pad, rows_pad;
  bool staged() const { return ld_pad != ld || rows_pad != rows; }
  std::size_t staged_bytes() const { return staged() ? static_cast<std::size_t>(rows_pad * ld_pad) * 2 : 0; }
};

/// The matrices a, b, d of direction g.dir (the order gemm_run takes them; see the file comment):
///   forward  W (K,C), X (M,C), Y (M,K);  dgrad W (K,C), dY (M,K), dX (M,C);
///   wgrad    X (M,C), dY (M,K), dW (K,C).
struct GemmOperands {
  GemmOperand a, b, d;
  std::size_t staged_bytes() const { return a.staged_bytes() + b.staged_bytes() + d.staged_bytes(); }
};

inline GemmOperands gemm_operands(const GemmPlan& g) {
  const GemmOperand w{g.k, g.c, g.ld_c, g.k}, x{g.m, g.c, g.ld_c, g.m}, y{g.m, g.k, g.ld_k, g.m};
  switch (g.dir) {
    case ConvDirection::kForward:
      return {{g.k, g.c, g.ld_c, g.ld_k}, x, y};  // W gets ld_k - K zero rows (see gemm_describe)
    case ConvDirection::kBackwardData:
      return {w, y, x};
    case ConvDirection::kBackwardFilter:
      break;
  }
  return {x, y, w};
}

/// Run direction g.dir with `algo` on the conv's own (unpadded, 16-byte aligned) tensors `a`, `b`,
/// `d` in the order of gemm_operands: the direct variant is one matmul; the padded one stages
/// the matrices gemm_operands marks (inputs copied in, the output copied in only when it
/// accumulates, then compacted back), all on the context's stream, scratch freed at return in
/// stream order. Returns cuBLASLt's status (the planner skips a candidate that fails; the op
/// checks it).
inline cublasStatus_t gemm_run(const Cuda& ctx, const GemmPlan& g, const cublasLtMatmulAlgo_t& algo,
                               std::size_t ws_bytes, const void* a, const void* b, void* d) {
  const GemmOperands o = gemm_operands(g);
  const std::size_t d_bytes = static_cast<std::size_t>(o.d.rows * o.d.ld) * g.elem_bytes;  // unstaged output
  // cuBLASLt's output: initcheck may not see its stores (sanitizer_marks.cuh).
  const auto mark = [&](cublasStatus_t st, const void* p, std::size_t bytes) {
    if (st == CUBLAS_STATUS_SUCCESS) mark_initialized(ctx.stream(), p, bytes);
    return st;
  };
  if (!g.padded()) return mark(gemm_matmul(ctx, g, algo, ws_bytes, a, b, d), d, d_bytes);
  // Scratch (storage type, 2 bytes): e.g. (M,Kp) for 480->255's Y or dY, one output-sized buffer.
  cuda::DeviceBuffer<std::byte> sa, sb, sd;
  const auto stage_in = [&](const GemmOperand& op, const void* p, cuda::DeviceBuffer<std::byte>& buf) {
    if (!op.staged()) return p;
    buf = ctx.workspace(op.staged_bytes());
    repack_rows(ctx, p, op.ld, buf.data(), op.ld_pad, op.rows, op.ld);
    if (op.rows_pad > op.rows) {  // the forward weight's zero rows
      const std::size_t at = static_cast<std::size_t>(op.rows * op.ld_pad) * 2;
      AMPKIT_CUDA_CHECK(cudaMemsetAsync(buf.data() + at, 0, op.staged_bytes() - at, ctx.stream()));
    }
    return static_cast<const void*>(buf.data());
  };
  const void* pa = stage_in(o.a, a, sa);
  const void* pb = stage_in(o.b, b, sb);
  void* pd = d;
  if (o.d.staged()) {
    sd = ctx.workspace(o.d.staged_bytes());
    pd = sd.data();
    if (g.beta != 0.f) repack_rows(ctx, d, o.d.ld, pd, o.d.ld_pad, o.d.rows, o.d.ld);  // accumulates onto dW
  }
  const cublasStatus_t st =
      mark(gemm_matmul(ctx, g, algo, ws_bytes, pa, pb, pd), pd, o.d.staged() ? o.d.staged_bytes() : d_bytes);
  if (st == CUBLAS_STATUS_SUCCESS && o.d.staged())
    repack_rows(ctx, pd, o.d.ld_pad, d, o.d.ld, o.d.rows, o.d.ld);
  return st;
}

/// Mean device time in ms of `f` over timing_reps() runs after one warm-up run (CUDA events on
/// the context's stream); +inf when any run reports failure (f returns false).
template <class F>
float time_on_stream(const Cuda& ctx, F&& f) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  const int reps = timing_reps();
  if (!f()) {
    (void)cudaGetLastError();  // a failed launch must not poison the next check
    return kInf;
  }
  cudaEvent_t start = nullptr, stop = nullptr;
  AMPKIT_CUDA_CHECK(cudaEventCreate(&start));
  AMPKIT_CUDA_CHECK(cudaEventCreate(&stop));
  bool ok = true;
  AMPKIT_CUDA_CHECK(cudaEventRecord(start, ctx.stream()));
  for (int i = 0; i < reps && ok; ++i) ok = f();
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
  return ms / static_cast<float>(reps);
}

/// Choose the engine of direction `dir` of a fp16/bf16 (`t`) 1x1 conv over M rows, C -> K, under
/// policy `mode` (not kNever) and CudnnOptions::benchmark, once per plan; `gemm` is created when
/// a cuBLASLt variant runs it. `a`, `b` are this call's GEMM operands and `out` where results may
/// be written while timing (the real output for forward / dgrad; a zeroed scratch for wgrad,
/// whose real output accumulates). `run_cudnn(out)` runs cuDNN's chosen algorithm, true on
/// success. Candidates: the direct variant (true leading dimensions) and, when C or K is not a
/// multiple of 8, the padded one within kGemmStagingLimit; benchmark mode times them all (the
/// padded ones with their copies; cuDNN too under kAuto) and keeps the fastest, heuristic mode
/// takes cuBLASLt's first candidate, padded before direct.
template <class RunCudnn>
ConvEngine plan_conv_gemm(const Cuda& ctx, Conv1x1Gemm mode, bool benchmark, cudaDataType_t t, std::int64_t M,
                          std::int64_t C, std::int64_t K, ConvDirection dir, std::unique_ptr<GemmPlan>& gemm,
                          const void* a, const void* b, void* out, RunCudnn&& run_cudnn) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  if (mode == Conv1x1Gemm::kNever) return ConvEngine::kCudnn;
  const bool aligned = conv1x1_gemm_rows_aligned(C, K, 2);  // fp16/bf16 only
  // Heuristic mode has nothing to compare with: GEMM where its tensor-core kernels apply.
  if (mode == Conv1x1Gemm::kAuto && !benchmark && !aligned) return ConvEngine::kCudnn;
  // Plan-time views that are not aligned cannot be timed; such a shape stays on cuDNN.
  if (!gemm_pointers_aligned({a, b, out})) return ConvEngine::kCudnn;
  const auto up = [](std::int64_t v) { return (v + kGemmRowPack - 1) / kGemmRowPack * kGemmRowPack; };
  struct Variant {
    std::unique_ptr<GemmPlan> g;
    cublasLtMatmulHeuristicResult_t cand[kGemmCandidates];
    int n = 0;
    ConvEngine engine;
  };
  Variant v[2];  // padded first: heuristic mode prefers it
  int n_var = 0;
  const auto add = [&](std::int64_t ld_c, std::int64_t ld_k, ConvEngine e) {
    Variant& x = v[n_var];
    x.g = std::make_unique<GemmPlan>();
    gemm_describe(*x.g, dir, t, M, C, K, ld_c, ld_k);
    if (x.g->padded() && gemm_operands(*x.g).staged_bytes() > kGemmStagingLimit) return;
    x.n = gemm_heuristic(ctx, *x.g, benchmark ? kGemmCandidates : 1, x.cand);
    x.engine = e;
    if (x.n > 0) ++n_var;
  };
  if (!aligned) add(up(C), up(K), ConvEngine::kCublasLtPadded);
  add(C, K, ConvEngine::kCublasLt);
  if (n_var == 0) return ConvEngine::kCudnn;
  int best_v = 0, best_i = 0;
  if (benchmark) {
    float best_ms = kInf;
    for (int j = 0; j < n_var; ++j)
      for (int i = 0; i < v[j].n; ++i) {
        const auto& c = v[j].cand[i];
        const float ms = time_on_stream(ctx, [&] {
          return gemm_run(ctx, *v[j].g, c.algo, c.workspaceSize, a, b, out) == CUBLAS_STATUS_SUCCESS;
        });
        if (ms < best_ms) best_ms = ms, best_v = j, best_i = i;
      }
    if (!(best_ms < kInf)) return ConvEngine::kCudnn;  // none ran
    if (mode == Conv1x1Gemm::kAuto && time_on_stream(ctx, [&] { return run_cudnn(out); }) <= best_ms)
      return ConvEngine::kCudnn;
  }
  Variant& w = v[best_v];
  w.g->algo = w.cand[best_i].algo;
  w.g->ws = w.cand[best_i].workspaceSize;
  gemm = std::move(w.g);
  return w.engine;
}

}  // namespace cuda::detail

}  // namespace ampkit

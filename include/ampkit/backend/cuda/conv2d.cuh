/// @brief CUDA backend Conv2d through cuDNN (NHWC, fp32 accumulation, tensor cores for fp16/bf16),
/// with algorithms chosen once per shape by measurement and cached, like cudnn.benchmark=True.
/// Semantics and the gradient contract are in nn/ops/conv2d.hpp; signatures mirror
/// backend/host/conv2d.hpp.
///
/// The plan cache: the first call for a (device, dtype, shapes, params) key creates the tensor,
/// filter and convolution descriptors and keeps them; the first call of each direction (forward,
/// backward data, backward filter) runs cudnnFind* for it and keeps the fastest algorithm that
/// fits the workspace limit together with the math type Find measured it with. Find is the Ex
/// form: it times the algorithms on this call's own inputs and outputs (a scratch for the
/// accumulating dL_dw) with a workspace from the context's caching allocator, so it reads no
/// uninitialised memory and allocates nothing behind the allocator's back (the plain form
/// cudaMallocs and times on unset x, w, y and workspace of its own); find_workspace_bytes says
/// how much workspace it gets. Find synchronises, so run one warm-up step before capturing a
/// CUDA graph. The context's
/// CudnnOptions change this: benchmark = false takes cuDNN's heuristic ranking (cudnnGet*_v7, no
/// timing), deterministic = true skips algorithms cuDNN does not report as deterministic. Both are
/// part of the key, so plans made under other options are never reused.
///
/// Grouped convs with few channels per group (C/groups, K/groups <= 32, stride 1) take the direct
/// kernels of grouped_conv2d.cuh instead (cuDNN serves them as many tiny GEMMs, several times
/// slower); cuda::conv_force_cudnn() (env AMPKIT_CONV_FORCE_CUDNN=1) sends them back to cuDNN.
/// conv2d_path_name() says which path a shape takes.
///
/// fp16/bf16 1x1 convs (stride 1, no padding, one group) may run each direction as one cuBLASLt
/// GEMM instead (conv1x1_gemm.cuh says why and how). The choice is made with the cuDNN one, once
/// per plan and direction: benchmark = true times cuDNN's pick against cuBLASLt's top candidates
/// and keeps the fastest; benchmark = false takes cuBLASLt's first candidate when all rows are
/// 16-byte aligned (rows that are not run as the padded variant, kCublasLtPadded, in benchmark
/// mode or under kAlways). cuda::conv1x1_gemm() (env AMPKIT_CONV_GEMM) sets the policy;
/// conv2d_engine() says which engine a planned direction uses.
///
/// CudnnOptions::graph_api (env AMPKIT_CUDNN_GRAPH_API; default kBenchmark: benchmark mode only;
/// kNever makes no backend-API call at all) adds the execution plans of cuDNN's backend API
/// (conv_cudnn_graph.cuh) per direction: benchmark mode times its top plans against the legacy
/// pick and keeps the fastest (kCudnnGraph when a graph plan wins); heuristic mode under kAlways
/// runs the graph heuristic's first usable plan. Forward directions take deterministic graph
/// engines only, as every legacy forward algorithm is. The cuDNN winner is what the 1x1 GEMM
/// candidates are then timed against.
///
/// Numerics: fp16/bf16 use CUDNN_TENSOR_OP_MATH with fp32 compute; fp32 uses CUDNN_FMA_MATH so
/// TF32 is never used behind the user's back (fp32 means fp32). Workspace comes from the
/// context's caching allocator, in stream order.
#pragma once

#include <cudnn.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <type_traits>
#include <vector>

#include "ampkit/backend/cuda/check.cuh"
#include "ampkit/backend/cuda/context.cuh"
#include "ampkit/backend/cuda/conv1x1_gemm.cuh"
#include "ampkit/backend/cuda/conv_cudnn_graph.cuh"
#include "ampkit/backend/cuda/grouped_conv2d.cuh"
#include "ampkit/backend/cuda/packed_io.cuh"
#include "ampkit/backend/cuda/sanitizer_marks.cuh"
#include "ampkit/core/tensor.hpp"
#include "ampkit/nn/ops/conv2d.hpp"
#include "ampkit/precision.hpp"

namespace ampkit {

namespace cuda::detail {

/// Largest workspace an algorithm may ask for (cuDNN's fastest choices rarely need more).
inline constexpr std::size_t kConvWorkspaceLimit = std::size_t{1} << 30;

/// Workspace that benchmark mode's cudnnFind*Ex gets beyond what cuDNN's heuristic pick needs
/// (find_workspace_bytes). Find's workspace is a caching-allocator block taken at the conv's first
/// call, on top of everything live at that moment, so it can raise the first step's peak above the
/// steady state, possibly at the step's peak moment (backward starts with the head's convs). The
/// memory plan's allowance is 256 MiB + 5 % of the dry-run peak (train/memory_plan.hpp), and the
/// measured peaks already lie above the dry run (docs/amp_guide.md, W32 512x512 on the H200); what
/// is left of the allowance after that gap is, in MiB: fp16 b2 323, b10 522, b32 1000; fp32 b2
/// 346, b10 237 (allowance 851, gap 614), b32 474; recompute b2 292, b32 663; the trainer's fp16
/// rows (tests/unit/models/memory_plan.cpp) b2 331, b32 1004. 192 MiB fits under the smallest
/// (fp32 b10) with 44 MiB to spare for the backward-filter scratch (< 3 MiB in DEKR) and the
/// 2 MiB rounding, even if a Find lands exactly on the peak. A larger budget would let Find time
/// algorithms the heuristic does not rank first but could push a planned run past its total.
inline constexpr std::size_t kFindWorkspaceBudget = std::size_t{192} << 20;
static_assert(kGemmStagingLimit + kGemmWorkspaceLimit <= kConvWorkspaceLimit,
              "a padded 1x1 GEMM call may not take more scratch than a cuDNN call");

struct ConvKey {
  int device;
  cudnnDataType_t dtype;
  std::int64_t n, c, h, w, k, r, s;
  Conv2dParams p;
  bool benchmark = true, deterministic = false;  // CudnnOptions
  /// The 1x1 GEMM policy for this shape: conv1x1_gemm(), or kNever where the path does not apply
  /// (fp32, other geometry, conv_force_cudnn()).
  Conv1x1Gemm gemm = Conv1x1Gemm::kNever;
  /// cudnn_graph_api_applies(CudnnOptions): graph-API plans are candidates too.
  bool graph_api = false;
  auto tie() const {
    return std::tuple(device, static_cast<int>(dtype), n, c, h, w, k, r, s, p.stride_h, p.stride_w, p.pad_h,
                      p.pad_w, p.dilation_h, p.dilation_w, p.groups, benchmark, deterministic,
                      static_cast<int>(gemm), graph_api);
  }
  bool operator<(const ConvKey& o) const { return tie() < o.tie(); }
};

/// Descriptors and measured algorithm choices for one conv shape. Not copyable (owns handles).
struct ConvPlan {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t fwd = nullptr, bwd_data = nullptr, bwd_filter = nullptr;  // one per math type
  bool has_fwd = false, has_bwd_data = false, has_bwd_filter = false;
  cudnnConvolutionFwdAlgo_t fwd_algo{};
  cudnnConvolutionBwdDataAlgo_t bwd_data_algo{};
  cudnnConvolutionBwdFilterAlgo_t bwd_filter_algo{};
  std::size_t fwd_ws = 0, bwd_data_ws = 0, bwd_filter_ws = 0;
  /// Which engine runs each direction (kCublasLt, kCublasLtPadded: the matching *_gemm holds its
  /// matmul plan).
  ConvEngine fwd_engine = ConvEngine::kUnplanned, bwd_data_engine = ConvEngine::kUnplanned,
             bwd_filter_engine = ConvEngine::kUnplanned;
  std::unique_ptr<GemmPlan> fwd_gemm, bwd_data_gemm, bwd_filter_gemm;
  /// The graph-API execution plan of a direction whose engine is kCudnnGraph (else null).
  std::unique_ptr<GraphConvPlan> fwd_graph, bwd_data_graph, bwd_filter_graph;

  ConvPlan() = default;
  ConvPlan(const ConvPlan&) = delete;
  ConvPlan& operator=(const ConvPlan&) = delete;
  ~ConvPlan() {
    if (x) cudnnDestroyTensorDescriptor(x);
    if (y) cudnnDestroyTensorDescriptor(y);
    if (w) cudnnDestroyFilterDescriptor(w);
    for (auto d : {fwd, bwd_data, bwd_filter})
      if (d) cudnnDestroyConvolutionDescriptor(d);
  }
};

inline int to_int(std::int64_t v, const char* what) {
  AMPKIT_CHECK(v <= INT_MAX, "conv2d: ", what, " = ", v, " exceeds cuDNN's int range");
  return static_cast<int>(v);
}

/// The math type to request before Find, and whether a measured result is acceptable.
inline cudnnMathType_t conv_math_for(cudnnDataType_t dt) {
  return dt == CUDNN_DATA_FLOAT ? CUDNN_FMA_MATH : CUDNN_TENSOR_OP_MATH;
}
inline bool conv_math_ok(cudnnDataType_t dt, cudnnMathType_t m) {
  // fp32: no tensor-op (TF32) results. DEFAULT_MATH results are re-run under FMA_MATH.
  if (dt == CUDNN_DATA_FLOAT) return m == CUDNN_FMA_MATH || m == CUDNN_DEFAULT_MATH;
  return true;
}
inline cudnnMathType_t conv_math_use(cudnnDataType_t dt, cudnnMathType_t measured) {
  return dt == CUDNN_DATA_FLOAT ? CUDNN_FMA_MATH : measured;
}

/// Process-wide plan cache (descriptors are not tied to a handle; the key holds the device).
class ConvPlanCache {
 public:
  static ConvPlanCache& instance() {
    static ConvPlanCache c;
    return c;
  }

  ConvPlan& get(const ConvKey& key) {
    std::lock_guard lock(mu_);
    auto& slot = plans_[key];
    if (!slot) slot = make(key);
    return *slot;
  }
  /// The plan for `key` if one was made, else nullptr (creates nothing).
  ConvPlan* find(const ConvKey& key) {
    std::lock_guard lock(mu_);
    auto it = plans_.find(key);
    return it == plans_.end() ? nullptr : it->second.get();
  }
  std::mutex& mutex() { return mu_; }
  std::size_t size() {
    std::lock_guard lock(mu_);
    return plans_.size();
  }

 private:
  static std::unique_ptr<ConvPlan> make(const ConvKey& k) {
    auto p = std::make_unique<ConvPlan>();
    AMPKIT_CUDNN_CHECK(cudnnCreateTensorDescriptor(&p->x));
    AMPKIT_CUDNN_CHECK(cudnnCreateTensorDescriptor(&p->y));
    AMPKIT_CUDNN_CHECK(cudnnCreateFilterDescriptor(&p->w));
    const Shape ys = conv2d_output_shape({k.n, k.h, k.w, k.c}, {k.k, k.r, k.s, k.c / k.p.groups}, k.p);
    AMPKIT_CUDNN_CHECK(cudnnSetTensor4dDescriptor(p->x, CUDNN_TENSOR_NHWC, k.dtype, to_int(k.n, "N"),
                                                  to_int(k.c, "C"), to_int(k.h, "H"), to_int(k.w, "W")));
    AMPKIT_CUDNN_CHECK(cudnnSetTensor4dDescriptor(p->y, CUDNN_TENSOR_NHWC, k.dtype, to_int(ys.n, "N"),
                                                  to_int(ys.c, "K"), to_int(ys.h, "P"), to_int(ys.w, "Q")));
    AMPKIT_CUDNN_CHECK(cudnnSetFilter4dDescriptor(p->w, k.dtype, CUDNN_TENSOR_NHWC, to_int(k.k, "K"),
                                                  to_int(k.c / k.p.groups, "C/groups"), to_int(k.r, "R"),
                                                  to_int(k.s, "S")));
    for (auto* d : {&p->fwd, &p->bwd_data, &p->bwd_filter}) {
      AMPKIT_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(d));
      AMPKIT_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(
          *d, to_int(k.p.pad_h, "pad_h"), to_int(k.p.pad_w, "pad_w"), to_int(k.p.stride_h, "stride_h"),
          to_int(k.p.stride_w, "stride_w"), to_int(k.p.dilation_h, "dilation_h"),
          to_int(k.p.dilation_w, "dilation_w"), CUDNN_CROSS_CORRELATION,
          CUDNN_DATA_FLOAT));  // fp32 accumulation for every storage type
      AMPKIT_CUDNN_CHECK(cudnnSetConvolutionGroupCount(*d, to_int(k.p.groups, "groups")));
      AMPKIT_CUDNN_CHECK(cudnnSetConvolutionMathType(*d, conv_math_for(k.dtype)));
    }
    return p;
  }

  std::mutex mu_;
  std::map<ConvKey, std::unique_ptr<ConvPlan>> plans_;
};

/// Pick the first (fastest measured, or best ranked) usable result of a Find / Get_v7 call: it
/// ran, fits the workspace limit, has an allowed math type and, under deterministic, is reported
/// deterministic. Fails naming the op and shape when none is.
template <class Perf>
const Perf& pick(const Perf* res, int n, const char* op, const ConvKey& k) {
  for (int i = 0; i < n; ++i)
    if (res[i].status == CUDNN_STATUS_SUCCESS && res[i].memory <= kConvWorkspaceLimit &&
        conv_math_ok(k.dtype, res[i].mathType) && (!k.deterministic || res[i].determinism == CUDNN_DETERMINISTIC))
      return res[i];
  AMPKIT_FAIL(op, ": cuDNN has no usable", k.deterministic ? " deterministic" : "", " algorithm for input (", k.n,
              ",", k.h, ",", k.w, ",", k.c, ") weights (", k.k, ",", k.r, ",", k.s, ",", k.c / k.p.groups,
              ") groups=", k.p.groups, " (", n, k.benchmark ? " candidates measured)" : " candidates ranked)",
              k.deterministic ? "; set randomness.deterministic = false" : "");
}

/// Bytes of workspace for benchmark mode's cudnnFind*Ex, from the heuristic candidate list `cand`
/// (cudnnGet*_v7, which runs nothing and reports each algorithm's workspace for this shape and
/// math type): the largest workspace of a candidate pick() could accept, capped at
/// kFindWorkspaceBudget, but never below what the heuristic's own pick needs (so Find can always
/// time what heuristic mode would run; that workspace is allocated by the real call at the same
/// moment anyway). Find skips algorithms that need more than it gets (they come back with a
/// failed status, which pick() skips).
template <class Perf>
std::size_t find_workspace_bytes(const Perf* cand, int n, const ConvKey& k) {
  std::size_t largest = 0, heuristic = 0;
  bool first = true;
  for (int i = 0; i < n; ++i) {
    const Perf& r = cand[i];
    if (r.status != CUDNN_STATUS_SUCCESS || r.memory > kConvWorkspaceLimit || !conv_math_ok(k.dtype, r.mathType) ||
        (k.deterministic && r.determinism != CUDNN_DETERMINISTIC))
      continue;
    if (first) heuristic = r.memory, first = false;
    largest = std::max(largest, r.memory);
  }
  return std::min(largest, std::max(kFindWorkspaceBudget, heuristic));
}

template <StorageScalar T>
ConvKey conv_key(const Cuda& ctx, Shape x, Shape w, const Conv2dParams& p) {
  // fp32 stays on cuDNN (FMA math): the fp32 policy is the numerics reference and keeps its sums.
  const bool gemm_applies =
      !std::is_same_v<T, float> && !conv_force_cudnn().load() && conv1x1_gemm_shape_ok(x, w, p);
  return {ctx.device().index,
          cudnn_type_v<T>,
          x.n,
          x.c,
          x.h,
          x.w,
          w.n,
          w.h,
          w.w,
          p,
          ctx.cudnn_options().benchmark,
          ctx.cudnn_options().deterministic,
          gemm_applies ? conv1x1_gemm().load() : Conv1x1Gemm::kNever,
          cudnn_graph_api_applies(ctx.cudnn_options())};
}

/// Graph-API planning of direction `dir` (conv_cudnn_graph.cuh) when the key asks for it, after
/// the legacy algorithm is chosen; kCudnn (nothing created, no graph-API call) otherwise. `p1..p3`
/// are the call's tensors by graph uid (x/dx, w/dw, y/dy; the output one being where timing may
/// write) and `run_legacy()` runs the legacy pick into that output, true on success.
template <class RunLegacy>
ConvEngine choose_cudnn_engine(const Cuda& ctx, const ConvKey& k, ConvDirection dir,
                               std::unique_ptr<GraphConvPlan>& graph, std::size_t legacy_ws, const void* p1,
                               const void* p2, const void* p3, RunLegacy&& run_legacy) {
  if (!k.graph_api) return ConvEngine::kCudnn;
  // Forward only on deterministic engines, whatever CudnnOptions::deterministic says: every
  // legacy forward algorithm is deterministic, and recompute_conv_outputs relies on a forward
  // that gives the same bits when it runs again (nn/conv_bn.hpp).
  const GraphConvProblem pr{k.dtype, k.n, k.c, k.h, k.w, k.k, k.r, k.s, k.p,
                            k.deterministic || dir == ConvDirection::kForward};
  // Timing workspace: the budget Find gets (kFindWorkspaceBudget says why), never below what the
  // legacy pick itself uses (allocated by the real call at the same moment anyway).
  return plan_graph_conv(ctx, pr, dir, k.benchmark, kConvWorkspaceLimit,
                         std::max(kFindWorkspaceBudget, legacy_ws), graph, p1, p2, p3, run_legacy);
}

/// The engine for direction `dir` of a 1x1 conv whose cuDNN algorithm is already chosen (called
/// once, under the cache lock). Creates `gemm` when cuBLASLt runs it. `a`, `b` are the GEMM
/// operands of this call and `out` where results may be written while timing (the real output
/// for forward / backward data; a zeroed scratch for backward filter, whose real output
/// accumulates). `run_cudnn(out)` runs the chosen cuDNN algorithm into `out`, true on success.
template <class RunCudnn>
ConvEngine choose_conv_engine(const Cuda& ctx, const ConvKey& k, std::unique_ptr<GemmPlan>& gemm,
                              ConvDirection dir, const void* a, const void* b, void* out,
                              RunCudnn&& run_cudnn) {
  if (k.gemm == Conv1x1Gemm::kNever) return ConvEngine::kCudnn;  // fp16/bf16 only (see conv_key)
  const cudaDataType_t t = k.dtype == CUDNN_DATA_HALF ? CUDA_R_16F : CUDA_R_16BF;
  return plan_conv_gemm(ctx, k.gemm, k.benchmark, t, k.n * k.h * k.w, k.c, k.k, dir, gemm, a, b, out,
                        run_cudnn);
}

/// y(M,K) += bias[k], in place.
template <class N>
__global__ void add_bias_kernel(N* __restrict__ y, const N* __restrict__ b, std::int64_t total, int K) {
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < total;
       i += std::int64_t{gridDim.x} * blockDim.x)
    y[i] = from_float<N>(to_float(y[i]) + to_float(b[i % K]));
}

/// partial(grid_y, K) = column sums of dy(M, K) over each block's rows. blockDim (32, 8).
template <class N>
__global__ void column_sum_partial(const N* __restrict__ dy, std::int64_t M, int K,
                                   float* __restrict__ partial) {
  __shared__ float s[8][33];
  const int k = blockIdx.x * 32 + threadIdx.x;
  float acc = 0.f;
  if (k < K)
    for (std::int64_t m = std::int64_t{blockIdx.y} * 8 + threadIdx.y; m < M; m += std::int64_t{gridDim.y} * 8)
      acc += to_float(dy[m * K + k]);
  s[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && k < K) {
    for (int j = 1; j < 8; ++j) acc += s[j][threadIdx.x];
    partial[std::int64_t{blockIdx.y} * K + k] = acc;
  }
}

/// db[k] += sum_j partial[j][k], in a fixed order (deterministic), one rounding to T.
template <class N>
__global__ void column_sum_finalize(const float* __restrict__ partial, int n_part, int K,
                                    N* __restrict__ db) {
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= K) return;
  float acc = 0.f;
  for (int j = 0; j < n_part; ++j) acc += partial[std::int64_t{j} * K + k];
  db[k] = from_float<N>(to_float(db[k]) + acc);
}

inline void check_views(const char* op, std::initializer_list<std::pair<const char*, const void*>> v) {
  for (const auto& [name, p] : v) AMPKIT_CHECK(p != nullptr, op, ": ", name, " has no data");
}

/// Whether conv(x, w, p) in storage type T runs on the direct grouped kernels.
template <StorageScalar T>
bool use_grouped_direct(const Cuda& ctx, Shape x, Shape w, const Conv2dParams& p) {
  return grouped_conv_direct_ok(x, w, p, sizeof(T), ctx.device().index);
}

}  // namespace cuda::detail

/// Which implementation conv2d_* take for these shapes: "direct-grouped" or "cudnn".
template <StorageScalar T>
const char* conv2d_path_name(Cuda& ctx, Shape x, Shape w, const Conv2dParams& p) {
  return cuda::detail::use_grouped_direct<T>(ctx, x, w, p) ? "direct-grouped" : "cudnn";
}

/// Which engine runs direction `dir` of conv(x, w, p) in storage type T under the context's
/// current options: kDirectGrouped, or, once that direction has run, kCudnn / kCublasLt /
/// kCublasLtPadded / kCudnnGraph (kUnplanned before). A call whose views are not 16-byte aligned
/// runs cuDNN's legacy algorithm even where this says kCublasLt or kCudnnGraph.
template <StorageScalar T>
cuda::ConvEngine conv2d_engine(Cuda& ctx, Shape x, Shape w, const Conv2dParams& p, cuda::ConvDirection dir) {
  using namespace cuda::detail;
  if (use_grouped_direct<T>(ctx, x, w, p)) return cuda::ConvEngine::kDirectGrouped;
  auto& cache = ConvPlanCache::instance();
  ConvPlan* plan = cache.find(conv_key<T>(ctx, x, w, p));
  if (plan == nullptr) return cuda::ConvEngine::kUnplanned;
  std::lock_guard lock(cache.mutex());
  switch (dir) {
    case cuda::ConvDirection::kForward:
      return plan->has_fwd ? plan->fwd_engine : cuda::ConvEngine::kUnplanned;
    case cuda::ConvDirection::kBackwardData:
      return plan->has_bwd_data ? plan->bwd_data_engine : cuda::ConvEngine::kUnplanned;
    case cuda::ConvDirection::kBackwardFilter:
      return plan->has_bwd_filter ? plan->bwd_filter_engine : cuda::ConvEngine::kUnplanned;
  }
  return cuda::ConvEngine::kUnplanned;
}

/// y = conv2d(x, w) + bias (bias may be an empty view). Output WRITTEN.
template <StorageScalar T>
void conv2d_forward(Cuda& ctx, TensorView<const T> x, TensorView<const T> w, TensorView<const T> bias,
                    TensorView<T> y, const Conv2dParams& p) {
  using namespace cuda::detail;
  ampkit::detail::check_conv2d("conv2d_forward", x.shape, w.shape, y.shape, &bias, p);
  check_views("conv2d_forward", {{"x", x.data}, {"w", w.data}, {"y", y.data}});
  cuda::trace_conv("conv2d_forward", "x", x.data, x.bytes(), "w", w.data, w.bytes(), "y", y.data, y.bytes());
  if (use_grouped_direct<T>(ctx, x.shape, w.shape, p)) return grouped_conv_forward<T>(ctx, x, w, bias, y, p);
  const auto key = conv_key<T>(ctx, x.shape, w.shape, p);
  auto& cache = ConvPlanCache::instance();
  ConvPlan& plan = cache.get(key);
  {
    std::lock_guard lock(cache.mutex());
    if (!plan.has_fwd) {
      cudnnConvolutionFwdAlgoPerf_t res[CUDNN_CONVOLUTION_FWD_ALGO_COUNT * 3];
      int n = 0;
      const int want = static_cast<int>(std::size(res));
      AMPKIT_CUDNN_CHECK(
          cudnnGetConvolutionForwardAlgorithm_v7(ctx.cudnn(), plan.x, plan.w, plan.fwd, plan.y, want, &n, res));
      if (key.benchmark) {
        // Timed on this call's own x and w and into its y (beta = 0 below: the real call
        // overwrites what Find leaves there), with a workspace from the caching allocator that
        // goes back to the cache at the end of this block (find_workspace_bytes says how large).
        const std::size_t ws_bytes = find_workspace_bytes(res, n, key);
        auto ws = ctx.workspace(ws_bytes);
        AMPKIT_CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithmEx(ctx.cudnn(), plan.x, x.data, plan.w, w.data,
                                                                  plan.fwd, plan.y, y.data, want, &n, res,
                                                                  ws.data(), ws_bytes));
      }
      const auto& r = pick(res, n, "conv2d_forward", key);
      AMPKIT_CUDNN_CHECK(cudnnSetConvolutionMathType(plan.fwd, conv_math_use(key.dtype, r.mathType)));
      AMPKIT_CUDNN_CHECK(cudnnGetConvolutionForwardWorkspaceSize(ctx.cudnn(), plan.x, plan.w, plan.fwd,
                                                                 plan.y, r.algo, &plan.fwd_ws));
      plan.fwd_algo = r.algo;
      const auto run_legacy = [&](void* out) {
        auto ws = ctx.workspace(plan.fwd_ws);
        const float one = 1.f, zero = 0.f;
        return cudnnConvolutionForward(ctx.cudnn(), &one, plan.x, x.data, plan.w, w.data, plan.fwd, plan.fwd_algo,
                                       ws.data(), plan.fwd_ws, &zero, plan.y, out) == CUDNN_STATUS_SUCCESS;
      };
      const cuda::ConvEngine cudnn_engine =
          choose_cudnn_engine(ctx, key, cuda::ConvDirection::kForward, plan.fwd_graph, plan.fwd_ws, x.data, w.data,
                              y.data, [&] { return run_legacy(y.data); });
      const cuda::ConvEngine e = choose_conv_engine(
          ctx, key, plan.fwd_gemm, cuda::ConvDirection::kForward, w.data, x.data, y.data, [&](void* out) {
            if (cudnn_engine != cuda::ConvEngine::kCudnnGraph) return run_legacy(out);
            return graph_execute(ctx, plan.fwd_graph->plan, plan.fwd_graph->ws, x.data, w.data, out) ==
                   CUDNN_STATUS_SUCCESS;
          });
      plan.fwd_engine = e == cuda::ConvEngine::kCudnn ? cudnn_engine : e;
      if (plan.fwd_engine != cuda::ConvEngine::kCudnnGraph) plan.fwd_graph.reset();
      plan.has_fwd = true;
    }
  }
  if (cuda::is_gemm_engine(plan.fwd_engine) && gemm_pointers_aligned({w.data, x.data, y.data})) {
    const GemmPlan& g = *plan.fwd_gemm;
    AMPKIT_CUBLAS_CHECK(gemm_run(ctx, g, g.algo, g.ws, w.data, x.data, y.data));  // Y' = W'^T . X'
  } else if (plan.fwd_engine == cuda::ConvEngine::kCudnnGraph && gemm_pointers_aligned({x.data, w.data, y.data})) {
    AMPKIT_CUDNN_CHECK(graph_execute(ctx, plan.fwd_graph->plan, plan.fwd_graph->ws, x.data, w.data, y.data));
    cuda::mark_initialized(ctx.stream(), y.data, y.bytes());  // sanitizer_marks.cuh
  } else {
    auto ws = ctx.workspace(plan.fwd_ws);
    const float one = 1.f, zero = 0.f;
    AMPKIT_CUDNN_CHECK(cudnnConvolutionForward(ctx.cudnn(), &one, plan.x, x.data, plan.w, w.data, plan.fwd,
                                               plan.fwd_algo, ws.data(), plan.fwd_ws, &zero, plan.y, y.data));
    cuda::mark_initialized(ctx.stream(), y.data, y.bytes());
  }
  if (bias.data) {
    const std::int64_t total = y.numel();
    add_bias_kernel<<<grid_for(total, 256, ctx.device().multiprocessors), 256, 0, ctx.stream()>>>(
        native(y.data), native(bias.data), total, static_cast<int>(y.shape.c));
    AMPKIT_CUDA_CHECK_LAUNCH();
  }
}

/// dL_dx = conv2d_backward_data(dL_dy, w). dL_dx WRITTEN.
template <StorageScalar T>
void conv2d_backward_data(Cuda& ctx, TensorView<const T> dL_dy, TensorView<const T> w, TensorView<T> dL_dx,
                          const Conv2dParams& p) {
  using namespace cuda::detail;
  ampkit::detail::check_conv2d<const T>("conv2d_backward_data", dL_dx.shape, w.shape, dL_dy.shape, nullptr,
                                        p);
  check_views("conv2d_backward_data", {{"dL_dy", dL_dy.data}, {"w", w.data}, {"dL_dx", dL_dx.data}});
  cuda::trace_conv("conv2d_backward_data", "dy", dL_dy.data, dL_dy.bytes(), "w", w.data, w.bytes(), "dx",
                   dL_dx.data, dL_dx.bytes());
  if (use_grouped_direct<T>(ctx, dL_dx.shape, w.shape, p))
    return grouped_conv_backward_data<T>(ctx, dL_dy, w, dL_dx, p);
  const auto key = conv_key<T>(ctx, dL_dx.shape, w.shape, p);
  auto& cache = ConvPlanCache::instance();
  ConvPlan& plan = cache.get(key);
  {
    std::lock_guard lock(cache.mutex());
    if (!plan.has_bwd_data) {
      cudnnConvolutionBwdDataAlgoPerf_t res[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT * 3];
      int n = 0;
      const int want = static_cast<int>(std::size(res));
      AMPKIT_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(ctx.cudnn(), plan.w, plan.y, plan.bwd_data,
                                                                     plan.x, want, &n, res));
      if (key.benchmark) {
        // Into the real dL_dx: it is written with beta = 0 below, so what Find leaves is
        // overwritten (no activation-sized scratch). Workspace as for forward.
        const std::size_t ws_bytes = find_workspace_bytes(res, n, key);
        auto ws = ctx.workspace(ws_bytes);
        AMPKIT_CUDNN_CHECK(cudnnFindConvolutionBackwardDataAlgorithmEx(ctx.cudnn(), plan.w, w.data, plan.y,
                                                                       dL_dy.data, plan.bwd_data, plan.x,
                                                                       dL_dx.data, want, &n, res, ws.data(),
                                                                       ws_bytes));
      }
      const auto& r = pick(res, n, "conv2d_backward_data", key);
      AMPKIT_CUDNN_CHECK(cudnnSetConvolutionMathType(plan.bwd_data, conv_math_use(key.dtype, r.mathType)));
      AMPKIT_CUDNN_CHECK(cudnnGetConvolutionBackwardDataWorkspaceSize(
          ctx.cudnn(), plan.w, plan.y, plan.bwd_data, plan.x, r.algo, &plan.bwd_data_ws));
      plan.bwd_data_algo = r.algo;
      const auto run_legacy = [&](void* out) {
        auto ws = ctx.workspace(plan.bwd_data_ws);
        const float one = 1.f, zero = 0.f;
        return cudnnConvolutionBackwardData(ctx.cudnn(), &one, plan.w, w.data, plan.y, dL_dy.data, plan.bwd_data,
                                            plan.bwd_data_algo, ws.data(), plan.bwd_data_ws, &zero, plan.x,
                                            out) == CUDNN_STATUS_SUCCESS;
      };
      const cuda::ConvEngine cudnn_engine = choose_cudnn_engine(
          ctx, key, cuda::ConvDirection::kBackwardData, plan.bwd_data_graph, plan.bwd_data_ws, dL_dx.data, w.data,
          dL_dy.data, [&] { return run_legacy(dL_dx.data); });
      const cuda::ConvEngine e = choose_conv_engine(
          ctx, key, plan.bwd_data_gemm, cuda::ConvDirection::kBackwardData, w.data, dL_dy.data, dL_dx.data,
          [&](void* out) {
            if (cudnn_engine != cuda::ConvEngine::kCudnnGraph) return run_legacy(out);
            return graph_execute(ctx, plan.bwd_data_graph->plan, plan.bwd_data_graph->ws, out, w.data,
                                 dL_dy.data) == CUDNN_STATUS_SUCCESS;
          });
      plan.bwd_data_engine = e == cuda::ConvEngine::kCudnn ? cudnn_engine : e;
      if (plan.bwd_data_engine != cuda::ConvEngine::kCudnnGraph) plan.bwd_data_graph.reset();
      plan.has_bwd_data = true;
    }
  }
  if (cuda::is_gemm_engine(plan.bwd_data_engine) &&
      gemm_pointers_aligned({w.data, dL_dy.data, dL_dx.data})) {
    const GemmPlan& g = *plan.bwd_data_gemm;
    AMPKIT_CUBLAS_CHECK(gemm_run(ctx, g, g.algo, g.ws, w.data, dL_dy.data, dL_dx.data));  // dX' = W' . dY'
    return;
  }
  if (plan.bwd_data_engine == cuda::ConvEngine::kCudnnGraph &&
      gemm_pointers_aligned({dL_dx.data, w.data, dL_dy.data})) {
    AMPKIT_CUDNN_CHECK(graph_execute(ctx, plan.bwd_data_graph->plan, plan.bwd_data_graph->ws, dL_dx.data, w.data,
                                     dL_dy.data));
    cuda::mark_initialized(ctx.stream(), dL_dx.data, dL_dx.bytes());  // sanitizer_marks.cuh
    return;
  }
  auto ws = ctx.workspace(plan.bwd_data_ws);
  const float one = 1.f, zero = 0.f;
  AMPKIT_CUDNN_CHECK(cudnnConvolutionBackwardData(ctx.cudnn(), &one, plan.w, w.data, plan.y, dL_dy.data,
                                                  plan.bwd_data, plan.bwd_data_algo, ws.data(),
                                                  plan.bwd_data_ws, &zero, plan.x, dL_dx.data));
  cuda::mark_initialized(ctx.stream(), dL_dx.data, dL_dx.bytes());
}

/// dL_dw += conv2d_backward_filter(x, dL_dy) (cuDNN beta = 1).
template <StorageScalar T>
void conv2d_backward_filter(Cuda& ctx, TensorView<const T> x, TensorView<const T> dL_dy, TensorView<T> dL_dw,
                            const Conv2dParams& p) {
  using namespace cuda::detail;
  ampkit::detail::check_conv2d<const T>("conv2d_backward_filter", x.shape, dL_dw.shape, dL_dy.shape, nullptr,
                                        p);
  check_views("conv2d_backward_filter", {{"x", x.data}, {"dL_dy", dL_dy.data}, {"dL_dw", dL_dw.data}});
  cuda::trace_conv("conv2d_backward_filter", "x", x.data, x.bytes(), "dy", dL_dy.data, dL_dy.bytes(), "dw",
                   dL_dw.data, dL_dw.bytes());
  if (use_grouped_direct<T>(ctx, x.shape, dL_dw.shape, p))
    return grouped_conv_backward_filter<T>(ctx, x, dL_dy, dL_dw, p);
  const auto key = conv_key<T>(ctx, x.shape, dL_dw.shape, p);
  auto& cache = ConvPlanCache::instance();
  ConvPlan& plan = cache.get(key);
  {
    std::lock_guard lock(cache.mutex());
    if (!plan.has_bwd_filter) {
      cudnnConvolutionBwdFilterAlgoPerf_t res[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT * 3];
      int n = 0;
      const int want = static_cast<int>(std::size(res));
      AMPKIT_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(ctx.cudnn(), plan.x, plan.y,
                                                                       plan.bwd_filter, plan.w, want, &n, res));
      if (key.benchmark) {
        // Find overwrites its dw, but the real dL_dw accumulates (beta = 1: gradients add up over
        // the layer's uses and the micro-batches), so Find writes into a scratch of the weights'
        // size (small: < 3 MiB for any DEKR conv). Zeroed so that no algorithm reads it unset.
        const std::size_t dw_bytes = static_cast<std::size_t>(dL_dw.numel()) * sizeof(T);
        auto dw_scratch = ctx.workspace(dw_bytes);
        AMPKIT_CUDA_CHECK(cudaMemsetAsync(dw_scratch.data(), 0, dw_bytes, ctx.stream()));
        const std::size_t ws_bytes = find_workspace_bytes(res, n, key);
        auto ws = ctx.workspace(ws_bytes);
        AMPKIT_CUDNN_CHECK(cudnnFindConvolutionBackwardFilterAlgorithmEx(ctx.cudnn(), plan.x, x.data, plan.y,
                                                                         dL_dy.data, plan.bwd_filter, plan.w,
                                                                         dw_scratch.data(), want, &n, res,
                                                                         ws.data(), ws_bytes));
      }
      const auto& r = pick(res, n, "conv2d_backward_filter", key);
      AMPKIT_CUDNN_CHECK(cudnnSetConvolutionMathType(plan.bwd_filter, conv_math_use(key.dtype, r.mathType)));
      AMPKIT_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterWorkspaceSize(
          ctx.cudnn(), plan.x, plan.y, plan.bwd_filter, plan.w, r.algo, &plan.bwd_filter_ws));
      plan.bwd_filter_algo = r.algo;
      const auto run_legacy = [&](void* out) {
        auto ws = ctx.workspace(plan.bwd_filter_ws);
        const float one = 1.f;
        return cudnnConvolutionBackwardFilter(ctx.cudnn(), &one, plan.x, x.data, plan.y, dL_dy.data,
                                              plan.bwd_filter, plan.bwd_filter_algo, ws.data(), plan.bwd_filter_ws,
                                              &one, plan.w, out) == CUDNN_STATUS_SUCCESS;
      };
      cuda::ConvEngine cudnn_engine = cuda::ConvEngine::kCudnn;
      if (key.graph_api) {
        // Timed into a zeroed scratch, as below: the real dL_dw must see exactly one update.
        const std::size_t bytes = static_cast<std::size_t>(dL_dw.numel()) * sizeof(T);
        auto scratch = ctx.workspace(bytes);
        AMPKIT_CUDA_CHECK(cudaMemsetAsync(scratch.data(), 0, bytes, ctx.stream()));
        cudnn_engine = choose_cudnn_engine(ctx, key, cuda::ConvDirection::kBackwardFilter, plan.bwd_filter_graph,
                                           plan.bwd_filter_ws, x.data, scratch.data(), dL_dy.data,
                                           [&] { return run_legacy(scratch.data()); });
      }
      if (key.gemm != cuda::Conv1x1Gemm::kNever) {
        // Timing writes into a zeroed scratch: the real dL_dw accumulates (beta = 1) and must see
        // exactly one update.
        const std::size_t bytes = static_cast<std::size_t>(dL_dw.numel()) * sizeof(T);
        auto scratch = ctx.workspace(bytes);
        AMPKIT_CUDA_CHECK(cudaMemsetAsync(scratch.data(), 0, bytes, ctx.stream()));
        const cuda::ConvEngine e = choose_conv_engine(
            ctx, key, plan.bwd_filter_gemm, cuda::ConvDirection::kBackwardFilter, x.data, dL_dy.data,
            scratch.data(), [&](void* out) {
              if (cudnn_engine != cuda::ConvEngine::kCudnnGraph) return run_legacy(out);
              return graph_execute(ctx, plan.bwd_filter_graph->plan, plan.bwd_filter_graph->ws, x.data, out,
                                   dL_dy.data) == CUDNN_STATUS_SUCCESS;
            });
        plan.bwd_filter_engine = e == cuda::ConvEngine::kCudnn ? cudnn_engine : e;
      } else {
        plan.bwd_filter_engine = cudnn_engine;
      }
      if (plan.bwd_filter_engine != cuda::ConvEngine::kCudnnGraph) plan.bwd_filter_graph.reset();
      plan.has_bwd_filter = true;
    }
  }
  if (cuda::is_gemm_engine(plan.bwd_filter_engine) &&
      gemm_pointers_aligned({x.data, dL_dy.data, dL_dw.data})) {
    const GemmPlan& g = *plan.bwd_filter_gemm;
    AMPKIT_CUBLAS_CHECK(gemm_run(ctx, g, g.algo, g.ws, x.data, dL_dy.data, dL_dw.data));  // dW' += X' . dY'^T
    return;
  }
  if (plan.bwd_filter_engine == cuda::ConvEngine::kCudnnGraph &&
      gemm_pointers_aligned({x.data, dL_dw.data, dL_dy.data})) {
    // beta = 1 in the operation: accumulates into dL_dw like the legacy call below
    AMPKIT_CUDNN_CHECK(graph_execute(ctx, plan.bwd_filter_graph->plan, plan.bwd_filter_graph->ws, x.data,
                                     dL_dw.data, dL_dy.data));
    cuda::mark_initialized(ctx.stream(), dL_dw.data, dL_dw.bytes());  // sanitizer_marks.cuh
    return;
  }
  auto ws = ctx.workspace(plan.bwd_filter_ws);
  const float one = 1.f;  // beta = 1: accumulate into dL_dw
  AMPKIT_CUDNN_CHECK(cudnnConvolutionBackwardFilter(ctx.cudnn(), &one, plan.x, x.data, plan.y, dL_dy.data,
                                                    plan.bwd_filter, plan.bwd_filter_algo, ws.data(),
                                                    plan.bwd_filter_ws, &one, plan.w, dL_dw.data));
  cuda::mark_initialized(ctx.stream(), dL_dw.data, dL_dw.bytes());
}

/// dL_db += sum over (N,H,W) of dL_dy: fixed-order two-pass column sum (deterministic).
template <StorageScalar T>
void conv2d_backward_bias(Cuda& ctx, TensorView<const T> dL_dy, TensorView<T> dL_db) {
  using namespace cuda::detail;
  check_shape("conv2d_backward_bias", "dL_dy", dL_dy, dL_dy.shape);
  check_shape("conv2d_backward_bias", "dL_db", dL_db, Shape{1, 1, 1, dL_dy.shape.c});
  const std::int64_t M = dL_dy.shape.n * dL_dy.shape.h * dL_dy.shape.w;
  const int K = to_int(dL_dy.shape.c, "K");
  if (M == 0 || K == 0) return;
  const unsigned gx = static_cast<unsigned>((K + 31) / 32);
  const unsigned gy = static_cast<unsigned>(std::clamp<std::int64_t>(
      std::int64_t{ctx.device().multiprocessors} * 4 / gx, 1, std::max<std::int64_t>(1, (M + 63) / 64)));
  auto ws = ctx.workspace(sizeof(float) * gy * static_cast<std::size_t>(K));
  float* partial = reinterpret_cast<float*>(ws.data());
  column_sum_partial<<<dim3(gx, gy), dim3(32, 8), 0, ctx.stream()>>>(native(dL_dy.data), M, K, partial);
  AMPKIT_CUDA_CHECK_LAUNCH();
  column_sum_finalize<<<(K + 127) / 128, 128, 0, ctx.stream()>>>(partial, static_cast<int>(gy), K,
                                                                 native(dL_db.data));
  AMPKIT_CUDA_CHECK_LAUNCH();
}

}  // namespace ampkit

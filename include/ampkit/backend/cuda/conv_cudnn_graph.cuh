/// @brief Convolutions through cuDNN's backend (graph) C API: one operation graph per conv
/// direction, engine configs from the heuristics (modes A and FALLBACK), finalized execution
/// plans, timed in benchmark mode. The opt-in engine conv2d.cuh may choose (kCudnnGraph).
///
/// Why: PyTorch 2.11 runs its convolutions through the graph API, whose engines include kernels
/// the legacy v7 entry points (cudnnFind*AlgorithmEx, cudnnGet*_v7) never return; on the H200
/// several of our 3x3 convs were 0.53-0.87x PyTorch with the same cuDNN 9.19, and the profile
/// showed legacy kernels such as wgrad_alg0_engine_NHWC (no tensor cores) for weight gradients.
/// Only the C backend API (cudnn_graph.h) is used, the cuDNN the project already links; the C++
/// cudnn-frontend is not a dependency.
///
/// Graph of one direction: three tensors and one operation, the tensors' unique ids fixed by role
/// so that one variant-pack layout serves every direction:
///   uid 1  x  (forward, backward filter: input) / dx (backward data: output)
///   uid 2  w  (forward, backward data: input)   / dw (backward filter: output, accumulates)
///   uid 3  y  (forward: output)                 / dy (backward data, backward filter: input)
/// Dimensions are given in cuDNN's N,C,H,W order with NHWC strides; the filter is (K, C/groups,
/// R, S) with strides of (K,R,S,C/groups) storage, and cuDNN derives the group count from x's C
/// over w's C/groups (the backend has no group attribute). Compute type fp32 for every storage
/// type; alpha = 1, beta = 0 except backward filter (beta = 1: dL_dw accumulates, as the legacy
/// call does). Byte alignment 16: conv2d.cuh runs the legacy algorithm for a call whose views are
/// less aligned.
///
/// Engine filter (the numerical and behaviour notes of each config's engine): never
/// REDUCED_PRECISION_REDUCTION (sums in fp16/bf16 break precision.hpp's fp32-accumulation
/// contract); fp32 storage never TENSOR_CORE or DOWN_CONVERT_INPUTS (TF32: fp32 means fp32, as
/// CUDNN_FMA_MATH on the legacy path); under CudnnOptions::deterministic never NONDETERMINISTIC.
/// Plans whose workspace exceeds the per-call cap are skipped, as are configs that fail to
/// finalize (heuristics may return engines that do not support this exact problem).
#pragma once

#include <cudnn.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "ampkit/backend/cuda/check.cuh"
#include "ampkit/backend/cuda/context.cuh"
#include "ampkit/backend/cuda/conv1x1_gemm.cuh"
#include "ampkit/core/env_choice.hpp"
#include "ampkit/core/tensor.hpp"
#include "ampkit/nn/ops/conv2d.hpp"

namespace ampkit {

namespace cuda {

/// The graph-API policy the environment sets for every context (AMPKIT_CUDNN_GRAPH_API=
/// benchmark|always|never, or 1 / 0 for always / never; read once), empty when unset.
/// CudnnOptions::graph_api is the per-context setting.
inline std::optional<CudnnGraphApi> cudnn_graph_api_env() {
  using M = std::optional<CudnnGraphApi>;
  static const M mode = env_choice<M>("AMPKIT_CUDNN_GRAPH_API",
                                      {{"benchmark", CudnnGraphApi::kBenchmark},
                                       {"always", CudnnGraphApi::kAlways},
                                       {"never", CudnnGraphApi::kNever},
                                       {"1", CudnnGraphApi::kAlways},
                                       {"0", CudnnGraphApi::kNever}},
                                      std::nullopt, "CudnnOptions::graph_api, benchmark by default");
  return mode;
}

/// Whether conv planning under `o` considers graph-API plans (the environment first).
inline bool cudnn_graph_api_applies(const CudnnOptions& o) {
  const CudnnGraphApi m = cudnn_graph_api_env().value_or(o.graph_api);
  return m == CudnnGraphApi::kAlways || (m == CudnnGraphApi::kBenchmark && o.benchmark);
}

namespace detail {
struct GraphErrorLog {
  std::mutex mu;
  std::string first, last;
  static GraphErrorLog& instance() {
    static GraphErrorLog l;
    return l;
  }
};
}  // namespace detail

/// The first and the latest backend-API call that failed while planning graph-API convs (empty
/// when none did), "call: status" — failures there are expected for some engines and fall back
/// silently, so tests and the bench print this when no graph plan was made.
inline std::string cudnn_graph_errors() {
  auto& l = detail::GraphErrorLog::instance();
  std::lock_guard lock(l.mu);
  if (l.first.empty()) return {};
  return "first: " + l.first + "; last: " + l.last;
}

}  // namespace cuda

namespace cuda::detail {

/// Engine configs a benchmark-mode plan times (finalized ones, modes A then FALLBACK).
inline constexpr int kGraphCandidates = 8;

/// Records a failed backend call (see cudnn_graph_errors) and returns whether `s` is success.
inline bool graph_ok(cudnnStatus_t s, const char* what) {
  if (s == CUDNN_STATUS_SUCCESS) return true;
  auto& l = GraphErrorLog::instance();
  std::lock_guard lock(l.mu);
  l.last = std::string(what) + ": " + cudnnGetErrorString(s);
  if (l.first.empty()) l.first = l.last;
  return false;
}

/// Owns backend descriptors and destroys them in reverse order of creation.
class BackendDescriptors {
 public:
  BackendDescriptors() = default;
  BackendDescriptors(const BackendDescriptors&) = delete;
  BackendDescriptors& operator=(const BackendDescriptors&) = delete;
  ~BackendDescriptors() {
    for (auto it = d_.rbegin(); it != d_.rend(); ++it) (void)cudnnBackendDestroyDescriptor(*it);
  }
  /// A new descriptor of `type`, or nullptr (recorded) when cuDNN refuses.
  cudnnBackendDescriptor_t create(cudnnBackendDescriptorType_t type, const char* what) {
    cudnnBackendDescriptor_t d = nullptr;
    if (!graph_ok(cudnnBackendCreateDescriptor(type, &d), what)) return nullptr;
    d_.push_back(d);
    return d;
  }

 private:
  std::vector<cudnnBackendDescriptor_t> d_;
};

inline cudnnStatus_t set_attr(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name,
                              cudnnBackendAttributeType_t type, std::int64_t count, const void* values) {
  return cudnnBackendSetAttribute(d, name, type, count, values);
}

/// The problem of one conv direction, in the terms of conv2d.cuh's plan key.
struct GraphConvProblem {
  cudnnDataType_t dtype;
  std::int64_t n, c, h, w, k, r, s;
  Conv2dParams p;
  bool deterministic;
};

/// One finalized execution plan of one direction, with every descriptor it refers to (kept alive
/// for the plan's lifetime: the plan references its config, engine and operation graph).
struct GraphConvPlan {
  BackendDescriptors graph;                                     // tensors, conv, operation, operation graph
  std::vector<std::unique_ptr<BackendDescriptors>> candidates;  // one per config tried (cfg, engine, plan)
  cudnnBackendDescriptor_t plan = nullptr;  // the chosen execution plan (owned by candidates)
  std::int64_t ws = 0;                      // its workspace bytes
  std::int64_t engine_index = -1;           // cuDNN's global engine index (the bench prints it)
};

/// An engine config usable under our numerics (see the file comment), with its engine index.
inline bool graph_engine_allowed(cudnnBackendDescriptor_t cfg, BackendDescriptors& own,
                                 const GraphConvProblem& pr, std::int64_t& index) {
  cudnnBackendDescriptor_t engine = own.create(CUDNN_BACKEND_ENGINE_DESCRIPTOR, "create engine");
  if (engine == nullptr) return false;
  std::int64_t n = 0;
  if (!graph_ok(cudnnBackendGetAttribute(cfg, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                                         &n, &engine),
                "get CUDNN_ATTR_ENGINECFG_ENGINE"))
    return false;
  index = -1;
  (void)cudnnBackendGetAttribute(engine, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &n, &index);
  cudnnBackendNumericalNote_t notes[CUDNN_NUMERICAL_NOTE_TYPE_COUNT];
  std::int64_t n_notes = 0;
  if (!graph_ok(cudnnBackendGetAttribute(engine, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
                                         CUDNN_NUMERICAL_NOTE_TYPE_COUNT, &n_notes, notes),
                "get CUDNN_ATTR_ENGINE_NUMERICAL_NOTE"))
    return false;  // unknown numerics: not used
  for (std::int64_t i = 0; i < n_notes && i < CUDNN_NUMERICAL_NOTE_TYPE_COUNT; ++i) {
    const auto note = notes[i];
    if (note == CUDNN_NUMERICAL_NOTE_REDUCED_PRECISION_REDUCTION) return false;
    if (pr.deterministic && note == CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC) return false;
    if (pr.dtype == CUDNN_DATA_FLOAT &&
        (note == CUDNN_NUMERICAL_NOTE_TENSOR_CORE || note == CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS))
      return false;
  }
  return true;
}

/// The engine configs cuDNN's heuristic `mode` proposes for `op_graph`, best first (created in
/// `own`); empty when the heuristic has none or fails.
inline std::vector<cudnnBackendDescriptor_t> graph_heuristic(cudnnBackendDescriptor_t op_graph,
                                                             cudnnBackendHeurMode_t mode,
                                                             BackendDescriptors& own) {
  std::vector<cudnnBackendDescriptor_t> cfgs;
  cudnnBackendDescriptor_t heur = own.create(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, "create engine heuristics");
  if (heur == nullptr) return cfgs;
  if (!graph_ok(
          set_attr(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &op_graph),
          "set CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH") ||
      !graph_ok(set_attr(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode),
                "set CUDNN_ATTR_ENGINEHEUR_MODE") ||
      !graph_ok(cudnnBackendFinalize(heur), mode == CUDNN_HEUR_MODE_A ? "finalize heuristics (mode A)"
                                                                      : "finalize heuristics (fallback)"))
    return cfgs;
  std::int64_t count = 0;
  if (!graph_ok(cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                         0, &count, nullptr),
                "count CUDNN_ATTR_ENGINEHEUR_RESULTS") ||
      count <= 0)
    return cfgs;
  cfgs.resize(static_cast<std::size_t>(count));
  for (auto& c : cfgs)
    if ((c = own.create(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, "create engine config")) == nullptr) return {};
  std::int64_t got = 0;
  if (!graph_ok(cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                         count, &got, cfgs.data()),
                "get CUDNN_ATTR_ENGINEHEUR_RESULTS"))
    return {};
  cfgs.resize(static_cast<std::size_t>(std::min(got, count)));
  return cfgs;
}

/// A tensor descriptor (dims in N,C,H,W order; strides of the NHWC storage) in `own`.
inline cudnnBackendDescriptor_t graph_tensor(BackendDescriptors& own, std::int64_t uid, cudnnDataType_t dt,
                                             std::int64_t n, std::int64_t c, std::int64_t h, std::int64_t w) {
  cudnnBackendDescriptor_t t = own.create(CUDNN_BACKEND_TENSOR_DESCRIPTOR, "create tensor");
  if (t == nullptr) return nullptr;
  const std::int64_t dims[4] = {n, c, h, w};
  const std::int64_t strides[4] = {h * w * c, 1, w * c, c};  // NHWC
  const std::int64_t align = 16;
  if (!graph_ok(set_attr(t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dt),
                "set tensor data type") ||
      !graph_ok(set_attr(t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims), "set tensor dims") ||
      !graph_ok(set_attr(t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides), "set tensor strides") ||
      !graph_ok(set_attr(t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid), "set tensor uid") ||
      !graph_ok(set_attr(t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align),
                "set tensor alignment") ||
      !graph_ok(cudnnBackendFinalize(t), "finalize tensor"))
    return nullptr;
  return t;
}

/// The operation graph of direction `dir` of problem `pr` in `g.graph`; nullptr on failure.
inline cudnnBackendDescriptor_t graph_build(cudnnHandle_t handle, const GraphConvProblem& pr,
                                            ConvDirection dir, GraphConvPlan& g) {
  BackendDescriptors& own = g.graph;
  const Shape ys =
      conv2d_output_shape({pr.n, pr.h, pr.w, pr.c}, {pr.k, pr.r, pr.s, pr.c / pr.p.groups}, pr.p);
  // x (N,C,H,W), w (K,C/groups,R,S) stored (K,R,S,C/groups) (the NHWC formula), y (N,K,P,Q)
  cudnnBackendDescriptor_t tx = graph_tensor(own, 1, pr.dtype, pr.n, pr.c, pr.h, pr.w);
  cudnnBackendDescriptor_t tw = graph_tensor(own, 2, pr.dtype, pr.k, pr.c / pr.p.groups, pr.r, pr.s);
  cudnnBackendDescriptor_t ty = graph_tensor(own, 3, pr.dtype, ys.n, ys.c, ys.h, ys.w);
  if (tx == nullptr || tw == nullptr || ty == nullptr) return nullptr;

  cudnnBackendDescriptor_t conv = own.create(CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR, "create convolution");
  if (conv == nullptr) return nullptr;
  const cudnnDataType_t comp = CUDNN_DATA_FLOAT;  // fp32 accumulation for every storage type
  const cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;
  const std::int64_t dims = 2;
  const std::int64_t pad[2] = {pr.p.pad_h, pr.p.pad_w}, stride[2] = {pr.p.stride_h, pr.p.stride_w},
                     dil[2] = {pr.p.dilation_h, pr.p.dilation_w};
  if (!graph_ok(set_attr(conv, CUDNN_ATTR_CONVOLUTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp),
                "set conv comp") ||
      !graph_ok(set_attr(conv, CUDNN_ATTR_CONVOLUTION_CONV_MODE, CUDNN_TYPE_CONVOLUTION_MODE, 1, &mode),
                "set conv mode") ||
      !graph_ok(set_attr(conv, CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, CUDNN_TYPE_INT64, 1, &dims),
                "set conv dims") ||
      !graph_ok(set_attr(conv, CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, CUDNN_TYPE_INT64, 2, pad),
                "set conv pre pad") ||
      !graph_ok(set_attr(conv, CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, CUDNN_TYPE_INT64, 2, pad),
                "set conv post pad") ||
      !graph_ok(set_attr(conv, CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, CUDNN_TYPE_INT64, 2, stride),
                "set conv stride") ||
      !graph_ok(set_attr(conv, CUDNN_ATTR_CONVOLUTION_DILATIONS, CUDNN_TYPE_INT64, 2, dil),
                "set conv dilation") ||
      !graph_ok(cudnnBackendFinalize(conv), "finalize convolution"))
    return nullptr;

  // The operation: attribute names per direction; beta = 1 only where the output accumulates.
  cudnnBackendDescriptorType_t op_type{};
  cudnnBackendAttributeName_t a_x{}, a_w{}, a_y{}, a_conv{}, a_alpha{}, a_beta{};
  float beta = 0.f;
  switch (dir) {
    case ConvDirection::kForward:
      op_type = CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR;
      a_x = CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X, a_w = CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W,
      a_y = CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y,
      a_conv = CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC,
      a_alpha = CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA,
      a_beta = CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA;
      break;
    case ConvDirection::kBackwardData:
      op_type = CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_DATA_DESCRIPTOR;
      a_x = CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DX, a_w = CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_W,
      a_y = CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DY,
      a_conv = CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_CONV_DESC,
      a_alpha = CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_ALPHA,
      a_beta = CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_BETA;
      break;
    case ConvDirection::kBackwardFilter:
      op_type = CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_FILTER_DESCRIPTOR;
      a_x = CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_X,
      a_w = CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DW,
      a_y = CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DY,
      a_conv = CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_CONV_DESC,
      a_alpha = CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_ALPHA,
      a_beta = CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_BETA;
      beta = 1.f;  // the gradient contract: dL_dw accumulates
      break;
  }
  cudnnBackendDescriptor_t op = own.create(op_type, "create convolution operation");
  if (op == nullptr) return nullptr;
  const float alpha = 1.f;
  if (!graph_ok(set_attr(op, a_x, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &tx), "set op x") ||
      !graph_ok(set_attr(op, a_w, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &tw), "set op w") ||
      !graph_ok(set_attr(op, a_y, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &ty), "set op y") ||
      !graph_ok(set_attr(op, a_conv, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &conv), "set op conv") ||
      !graph_ok(set_attr(op, a_alpha, CUDNN_TYPE_FLOAT, 1, &alpha), "set op alpha") ||
      !graph_ok(set_attr(op, a_beta, CUDNN_TYPE_FLOAT, 1, &beta), "set op beta") ||
      !graph_ok(cudnnBackendFinalize(op), "finalize convolution operation"))
    return nullptr;

  cudnnBackendDescriptor_t op_graph =
      own.create(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, "create operation graph");
  if (op_graph == nullptr) return nullptr;
  if (!graph_ok(set_attr(op_graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &op),
                "set graph ops") ||
      !graph_ok(set_attr(op_graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle),
                "set graph handle") ||
      !graph_ok(cudnnBackendFinalize(op_graph), "finalize operation graph"))
    return nullptr;
  return op_graph;
}

/// Run execution plan `plan` (workspace `ws` bytes) on the tensors with uids 1, 2, 3 (see the
/// file comment), workspace from the context's caching allocator, on the context's stream.
inline cudnnStatus_t graph_execute(const Cuda& ctx, cudnnBackendDescriptor_t plan, std::int64_t ws_bytes,
                                   const void* p1, const void* p2, const void* p3) {
  auto ws = ctx.workspace(static_cast<std::size_t>(ws_bytes));
  cudnnBackendDescriptor_t vp = nullptr;
  cudnnStatus_t s = cudnnBackendCreateDescriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &vp);
  if (s != CUDNN_STATUS_SUCCESS) return s;
  const std::int64_t uids[3] = {1, 2, 3};
  void* ptrs[3] = {const_cast<void*>(p1), const_cast<void*>(p2), const_cast<void*>(p3)};
  void* ws_ptr = ws.data();
  s = set_attr(vp, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, 3, uids);
  if (s == CUDNN_STATUS_SUCCESS)
    s = set_attr(vp, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, 3, ptrs);
  if (s == CUDNN_STATUS_SUCCESS)
    s = set_attr(vp, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &ws_ptr);
  if (s == CUDNN_STATUS_SUCCESS) s = cudnnBackendFinalize(vp);
  if (s == CUDNN_STATUS_SUCCESS) s = cudnnBackendExecute(ctx.cudnn(), plan, vp);
  (void)cudnnBackendDestroyDescriptor(vp);
  return s;
}

/// Plans direction `dir` of `pr` on the graph API, once per conv plan and direction, after the
/// legacy algorithm is chosen. Returns kCudnnGraph (and sets `out`) when a graph plan runs it,
/// kCudnn when the legacy algorithm stays. Heuristic mode (`benchmark` false): the first usable
/// config of mode A, then FALLBACK, that finalizes within kConvWorkspaceLimit (`ws_cap`).
/// Benchmark mode: the first kGraphCandidates such plans whose workspace fits `time_ws_cap` are
/// timed (time_on_stream: CUDA events, this call's own tensors `p1..p3` by uid, the output one
/// being the real y / dx, or a zeroed dW scratch for backward filter) against `run_legacy()`, the
/// legacy algorithm into the same output, and the fastest wins.
template <class RunLegacy>
ConvEngine plan_graph_conv(const Cuda& ctx, const GraphConvProblem& pr, ConvDirection dir, bool benchmark,
                           std::size_t ws_cap, std::size_t time_ws_cap, std::unique_ptr<GraphConvPlan>& out,
                           const void* p1, const void* p2, const void* p3, RunLegacy&& run_legacy) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  for (const void* p : {p1, p2, p3})
    if (reinterpret_cast<std::uintptr_t>(p) % 16 != 0) return ConvEngine::kCudnn;  // cannot be timed / run
  auto g = std::make_unique<GraphConvPlan>();
  cudnnHandle_t handle = ctx.cudnn();
  cudnnBackendDescriptor_t op_graph = graph_build(handle, pr, dir, *g);
  if (op_graph == nullptr) return ConvEngine::kCudnn;
  struct Cand {
    cudnnBackendDescriptor_t plan;
    std::int64_t ws, index;
  };
  std::vector<Cand> cands;
  const int want = benchmark ? kGraphCandidates : 1;
  const std::size_t cap = benchmark ? std::min(ws_cap, time_ws_cap) : ws_cap;
  for (const auto mode : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
    if (static_cast<int>(cands.size()) >= want) break;
    auto own = std::make_unique<BackendDescriptors>();
    const auto cfgs = graph_heuristic(op_graph, mode, *own);
    for (cudnnBackendDescriptor_t cfg : cfgs) {
      if (static_cast<int>(cands.size()) >= want) break;
      std::int64_t index = -1;
      if (!graph_engine_allowed(cfg, *own, pr, index)) continue;
      cudnnBackendDescriptor_t plan = own->create(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, "create plan");
      if (plan == nullptr) break;
      std::int64_t ws = 0, n = 0;
      if (!graph_ok(set_attr(plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle),
                    "set plan handle") ||
          !graph_ok(
              set_attr(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cfg),
              "set plan engine config") ||
          !graph_ok(cudnnBackendFinalize(plan), "finalize plan") ||
          !graph_ok(cudnnBackendGetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64,
                                             1, &n, &ws),
                    "get plan workspace"))
        continue;
      if (ws < 0 || static_cast<std::size_t>(ws) > cap) continue;
      cands.push_back({plan, ws, index});
    }
    g->candidates.push_back(std::move(own));
  }
  if (cands.empty()) return ConvEngine::kCudnn;
  std::size_t best = 0;
  if (benchmark) {
    float best_ms = kInf;
    for (std::size_t i = 0; i < cands.size(); ++i) {
      const float ms = time_on_stream(ctx, [&] {
        return graph_ok(graph_execute(ctx, cands[i].plan, cands[i].ws, p1, p2, p3), "execute plan (timing)");
      });
      if (ms < best_ms) best_ms = ms, best = i;
    }
    if (!(best_ms < kInf)) return ConvEngine::kCudnn;  // none ran
    if (time_on_stream(ctx, [&] { return run_legacy(); }) <= best_ms) return ConvEngine::kCudnn;
  }
  g->plan = cands[best].plan;
  g->ws = cands[best].ws;
  g->engine_index = cands[best].index;
  out = std::move(g);
  return ConvEngine::kCudnnGraph;
}

}  // namespace cuda::detail

}  // namespace ampkit

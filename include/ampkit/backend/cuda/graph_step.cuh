/// @brief GraphStep: a training step (any callable that enqueues device work on the context's
/// stream) captured once as a CUDA graph and replayed; GraphPool: the private allocator pool that
/// keeps the blocks the graph was given during capture reserved for its replays.
///
/// Why a graph: at small batches the eager step is launch-bound (DEKR-W32 512x512 fp16 batch 2:
/// about 3,600 launches per step; on the H200 the eager step ran at 35 img/s, the same step
/// replayed as one graph at 53 img/s, bench/dekr_step.cu --graph). A replay costs one launch.
///
/// What a capturable step must do (the AMP step of amp::AmpOptimizer does all of it by design):
/// - no host synchronisation and no read-back inside (cudaStreamSynchronize, to_host,
///   copy_to_device): under global capture mode they fail the capture, which then says where;
/// - every value that changes between replays comes from device memory: kernel arguments and
///   pointers are frozen at capture (the loss scale, skip decision, counters, Adam's bias
///   correction and the lr live in amp::StepState; the batch is copied into the SAME buffers
///   before each replay);
/// - the same shapes at every replay (a new conv shape runs cuDNN's Find, which synchronises);
/// - warm up eagerly first: cuDNN plans and the caching allocator settle, so that the capture is
///   served by cached blocks (a cudaMalloc fails a global-mode capture; relaxed mode permits it).
///
/// Memory. The kernels of a graph keep the addresses they were given during capture and write
/// them at every replay, although the capture already "freed" most of them. The blocks therefore
/// belong to the graph's GraphPool (CachingAllocator's private pools): while capturing, every
/// allocation and every free on the stream goes to the pool, and ordinary allocations between
/// replays (logging, validation, an eager fallback step) never receive them. Graphs that replay
/// one after the other on the same stream may share one pool (the trainer's two graphs of an
/// accumulation window do), exactly as eager steps share the cache in stream order. The pool's
/// blocks return to the shared cache when the last graph holding it is destroyed.
///
/// Capture mode: global first (any CUDA call unsafe during capture, from any thread, fails it,
/// so hidden synchronisations surface), then relaxed as the fallback (permits a cudaMalloc).
/// `relaxed_only`: one attempt, relaxed. For steps with NCCL collectives: the data-parallel
/// watchdog thread queries events during the capture, which global mode forbids, and an
/// abandoned first attempt would leave captured collectives on one rank that another rank,
/// whose first attempt succeeded, never issued (NCCL wants every rank to capture alike). A
/// failed capture reports the first error every mode met: the exception text names the failing
/// call and its source line (AMPKIT_CUDA_CHECK / AMPKIT_CUDNN_CHECK), so the op that broke the
/// capture is named.
#pragma once

#include <cuda_runtime.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <string>
#include <utility>

#include "ampkit/backend/cuda/check.cuh"
#include "ampkit/backend/cuda/context.cuh"
#include "ampkit/backend/cuda/memory.cuh"

namespace ampkit::cuda {

/// A private pool of a context's caching allocator (see the file comment). Shared by the graphs
/// that use it (std::shared_ptr); released to the shared cache when the last one lets go.
class GraphPool {
 public:
  explicit GraphPool(const Cuda& ctx) : alloc_(ctx.allocator_ptr()), id_(alloc_->create_pool()) {}
  GraphPool(const GraphPool&) = delete;
  GraphPool& operator=(const GraphPool&) = delete;
  ~GraphPool() { alloc_->release_pool(id_); }

  DeviceAllocator::PoolId id() const { return id_; }
  DeviceAllocator& allocator() const { return *alloc_; }
  /// Device bytes the graphs of this pool hold (what replays reuse; not available to others).
  std::size_t bytes() const { return alloc_->pool_bytes(id_); }

 private:
  std::shared_ptr<DeviceAllocator> alloc_;
  DeviceAllocator::PoolId id_;
};

/// What the last capture did.
struct CaptureReport {
  bool ok = false;
  std::string mode;           ///< "global" or "relaxed" (the mode that succeeded; the last tried otherwise)
  std::string error;          ///< why each failed mode failed ("global: ...; relaxed: ..."), empty if global worked
  std::size_t n_nodes = 0;    ///< kernels, copies and memsets in the graph
  std::size_t raw_allocs = 0; ///< cudaMalloc calls during the capture (0 after a proper warm-up)
  double ms = 0;              ///< capture + instantiate + upload, host time
};

/// One captured step: capture(fn) records `fn`'s work on ctx.stream() into a graph, replay()
/// launches it. capture() again re-captures (the old graph is destroyed first).
class GraphStep {
 public:
  /// @param pool  the private pool to capture into (shared with the graphs replayed alongside);
  ///              null: a pool of its own.
  explicit GraphStep(Cuda& ctx, std::shared_ptr<GraphPool> pool = nullptr)
      : ctx_(&ctx), pool_(pool ? std::move(pool) : std::make_shared<GraphPool>(ctx)) {}
  GraphStep(const GraphStep&) = delete;
  GraphStep& operator=(const GraphStep&) = delete;
  ~GraphStep() { destroy(); }

  /// Capture `fn` (enqueues one step's device work on ctx.stream(), nothing else). Nothing runs:
  /// call replay() to execute the step. On failure the report says why and captured() is false;
  /// the caller runs `fn` eagerly instead (the capture left no work and no graph behind).
  template <class Fn>
  const CaptureReport& capture(Fn&& fn, bool relaxed_only = false) {
    destroy();
    report_ = {};
#ifdef AMPKIT_DEBUG_SYNC
    report_.error = "AMPKIT_DEBUG_SYNC synchronises after every launch, which no capture permits";
    return report_;
#else
    const cudaStream_t stream = ctx_->stream();
    ctx_->synchronize();  // the stream is idle: a failed capture cannot have touched earlier work
    const std::size_t raw_before = ctx_->memory_stats().n_raw_allocs;
    const auto t0 = std::chrono::steady_clock::now();
    for (const cudaStreamCaptureMode m : {cudaStreamCaptureModeGlobal, cudaStreamCaptureModeRelaxed}) {
      if (relaxed_only && m == cudaStreamCaptureModeGlobal) continue;
      report_.mode = m == cudaStreamCaptureModeGlobal ? "global" : "relaxed";
      std::string error;
      cudaGraph_t graph = nullptr;
      pool_->allocator().begin_pool_capture(pool_->id(), stream);
      try {
        AMPKIT_CUDA_CHECK(cudaStreamBeginCapture(stream, m));
        try {
          fn();
        } catch (const std::exception& e) {
          error = e.what();
        } catch (...) {
          error = "a non-standard exception";
        }
        // End the capture in every case (an invalidated capture returns an error and no graph).
        const cudaError_t ec = cudaStreamEndCapture(stream, &graph);
        if (error.empty() && ec != cudaSuccess)
          error = std::string("cudaStreamEndCapture: ") + cudaGetErrorString(ec) +
                  " (an unchecked call inside the step failed the capture: build with AMPKIT_DEBUG_SYNC off and "
                  "check every launch with AMPKIT_CUDA_CHECK_LAUNCH)";
      } catch (const std::exception& e) {  // BeginCapture itself
        if (error.empty()) error = e.what();
      }
      pool_->allocator().end_pool_capture(stream);
      (void)cudaGetLastError();  // capture errors are not sticky; clear the last-error slot
      if (error.empty()) {
        const cudaError_t ei = cudaGraphInstantiateWithFlags(&exec_, graph, 0);
        if (ei != cudaSuccess) {
          error = std::string("cudaGraphInstantiateWithFlags: ") + cudaGetErrorString(ei);
          exec_ = nullptr;
          (void)cudaGetLastError();
        }
      }
      if (error.empty()) {
        graph_ = graph;
        AMPKIT_CUDA_CHECK(cudaGraphGetNodes(graph_, nullptr, &report_.n_nodes));
        AMPKIT_CUDA_CHECK(cudaGraphUpload(exec_, stream));
        report_.ok = true;
        break;
      }
      if (graph) (void)cudaGraphDestroy(graph);
      report_.error += (report_.error.empty() ? "" : "; ") + report_.mode + " mode: " + error;
      ctx_->reset_branch_streams();  // streams the abandoned capture joined: not reused
      ctx_->synchronize();
    }
    report_.raw_allocs = ctx_->memory_stats().n_raw_allocs - raw_before;
    report_.ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    return report_;
#endif
  }

  /// Launch the captured step on ctx.stream() (stream-ordered after everything queued before).
  void replay() {
    AMPKIT_CHECK(exec_, "GraphStep::replay: nothing captured",
                 report_.error.empty() ? std::string() : " (the capture failed: " + report_.error + ")");
    AMPKIT_CUDA_CHECK(cudaGraphLaunch(exec_, ctx_->stream()));
    ++n_replays_;
  }

  bool captured() const { return exec_ != nullptr; }
  const CaptureReport& report() const { return report_; }
  std::int64_t n_replays() const { return n_replays_; }
  const std::shared_ptr<GraphPool>& pool() const { return pool_; }

  /// Drop the graph (waits for its replays queued so far).
  void reset() {
    destroy();
    report_ = {};
  }

 private:
  void destroy() noexcept {
    if (!exec_ && !graph_) return;
    (void)cudaStreamSynchronize(ctx_->stream());  // no replay may still run on what we destroy
    if (exec_) (void)cudaGraphExecDestroy(exec_);
    if (graph_) (void)cudaGraphDestroy(graph_);
    exec_ = nullptr;
    graph_ = nullptr;
  }

  Cuda* ctx_;
  std::shared_ptr<GraphPool> pool_;
  cudaGraph_t graph_ = nullptr;
  cudaGraphExec_t exec_ = nullptr;
  CaptureReport report_;
  std::int64_t n_replays_ = 0;
};

}  // namespace ampkit::cuda

namespace ampkit {

/// The trainer's hooks (train/graph_mode.hpp finds them by argument-dependent lookup; the host
/// backend has none, so graph mode is off there).
inline std::shared_ptr<cuda::GraphPool> make_graph_pool(Cuda& ctx) { return std::make_shared<cuda::GraphPool>(ctx); }
inline std::unique_ptr<cuda::GraphStep> make_graph_step(Cuda& ctx, std::shared_ptr<cuda::GraphPool> pool) {
  return std::make_unique<cuda::GraphStep>(ctx, std::move(pool));
}

}  // namespace ampkit

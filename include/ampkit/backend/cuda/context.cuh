/// @brief ampkit::Cuda, the CUDA backend context: one device, one compute stream, the cuDNN /
/// cuBLAS / cuBLASLt handles bound to it, and the caching allocator every op draws from.
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <array>
#include <cstring>
#include <memory>
#include <optional>
#include <span>

#include "ampkit/backend/cuda/check.cuh"
#include "ampkit/backend/cuda/device.cuh"
#include "ampkit/backend/cuda/memory.cuh"
#include "ampkit/backend/cuda/sanitizer_marks.cuh"
#include "ampkit/core/env_choice.hpp"
#include "ampkit/core/tensor.hpp"

namespace ampkit {

/// When convolutions also consider execution plans of cuDNN's backend (graph) API
/// (conv_cudnn_graph.cuh). The legacy algorithm is always chosen too.
///   kBenchmark (default) in benchmark mode only: the graph API's top plans are timed against the
///              legacy pick and the fastest runs, so it can only win; heuristic mode stays legacy.
///              Measured on the H200 (bench/results/ops_vs_torch_h200_20261130_d.json): the three
///              convs that lost to PyTorch's forward on the legacy picks (0.78-0.88x) ran
///              1.17-3.46x with the graph-API plans.
///   kAlways    also in heuristic mode (the graph heuristic's first usable plan runs).
///   kNever     no backend-API call at all.
/// The environment variable AMPKIT_CUDNN_GRAPH_API=benchmark|always|never (or 1 / 0 for always /
/// never) overrides it for every context.
enum class CudnnGraphApi { kBenchmark, kAlways, kNever };

/// How convolutions pick their cuDNN algorithms (the meaning of torch.backends.cudnn.benchmark and
/// .deterministic; the config keys runtime.cudnn_benchmark and randomness.deterministic).
struct CudnnOptions {
  /// true: time every candidate once per shape (cudnnFind*) and keep the fastest; false: take
  /// cuDNN's heuristic ranking (cudnnGet*_v7) without running anything.
  bool benchmark = true;
  /// Only algorithms cuDNN reports as CUDNN_DETERMINISTIC (no atomics in the reduction order).
  bool deterministic = false;
  /// Where cuDNN's backend (graph) API plans are candidates too (CudnnGraphApi above).
  CudnnGraphApi graph_api = CudnnGraphApi::kBenchmark;
};

namespace cuda {

/// Benchmark mode as the environment sets it for every context (AMPKIT_CUDNN_BENCHMARK=1 | 0;
/// read once), empty when unset. Set, it wins over CudnnOptions::benchmark from every source (the
/// default, the config's runtime.cudnn_benchmark, set_cudnn_options), as AMPKIT_CUDNN_GRAPH_API
/// does for graph_api. Meant for tools: under compute-sanitizer's racecheck, benchmark mode's
/// timing of every cuDNN / cuBLASLt candidate makes the run 5-10x longer while adding no ampkit
/// kernel (tools/sanitize_gpu.sh, SANITIZE_RACECHECK_ENV).
inline std::optional<bool> cudnn_benchmark_env() {
  static const std::optional<bool> on = env_choice<std::optional<bool>>(
      "AMPKIT_CUDNN_BENCHMARK", {{"1", true}, {"0", false}}, std::nullopt,
      "CudnnOptions::benchmark: true by default, runtime.cudnn_benchmark in a config");
  return on;
}

/// `o` with the environment's overrides applied (cudnn_benchmark_env).
inline CudnnOptions with_cudnn_env(CudnnOptions o) {
  o.benchmark = cudnn_benchmark_env().value_or(o.benchmark);
  return o;
}

/// SyncBatchNorm's cross-rank exchange (installed on a context with Cuda::set_batch_norm_sync;
/// the NCCL implementation is dist::NcclBatchNormSync in backend/cuda/dist/batch_norm_sync.cuh).
/// While one is installed, every training-mode BatchNorm forward and backward on the context
/// normalises with the statistics of the global batch: the batch of all ranks together. Both
/// calls are stream-ordered collectives (no host synchronisation), so they may be captured into
/// a CUDA graph with the rest of the step; every rank must make them in the same order, which the
/// identical model on every rank guarantees.
class BatchNormSync {
 public:
  virtual ~BatchNormSync() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  /// In place: rank r's `count` floats at data + r * count are gathered into every rank's
  /// data[0, world_size * count).
  virtual void all_gather(float* data, std::size_t count, cudaStream_t stream) = 0;
  /// In place: data[0, count) := the sum over ranks.
  virtual void all_reduce_sum(float* data, std::size_t count, cudaStream_t stream) = 0;
};

/// Pinned staging for Cuda::upload: a ring of page-locked slots, each with the event of its last
/// copy. A slot is refilled only once that event has fired, so the host waits (if ever) for a copy
/// kSlots uploads back, never for the compute work queued behind it.
class UploadStaging {
 public:
  static constexpr std::size_t kSlots = 16;  // the trainer uploads 6 tensors a batch: ~2.5 batches of slack

  UploadStaging() = default;
  UploadStaging(const UploadStaging&) = delete;
  UploadStaging& operator=(const UploadStaging&) = delete;
  ~UploadStaging() {
    for (auto& s : slots_) {
      if (s.done) {
        (void)cudaEventSynchronize(s.done);
        (void)cudaEventDestroy(s.done);
      }
      if (s.host) (void)cudaFreeHost(s.host);
    }
  }

  void copy(void* dst, const void* src, std::size_t bytes, cudaStream_t stream) {
    Slot& s = slots_[next_++ % kSlots];
    if (s.done)
      AMPKIT_CUDA_CHECK(cudaEventSynchronize(s.done));  // the slot's previous copy has landed
    else
      AMPKIT_CUDA_CHECK(cudaEventCreateWithFlags(&s.done, cudaEventDisableTiming));
    if (s.capacity < bytes) {
      if (s.host) AMPKIT_CUDA_CHECK(cudaFreeHost(s.host));
      s.host = nullptr;
      s.capacity = 0;
      AMPKIT_CUDA_CHECK(cudaMallocHost(&s.host, bytes));
      s.capacity = bytes;
    }
    std::memcpy(s.host, src, bytes);
    AMPKIT_CUDA_CHECK(cudaMemcpyAsync(dst, s.host, bytes, cudaMemcpyHostToDevice, stream));
    AMPKIT_CUDA_CHECK(cudaEventRecord(s.done, stream));
  }

 private:
  struct Slot {
    void* host = nullptr;
    std::size_t capacity = 0;
    cudaEvent_t done = nullptr;
  };
  std::array<Slot, kSlots> slots_{};
  std::size_t next_ = 0;
};

}  // namespace cuda

namespace cuda {
/// How contexts run independent branches (Cuda::fork_branches), from the environment variable
/// AMPKIT_BRANCH_STREAMS (read once) for every new context: 1 (default) on side streams, 0 in
/// order on the compute stream, `serial`: everything a fork does (events, held frees, held
/// notifications) with the ops still on the compute stream, which separates a fault of the
/// bookkeeping from one of the overlap. On by default since the H200 showed, with every fork
/// site on, eager steps bit-identical to the in-order ones (tests/gpu/models) and CUDA graph
/// replays equal to eager runs (tests/gpu/train, bench/results/gpu_h200_20261201_1059.md); the
/// earlier graph drift was cuDNN left bound to a side stream after a failed capture, which
/// reset_branch_streams now rebinds. NCCL data parallelism turns them off unless the variable is
/// set (NcclDataParallel's constructor): that pairing has not run on two GPUs yet.
enum class BranchMode { kOff, kOn, kSerial };
inline BranchMode branch_streams_env() {
  static const BranchMode m = env_choice<BranchMode>(
      "AMPKIT_BRANCH_STREAMS", {{"1", BranchMode::kOn}, {"0", BranchMode::kOff}, {"serial", BranchMode::kSerial}},
      BranchMode::kOn, "1");
  return m;
}
/// Whether AMPKIT_BRANCH_STREAMS is set at all (an explicit choice that defaults must not override).
inline bool branch_streams_env_set() {
  const char* v = std::getenv("AMPKIT_BRANCH_STREAMS");
  return v && *v;
}
}  // namespace cuda

/// Backend tag and context for the CUDA backend. Ops are free functions overloaded on it,
/// with the same signatures as on ampkit::Host. Not copyable (it owns handles and a stream).
///
/// Branch streams. A model whose layers fall into independent branches (HRNet's parallel
/// resolutions) may run them concurrently: fork_branches(n) makes n side streams wait for the
/// compute stream, enter_branch(b) sends the ops that follow to side stream b (the library
/// handles are rebound to it), join_branches() makes the compute stream wait for every side
/// stream and sends ops to it again. Small-batch steps need this: at DEKR-W32 batch 2 each kernel
/// fills a fraction of an H200, one after another (bench/NOTES.md). Inside a fork every
/// allocation is still made on the compute stream, and returned blocks are held back until the
/// join (CachingAllocator::begin_deferred_frees): a block one branch frees could otherwise go to
/// another branch that runs at the same time as the freeing branch's last kernels. Only the
/// branch that allocated and freed a block may take it again before the join (set_lane): its own
/// stream orders that reuse. This assumes the forking thread is the only one allocating from the
/// context while a fork is open, which holds for ampkit's trainer. A CUDA graph
/// captures the fork and join as edges, so a replayed step runs the branches concurrently too.
/// Forking is refused (fork_branches returns false, everything stays on the compute stream)
/// when set_branch_streams(false) / AMPKIT_BRANCH_STREAMS=0 say so (on by default: see
/// branch_streams_env), when a SyncBatchNorm exchange is installed (its collectives must run in
/// one order on every rank) and inside another fork.
class Cuda {
 public:
  /// Side streams one fork may use (HRNet has at most four branches).
  static constexpr int kMaxBranches = 4;

  /// Bind to `device`, create a non-blocking stream and the library handles on it.
  explicit Cuda(int device = 0) : info_(cuda::query_device(device)) {
    AMPKIT_CUDA_CHECK(cudaSetDevice(device));
    // Non-blocking: the legacy default stream would serialise against every other stream.
    AMPKIT_CUDA_CHECK(cudaStreamCreateWithFlags(&main_stream_, cudaStreamNonBlocking));
    stream_ = main_stream_;
    AMPKIT_CUDNN_CHECK(cudnnCreate(&cudnn_));
    AMPKIT_CUDNN_CHECK(cudnnSetStream(cudnn_, stream_));
    AMPKIT_CUBLAS_CHECK(cublasCreate(&cublas_));
    AMPKIT_CUBLAS_CHECK(cublasSetStream(cublas_, stream_));
    AMPKIT_CUBLAS_CHECK(cublasLtCreate(&cublaslt_));
    alloc_ = std::make_shared<cuda::DeviceAllocator>();
    cudnn_options_ = cuda::with_cudnn_env(cudnn_options_);
    branch_mode_ = cuda::branch_streams_env();
  }
  Cuda(const Cuda&) = delete;
  Cuda& operator=(const Cuda&) = delete;
  ~Cuda() {
    if (forked_) join_branches();
    if (main_stream_) (void)cudaStreamSynchronize(main_stream_);
    if (cublaslt_) (void)cublasLtDestroy(cublaslt_);
    if (cublas_) (void)cublasDestroy(cublas_);
    if (cudnn_) (void)cudnnDestroy(cudnn_);
    destroy_side_streams();
    if (main_stream_) (void)cudaStreamDestroy(main_stream_);
  }

  static constexpr const char* name() { return "cuda"; }
  const DeviceInfo& device() const { return info_; }
  /// The stream ops launch on: the compute stream, or inside a fork the current branch's stream.
  cudaStream_t stream() const { return stream_; }
  /// The compute stream (the stream of every allocation; the one a fork starts from and joins).
  cudaStream_t compute_stream() const { return main_stream_; }

  // ---- branch streams (see the class comment) ----------------------------------------------------
  /// Allow or refuse forks from now on (default: AMPKIT_BRANCH_STREAMS, else on).
  void set_branch_streams(bool on) { branch_mode_ = on ? cuda::BranchMode::kOn : cuda::BranchMode::kOff; }
  void set_branch_mode(cuda::BranchMode m) { branch_mode_ = m; }
  bool branch_streams() const { return branch_mode_ != cuda::BranchMode::kOff; }
  /// Fork `n` (2..kMaxBranches) branches off the compute stream; false (nothing happens) when
  /// forking is refused (class comment) or n < 2. Ops stay on the compute stream until
  /// enter_branch.
  bool fork_branches(int n) {
    if (n < 2 || forked_ || branch_mode_ == cuda::BranchMode::kOff || bn_sync_) return false;
    if (rebind_pending_) reset_branch_streams();  // a failed join left the handles elsewhere
    AMPKIT_CHECK(n <= kMaxBranches, "Cuda::fork_branches: ", n, " branches, at most ", kMaxBranches);
    // Created on first use, normally in an eager iteration before any capture (a model's modules
    // fork from their second call on); reset_branch_streams recreates them outside a capture.
    if (!fork_event_) create_side_streams();
    AMPKIT_CUDA_CHECK(cudaEventRecord(fork_event_, main_stream_));
    for (int b = 0; b < n; ++b) AMPKIT_CUDA_CHECK(cudaStreamWaitEvent(side_[b].stream, fork_event_, 0));
    alloc_->begin_deferred_frees();
    forked_ = n;
    ++n_forks_;
    return true;
  }
  /// Inside a fork: the ops that follow run on branch b's stream (0 <= b < n).
  void enter_branch(int b) {
    AMPKIT_CHECK(forked_ > 0 && b >= 0 && b < forked_, "Cuda::enter_branch(", b, ") outside a fork of ",
                 forked_, " branches");
    if (branch_mode_ == cuda::BranchMode::kOn) bind_stream(side_[b].stream);
    alloc_->set_lane(b);  // the branch reuses what it frees itself (CachingAllocator::set_lane)
  }
  /// End the fork: the compute stream waits for every branch, ops run on it again, blocks freed
  /// inside the fork return to the cache. Never throws (called from destructors on unwinding);
  /// a failing CUDA call here is reported by the next checked one.
  void join_branches() noexcept {
    if (!forked_) return;
    for (int b = 0; b < forked_; ++b) {
      (void)cudaEventRecord(side_[b].done, side_[b].stream);
      (void)cudaStreamWaitEvent(main_stream_, side_[b].done, 0);
    }
    forked_ = 0;
    stream_ = main_stream_;
    // Inside an invalidated capture (an exception unwinding a fork) these can fail and leave the
    // handles on the side stream: cuDNN then launched the next step's convs on a stream outside
    // the retried capture (H200, 2026-12-01: the relaxed-mode graph had fewer nodes and replayed
    // stale conv outputs). reset_branch_streams() rebinds them, checked, after the capture ends.
    rebind_pending_ = cudnnSetStream(cudnn_, stream_) != CUDNN_STATUS_SUCCESS;
    rebind_pending_ = cublasSetStream(cublas_, stream_) != CUBLAS_STATUS_SUCCESS || rebind_pending_;
    alloc_->end_deferred_frees();
  }
  /// The library handles back on the compute stream and fresh side streams and events for the
  /// next fork (none open). For after a failed CUDA graph capture (GraphStep::capture): the join
  /// that unwound the abandoned capture may have failed to rebind the handles (join_branches), and
  /// side streams joined to that capture sequence could not be joined back (what state CUDA leaves
  /// them in is not specified). On the H200 a retried capture without this came out with fewer
  /// nodes than the same step captured cleanly and its replays went wrong; with the side streams
  /// replaced but the handles not rebound, cuDNN reported the destroyed stream
  /// (bench/results/gpu_h200_20261201_0543.md).
  void reset_branch_streams() {
    if (forked_) join_branches();
    AMPKIT_CUDNN_CHECK(cudnnSetStream(cudnn_, main_stream_));
    AMPKIT_CUBLAS_CHECK(cublasSetStream(cublas_, main_stream_));
    rebind_pending_ = false;
    const bool had = fork_event_ != nullptr;
    destroy_side_streams();
    (void)cudaGetLastError();
    if (had) create_side_streams();  // here, outside any capture, rather than in the next fork
  }
  /// Branches of the current fork (0 outside one).
  int forked_branches() const { return forked_; }
  /// Forks made on this context so far (tests check that a path forked, or did not).
  std::int64_t branch_forks() const { return n_forks_; }
  cudnnHandle_t cudnn() const { return cudnn_; }
  cublasHandle_t cublas() const { return cublas_; }
  cublasLtHandle_t cublaslt() const { return cublaslt_; }
  cuda::DeviceAllocator& allocator() const { return *alloc_; }
  const std::shared_ptr<cuda::DeviceAllocator>& allocator_ptr() const { return alloc_; }
  MemoryStats memory_stats() const { return alloc_->stats(); }
  /// Algorithm choice for the convolutions run on this context from now on (shapes already planned
  /// under other options keep their plans: the options are part of the plan cache's key).
  const CudnnOptions& cudnn_options() const { return cudnn_options_; }
  /// (AMPKIT_CUDNN_BENCHMARK, when set, still decides `benchmark`: cuda::cudnn_benchmark_env.)
  void set_cudnn_options(CudnnOptions o) { cudnn_options_ = cuda::with_cudnn_env(o); }
  /// SyncBatchNorm: null (the default) normalises each BatchNorm with this process's batch;
  /// installed, with the global batch of all ranks (cuda::BatchNormSync).
  void set_batch_norm_sync(std::shared_ptr<cuda::BatchNormSync> s) { bn_sync_ = std::move(s); }
  cuda::BatchNormSync* batch_norm_sync() const { return bn_sync_.get(); }

  template <class T>
  cuda::DeviceBuffer<T> alloc(std::size_t n) const {
    return cuda::DeviceBuffer<T>(alloc_, n, main_stream_);  // inside a fork too (class comment)
  }
  template <class T>
  cuda::DeviceTensor<T> tensor(Shape s) const {
    return cuda::DeviceTensor<T>(alloc<T>(static_cast<std::size_t>(s.numel())), s);
  }
  /// Scratch for one op (cuDNN workspace, im2col tiles): returned to the cache when it goes out
  /// of scope; stream order makes the reuse safe without a sync.
  cuda::DeviceBuffer<std::byte> workspace(std::size_t bytes) const {
    auto ws = alloc<std::byte>(bytes);
    if (bytes) cuda::trace_ranges("workspace", {{"ws", ws.data(), bytes}});  // AMPKIT_SANITIZER_TRACE
    return ws;
  }

  template <class T>
  cuda::DeviceTensor<T> to_device(const HostTensor<T>& h) const {
    auto d = tensor<T>(h.shape());
    if (h.numel())
      AMPKIT_CUDA_CHECK(cudaMemcpyAsync(d.data(), h.data(), static_cast<std::size_t>(h.numel()) * sizeof(T),
                                        cudaMemcpyHostToDevice, stream_));
    synchronize();  // h may be pageable and may die right after this call
    return d;
  }
  template <class T>
  void copy_to_device(TensorView<T> dst, std::span<const T> src) const {
    AMPKIT_CHECK(static_cast<std::size_t>(dst.numel()) == src.size(), "copy_to_device: destination holds ",
                 dst.numel(), " elements, source ", src.size());
    AMPKIT_CUDA_CHECK(cudaMemcpyAsync(dst.data, src.data(), src.size_bytes(), cudaMemcpyHostToDevice, stream_));
    synchronize();
  }
  /// Host -> device copy for the hot path: returns without waiting for the device. `src` is copied
  /// into pinned staging first (so the caller may reuse it at once) and the DMA is queued on the
  /// compute stream. copy_to_device, by contrast, waits for the whole stream, which in a training
  /// loop serialises the host's launch work with the device's execution every iteration.
  template <class T>
  void upload(TensorView<T> dst, std::span<const std::remove_const_t<T>> src) const {
    AMPKIT_CHECK(static_cast<std::size_t>(dst.numel()) == src.size(), "upload: destination holds ", dst.numel(),
                 " elements, source ", src.size());
    if (src.empty()) return;
    staging_->copy(dst.data, src.data(), src.size_bytes(), stream_);
  }
  /// Copy a device view back (synchronises: for tests and logging, not the hot path).
  template <class T>
  HostTensor<std::remove_const_t<T>> to_host(TensorView<T> d) const {
    HostTensor<std::remove_const_t<T>> h(d.shape);
    if (d.numel())
      AMPKIT_CUDA_CHECK(cudaMemcpyAsync(h.data(), d.data, d.bytes(), cudaMemcpyDeviceToHost, stream_));
    synchronize();
    return h;
  }
  void synchronize() const { AMPKIT_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

 private:
  void create_side_streams() {
    AMPKIT_CUDA_CHECK(cudaEventCreateWithFlags(&fork_event_, cudaEventDisableTiming));
    for (auto& b : side_) {
      AMPKIT_CUDA_CHECK(cudaStreamCreateWithFlags(&b.stream, cudaStreamNonBlocking));
      AMPKIT_CUDA_CHECK(cudaEventCreateWithFlags(&b.done, cudaEventDisableTiming));
    }
  }
  void destroy_side_streams() noexcept {
    for (auto& b : side_) {
      if (b.stream) (void)cudaStreamDestroy(b.stream);
      if (b.done) (void)cudaEventDestroy(b.done);
      b = {};
    }
    if (fork_event_) (void)cudaEventDestroy(fork_event_);
    fork_event_ = nullptr;
  }
  void bind_stream(cudaStream_t s) {
    stream_ = s;
    AMPKIT_CUDNN_CHECK(cudnnSetStream(cudnn_, s));
    AMPKIT_CUBLAS_CHECK(cublasSetStream(cublas_, s));
  }

  struct SideStream {
    cudaStream_t stream = nullptr;
    cudaEvent_t done = nullptr;  ///< recorded at the join
  };

  DeviceInfo info_;
  cudaStream_t main_stream_ = nullptr;  ///< the compute stream
  cudaStream_t stream_ = nullptr;       ///< where ops launch now (main_stream_ outside a fork)
  std::array<SideStream, kMaxBranches> side_{};
  cudaEvent_t fork_event_ = nullptr;
  int forked_ = 0;
  bool rebind_pending_ = false;  ///< join_branches could not rebind the handles (see there)
  std::int64_t n_forks_ = 0;
  cuda::BranchMode branch_mode_ = cuda::BranchMode::kOff;
  cudnnHandle_t cudnn_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  cublasLtHandle_t cublaslt_ = nullptr;
  std::shared_ptr<cuda::DeviceAllocator> alloc_;
  CudnnOptions cudnn_options_;
  std::shared_ptr<cuda::BatchNormSync> bn_sync_;
  std::unique_ptr<cuda::UploadStaging> staging_ = std::make_unique<cuda::UploadStaging>();
};

}  // namespace ampkit

/// @brief ampkit::dist::ProcessGroup: one NCCL communicator per process (one GPU each), set up
/// from the launch environment, with collectives that are watched: a collective that fails or
/// outlives the timeout aborts the communicator and throws a message naming the rank and the
/// operation. Never a silent hang.
///
/// Bootstrap: rank 0 creates the ncclUniqueId and serves it over ampkit's TCP rendezvous at
/// MASTER_ADDR:rendezvous_port (dist/rendezvous.hpp); every rank then joins the communicator on
/// GPU LOCAL_RANK. The communicator is NON-BLOCKING (ncclConfig_t::blocking = 0): every NCCL call
/// returns at once, possibly with ncclInProgress, and we poll its state against a deadline. That
/// is what lets a rank that never joins (or a peer that dies mid-run) end in an error instead
/// of a host thread stuck inside NCCL where no watchdog can reach it.
///
/// Threads: the owning thread issues collectives; the watchdog thread polls them. Every NCCL
/// call on the communicator holds `comm_mu_` briefly (never across a wait), so an abort from the
/// watchdog can never race a call from the owner.
#pragma once

#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <vector>

#include "ampkit/backend/cuda/check.cuh"
#include "ampkit/backend/cuda/device.cuh"
#include "ampkit/core/error.hpp"
#include "ampkit/dist/launch_env.hpp"
#include "ampkit/dist/rendezvous.hpp"
#include "ampkit/dist/watchdog.hpp"
#include "ampkit/precision.hpp"

namespace ampkit::dist {

enum class ReduceOp { kSum, kAvg, kMax, kMin };

inline ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return ncclSum;
    case ReduceOp::kAvg: return ncclAvg;
    case ReduceOp::kMax: return ncclMax;
    case ReduceOp::kMin: return ncclMin;
  }
  return ncclSum;
}

inline constexpr std::string_view op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return "sum";
    case ReduceOp::kAvg: return "avg";
    case ReduceOp::kMax: return "max";
    case ReduceOp::kMin: return "min";
  }
  return "?";
}

struct ProcessGroupOptions {
  /// The most a collective (or the communicator set-up) may take. Unset: the launch
  /// environment's (AMPKIT_DIST_TIMEOUT), else 300 s.
  std::optional<std::chrono::milliseconds> timeout;
  /// Told the failure message once the communicator is aborted (default: print to stderr). An
  /// application that wants the process gone at once (rather than at the next call that
  /// throws) prints and exits here.
  std::function<void(const std::string&)> on_abort;
  /// How often the watchdog polls in-flight collectives.
  std::chrono::milliseconds poll = std::chrono::milliseconds(5);
};

/// One contiguous device buffer of a grouped collective.
struct DeviceChunk {
  void* data = nullptr;
  std::size_t count = 0;
};

namespace detail {

/// Recycles timing-free events: one per watched collective would otherwise cost two driver calls.
class EventPool {
 public:
  EventPool() = default;
  EventPool(const EventPool&) = delete;
  EventPool& operator=(const EventPool&) = delete;
  ~EventPool() {
    for (cudaEvent_t e : free_) (void)cudaEventDestroy(e);
  }
  /// An event that goes back to the pool when the last copy of the pointer dies.
  std::shared_ptr<CUevent_st> acquire() {
    cudaEvent_t e = nullptr;
    {
      std::lock_guard lk(mu_);
      if (!free_.empty()) {
        e = free_.back();
        free_.pop_back();
      }
    }
    if (!e) AMPKIT_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    return std::shared_ptr<CUevent_st>(e, [this](cudaEvent_t ev) {
      std::lock_guard lk(mu_);
      free_.push_back(ev);
    });
  }

 private:
  std::mutex mu_;
  std::vector<cudaEvent_t> free_;
};

/// true once the event has completed; throws on a device error (a fault in an earlier kernel).
inline bool event_done(cudaEvent_t e) {
  const cudaError_t r = cudaEventQuery(e);
  if (r == cudaErrorNotReady) return false;
  AMPKIT_CUDA_CHECK(r);
  return true;
}

/// Whether `stream` is being captured into a CUDA graph (cudaStreamIsCapturing is permitted in
/// every capture mode).
inline bool stream_capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
  AMPKIT_CUDA_CHECK(cudaStreamIsCapturing(stream, &st));
  return st != cudaStreamCaptureStatusNone;
}

inline std::string nccl_error_text(ncclResult_t r, ncclComm_t comm) {
  std::string s = ncclGetErrorString(r);
  const char* last = comm ? ncclGetLastError(comm) : nullptr;
  if (last && *last) s += std::string(": ") + last;
  return s;
}

}  // namespace detail

class ProcessGroup {
 public:
  /// Join the job described by `env`: check the GPU, rendezvous for the NCCL id, create the
  /// communicator on GPU env.local_rank. The timeout defaults to env.timeout.
  static std::unique_ptr<ProcessGroup> create(const LaunchEnv& env, ProcessGroupOptions opts = {}) {
    const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
    check_local_device(env, cuda::device_count(),
                       visible ? std::optional<std::string>(visible) : std::optional<std::string>());
    if (!opts.timeout) opts.timeout = std::chrono::duration_cast<std::chrono::milliseconds>(env.timeout);
    AMPKIT_CUDA_CHECK(cudaSetDevice(env.local_rank));
    ncclUniqueId id{};
    if (env.rank == 0) AMPKIT_NCCL_CHECK(ncclGetUniqueId(&id));
    const auto blob = rendezvous_exchange(
        env, std::span<const std::byte>(reinterpret_cast<const std::byte*>(&id), env.rank == 0 ? sizeof(id) : 0),
        sizeof(id));
    std::memcpy(&id, blob.data(), sizeof(id));
    return std::make_unique<ProcessGroup>(id, env.rank, env.world_size, env.local_rank, std::move(opts));
  }

  /// Join with an id obtained some other way (threads of one process share it directly).
  ProcessGroup(const ncclUniqueId& id, int rank, int world_size, int device, ProcessGroupOptions opts = {})
      : rank_(rank), world_size_(world_size), device_(device),
        timeout_(opts.timeout.value_or(std::chrono::milliseconds(kDefaultTimeout))), opts_(std::move(opts)) {
    AMPKIT_CHECK(world_size >= 1 && rank >= 0 && rank < world_size, "ProcessGroup: rank ", rank,
                 " outside world size ", world_size);
    AMPKIT_CUDA_CHECK(cudaSetDevice(device));
    AMPKIT_CUDA_CHECK(cudaStreamCreateWithFlags(&side_stream_, cudaStreamNonBlocking));
    AMPKIT_CUDA_CHECK(cudaMalloc(&scratch_, scratch_bytes_));
    AMPKIT_CUDA_CHECK(cudaMallocHost(&pinned_, scratch_bytes_));

    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;  // see the file comment: every wait is ours, with a deadline
    const ncclResult_t r = ncclCommInitRankConfig(&comm_, world_size, id, rank, &config);
    if (r != ncclSuccess && r != ncclInProgress) {
      const std::string text = detail::nccl_error_text(r, comm_);
      release_comm(/*abort=*/true);
      release_cuda();
      AMPKIT_FAIL("rank ", rank, ": NCCL communicator set-up failed: ", text,
                  " (set NCCL_DEBUG=WARN for NCCL's own explanation)");
    }
    const auto deadline = Clock::now() + timeout_;
    for (;;) {
      ncclResult_t st = ncclSuccess;
      (void)ncclCommGetAsyncError(comm_, &st);
      if (st == ncclSuccess) break;
      std::string failure;
      if (st != ncclInProgress)
        failure = ::ampkit::detail::concat("rank ", rank, ": NCCL communicator set-up failed: ",
                                           detail::nccl_error_text(st, comm_));
      else if (Clock::now() > deadline)
        failure = ::ampkit::detail::concat(
            "rank ", rank, ": NCCL communicator set-up (world size ", world_size, ") did not complete in ",
            format_seconds(timeout_), ": not every rank joined. A peer rank has probably died before "
            "joining or was never started; look at the other ranks' output for the first error (NCCL_DEBUG=WARN "
            "adds NCCL's view), and raise the limit with AMPKIT_DIST_TIMEOUT=seconds if start-up is slow");
      if (!failure.empty()) {
        release_comm(/*abort=*/true);
        release_cuda();
        throw Error(failure);
      }
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }

    Watchdog::Hooks hooks;
    hooks.async_error = [this]() -> std::optional<std::string> {
      std::lock_guard lk(comm_mu_);
      if (!comm_) return std::nullopt;
      ncclResult_t st = ncclSuccess;
      (void)ncclCommGetAsyncError(comm_, &st);
      if (st == ncclSuccess || st == ncclInProgress) return std::nullopt;
      return detail::nccl_error_text(st, comm_);
    };
    hooks.abort = [this] {
      (void)cudaSetDevice(device_);
      release_comm(/*abort=*/true);
    };
    hooks.on_abort = opts_.on_abort;
    watchdog_ = std::make_unique<Watchdog>(rank, timeout_, std::move(hooks), opts_.poll);
  }

  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  /// Finalizes the communicator (waiting, within the timeout, for collectives in flight), or
  /// aborts it when unwinding from an exception or after a failure: peers then fail fast in
  /// their own watchdogs instead of waiting for this rank.
  ~ProcessGroup() {
    (void)cudaSetDevice(device_);
    watchdog_.reset();  // joins the thread: no abort can run concurrently with what follows
    release_comm(/*abort=*/std::uncaught_exceptions() > 0);
    release_cuda();
  }

  int rank() const { return rank_; }
  int world_size() const { return world_size_; }
  int device() const { return device_; }
  std::chrono::milliseconds timeout() const { return timeout_; }

  /// The raw communicator (null after an abort). Calls made on it are not watched.
  ncclComm_t comm() const {
    std::lock_guard lk(comm_mu_);
    return comm_;
  }

  /// Throw the watchdog's message if a collective failed or timed out.
  void check() const { watchdog_->check(); }
  bool aborted() const { return watchdog_->fired(); }
  /// Collectives issued and not yet seen complete by the watchdog.
  std::size_t n_in_flight() const { return watchdog_->n_pending(); }
  /// Abort now (this rank is going down): peers see their collectives fail instead of waiting.
  void abort(std::string reason) { watchdog_->fire(::ampkit::detail::concat("rank ", rank_, ": ", reason)); }

  // ---- collectives on a caller's stream (asynchronous: no host synchronisation) -----------------

  /// In-place all-reduce of `count` elements at `data` on `stream`.
  void all_reduce(void* data, std::size_t count, ncclDataType_t type, ReduceOp op, cudaStream_t stream,
                  std::string_view what) {
    const DeviceChunk c{data, count};
    all_reduce_grouped(std::span<const DeviceChunk>(&c, 1), type, op, stream, what);
  }

  /// Several in-place all-reduces as one NCCL group: one launch, one watched operation.
  void all_reduce_grouped(std::span<const DeviceChunk> chunks, ncclDataType_t type, ReduceOp op,
                          cudaStream_t stream, std::string_view what) {
    enqueue(what, stream, [&](ncclComm_t comm) {
      ncclResult_t r = ncclGroupStart();
      for (const DeviceChunk& c : chunks) {
        if (r != ncclSuccess) break;
        r = ncclAllReduce(c.data, c.data, c.count, type, nccl_op(op), comm, stream);
      }
      const ncclResult_t end = ncclGroupEnd();
      return r != ncclSuccess ? r : end;
    });
  }

  template <StorageScalar T>
  void all_reduce(std::span<T> data, ReduceOp op, cudaStream_t stream, std::string_view what = {}) {
    const std::string w = what.empty() ? ::ampkit::detail::concat("all-reduce (", op_name(op), ") of ",
                                                                  format_count(data.size()), " values")
                                       : std::string(what);
    all_reduce(data.data(), data.size(), nccl_type_v<T>, op, stream, w);
  }

  /// In-place all-gather: rank r's `count` elements at data + r * count end up, from every rank,
  /// in data[0, world_size * count) on every rank.
  template <StorageScalar T>
  void all_gather_inplace(T* data, std::size_t count, cudaStream_t stream, std::string_view what) {
    enqueue(what, stream, [&](ncclComm_t comm) {
      return ncclAllGather(data + count * static_cast<std::size_t>(rank_), data, count, nccl_type_v<T>, comm, stream);
    });
  }

  /// In-place broadcast from `root` (initial weights, so every replica starts identical).
  void broadcast(void* data, std::size_t count, ncclDataType_t type, int root, cudaStream_t stream,
                 std::string_view what) {
    AMPKIT_CHECK(root >= 0 && root < world_size_, "broadcast: root ", root, " outside world size ", world_size_);
    enqueue(what, stream,
            [&](ncclComm_t comm) { return ncclBroadcast(data, data, count, type, root, comm, stream); });
  }

  template <StorageScalar T>
  void broadcast(std::span<T> data, int root, cudaStream_t stream, std::string_view what = {}) {
    const std::string w = what.empty() ? ::ampkit::detail::concat("broadcast of ", format_count(data.size()),
                                                                  " values from rank ", root)
                                       : std::string(what);
    broadcast(data.data(), data.size(), nccl_type_v<T>, root, stream, w);
  }

  /// Hand the work issued to `stream` so far to the watchdog as `what`, without waiting: it must
  /// complete within the timeout or the communicator is aborted. Every collective is tracked
  /// this way when issued; a CUDA graph that contains collectives is tracked after each launch
  /// (NcclDataParallel::graph_replayed), since its captured collectives were not.
  void track(cudaStream_t stream, std::string_view what) {
    auto ev = events_.acquire();
    AMPKIT_CUDA_CHECK(cudaEventRecord(ev.get(), stream));
    watch(what, std::move(ev));
  }

  // ---- host-side waits and small host values (these synchronise) --------------------------------

  /// Wait on the host for everything issued to `stream` so far. Unlike cudaStreamSynchronize,
  /// throws the watchdog's message if a collective on it fails or times out.
  void synchronize(cudaStream_t stream, std::string_view what = "stream synchronisation") {
    check();
    auto ev = events_.acquire();
    AMPKIT_CUDA_CHECK(cudaEventRecord(ev.get(), stream));
    watch(what, ev);
    // Spin briefly (a collective usually finishes in microseconds), then back off.
    for (int i = 0; !detail::event_done(ev.get()); ++i) {
      check();
      if (i < 100)
        std::this_thread::yield();
      else
        std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    check();
  }

  /// Every rank's `value`, indexed by rank. T must be trivially copyable (a seed, a count, a flag).
  template <class T>
  std::vector<T> all_gather(const T& value, std::string_view what = "all-gather of host values") {
    static_assert(std::is_trivially_copyable_v<T>, "all_gather: T must be trivially copyable");
    const std::size_t bytes = sizeof(T) * static_cast<std::size_t>(world_size_);
    reserve_scratch(bytes);
    // Through pinned memory: a copy to pageable memory would block this thread inside CUDA,
    // out of reach of the timeout checks in synchronize().
    auto* d = static_cast<unsigned char*>(scratch_);
    auto* h = static_cast<unsigned char*>(pinned_);
    std::memcpy(h, &value, sizeof(T));
    AMPKIT_CUDA_CHECK(cudaMemcpyAsync(d + sizeof(T) * static_cast<std::size_t>(rank_), h, sizeof(T),
                                      cudaMemcpyHostToDevice, side_stream_));
    enqueue(what, side_stream_, [&](ncclComm_t comm) {
      return ncclAllGather(d + sizeof(T) * static_cast<std::size_t>(rank_), d, sizeof(T), ncclUint8, comm,
                           side_stream_);
    });
    AMPKIT_CUDA_CHECK(cudaMemcpyAsync(h, d, bytes, cudaMemcpyDeviceToHost, side_stream_));
    synchronize(side_stream_, what);
    std::vector<T> out(static_cast<std::size_t>(world_size_));
    std::memcpy(out.data(), h, bytes);
    return out;
  }

  /// Every rank reaches this point before any leaves it.
  void barrier() {
    reserve_scratch(sizeof(float));
    AMPKIT_CUDA_CHECK(cudaMemsetAsync(scratch_, 0, sizeof(float), side_stream_));
    all_reduce(scratch_, 1, ncclFloat32, ReduceOp::kSum, side_stream_, "barrier");
    synchronize(side_stream_, "barrier");
  }

 private:
  using Clock = std::chrono::steady_clock;

  /// Issue NCCL calls (under the lock), wait out ncclInProgress against the deadline, then
  /// record an event after the work on `stream` and hand it to the watchdog.
  template <class Launch>
  void enqueue(std::string_view what, cudaStream_t stream, Launch&& launch) {
    check();
    ncclResult_t r;
    {
      std::lock_guard lk(comm_mu_);
      if (!comm_) {
        check();
        AMPKIT_FAIL("rank ", rank_, ": ", what, ": the communicator was aborted");
      }
      r = launch(comm_);
    }
    if (r != ncclSuccess && r != ncclInProgress) {
      AMPKIT_FAIL("rank ", rank_, ": ", what, " failed: ", detail::nccl_error_text(r, comm()),
                  " (set NCCL_DEBUG=WARN for NCCL's own explanation)");
    }
    // A non-blocking communicator may still be enqueuing (e.g. connecting to peers on first use);
    // no other NCCL call may be made on it until that finishes.
    const auto deadline = Clock::now() + timeout_;
    while (r == ncclInProgress) {
      {
        std::lock_guard lk(comm_mu_);
        if (!comm_) break;
        (void)ncclCommGetAsyncError(comm_, &r);
      }
      if (r == ncclInProgress) {
        if (Clock::now() > deadline) {
          watchdog_->fire(collective_timeout_message(rank_, std::string(what) + " (enqueue)", timeout_));
          break;
        }
        std::this_thread::sleep_for(std::chrono::microseconds(50));
      } else if (r != ncclSuccess) {
        watchdog_->fire(collective_error_message(rank_, what, detail::nccl_error_text(r, comm())));
      }
    }
    check();
    // Inside a CUDA graph capture the collective is only recorded: nothing runs until the graph
    // is launched, and an event recorded on a capturing stream cannot be queried (the watchdog
    // would fail on it). The launcher watches each replay instead (track()).
    if (detail::stream_capturing(stream)) return;
    track(stream, what);
  }

  /// Hand an event recorded after `what` to the watchdog (polled from its thread, where this
  /// rank's device must be made current first).
  void watch(std::string_view what, std::shared_ptr<CUevent_st> ev) {
    watchdog_->watch(std::string(what), [ev, device = device_] {
      AMPKIT_CUDA_CHECK(cudaSetDevice(device));
      return detail::event_done(ev.get());
    });
  }

  void reserve_scratch(std::size_t bytes) {
    if (bytes <= scratch_bytes_) return;
    AMPKIT_CUDA_CHECK(cudaStreamSynchronize(side_stream_));
    AMPKIT_CUDA_CHECK(cudaFree(scratch_));
    AMPKIT_CUDA_CHECK(cudaFreeHost(pinned_));
    scratch_ = pinned_ = nullptr;
    AMPKIT_CUDA_CHECK(cudaMalloc(&scratch_, bytes));
    AMPKIT_CUDA_CHECK(cudaMallocHost(&pinned_, bytes));
    scratch_bytes_ = bytes;
  }

  /// Finalize + destroy (bounded by the timeout), or abort. Never throws.
  void release_comm(bool abort) noexcept {
    std::lock_guard lk(comm_mu_);
    if (!comm_) return;
    if (!abort) {
      ncclResult_t r = ncclCommFinalize(comm_);
      const auto deadline = Clock::now() + timeout_;
      while (r == ncclInProgress && Clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::microseconds(200));
        (void)ncclCommGetAsyncError(comm_, &r);
      }
      if (r == ncclSuccess) {
        (void)ncclCommDestroy(comm_);
        comm_ = nullptr;
        return;
      }
    }
    (void)ncclCommAbort(comm_);
    comm_ = nullptr;
  }

  void release_cuda() noexcept {
    if (scratch_) (void)cudaFree(scratch_);
    if (pinned_) (void)cudaFreeHost(pinned_);
    scratch_ = pinned_ = nullptr;
    if (side_stream_) (void)cudaStreamDestroy(side_stream_);
    side_stream_ = nullptr;
  }

  int rank_, world_size_, device_;
  std::chrono::milliseconds timeout_;
  ProcessGroupOptions opts_;
  mutable std::mutex comm_mu_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t side_stream_ = nullptr;  // barrier / all_gather: never blocks the caller's streams
  void* scratch_ = nullptr;  // device and pinned host staging of all_gather / barrier
  void* pinned_ = nullptr;
  std::size_t scratch_bytes_ = 256;
  detail::EventPool events_;             // outlives the watchdog, whose pending work holds events
  std::unique_ptr<Watchdog> watchdog_;
};

}  // namespace ampkit::dist

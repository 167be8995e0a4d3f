/// @brief NcclDataParallel: the trainer's DataParallel (train/data_parallel.hpp) over NCCL, one
/// process per GPU: weight broadcast, fp32 bucketed gradient averaging, the overflow flag reduced
/// with max, BN buffer averaging, and a rank-0-only-work barrier with its own long timeout.
///
/// Gradient averaging, overlapped with backward (default): on the last micro-batch of a window,
/// begin_backward(true) opens a pass on every reducer; each layer's backward reports its
/// finished parameters through the store's gradient-ready hook (grads_ready), routed to the
/// reducers' mark_ready; a bucket whose parameters are all final is, under fp16/bf16, folded into
/// the fp32 accumulator (GradReducer's prepare: AmpOptimizer::end_micro_batch(begin, end) on the
/// compute stream) and its all-reduce issued on the shared high-priority comm stream after an
/// event of the compute stream, while backward continues. average_gradients() then only makes the
/// compute stream wait for the comm stream. Buckets (BucketPlan: 1 MiB first, 25 MiB after) run
/// backwards through the parameters, the order backward finishes them, and are released in index
/// order: the same NCCL issue order on every rank (docs/architecture.md, "In the trainer").
/// AMPKIT_DDP_OVERLAP=0: the previous behaviour, all buckets issued in one go after backward and
/// the trainer's whole-buffer fold (to measure both in one session). No host synchronisation in
/// either.
///
/// CUDA graphs: the trainer may capture a whole iteration, the overlapped all-reduce and the
/// overflow-flag reduction included (NCCL supports capture since 2.9). begin_capture() /
/// end_capture() bracket it: collectives recorded then are not watched (ProcessGroup skips a
/// capturing stream) and not counted; end_capture() agrees on the outcome across ranks (one
/// all-gather), because NCCL requires a collective to be captured on every rank or on none.
/// graph_replayed() counts each replay's averaging and watches the replay as one operation, so
/// a dead peer still ends the job within AMPKIT_DIST_TIMEOUT.
///
/// Two communicators: the main one, whose watchdog ends any collective that outlives
/// AMPKIT_DIST_TIMEOUT (300 s), and a second one used only by wait_for_main(), whose timeout is
/// AMPKIT_DIST_SLOW_TIMEOUT (default 1800 s): rank 0 may evaluate or write a checkpoint for longer
/// than a collective may take, and the waiting ranks must not mistake that for a dead peer. A
/// rank that dies meanwhile still ends the others: dist_train.sh stops the job when a rank exits,
/// and otherwise the slow timeout bounds the wait.
#pragma once

#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "ampkit/amp/step_state.hpp"
#include "ampkit/backend/cuda/check.cuh"
#include "ampkit/backend/cuda/context.cuh"
#include "ampkit/backend/cuda/dist/batch_norm_sync.cuh"
#include "ampkit/backend/cuda/dist/grad_reducer.cuh"
#include "ampkit/backend/cuda/dist/process_group.cuh"
#include "ampkit/dist/launch_env.hpp"
#include "ampkit/train/data_parallel.hpp"

namespace ampkit::dist {

/// The default bound on wait_for_main() (rank 0 checkpointing or evaluating).
inline constexpr std::chrono::seconds kDefaultSlowTimeout{1800};

namespace detail {

// One block: OR of every partial's non-finite flag -> flag[0] (1.f / 0.f), for a max all-reduce.
__global__ void collect_nonfinite_kernel(const amp::GradPartial* __restrict__ partials, int n,
                                         float* __restrict__ flag) {
  __shared__ int s_any;
  if (threadIdx.x == 0) s_any = 0;
  __syncthreads();
  int any = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) any |= partials[i].nonfinite;
  if (any) atomicOr(&s_any, 1);
  __syncthreads();
  if (threadIdx.x == 0) flag[0] = s_any ? 1.f : 0.f;
}

// After the max all-reduce: any rank's inf/NaN marks this rank's check non-finite too.
__global__ void apply_nonfinite_kernel(amp::GradPartial* __restrict__ partials, const float* __restrict__ flag) {
  if (flag[0] != 0.f) partials[0].nonfinite = 1;
}

}  // namespace detail

/// AMPKIT_DDP_OVERLAP: 1 (default) overlaps the gradient all-reduce with backward, 0 issues it
/// after backward.
inline bool ddp_overlap_from_env() {
  const char* v = std::getenv("AMPKIT_DDP_OVERLAP");
  if (!v || !*v) return true;
  const int o = ::ampkit::dist::detail::parse_int("AMPKIT_DDP_OVERLAP", v);
  AMPKIT_CHECK(o == 0 || o == 1, "AMPKIT_DDP_OVERLAP=", v, ": use 1 (overlap the gradient all-reduce with "
               "backward, the default) or 0 (all-reduce after backward)");
  return o == 1;
}

/// AMPKIT_DIST_SLOW_TIMEOUT (seconds) or the default; never below the collective timeout.
inline std::chrono::seconds slow_timeout_from_env(const LaunchEnv& env) {
  std::chrono::seconds t = kDefaultSlowTimeout;
  if (const char* v = std::getenv("AMPKIT_DIST_SLOW_TIMEOUT"); v && *v) {
    const int s = ::ampkit::dist::detail::parse_int("AMPKIT_DIST_SLOW_TIMEOUT", v);
    AMPKIT_CHECK(s > 0, "AMPKIT_DIST_SLOW_TIMEOUT=", s, ": the timeout is in seconds and must be positive");
    t = std::chrono::seconds(s);
  }
  return std::max(t, env.timeout);
}

class NcclDataParallel final : public train::DataParallel {
 public:
  /// Join the job (rendezvous + communicators) on ctx's GPU, which must be env.local_rank.
  /// `on_abort` is told a failure message once (default: print it, and end the process 10 s
  /// later if the main thread has not ended it by then: a rank must never hang on a dead peer).
  NcclDataParallel(Cuda& ctx, const LaunchEnv& env, std::function<void(const std::string&)> on_abort = {})
      : ctx_(&ctx), env_(env), overlap_(ddp_overlap_from_env()) {
    AMPKIT_CHECK(ctx.device().index == env.local_rank, "NcclDataParallel: the CUDA context is on GPU ",
                 ctx.device().index, " but local rank ", env.local_rank, " must use GPU ", env.local_rank);
    if (!on_abort) on_abort = default_on_abort;
    // Branch streams hold gradient-ready notifications until their join (ParameterStore::hold):
    // host-tested, but never run with NCCL on two GPUs. Off here unless the user chose them.
    if (env.world_size > 1 && !cuda::branch_streams_env_set()) ctx.set_branch_streams(false);
    ProcessGroupOptions opts;
    opts.on_abort = on_abort;
    pg_ = ProcessGroup::create(env, opts);
    // The second communicator's id travels over the first (no second TCP port to configure).
    // Wrapped in a named struct: ncclUniqueId is a typedef of an unnamed struct, and nvcc 12's
    // front end crashes destroying a std::vector of it (internal error in lexical.c).
    struct IdBlob {
      ncclUniqueId id;
    };
    IdBlob blob{};
    if (env.rank == 0) AMPKIT_NCCL_CHECK(ncclGetUniqueId(&blob.id));
    const ncclUniqueId id = pg_->all_gather(blob, "exchange of the barrier communicator's id").at(0).id;
    ProcessGroupOptions slow;
    slow.timeout = std::chrono::duration_cast<std::chrono::milliseconds>(slow_timeout_from_env(env));
    slow.on_abort = on_abort;
    slow_pg_ = std::make_unique<ProcessGroup>(id, env.rank, env.world_size, env.local_rank, slow);
    flag_ = ctx.alloc<float>(1);
  }

  ~NcclDataParallel() override {
    // The SyncBatchNorm exchange refers to the communicator: off the context first.
    if (sync_bn_) ctx_->set_batch_norm_sync(nullptr);
    // Their comm stream drains before the communicators go; the first reducer owns the stream
    // the others share, so it goes last.
    while (!reducers_.empty()) reducers_.pop_back();
    slow_pg_.reset();
    pg_.reset();
  }

  ProcessGroup& process_group() { return *pg_; }
  const LaunchEnv& env() const { return env_; }
  std::chrono::seconds slow_timeout() const {
    return std::chrono::duration_cast<std::chrono::seconds>(slow_pg_->timeout());
  }

  int rank() const override { return env_.rank; }
  int world_size() const override { return env_.world_size; }

  /// Whether gradient averaging overlaps backward (AMPKIT_DDP_OVERLAP, default on).
  bool overlap() const { return overlap_; }
  /// For tests and benchmarks (collective: every rank must choose the same); not inside a pass.
  void set_overlap(bool on) {
    AMPKIT_CHECK(!armed_, "NcclDataParallel::set_overlap inside an overlapped backward");
    overlap_ = on;
  }

  void attach(train::ReplicaBuffers buffers) override {
    AMPKIT_CHECK(reducers_.empty(), "NcclDataParallel::attach called twice");
    buffers_ = std::move(buffers);
    std::size_t n_store = 0;
    for (const train::GradBuffer& g : buffers_.grads) n_store += g.params.size();
    router_ = train::GradReadyRouter(buffers_, n_store);
    for (const train::GradBuffer& g : buffers_.grads) {
      const cudaStream_t shared = reducers_.empty() ? nullptr : reducers_.front()->comm_stream();
      reducers_.push_back(
          std::make_unique<GradReducer<Fp32>>(*pg_, g.data, g.sizes, BucketOptions{}, g.offsets, shared));
    }
  }

  bool begin_backward(bool sync) override {
    AMPKIT_CHECK(!armed_, "NcclDataParallel::begin_backward: the previous overlapped backward was never averaged "
                 "(average_gradients() must follow the last micro-batch of every window)");
    if (!sync || !overlap_ || reducers_.empty()) return false;
    // The fold (prepare) belongs to this pass only: after a non-overlapped backward the trainer
    // has folded the whole micro-batch itself.
    for (std::size_t b = 0; b < reducers_.size(); ++b) {
      reducers_[b]->set_prepare(buffers_.grads[b].prepare);
      reducers_[b]->begin(ctx_->stream(), /*sync=*/true);
    }
    armed_ = true;
    return true;
  }

  void grads_ready(std::size_t first, std::size_t count) override {
    if (!armed_) return;
    router_.route(first, count, [&](std::size_t b, ParamRange r) { reducers_[b]->mark_ready(r); });
  }

  void broadcast_from_rank0() override {
    const cudaStream_t s = ctx_->stream();
    if (!buffers_.master.empty()) pg_->broadcast(buffers_.master, 0, s, "broadcast of the initial weights from rank 0");
    if (!buffers_.bn_buffers.empty())
      pg_->broadcast(buffers_.bn_buffers, 0, s, "broadcast of the BatchNorm buffers from rank 0");
    if (!buffers_.optimizer_state.empty())
      pg_->broadcast(buffers_.optimizer_state, 0, s, "broadcast of the optimizer state from rank 0");
    if (!buffers_.step_state.empty())
      pg_->broadcast(buffers_.step_state.data(), buffers_.step_state.size(), ncclUint8, 0, s,
                     "broadcast of the loss-scaler / step state from rank 0");
    pg_->synchronize(s, "broadcast of the initial state from rank 0");
  }

  void average_gradients() override {
    if (armed_) {
      // Overlapped: backward released every bucket (finish() says which parameter was never
      // reported, if one was not); the step waits for the shared comm stream.
      armed_ = false;
      for (auto& r : reducers_) {
        r->finish();
        r->set_prepare({});
      }
      ++n_syncs_;
      return;
    }
    const cudaStream_t s = ctx_->stream();
    // After backward, one reducer per flat buffer, one after the other, on the shared comm
    // stream: the NCCL calls run in issue order on every rank. No prepare here: the trainer
    // folded the whole micro-batch before this call.
    for (auto& r : reducers_) {
      r->begin(s, /*sync=*/true);
      r->mark_ready(ParamRange{0, r->plan().n_params()});
      r->finish();
    }
    ++n_syncs_;
  }

  void reduce_step_check(amp::GradPartial* partials, int n_partials) override {
    if (n_partials <= 0) return;  // no check ran: nothing is skipped on any rank
    const cudaStream_t s = ctx_->stream();
    detail::collect_nonfinite_kernel<<<1, 256, 0, s>>>(partials, n_partials, flag_.data());
    AMPKIT_CUDA_CHECK_LAUNCH();
    reduce_overflow_flag(*pg_, flag_.data(), s);
    detail::apply_nonfinite_kernel<<<1, 1, 0, s>>>(partials, flag_.data());
    AMPKIT_CUDA_CHECK_LAUNCH();
  }

  void average_buffers() override {
    if (buffers_.bn_buffers.empty()) return;
    const std::span<float> b[] = {buffers_.bn_buffers};
    sync_batch_norm_buffers(*pg_, b, ctx_->stream());
  }

  void wait_for_main(std::string_view what) override {
    // Drain this rank's collectives first (bounded by the collective timeout), so the barrier on
    // the second communicator never runs concurrently with the main one's kernels.
    pg_->synchronize(ctx_->stream(), ::ampkit::detail::concat("collectives before the barrier after ", what));
    slow_pg_->barrier();
  }

  bool enable_sync_batch_norm() override {
    ctx_->set_batch_norm_sync(std::make_shared<NcclBatchNormSync>(*pg_));
    sync_bn_ = true;
    return true;
  }

  bool supports_graph_capture() const override { return true; }

  void begin_capture(bool window_end) override {
    AMPKIT_CHECK(!capturing_, "NcclDataParallel::begin_capture: a capture is already open");
    capturing_ = true;
    capture_window_end_ = window_end;
    capture_syncs0_ = n_syncs_;
    capture_launches0_ = n_gradient_launches();
  }

  bool end_capture(bool ok) override {
    AMPKIT_CHECK(capturing_, "NcclDataParallel::end_capture without begin_capture");
    capturing_ = false;
    // A capture executes nothing: what it issued counts at each replay instead.
    Captured& c = captured_[capture_window_end_ ? 1 : 0];
    c.syncs = n_syncs_ - capture_syncs0_;
    c.launches = n_gradient_launches() - capture_launches0_;
    n_syncs_ = capture_syncs0_;
    launch_adjust_ -= c.launches;
    if (armed_) {  // the capture failed inside backward: its pass never finished
      armed_ = false;
      for (auto& r : reducers_) {
        r->abandon();
        r->set_prepare({});
      }
    }
    const std::vector<int> all = pg_->all_gather(ok ? 1 : 0, "agreement on the CUDA graph capture");
    bool every = true;
    for (const int v : all) every = every && v == 1;
    if (!every) c = {};
    return every;
  }

  void graph_replayed(bool window_end) override {
    AMPKIT_CHECK(!capturing_, "NcclDataParallel::graph_replayed during a capture");
    const Captured& c = captured_[window_end ? 1 : 0];
    n_syncs_ += c.syncs;
    launch_adjust_ += c.launches;
    // The step graph holds the gradient all-reduce (an accumulation graph none); under
    // SyncBatchNorm every graph holds the BatchNorm exchanges too.
    if (window_end || sync_bn_)
      pg_->track(ctx_->stream(), window_end ? "the gradient all-reduce of a replayed step graph"
                                            : "the SyncBatchNorm exchanges of a replayed accumulation graph");
  }

  std::int64_t n_gradient_syncs() const override { return n_syncs_; }
  std::int64_t n_gradient_launches() const override {
    std::int64_t n = launch_adjust_;
    for (const auto& r : reducers_) n += static_cast<std::int64_t>(r->n_launches());
    return n;
  }
  /// Buckets per averaging, over all gradient buffers.
  std::size_t n_buckets() const {
    std::size_t n = 0;
    for (const auto& r : reducers_) n += r->plan().n_buckets();
    return n;
  }

 private:
  static void default_on_abort(const std::string& message) {
    std::fprintf(stderr, "ampkit: %s\n", message.c_str());
    std::fflush(stderr);
    // The main thread normally throws at its next collective call or wakes from its stream wait
    // (the abort ends the stuck kernels). Should it be stuck elsewhere, do not let it hang.
    std::thread(&exit_after_grace).detach();
  }
  static void exit_after_grace() {
    std::this_thread::sleep_for(std::chrono::seconds(10));
    std::fprintf(stderr, "ampkit: ending the process after a communication failure (see above)\n");
    std::fflush(stderr);
    std::_Exit(1);
  }

  Cuda* ctx_;
  LaunchEnv env_;
  std::unique_ptr<ProcessGroup> pg_, slow_pg_;
  train::ReplicaBuffers buffers_;
  std::vector<std::unique_ptr<GradReducer<Fp32>>> reducers_;
  train::GradReadyRouter router_;
  bool overlap_ = true;
  bool armed_ = false;  ///< an overlapped backward is open (begin_backward returned true)
  cuda::DeviceBuffer<float> flag_;
  std::int64_t n_syncs_ = 0;
  // CUDA graph capture: what each kind of graph ([0] accumulate, [1] step) averages per replay.
  struct Captured {
    std::int64_t syncs = 0, launches = 0;
  };
  Captured captured_[2];
  bool capturing_ = false, capture_window_end_ = false;
  bool sync_bn_ = false;  ///< the context's BatchNorms exchange statistics over pg_
  std::int64_t capture_syncs0_ = 0, capture_launches0_ = 0;
  std::int64_t launch_adjust_ = 0;  ///< replayed launches minus captured ones (not run)
};

}  // namespace ampkit::dist

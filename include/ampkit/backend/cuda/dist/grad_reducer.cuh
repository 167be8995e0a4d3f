/// @brief Data-parallel gradient averaging (DDP): buckets of the flat fp32 gradient buffer are
/// all-reduced (ncclAvg) on a communication stream as soon as backward has finished them, so
/// communication overlaps the rest of backward; plus the cross-rank overflow flag and grad-norm.
///
/// Per backward pass:
///   reducer.begin(compute_stream, sync);      // sync = last micro-batch of the accumulation window
///   ... backward writes gradients on compute_stream, then for each layer:
///   reducer.mark_ready({first_param, n});     // those gradients are final (in stream order)
///   reducer.finish();                         // compute_stream now waits for the all-reduces
///
/// Ordering without host synchronisation: when a bucket completes we record an event on the
/// compute stream and make the communication stream wait on it, so NCCL reads the gradients only
/// after the kernels that wrote them; finish() makes the compute stream wait on the communication
/// stream, so the optimizer reads only averaged gradients. The host never blocks.
///
/// Before a launch, an optional `prepare(begin, end)` issues on the compute stream what the
/// released buckets' elements [begin, end) still need (under fp16/bf16 the fold of the window's
/// last micro-batch into the fp32 accumulator); the launch's event is recorded after it.
///
/// Several reducers on one communicator (the data-parallel trainer has one per gradient buffer)
/// share one communication stream (`comm_stream` argument): NCCL matches collectives across
/// ranks by issue order, and two NCCL kernels of one communicator running concurrently on two
/// streams may deadlock; on one stream they run in the (deterministic) host issue order.
///
/// Accumulation (mmengine's no_sync): with sync = false the buckets are tracked but nothing is
/// communicated; gradients keep accumulating locally and the window's accumulated gradient is
/// averaged once, on the last micro-batch.
///
/// Why fp32 buckets under AMP: the buffer holds the fp32 (master) gradients of every policy
/// (PrecisionTraits<P>::nccl_grad_type is ncclFloat32 for all three). Loss-scaled fp16 gradients
/// may be near 65504; the reduction sums world_size of them before dividing, which overflows
/// where no single term did, and each of the world_size-1 additions in fp16 also rounds to 11
/// bits. Reducing in fp32 doubles the bytes of a fp16 reduction, a cost the overlap hides.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "ampkit/backend/cuda/check.cuh"
#include "ampkit/backend/cuda/dist/process_group.cuh"
#include "ampkit/dist/bucket_plan.hpp"
#include "ampkit/precision.hpp"

namespace ampkit::dist {

/// @tparam P  the precision policy; gradients are its master type (fp32) for every policy.
template <PrecisionPolicy P>
class GradReducer {
 public:
  using grad_t = master_t<P>;
  static_assert(PrecisionTraits<P>::nccl_grad_type == nccl_type_v<grad_t>,
                "GradReducer: the NCCL gradient type of the policy must match its master type");

  /// @param grads        the flat device gradient buffer (at least plan extent elements)
  /// @param param_sizes  elements per parameter, in forward order
  /// @param offsets      offsets of the parameters in `grads` (empty: packed back to back)
  /// @param comm_stream  another reducer's comm_stream() to share (it must outlive this one);
  ///                     null: create an own high-priority stream
  GradReducer(ProcessGroup& pg, std::span<grad_t> grads, std::span<const std::size_t> param_sizes,
              BucketOptions opts = {}, std::span<const std::size_t> offsets = {}, cudaStream_t comm_stream = nullptr)
      : pg_(&pg), grads_(grads.data()), plan_(param_sizes, with_element_size(opts), offsets), tracker_(plan_) {
    AMPKIT_CHECK(grads.size() >= plan_.extent(), "GradReducer: the gradient buffer holds ", grads.size(),
                 " elements, the parameters need ", plan_.extent());
    AMPKIT_CUDA_CHECK(cudaSetDevice(pg.device()));
    if (comm_stream) {
      comm_stream_ = comm_stream;
      owns_stream_ = false;
    } else {
      // Highest priority: an all-reduce kernel ready to run should not queue behind the next
      // layer's backward kernels, or the overlap shrinks to nothing.
      int least = 0, greatest = 0;
      AMPKIT_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
      AMPKIT_CUDA_CHECK(cudaStreamCreateWithPriority(&comm_stream_, cudaStreamNonBlocking, greatest));
    }
    AMPKIT_CUDA_CHECK(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming));
    AMPKIT_CUDA_CHECK(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
  }
  GradReducer(const GradReducer&) = delete;
  GradReducer& operator=(const GradReducer&) = delete;
  ~GradReducer() {
    // After an abort the stream may hold work that never ran; destroying it is still safe.
    if (!pg_->aborted() && comm_stream_) (void)cudaStreamSynchronize(comm_stream_);
    if (done_) (void)cudaEventDestroy(done_);
    if (ready_) (void)cudaEventDestroy(ready_);
    if (comm_stream_ && owns_stream_) (void)cudaStreamDestroy(comm_stream_);
  }

  /// `prepare(begin, end)`: see the file comment (empty: none). Called in synced passes only.
  void set_prepare(std::function<void(std::size_t, std::size_t)> prepare) { prepare_ = std::move(prepare); }
  /// Whether a backward pass is open (begin() without finish()).
  bool in_pass() const { return in_pass_; }
  /// Buckets released in the current (or last) pass.
  std::size_t n_released() const { return tracker_.n_released(); }

  const BucketPlan& plan() const { return plan_; }
  cudaStream_t comm_stream() const { return comm_stream_; }
  /// Grouped NCCL launches so far (one per mark_ready that released buckets).
  std::size_t n_launches() const { return n_launches_; }
  /// Bucket all-reduces so far.
  std::size_t n_bucket_reductions() const { return n_buckets_reduced_; }
  /// Backward passes that averaged gradients (= optimizer steps under accumulation).
  std::size_t n_synced_passes() const { return n_synced_; }

  /// Start a backward pass whose gradients are written on `compute`. `sync`: average them
  /// across ranks in this pass (the last micro-batch of an accumulation window).
  void begin(cudaStream_t compute, bool sync) {
    AMPKIT_CHECK(!in_pass_, "GradReducer::begin: the previous backward pass was not finished");
    pg_->check();
    compute_ = compute;
    sync_ = sync;
    in_pass_ = true;
    tracker_.reset();
  }

  /// Parameters [r.first, r.first + r.count) have final gradients (written by work already
  /// issued to the compute stream).
  void mark_ready(ParamRange r) {
    AMPKIT_CHECK(in_pass_, "GradReducer::mark_ready outside begin()/finish()");
    const BucketSpan s = tracker_.mark_ready(r);
    if (sync_ && !s.empty()) launch(s);
  }

  /// Forget an open pass without finishing it (a CUDA graph capture that failed part-way through
  /// backward: nothing it recorded ever runs, and the next pass starts afresh).
  void abandon() {
    in_pass_ = false;
    tracker_.reset();
  }

  /// The same, by element range of the flat buffer (must cover whole parameters).
  void mark_ready_elements(std::size_t begin, std::size_t end) { mark_ready(plan_.params_covering(begin, end)); }

  /// End the pass: every parameter must have been marked. After this, work issued to the compute
  /// stream sees averaged gradients (when the pass synced).
  void finish() {
    AMPKIT_CHECK(in_pass_, "GradReducer::finish without begin()");
    in_pass_ = false;
    AMPKIT_CHECK(tracker_.all_released(), "GradReducer: backward finished but parameter(s) ", tracker_.unready(),
                 " were never marked ready. Mark every parameter once per backward pass (a parameter "
                 "unused in this forward still needs a zero gradient and a mark), or the ranks' "
                 "all-reduces fall out of step");
    if (!sync_) return;
    AMPKIT_CUDA_CHECK(cudaEventRecord(done_, comm_stream_));
    AMPKIT_CUDA_CHECK(cudaStreamWaitEvent(compute_, done_, 0));
    ++n_synced_;
  }

 private:
  static BucketOptions with_element_size(BucketOptions o) {
    o.element_bytes = sizeof(grad_t);
    return o;
  }

  void launch(BucketSpan s) {
    // Buckets are formed backwards, so buckets [first, end) are the elements from the start of
    // the last one to the end of the first: one contiguous range.
    if (prepare_) prepare_(plan_.bucket(s.end - 1).begin, plan_.bucket(s.first).end);
    AMPKIT_CUDA_CHECK(cudaEventRecord(ready_, compute_));
    // Captures the record above; re-recording ready_ for the next bucket does not disturb it.
    AMPKIT_CUDA_CHECK(cudaStreamWaitEvent(comm_stream_, ready_, 0));
    chunks_.clear();
    std::size_t n = 0;
    for (std::size_t b = s.first; b < s.end; ++b) {
      const Bucket& k = plan_.bucket(b);
      chunks_.push_back({grads_ + k.begin, k.numel()});
      n += k.numel();
    }
    const std::string what =
        ::ampkit::detail::concat("all-reduce of ", format_count(n), " gradients (bucket",
                                 s.size() > 1 ? "s " : " ", s.first,
                                 s.size() > 1 ? "-" + std::to_string(s.end - 1) : std::string(), " of ",
                                 plan_.n_buckets(), ")");
    pg_->all_reduce_grouped(chunks_, PrecisionTraits<P>::nccl_grad_type, ReduceOp::kAvg, comm_stream_, what);
    ++n_launches_;
    n_buckets_reduced_ += s.size();
  }

  ProcessGroup* pg_;
  grad_t* grads_;
  BucketPlan plan_;
  BucketTracker tracker_;
  cudaStream_t comm_stream_ = nullptr, compute_ = nullptr;
  cudaEvent_t ready_ = nullptr, done_ = nullptr;
  bool sync_ = true, in_pass_ = false, owns_stream_ = true;
  std::function<void(std::size_t, std::size_t)> prepare_;
  std::vector<DeviceChunk> chunks_;
  std::size_t n_launches_ = 0, n_buckets_reduced_ = 0, n_synced_ = 0;
};

/// Make every rank's loss-scaler overflow flag (a device float, 0 or non-zero) the maximum over
/// ranks, so all ranks skip the step together. Averaged gradients already share an inf, but a
/// flag computed before the reduction, or in a no-sync window, would not.
inline void reduce_overflow_flag(ProcessGroup& pg, float* d_flag, cudaStream_t stream) {
  pg.all_reduce(d_flag, 1, ncclFloat32, ReduceOp::kMax, stream, "all-reduce (max) of the overflow flag");
}

/// Sum per-rank partial squared gradient norms (device float) into the global one, for clipping
/// by the global norm when each rank computed the norm of its own shard of the gradients. (With
/// full replicas after averaging every rank already holds the same gradients and norm.)
inline void reduce_grad_norm_squared(ProcessGroup& pg, float* d_norm2, cudaStream_t stream) {
  pg.all_reduce(d_norm2, 1, ncclFloat32, ReduceOp::kSum, stream, "all-reduce (sum) of the squared gradient norm");
}

}  // namespace ampkit::dist

/// @brief The trainer's view of data parallelism (one process per GPU, DDP semantics), kept free
/// of CUDA and NCCL so the trainer stays one plain C++ template for both backends.
///
/// The NCCL implementation is ampkit::dist::NcclDataParallel (backend/cuda/dist/data_parallel.cuh);
/// the application creates it from the launch environment and hands it to run_training through
/// RunOptions::data_parallel. Null there means one process. What the trainer does with it:
///   start            attach(replica_buffers(...)), broadcast_from_rank0(), store.sync_compute():
///                    every replica starts from rank 0's master weights, BN buffers, optimizer
///                    and step state (after a resume too, so ranks can never start apart).
///   backward         begin_backward(sync) before every model backward; the store's
///                    gradient-ready hook forwards each layer's report to grads_ready().
///   micro-batch      nothing on the first accumulative_counts - 1 micro-batches of a window
///                    (mmengine's no_sync): gradients accumulate locally.
///   window end       overlapped (begin_backward returned true, the default): during backward,
///                    each finished bucket was folded into the fp32 gradient and its all-reduce
///                    issued; average_gradients() only makes the step wait for them. Not
///                    overlapped (AMPKIT_DDP_OVERLAP=0): fold the whole micro-batch, then
///                    average_gradients() issues every bucket. Then the optimizer step with
///                    reduce_step_check() between the gradient check and finalize (the overflow
///                    flag: max over ranks).
///   epoch end        average_buffers() (mmengine's SyncBuffersHook: BN running statistics).
///   SyncBatchNorm    enable_sync_batch_norm() once at the start when runtime.sync_bn is set.
///   rank-0-only work wait_for_main(): the others wait for rank 0's checkpoint / evaluation at a
///                    barrier with the long timeout, not the collective one.
///   CUDA graphs      when supports_graph_capture(): begin_capture / end_capture around each
///                    capture (the collectives are recorded into the graph; every rank agrees on
///                    the outcome), graph_replayed() after each replay (counts, timeout watch).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "ampkit/amp/step_state.hpp"
#include "ampkit/core/error.hpp"
#include "ampkit/dist/bucket_plan.hpp"
#include "ampkit/nn/parameter_store.hpp"
#include "ampkit/precision.hpp"

namespace ampkit::train {

/// Issues (stream-ordered, no host sync) what elements [begin, end) of a gradient buffer need
/// before they are averaged: under fp16/bf16 the fold of the window's last micro-batch into the
/// fp32 accumulator (amp::AmpOptimizer::end_micro_batch(begin, end)).
using GradPrepare = std::function<void(std::size_t begin, std::size_t end)>;

/// One flat fp32 gradient buffer that is averaged across ranks, with its parameters' element
/// ranges (increasing offsets) so buckets never split a parameter.
struct GradBuffer {
  std::span<float> data;
  std::vector<std::size_t> sizes, offsets;
  /// The parameter store index (registration order) of each entry of sizes/offsets.
  std::vector<std::size_t> params;
  /// Empty: the buffer is final once backward wrote it (fp32 gradients).
  GradPrepare prepare;
};

/// The device buffers of one run that data parallelism reads or writes.
struct ReplicaBuffers {
  std::span<float> master;           ///< fp32 master weights (broadcast)
  std::span<float> bn_buffers;       ///< BN running statistics (broadcast, averaged per epoch)
  std::span<float> optimizer_state;  ///< optimizer slots (broadcast)
  std::span<std::byte> step_state;   ///< amp::StepState (broadcast)
  std::vector<GradBuffer> grads;     ///< averaged at the end of each accumulation window
};

/// The buffers of `store` for data parallelism. `grad_accum` is the AMP optimizer's fp32
/// micro-batch accumulator (required under fp16/bf16: the gradients are averaged in fp32, after
/// the window's last micro-batch was folded into it; unused under fp32, where the gradients are
/// fp32 already). `fold` folds a range of the micro-batch into it (becomes that buffer's
/// GradPrepare; fp16/bf16 only).
///
/// Two buffers under every policy: the compute parameters' gradients, then the BN (fp32)
/// parameters'. Under fp32 both are segments of one allocation; they are still averaged as two
/// buffers so that each one's bucket plan runs backwards through its own parameters: in one
/// buffer the BN segment would sit at the end, its bucket would be bucket 0, and bucket 0 would
/// complete only with the stem's BN, at the very end of backward (no overlap at all).
template <PrecisionPolicy P, class Backend>
ReplicaBuffers replica_buffers(const nn::ParameterStore<P, Backend>& store, float* grad_accum,
                               std::span<float> optimizer_state, amp::StepState* step_state,
                               GradPrepare fold = {}) {
  using T = storage_t<P>;
  constexpr bool kFp32 = std::is_same_v<T, float>;
  ReplicaBuffers r;
  const auto m = store.master_all();
  r.master = {m.data, static_cast<std::size_t>(m.numel())};
  const auto b = store.buffers_all();
  r.bn_buffers = {b.data, static_cast<std::size_t>(b.numel())};
  r.optimizer_state = optimizer_state;
  r.step_state = {reinterpret_cast<std::byte*>(step_state), sizeof(amp::StepState)};
  const std::size_t n_compute = static_cast<std::size_t>(store.n_compute_slots());
  const std::size_t n_fp32 = static_cast<std::size_t>(store.n_fp32_slots());

  // (offset, size, store index) per parameter in the segment it lives in, sorted: registration
  // order mixes the two kinds, a bucket plan needs increasing offsets. (Within one kind, slots
  // follow registration order, so the sort keeps it.)
  using Entry = std::tuple<std::size_t, std::size_t, std::size_t>;
  std::vector<Entry> compute, fp32;
  for (std::size_t i = 0; i < store.params().size(); ++i) {
    const auto& p = store.params()[i];
    const auto slot = static_cast<std::size_t>(p.slot), n = static_cast<std::size_t>(p.numel);
    (p.kind == nn::ParamKind::kCompute ? compute : fp32).emplace_back(slot, n, i);
  }
  auto add = [&](float* data, std::size_t n, std::vector<Entry>& ps, GradPrepare prepare) {
    if (ps.empty()) return;
    std::sort(ps.begin(), ps.end());
    GradBuffer g;
    g.data = {data, n};
    for (const auto& [o, s, i] : ps) {
      g.offsets.push_back(o);
      g.sizes.push_back(s);
      g.params.push_back(i);
    }
    g.prepare = std::move(prepare);
    r.grads.push_back(std::move(g));
  };
  if constexpr (kFp32) {
    add(store.grad_compute_all().data, n_compute, compute, {});
    add(store.grad_fp32_all().data, n_fp32, fp32, {});
  } else {
    AMPKIT_CHECK(grad_accum != nullptr || compute.empty(), "replica_buffers: under ", policy_name_v<P>,
                 " the gradients are averaged in fp32: the AMP optimizer needs its fp32 accumulator "
                 "(construct it with accumulative_counts >= 2 when distributed)");
    add(grad_accum, n_compute, compute, std::move(fold));
    add(store.grad_fp32_all().data, n_fp32, fp32, {});
  }
  return r;
}

/// Where each parameter of the store sits among the averaged buffers, for the gradient-ready
/// hook: a store range [first, first + count) becomes ranges of bucket-plan indices per buffer.
class GradReadyRouter {
 public:
  struct Place {
    std::size_t buffer = 0, index = 0;  ///< grads[buffer], entry `index` of its plan
  };

  GradReadyRouter() = default;
  GradReadyRouter(const ReplicaBuffers& r, std::size_t n_store_params) : places_(n_store_params) {
    std::vector<bool> seen(n_store_params, false);
    for (std::size_t b = 0; b < r.grads.size(); ++b) {
      const GradBuffer& g = r.grads[b];
      AMPKIT_CHECK(g.params.size() == g.sizes.size(), "GradReadyRouter: gradient buffer ", b, " lists ",
                   g.params.size(), " store indices for ", g.sizes.size(), " parameters");
      for (std::size_t k = 0; k < g.params.size(); ++k) {
        const std::size_t p = g.params[k];
        AMPKIT_CHECK(p < n_store_params && !seen[p], "GradReadyRouter: store parameter ", p,
                     " is out of range or in two buffers");
        seen[p] = true;
        places_[p] = {b, k};
      }
    }
    for (std::size_t p = 0; p < n_store_params; ++p)
      AMPKIT_CHECK(seen[p], "GradReadyRouter: store parameter ", p, " is in no averaged buffer");
  }

  std::size_t n_params() const { return places_.size(); }
  const Place& place(std::size_t store_index) const { return places_.at(store_index); }

  /// fn(buffer, dist::ParamRange) for each maximal run of [first, first + count) that is
  /// contiguous in one buffer's plan, in order.
  template <class Fn>
  void route(std::size_t first, std::size_t count, Fn&& fn) const {
    AMPKIT_CHECK(first + count <= places_.size(), "GradReadyRouter: parameters [", first, ", ", first + count,
                 ") outside the ", places_.size(), " of the store");
    std::size_t p = first;
    const std::size_t end = first + count;
    while (p < end) {
      const Place start = places_[p];
      std::size_t n = 1;
      while (p + n < end && places_[p + n].buffer == start.buffer && places_[p + n].index == start.index + n) ++n;
      fn(start.buffer, dist::ParamRange{start.index, n});
      p += n;
    }
  }

 private:
  std::vector<Place> places_;
};

/// Where a resumed run continues when the world size (hence iterations per epoch) may differ
/// from the run that wrote the checkpoint.
struct ResumePoint {
  std::int64_t iter = 0;  ///< completed global iterations to continue from
  bool moved = false;     ///< not the checkpoint's own iteration (say why: `note`)
  std::string note;
};

/// @param ckpt_epoch, ckpt_iter       the checkpoint's completed epochs and iterations
/// @param ckpt_iters_per_epoch        iterations per epoch of the run that saved it (<= 0: unknown,
///                                    older checkpoints: assume `iters_per_epoch`)
/// @param iters_per_epoch             this run's (per-rank batches per epoch)
/// An epoch-boundary checkpoint continues exactly at the next epoch whatever the world size. A
/// mid-epoch one with a different epoch length cannot map its position in the (per-rank, sharded)
/// sample order: it restarts the epoch it was in (those batches are trained again).
inline ResumePoint resume_point(std::int64_t ckpt_epoch, std::int64_t ckpt_iter, std::int64_t ckpt_iters_per_epoch,
                                std::int64_t iters_per_epoch) {
  AMPKIT_CHECK(iters_per_epoch > 0 && ckpt_iter >= 0 && ckpt_epoch >= 0, "resume_point: bad arguments");
  if (ckpt_iters_per_epoch <= 0 || ckpt_iters_per_epoch == iters_per_epoch) return {ckpt_iter, false, {}};
  const std::int64_t full_epochs = ckpt_iter / ckpt_iters_per_epoch;
  const bool at_boundary = ckpt_iter % ckpt_iters_per_epoch == 0;
  ResumePoint r;
  r.iter = full_epochs * iters_per_epoch;
  r.moved = true;
  r.note = ::ampkit::detail::concat("the checkpoint's run had ", ckpt_iters_per_epoch,
                                    " iterations per epoch, this one has ", iters_per_epoch,
                                    " (another world size or batch size): ");
  if (at_boundary)
    r.note += ::ampkit::detail::concat("continuing at the start of epoch ", full_epochs + 1, " (iteration ", r.iter,
                                       ")");
  else
    r.note += ::ampkit::detail::concat("it was saved inside epoch ", full_epochs + 1,
                                       ", whose sample order cannot be mapped; that epoch restarts at iteration ",
                                       r.iter, " (its first ", ckpt_iter - full_epochs * ckpt_iters_per_epoch,
                                       " iterations are trained again)");
  return r;
}

/// FNV-1a over the bytes of `values`: one number per rank to show the replicas are identical.
inline std::uint64_t checksum(std::span<const float> values) {
  std::uint64_t h = 1469598103934665603ull;
  const auto* p = reinterpret_cast<const unsigned char*>(values.data());
  for (std::size_t i = 0; i < values.size_bytes(); ++i) {
    h ^= p[i];
    h *= 1099511628211ull;
  }
  return h;
}

/// Data parallelism as the trainer uses it (see the file comment for when each is called). Every
/// call is collective: all ranks make the same calls in the same order. Nothing but
/// wait_for_main() and broadcast_from_rank0() blocks the host.
class DataParallel {
 public:
  virtual ~DataParallel() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  /// Register the run's buffers (once, before anything else).
  virtual void attach(ReplicaBuffers buffers) = 0;
  /// Master weights, BN buffers, optimizer and step state := rank 0's. Waits for completion.
  virtual void broadcast_from_rank0() = 0;
  /// Before each model backward; `sync`: this micro-batch ends its accumulation window. Returns
  /// true when this backward's gradients are folded and averaged DURING it (through
  /// grads_ready()); the trainer then skips its own fold. Default: never (no overlap).
  virtual bool begin_backward(bool sync) {
    (void)sync;
    return false;
  }
  /// The store's gradient-ready hook: parameters [first, first + count) (store registration
  /// order) have their final gradients, in stream order. Ignored unless begin_backward armed it.
  virtual void grads_ready(std::size_t first, std::size_t count) {
    (void)first;
    (void)count;
  }
  /// Average the fp32 gradient buffers over ranks (the last micro-batch of a window only). After
  /// an overlapped backward: wait (stream-ordered) for the all-reduces it issued.
  virtual void average_gradients() = 0;
  /// Between the gradient check and finalize: make the check's non-finite flag the max over
  /// ranks, so every rank makes the same skip decision.
  virtual void reduce_step_check(amp::GradPartial* partials, int n_partials) = 0;
  /// Average BN running statistics over ranks (mmengine's SyncBuffersHook, end of each epoch).
  virtual void average_buffers() = 0;
  /// All ranks meet here after rank-0-only work (`what`, e.g. "checkpoint"); bounded by the
  /// long timeout (AMPKIT_DIST_SLOW_TIMEOUT), not the per-collective one.
  virtual void wait_for_main(std::string_view what) = 0;
  /// SyncBatchNorm (runtime.sync_bn): from now on every training-mode BatchNorm of the run
  /// normalises with the statistics of the global batch (all ranks' micro-batches together), as
  /// torch.nn.SyncBatchNorm. Returns false where this implementation cannot.
  virtual bool enable_sync_batch_norm() { return false; }

  // ---- CUDA graphs (runtime.cuda_graph; train/graph_mode.hpp) ------------------------------------
  /// Whether an iteration's collectives may be captured into the trainer's step graphs. false:
  /// graph mode is off under data parallelism.
  virtual bool supports_graph_capture() const { return false; }
  /// Before the trainer captures an iteration (`window_end`: the step graph, whose backward
  /// averages the gradients). The collectives issued until end_capture() are recorded, not run.
  /// All ranks capture at the same iteration: the graph decisions are a function of the
  /// iteration (batch rows, loss factor, window position), which the sampler makes equal on every
  /// rank, and NCCL requires that a collective be captured on all ranks or on none.
  virtual void begin_capture(bool window_end) { (void)window_end; }
  /// After the capture, with this rank's outcome: true only if every rank captured (collective,
  /// blocks the host). On false every rank drops its graphs and continues eagerly, so no rank
  /// ever replays a collective that another runs eagerly.
  virtual bool end_capture(bool ok) { return ok; }
  /// After each launch of a captured graph: counts the averaging it performs and hands its
  /// collectives to the timeout watch.
  virtual void graph_replayed(bool window_end) { (void)window_end; }

  /// Gradient averagings so far (= optimizer steps) and their grouped NCCL launches.
  virtual std::int64_t n_gradient_syncs() const = 0;
  virtual std::int64_t n_gradient_launches() const = 0;
};

}  // namespace ampkit::train

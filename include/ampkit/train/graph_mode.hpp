/// @brief The trainer's CUDA graph mode (config key runtime.cuda_graph): GraphPlanner decides per
/// iteration whether the step runs eagerly, is captured now, or replays a captured graph (host
/// logic, tested without a GPU); StepGraphRunner carries that decision out on a backend that has
/// graphs (ampkit::Cuda, backend/cuda/graph_step.cuh) and runs everything eagerly on one that has
/// none (ampkit::Host).
///
/// What is captured: the device work of one iteration from the conversion of the uploaded image
/// to the storage type through forward, loss, backward and either the micro-batch fold
/// (iterations inside an accumulation window) or the whole AMP step (window end: fold, gradient
/// check, scaler update and skip, clipping, optimizer update, zero_grad). So with
/// accumulative_counts k > 1 there are two graphs, "accumulate" and "step", sharing one private
/// memory pool (they replay one after the other in stream order); with k = 1 only "step".
/// What changes between iterations comes from device memory, never from a kernel argument frozen
/// at capture: the batch is uploaded (Cuda::upload) into the same static buffers before each
/// replay; the lr is written into amp::StepState by a one-thread kernel launched eagerly before
/// the replay (opt.set_lr), and the finalize kernel derives the step's constants from it; loss
/// scale, skip decision, counters and Adam's bias-correction powers live in StepState.
/// What is frozen, and therefore decides when an iteration runs eagerly instead: the batch rows n
/// (a partial last batch has another shape) and the loss factor 1/loss_factor() (mmengine divides
/// the last, shorter window of a run by its own length).
///
/// Warm-up: the first iterations of the graph's shape run eagerly (cuDNN Find / plan selection at
/// the first call of each conv shape synchronises, and the caching allocator must hold every
/// block the step needs, so the capture is all cache hits), at least kWarmupIterations of them,
/// including at least one window end and, with accumulation, one micro-batch inside a window, so
/// that both graphs' code paths have run once. A graph is captured at its kind's first iteration
/// after the warm-up, then replayed for every later iteration of that kind.
/// Data parallel: the step graph contains the window end's collectives (the bucketed gradient
/// all-reduce overlapped with backward, the overflow flag's max), when the DataParallel supports
/// capture (NcclDataParallel does). Every rank captures at the same iteration, in relaxed mode
/// (one attempt), and the ranks agree on the outcome (GraphCollectiveHooks): a capture that fails
/// on one rank turns graph mode off on all of them.
/// Off (eagerly, logged once): runtime.cuda_graph = false, data-parallel runs whose DataParallel
/// cannot capture its collectives, the host backend, and a capture that fails (the reason names
/// the failing call; the run continues eagerly).
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>

#include "ampkit/core/error.hpp"

namespace ampkit::train {

/// The run's facts the graph decisions depend on.
struct GraphPlanConfig {
  bool enabled = false;                  ///< runtime.cuda_graph
  bool backend_has_graphs = true;        ///< false on ampkit::Host
  int world_size = 1;                    ///< > 1: data parallel (graph mode needs collective_capture)
  std::int64_t batch_size = 1;           ///< train_cfg.batch_size: the captured batch rows
  std::int64_t accumulative_counts = 1;  ///< the captured loss factor (1 when k = 1)
  bool collective_capture = false;       ///< the DataParallel can capture its collectives
};

enum class GraphAction {
  kEager,    ///< run the iteration's device work eagerly
  kCapture,  ///< capture it now (then replay it: a capture executes nothing)
  kReplay,   ///< replay the graph captured for this kind of iteration
};

/// Graph decisions per iteration (see the file comment). Pure host logic.
class GraphPlanner {
 public:
  /// Eager iterations of the graph's shape before the first capture (and at least one window end
  /// and, with accumulation, one in-window micro-batch among them).
  static constexpr int kWarmupIterations = 3;
  /// The graph kinds: index 0 "accumulate" (a micro-batch inside a window), 1 "step" (window end).
  static constexpr const char* kind_name(bool updated) { return updated ? "step" : "accumulate"; }

  explicit GraphPlanner(GraphPlanConfig c) : c_(c) {
    AMPKIT_CHECK(c.batch_size >= 1 && c.accumulative_counts >= 1, "GraphPlanner: batch size ", c.batch_size,
                 " and accumulative_counts ", c.accumulative_counts, " must be >= 1");
    if (!c.enabled) return;
    if (!c.backend_has_graphs)
      off_ = "runtime.cuda_graph is ignored on the host backend (CUDA graphs need the CUDA backend)";
    else if (c.world_size > 1 && !c.collective_capture)
      off_ = "runtime.cuda_graph is off under data parallelism (world size " + std::to_string(c.world_size) +
             "): this data-parallel implementation cannot capture its collectives; every iteration runs eagerly";
    if (!off_.empty()) note(off_);
  }

  /// Whether graph mode is on for the run now (config on, a graph backend, one process, no failed
  /// capture).
  bool active() const { return c_.enabled && off_.empty(); }
  /// Why graph mode is off ("" while on, or when the config turned it off).
  const std::string& off_reason() const { return off_; }

  /// The action for the next iteration: `n` batch rows, loss factor `loss_factor`
  /// (GradAccumulation::loss_factor()), `updated` whether it ends its window (should_sync()
  /// before the backward). Call once per iteration; then report with captured()/capture_failed()
  /// after a kCapture.
  GraphAction next(std::int64_t n, std::int64_t loss_factor, bool updated) {
    if (!active()) return GraphAction::kEager;
    const std::int64_t steady_factor = c_.accumulative_counts;
    if (n != c_.batch_size) {
      if (!noted_partial_) {
        noted_partial_ = true;
        note("cuda graph: a partial batch (" + std::to_string(n) + " of " + std::to_string(c_.batch_size) +
             " images) runs eagerly (the graph's shapes are fixed); logged once");
      }
      return GraphAction::kEager;
    }
    if (loss_factor != steady_factor) {
      if (!noted_factor_) {
        noted_factor_ = true;
        note("cuda graph: the run's last, shorter accumulation window (loss factor " + std::to_string(loss_factor) +
             " instead of " + std::to_string(steady_factor) + ") runs eagerly; logged once");
      }
      return GraphAction::kEager;
    }
    auto& kind = kinds_[updated ? 1 : 0];
    if (kind.captured) return GraphAction::kReplay;
    if (!warmed_up()) {
      ++warm_total_;
      ++kind.warm;
      return GraphAction::kEager;
    }
    return GraphAction::kCapture;
  }

  /// The capture of `updated`'s kind succeeded: replay it from now on.
  void captured(bool updated) { kinds_[updated ? 1 : 0].captured = true; }
  /// A capture failed: graph mode is off for the rest of the run (every iteration eagerly).
  void capture_failed(const std::string& why) {
    off_ = std::string("cuda graph: capture failed, training continues eagerly: ") + why;
    kinds_ = {};
    note(off_);
  }
  /// Forget the graphs (they were dropped): the next iteration of each kind captures again.
  void invalidate() {
    for (auto& k : kinds_) k.captured = false;
  }
  bool warmed_up() const {
    const bool need_accumulate = c_.accumulative_counts > 1;
    return warm_total_ >= kWarmupIterations && kinds_[1].warm >= 1 && (!need_accumulate || kinds_[0].warm >= 1);
  }

  /// Messages to log once (the caller drains them after each next()/captured()/capture_failed()).
  std::string take_note() { return std::exchange(note_, std::string()); }

 private:
  struct Kind {
    int warm = 0;  ///< eager iterations of this kind at the graph's shape
    bool captured = false;
  };
  void note(const std::string& s) { note_ += (note_.empty() ? "" : "\n") + s; }

  GraphPlanConfig c_;
  std::string off_;
  std::string note_;
  std::array<Kind, 2> kinds_{};
  int warm_total_ = 0;
  bool noted_partial_ = false, noted_factor_ = false;
};

namespace detail {
/// Whether the backend offers graph capture (backend/cuda/graph_step.cuh: make_graph_pool /
/// make_graph_step, found by argument-dependent lookup).
template <class Backend>
concept HasStepGraphs = requires(Backend& ctx) { make_graph_step(ctx, make_graph_pool(ctx)); };

template <class Backend>
struct StepGraphTypes {
  using Pool = std::monostate;
  using Step = std::monostate;
};
template <HasStepGraphs Backend>
struct StepGraphTypes<Backend> {
  using Pool = decltype(make_graph_pool(std::declval<Backend&>()));
  using Step = decltype(make_graph_step(std::declval<Backend&>(), std::declval<Pool>()));
};
}  // namespace detail

/// What a data-parallel run adds around captures and replays (DataParallel::begin_capture,
/// end_capture, graph_replayed). Empty in a one-process run.
struct GraphCollectiveHooks {
  std::function<void(bool updated)> begin_capture;
  std::function<bool(bool ok)> end_capture;  ///< this rank's outcome -> every rank's (true: all captured)
  std::function<void(bool updated)> replayed;
  explicit operator bool() const { return static_cast<bool>(end_capture); }
};

/// Runs each iteration's device work as GraphPlanner says: eagerly, captured then replayed, or
/// replayed. `fn` must enqueue only device work on the backend's stream (see graph_step.cuh).
template <class Backend>
class StepGraphRunner {
 public:
  static constexpr bool kBackendHasGraphs = detail::HasStepGraphs<Backend>;
  using Log = std::function<void(const std::string&)>;

  /// `collective`: the hooks of a data-parallel run whose graphs hold collectives (then every
  /// capture is relaxed-only and agreed across ranks); empty otherwise.
  StepGraphRunner(Backend& ctx, GraphPlanConfig c, Log info, GraphCollectiveHooks collective = {})
      : ctx_(&ctx), info_(std::move(info)), plan_(with_backend(c)), coll_(std::move(collective)) {
    AMPKIT_CHECK(c.world_size <= 1 || !c.collective_capture || coll_,
                 "StepGraphRunner: a data-parallel run with collective capture needs the collective hooks");
    drain();
  }

  /// One iteration (see GraphPlanner::next for the arguments).
  template <class Fn>
  void run(std::int64_t n, std::int64_t loss_factor, bool updated, Fn&& fn) {
    const GraphAction a = plan_.next(n, loss_factor, updated);
    drain();
    if constexpr (kBackendHasGraphs) {
      if (a == GraphAction::kCapture) {
        if (!pool_) pool_ = make_graph_pool(*ctx_);
        auto& g = graphs_[updated ? 1 : 0];
        if (!g) g = make_graph_step(*ctx_, pool_);
        const bool collective = static_cast<bool>(coll_);
        if (collective) coll_.begin_capture(updated);
        const auto& r = g->capture(fn, /*relaxed_only=*/collective);
        const bool all_ok = collective ? coll_.end_capture(r.ok) : r.ok;
        if (all_ok) {
          plan_.captured(updated);
          info_(std::string("cuda graph: captured the ") + GraphPlanner::kind_name(updated) + " graph (" + r.mode +
                " mode, " + std::to_string(r.n_nodes) + " nodes, " + std::to_string(r.raw_allocs) +
                " cudaMalloc calls during capture, " + std::to_string(static_cast<long long>(r.ms)) + " ms; pool " +
                std::to_string(pool_->bytes() >> 20) + " MiB)" +
                (r.error.empty() ? std::string() : "; global mode failed first: " + r.error));
        } else {
          plan_.capture_failed(std::string("the ") + GraphPlanner::kind_name(updated) + " graph: " +
                               (r.ok ? std::string("another rank's capture failed; all ranks continue "
                                                   "eagerly (NCCL needs every rank to capture alike)")
                                     : r.error));
          drain();
          for (auto& gr : graphs_) gr.reset();  // graphs first: they hold the pool
          pool_.reset();
          fn();  // the capture ran nothing: this iteration eagerly
          ++n_eager_;
          return;
        }
      }
      if (a != GraphAction::kEager) {
        graphs_[updated ? 1 : 0]->replay();
        if (coll_) coll_.replayed(updated);
        ++n_replays_;
        return;
      }
    }
    fn();
    ++n_eager_;
  }

  /// Drop the graphs; the next iteration of each kind captures again (e.g. after something the
  /// graphs froze changed).
  void recapture() {
    if constexpr (kBackendHasGraphs)
      for (auto& g : graphs_)
        if (g) g->reset();
    plan_.invalidate();
  }

  const GraphPlanner& planner() const { return plan_; }
  std::int64_t n_replays() const { return n_replays_; }
  std::int64_t n_eager() const { return n_eager_; }

 private:
  static GraphPlanConfig with_backend(GraphPlanConfig c) {
    c.backend_has_graphs = kBackendHasGraphs;
    return c;
  }
  void drain() {
    if (std::string s = plan_.take_note(); !s.empty() && info_) info_(s);
  }

  Backend* ctx_;
  Log info_;
  GraphPlanner plan_;
  GraphCollectiveHooks coll_;
  typename detail::StepGraphTypes<Backend>::Pool pool_{};
  std::array<typename detail::StepGraphTypes<Backend>::Step, 2> graphs_{};
  std::int64_t n_replays_ = 0, n_eager_ = 0;
};

}  // namespace ampkit::train

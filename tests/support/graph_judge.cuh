/// @brief Graph-vs-eager judging for the CUDA graph tests (tests/gpu/models/dekr.cu: the whole
/// AMP step as one graph; tests/gpu/train/graph_step.cu: the trainer's graph mode): a device
/// snapshot of the training state restored before each run, what a run leaves to compare, and the
/// verdict "graph replay vs eager within the eager-vs-eager noise floor".
#pragma once

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

#include "ampkit/amp/step_state.hpp"
#include "ampkit/backend/cuda/check.cuh"
#include "ampkit/backend/cuda/context.cuh"
#include "ampkit/core/numeric_types.hpp"
#include "support/step_state_checks.hpp"

namespace ampkit::testing {

/// Random DEKR loss targets of one micro-batch (B images, hs x hs at the output resolution,
/// n_hm heatmaps, n_d displacement channels), drawn from `rng`: heatmaps in [0, 1) with weight 1
/// above 0.5 and 0.1 below (the SPR target's two levels), 5 % of pixels masked, displacements in
/// [-6, 6) with a positive weight on 30 % of them.
struct DekrTargets {
  HostTensor<float> heatmaps, heatmap_weights, mask, displacements, displacement_weights;
};
inline DekrTargets random_dekr_targets(std::mt19937_64& rng, std::int64_t B, std::int64_t hs, std::int64_t n_hm,
                                       std::int64_t n_d) {
  std::uniform_real_distribution<float> u01(0.f, 1.f);
  DekrTargets t{HostTensor<float>({B, hs, hs, n_hm}), HostTensor<float>({B, hs, hs, n_hm}),
                HostTensor<float>({B, hs, hs, 1}), HostTensor<float>({B, hs, hs, n_d}),
                HostTensor<float>({B, hs, hs, n_d})};
  auto &g = t.heatmaps, &w = t.heatmap_weights, &m = t.mask, &d = t.displacements, &dw = t.displacement_weights;
  for (std::int64_t i = 0; i < g.numel(); ++i) {
    g[static_cast<std::size_t>(i)] = u01(rng);
    w[static_cast<std::size_t>(i)] = g[static_cast<std::size_t>(i)] > 0.5f ? 1.f : 0.1f;
  }
  for (std::int64_t i = 0; i < m.numel(); ++i) m[static_cast<std::size_t>(i)] = u01(rng) < 0.95f ? 1.f : 0.f;
  for (std::int64_t i = 0; i < d.numel(); ++i) {
    d[static_cast<std::size_t>(i)] = 12.f * u01(rng) - 6.f;
    dw[static_cast<std::size_t>(i)] = u01(rng) < 0.3f ? 0.1f + 0.9f * u01(rng) : 0.f;
  }
  return t;
}

/// Device bytes that make up the training state, copied aside once and written back before each
/// run (stream-ordered device-to-device copies; nothing is allocated after the snapshot).
class StateSnapshot {
 public:
  void add(Cuda& ctx, void* p, std::size_t bytes) {
    if (!p || !bytes) return;
    auto copy = ctx.alloc<std::byte>(bytes);
    AMPKIT_CUDA_CHECK(cudaMemcpyAsync(copy.data(), p, bytes, cudaMemcpyDeviceToDevice, ctx.stream()));
    parts_.push_back({p, bytes, std::move(copy)});
  }
  template <class U>
  void add(Cuda& ctx, TensorView<U> v) {
    add(ctx, static_cast<void*>(v.data), v.bytes());
  }
  void restore(Cuda& ctx) const {
    for (const auto& part : parts_)
      AMPKIT_CUDA_CHECK(
          cudaMemcpyAsync(part.dst, part.copy.data(), part.bytes, cudaMemcpyDeviceToDevice, ctx.stream()));
    ctx.synchronize();
  }
  std::size_t bytes() const {
    std::size_t n = 0;
    for (const auto& part : parts_) n += part.bytes;
    return n;
  }

 private:
  struct Part {
    void* dst;
    std::size_t bytes;
    cuda::DeviceBuffer<std::byte> copy;
  };
  std::vector<Part> parts_;
};

/// Everything a training step reads and writes, added to `snap`: the parameter store's masters,
/// compute copies, both gradient segments and BN buffers; the optimizer's state, its fp32
/// accumulator (if any) and the StepState (scale, counters, lr).
template <class Store, class Opt>
void snapshot_training_state(StateSnapshot& snap, Cuda& ctx, const Store& st, Opt& opt) {
  snap.add(ctx, st.master_all());
  snap.add(ctx, st.compute_all());
  snap.add(ctx, st.grad_compute_all());
  snap.add(ctx, st.grad_fp32_all());
  snap.add(ctx, st.buffers_all());
  const std::int64_t n_slots =
      std::max<std::int64_t>(1, opt.rule().n_slots() * (st.n_compute_slots() + st.n_fp32_slots()));
  snap.add(ctx, static_cast<void*>(opt.optimizer_state()), static_cast<std::size_t>(n_slots) * sizeof(float));
  if (float* acc = opt.flat().grad_accum)
    snap.add(ctx, static_cast<void*>(acc), static_cast<std::size_t>(st.n_compute_slots()) * sizeof(float));
  snap.add(ctx, static_cast<void*>(opt.state()), sizeof(amp::StepState));
}

/// What one run leaves to compare: the step state and the micro-batch losses after every step
/// (or iteration), the fp32 masters and the BN running statistics at the end.
struct TrainRun {
  std::vector<amp::StepState> states;  ///< after step s (index s - 1)
  std::vector<float> losses;           ///< total loss of each micro-batch, in order
  std::vector<float> master, running;
};

/// ||x - y|| / ||y|| over [offset, offset + n) in fp64; +inf when y is 0 and x is not, or on NaN.
inline double rel_l2_range(const std::vector<float>& x, const std::vector<float>& y, std::int64_t offset,
                           std::int64_t n) {
  double num = 0, den = 0;
  for (std::int64_t i = offset; i < offset + n; ++i) {
    const double e = static_cast<double>(x[static_cast<std::size_t>(i)]) - y[static_cast<std::size_t>(i)];
    num += e * e;
    den += static_cast<double>(y[static_cast<std::size_t>(i)]) * y[static_cast<std::size_t>(i)];
  }
  if (num == 0) return 0;
  const double r = std::sqrt(num / den);  // den == 0: +inf
  return std::isnan(r) ? INFINITY : r;
}

/// The graph-vs-eager verdict on one tensor (or on all of them: offset 0, n = everything).
struct Verdict {
  double update = 0;  ///< ||a - initial|| / ||a||: how far eager training moved it
  double graph = 0;   ///< ||c - a|| / ||a||: graph replay vs eager
  double noise = 0;   ///< max over the eager repeats of ||b - a|| / ||a||
  double tol = 0;
  bool ok = false;
};

// Tolerances (relative L2, in units of ||a||, a = the eager run's result):
//   graph <= max(kNoiseFactor * noise, abs_floor(K), kUpdateFraction * update).
// - 10x the noise measured between eager repeats: graph replay and eager launch the same kernels
//   (same cuDNN plans, same grids), so their only difference is the atomicAdd order, the noise.
// - abs_floor(K): pure fp32 rounding. The masters are fp32; each of the K updates rounds w - lr*u
//   once, and a difference in the last bit of u moves that rounding by at most one ulp, so two
//   runs that agree up to rounding are at most K ulps = K * eps relative apart per element; x2.
// - kUpdateFraction: the reordering noise is heavy-tailed when it is rare (a run whose first
//   divergence happens at step 1 ends far further off than one whose first divergence happens at
//   step 4), so a repeat's noise can understate the replay's. 1 % of what training moved stays
//   far below every defect a graph could have: a missing or stale micro-batch, a frozen lr or
//   Adam bias correction, an update not applied or applied twice, a wrong skip each change the
//   update by tens of per cent or more.
inline constexpr double kNoiseFactor = 10.0;
inline constexpr double kUpdateFraction = 1e-2;
inline constexpr double abs_floor(int n_updates) { return 2.0 * n_updates * epsilon_v<float>; }

/// a: the eager run, repeats: more eager runs from the same state, c: the graph run; `initial`:
/// the state all started from; `running`: judge the BN running statistics instead of the masters.
inline Verdict judge(const TrainRun& a, const std::vector<TrainRun>& repeats, const TrainRun& c,
                     const std::vector<float>& initial, bool running, std::int64_t offset, std::int64_t n,
                     int n_updates) {
  const auto& va = running ? a.running : a.master;
  const auto& vc = running ? c.running : c.master;
  Verdict v;
  // the update relative to the result (not the start: biases start at 0)
  v.update = rel_l2_range(initial, va, offset, n);
  v.graph = rel_l2_range(vc, va, offset, n);
  for (const auto& b : repeats) v.noise = std::max(v.noise, rel_l2_range(running ? b.running : b.master, va, offset, n));
  v.tol = std::max({kNoiseFactor * v.noise, abs_floor(n_updates), kUpdateFraction * v.update});
  v.ok = v.graph <= v.tol;
  return v;
}

/// The scale and skip decisions of two runs, step by step: equal (bit for bit: they are decided
/// on the device from the same finite / non-finite facts, and the lr is the host's value).
inline void check_same_decisions(const TrainRun& want, const TrainRun& got) {
  REQUIRE(got.states.size() == want.states.size());
  for (std::size_t s = 0; s < want.states.size(); ++s) {
    CAPTURE(s + 1);
    check_same_step_state(want.states[s], got.states[s]);
  }
}

}  // namespace ampkit::testing

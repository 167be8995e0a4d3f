/// @brief The memory plan of a DEKR training step, known before the first step: parameter,
/// master, gradient and optimizer-state bytes, the inputs, the activations kept for backward, the
/// transient high-water marks of forward and backward, a stated workspace allowance, and the
/// check against free device memory that fails with one clear message.
///
/// How (the design choice): a dry run of the REAL step code on the shape-only backend
/// ampkit::Meta (backend/meta/context.hpp). The model, the loss and the AMP optimizer are
/// instantiated on Meta, which hands out fake addresses through the same CachingAllocator
/// policy as the CUDA backend (same rounding, same block reuse), and the step is run
/// n_steps times exactly as the trainer (and bench/dekr_step.cu) runs it; the last step is
/// measured, like the benchmark measures after its warm-up. So every tensor the code keeps,
/// frees or reallocates is in the plan, and the plan cannot drift from the code: there is no
/// formula per layer to keep in sync. A W32 dry run at batch 32 takes milliseconds.
/// What the dry run cannot see is listed in MemoryPlan::workspace_allowance.
///
/// Host-testable: nothing here needs CUDA. The free-memory number comes from the caller
/// (the trainer reads it from the CUDA allocator's raw system, cudaMemGetInfo; tests pass a
/// fake), as core/device_info.hpp keeps the device checks free of CUDA headers.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "ampkit/amp/amp_optimizer.hpp"
#include "ampkit/amp/loss_scaler.hpp"
#include "ampkit/backend/meta/ops.hpp"
#include "ampkit/core/caching_allocator.hpp"
#include "ampkit/core/error.hpp"
#include "ampkit/loss/dekr_loss.hpp"
#include "ampkit/models/dekr.hpp"
#include "ampkit/optim/adam.hpp"
#include "ampkit/optim/optimizer.hpp"
#include "ampkit/precision.hpp"

namespace ampkit::train {

/// What to plan: the model, the micro-batch, the input size and how the step is driven.
struct MemoryPlanRequest {
  models::DekrConfig model = models::DekrConfig::w32();
  std::int64_t batch_size = 1;               ///< images per micro-batch (train_cfg.batch_size)
  std::int64_t input_h = 512, input_w = 512;  ///< codec.input_size (multiples of 32)
  std::int64_t accumulative_counts = 1;      ///< > 1: the fp32 micro-batch accumulator exists (fp16/bf16)
  /// The trainer uploads the image as fp32 and converts it on the device (one more image-sized
  /// fp32 buffer); bench/dekr_step.cu generates it in the storage type directly.
  bool fp32_image_staging = true;
  int n_steps = 3;  ///< dry-run steps; the last is measured (>= 2: layers keep outputs from step 1)
  /// The caching allocator's rounding of requests >= 1 MiB (ampkit::Cuda's by default; the tests
  /// set 2 MiB to check measurements made before commit 167ea90 (2026-11-30) against their allocator).
  std::size_t allocator_granularity = CachingAllocator<meta::FakeRawMemory>::kLargeGranularity;
};

/// Bytes of one step, as the CUDA caching allocator counts them (blocks rounded to 512 B / 512 KiB).
struct MemoryPlan {
  std::string policy;
  MemoryPlanRequest request;
  std::int64_t n_params = 0;  ///< trainable scalars (29,561,182 for W32)

  // ---- state that lives for the whole run ----
  std::size_t weights = 0;     ///< storage-type copies of conv weights (0 for fp32: the master is read)
  std::size_t master = 0;      ///< fp32 master weights + BN running statistics
  std::size_t grads = 0;       ///< gradients (storage type for convs, fp32 for BN)
  std::size_t optimizer = 0;   ///< the rule's state slots (Adam: 2 moments, SGD: momentum), fp32 micro-batch accumulator, step state
  std::string optimizer_name = "Adam";
  std::size_t inputs = 0;      ///< image, targets, output gradients of one micro-batch, loss result
  // ---- the step ----
  std::size_t activations = 0;         ///< kept by the layers from forward for backward (they stay allocated between steps)
  std::size_t forward_transient = 0;   ///< forward's high-water mark above state + activations (fuse temporaries)
  std::size_t backward_transient = 0;  ///< backward's (and the optimizer step's) high-water mark above it
  std::size_t peak_allocated = 0;      ///< state + activations + the larger transient: the allocator's peak_allocated
  std::size_t peak_reserved = 0;       ///< what the caching allocator would hold if it never released its cache
  /// The same quantities in exact requested bytes (no rounding, no block reuse): what a backend
  /// without a caching allocator (the host) allocates for the same code.
  struct Requested {
    std::size_t state = 0, activations = 0;
    std::size_t step_high_water = 0;  ///< the step's high-water mark above its start (activations held)
  } requested;
  /// Stated allowance for what the dry run cannot see (workspace_allowance_bytes()).
  std::size_t workspace_allowance = 0;

  /// Requested bytes by allocation site (the `ctx.tensor<T>()` line in the layer code): which
  /// role the memory plays. Sorted by bytes, largest first; sites with no bytes left out.
  struct SiteRow {
    std::string site;      ///< "nn/conv_bn.hpp:72 (forward)": header below include/ampkit, line, function
    std::size_t bytes = 0;
    std::size_t count = 0;  ///< live tensors from this site
  };
  std::vector<SiteRow> activation_sites;  ///< the activations kept between steps
  std::vector<SiteRow> peak_sites;        ///< everything above the state at the step's requested high-water mark

  std::size_t state() const { return weights + master + grads + optimizer + inputs; }
  /// What the step needs from free device memory.
  std::size_t total() const { return peak_allocated + workspace_allowance; }

  /// The printable breakdown (several lines, MiB).
  std::string table() const {
    const auto mib = [](std::size_t b) { return static_cast<double>(b) / (1024.0 * 1024.0); };
    char buf[256];
    std::string s;
    const auto line = [&](const char* name, std::size_t b, const char* what) {
      std::snprintf(buf, sizeof buf, "  %-22s %10.1f MiB  %s\n", name, mib(b), what);
      s += buf;
    };
    std::snprintf(buf, sizeof buf,
                  "memory plan: DEKR (%lld parameters), %s, batch %lld x accumulation %lld, input %lldx%lld\n",
                  static_cast<long long>(n_params), policy.c_str(), static_cast<long long>(request.batch_size),
                  static_cast<long long>(request.accumulative_counts), static_cast<long long>(request.input_w),
                  static_cast<long long>(request.input_h));
    s += buf;
    line("params (compute copy)", weights, policy == "fp32" ? "(fp32: the master is the compute copy)" : "");
    line("master (fp32)", master, "incl. BN running statistics");
    line("grads", grads, "");
    line("optimizer", optimizer, (optimizer_name + " state (+ fp32 accumulator)").c_str());
    line("inputs", inputs, "image, targets, output gradients");
    line("activations", activations, "kept for backward");
    line("transient (forward)", forward_transient, "");
    line("transient (backward)", backward_transient, "");
    line("peak allocated", peak_allocated, "dry run of the step code");
    line("workspace allowance", workspace_allowance, "cuDNN/deform scratch, cuBLAS, fragmentation");
    line("total", total(), "");
    return s;
  }

  /// activation_sites and peak_sites as a table (MiB, and MiB per image): --plan-detail.
  std::string detail() const {
    const auto mib = [](std::size_t b) { return static_cast<double>(b) / (1024.0 * 1024.0); };
    const double n = static_cast<double>(std::max<std::int64_t>(request.batch_size, 1));
    char buf[512];
    std::string s;
    const auto table = [&](const char* title, const std::vector<SiteRow>& rows) {
      std::size_t total = 0;
      for (const auto& r : rows) total += r.bytes;
      std::snprintf(buf, sizeof buf, "%s: %.1f MiB (%.1f MiB per image), requested bytes by allocation site\n", title,
                    mib(total), mib(total) / n);
      s += buf;
      for (const auto& r : rows) {
        std::snprintf(buf, sizeof buf, "  %10.1f MiB %8.2f MiB/img %5.1f %% %6zu x  %s\n", mib(r.bytes), mib(r.bytes) / n,
                      100.0 * static_cast<double>(r.bytes) / static_cast<double>(std::max<std::size_t>(total, 1)),
                      r.count, r.site.c_str());
        s += buf;
      }
    };
    table("activations kept for backward", activation_sites);
    table("above the state at the step's high-water mark", peak_sites);
    return s;
  }
};

namespace detail {
inline std::size_t rounded(std::int64_t numel, std::size_t elem, std::size_t granularity) {
  return numel > 0 ? CachingAllocator<meta::FakeRawMemory>::round_size(static_cast<std::size_t>(numel) * elem, granularity)
                   : 0;
}

/// Meta's live-by-site map as sorted rows (file names shortened to the part below include/ampkit/).
inline std::vector<MemoryPlan::SiteRow> site_rows(const std::map<meta::AllocationSite, meta::SiteBytes>& sites) {
  std::vector<MemoryPlan::SiteRow> rows;
  for (const auto& [site, b] : sites) {
    if (b.bytes == 0) continue;
    std::string file = site.file;
    if (const auto at = file.rfind("include/ampkit/"); at != std::string::npos) file = file.substr(at + 15);
    // The function's own name out of the compiler's full signature ("... Class<...>::name(args)").
    std::string fn = site.function;
    if (const auto paren = fn.find('('); paren != std::string::npos) fn.resize(paren);
    if (const auto colon = fn.rfind("::"); colon != std::string::npos) fn = fn.substr(colon + 2);
    rows.push_back({file + ":" + std::to_string(site.line) + " (" + fn + ")", b.bytes, b.count});
  }
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.bytes > b.bytes; });
  return rows;
}
}  // namespace detail

/// The stated allowance for what a dry run on ampkit::Meta cannot see, for a plan's peak:
///   - scratch a CUDA op takes inside itself at the peak moment (cuDNN workspaces, capped at
///     1 GiB per call by backend/cuda/conv2d.cuh but tens of MiB for the choices DEKR gets; the
///     deformable conv's fp32 dx scratch at the head, up to its 768 MiB budget; BN partials;
///     at a conv's first call in benchmark mode, cudnnFind*Ex's workspace, up to 192 MiB:
///     kFindWorkspaceBudget in backend/cuda/conv2d.cuh says why that fits in here; the padded
///     1x1 GEMM's staging (backend/cuda/conv1x1_gemm.cuh), one output-sized buffer for the
///     head's 480->255 conv: 256 MiB + <= 32 MiB GEMM workspace at fp16 batch 32, 512x512,
///     capped with it at the 1 GiB per-call limit);
///   - memory outside the allocator after the first step (cuBLAS workspace);
///   - fragmentation: the allocator frees its cache and retries before it reports out of memory,
///     so blocks of the wrong size cost little, but not nothing.
/// 256 MiB plus 5 % of the peak for 16-bit storage, plus 8 % for fp32: chosen against the H200
/// measurements (docs/amp_guide.md, "Out of memory"; tests/unit/models/memory_plan.cpp). fp32's
/// convs run cuDNN's FMA-math algorithms, whose workspaces grow with the batch: once the head's
/// backward stopped holding the neck-sized gradient (2026-11-30), those workspaces were +5.9 to
/// +7.7 % of the fp32 dry-run peak at batch 2-32, a few MiB over 5 % + 256 MiB at batch 10 and 32;
/// the 16-bit policies measured +3.1 to +5.9 % (+8.8 % at batch 2 with recompute_conv_outputs,
/// where 256 MiB covers it).
inline std::size_t workspace_allowance_bytes(std::size_t peak_allocated, std::size_t storage_bytes = 2) {
  return (std::size_t{256} << 20) + (storage_bytes >= 4 ? peak_allocated / 25 * 2 : peak_allocated / 20);
}

/// Dry-run one training step of DEKR with policy P (see the file comment).
/// @param rule the optimizer rule the run uses (its number of fp32 state slots per value)
template <PrecisionPolicy P, optim::OptimizerRule Rule = optim::Adam>
MemoryPlan plan_dekr_step(const MemoryPlanRequest& r, const Rule& rule = Rule{}) {
  using T = storage_t<P>;
  AMPKIT_CHECK(r.batch_size >= 1, "memory plan: batch size must be >= 1, got ", r.batch_size);
  AMPKIT_CHECK(r.accumulative_counts >= 1, "memory plan: accumulative_counts must be >= 1, got ", r.accumulative_counts);
  AMPKIT_CHECK(r.input_h > 0 && r.input_w > 0 && r.input_h % 32 == 0 && r.input_w % 32 == 0, "memory plan: input ",
               r.input_w, "x", r.input_h, " is not a positive multiple of 32 (HRNet)");
  AMPKIT_CHECK(r.n_steps >= 2, "memory plan: n_steps must be >= 2 (layers allocate their outputs in step 1)");
  MemoryPlan plan;
  plan.policy = std::string(policy_name_v<P>);
  plan.request = r;
  plan.optimizer_name = Rule::name();

  Meta ctx(r.allocator_granularity);
  const auto rounded = [&](std::int64_t numel, std::size_t elem) {
    return detail::rounded(numel, elem, r.allocator_granularity);
  };
  models::Dekr<P, Meta> model(ctx, r.model, 0);
  const auto& store = model.store();
  plan.n_params = model.n_params();
  // The store's flat buffers, named by role (nn/parameter_store.hpp lays them out).
  const std::int64_t nc = store.n_compute_slots(), nf = store.n_fp32_slots();
  const std::int64_t nb = std::max<std::int64_t>(store.buffers_all().numel(), 1);
  plan.master = rounded(nc + nf, sizeof(float)) + rounded(nb, sizeof(float));
  if constexpr (std::is_same_v<T, float>) {
    plan.weights = 0;
    plan.grads = rounded(nc + nf, sizeof(float));
  } else {
    plan.weights = rounded(nc, sizeof(T));
    plan.grads = rounded(nc, sizeof(T)) + rounded(nf, sizeof(float));
  }
  // The role split is read from the layout; the dry run must agree with it to the byte.
  AMPKIT_CHECK(ctx.memory_stats().allocated == plan.weights + plan.master + plan.grads,
               "memory plan: the parameter store allocated ", ctx.memory_stats().allocated, " B, its layout says ",
               plan.weights + plan.master + plan.grads, " B (nn/parameter_store.hpp changed: update memory_plan.hpp)");

  std::size_t mark = ctx.memory_stats().allocated;
  DekrLoss<P, Meta> loss(ctx);
  amp::AmpOptimizer<P, Rule, Meta> opt(ctx, model.store(), rule, amp::loss_scaler_t<P>{}, amp::StepOptions{},
                                       r.accumulative_counts);
  const std::size_t loss_bytes = rounded(4, sizeof(float));
  plan.optimizer = ctx.memory_stats().allocated - mark - loss_bytes;

  // The micro-batch tensors, as train/trainer.hpp allocates them.
  mark = ctx.memory_stats().allocated;
  const std::int64_t B = r.batch_size, H = r.input_h, W = r.input_w, h = H / 4, w = W / 4;
  const std::int64_t K = r.model.n_keypoints;
  const Shape img{B, H, W, r.model.backbone.in_channels}, hm{B, h, w, K + 1}, ds{B, h, w, 2 * K}, mk{B, h, w, 1};
  meta::MetaTensor<float> image_f;
  if (r.fp32_image_staging) image_f = ctx.tensor<float>(img);
  auto image = ctx.tensor<T>(img);
  auto gt_hm = ctx.tensor<float>(hm), gt_hmw = ctx.tensor<float>(hm);
  auto gt_ds = ctx.tensor<float>(ds), gt_dsw = ctx.tensor<float>(ds);
  auto mask = ctx.tensor<float>(mk);
  auto dL_dhm = ctx.tensor<T>(hm);
  auto dL_dds = ctx.tensor<T>(ds);
  plan.inputs = ctx.memory_stats().allocated - mark + loss_bytes;
  const std::size_t state = plan.state();
  AMPKIT_CHECK(ctx.memory_stats().allocated == state, "memory plan: internal accounting error (",
               ctx.memory_stats().allocated, " B allocated, ", state, " B accounted)");
  plan.requested.state = ctx.requested().live;
  ctx.track_sites();  // from here on every tensor is a step's (activations and transients)

  // The step, as the trainer runs it (forward, loss, loss backward, backward, step), n_steps times.
  for (int s = 0; s < r.n_steps; ++s) {
    const bool last = s + 1 == r.n_steps;
    if (last) ctx.reset_peak();
    const std::size_t at_start = ctx.memory_stats().allocated, req_at_start = ctx.requested().live;
    if (last) plan.activation_sites = detail::site_rows(ctx.live_by_site());
    const auto out = model.forward(ctx, image.cview(), /*training=*/true);
    const DekrLossInputs<T> in{out.heatmaps, out.displacements, gt_hm.cview(), gt_hmw.cview(),
                               mask.cview(),  gt_ds.cview(),    gt_dsw.cview()};
    loss.forward(ctx, in);
    if (last) {
      plan.activations = at_start - state;
      plan.forward_transient = ctx.memory_stats().peak_allocated - at_start;
      plan.requested.activations = req_at_start - plan.requested.state;
      plan.requested.step_high_water = ctx.requested().peak - req_at_start;
      plan.peak_sites = detail::site_rows(ctx.live_by_site_at_peak());
      ctx.reset_peak();
    }
    loss.backward(ctx, in, dL_dhm.view(), dL_dds.view(), 1.f, TensorView<const float>{});
    model.backward(ctx, dL_dhm.cview(), dL_dds.cview());
    if (r.accumulative_counts > 1) opt.end_micro_batch();
    opt.step();
    if (last) {
      plan.backward_transient = ctx.memory_stats().peak_allocated - at_start;
      if (ctx.requested().peak - req_at_start > plan.requested.step_high_water) {
        plan.requested.step_high_water = ctx.requested().peak - req_at_start;
        plan.peak_sites = detail::site_rows(ctx.live_by_site_at_peak());
      }
    }
  }
  // The peaks of the last step: the forward's was folded in before the reset.
  plan.peak_allocated = state + plan.activations + std::max(plan.forward_transient, plan.backward_transient);
  plan.peak_reserved = ctx.memory_stats().peak_reserved;
  plan.workspace_allowance = workspace_allowance_bytes(plan.peak_allocated, sizeof(T));
  return plan;
}

/// plan_dekr_step for a policy named at run time ("fp32", "fp16", "bf16").
inline MemoryPlan plan_dekr_step(std::string_view policy, const MemoryPlanRequest& r) {
  return dispatch_precision(policy, [&]<PrecisionPolicy P>() { return plan_dekr_step<P>(r); });
}

/// The one-line message when `plan` does not fit in `free_bytes`; empty when it fits.
/// `fp16_plan_total`: the same step's total under fp16 (0: unknown / already fp16 or bf16),
/// quoted in the advice when the plan is fp32.
inline std::string memory_plan_problem(const MemoryPlan& plan, std::size_t free_bytes, std::size_t fp16_plan_total = 0) {
  if (plan.total() <= free_bytes) return {};
  const auto mib = [](std::size_t b) { return (b + (std::size_t{1} << 20) - 1) >> 20; };
  const auto& r = plan.request;
  // The largest micro-batch that fits if activations and transients scale with the batch (they
  // do: every one is (N,H,W,C)) and the state does not.
  const std::size_t fixed = plan.state() - plan.inputs + plan.workspace_allowance;
  const std::size_t per_image = (plan.total() - fixed) / static_cast<std::size_t>(r.batch_size) + 1;
  // At most one less than now: the plan says the current batch does not fit, whatever the linear
  // estimate says (block rounding is not linear).
  const std::int64_t fit_batch =
      free_bytes > fixed ? std::min<std::int64_t>(static_cast<std::int64_t>((free_bytes - fixed) / per_image),
                                                  r.batch_size - 1)
                         : 0;
  std::string advice;
  if (fit_batch >= 1) {
    // Keep the effective batch exactly when a divisor of it is not much smaller than what fits;
    // otherwise round the accumulation up (the effective batch grows a little).
    const std::int64_t effective = r.batch_size * r.accumulative_counts;
    std::int64_t b = fit_batch;
    while (b > 1 && effective % b != 0) --b;
    if (2 * b < fit_batch) b = fit_batch;
    const std::int64_t acc = (effective + b - 1) / b;
    advice = ampkit::detail::concat("use train_cfg.batch_size = ", b, " with optim_wrapper.accumulative_counts = ", acc,
                                    " (effective batch ", b * acc,
                                    b * acc == effective ? std::string(", as now")
                                                         : ampkit::detail::concat(" instead of ", effective),
                                    ")");
  } else {
    advice = "even batch 1 does not fit: free device memory (other processes?) or reduce codec.input_size";
  }
  if (plan.policy == "fp32")
    advice += fp16_plan_total
                  ? ampkit::detail::concat("; or train with --amp (fp16 needs ", mib(fp16_plan_total), " MiB for this batch)")
                  : std::string("; or train with --amp / --precision bf16 (about half the activation memory)");
  advice += ampkit::detail::concat("; or a smaller codec.input_size (memory scales with the pixel count, ", r.input_w, "x",
                           r.input_h, " now)");
  return ampkit::detail::concat("out of device memory before the first step: the ", plan.policy, " step at batch ",
                        r.batch_size, ", input ", r.input_w, "x", r.input_h, " needs ", mib(plan.total()),
                        " MiB (state ", mib(plan.state()), ", activations ", mib(plan.activations), ", transient ",
                        mib(std::max(plan.forward_transient, plan.backward_transient)), ", allowance ",
                        mib(plan.workspace_allowance), ") but ", mib(free_bytes), " MiB are free. To fit: ", advice,
                        ".");
}

/// Throws ampkit::OutOfMemoryError with memory_plan_problem()'s message if the plan does not fit.
inline void check_memory_plan(const MemoryPlan& plan, std::size_t free_bytes, std::size_t fp16_plan_total = 0) {
  const std::string why = memory_plan_problem(plan, free_bytes, fp16_plan_total);
  if (!why.empty()) throw OutOfMemoryError(why);
}

}  // namespace ampkit::train

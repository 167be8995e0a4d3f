/// @brief The DEKR training loop, written once for every policy and both backends:
/// `run_training<P, Backend>(ctx, run)`. Epochs -> iterations -> one micro-batch each, with
/// mmengine's accumulation, schedule, logging, checkpoint and validation points.
///
/// Include the backend's ops before this header is instantiated (as for amp::AmpOptimizer):
///   host: ampkit/backend/host/dekr.hpp + ampkit/backend/host/amp_step.hpp
///   CUDA: ampkit/backend/cuda/dekr.cuh + ampkit/backend/cuda/amp_step.cuh
/// The calls below find the ops by argument-dependent lookup on the context.
///
/// One iteration, spelled out (DESIGN.md "one training step"):
///   batch -> backend tensors (image converted to the storage type)
///   forward (training BN) -> loss (fp32) -> dL/dpred = dL * scale / loss_factor (device scale)
///   backward (parameter gradients +=) -> count -> step (window end) or fold into fp32 accum
///   lr schedule after every iteration (mmengine ParamSchedulerHook), after every epoch
/// Nothing in the iteration waits for the host except the log points (every logger.interval
/// iterations the loss values and the scaler state are read back). With runtime.cuda_graph the
/// iteration's device work (convert .. step) is captured as CUDA graphs after an eager warm-up and
/// replayed (train/graph_mode.hpp).

#pragma once

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <sys/resource.h>

#include "ampkit/amp/amp_optimizer.hpp"
#include "ampkit/amp/grad_accumulation.hpp"
#include "ampkit/amp/loss_scaler.hpp"
#include "ampkit/core/error.hpp"
#include "ampkit/data/bottomup_dataset.hpp"
#include "ampkit/data/coco.hpp"
#include "ampkit/data/loader.hpp"
#include "ampkit/data/sampler.hpp"
#include "ampkit/loss/dekr_loss.hpp"
#include "ampkit/models/dekr.hpp"
#include "ampkit/nn/checkpoint.hpp"
#include "ampkit/optim/adam.hpp"
#include "ampkit/optim/lr_schedule.hpp"
#include "ampkit/optim/sgd.hpp"
#include "ampkit/precision.hpp"
#include "ampkit/train/checkpoint_manager.hpp"
#include "ampkit/train/config_schema.hpp"
#include "ampkit/train/data_parallel.hpp"
#include "ampkit/train/evaluate.hpp"
#include "ampkit/train/graph_mode.hpp"
#include "ampkit/train/launch.hpp"
#include "ampkit/train/memory_plan.hpp"
#include "ampkit/train/progress.hpp"
#include "ampkit/train/run_logger.hpp"

namespace ampkit::train {

/// What the application decided before entering the loop.
struct RunOptions {
  LoadedConfig config;
  std::string work_dir;
  bool resume = false;
  std::string resume_from;  ///< empty with resume: the latest valid checkpoint in the work dir
  int rank = 0, world_size = 1;
  /// The job's data parallelism (world_size > 1: required; see train/data_parallel.hpp).
  std::shared_ptr<DataParallel> data_parallel;
};

/// What a run did (for the demo's summary and tests).
struct TrainResult {
  std::int64_t iterations = 0;   ///< completed iterations (global)
  std::int64_t epochs = 0;       ///< completed epochs
  float last_loss = 0.f;
  float first_loss = 0.f;  ///< the loss at the run's first log point (this rank's micro-batch)
  std::int64_t skipped_steps = 0;
  std::string last_checkpoint;
  std::optional<EvalResult> last_val;  ///< the last validation (main rank), if any ran
  std::int64_t graph_replays = 0;      ///< iterations run as CUDA graph replays (runtime.cuda_graph)
  // data parallel runs only (world size > 1):
  std::int64_t optimizer_steps = 0;    ///< StepState::n_steps at the end
  std::int64_t gradient_syncs = 0;     ///< gradient averagings (must equal optimizer_steps)
  std::int64_t gradient_launches = 0;  ///< their grouped NCCL launches
  std::uint64_t weights_checksum = 0;  ///< FNV-1a of the fp32 master weights (equal on every rank)
};

// ---- config -> library settings ----------------------------------------------------------------
namespace detail {
template <class Range>
std::string value_text_of(const Range& r) {
  std::string s = "[";
  for (auto it = std::begin(r); it != std::end(r); ++it) s += (it == std::begin(r) ? "" : ", ") + std::to_string(*it);
  return s + "]";
}
}  // namespace detail

/// The model the config describes; the variant's widths must match `model.backbone_channels`.
inline models::DekrConfig dekr_config(const TrainConfig& c) {
  models::DekrConfig m = models::DekrConfig::by_name(c.model.variant);
  const auto& ch = m.backbone.stage4.channels;
  AMPKIT_CHECK(std::vector<std::int64_t>(ch.begin(), ch.end()) == c.model.backbone_channels, "config: model.variant '",
               c.model.variant, "' has stage-4 widths ", detail::value_text_of(ch), " but model.backbone_channels is ",
               detail::value_text_of(c.model.backbone_channels));
  m.n_keypoints = static_cast<int>(c.model.num_keypoints);
  m.heatmap_filters = c.model.num_heatmap_filters;
  m.displacement_filters_per_kpt = c.model.num_displacement_filters_per_keypoint;
  m.recompute_conv_outputs = c.model.recompute_conv_outputs;
  m.recompute_bn_outputs = c.model.recompute_bn_outputs;
  return m;
}

inline data::BottomupTrainConfig data_config(const TrainConfig& c) {
  data::BottomupTrainConfig d;
  d.affine.input_w = static_cast<int>(c.codec.input_size[0]);
  d.affine.input_h = static_cast<int>(c.codec.input_size[1]);
  d.affine.shift_factor = static_cast<float>(c.pipeline.shift_factor);
  d.affine.scale_min = static_cast<float>(c.pipeline.scale_factor[0]);
  d.affine.scale_max = static_cast<float>(c.pipeline.scale_factor[1]);
  d.affine.rotate_factor = static_cast<float>(c.pipeline.rotate_factor);
  d.affine.flip_prob = static_cast<float>(c.pipeline.flip_prob);
  d.spr.n_keypoints = static_cast<int>(c.model.num_keypoints);
  d.spr.sigma_root = static_cast<int>(c.codec.sigma[0]);
  d.spr.sigma_keypoint = static_cast<int>(c.codec.sigma[1]);
  AMPKIT_CHECK(d.spr.sigma_root == c.codec.sigma[0] && d.spr.sigma_keypoint == c.codec.sigma[1],
               "config: codec.sigma must be whole heatmap pixels (the SPR codec truncates at 3 sigma), given ",
               c.codec.sigma[0], ", ", c.codec.sigma[1]);
  d.spr.minimal_diagonal = static_cast<float>(c.codec.minimal_diagonal_length);
  d.spr.background_weight = static_cast<float>(c.codec.background_weight);
  return d;
}

inline optim::Adam adam_rule(const OptimizerConfig& o) {
  AMPKIT_CHECK(o.type == "Adam" || o.type == "AdamW", "optimizer.type '", o.type, "' is not Adam or AdamW");
  optim::AdamConfig a{o.betas[0], o.betas[1], o.eps, o.weight_decay, o.type == "AdamW"};
  return optim::Adam{a};
}

/// torch.optim.SGD(lr, momentum, dampening, weight_decay, nesterov), as mmengine builds it.
inline optim::Sgd sgd_rule(const OptimizerConfig& o) {
  AMPKIT_CHECK(o.type == "SGD", "optimizer.type '", o.type, "' is not SGD");
  optim::Sgd r{optim::SgdConfig{o.momentum, o.dampening, o.nesterov, o.weight_decay}};
  r.config.validate();
  return r;
}

template <PrecisionPolicy P>
amp::loss_scaler_t<P> loss_scaler(const AmpConfig& a) {
  amp::loss_scaler_t<P> s{};
  if constexpr (amp::loss_scaler_t<P>::kScales) {
    s.config.mode = a.loss_scale.dynamic ? amp::ScaleMode::kDynamic : amp::ScaleMode::kStatic;
    s.config.init_scale = static_cast<float>(a.loss_scale.dynamic ? a.init_scale : a.loss_scale.value);
    s.config.growth_factor = a.growth_factor;
    s.config.backoff_factor = a.backoff_factor;
    s.config.growth_interval = static_cast<std::int32_t>(a.growth_interval);
    s.config.min_scale = static_cast<float>(a.min_loss_scale);
  }
  return s;
}

inline optim::LrSchedule lr_schedule(const TrainConfig& c) {
  std::vector<optim::SchedulerSpec> specs;
  if (c.param_scheduler.warmup_iters > 0)
    specs.push_back(optim::LinearLR{c.param_scheduler.warmup_start_factor, 1.0, 0, c.param_scheduler.warmup_iters, false});
  if (!c.param_scheduler.milestones.empty())
    specs.push_back(optim::MultiStepLR{c.param_scheduler.milestones, c.param_scheduler.gamma, 0, c.train_cfg.max_epochs, true});
  return optim::LrSchedule(c.optimizer.lr, std::move(specs),
                           c.param_scheduler.warmup_stepping == "update" ? optim::IterStepping::kEveryUpdate
                                                                          : optim::IterStepping::kEveryIteration);
}

// ---- stop requests (SIGINT / SIGTERM save a checkpoint, then exit) ------------------------------
namespace detail {
inline volatile std::sig_atomic_t g_stop_signal = 0;
extern "C" inline void on_stop_signal(int sig) { g_stop_signal = sig; }

/// Device memory high-water mark when the backend keeps one (CUDA caching allocator).
template <class Backend>
std::optional<double> peak_memory_mib(Backend& ctx) {
  if constexpr (requires { ctx.allocator().stats().peak_allocated; })
    return static_cast<double>(ctx.allocator().stats().peak_allocated) / (1024.0 * 1024.0);
  else
    return std::nullopt;
}

/// The process's peak resident set (MiB; getrusage, Linux reports KiB): the only memory figure of
/// the host backend, logged as `peak_rss_mib` (whole process: model, data, loader workers'
/// buffers), never as device memory.
inline double peak_rss_mib() {
  rusage u{};
  return ::getrusage(RUSAGE_SELF, &u) == 0 ? static_cast<double>(u.ru_maxrss) / 1024.0 : -1.0;
}
}  // namespace detail

/// Train DEKR as `run.config` says, on `ctx`, with policy P. Rank 0 writes the logs and the
/// checkpoints. Throws ampkit::Error with one clear line on bad input.
/// @tparam P        precision policy (chosen by the binary's top level: dispatch_precision)
/// @tparam Backend  ampkit::Host or ampkit::Cuda
namespace detail {

/// The whole run with the optimizer rule as a compile-time type (the update is fused into the
/// step's kernels); run_training picks it from optimizer.type.
template <PrecisionPolicy P, class Backend, optim::OptimizerRule Rule>
TrainResult run_training_with(Backend& ctx, const RunOptions& run, RunLogger& log, const Rule& rule) {
  using T = storage_t<P>;
  const TrainConfig& cfg = run.config.config;
  const bool main_rank = run.rank == 0;
  DataParallel* const dp = run.world_size > 1 ? run.data_parallel.get() : nullptr;
  AMPKIT_CHECK(run.world_size == 1 || (dp && dp->world_size() == run.world_size && dp->rank() == run.rank),
               "run_training: world size ", run.world_size, " needs a DataParallel of the same rank layout "
               "(multi-process training runs on the CUDA backend, built by dekr_amp from the launch environment)");

  // ---- data ----
  const std::string ann = cfg.data.data_root + cfg.data.train_ann_file;
  const std::string img_root = cfg.data.data_root + cfg.data.train_img_prefix;
  AMPKIT_CHECK(std::filesystem::exists(ann), "data: annotation file '", ann,
               "' not found (set data.data_root / data.train_ann_file, e.g. --cfg-options data.data_root=/data/coco/)");
  if (cfg.train_cfg.val_interval > 0) {  // fail now, not after the first val_interval epochs
    const std::string val_ann = cfg.data.data_root + cfg.data.val_ann_file;
    AMPKIT_CHECK(std::filesystem::exists(val_ann), "data: val annotation file '", val_ann,
                 "' not found (set data.val_ann_file, or train_cfg.val_interval = 0 to train without validation)");
  }
  auto dataset = std::make_shared<data::BottomupCocoDataset>(data::CocoKeypoints::load(ann, img_root), data_config(cfg));
  AMPKIT_CHECK(dataset->size() > 0, "data: '", ann, "' has no image with a person annotation");
  const data::DistributedSampler sampler(dataset->size(), run.world_size, run.rank, true,
                                         static_cast<std::uint64_t>(cfg.randomness.seed));
  data::LoaderConfig lcfg;
  lcfg.batch_size = static_cast<int>(cfg.train_cfg.batch_size);
  lcfg.n_workers = static_cast<int>(cfg.train_cfg.num_workers);
  lcfg.prefetch = static_cast<int>(cfg.train_cfg.prefetch);
  lcfg.seed = static_cast<std::uint64_t>(cfg.randomness.seed);
  lcfg.bad_sample = cfg.data.bad_sample == "skip" ? data::BadSamplePolicy::kSkip : data::BadSamplePolicy::kThrow;
  // Field order: image, heatmaps, heatmap weights, displacements, displacement weights, mask.
  const std::vector<Shape> shapes = {dataset->image_shape(), dataset->heatmap_shape(), dataset->heatmap_shape(),
                                     dataset->displacement_shape(), dataset->displacement_shape(),
                                     dataset->mask_shape()};
  data::Loader<> loader(lcfg, shapes, [dataset](std::size_t i, data::SampleRng& rng, std::span<const TensorView<float>> v) {
    dataset->train_sample(i, rng, {v[0], {v[1], v[2], v[3], v[4]}, v[5]});
  });
  const std::int64_t B = cfg.train_cfg.batch_size;
  const std::int64_t iters_per_epoch = (static_cast<std::int64_t>(sampler.num_samples()) + B - 1) / B;
  std::int64_t max_iters = cfg.train_cfg.max_epochs * iters_per_epoch;
  if (cfg.train_cfg.max_iters > 0) max_iters = std::min(max_iters, cfg.train_cfg.max_iters);

  // ---- memory plan: known before anything is allocated; fails here, not in the first step ----
  const std::int64_t accum_buffers = dp ? std::max<std::int64_t>(2, cfg.optim_wrapper.accumulative_counts)
                                        : cfg.optim_wrapper.accumulative_counts;
  {
    MemoryPlanRequest req;
    req.model = dekr_config(cfg);
    req.batch_size = B;
    req.input_w = cfg.codec.input_size[0];
    req.input_h = cfg.codec.input_size[1];
    req.accumulative_counts = accum_buffers;  // > 1: the fp32 accumulator exists (as AmpOptimizer below)
    const MemoryPlan plan = plan_dekr_step<P>(req, rule);
    if (main_rank) {
      const std::string t = plan.table();
      for (std::size_t a = 0, b; a < t.size(); a = b + 1) {
        b = t.find('\n', a);
        if (b == std::string::npos) b = t.size();
        if (b > a) log.info(t.substr(a, b - a));
      }
    }
    // Device backends report free memory through their allocator's raw system (CUDA:
    // cudaMemGetInfo); the host backend has no device memory to check.
    if constexpr (requires { ctx.allocator().raw().free_bytes(); }) {
      const std::size_t free_bytes = ctx.allocator().raw().free_bytes();
      std::size_t fp16_total = 0;
      if (std::is_same_v<storage_t<P>, float> && !memory_plan_problem(plan, free_bytes).empty())
        fp16_total = plan_dekr_step<AmpFp16>(req, rule).total();
      check_memory_plan(plan, free_bytes, fp16_total);
    }
  }

  // ---- model, loss, optimizer, schedule ----
  models::Dekr<P, Backend> model(ctx, dekr_config(cfg), static_cast<std::uint64_t>(cfg.randomness.seed));
  if (!cfg.model.pretrained.empty()) {
    const auto f = nn::load_checkpoint(cfg.model.pretrained, model.store(), ctx, /*strict=*/false);
    log.info("loaded pretrained weights from " + cfg.model.pretrained + " (" + std::to_string(f.size()) + " tensors)");
  }
  DekrLoss<P, Backend> loss(ctx, {static_cast<float>(cfg.loss.heatmap_weight),
                                  static_cast<float>(cfg.loss.displacement_weight), static_cast<float>(cfg.loss.beta)});
  amp::StepOptions step_opts;
  if (cfg.optim_wrapper.clip_grad_max_norm > 0) step_opts.clip = optim::ClipGradConfig::norm(cfg.optim_wrapper.clip_grad_max_norm);
  // Distributed under fp16/bf16: the fp32 micro-batch accumulator always exists (accum_buffers
  // above), because the gradients are averaged in fp32 (DataParallel; an fp16 sum over ranks can
  // overflow).
  amp::AmpOptimizer<P, Rule, Backend> opt(ctx, model.store(), rule, loss_scaler<P>(cfg.amp), step_opts, accum_buffers);
  optim::LrSchedule schedule = lr_schedule(cfg);
  amp::GradAccumulation accum(cfg.optim_wrapper.accumulative_counts);
  const std::int64_t n_slot_floats = opt.rule().n_slots() * (model.store().n_compute_slots() + model.store().n_fp32_slots());

  // ---- checkpoints and resume ----
  CheckpointManager ckpts(run.work_dir, cfg.checkpoint.max_keep_ckpts);
  if (main_rank)
    for (const auto& f : ckpts.remove_stale_temps()) log.info("removed " + f + " (left by a writer that was killed mid-save)");
  const std::string config_text = to_toml(cfg);
  std::int64_t start_iter = 0;
  // The scaler/optimizer state of the last step, as the log points show it. A resumed run starts
  // from the checkpoint's (the state after its last step), so that log points before the first
  // window end show what the uninterrupted run shows (resume bit-exactness covers the logs too).
  std::optional<amp::StepStats> last_stats;
  if (run.resume) {
    std::string path = run.resume_from;
    if (path.empty()) {
      const auto found = ckpts.find_resume([&](const std::string& s) { log.warn(s); });
      AMPKIT_CHECK(found.has_value(), "--resume: no complete checkpoint in '", run.work_dir,
                   "' (train without --resume to start a new run)");
      path = *found;
    }
    const std::string why = checkpoint_problem(path);
    AMPKIT_CHECK(why.empty(), "--resume '", path, "': ", why);
    const auto f = nn::load_checkpoint(path, model.store(), ctx, /*strict=*/true);
    const auto& meta = f.metadata();
    // fp32 <-> AMP share fp32 master weights, so a checkpoint of another policy converts exactly;
    // the optimizer state is fp32 under every policy. Another model is refused.
    AMPKIT_CHECK(!meta.contains("ampkit.model") || meta.at("ampkit.model") == cfg.model.variant, "--resume '", path,
                 "' holds a DEKR-", meta.at("ampkit.model"), " but the config builds DEKR-", cfg.model.variant);
    if (meta.contains("ampkit.policy") && meta.at("ampkit.policy") != policy_name_v<P>)
      log.info("resume: converting a " + meta.at("ampkit.policy") + " checkpoint to " +
               std::string(policy_name_v<P>) + " (the fp32 master weights and optimizer state carry over exactly)");
    // The state slots mean different things under another rule (Adam's moments are not a
    // momentum buffer): refuse instead of continuing with garbage.
    AMPKIT_CHECK(!meta.contains("ampkit.optimizer") || meta.at("ampkit.optimizer") == cfg.optimizer.type, "--resume '",
                 path, "' was trained with optimizer.type = ", meta.at("ampkit.optimizer"),
                 ", the config says ", cfg.optimizer.type, " (resume with the same optimizer, or start a new run "
                 "from its weights with model.pretrained)");
    const auto slots = f.template read<float>("optimizer.state");
    AMPKIT_CHECK(static_cast<std::int64_t>(slots.size()) == n_slot_floats, "--resume '", path, "': optimizer state has ",
                 slots.size(), " values, this model needs ", n_slot_floats);
    ctx.copy_to_device(TensorView<float>(opt.optimizer_state(), Shape{1, 1, 1, n_slot_floats}), std::span<const float>(slots));
    const auto state_bytes = f.template read<std::uint8_t>("amp.step_state");
    AMPKIT_CHECK(state_bytes.size() == sizeof(amp::StepState), "--resume '", path, "': step state has ",
                 state_bytes.size(), " bytes, expected ", sizeof(amp::StepState));
    amp::StepState st;
    std::memcpy(&st, state_bytes.data(), sizeof st);
    ctx.copy_to_device(TensorView<amp::StepState>(opt.state(), Shape{1, 1, 1, 1}), std::span<const amp::StepState>(&st, 1));
    if (st.n_steps > 0) last_stats = amp::StepStats{st};
    start_iter = std::stoll(meta.at("ampkit.iter"));
    // Another world size (or batch size) changes the iterations per epoch: map to an epoch start.
    const auto rp = resume_point(std::stoll(meta.at("ampkit.epoch")), start_iter,
                                 meta.contains("ampkit.iters_per_epoch") ? std::stoll(meta.at("ampkit.iters_per_epoch")) : 0,
                                 iters_per_epoch);
    if (rp.moved) log.warn("resume: " + rp.note);
    start_iter = rp.iter;
    // Replay which iterations stepped (the accumulation pattern is a pure function of the count).
    amp::GradAccumulation replay(cfg.optim_wrapper.accumulative_counts);
    replay.initialize(0, max_iters, false, [](std::string_view) {});
    schedule.fast_forward(start_iter, iters_per_epoch, [&](std::int64_t) {
      replay.count_backward();
      return replay.should_update();
    });
    log.info("resumed from " + path + " at iteration " + std::to_string(start_iter) + " (epoch " +
             std::to_string(start_iter / iters_per_epoch + 1) + "), lr " + std::to_string(schedule.lr()));
  }
  accum.initialize(start_iter, max_iters, /*model_has_batch_norm=*/true, [&](std::string_view w) { log.warn(std::string(w)); });
  model.store().zero_grad(ctx);
  if (dp) {  // every replica starts from rank 0's state (fresh, pretrained or resumed)
    // fold: the overlapped backward folds each finished gradient bucket of the window's last
    // micro-batch into the fp32 accumulator (fp16/bf16) just before its all-reduce.
    dp->attach(replica_buffers(model.store(), opt.flat().grad_accum,
                               std::span<float>(opt.optimizer_state(), static_cast<std::size_t>(n_slot_floats)),
                               opt.state(), [&opt](std::size_t b, std::size_t e) {
                                 opt.end_micro_batch(static_cast<std::int64_t>(b), static_cast<std::int64_t>(e));
                               }));
    // Each layer's backward reports its finished parameters (nn::ParameterStore's hook).
    model.store().set_grad_ready_observer(
        [dp](nn::ParamId first, int n) { dp->grads_ready(static_cast<std::size_t>(first.index), static_cast<std::size_t>(n)); });
    dp->broadcast_from_rank0();
    if (cfg.runtime.sync_bn) {
      AMPKIT_CHECK(dp->enable_sync_batch_norm(), "runtime.sync_bn = true: this data-parallel implementation has no "
                   "SyncBatchNorm; set runtime.sync_bn = false");
      if (main_rank)
        log.info("SyncBatchNorm: every BatchNorm normalises with the global batch (" + std::to_string(B) + " x " +
                 std::to_string(run.world_size) + " images)");
    }
    model.store().sync_compute(ctx);
  } else if (cfg.runtime.sync_bn && main_rank) {
    log.info("runtime.sync_bn has no effect in one process (the batch is already the global batch)");
  }

  const auto save = [&](const std::string& path, std::int64_t epoch, std::int64_t iter) -> std::string {
    safetensors::Writer w;
    nn::write_state(model.store(), ctx, w);
    const auto slots = ctx.to_host(TensorView<const float>(opt.optimizer_state(), Shape{1, 1, 1, n_slot_floats}));
    w.add<float>("optimizer.state", std::span<const float>(slots.data(), static_cast<std::size_t>(n_slot_floats)),
                 {n_slot_floats});
    const auto st = ctx.to_host(TensorView<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(opt.state()),
                                                                Shape{1, 1, 1, sizeof(amp::StepState)}));
    w.add<std::uint8_t>("amp.step_state", std::span<const std::uint8_t>(st.data(), sizeof(amp::StepState)),
                        {static_cast<std::int64_t>(sizeof(amp::StepState))});
    w.metadata("ampkit.policy", std::string(policy_name_v<P>));
    w.metadata("ampkit.model", cfg.model.variant);
    w.metadata("ampkit.optimizer", cfg.optimizer.type);
    w.metadata("ampkit.config", config_text);
    w.metadata("ampkit.iters_per_epoch", std::to_string(iters_per_epoch));
    w.metadata("ampkit.world_size", std::to_string(run.world_size));
    for (const auto& r : ckpts.save(w, path, epoch, iter)) log.info("removed old checkpoint " + r);
    log.info("saved checkpoint " + path);
    return path;
  };

  // ---- backend tensors of one batch ----
  const Shape img_s = dataset->image_shape(), hm_s = dataset->heatmap_shape(), ds_s = dataset->displacement_shape(),
              mk_s = dataset->mask_shape();
  const auto batched = [&](Shape s, std::int64_t n) { return Shape{n, s.h, s.w, s.c}; };
  auto image_f = ctx.template tensor<float>(batched(img_s, B));
  auto image = ctx.template tensor<T>(batched(img_s, B));
  auto gt_hm = ctx.template tensor<float>(batched(hm_s, B));
  auto gt_hmw = ctx.template tensor<float>(batched(hm_s, B));
  auto gt_ds = ctx.template tensor<float>(batched(ds_s, B));
  auto gt_dsw = ctx.template tensor<float>(batched(ds_s, B));
  auto mask = ctx.template tensor<float>(batched(mk_s, B));
  auto dL_dhm = ctx.template tensor<T>(batched(hm_s, B));
  auto dL_dds = ctx.template tensor<T>(batched(ds_s, B));
  const auto first_n = [&](auto& t, Shape s, std::int64_t n) { return TensorView<std::remove_cvref_t<decltype(*t.data())>>(t.data(), batched(s, n)); };

  // runtime.cuda_graph: the iteration's device work captured as CUDA graphs after an eager
  // warm-up, then replayed (train/graph_mode.hpp: what is captured, the fallbacks). What changes
  // per iteration reaches a replay through device memory: the batch is uploaded into the buffers
  // above (the same addresses at every full batch), the lr is written into StepState by
  // opt.set_lr before the replay, the scaler state and counters live in StepState.
  // Data parallel: the window end's collectives are captured into the step graph when the
  // DataParallel can (NCCL can); every rank captures at the same iteration and agrees on it.
  const bool dp_capture = dp && dp->supports_graph_capture();
  GraphCollectiveHooks graph_hooks;
  if (dp_capture) {
    graph_hooks.begin_capture = [dp](bool updated) { dp->begin_capture(updated); };
    graph_hooks.end_capture = [dp](bool ok) { return dp->end_capture(ok); };
    graph_hooks.replayed = [dp](bool updated) { dp->graph_replayed(updated); };
  }
  StepGraphRunner<Backend> graphs(
      ctx,
      GraphPlanConfig{cfg.runtime.cuda_graph, true, run.world_size, B, cfg.optim_wrapper.accumulative_counts, dp_capture},
      [&](const std::string& s) {
        if (main_rank) log.info(s);
      },
      std::move(graph_hooks));

  // ---- the loop ----
  std::signal(SIGINT, detail::on_stop_signal);
  std::signal(SIGTERM, detail::on_stop_signal);
  TrainResult result;
  EtaEstimator eta;
  std::int64_t iter = start_iter;
  std::int64_t interval_images = 0;
  double interval_data = 0.0;
  auto interval_start = std::chrono::steady_clock::now();
  std::optional<ValSet> val_set;  // loaded at the first validation
  bool logged_once = false;       // result.first_loss is set
  const std::int64_t start_epoch = start_iter / iters_per_epoch;
  const std::int64_t max_epochs = (max_iters + iters_per_epoch - 1) / iters_per_epoch;
  if (main_rank)
    log.info("training: " + std::to_string(dataset->size()) + " images, " + std::to_string(iters_per_epoch) +
             " iterations per epoch, " + std::to_string(max_iters) + " iterations, batch " + std::to_string(B) +
             " x " + std::to_string(run.world_size) + " process(es) x accumulation " +
             std::to_string(cfg.optim_wrapper.accumulative_counts) + " = effective batch " +
             std::to_string(B * run.world_size * cfg.optim_wrapper.accumulative_counts));

  for (std::int64_t epoch = start_epoch; epoch < max_epochs && iter < max_iters; ++epoch) {
    loader.begin_epoch(static_cast<std::uint64_t>(epoch), sampler.indices(static_cast<std::uint64_t>(epoch)));
    std::int64_t in_epoch = 0;
    auto t_wait = std::chrono::steady_clock::now();
    while (auto batch = loader.next()) {
      if (epoch * iters_per_epoch + in_epoch < start_iter) {  // resume inside an epoch: skip done batches
        ++in_epoch;
        continue;
      }
      const auto t_got = std::chrono::steady_clock::now();
      interval_data += std::chrono::duration<double>(t_got - t_wait).count();
      const std::int64_t n = batch->n;

      // batch -> backend: targets stay fp32; the image becomes the storage type.
      // Uploads must not synchronise: a wait here would make every iteration cost the device's
      // time PLUS the host's launch time (on the H200, 2026-11-30: W32 fp16 batch 2 trained at
      // 14 img/s with a synchronising copy_to_device; bench/dekr_step.cu, which never waits, runs
      // the same step at 32 img/s).
      const auto up = [&](auto& dst, Shape s, int field) {
        const std::span<const float> src(batch->fields[static_cast<std::size_t>(field)].data,
                                         static_cast<std::size_t>(batched(s, n).numel()));
        if constexpr (requires { ctx.upload(first_n(dst, s, n), src); })
          ctx.upload(first_n(dst, s, n), src);
        else
          ctx.copy_to_device(first_n(dst, s, n), src);
      };
      up(image_f, img_s, 0);
      up(gt_hm, hm_s, 1);
      up(gt_hmw, hm_s, 2);
      up(gt_ds, ds_s, 3);
      up(gt_dsw, ds_s, 4);
      up(mask, mk_s, 5);

      // forward, loss, backward: one micro-batch
      const double lr_used = schedule.lr();  // logged: the lr this iteration trained with
      opt.set_lr(lr_used);  // eagerly, also in graph mode: a replay reads the lr from StepState
      // Whether this micro-batch ends its window: should_sync() before the backward equals
      // should_update() after it (checked below); the graphs differ by it (fold vs. step).
      const bool updated = accum.should_sync();
      // The iteration's device work: eagerly, or captured once and then replayed (runtime.cuda_graph;
      // the lambda then runs only at the capture, which executes nothing by itself).
      graphs.run(n, accum.loss_factor(), updated, [&] {
        convert_copy(ctx, TensorView<const float>(first_n(image_f, img_s, n)), first_n(image, img_s, n));
        const auto out = model.forward(ctx, TensorView<const T>(first_n(image, img_s, n)), /*training=*/true);
        const DekrLossInputs<T> in{out.heatmaps, out.displacements,
                                   first_n(gt_hm, hm_s, n), first_n(gt_hmw, hm_s, n), first_n(mask, mk_s, n),
                                   first_n(gt_ds, ds_s, n), first_n(gt_dsw, ds_s, n)};
        loss.forward(ctx, in);
        // The seed is scale / loss_factor (mmengine divides the loss by the accumulation count).
        const float factor = 1.f / static_cast<float>(accum.loss_factor());
        TensorView<const float> scale{};
        if constexpr (PrecisionTraits<P>::needs_loss_scaling) scale = TensorView<const float>(opt.scale_ptr(), Shape{1, 1, 1, 1});
        loss.backward(ctx, in, first_n(dL_dhm, hm_s, n), first_n(dL_dds, ds_s, n), factor, scale);
        // Data parallel, window end: the gradient all-reduce overlaps this backward (unless
        // AMPKIT_DDP_OVERLAP=0), bucket by bucket as the layers report their gradients.
        const bool overlapped = dp && dp->begin_backward(updated);
        model.backward(ctx, TensorView<const T>(first_n(dL_dhm, hm_s, n)), TensorView<const T>(first_n(dL_dds, ds_s, n)));
        AMPKIT_CHECK(!overlapped || updated, "trainer: the overlapped all-reduce ran on a micro-batch that does not end "
                     "its accumulation window (iteration ", iter, ")");
        if (updated && dp) {
          // Window end: fold into the fp32 gradient (done per bucket during an overlapped
          // backward), average it over ranks, then the step with the non-finite flag max-reduced
          // between check and finalize (no host sync anywhere).
          if (!overlapped) opt.end_micro_batch();
          dp->average_gradients();
          opt.step([dp](amp::GradPartial* partials, int n) { dp->reduce_step_check(partials, n); });
        } else if (updated) {
          opt.step();
        } else {
          opt.end_micro_batch();  // no_sync: gradients accumulate locally
        }
      });
      accum.count_backward();
      AMPKIT_CHECK(accum.should_update() == updated, "trainer: should_sync() before the backward (", updated,
                   ") disagrees with should_update() after it at iteration ", iter);
      schedule.after_iteration(updated);
      ++iter;
      ++in_epoch;
      interval_images += n * run.world_size;

      // ---- log point (the only host synchronisation of the loop) ----
      if (iter % cfg.logger.interval == 0 || iter == max_iters || detail::g_stop_signal) {
        // Enqueue the read of the step state BEFORE the loss read-back synchronises the stream:
        // the copy has landed when values() returns, so the line shows this very step's scale,
        // skips and grad norm (polling right after an async request showed stats several log
        // intervals old on the GPU), and it costs no extra synchronisation.
        const bool asked = opt.request_stats();
        const auto v = loss.values(ctx);
        if (asked)  // poll throws if the loss scale collapsed; before the first step there is nothing to show
          if (auto s = opt.poll_stats(); s && s->n_steps() > 0) last_stats = s;
        const auto now = std::chrono::steady_clock::now();
        const double dt = std::chrono::duration<double>(now - interval_start).count();
        const std::int64_t n_it = std::max<std::int64_t>(1, iter % cfg.logger.interval ? iter % cfg.logger.interval
                                                                                         : cfg.logger.interval);
        eta.add(dt / static_cast<double>(n_it));
        ProgressInfo p;
        p.epoch = epoch + 1;
        p.max_epochs = max_epochs;
        p.iter_in_epoch = in_epoch;
        p.iters_per_epoch = iters_per_epoch;
        p.global_iter = iter;
        p.max_iters = max_iters;
        p.lr = lr_used;
        p.losses = {{"loss", v.total}, {"heatmap", v.heatmap}, {"displacement", v.displacement}};
        if (last_stats) {
          if constexpr (PrecisionTraits<P>::needs_loss_scaling) {
            p.loss_scale = last_stats->scale();
            p.skipped = std::pair{last_stats->n_skipped(), last_stats->n_steps()};
          }
          p.grad_norm = last_stats->grad_norm();
        }
        p.step_time = dt / static_cast<double>(n_it);
        p.data_time = interval_data / static_cast<double>(n_it);
        p.images_per_second = dt > 0 ? static_cast<double>(interval_images) / dt : 0.0;
        p.memory_mib = detail::peak_memory_mib(ctx);
        p.eta_seconds = eta.eta(max_iters - iter);
        if (main_rank) {
          log.progress(p);
          std::vector<std::pair<std::string, double>> sc = {{"loss", v.total}, {"loss/heatmap", v.heatmap},
                                                            {"loss/displacement", v.displacement}, {"lr", p.lr},
                                                            {"time", p.step_time}, {"data_time", p.data_time},
                                                            {"img_per_s", p.images_per_second}};
          if (p.loss_scale) sc.emplace_back("loss_scale", *p.loss_scale);
          if (p.skipped) sc.emplace_back("skipped_steps", static_cast<double>(p.skipped->first));
          if (p.grad_norm) sc.emplace_back("grad_norm", *p.grad_norm);
          if (p.memory_mib) sc.emplace_back("memory_mib", *p.memory_mib);
          if (const double rss = detail::peak_rss_mib(); rss >= 0) sc.emplace_back("peak_rss_mib", rss);
          log.scalars("train", iter, sc, {{"epoch", epoch + 1}, {"iter", in_epoch}});
        }
        AMPKIT_CHECK(std::isfinite(v.total), "the loss is ", v.total, " at iteration ", iter,
                     ": training diverged (lower optimizer.lr, check the data, or use --precision bf16/fp32)");
        if (!logged_once) result.first_loss = v.total;
        logged_once = true;
        result.last_loss = v.total;
        if (last_stats) result.skipped_steps = last_stats->n_skipped();
        interval_start = now;
        interval_images = 0;
        interval_data = 0.0;
      }
      if (cfg.checkpoint.iter_interval > 0 && iter % cfg.checkpoint.iter_interval == 0) {
        if (main_rank) result.last_checkpoint = save(ckpts.iter_path(iter), epoch, iter);
        if (dp) dp->wait_for_main("rank 0's checkpoint");
      }
      if (detail::g_stop_signal) {
        if (main_rank) {
          log.warn("signal " + std::to_string(static_cast<int>(detail::g_stop_signal)) +
                   ": saving a checkpoint before exit (resume with --resume)");
          result.last_checkpoint = save(ckpts.iter_path(iter), epoch, iter);
        }
        AMPKIT_FAIL("stopped by signal ", static_cast<int>(detail::g_stop_signal), " at iteration ", iter,
                    "; resume with --resume");
      }
      if (iter >= max_iters) break;
      t_wait = std::chrono::steady_clock::now();
    }
    if (const auto rep = loader.report(); rep.n_skipped > 0 && main_rank)
      log.warn("epoch " + std::to_string(epoch + 1) + ": " + std::to_string(rep.n_skipped) +
               " bad samples replaced (data.bad_sample = skip); first: " +
               (rep.messages.empty() ? std::string("?") : rep.messages.front()));
    schedule.after_epoch();
    const bool epoch_done = in_epoch == iters_per_epoch || iter >= max_iters;
    if (!epoch_done) break;
    result.epochs = epoch + 1;
    const bool last = iter >= max_iters;
    if (dp) dp->average_buffers();  // mmengine's SyncBuffersHook: BN running statistics, every epoch
    if (main_rank && ((epoch + 1) % cfg.checkpoint.interval == 0 || last))
      result.last_checkpoint = save(ckpts.epoch_path(epoch + 1), epoch + 1, iter);
    if (cfg.train_cfg.val_interval > 0 && ((epoch + 1) % cfg.train_cfg.val_interval == 0 || last)) {
      // Validation on the main rank only (mmpose evaluates on every rank's shard and gathers;
      // here rank 0 decodes the whole val set). Multi-process runs: the other ranks must wait for
      // it (a barrier after this block) before the next epoch's collectives.
      if (main_rank) {
        if (!val_set) val_set = ValSet::load(cfg);
        EvalOptions vo;
        vo.results_path = val_results_path(run.work_dir, epoch + 1);
        vo.step = iter;
        vo.epoch = epoch + 1;
        result.last_val = run_evaluation<P, Backend>(ctx, model, cfg, log, vo, &*val_set);
      }
    }
    if (dp) dp->wait_for_main("rank 0's end-of-epoch checkpoint / validation");
  }
  result.iterations = iter;
  result.graph_replays = graphs.n_replays();
  if (dp) {
    const auto st = ctx.to_host(TensorView<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(opt.state()),
                                                                Shape{1, 1, 1, sizeof(amp::StepState)}));
    amp::StepState s;
    std::memcpy(&s, st.data(), sizeof s);
    result.optimizer_steps = s.n_steps;
    result.gradient_syncs = dp->n_gradient_syncs();
    result.gradient_launches = dp->n_gradient_launches();
    const auto w = ctx.to_host(TensorView<const float>(model.store().master_all()));
    result.weights_checksum = checksum(std::span<const float>(w.data(), static_cast<std::size_t>(w.numel())));
    // Every rank, on stdout (only rank 0 has a log): the replicas must agree (tests/gpu/dist/ddp_train.sh).
    // The loss of this rank's own micro-batches at the first and last log points: with only rank 0
    // logging, this is where every rank shows that it trained (issue 11: "the loss decreasing on
    // all ranks").
    std::printf("dekr_amp: rank %d of %d: %lld iterations, %lld optimizer steps, %lld gradient all-reduces "
                "(%lld grouped NCCL launches), %lld CUDA graph replays, loss %.4e -> %.4e, weights checksum %016llx\n",
                run.rank, run.world_size, static_cast<long long>(iter), static_cast<long long>(result.optimizer_steps),
                static_cast<long long>(result.gradient_syncs), static_cast<long long>(result.gradient_launches),
                static_cast<long long>(result.graph_replays), static_cast<double>(result.first_loss),
                static_cast<double>(result.last_loss), static_cast<unsigned long long>(result.weights_checksum));
    std::fflush(stdout);
  }
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
  return result;
}

}  // namespace detail

/// Train as the config says (see the file comment); optimizer.type chooses the compile-time
/// optimizer rule: Adam / AdamW (optim::Adam) or SGD with momentum (optim::Sgd).
template <PrecisionPolicy P, class Backend>
TrainResult run_training(Backend& ctx, const RunOptions& run, RunLogger& log) {
  const OptimizerConfig& o = run.config.config.optimizer;
  if (o.type == "SGD") return detail::run_training_with<P>(ctx, run, log, sgd_rule(o));
  return detail::run_training_with<P>(ctx, run, log, adam_rule(o));
}

}  // namespace ampkit::train

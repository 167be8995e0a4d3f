/// @brief The training configuration's schema: typed sections whose defaults are mmpose's
/// `dekr_hrnet-w32_8xb10-140e_coco-512x512`, the one list of every key (`visit_fields`), value
/// checks, "did you mean" suggestions and the TOML dump. No TOML parser here (config.hpp reads
/// files), so CUDA translation units can include it: nvcc cannot compile toml++.
///
/// Why a schema and not a free-form dictionary (as mmengine's Config is): a typo in a key or a
/// value of the wrong type must stop the run before the first iteration, with a message that
/// names the key, the expected type and the closest valid keys, not silently train with a default
/// for 140 epochs. Every field is listed once, in `visit_fields`, which drives parsing, overrides,
/// the dump and the key list, so they cannot disagree.
///
/// Key names follow mmengine/mmpose where one exists (`optim_wrapper.accumulative_counts`,
/// `randomness.seed`, `train_cfg.max_epochs`, `train_cfg.val_interval`, `param_scheduler.*`,
/// `default_hooks.checkpoint.interval`, `default_hooks.logger.interval`).
#pragma once

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "ampkit/core/error.hpp"

namespace ampkit::train {

/// mmengine's `loss_scale`: the string 'dynamic' or a number (a static scale).
struct LossScaleSetting {
  bool dynamic = true;
  double value = 65536.0;  ///< the static scale (dynamic: the initial scale is amp.init_scale)
  friend bool operator==(const LossScaleSetting&, const LossScaleSetting&) = default;
};

struct ModelConfig {
  /// "w32", "w48" or "tiny" (tests, host demo). The widths below must agree with it.
  std::string variant = "w32";
  /// stage-4 branch widths; stages 2 and 3 use the first 2 and 3 (mmpose: (32,64,128,256)).
  std::vector<std::int64_t> backbone_channels = {32, 64, 128, 256};
  std::int64_t num_keypoints = 17;
  std::int64_t num_heatmap_filters = 32;              ///< DEKRHead default; W48 uses 48
  std::int64_t num_displacement_filters_per_keypoint = 15;
  /// ImageNet-pretrained backbone (safetensors, mmpose names); empty: the initialisation only.
  std::string pretrained = "";
  /// Keep only each conv+BN layer's input and recompute its conv output in backward (one more
  /// forward conv per layer): W32 fp16 activations 1110 -> 623 MiB at batch 2 (dry run). Off by
  /// default; nn/conv_bn.hpp has the details.
  bool recompute_conv_outputs = false;
  /// Free the conv+BN+ReLU outputs that only the next conv of the same block (or stem, fuse
  /// chain, head branch) reads, and rebuild them in backward from the kept BN input and the saved
  /// batch statistics: one elementwise pass each, bit-identical to keeping them (same BN apply
  /// code), W32 fp16 activations -20 % (docs/architecture.md). On by default; false only
  /// reproduces older measurements.
  bool recompute_bn_outputs = true;
};

/// Codec SPR (`mmpose/codecs/spr.py`) as the DEKR config sets it.
struct CodecConfig {
  std::vector<std::int64_t> input_size = {512, 512};    ///< (w, h)
  std::vector<std::int64_t> heatmap_size = {128, 128};  ///< (w, h) = input / 4
  std::vector<double> sigma = {4.0, 2.0};               ///< (root, keypoint) in heatmap pixels
  double minimal_diagonal_length = 5.656854249492381;   ///< sqrt(32)
  double background_weight = 0.1;
  std::int64_t decode_max_instances = 30;
  std::int64_t decode_nms_kernel = 5;
  double decode_thr = 0.01;
};

/// BottomupRandomAffine + RandomFlip defaults (the config passes only input_size).
struct PipelineConfig {
  double shift_factor = 0.2;
  std::vector<double> scale_factor = {0.75, 1.5};
  double rotate_factor = 30.0;
  double flip_prob = 0.5;
};

/// DEKRHead losses (the loss-weight ablation varies both weights).
struct LossConfig {
  double heatmap_weight = 1.0;          ///< KeypointMSELoss loss_weight
  double displacement_weight = 0.002;   ///< SoftWeightSmoothL1Loss loss_weight
  double beta = 1.0 / 9.0;              ///< smooth-L1 transition
};

/// torch.optim.Adam defaults with lr 1e-3.
struct OptimizerConfig {
  std::string type = "Adam";  ///< Adam, AdamW or SGD
  double lr = 1e-3;
  std::vector<double> betas = {0.9, 0.999};
  double eps = 1e-8;
  double weight_decay = 0.0;
  double momentum = 0.9;  ///< SGD only
  double dampening = 0.0;  ///< SGD only (torch.optim.SGD's dampening)
  bool nesterov = false;   ///< SGD only: Nesterov momentum (needs momentum > 0 and dampening 0)
};

/// mmengine OptimWrapper: accumulation and clipping (DEKR uses none).
struct OptimWrapperConfig {
  std::int64_t accumulative_counts = 1;
  double clip_grad_max_norm = 0.0;  ///< 0: no clipping; > 0: clip_grad_norm_(max_norm)
};

/// param_scheduler: LinearLR warmup (per iteration) then MultiStepLR (per epoch).
struct SchedulerConfig {
  double warmup_start_factor = 0.001;
  std::int64_t warmup_iters = 500;  ///< LinearLR end (by_epoch=False); 0: no warmup
  /// "iteration" (mmengine: every micro-batch) or "update" (every optimizer step).
  std::string warmup_stepping = "iteration";
  std::vector<std::int64_t> milestones = {90, 120};
  double gamma = 0.1;
};

/// AmpOptimWrapper: precision policy and the loss scaler (torch GradScaler defaults).
struct AmpConfig {
  /// "fp32" (mmpose's config), "fp16" (what `--amp` selects) or "bf16".
  std::string precision = "fp32";
  LossScaleSetting loss_scale{};
  double init_scale = 65536.0;
  double growth_factor = 2.0;
  double backoff_factor = 0.5;
  std::int64_t growth_interval = 2000;
  double min_loss_scale = 1.0;  ///< stop the run (with advice) when the scale falls below
};

struct TrainLoopConfig {
  std::int64_t max_epochs = 140;
  std::int64_t val_interval = 10;  ///< epochs between evaluations (0: never)
  std::int64_t batch_size = 10;    ///< per GPU ("8xb10")
  std::int64_t num_workers = 2;
  std::int64_t prefetch = 2;
  /// Stop after this many iterations (0: run max_epochs). For demos and smoke tests.
  std::int64_t max_iters = 0;
};

struct DataConfig {
  std::string data_root = "data/coco/";
  std::string train_ann_file = "annotations/person_keypoints_train2017.json";
  std::string train_img_prefix = "train2017/";
  std::string val_ann_file = "annotations/person_keypoints_val2017.json";
  std::string val_img_prefix = "val2017/";
  /// "skip" (replace a sample that cannot be read by the next one, count it, report per epoch;
  /// the default, so one corrupt JPEG cannot end a long run) or "throw" (stop at it, named).
  std::string bad_sample = "skip";
  /// Evaluate on at most this many val images (0: all).
  std::int64_t val_max_images = 0;
};

/// test_cfg of the DEKR config.
struct TestConfig {
  bool flip_test = true;
  bool shift_heatmap = true;
  double nms_dist_thr = 0.05;
  bool align_corners = false;
  std::string rescore_checkpoint = "";  ///< kpt_rescore_coco (safetensors); empty: no rescoring
};

struct RandomnessConfig {
  /// mmengine draws a random seed when unset; a fixed default makes every run reproducible.
  std::int64_t seed = 0;
  /// CUDA: deterministic cuDNN convolution algorithms only (torch.backends.cudnn.deterministic).
  bool deterministic = false;
};

struct CheckpointConfig {
  std::int64_t interval = 10;        ///< epochs between checkpoints (the last epoch always saves)
  std::int64_t max_keep_ckpts = -1;  ///< keep the newest N (-1: all, as mmengine's CheckpointHook)
  std::int64_t iter_interval = 0;    ///< also every N iterations (0: off)
};

struct LoggerConfig {
  std::int64_t interval = 50;  ///< iterations between log lines (mmengine LoggerHook)
  bool tensorboard = true;
};

struct RuntimeConfig {
  std::string device = "auto";  ///< auto (CUDA if present), cuda or host
  /// CUDA: time cuDNN's algorithms once per conv shape and keep the fastest (true), or take cuDNN's
  /// heuristic ranking (false); mmengine's env_cfg.cudnn_benchmark. Ignored on the host backend.
  /// The one default that departs from mmpose (False there): DEKR trains at one fixed input size,
  /// so the one-off timing pays for itself within the first steps.
  bool cudnn_benchmark = true;
  /// CUDA: capture the training step as CUDA graphs after a few eager warm-up iterations and
  /// replay them (one launch instead of thousands per step; train/graph_mode.hpp); under data
  /// parallelism with the gradient all-reduce inside the graph. Off on the host backend. On by
  /// default since its end-to-end GPU test passed (tests/gpu/train/graph_step.cu, H200
  /// 2026-11-30); `runtime.cuda_graph=false` runs eagerly.
  bool cuda_graph = true;
  /// Data parallel: SyncBatchNorm, every BatchNorm normalising with the statistics of the global
  /// batch (all GPUs' batches together) instead of its own GPU's (mmengine's `sync_bn = 'torch'`).
  /// Worth it at the small per-GPU batches of memory-starved configs (2 per GPU). No effect in
  /// one process.
  bool sync_bn = false;
  std::int64_t host_threads = 0;  ///< host backend threads (0: all cores)
};

/// The whole configuration.
struct TrainConfig {
  ModelConfig model;
  CodecConfig codec;
  PipelineConfig pipeline;
  LossConfig loss;
  OptimizerConfig optimizer;
  OptimWrapperConfig optim_wrapper;
  SchedulerConfig param_scheduler;
  AmpConfig amp;
  TrainLoopConfig train_cfg;
  DataConfig data;
  TestConfig test_cfg;
  RandomnessConfig randomness;
  CheckpointConfig checkpoint;
  LoggerConfig logger;
  RuntimeConfig runtime;
};

/// Every field once: `v(key, member, help)`. Drives parsing, overrides, dumping and key lists.
template <class Config, class V>
  requires std::is_same_v<std::remove_const_t<Config>, TrainConfig>
void visit_fields(Config& c, V&& v) {
  v("model.variant", c.model.variant, "w32, w48 or tiny");
  v("model.backbone_channels", c.model.backbone_channels, "stage-4 branch widths");
  v("model.num_keypoints", c.model.num_keypoints, "keypoints (COCO: 17)");
  v("model.num_heatmap_filters", c.model.num_heatmap_filters, "heatmap branch width");
  v("model.num_displacement_filters_per_keypoint", c.model.num_displacement_filters_per_keypoint,
    "displacement filters per keypoint");
  v("model.pretrained", c.model.pretrained, "pretrained backbone (safetensors)");
  v("model.recompute_conv_outputs", c.model.recompute_conv_outputs, "recompute conv outputs in backward: less memory, more time");
  v("model.recompute_bn_outputs", c.model.recompute_bn_outputs,
    "rebuild in-block BN+ReLU outputs in backward from saved statistics: less memory, bit-identical");
  v("codec.input_size", c.codec.input_size, "(w, h)");
  v("codec.heatmap_size", c.codec.heatmap_size, "(w, h)");
  v("codec.sigma", c.codec.sigma, "(root, keypoint)");
  v("codec.minimal_diagonal_length", c.codec.minimal_diagonal_length, "heatmap px");
  v("codec.background_weight", c.codec.background_weight, "");
  v("codec.decode_max_instances", c.codec.decode_max_instances, "");
  v("codec.decode_nms_kernel", c.codec.decode_nms_kernel, "");
  v("codec.decode_thr", c.codec.decode_thr, "");
  v("pipeline.shift_factor", c.pipeline.shift_factor, "");
  v("pipeline.scale_factor", c.pipeline.scale_factor, "(min, max)");
  v("pipeline.rotate_factor", c.pipeline.rotate_factor, "degrees");
  v("pipeline.flip_prob", c.pipeline.flip_prob, "");
  v("loss.heatmap_weight", c.loss.heatmap_weight, "");
  v("loss.displacement_weight", c.loss.displacement_weight, "");
  v("loss.beta", c.loss.beta, "");
  v("optimizer.type", c.optimizer.type, "Adam, AdamW or SGD");
  v("optimizer.lr", c.optimizer.lr, "");
  v("optimizer.betas", c.optimizer.betas, "");
  v("optimizer.eps", c.optimizer.eps, "");
  v("optimizer.weight_decay", c.optimizer.weight_decay, "");
  v("optimizer.momentum", c.optimizer.momentum, "SGD only");
  v("optimizer.dampening", c.optimizer.dampening, "SGD only");
  v("optimizer.nesterov", c.optimizer.nesterov, "SGD only: needs momentum > 0 and dampening 0");
  v("optim_wrapper.accumulative_counts", c.optim_wrapper.accumulative_counts, "");
  v("optim_wrapper.clip_grad_max_norm", c.optim_wrapper.clip_grad_max_norm, "0: off");
  v("param_scheduler.warmup_start_factor", c.param_scheduler.warmup_start_factor, "");
  v("param_scheduler.warmup_iters", c.param_scheduler.warmup_iters, "");
  v("param_scheduler.warmup_stepping", c.param_scheduler.warmup_stepping, "iteration or update");
  v("param_scheduler.milestones", c.param_scheduler.milestones, "epochs");
  v("param_scheduler.gamma", c.param_scheduler.gamma, "");
  v("amp.precision", c.amp.precision, "fp32, fp16 or bf16");
  v("amp.loss_scale", c.amp.loss_scale, "'dynamic' or a number");
  v("amp.init_scale", c.amp.init_scale, "");
  v("amp.growth_factor", c.amp.growth_factor, "");
  v("amp.backoff_factor", c.amp.backoff_factor, "");
  v("amp.growth_interval", c.amp.growth_interval, "");
  v("amp.min_loss_scale", c.amp.min_loss_scale, "");
  v("train_cfg.max_epochs", c.train_cfg.max_epochs, "");
  v("train_cfg.val_interval", c.train_cfg.val_interval, "epochs; 0: never");
  v("train_cfg.batch_size", c.train_cfg.batch_size, "per GPU");
  v("train_cfg.num_workers", c.train_cfg.num_workers, "");
  v("train_cfg.prefetch", c.train_cfg.prefetch, "");
  v("train_cfg.max_iters", c.train_cfg.max_iters, "0: max_epochs");
  v("data.data_root", c.data.data_root, "");
  v("data.train_ann_file", c.data.train_ann_file, "");
  v("data.train_img_prefix", c.data.train_img_prefix, "");
  v("data.val_ann_file", c.data.val_ann_file, "");
  v("data.val_img_prefix", c.data.val_img_prefix, "");
  v("data.bad_sample", c.data.bad_sample, "skip (default) or throw");
  v("data.val_max_images", c.data.val_max_images, "0: all");
  v("test_cfg.flip_test", c.test_cfg.flip_test, "");
  v("test_cfg.shift_heatmap", c.test_cfg.shift_heatmap, "");
  v("test_cfg.nms_dist_thr", c.test_cfg.nms_dist_thr, "");
  v("test_cfg.align_corners", c.test_cfg.align_corners, "");
  v("test_cfg.rescore_checkpoint", c.test_cfg.rescore_checkpoint, "");
  v("randomness.seed", c.randomness.seed, "");
  v("randomness.deterministic", c.randomness.deterministic, "CUDA: deterministic cuDNN algorithms only");
  v("default_hooks.checkpoint.interval", c.checkpoint.interval, "epochs");
  v("default_hooks.checkpoint.max_keep_ckpts", c.checkpoint.max_keep_ckpts, "-1: all");
  v("default_hooks.checkpoint.iter_interval", c.checkpoint.iter_interval, "0: off");
  v("default_hooks.logger.interval", c.logger.interval, "iterations");
  v("default_hooks.logger.tensorboard", c.logger.tensorboard, "");
  v("runtime.device", c.runtime.device, "auto, cuda or host");
  v("runtime.cudnn_benchmark", c.runtime.cudnn_benchmark, "CUDA: time conv algorithms (true) or cuDNN heuristics");
  v("runtime.cuda_graph", c.runtime.cuda_graph, "CUDA: capture the step as CUDA graphs and replay them");
  v("runtime.sync_bn", c.runtime.sync_bn, "data parallel: SyncBatchNorm (statistics of all GPUs' batches)");
  v("runtime.host_threads", c.runtime.host_threads, "0: all cores");
}

namespace detail {

template <class T>
inline constexpr bool is_int_v = std::is_integral_v<T> && !std::is_same_v<T, bool>;

template <class T>
constexpr std::string_view type_name() {
  if constexpr (std::is_same_v<T, bool>) return "a boolean";
  else if constexpr (is_int_v<T>) return "an integer";
  else if constexpr (std::is_floating_point_v<T>) return "a number";
  else if constexpr (std::is_same_v<T, std::string>) return "a string";
  else if constexpr (std::is_same_v<T, std::vector<std::int64_t>>) return "an array of integers";
  else if constexpr (std::is_same_v<T, std::vector<double>>) return "an array of numbers";
  else if constexpr (std::is_same_v<T, LossScaleSetting>) return "'dynamic' or a number";
  else static_assert(sizeof(T) == 0, "config: unsupported field type");
}

/// Shortest text that reads back as the same double (`0.05`, `1e-08`, `65536.0`).
inline std::string number_text(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  std::string s(buf, r.ptr);
  if (s.find_first_of(".eE") == std::string::npos) s += ".0";  // keep it a TOML float
  return s;
}

/// A TOML basic string: "..." with \\, \" and control characters escaped.
inline std::string string_text(const std::string& v) {
  std::string s = "\"";
  for (const char ch : v) {
    const auto c = static_cast<unsigned char>(ch);
    switch (ch) {
      case '"': s += "\\\""; break;
      case '\\': s += "\\\\"; break;
      case '\n': s += "\\n"; break;
      case '\t': s += "\\t"; break;
      case '\r': s += "\\r"; break;
      default:
        if (c < 0x20 || c == 0x7F) {
          char b[8];
          std::snprintf(b, sizeof b, "\\u%04X", c);
          s += b;
        } else {
          s += ch;
        }
    }
  }
  return s + "\"";
}

/// A field's value as TOML text.
template <class T>
std::string value_text(const T& v) {
  if constexpr (std::is_same_v<T, bool>) return v ? "true" : "false";
  else if constexpr (is_int_v<T>) return std::to_string(v);
  else if constexpr (std::is_floating_point_v<T>) return number_text(static_cast<double>(v));
  else if constexpr (std::is_same_v<T, std::string>) return string_text(v);
  else if constexpr (std::is_same_v<T, LossScaleSetting>) return v.dynamic ? "'dynamic'" : number_text(v.value);
  else {
    std::string s = "[";
    for (std::size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + value_text(v[i]);
    return s + "]";
  }
}

}  // namespace detail

/// Levenshtein distance (for "did you mean" suggestions).
inline std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0u : 1u)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

/// Every valid dotted key, in schema order.
inline std::vector<std::string> config_keys() {
  std::vector<std::string> keys;
  TrainConfig c;
  visit_fields(c, [&](std::string_view k, auto&, std::string_view) { keys.emplace_back(k); });
  return keys;
}

/// Up to `n` valid keys closest to `key`: by edit distance on the whole key and on its last
/// component (so `seed` suggests `randomness.seed`), nearest first.
inline std::vector<std::string> close_keys(std::string_view key, std::size_t n = 3) {
  const auto leaf_of = [](std::string_view k) {
    const auto p = k.rfind('.');
    return p == std::string_view::npos ? k : k.substr(p + 1);
  };
  std::vector<std::pair<std::size_t, std::string>> scored;
  for (const auto& k : config_keys()) {
    const std::size_t d = std::min(edit_distance(key, k), edit_distance(leaf_of(key), leaf_of(k)));
    // A suggestion further away than about a third of the key's length is noise.
    if (d <= std::max<std::size_t>(2, leaf_of(key).size() / 3)) scored.emplace_back(d, k);
  }
  std::stable_sort(scored.begin(), scored.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<std::string> out;
  for (std::size_t i = 0; i < scored.size() && i < n; ++i) out.push_back(scored[i].second);
  return out;
}

namespace detail {
inline std::string unknown_key_message(std::string_view key, std::string_view where) {
  std::string msg = std::string(where) + ": unknown key '" + std::string(key) + "'";
  const auto close = close_keys(key);
  if (!close.empty()) {
    msg += "; did you mean ";
    for (std::size_t i = 0; i < close.size(); ++i) msg += (i ? ", '" : "'") + close[i] + "'";
    msg += "?";
  } else {
    msg += " (run `dekr_amp train --list-keys` for the valid keys)";
  }
  return msg;
}

}  // namespace detail

/// A configuration plus where its values came from.
struct LoadedConfig {
  TrainConfig config;
  std::string source = "<defaults>";     ///< the TOML file (or "<defaults>")
  std::set<std::string> from_file;       ///< keys the file set
  std::set<std::string> from_overrides;  ///< keys --cfg-options set
  bool is_set(const std::string& key) const { return from_file.contains(key) || from_overrides.contains(key); }
};

/// Check values the types cannot: positive sizes, consistent shapes, known names.
inline void validate(const TrainConfig& c, std::string_view where = "config") {
  const auto chk = [&](bool ok, auto&&... msg) { AMPKIT_CHECK(ok, where, ": ", msg...); };
  chk(c.model.variant == "w32" || c.model.variant == "w48" || c.model.variant == "tiny",
      "model.variant is '", c.model.variant, "'; use w32, w48 or tiny");
  chk(c.model.backbone_channels.size() == 4, "model.backbone_channels needs 4 widths, given ",
      c.model.backbone_channels.size());
  chk(c.codec.input_size.size() == 2 && c.codec.heatmap_size.size() == 2,
      "codec.input_size and codec.heatmap_size are (w, h) pairs");
  chk(c.codec.input_size[0] > 0 && c.codec.input_size[1] > 0 && c.codec.input_size[0] % 32 == 0 &&
          c.codec.input_size[1] % 32 == 0,
      "codec.input_size is ", c.codec.input_size[0], "x", c.codec.input_size[1], "; HRNet needs positive multiples of 32");
  chk(c.codec.heatmap_size[0] * 4 == c.codec.input_size[0] && c.codec.heatmap_size[1] * 4 == c.codec.input_size[1],
      "codec.heatmap_size must be input_size / 4 (", c.codec.input_size[0] / 4, "x", c.codec.input_size[1] / 4,
      "), given ", c.codec.heatmap_size[0], "x", c.codec.heatmap_size[1]);
  chk(c.codec.sigma.size() == 2 && c.codec.sigma[0] > 0 && c.codec.sigma[1] > 0,
      "codec.sigma is (root, keypoint), both positive");
  chk(c.pipeline.scale_factor.size() == 2 && c.pipeline.scale_factor[0] > 0 &&
          c.pipeline.scale_factor[0] <= c.pipeline.scale_factor[1],
      "pipeline.scale_factor is (min, max) with 0 < min <= max");
  chk(c.pipeline.flip_prob >= 0 && c.pipeline.flip_prob <= 1, "pipeline.flip_prob must be in [0, 1]");
  chk(c.loss.heatmap_weight >= 0 && c.loss.displacement_weight >= 0 && c.loss.beta > 0,
      "loss weights must be >= 0 and loss.beta > 0");
  chk(c.optimizer.type == "Adam" || c.optimizer.type == "AdamW" || c.optimizer.type == "SGD",
      "optimizer.type is '", c.optimizer.type, "'; use Adam, AdamW or SGD");
  chk(c.optimizer.lr > 0, "optimizer.lr must be positive, given ", c.optimizer.lr);
  chk(c.optimizer.momentum >= 0 && c.optimizer.dampening >= 0, "optimizer.momentum and optimizer.dampening must be >= 0");
  chk(c.optimizer.type != "SGD" || !c.optimizer.nesterov || (c.optimizer.momentum > 0 && c.optimizer.dampening == 0),
      "optimizer.nesterov needs optimizer.momentum > 0 and optimizer.dampening = 0 (as torch.optim.SGD)");
  chk(c.optimizer.betas.size() == 2, "optimizer.betas is a pair (beta1, beta2)");
  chk(c.optim_wrapper.accumulative_counts >= 1, "optim_wrapper.accumulative_counts must be >= 1, given ",
      c.optim_wrapper.accumulative_counts);
  chk(c.optim_wrapper.clip_grad_max_norm >= 0, "optim_wrapper.clip_grad_max_norm must be >= 0 (0: off)");
  chk(c.param_scheduler.warmup_iters >= 0, "param_scheduler.warmup_iters must be >= 0");
  chk(c.param_scheduler.warmup_stepping == "iteration" || c.param_scheduler.warmup_stepping == "update",
      "param_scheduler.warmup_stepping is '", c.param_scheduler.warmup_stepping, "'; use iteration or update");
  chk(std::is_sorted(c.param_scheduler.milestones.begin(), c.param_scheduler.milestones.end()),
      "param_scheduler.milestones must be ascending");
  chk(c.amp.precision == "fp32" || c.amp.precision == "fp16" || c.amp.precision == "bf16",
      "amp.precision is '", c.amp.precision, "'; use fp32, fp16 or bf16");
  chk(c.amp.loss_scale.dynamic || (c.amp.loss_scale.value > 0 && std::isfinite(c.amp.loss_scale.value)),
      "amp.loss_scale must be 'dynamic' or a positive number");
  chk(c.train_cfg.max_epochs >= 1, "train_cfg.max_epochs must be >= 1");
  chk(c.train_cfg.batch_size >= 1, "train_cfg.batch_size must be >= 1");
  chk(c.train_cfg.num_workers >= 1 && c.train_cfg.prefetch >= 1, "train_cfg.num_workers and prefetch must be >= 1");
  chk(c.train_cfg.val_interval >= 0 && c.train_cfg.max_iters >= 0, "val_interval and max_iters must be >= 0");
  chk(c.data.bad_sample == "throw" || c.data.bad_sample == "skip", "data.bad_sample is '", c.data.bad_sample,
      "'; use throw or skip");
  chk(c.checkpoint.interval >= 1, "default_hooks.checkpoint.interval must be >= 1");
  chk(c.checkpoint.max_keep_ckpts == -1 || c.checkpoint.max_keep_ckpts >= 1,
      "default_hooks.checkpoint.max_keep_ckpts must be -1 (all) or >= 1");
  chk(c.logger.interval >= 1, "default_hooks.logger.interval must be >= 1");
  chk(c.runtime.device == "auto" || c.runtime.device == "cuda" || c.runtime.device == "host",
      "runtime.device is '", c.runtime.device, "'; use auto, cuda or host");
}

/// The resolved configuration as TOML: every key in schema order, floats in their shortest
/// round-trip form, so `parse_config(to_toml(c))` gives back exactly `c`.
inline std::string to_toml(const TrainConfig& c) {
  std::string out, section = "\x01";
  visit_fields(c, [&](std::string_view key, const auto& field, std::string_view) {
    const auto dot = key.rfind('.');
    const std::string_view sec = key.substr(0, dot);
    if (sec != section) {
      out += (out.empty() ? "[" : "\n[") + std::string(sec) + "]\n";
      section = std::string(sec);
    }
    out += std::string(key.substr(dot + 1)) + " = " + detail::value_text(field) + "\n";
  });
  return out;
}

/// One key's value as TOML text (for logs): `0.001`, `[90, 120]`, `'Adam'`.
inline std::string value_text(const TrainConfig& c, std::string_view key) {
  std::optional<std::string> out;
  visit_fields(c, [&](std::string_view k, const auto& field, std::string_view) {
    if (k == key) out = detail::value_text(field);
  });
  if (!out) throw Error(detail::unknown_key_message(key, "config"));
  return *out;
}

}  // namespace ampkit::train

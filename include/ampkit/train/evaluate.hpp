/// @brief DEKR validation and testing, written once for every policy and both backends:
/// `run_evaluation<P, Backend>(ctx, model, cfg, log, opt)` (what the trainer calls at val_interval
/// epochs and at the end) and `run_test<P, Backend>(ctx, run, checkpoint, log)` (`dekr_amp test`).
///
/// mmpose's test loop for DEKR, spelled out:
///   every image of the val annotation file (test mode keeps images without persons: their
///   detections count as false positives in COCOeval), batch 1 ->
///   LoadImage + BottomupResize('expand', multiple of 32) + normalisation (data::bottomup_resize_*)
///   -> forward in eval mode; with test_cfg.flip_test the horizontally flipped input goes through
///   the same forward (as the second image of a batch of 2: eval-mode BN treats images
///   independently, and the views of one call stay valid together) -> DEKR decode (device map work
///   on ampkit::Cuda, host on ampkit::Host) -> COCO results -> results JSON in the work dir ->
///   pycocotools-exact COCO keypoint AP (eval::DekrEvaluator).
///
/// Include the backend's ops before this header is instantiated, as for the trainer; on CUDA also
/// ampkit/backend/cuda/dekr_decode.cuh (found by argument-dependent lookup on the context).
/// toml-free: nvcc compiles it in dekr_amp's CUDA part.
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <iomanip>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ampkit/core/error.hpp"
#include "ampkit/core/tensor.hpp"
#include "ampkit/data/augment.hpp"
#include "ampkit/data/image.hpp"
#include "ampkit/eval/coco_keypoints.hpp"
#include "ampkit/eval/dekr_decode.hpp"
#include "ampkit/eval/dekr_evaluate.hpp"
#include "ampkit/eval/rescore_net.hpp"
#include "ampkit/models/dekr.hpp"
#include "ampkit/nn/checkpoint.hpp"
#include "ampkit/precision.hpp"
#include "ampkit/train/checkpoint_manager.hpp"
#include "ampkit/train/config_schema.hpp"
#include "ampkit/train/run_logger.hpp"

namespace ampkit::train {

/// One image of the val set, as the annotation file lists it.
struct ValImage {
  std::int64_t id = 0;
  std::string file_name;
  int width = 0, height = 0;
};

/// The val set of mmpose's test mode: the ground truth for COCOeval and EVERY image of the
/// annotation file (data::CocoKeypoints keeps only images with a person, which is right for
/// training but would drop the false positives of person-free images from the AP).
struct ValSet {
  std::string ann_file, img_root;
  eval::CocoKeypointDataset gt;
  std::vector<ValImage> images;

  static ValSet load(const std::string& ann_file, const std::string& img_root, std::int64_t max_images = 0) {
    AMPKIT_CHECK(std::filesystem::exists(ann_file), "val: annotation file '", ann_file,
                 "' not found (set data.data_root / data.val_ann_file)");
    const nlohmann::json j = eval::detail::read_json_file(ann_file, "val annotation");
    ValSet v;
    v.ann_file = ann_file;
    v.img_root = img_root;
    v.gt = eval::CocoKeypointDataset::from_json(j, "val annotations '" + ann_file + "'");
    AMPKIT_CHECK(j.contains("images") && j["images"].is_array(), "val: '", ann_file, "' has no images array");
    for (const auto& im : j["images"]) {
      ValImage m;
      try {
        m.id = im.at("id").get<std::int64_t>();
        m.file_name = im.at("file_name").get<std::string>();
        m.width = im.at("width").get<int>();
        m.height = im.at("height").get<int>();
      } catch (const nlohmann::json::exception& e) {
        AMPKIT_FAIL("val: '", ann_file, "': image entry ", v.images.size(), " lacks id/file_name/width/height (",
                    e.what(), ")");
      }
      AMPKIT_CHECK(m.width > 0 && m.height > 0, "val: '", ann_file, "': image ", m.id, " has size ", m.width, "x",
                   m.height);
      v.images.push_back(std::move(m));
      if (max_images > 0 && static_cast<std::int64_t>(v.images.size()) >= max_images) break;
    }
    AMPKIT_CHECK(!v.images.empty(), "val: '", ann_file, "' lists no images");
    if (max_images > 0) {  // evaluate against the GT of the kept images only
      std::vector<std::int64_t> keep;
      for (const auto& m : v.images) keep.push_back(m.id);
      std::sort(keep.begin(), keep.end());
      const auto kept = [&](std::int64_t id) { return std::binary_search(keep.begin(), keep.end(), id); };
      std::erase_if(v.gt.image_ids, [&](std::int64_t id) { return !kept(id); });
      std::erase_if(v.gt.annotations, [&](const eval::CocoGroundTruth& a) { return !kept(a.image_id); });
    }
    return v;
  }
  static ValSet load(const TrainConfig& c) {
    return load(c.data.data_root + c.data.val_ann_file, c.data.data_root + c.data.val_img_prefix,
                c.data.val_max_images);
  }
};

/// The decode settings of the config (SPR codec decode_* and the head's test_cfg).
inline eval::DekrDecodeConfig decode_config(const TrainConfig& c) {
  eval::DekrDecodeConfig d;
  d.nms_kernel = static_cast<int>(c.codec.decode_nms_kernel);
  d.max_instances = static_cast<int>(c.codec.decode_max_instances);
  d.root_threshold = static_cast<float>(c.codec.decode_thr);
  d.shift_heatmap = c.test_cfg.shift_heatmap;
  d.nms_dist_thr = c.test_cfg.nms_dist_thr;
  AMPKIT_CHECK(!c.test_cfg.flip_test || c.model.num_keypoints == static_cast<std::int64_t>(d.flip_indices.size()),
               "test_cfg.flip_test needs the left/right pairs of the keypoints; they are known for COCO's 17, "
               "the model has ", c.model.num_keypoints, " (set test_cfg.flip_test = false)");
  AMPKIT_CHECK(!c.test_cfg.align_corners, "test_cfg.align_corners = true is not supported (DEKR uses false)");
  return d;
}

/// What run_evaluation is asked to do besides evaluating.
struct EvalOptions {
  std::string results_path;  ///< the COCO results JSON to write (empty: don't write)
  std::int64_t step = 0;     ///< global iteration the scalars are logged at
  std::int64_t epoch = 0;    ///< for the log line and scalars.jsonl (0: not in training)
  bool log_scalars = true;   ///< scalars.jsonl + TensorBoard ("val/coco/AP", ...)
};

struct EvalResult {
  eval::DekrEvalReport report;
  std::string results_path;
  double seconds = 0;
};

/// mmpose's CocoMetric names of the ten stats, in pycocotools' order ("coco/AP", "coco/AP .5", ...;
/// the names mmpose logs and users grep for).
inline constexpr std::array<const char*, 10> kCocoMetricNames = {"coco/AP",    "coco/AP .5",    "coco/AP .75",
                                                                 "coco/AP (M)", "coco/AP (L)",  "coco/AR",
                                                                 "coco/AR .5",  "coco/AR .75", "coco/AR (M)",
                                                                 "coco/AR (L)"};

inline std::vector<std::pair<std::string, double>> coco_scalars(const std::array<double, 10>& s) {
  std::vector<std::pair<std::string, double>> v;
  for (std::size_t i = 0; i < s.size(); ++i) v.emplace_back(kCocoMetricNames[i], s[i]);
  return v;
}

namespace detail {
/// Mirror an NHWC image left-right (the flip test's input: mmpose's `inputs.flip(-1)` on the
/// padded, normalised batch).
inline void flip_horizontal(const float* src, float* dst, std::int64_t h, std::int64_t w, std::int64_t c) {
  for (std::int64_t y = 0; y < h; ++y)
    for (std::int64_t x = 0; x < w; ++x)
      std::copy_n(src + (y * w + x) * c, c, dst + (y * w + (w - 1 - x)) * c);
}
}  // namespace detail

/// Evaluate `model` on the config's val set (see the file comment for the steps), log the ten
/// stats (text log, scalars.jsonl, TensorBoard) and return them.
/// In a multi-process run only the main rank calls this (the trainer's `if (main_rank)`).
template <PrecisionPolicy P, class Backend>
EvalResult run_evaluation(Backend& ctx, models::Dekr<P, Backend>& model, const TrainConfig& cfg, RunLogger& log,
                          const EvalOptions& opt, const ValSet* val_set = nullptr) {
  using T = storage_t<P>;
  const auto t0 = std::chrono::steady_clock::now();
  std::optional<ValSet> own;
  if (!val_set) own = ValSet::load(cfg);
  const ValSet& val = val_set ? *val_set : *own;
  const eval::DekrDecodeConfig dcfg = decode_config(cfg);
  eval::RescoreNet rescore;
  if (!cfg.test_cfg.rescore_checkpoint.empty())
    rescore = eval::RescoreNet::from_safetensors(cfg.test_cfg.rescore_checkpoint,
                                                 static_cast<int>(cfg.model.num_keypoints));
  eval::DekrEvaluator ev(dcfg, std::move(rescore));
  const bool flip = cfg.test_cfg.flip_test;
  const std::int64_t n_views = flip ? 2 : 1;
  const int in_w = static_cast<int>(cfg.codec.input_size[0]), in_h = static_cast<int>(cfg.codec.input_size[1]);

  std::vector<std::uint8_t> file_bytes;
  data::Image rgb;
  HostTensor<float> host_in;
  using FloatTensor = decltype(ctx.template tensor<float>(Shape{}));
  using StorageTensor = decltype(ctx.template tensor<T>(Shape{}));
  FloatTensor in_f;
  StorageTensor in_t;
  for (const ValImage& im : val.images) {
    const std::string path = val.img_root + im.file_name;
    // BottomupResize 'expand' (multiple of 32), as data::BottomupCocoDataset::test_sample.
    const data::ResizeGeometry g = data::bottomup_resize_geometry(im.width, im.height, in_w, in_h);
    const Shape s{n_views, g.input_h, g.input_w, 3};
    try {
      data::load_image_into(path, file_bytes, rgb);
      AMPKIT_CHECK(rgb.w == im.width && rgb.h == im.height, "the image is ", rgb.w, "x", rgb.h,
                   " but the annotation says ", im.width, "x", im.height);
    } catch (const Error& e) {
      throw Error("val image " + std::to_string(im.id) + " ('" + path + "'): " + e.what());
    }
    if (host_in.shape() != s) {
      host_in = HostTensor<float>(s);
      in_f = ctx.template tensor<float>(s);
      in_t = ctx.template tensor<T>(s);
    }
    data::bottomup_resize_normalize(rgb, g, host_in.data());
    const std::int64_t one = s.numel() / n_views;
    if (flip) detail::flip_horizontal(host_in.data(), host_in.data() + one, s.h, s.w, s.c);
    ctx.copy_to_device(in_f.view(), std::span<const float>(host_in.data(), static_cast<std::size_t>(s.numel())));
    convert_copy(ctx, TensorView<const float>(in_f.view()), in_t.view());

    const auto out = model.forward(ctx, TensorView<const T>(in_t.view()), /*training=*/false);
    const auto image_of = [](TensorView<const T> v, std::int64_t b) {
      const Shape one_s{1, v.shape.h, v.shape.w, v.shape.c};
      return TensorView<const T>(v.data + b * one_s.numel(), one_s);
    };
    const eval::DekrImageMeta meta{im.id, eval::input_transform_of(g)};
    if (flip)
      ev.add(ctx, std::span<const eval::DekrImageMeta>(&meta, 1), image_of(out.heatmaps, 0),
             image_of(out.displacements, 0), image_of(out.heatmaps, 1), image_of(out.displacements, 1));
    else
      ev.add(ctx, std::span<const eval::DekrImageMeta>(&meta, 1), out.heatmaps, out.displacements);
  }
  EvalResult r;
  if (!opt.results_path.empty()) {
    const auto parent = std::filesystem::path(opt.results_path).parent_path();
    if (!parent.empty()) ensure_writable_dir(parent.string(), "results dir");
    ev.write_results(opt.results_path);
    r.results_path = opt.results_path;
  }
  r.report = ev.evaluate(val.gt);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  std::ostringstream line;
  line << (opt.epoch > 0 ? "val epoch " + std::to_string(opt.epoch) + ": " : std::string("test: ")) << std::fixed
       << std::setprecision(4);
  for (const auto& [k, v] : coco_scalars(r.report.stats)) line << k << ": " << v << "  ";
  line << std::setprecision(1) << "(" << r.report.n_images << " images, " << r.report.n_results << " poses, "
       << (flip ? "flip test, " : "") << r.seconds << " s)";
  log.info(line.str());
  if (opt.log_scalars) {
    nlohmann::json extra = nlohmann::json::object();
    if (opt.epoch > 0) extra["epoch"] = opt.epoch;
    log.scalars("val", opt.step, coco_scalars(r.report.stats), extra);
  }
  return r;
}

/// Where `dekr_amp test` (and the demo) writes its results in the work dir.
inline std::string test_results_path(const std::string& work_dir) { return work_dir + "/test.keypoints.json"; }
/// Where validation during training writes the results of epoch `epoch`.
inline std::string val_results_path(const std::string& work_dir, std::int64_t epoch) {
  return work_dir + "/val/epoch_" + std::to_string(epoch) + ".keypoints.json";
}

/// `dekr_amp test CONFIG CHECKPOINT`: the config's model with the checkpoint's weights (a
/// checkpoint of another policy loads too: the fp32 master weights are shared), evaluated on the
/// config's val set; results in test_results_path(work_dir).
template <PrecisionPolicy P, class Backend>
EvalResult run_test(Backend& ctx, const TrainConfig& cfg, const std::string& work_dir, const std::string& checkpoint,
                    RunLogger& log, const models::DekrConfig& model_cfg) {
  const std::string why = checkpoint_problem(checkpoint);
  AMPKIT_CHECK(why.empty(), "checkpoint '", checkpoint, "': ", why);
  models::Dekr<P, Backend> model(ctx, model_cfg, static_cast<std::uint64_t>(cfg.randomness.seed));
  {
    const auto f = safetensors::File::load(checkpoint);
    const auto& meta = f.metadata();
    AMPKIT_CHECK(!meta.contains("ampkit.model") || meta.at("ampkit.model") == cfg.model.variant, "checkpoint '",
                 checkpoint, "' holds a DEKR-", meta.at("ampkit.model"), " but the config builds DEKR-",
                 cfg.model.variant);
    const int n = nn::read_state(model.store(), ctx, f, /*strict=*/true);
    log.info("loaded " + std::to_string(n) + " tensors from " + checkpoint +
             (meta.contains("ampkit.policy") ? " (trained with " + meta.at("ampkit.policy") + ")" : std::string()));
  }
  EvalOptions opt;
  opt.results_path = test_results_path(work_dir);
  opt.log_scalars = true;
  auto r = run_evaluation<P, Backend>(ctx, model, cfg, log, opt);
  log.info("results written to " + r.results_path);
  return r;
}

}  // namespace ampkit::train

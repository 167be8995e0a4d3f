/// @brief From DEKR network outputs to COCO keypoint AP: decode each test batch (host or CUDA
/// backend), collect COCO results, write the results JSON, evaluate pycocotools-exactly. What
/// `dekr_amp test` runs after every forward pass.
///
/// Usage (one image per batch, as mmpose tests DEKR; flip views empty without flip test):
/// ```
///   ampkit::eval::DekrEvaluator ev(decode_cfg, RescoreNet::from_safetensors(path));  // or {} for none
///   for each image:  forward image and flipped image -> hm, disp, hm_f, disp_f   (N,H,W,C) storage T
///     DekrImageMeta meta{image_id, input_transform_of(resize_geometry)};
///     ev.add(ctx, std::span(&meta, 1), hm, disp, hm_f, disp_f);   // ctx: ampkit::Host or ampkit::Cuda
///   ev.write_results(work_dir + "/results.keypoints.json");
///   const auto report = ev.evaluate(CocoKeypointDataset::load(ann_file));
/// ```
/// With ampkit::Cuda, include "ampkit/backend/cuda/dekr_decode.cuh" (the device map work); the
/// calls are the same on both backends.
#pragma once

#include <array>
#include <concepts>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ampkit/core/error.hpp"
#include "ampkit/core/numeric_types.hpp"
#include "ampkit/core/tensor.hpp"
#include "ampkit/eval/coco_eval.hpp"
#include "ampkit/eval/coco_keypoints.hpp"
#include "ampkit/eval/dekr_decode.hpp"
#include "ampkit/eval/rescore_net.hpp"

namespace ampkit {

class Host;  // backend/host/context.hpp; only passed through here

/// DEKR decoding of a batch on the host backend (the twin of the Cuda overload in
/// backend/cuda/dekr_decode.cuh): storage values converted to float, then eval::dekr_decode_flip
/// (or eval::dekr_decode without flip views) per image with its own transform.
/// @tparam T storage type of the network outputs
template <StorageScalar T>
std::vector<std::vector<eval::DekrPose>> dekr_decode(
    Host&, TensorView<const T> heatmaps, TensorView<const T> displacements, TensorView<const T> heatmaps_flip,
    TensorView<const T> displacements_flip, std::span<const eval::InputTransform> transforms,
    const eval::DekrDecodeConfig& cfg = {}, const eval::RescoreNet* rescore = nullptr) {
  const Shape hs = heatmaps.shape, ds = displacements.shape;
  AMPKIT_CHECK(static_cast<std::int64_t>(transforms.size()) == hs.n,
               "dekr_decode (host): ", transforms.size(), " input transforms for a batch of ", hs.n);
  check_shape("dekr_decode", "displacements", displacements, {hs.n, hs.h, hs.w, 2 * (hs.c - 1)});
  const bool flip = heatmaps_flip.data != nullptr;
  AMPKIT_CHECK(flip == (displacements_flip.data != nullptr),
               "dekr_decode (host): give both flipped-pass maps or neither");
  if (flip) {
    check_shape("dekr_decode", "heatmaps_flip", heatmaps_flip, hs);
    check_shape("dekr_decode", "displacements_flip", displacements_flip, ds);
  }
  const Shape h1{1, hs.h, hs.w, hs.c}, d1{1, ds.h, ds.w, ds.c};
  auto image = [](TensorView<const T> v, std::int64_t b, Shape s) {
    HostTensor<float> t(s);
    const T* src = v.data + b * s.numel();
    for (std::int64_t i = 0; i < s.numel(); ++i) t.data()[i] = convert<float>(src[i]);
    return t;
  };
  std::vector<std::vector<eval::DekrPose>> out;
  for (std::int64_t b = 0; b < hs.n; ++b) {
    const auto& tf = transforms[static_cast<std::size_t>(b)];
    const auto hm = image(heatmaps, b, h1), disp = image(displacements, b, d1);
    if (flip) {
      const auto hmf = image(heatmaps_flip, b, h1), dispf = image(displacements_flip, b, d1);
      out.push_back(
          eval::dekr_decode_flip(hm.cview(), disp.cview(), hmf.cview(), dispf.cview(), tf, cfg, rescore));
    } else {
      out.push_back(eval::dekr_decode(hm.cview(), disp.cview(), tf, cfg, rescore));
    }
  }
  return out;
}

namespace eval {

/// One image of a test batch: its COCO id and how the network input maps back onto it.
struct DekrImageMeta {
  std::int64_t image_id = 0;
  InputTransform transform;
};

/// The InputTransform of a BottomupResize geometry (data::ResizeGeometry, or anything with its
/// input_w/h, center_x/y, scale_w/h members: mmpose's input_size, input_center, input_scale).
template <class Geometry>
requires requires(const Geometry& g) {
  g.input_w;
  g.input_h;
  g.center_x;
  g.center_y;
  g.scale_w;
  g.scale_h;
}
InputTransform input_transform_of(const Geometry& g) {
  return {static_cast<double>(g.input_w),  static_cast<double>(g.input_h), static_cast<double>(g.center_x),
          static_cast<double>(g.center_y), static_cast<double>(g.scale_w), static_cast<double>(g.scale_h)};
}

/// The outcome of a test run: pycocotools' 10 stats and its summary text.
struct DekrEvalReport {
  std::array<double, 10> stats{};  ///< AP, AP .5, AP .75, AP (M), AP (L), AR, AR .5, AR .75, AR (M), AR (L)
  std::string summary;             ///< pycocotools' ten summary lines
  std::size_t n_images = 0;        ///< images decoded
  std::size_t n_results = 0;       ///< poses in the results

  /// {"coco/AP": ..., "coco/AP .5": ...} as mmpose's CocoMetric names them in its logs.
  nlohmann::json to_json() const {
    static constexpr std::array<const char*, 10> kNames = {"AP", "AP .5", "AP .75", "AP (M)", "AP (L)",
                                                           "AR", "AR .5", "AR .75", "AR (M)", "AR (L)"};
    nlohmann::json j;
    for (std::size_t i = 0; i < kNames.size(); ++i) j[std::string("coco/") + kNames[i]] = stats[i];
    j["images"] = n_images;
    j["results"] = n_results;
    return j;
  }
};

/// Collects the decoded poses of a test run as COCO results (CocoMetric with score_mode
/// 'keypoint', nms_mode 'none': the pose NMS already ran in the decode), then evaluates them.
class DekrEvaluator {
 public:
  /// @param rescore a loaded RescoreNet to rescore poses (COCO only), or a default one for none
  explicit DekrEvaluator(DekrDecodeConfig cfg = {}, RescoreNet rescore = {}, std::int64_t category_id = 1)
      : cfg_(std::move(cfg)), rescore_(std::move(rescore)), category_id_(category_id) {}

  const DekrDecodeConfig& config() const { return cfg_; }
  bool rescoring() const { return rescore_.loaded(); }

  /// Decode a batch of network outputs on `ctx` (ampkit::Host or ampkit::Cuda) and collect it.
  /// heatmaps (N,H,W,K+1) with the root last, displacements (N,H,W,2K); the flipped input's pass
  /// in the same shapes, or empty views (no flip test). `images` has one entry per batch image.
  template <class Backend, StorageScalar T>
  void add(Backend& ctx, std::span<const DekrImageMeta> images, TensorView<const T> heatmaps,
           TensorView<const T> displacements, TensorView<const T> heatmaps_flip = {},
           TensorView<const T> displacements_flip = {}) {
    AMPKIT_CHECK(static_cast<std::int64_t>(images.size()) == heatmaps.shape.n,
                 "DekrEvaluator: ", images.size(), " image records for a batch of ", heatmaps.shape.n);
    std::vector<InputTransform> tfs;
    for (const auto& m : images) tfs.push_back(m.transform);
    // Unqualified: the backend's overload (ampkit::dekr_decode(Host&|Cuda&, ...)) is found by ADL.
    const auto poses =
        dekr_decode(ctx, heatmaps, displacements, heatmaps_flip, displacements_flip,
                    std::span<const InputTransform>(tfs), cfg_, rescore_.loaded() ? &rescore_ : nullptr);
    for (std::size_t b = 0; b < images.size(); ++b) add_poses(images[b].image_id, poses[b]);
  }

  /// Collect already decoded poses of one image.
  void add_poses(std::int64_t image_id, const std::vector<DekrPose>& poses) {
    const auto r = dekr_poses_to_coco(image_id, poses, category_id_);
    results_.insert(results_.end(), r.begin(), r.end());
    ++n_images_;
  }

  const std::vector<KeypointResult>& results() const { return results_; }
  std::size_t n_images() const { return n_images_; }

  /// The results in COCO's format (pycocotools can evaluate the file too).
  void write_results(const std::string& path) const { eval::write_results(path, results_); }

  /// COCO keypoint AP against `gt`. The results go through the same path as a results file read
  /// back (load_results: ids and areas set as pycocotools' loadRes sets them), so the numbers
  /// equal `dekr_amp cocoeval GT RESULTS` on the written file.
  DekrEvalReport evaluate(const CocoKeypointDataset& gt) const {
    CocoKeypointEval ev(gt, load_results(results_to_json(results_), gt, "decoded results"));
    DekrEvalReport r;
    r.stats = ev.run();
    r.summary = ev.summary_text();
    r.n_images = n_images_;
    r.n_results = results_.size();
    return r;
  }

 private:
  DekrDecodeConfig cfg_;
  RescoreNet rescore_;
  std::int64_t category_id_ = 1;
  std::vector<KeypointResult> results_;
  std::size_t n_images_ = 0;
};

/// One call for a whole set of stored outputs (tests, small sets; a test loop over a large set
/// uses DekrEvaluator::add per batch instead, as the outputs of 5000 images do not fit in memory).
template <StorageScalar T>
struct DekrImageOutputs {
  DekrImageMeta meta;
  TensorView<const T> heatmaps, displacements;                ///< (1,H,W,K+1), (1,H,W,2K)
  TensorView<const T> heatmaps_flip{}, displacements_flip{};  ///< empty: no flip test
};

/// Decode every image's outputs on `ctx`, optionally write the results JSON (empty path: don't),
/// and evaluate against `gt`.
template <class Backend, StorageScalar T>
DekrEvalReport evaluate_dekr_outputs(Backend& ctx, const CocoKeypointDataset& gt,
                                     std::span<const DekrImageOutputs<T>> outputs,
                                     const DekrDecodeConfig& cfg = {}, const RescoreNet& rescore = {},
                                     const std::string& results_path = "") {
  DekrEvaluator ev(cfg, rescore);
  for (const auto& o : outputs)
    ev.add(ctx, std::span<const DekrImageMeta>(&o.meta, 1), o.heatmaps, o.displacements, o.heatmaps_flip,
           o.displacements_flip);
  if (!results_path.empty()) ev.write_results(results_path);
  return ev.evaluate(gt);
}

}  // namespace eval
}  // namespace ampkit

/// @brief COCO keypoint ground truth and results files as the evaluator reads them: the fields
/// pycocotools uses, `COCO.loadRes` semantics for results (ids, areas), and a results writer.
#pragma once

#include <nlohmann/json.hpp>

#include <array>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "ampkit/core/error.hpp"

namespace ampkit::eval {

/// One ground-truth annotation, only the fields keypoint evaluation reads.
struct CocoGroundTruth {
  std::int64_t id = 0;
  std::int64_t image_id = 0;
  std::int64_t category_id = 0;
  double area = 0;                 ///< the JSON `area` (segmentation area), not the bbox area
  bool iscrowd = false;
  std::int64_t num_keypoints = 0;  ///< the JSON field; pycocotools ignores GTs where it is 0
  std::vector<double> keypoints;   ///< (x, y, v) triplets as in the file
  std::optional<std::array<double, 4>> bbox;  ///< x, y, w, h; needed for GTs without labelled keypoints
};

/// The parts of a COCO keypoints annotation file the evaluator needs.
struct CocoKeypointDataset {
  std::vector<std::int64_t> image_ids;     ///< `images[].id`, file order
  std::vector<std::int64_t> category_ids;  ///< `categories[].id`, file order
  std::vector<CocoGroundTruth> annotations;  ///< file order

  static CocoKeypointDataset from_json(const nlohmann::json& j, const std::string& what = "ground truth");
  static CocoKeypointDataset load(const std::string& path);
};

/// One keypoint result in COCO's results format, plus the fields `COCO.loadRes` adds
/// (`id`, `area`) once loaded. Written by `write_results`, read by `load_results`.
struct KeypointResult {
  std::int64_t image_id = 0;
  std::int64_t category_id = 1;
  std::vector<double> keypoints;  ///< (x, y, score-or-visibility) triplets
  double score = 0;
  std::optional<std::array<double, 4>> bbox;  ///< optional; when present loadRes uses w*h as the area
  // Set by load_results (COCO.loadRes): 1-based position in the file, and the area used for the
  // area-range rule.
  std::int64_t id = 0;
  double area = 0;
};

namespace detail {

inline nlohmann::json read_json_file(const std::string& path, const char* what) {
  std::ifstream f(path, std::ios::binary);
  AMPKIT_CHECK(f.good(), "cannot open ", what, " file '", path, "'");
  // Slurp first: parsing from a contiguous buffer is several times faster than from an istream,
  // which matters for COCO-val-sized results (150k detections, ~160 MB).
  std::string text;
  f.seekg(0, std::ios::end);
  text.resize(static_cast<std::size_t>(std::max<std::streamoff>(f.tellg(), 0)));
  f.seekg(0, std::ios::beg);
  f.read(text.data(), static_cast<std::streamsize>(text.size()));
  AMPKIT_CHECK(f.good() || f.eof(), "reading ", what, " file '", path, "' failed");
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    AMPKIT_FAIL(what, " file '", path, "' is not valid JSON: ", e.what());
  }
}

inline double number(const nlohmann::json& j, const char* key, const char* what, std::size_t index) {
  auto it = j.find(key);
  AMPKIT_CHECK(it != j.end(), what, " entry ", index, " has no '", key, "'");
  AMPKIT_CHECK(it->is_number() || it->is_boolean(), what, " entry ", index, ": '", key,
               "' is not a number");
  return it->is_boolean() ? (it->get<bool>() ? 1.0 : 0.0) : it->get<double>();
}

inline std::int64_t integer(const nlohmann::json& j, const char* key, const char* what, std::size_t index) {
  auto it = j.find(key);
  AMPKIT_CHECK(it != j.end(), what, " entry ", index, " has no '", key, "'");
  AMPKIT_CHECK(it->is_number_integer(), what, " entry ", index, ": '", key, "' is not an integer");
  return it->get<std::int64_t>();
}

inline std::vector<double> numbers(const nlohmann::json& j, const char* key, const char* what,
                                   std::size_t index) {
  auto it = j.find(key);
  AMPKIT_CHECK(it != j.end() && it->is_array(), what, " entry ", index, " has no '", key, "' list");
  std::vector<double> v;
  v.reserve(it->size());
  for (const auto& x : *it) {
    AMPKIT_CHECK(x.is_number(), what, " entry ", index, ": '", key, "' holds a non-number");
    v.push_back(x.get<double>());
  }
  return v;
}

inline std::optional<std::array<double, 4>> optional_box(const nlohmann::json& j, const char* what,
                                                         std::size_t index) {
  auto it = j.find("bbox");
  if (it == j.end() || !it->is_array() || it->empty()) return std::nullopt;
  auto v = numbers(j, "bbox", what, index);
  AMPKIT_CHECK(v.size() == 4, what, " entry ", index, ": bbox has ", v.size(), " numbers, expected 4");
  return std::array<double, 4>{v[0], v[1], v[2], v[3]};
}

}  // namespace detail

inline CocoKeypointDataset CocoKeypointDataset::from_json(const nlohmann::json& j, const std::string& what) {
  AMPKIT_CHECK(j.is_object(), what, ": expected a COCO annotation object");
  CocoKeypointDataset ds;
  auto images = j.find("images");
  AMPKIT_CHECK(images != j.end() && images->is_array(), what, ": no 'images' list");
  for (std::size_t i = 0; i < images->size(); ++i)
    ds.image_ids.push_back(detail::integer((*images)[i], "id", "images", i));
  if (auto cats = j.find("categories"); cats != j.end() && cats->is_array())
    for (std::size_t i = 0; i < cats->size(); ++i)
      ds.category_ids.push_back(detail::integer((*cats)[i], "id", "categories", i));
  auto anns = j.find("annotations");
  if (anns == j.end()) return ds;
  AMPKIT_CHECK(anns->is_array(), what, ": 'annotations' is not a list");
  ds.annotations.reserve(anns->size());
  for (std::size_t i = 0; i < anns->size(); ++i) {
    const auto& a = (*anns)[i];
    CocoGroundTruth g;
    g.id = detail::integer(a, "id", "annotations", i);
    g.image_id = detail::integer(a, "image_id", "annotations", i);
    g.category_id = detail::integer(a, "category_id", "annotations", i);
    g.area = detail::number(a, "area", "annotations", i);
    // pycocotools: `'iscrowd' in gt and gt['iscrowd']`; a missing field reads as 0.
    g.iscrowd = a.contains("iscrowd") && detail::number(a, "iscrowd", "annotations", i) != 0;
    const double nk = detail::number(a, "num_keypoints", "annotations", i);
    // Range-checked: casting 1e300 or NaN to an integer is UB (tests/fuzz/fuzz_coco_results).
    AMPKIT_CHECK(nk >= 0 && nk <= 1e9, what, ": annotation ", i, " (id ", g.id, ") has num_keypoints ", nk);
    g.num_keypoints = static_cast<std::int64_t>(nk);
    g.keypoints = detail::numbers(a, "keypoints", "annotations", i);
    AMPKIT_CHECK(g.keypoints.size() % 3 == 0, what, ": annotation ", i, " (id ", g.id, ") has ",
                 g.keypoints.size(), " keypoint numbers, not a multiple of 3");
    g.bbox = detail::optional_box(a, "annotations", i);
    ds.annotations.push_back(std::move(g));
  }
  return ds;
}

inline CocoKeypointDataset CocoKeypointDataset::load(const std::string& path) {
  return from_json(detail::read_json_file(path, "ground-truth"), "ground truth '" + path + "'");
}

/// Read results as `COCO.loadRes` does (pycocotools 2.0.x):
/// - every image_id must be an image of the ground truth;
/// - the branch is chosen by the FIRST result only: a non-empty `bbox` there means every result
///   takes area = w*h from its own bbox; otherwise (keypoints) area = extent of ALL keypoints
///   (x over every triplet, visibility ignored), as (max x - min x) * (max y - min y);
/// - ids are the 1-based positions in the file.
/// An empty list gives no detections (pycocotools raises on it; evaluating it is more useful).
inline std::vector<KeypointResult> load_results(const nlohmann::json& j, const CocoKeypointDataset& gt,
                                                const std::string& what = "results") {
  AMPKIT_CHECK(j.is_array(), what, ": results are not a list of objects (COCO results format)");
  std::vector<KeypointResult> out;
  out.reserve(j.size());
  const std::set<std::int64_t> images(gt.image_ids.begin(), gt.image_ids.end());
  const bool box_branch = !j.empty() && j[0].is_object() && j[0].contains("bbox") &&
                          !(j[0]["bbox"].is_array() && j[0]["bbox"].empty());
  if (!j.empty() && !box_branch) {
    AMPKIT_CHECK(j[0].is_object() && j[0].contains("keypoints"), what,
                 ": the first result has neither 'bbox' nor 'keypoints'; only keypoint results "
                 "can be evaluated here");
  }
  for (std::size_t i = 0; i < j.size(); ++i) {
    const auto& a = j[i];
    AMPKIT_CHECK(a.is_object(), what, ": entry ", i, " is not an object");
    KeypointResult r;
    r.image_id = detail::integer(a, "image_id", what.c_str(), i);
    AMPKIT_CHECK(images.count(r.image_id), what, ": entry ", i, " has image_id ", r.image_id,
                 ", which is not an image of the ground truth (pycocotools: 'Results do not "
                 "correspond to current coco set')");
    r.category_id = detail::integer(a, "category_id", what.c_str(), i);
    r.score = detail::number(a, "score", what.c_str(), i);
    r.keypoints = detail::numbers(a, "keypoints", what.c_str(), i);
    AMPKIT_CHECK(!r.keypoints.empty() && r.keypoints.size() % 3 == 0, what, ": entry ", i, " has ",
                 r.keypoints.size(), " keypoint numbers, expected (x, y, v) triplets");
    r.id = static_cast<std::int64_t>(i) + 1;
    if (box_branch) {
      r.bbox = detail::optional_box(a, what.c_str(), i);
      AMPKIT_CHECK(r.bbox.has_value(), what, ": entry ", i,
                   " has no bbox, but the first result has one (loadRes then reads every bbox)");
      r.area = (*r.bbox)[2] * (*r.bbox)[3];
    } else {
      double x0 = r.keypoints[0], x1 = x0, y0 = r.keypoints[1], y1 = y0;
      for (std::size_t k = 0; k < r.keypoints.size(); k += 3) {
        x0 = std::min(x0, r.keypoints[k]);
        x1 = std::max(x1, r.keypoints[k]);
        y0 = std::min(y0, r.keypoints[k + 1]);
        y1 = std::max(y1, r.keypoints[k + 1]);
      }
      r.area = (x1 - x0) * (y1 - y0);
      r.bbox = std::array<double, 4>{x0, y0, x1 - x0, y1 - y0};
    }
    out.push_back(std::move(r));
  }
  return out;
}

inline std::vector<KeypointResult> load_results(const std::string& path, const CocoKeypointDataset& gt) {
  return load_results(detail::read_json_file(path, "results"), gt, "results '" + path + "'");
}

/// COCO results format: a list of {image_id, category_id, keypoints: [x, y, v, ...], score}
/// (+ bbox when set). Doubles are written with round-trip precision, so pycocotools reading the
/// file sees exactly the values ampkit evaluated.
inline nlohmann::json results_to_json(const std::vector<KeypointResult>& results) {
  nlohmann::json j = nlohmann::json::array();
  for (const auto& r : results) {
    nlohmann::json e;
    e["image_id"] = r.image_id;
    e["category_id"] = r.category_id;
    e["keypoints"] = r.keypoints;
    e["score"] = r.score;
    if (r.bbox) e["bbox"] = *r.bbox;
    j.push_back(std::move(e));
  }
  return j;
}

inline void write_results(const std::string& path, const std::vector<KeypointResult>& results) {
  std::ofstream f(path);
  AMPKIT_CHECK(f.good(), "cannot write results file '", path, "'");
  f << results_to_json(results).dump();
  AMPKIT_CHECK(f.good(), "writing results file '", path, "' failed");
}

}  // namespace ampkit::eval

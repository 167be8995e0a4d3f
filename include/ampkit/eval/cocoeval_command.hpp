/// @brief `cocoeval GT.json RESULTS.json [--json] [--arrays]`: the COCO keypoint evaluator as a
/// command (used by `dekr_amp cocoeval` and the standalone `ampkit_cocoeval`).
#pragma once

#include <nlohmann/json.hpp>

#include <exception>
#include <iostream>
#include <span>
#include <string>
#include <vector>

#include "ampkit/core/error.hpp"
#include "ampkit/eval/coco_eval.hpp"
#include "ampkit/eval/coco_keypoints.hpp"

namespace ampkit::eval {

inline constexpr const char* kCocoevalUsage =
    "usage: cocoeval GT.json RESULTS.json [--json] [--arrays]\n"
    "  Evaluates COCO keypoint results (the COCO results format: image_id, category_id,\n"
    "  keypoints, score) against a COCO keypoint annotation file, exactly as pycocotools'\n"
    "  COCOeval(iouType='keypoints') does, and prints its ten summary lines.\n"
    "  --json    print {\"stats\": [...], \"stats_by_name\": {...}} instead (full precision)\n"
    "  --arrays  with --json, add precision[t][r][k][a] and recall[t][k][a]\n";

/// Run the command; `args` are the arguments after the command name. Returns the exit code:
/// 0 success, 1 an error (one line on `err`), 2 a usage error.
inline int cocoeval_command(std::span<const std::string> args, std::ostream& out = std::cout,
                            std::ostream& err = std::cerr) {
  std::vector<std::string> files;
  bool as_json = false, arrays = false;
  for (const auto& a : args) {
    if (a == "--json") {
      as_json = true;
    } else if (a == "--arrays") {
      arrays = true;
    } else if (a == "-h" || a == "--help") {
      out << kCocoevalUsage;
      return 0;
    } else if (a.size() > 1 && a[0] == '-') {
      err << "cocoeval: unknown option '" << a << "'\n" << kCocoevalUsage;
      return 2;
    } else {
      files.push_back(a);
    }
  }
  if (files.size() != 2) {
    err << "cocoeval: expected 2 files (GT.json RESULTS.json), got " << files.size() << "\n"
        << kCocoevalUsage;
    return 2;
  }
  try {
    const auto gt = CocoKeypointDataset::load(files[0]);
    auto results = load_results(files[1], gt);
    CocoKeypointEval ev(gt, std::move(results));
    const auto stats = ev.run();
    if (!as_json) {
      out << ev.summary_text();
      return 0;
    }
    nlohmann::json j;
    j["stats"] = stats;
    for (std::size_t i = 0; i < stats.size(); ++i) j["stats_by_name"][kCocoKeypointStatNames[i]] = stats[i];
    j["num_images"] = ev.image_ids().size();
    j["num_results"] = ev.results().size();
    if (arrays) {
      nlohmann::json p = nlohmann::json::array(), r = nlohmann::json::array();
      for (std::size_t t = 0; t < ev.T(); ++t) {
        nlohmann::json pt = nlohmann::json::array(), rt = nlohmann::json::array();
        for (std::size_t ri = 0; ri < ev.R(); ++ri) {
          nlohmann::json pk = nlohmann::json::array();
          for (std::size_t k = 0; k < ev.K(); ++k) {
            nlohmann::json pa = nlohmann::json::array();
            for (std::size_t a = 0; a < ev.A(); ++a) pa.push_back(ev.precision(t, ri, k, a));
            pk.push_back(std::move(pa));
          }
          pt.push_back(std::move(pk));
        }
        for (std::size_t k = 0; k < ev.K(); ++k) {
          nlohmann::json ra = nlohmann::json::array();
          for (std::size_t a = 0; a < ev.A(); ++a) ra.push_back(ev.recall(t, k, a));
          rt.push_back(std::move(ra));
        }
        p.push_back(std::move(pt));
        r.push_back(std::move(rt));
      }
      j["precision"] = std::move(p);
      j["recall"] = std::move(r);
    }
    out << j.dump() << "\n";
    return 0;
  } catch (const std::exception& e) {
    err << "cocoeval: error: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace ampkit::eval

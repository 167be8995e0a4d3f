/// @brief Draw COCO keypoint results (the results JSON `dekr_amp test` writes) as skeletons on
/// their images and save one PNG: the images side by side at a common height, each person in its
/// own colour, COCO's skeleton links. What `dekr_amp demo` shows; usable on any results file.
///
/// Host only (g++): PNG output through data/png_write.hpp (stb_image_write with internal linkage, as
/// data/image.hpp does for stb_image), so including this header in several TUs is safe.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ampkit/core/error.hpp"
#include "ampkit/data/image.hpp"
#include "ampkit/data/png_write.hpp"
#include "ampkit/eval/coco_keypoints.hpp"


namespace ampkit::eval {

/// COCO's skeleton (the dataset meta's 19 links), 0-based keypoint indices.
inline constexpr std::array<std::array<int, 2>, 19> kCocoSkeleton = {{{15, 13}, {13, 11}, {16, 14}, {14, 12},
                                                                      {11, 12}, {5, 11},  {6, 12},  {5, 6},
                                                                      {5, 7},   {6, 8},   {7, 9},   {8, 10},
                                                                      {1, 2},   {0, 1},   {0, 2},   {1, 3},
                                                                      {2, 4},   {3, 5},   {4, 6}}};

struct DrawOptions {
  int tile_height = 384;          ///< every image is scaled to this height
  int max_images = 8;             ///< first N images of the annotation file
  int max_people = 10;            ///< per image, highest score first
  double min_person_score = 0.0;  ///< draw people scoring at least this
  double keypoint_thr = 0.0;      ///< draw joints (and links) whose score is at least this
};

namespace detail {

struct Canvas {
  int w = 0, h = 0;
  std::vector<std::uint8_t> rgb;
  Canvas(int w_, int h_, std::uint8_t fill) : w(w_), h(h_), rgb(static_cast<std::size_t>(w_) * h_ * 3, fill) {}
  void blend(int x, int y, const std::array<std::uint8_t, 3>& c, float a) {
    if (x < 0 || y < 0 || x >= w || y >= h) return;
    std::uint8_t* p = rgb.data() + (static_cast<std::size_t>(y) * w + x) * 3;
    for (int k = 0; k < 3; ++k) p[k] = static_cast<std::uint8_t>(std::lround(p[k] * (1 - a) + c[k] * a));
  }
  void disc(double cx, double cy, double r, const std::array<std::uint8_t, 3>& c, float a = 1.f) {
    for (int y = static_cast<int>(std::floor(cy - r)); y <= static_cast<int>(std::ceil(cy + r)); ++y)
      for (int x = static_cast<int>(std::floor(cx - r)); x <= static_cast<int>(std::ceil(cx + r)); ++x)
        if ((x - cx) * (x - cx) + (y - cy) * (y - cy) <= r * r) blend(x, y, c, a);
  }
  /// A thick segment: every pixel within r of the segment.
  void line(double x0, double y0, double x1, double y1, double r, const std::array<std::uint8_t, 3>& c, float a) {
    const double dx = x1 - x0, dy = y1 - y0, len2 = dx * dx + dy * dy;
    const int xa = static_cast<int>(std::floor(std::min(x0, x1) - r)), xb = static_cast<int>(std::ceil(std::max(x0, x1) + r));
    const int ya = static_cast<int>(std::floor(std::min(y0, y1) - r)), yb = static_cast<int>(std::ceil(std::max(y0, y1) + r));
    for (int y = std::max(ya, 0); y <= std::min(yb, h - 1); ++y)
      for (int x = std::max(xa, 0); x <= std::min(xb, w - 1); ++x) {
        const double t = len2 > 0 ? std::clamp(((x - x0) * dx + (y - y0) * dy) / len2, 0.0, 1.0) : 0.0;
        const double ex = x0 + t * dx - x, ey = y0 + t * dy - y;
        if (ex * ex + ey * ey <= r * r) blend(x, y, c, a);
      }
  }
};

/// Bilinear resize of an RGB image into the canvas at (ox, 0), `tw` x `th` pixels.
inline void paste_scaled(const data::Image& img, Canvas& cv, int ox, int tw, int th) {
  const double sx = static_cast<double>(img.w) / tw, sy = static_cast<double>(img.h) / th;
  for (int y = 0; y < th; ++y) {
    const double fy = std::clamp((y + 0.5) * sy - 0.5, 0.0, img.h - 1.0);
    const int y0 = static_cast<int>(fy), y1 = std::min(y0 + 1, img.h - 1);
    const double wy = fy - y0;
    for (int x = 0; x < tw; ++x) {
      const double fx = std::clamp((x + 0.5) * sx - 0.5, 0.0, img.w - 1.0);
      const int x0 = static_cast<int>(fx), x1 = std::min(x0 + 1, img.w - 1);
      const double wx = fx - x0;
      std::uint8_t* p = cv.rgb.data() + (static_cast<std::size_t>(y) * cv.w + ox + x) * 3;
      for (int k = 0; k < 3; ++k) {
        const auto at = [&](int yy, int xx) { return static_cast<double>(img.row(yy)[xx * img.c + (img.c >= 3 ? k : 0)]); };
        const double v = (at(y0, x0) * (1 - wx) + at(y0, x1) * wx) * (1 - wy) + (at(y1, x0) * (1 - wx) + at(y1, x1) * wx) * wy;
        p[k] = static_cast<std::uint8_t>(std::clamp(std::lround(v), 0L, 255L));
      }
    }
  }
}

/// Well separated colours (one per person, cycling).
inline const std::array<std::uint8_t, 3>& person_colour(std::size_t i) {
  static constexpr std::array<std::array<std::uint8_t, 3>, 10> kPalette = {{{230, 25, 75},  {60, 180, 75},
                                                                            {255, 225, 25}, {0, 130, 200},
                                                                            {245, 130, 48}, {145, 30, 180},
                                                                            {70, 240, 240}, {240, 50, 230},
                                                                            {210, 245, 60}, {250, 190, 190}}};
  return kPalette[i % kPalette.size()];
}

}  // namespace detail

/// Draw `results_file` (COCO keypoint results) on the images of `ann_file` found under
/// `img_root` and write `out_png`. Returns the number of people drawn.
inline std::size_t draw_results_png(const std::string& ann_file, const std::string& img_root,
                                    const std::string& results_file, const std::string& out_png,
                                    const DrawOptions& opt = {}) {
  const nlohmann::json ann = detail::read_json_file(ann_file, "annotation");
  const nlohmann::json res = detail::read_json_file(results_file, "results");
  AMPKIT_CHECK(res.is_array(), "results '", results_file, "' is not a JSON array (COCO results format)");
  struct Person {
    std::vector<double> kpts;
    double score = 0;
  };
  std::map<std::int64_t, std::vector<Person>> by_image;
  for (const auto& r : res) {
    Person p;
    p.kpts = r.at("keypoints").get<std::vector<double>>();
    p.score = r.at("score").get<double>();
    AMPKIT_CHECK(p.kpts.size() == 51, "results '", results_file, "': a result has ", p.kpts.size(),
                 " keypoint values (COCO: 17 x 3)");
    if (p.score >= opt.min_person_score) by_image[r.at("image_id").get<std::int64_t>()].push_back(std::move(p));
  }
  struct Tile {
    data::Image img;
    std::int64_t id;
    int w;
  };
  std::vector<Tile> tiles;
  int total_w = 0;
  for (const auto& im : ann.at("images")) {
    if (static_cast<int>(tiles.size()) >= opt.max_images) break;
    Tile t{data::load_image(img_root + im.at("file_name").get<std::string>()), im.at("id").get<std::int64_t>(), 0};
    t.w = std::max(1, static_cast<int>(std::lround(static_cast<double>(t.img.w) * opt.tile_height / t.img.h)));
    total_w += t.w + (tiles.empty() ? 0 : 4);
    tiles.push_back(std::move(t));
  }
  AMPKIT_CHECK(!tiles.empty(), "annotation '", ann_file, "' lists no images");
  detail::Canvas cv(total_w, opt.tile_height, 32);
  std::size_t n_drawn = 0;
  int ox = 0;
  const double r = std::max(1.5, opt.tile_height / 160.0);  // line half-width in pixels
  for (const auto& t : tiles) {
    detail::paste_scaled(t.img, cv, ox, t.w, opt.tile_height);
    auto people = by_image[t.id];
    std::stable_sort(people.begin(), people.end(), [](const Person& a, const Person& b) { return a.score > b.score; });
    if (static_cast<int>(people.size()) > opt.max_people) people.resize(static_cast<std::size_t>(opt.max_people));
    const double s = static_cast<double>(opt.tile_height) / t.img.h;
    const auto X = [&](const Person& p, int k) { return ox + (p.kpts[3 * k] + 0.5) * s - 0.5; };
    const auto Y = [&](const Person& p, int k) { return (p.kpts[3 * k + 1] + 0.5) * s - 0.5; };
    const auto shown = [&](const Person& p, int k) { return p.kpts[3 * k + 2] >= opt.keypoint_thr; };
    for (std::size_t i = 0; i < people.size(); ++i) {
      const Person& p = people[i];
      const auto& c = detail::person_colour(i);
      for (const auto& [a, b] : kCocoSkeleton)
        if (shown(p, a) && shown(p, b)) cv.line(X(p, a), Y(p, a), X(p, b), Y(p, b), r, c, 0.8f);
      for (int k = 0; k < 17; ++k)
        if (shown(p, k)) {
          cv.disc(X(p, k), Y(p, k), r + 1.5, {255, 255, 255});
          cv.disc(X(p, k), Y(p, k), r + 0.5, c);
        }
      ++n_drawn;
    }
    ox += t.w + 4;
  }
  data::write_png(out_png, cv.w, cv.h, 3, cv.rgb.data());
  return n_drawn;
}

}  // namespace ampkit::eval

/// @brief COCO segmentation masks: polygon rasterisation and run-length (RLE) decoding with the
/// semantics of pycocotools' mask API (maskApi.c), so ignore masks match the reference pixel for
/// pixel.
///
/// COCO stores a binary mask of an H×W image as run lengths over the pixels in column-major order
/// (x outer, y inner), starting with a run of zeros. A crowd region comes as RLE, either as a list
/// of counts ("uncompressed") or as pycocotools' compressed string; everything else is polygons.
/// Everything here returns masks row-major (H,W), 1 inside.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "ampkit/core/error.hpp"

namespace ampkit::data {

/// A binary mask, row-major (H,W), values 0/1.
struct Mask {
  int h = 0, w = 0;
  std::vector<std::uint8_t> bits;

  Mask() = default;
  Mask(int h_, int w_) : h(h_), w(w_), bits(static_cast<std::size_t>(h_) * w_, 0) {}
  std::uint8_t& at(int y, int x) { return bits[static_cast<std::size_t>(y) * w + x]; }
  std::uint8_t at(int y, int x) const { return bits[static_cast<std::size_t>(y) * w + x]; }
};

/// One COCO segmentation as it appears in the JSON: polygons (each x0,y0,x1,y1,...) or an RLE
/// with explicit size, as counts or as a compressed string.
struct Segmentation {
  enum class Kind { kPolygons, kRleCounts, kRleString };
  Kind kind = Kind::kPolygons;
  std::vector<std::vector<double>> polygons;
  std::vector<std::uint32_t> counts;  // kRleCounts
  std::string rle_string;             // kRleString
  int rle_h = 0, rle_w = 0;           // "size": [h, w] of an RLE
};

/// Run lengths of a mask in COCO order (column-major, first run counts zeros).
inline std::vector<std::uint32_t> mask_to_counts(const Mask& m) {
  std::vector<std::uint32_t> counts;
  std::uint8_t cur = 0;
  std::uint32_t run = 0;
  for (int x = 0; x < m.w; ++x)
    for (int y = 0; y < m.h; ++y) {
      const std::uint8_t v = m.at(y, x) ? 1 : 0;
      if (v != cur) {
        counts.push_back(run);
        run = 0;
        cur = v;
      }
      ++run;
    }
  counts.push_back(run);
  return counts;
}

/// OR the run lengths `counts` (column-major) into `out`. Throws if they do not cover H·W.
inline void or_counts_into(const std::vector<std::uint32_t>& counts, Mask& out,
                           std::string_view what) {
  const std::uint64_t n = static_cast<std::uint64_t>(out.h) * out.w;
  std::uint64_t pos = 0;
  bool one = false;
  for (std::uint32_t c : counts) {
    AMPKIT_CHECK(pos + c <= n, what, ": RLE counts cover more than ", out.h, "x", out.w,
                 " = ", n, " pixels");
    if (one && c > 0) {  // c > 0: a zero-pixel mask (h = 0) must not divide by h
      int y = static_cast<int>(pos % out.h), x = static_cast<int>(pos / out.h);
      for (std::uint32_t i = 0; i < c; ++i) {
        out.at(y, x) = 1;
        if (++y == out.h) y = 0, ++x;
      }
    }
    pos += c;
    one = !one;
  }
  AMPKIT_CHECK(pos == n, what, ": RLE counts cover ", pos, " pixels, the mask has ", out.h, "x",
               out.w, " = ", n);
}

/// Decode pycocotools' compressed RLE string: each count is a little-endian sequence of 5-bit
/// groups stored as chars from '0' (48); bit 0x20 says "more groups follow", and bit 0x10 of the
/// last group is the sign. From the third count on, the value is a difference to the count two
/// places earlier (runs of the same colour have similar lengths, so the deltas are small).
inline std::vector<std::uint32_t> decode_rle_string(std::string_view s, std::string_view what) {
  std::vector<std::uint32_t> counts;
  std::size_t p = 0;
  while (p < s.size()) {
    std::int64_t x = 0;
    int k = 0;
    bool more = true;
    while (more) {
      AMPKIT_CHECK(p < s.size(), what, ": compressed RLE string ends inside a count");
      const int c = static_cast<int>(static_cast<unsigned char>(s[p])) - 48;
      AMPKIT_CHECK(c >= 0 && c < 64, what, ": compressed RLE string has an invalid character '",
                   s[p], "' at ", p);
      AMPKIT_CHECK(k < 7, what, ": compressed RLE count too long at ", p);
      x |= static_cast<std::int64_t>(c & 0x1f) << (5 * k);
      more = (c & 0x20) != 0;
      ++p;
      ++k;
      if (!more && (c & 0x10)) x |= -(std::int64_t{1} << (5 * k));  // sign-extend
    }
    if (counts.size() > 2) x += counts[counts.size() - 2];
    AMPKIT_CHECK(x >= 0 && x <= 0xffffffffLL, what, ": compressed RLE gives a negative count");
    counts.push_back(static_cast<std::uint32_t>(x));
  }
  return counts;
}

/// Rasterise one polygon the way pycocotools' rleFrPoly does and OR it into `out`.
///
/// The reference upsamples the outline 5×, walks each edge along its major axis, keeps the points
/// where the outline crosses a pixel column centre and turns those into column-wise on/off
/// transitions. The result is "pixel centre inside the polygon", with that algorithm's exact
/// choices at the edges (the integer truncations below are part of its semantics).
inline void rasterize_polygon_into(const std::vector<double>& xy, Mask& out) {
  const int h = out.h, w = out.w;
  const std::size_t k = xy.size() / 2;
  if (k == 0) return;
  // Hardening: the outline walk below visits every upsampled grid point along each edge, and
  // casts coordinates to int. A NaN/inf, or a coordinate far outside the image (1e9 from a
  // corrupt file), would be UB or minutes of work and gigabytes of points. Real COCO polygons lie
  // within a pixel or two of the image; anything beyond twice its size is rejected.
  const double limit = 2.0 * std::max(h, w) + 64;
  for (double c : xy)
    AMPKIT_CHECK(std::isfinite(c) && std::abs(c) <= limit, "polygon coordinate ", c,
                 " is not finite or lies far outside the ", h, "x", w, " image (limit +-", limit,
                 "): corrupt segmentation");
  constexpr double kScale = 5;
  std::vector<int> x(k + 1), y(k + 1);
  for (std::size_t j = 0; j < k; ++j) {
    x[j] = static_cast<int>(kScale * xy[2 * j] + .5);  // truncation toward zero, as in C
    y[j] = static_cast<int>(kScale * xy[2 * j + 1] + .5);
  }
  x[k] = x[0];
  y[k] = y[0];
  // Dense outline points (u, v) in the upsampled grid.
  std::vector<int> u, v;
  for (std::size_t j = 0; j < k; ++j) {
    int xs = x[j], xe = x[j + 1], ys = y[j], ye = y[j + 1];
    const int dx = std::abs(xe - xs), dy = std::abs(ys - ye);
    const bool flip = (dx >= dy && xs > xe) || (dx < dy && ys > ye);
    if (flip) {
      std::swap(xs, xe);
      std::swap(ys, ye);
    }
    if (dx >= dy) {
      const double s = dx == 0 ? 0.0 : static_cast<double>(ye - ys) / dx;
      for (int d = 0; d <= dx; ++d) {
        const int t = flip ? dx - d : d;
        u.push_back(t + xs);
        v.push_back(static_cast<int>(ys + s * t + .5));
      }
    } else {
      const double s = static_cast<double>(xe - xs) / dy;
      for (int d = 0; d <= dy; ++d) {
        const int t = flip ? dy - d : d;
        v.push_back(t + ys);
        u.push_back(static_cast<int>(xs + s * t + .5));
      }
    }
  }
  // Where the outline crosses a column of pixel centres: one on/off transition per crossing.
  std::vector<std::uint32_t> a;
  for (std::size_t j = 1; j < u.size(); ++j) {
    if (u[j] == u[j - 1]) continue;
    double xd = u[j] < u[j - 1] ? u[j] : u[j] - 1;
    xd = (xd + .5) / kScale - .5;
    if (std::floor(xd) != xd || xd < 0 || xd > w - 1) continue;
    double yd = v[j] < v[j - 1] ? v[j] : v[j - 1];
    yd = (yd + .5) / kScale - .5;
    yd = std::ceil(std::clamp(yd, 0.0, static_cast<double>(h)));
    a.push_back(static_cast<std::uint32_t>(static_cast<int>(xd) * h + static_cast<int>(yd)));
  }
  a.push_back(static_cast<std::uint32_t>(h) * static_cast<std::uint32_t>(w));
  std::sort(a.begin(), a.end());
  // Transitions -> run lengths; two transitions at the same pixel cancel (merge the runs).
  std::uint32_t prev = 0;
  for (auto& t : a) {
    const std::uint32_t cur = t;
    t -= prev;
    prev = cur;
  }
  std::vector<std::uint32_t> counts;
  std::size_t j = 0;
  counts.push_back(a[j++]);
  while (j < a.size()) {
    if (a[j] > 0) {
      counts.push_back(a[j++]);
    } else {
      ++j;
      if (j < a.size()) counts.back() += a[j++];
    }
  }
  or_counts_into(counts, out, "polygon");
}

/// OR one segmentation into `out` (an H×W image mask), as pycocotools' frPyObjects + merge +
/// decode do for the union of several objects. `what` names the annotation in error messages.
inline void add_segmentation(const Segmentation& seg, Mask& out, std::string_view what) {
  switch (seg.kind) {
    case Segmentation::Kind::kPolygons: {
      for (const auto& p : seg.polygons) {
        AMPKIT_CHECK(p.size() % 2 == 0, what, ": polygon has an odd number (", p.size(),
                     ") of coordinates");
        rasterize_polygon_into(p, out);
      }
      return;
    }
    case Segmentation::Kind::kRleCounts:
    case Segmentation::Kind::kRleString: {
      AMPKIT_CHECK(seg.rle_h == out.h && seg.rle_w == out.w, what, ": RLE size [", seg.rle_h,
                   ",", seg.rle_w, "] differs from the image size [", out.h, ",", out.w, "]");
      if (seg.kind == Segmentation::Kind::kRleCounts)
        or_counts_into(seg.counts, out, what);
      else
        or_counts_into(decode_rle_string(seg.rle_string, what), out, what);
      return;
    }
  }
}

/// The union of `segs` as an (h,w) mask.
inline Mask segmentations_to_mask(const std::vector<Segmentation>& segs, int h, int w,
                                  std::string_view what = "segmentation") {
  Mask m(h, w);
  for (const auto& s : segs) add_segmentation(s, m, what);
  return m;
}

}  // namespace ampkit::data

/// @brief Affine warps with OpenCV's semantics: mmpose's get_warp_matrix, cv2.warpAffine
/// (INTER_LINEAR, constant border 0), cv2.resize (INTER_LINEAR) and cv2.transform of points.
///
/// The reference pipeline runs these through OpenCV, so "bilinear" here means OpenCV's bilinear:
/// the source position of each output pixel is computed in fixed point with 1/32-pixel steps
/// (INTER_BITS = 5), 8-bit images are blended with 15-bit integer weights and rounded, and float
/// images with the same 1/32-quantised weights in float. Reproducing that (instead of exact
/// bilinear) makes our warped images equal to cv2.warpAffine's byte for byte (OpenCV 4.x up to
/// 4.10; tested against 4.10), which the targets and the golden tests rely on.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numbers>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "ampkit/core/error.hpp"
#include "ampkit/data/image.hpp"

namespace ampkit::data {

/// A 2×3 affine map, row-major: x' = m[0] x + m[1] y + m[2], y' = m[3] x + m[4] y + m[5].
struct Affine {
  std::array<double, 6> m{1, 0, 0, 0, 1, 0};

  /// The inverse map, computed as cv2.warpAffine does before sampling.
  Affine inverse() const {
    double d = m[0] * m[4] - m[1] * m[3];
    d = d != 0 ? 1. / d : 0.;
    Affine r;
    const double a11 = m[4] * d, a22 = m[0] * d;
    r.m[0] = a11;
    r.m[1] = m[1] * -d;
    r.m[3] = m[3] * -d;
    r.m[4] = a22;
    r.m[2] = -r.m[0] * m[2] - r.m[1] * m[5];
    r.m[5] = -r.m[3] * m[2] - r.m[4] * m[5];
    return r;
  }
};

namespace detail {

/// Solve the 3×3 system A x = b (two right-hand sides) by Gaussian elimination with partial
/// pivoting, the method cv2.getAffineTransform uses (its 6×6 system splits into these two).
inline void solve3(std::array<double, 9> a, std::array<double, 6>& b) {
  for (int i = 0; i < 3; ++i) {
    int k = i;
    for (int j = i + 1; j < 3; ++j)
      if (std::abs(a[j * 3 + i]) > std::abs(a[k * 3 + i])) k = j;
    AMPKIT_CHECK(std::abs(a[k * 3 + i]) > 0, "affine: degenerate point triple");
    if (k != i) {
      for (int j = i; j < 3; ++j) std::swap(a[i * 3 + j], a[k * 3 + j]);
      for (int j = 0; j < 2; ++j) std::swap(b[i * 2 + j], b[k * 2 + j]);
    }
    const double d = -1 / a[i * 3 + i];
    for (int j = i + 1; j < 3; ++j) {
      const double alpha = a[j * 3 + i] * d;
      for (int c = i + 1; c < 3; ++c) a[j * 3 + c] += alpha * a[i * 3 + c];
      for (int c = 0; c < 2; ++c) b[j * 2 + c] += alpha * b[i * 2 + c];
    }
  }
  for (int i = 2; i >= 0; --i)
    for (int c = 0; c < 2; ++c) {
      double s = b[i * 2 + c];
      for (int k = i + 1; k < 3; ++k) s -= a[i * 3 + k] * b[k * 2 + c];
      b[i * 2 + c] = s / a[i * 3 + i];
    }
}

}  // namespace detail

/// The map taking three source points to three destination points (cv2.getAffineTransform).
inline Affine affine_from_points(const std::array<float, 6>& src, const std::array<float, 6>& dst) {
  std::array<double, 9> a{};
  std::array<double, 6> b{};
  for (int i = 0; i < 3; ++i) {
    a[i * 3 + 0] = src[2 * i];
    a[i * 3 + 1] = src[2 * i + 1];
    a[i * 3 + 2] = 1;
    b[i * 2 + 0] = dst[2 * i];
    b[i * 2 + 1] = dst[2 * i + 1];
  }
  detail::solve3(a, b);
  Affine r;
  // b holds (m0, m3), (m1, m4), (m2, m5).
  r.m = {b[0], b[2], b[4], b[1], b[3], b[5]};
  return r;
}

/// mmpose's get_warp_matrix (shift 0, inv False): the map that takes a window of width
/// `src_w` centred at (cx, cy), rotated by `rot_deg`, onto an out_w×out_h image. As in the
/// reference, the three anchor points are rounded to float32 before the solve.
inline Affine get_warp_matrix(double cx, double cy, double src_w, double rot_deg, int out_w,
                              int out_h) {
  const double rot = rot_deg * std::numbers::pi / 180.0;
  const double sn = std::sin(rot), cs = std::cos(rot);
  // The window's "up" half-axis (0, -src_w/2), rotated.
  const double dir_x = -sn * (src_w * -0.5), dir_y = cs * (src_w * -0.5);
  std::array<float, 6> src{}, dst{};
  src[0] = static_cast<float>(cx);
  src[1] = static_cast<float>(cy);
  src[2] = static_cast<float>(cx + dir_x);
  src[3] = static_cast<float>(cy + dir_y);
  // Third point: (a - b) turned by 90° about b, in float32 as numpy does on float32 arrays.
  auto third = [](const std::array<float, 6>& p, std::array<float, 6>& out) {
    const float ddx = p[0] - p[2], ddy = p[1] - p[3];
    out[4] = p[2] + -ddy;
    out[5] = p[3] + ddx;
  };
  third(src, src);
  dst[0] = static_cast<float>(out_w * 0.5);
  dst[1] = static_cast<float>(out_h * 0.5);
  dst[2] = static_cast<float>(out_w * 0.5);
  dst[3] = static_cast<float>(out_h * 0.5 + out_w * -0.5);
  third(dst, dst);
  return affine_from_points(src, dst);
}

/// cv2.transform of float32 points: the matrix is rounded to float32 and applied in float.
inline void transform_point(const Affine& a, float& x, float& y) {
  const float m0 = static_cast<float>(a.m[0]), m1 = static_cast<float>(a.m[1]),
              m2 = static_cast<float>(a.m[2]), m3 = static_cast<float>(a.m[3]),
              m4 = static_cast<float>(a.m[4]), m5 = static_cast<float>(a.m[5]);
  const float nx = m0 * x + m1 * y + m2;
  const float ny = m3 * x + m4 * y + m5;
  x = nx;
  y = ny;
}

namespace detail {

inline constexpr int kInterBits = 5;                 // OpenCV INTER_BITS
inline constexpr int kInterTab = 1 << kInterBits;    // 32 sub-pixel positions
inline constexpr int kAbBits = 10;                   // AB_BITS = max(10, INTER_BITS)
inline constexpr int kAbScale = 1 << kAbBits;
inline constexpr int kCoefBits = 15;                 // INTER_REMAP_COEF_BITS

inline int cv_round(double v) { return static_cast<int>(std::lrint(v)); }

/// Per output pixel: integer source position (sx, sy) and the 1/32 fractions (ax, ay), computed
/// exactly as cv2.warpAffine's WarpAffineInvoker does.
template <class F>
void for_each_warp_sample(const Affine& dst_from_src, int out_w, int out_h, F&& f) {
  const Affine inv = dst_from_src.inverse();
  const auto& M = inv.m;
  std::vector<int> adelta(out_w), bdelta(out_w);
  for (int x = 0; x < out_w; ++x) {
    adelta[x] = cv_round(M[0] * x * kAbScale);
    bdelta[x] = cv_round(M[3] * x * kAbScale);
  }
  const int round_delta = kAbScale / kInterTab / 2;
  for (int y = 0; y < out_h; ++y) {
    const int x0 = cv_round((M[1] * y + M[2]) * kAbScale) + round_delta;
    const int y0 = cv_round((M[4] * y + M[5]) * kAbScale) + round_delta;
    for (int x = 0; x < out_w; ++x) {
      const int X = (x0 + adelta[x]) >> (kAbBits - kInterBits);
      const int Y = (y0 + bdelta[x]) >> (kAbBits - kInterBits);
      // saturate_cast<short> of the integer position.
      const int sx = std::clamp(X >> kInterBits, -32768, 32767);
      const int sy = std::clamp(Y >> kInterBits, -32768, 32767);
      f(x, y, sx, sy, X & (kInterTab - 1), Y & (kInterTab - 1));
    }
  }
}

/// The per-row fixed-point source coordinates of cv2.warpAffine: for output row y and column x,
/// X = (x0(y) + adelta[x]) >> 5 and Y = (y0(y) + bdelta[x]) >> 5 are the source position in
/// 1/32 pixels. Any subset of rows and columns gives the same values as the full loop above.
struct WarpCoords {
  std::vector<int> adelta, bdelta;
  std::array<double, 6> M{};
  WarpCoords() = default;
  explicit WarpCoords(const Affine& dst_from_src, int out_w) { assign(dst_from_src, out_w); }
  /// Recompute for another warp, reusing the storage.
  void assign(const Affine& dst_from_src, int out_w) {
    adelta.resize(static_cast<std::size_t>(out_w));
    bdelta.resize(static_cast<std::size_t>(out_w));
    M = dst_from_src.inverse().m;
    for (int x = 0; x < out_w; ++x) {
      adelta[x] = cv_round(M[0] * x * kAbScale);
      bdelta[x] = cv_round(M[3] * x * kAbScale);
    }
  }
  int x0(int y) const { return cv_round((M[1] * y + M[2]) * kAbScale) + kAbScale / kInterTab / 2; }
  int y0(int y) const { return cv_round((M[4] * y + M[5]) * kAbScale) + kAbScale / kInterTab / 2; }
};

/// One output row of the 8-bit warp, `row` gets out_w * C bytes.
///
/// OpenCV blends with weights w_i = 32 * a_i (a_i the products of the 1/32 fractions, ≤ 1024) and
/// rounds (Σ p_i w_i + 2^14) >> 15. Since 32 divides both terms that equals (t + 512) >> 10 with
/// t = Σ p_i a_i, and t factors exactly (integer arithmetic) into
/// t = 32 h0 + ay (h1 - h0), h0 = 32 p0 + ax (p1 - p0), h1 = 32 p2 + ax (p3 - p2): three
/// multiplies per channel instead of four, no clamp (t ≤ 255 * 1024), same bytes.
#if defined(__SSE2__)
/// The interior case of the row kernel below for one RGB pixel, in SSE2 (part of every x86-64
/// CPU): t = Σ p_i a_i with the integer weights a_0 = (32 - ax)(32 - ay), a_1 = ax (32 - ay),
/// a_2 = (32 - ax) ay, a_3 = ax ay (≤ 1024, Σ = 1024) as two pmaddwd of (p0, p1) and (p2, p3)
/// pairs, then the same (t + 512) >> 10. Integer arithmetic without overflow (t ≤ 255 * 1024),
/// so the bytes equal the scalar kernel's; 1.6-2x fewer instructions per pixel, the warp being
/// the largest part of a training sample after the JPEG decode.
/// p: the pixel pair (sx, sy), (sx + 1, sy), 6 bytes; q: the same one row down; d: 3 bytes out.
inline void blend_rgb_sse2(const std::uint8_t* p, const std::uint8_t* q, int ax, int ay,
                           std::uint8_t* d) {
  // Bytes 0-3 and 2-5 of each pair (never past the 6 bytes), shifted so that the second holds
  // the right pixel's r g b.
  const auto load_pair = [](const std::uint8_t* s) {
    std::int32_t a, b;
    std::memcpy(&a, s, 4);
    std::memcpy(&b, s + 2, 4);
    const __m128i lo = _mm_cvtsi32_si128(a);                     // r0 g0 b0 r1
    const __m128i hi = _mm_srli_epi32(_mm_cvtsi32_si128(b), 8);  // r1 g1 b1 0
    return _mm_unpacklo_epi8(lo, hi);  // r0 r1 g0 g1 b0 b1 r1 0 (bytes)
  };
  const __m128i zero = _mm_setzero_si128();
  const __m128i pq = _mm_unpacklo_epi64(load_pair(p), load_pair(q));
  const int wx0 = kInterTab - ax, wy0 = kInterTab - ay;
  const __m128i w01 = _mm_set1_epi32((wx0 * wy0) | ((ax * wy0) << 16));
  const __m128i w23 = _mm_set1_epi32((wx0 * ay) | ((ax * ay) << 16));
  const __m128i t = _mm_add_epi32(_mm_madd_epi16(_mm_unpacklo_epi8(pq, zero), w01),
                                  _mm_madd_epi16(_mm_unpackhi_epi8(pq, zero), w23));
  const __m128i v = _mm_srai_epi32(_mm_add_epi32(t, _mm_set1_epi32(1 << (kAbBits - 1))), kAbBits);
  const __m128i b8 = _mm_packus_epi16(_mm_packs_epi32(v, v), zero);  // values are 0..255
  const std::uint32_t rgb = static_cast<std::uint32_t>(_mm_cvtsi128_si32(b8));
  d[0] = static_cast<std::uint8_t>(rgb);
  d[1] = static_cast<std::uint8_t>(rgb >> 8);
  d[2] = static_cast<std::uint8_t>(rgb >> 16);
}
#endif

/// kSimd = false forces the portable scalar kernel (the tests compare the two). Columns
/// [x_begin, out_w) are computed (row[x * C] is column x).
template <int C, bool kSimd = true>
inline void warp_affine_row_u8(const Image& src, const WarpCoords& wc, int y, int out_w,
                               std::uint8_t* row, int x_begin = 0) {
  const int W = src.w, H = src.h;
  const std::size_t stride = static_cast<std::size_t>(W) * C;
  const std::uint8_t* base = src.pixels.data();
  const int x0 = wc.x0(y), y0 = wc.y0(y);
  const int* ad = wc.adelta.data();
  const int* bd = wc.bdelta.data();
  for (int x = x_begin; x < out_w; ++x) {
    const int X = (x0 + ad[x]) >> (kAbBits - kInterBits);
    const int Y = (y0 + bd[x]) >> (kAbBits - kInterBits);
    const int sx = std::clamp(X >> kInterBits, -32768, 32767);  // saturate_cast<short>
    const int sy = std::clamp(Y >> kInterBits, -32768, 32767);
    const int ax = X & (kInterTab - 1), ay = Y & (kInterTab - 1);
    std::uint8_t* d = row + static_cast<std::size_t>(x) * C;
    if (static_cast<unsigned>(sx) < static_cast<unsigned>(W - 1) &&
        static_cast<unsigned>(sy) < static_cast<unsigned>(H - 1)) {  // all four inside
      const std::uint8_t* p = base + sy * stride + static_cast<std::size_t>(sx) * C;
      const std::uint8_t* q = p + stride;
#if defined(__SSE2__)
      if constexpr (C == 3 && kSimd) {
        blend_rgb_sse2(p, q, ax, ay, d);
        continue;
      }
#endif
      for (int k = 0; k < C; ++k) {
        const int h0 = (p[k] << kInterBits) + ax * (p[k + C] - p[k]);
        const int h1 = (q[k] << kInterBits) + ax * (q[k + C] - q[k]);
        const int t = (h0 << kInterBits) + ay * (h1 - h0);
        d[k] = static_cast<std::uint8_t>((t + (1 << (kAbBits - 1))) >> kAbBits);
      }
      continue;
    }
    const bool x0in = sx >= 0 && sx < W, x1in = sx + 1 >= 0 && sx + 1 < W;
    const bool y0in = sy >= 0 && sy < H, y1in = sy + 1 >= 0 && sy + 1 < H;
    if (!(x0in || x1in) || !(y0in || y1in)) {  // fully outside: border value 0
      for (int k = 0; k < C; ++k) d[k] = 0;
      continue;
    }
    const std::uint8_t* r0 = y0in ? src.row(sy) : nullptr;
    const std::uint8_t* r1 = y1in ? src.row(sy + 1) : nullptr;
    const int w0 = (kInterTab - ax) * (kInterTab - ay), w1 = ax * (kInterTab - ay),
              w2 = (kInterTab - ax) * ay, w3 = ax * ay;
    for (int k = 0; k < C; ++k) {
      const int v0 = (r0 && x0in) ? r0[sx * C + k] : 0;
      const int v1 = (r0 && x1in) ? r0[(sx + 1) * C + k] : 0;
      const int v2 = (r1 && x0in) ? r1[sx * C + k] : 0;
      const int v3 = (r1 && x1in) ? r1[(sx + 1) * C + k] : 0;
      const int t = v0 * w0 + v1 * w1 + v2 * w2 + v3 * w3;
      d[k] = static_cast<std::uint8_t>((t + (1 << (kAbBits - 1))) >> kAbBits);
    }
  }
}

/// Runtime channel count -> the row kernel (1, 3 and 4 channels specialised).
template <class F>
void with_channels(int c, F&& f) {
  switch (c) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 3: return f(std::integral_constant<int, 3>{});
    case 4: return f(std::integral_constant<int, 4>{});
    default: AMPKIT_FAIL("warp_affine: ", c, " channels (1, 3 or 4 supported)");
  }
}

}  // namespace detail

/// cv2.warpAffine(src, M, (out_w, out_h), flags=INTER_LINEAR, borderValue=0) for 8-bit images
/// with 1, 3 or 4 channels, into `dst` (its buffer is reused when the size allows).
inline void warp_affine_into(const Image& src, const Affine& m, int out_w, int out_h, Image& dst) {
  dst.h = out_h, dst.w = out_w, dst.c = src.c;
  dst.pixels.resize(static_cast<std::size_t>(out_h) * out_w * src.c);
  const detail::WarpCoords wc(m, out_w);
  detail::with_channels(src.c, [&](auto c) {
    for (int y = 0; y < out_h; ++y) detail::warp_affine_row_u8<decltype(c)::value>(src, wc, y, out_w, dst.row(y));
  });
}

inline Image warp_affine(const Image& src, const Affine& m, int out_w, int out_h) {
  Image dst;
  warp_affine_into(src, m, out_w, out_h, dst);
  return dst;
}

/// A single-channel float image, row-major (H,W).
struct FloatImage {
  int h = 0, w = 0;
  std::vector<float> v;
  FloatImage() = default;
  FloatImage(int h_, int w_, float fill = 0.f)
      : h(h_), w(w_), v(static_cast<std::size_t>(h_) * w_, fill) {}
  float& at(int y, int x) { return v[static_cast<std::size_t>(y) * w + x]; }
  float at(int y, int x) const { return v[static_cast<std::size_t>(y) * w + x]; }
};

/// cv2.warpAffine(src, M, (out_w, out_h), flags=INTER_LINEAR) for a float32 single-channel image
/// (the weights are the same 1/32-quantised fractions, blended in float).
inline FloatImage warp_affine(const FloatImage& src, const Affine& m, int out_w, int out_h) {
  FloatImage dst(out_h, out_w);
  const int W = src.w, H = src.h;
  detail::for_each_warp_sample(m, out_w, out_h, [&](int x, int y, int sx, int sy, int ax, int ay) {
    const float fx = static_cast<float>(ax) * (1.f / detail::kInterTab),
                fy = static_cast<float>(ay) * (1.f / detail::kInterTab);
    const float w0 = (1.f - fy) * (1.f - fx), w1 = (1.f - fy) * fx, w2 = fy * (1.f - fx),
                w3 = fy * fx;
    const bool x0in = sx >= 0 && sx < W, x1in = sx + 1 >= 0 && sx + 1 < W;
    const bool y0in = sy >= 0 && sy < H, y1in = sy + 1 >= 0 && sy + 1 < H;
    if (!(x0in || x1in) || !(y0in || y1in)) return;
    const float v0 = (y0in && x0in) ? src.at(sy, sx) : 0.f;
    const float v1 = (y0in && x1in) ? src.at(sy, sx + 1) : 0.f;
    const float v2 = (y1in && x0in) ? src.at(sy + 1, sx) : 0.f;
    const float v3 = (y1in && x1in) ? src.at(sy + 1, sx + 1) : 0.f;
    dst.at(y, x) = v0 * w0 + v1 * w1 + v2 * w2 + v3 * w3;
  });
  return dst;
}

/// cv2.resize(src, (out_w, out_h), interpolation=INTER_LINEAR) for a float32 single-channel
/// image: half-pixel centres; at the left/right edge the horizontal weight collapses onto the
/// edge pixel, vertically the rows are clamped (as OpenCV's resizeGeneric does).
inline FloatImage resize_bilinear(const FloatImage& src, int out_w, int out_h) {
  AMPKIT_CHECK(src.w > 0 && src.h > 0 && out_w > 0 && out_h > 0, "resize: empty image");
  const double scale_x = 1. / (static_cast<double>(out_w) / src.w);
  const double scale_y = 1. / (static_cast<double>(out_h) / src.h);
  std::vector<int> xofs(out_w);
  std::vector<float> xa(2 * out_w);
  for (int dx = 0; dx < out_w; ++dx) {
    float fx = static_cast<float>((dx + 0.5) * scale_x - 0.5);
    int sx = static_cast<int>(std::floor(fx));
    fx -= static_cast<float>(sx);
    if (sx < 0) fx = 0, sx = 0;
    if (sx >= src.w - 1) fx = 0, sx = src.w - 1;
    xofs[dx] = sx;
    xa[2 * dx] = 1.f - fx;
    xa[2 * dx + 1] = fx;
  }
  auto hrow = [&](int sy, std::vector<float>& out) {
    sy = std::clamp(sy, 0, src.h - 1);
    const float* s = &src.v[static_cast<std::size_t>(sy) * src.w];
    for (int dx = 0; dx < out_w; ++dx) {
      const int sx = xofs[dx];
      out[dx] = sx + 1 < src.w ? s[sx] * xa[2 * dx] + s[sx + 1] * xa[2 * dx + 1] : s[sx];
    }
  };
  FloatImage dst(out_h, out_w);
  std::vector<float> r0(out_w), r1(out_w);
  for (int dy = 0; dy < out_h; ++dy) {
    float fy = static_cast<float>((dy + 0.5) * scale_y - 0.5);
    const int sy = static_cast<int>(std::floor(fy));
    fy -= static_cast<float>(sy);
    const float b0 = 1.f - fy, b1 = fy;
    hrow(sy, r0);
    hrow(sy + 1, r1);
    for (int dx = 0; dx < out_w; ++dx) dst.at(dy, dx) = r0[dx] * b0 + r1[dx] * b1;
  }
  return dst;
}

namespace detail {
/// The float bilinear weights of the float warp for each of the 32 × 32 sub-pixel positions
/// (index ay * 32 + ax), computed by the expressions warp_affine(FloatImage) uses, and their sum
/// v0 w0 + v1 w1 + v2 w2 + v3 w3 at v = 1 (the value of an all-ones source inside the image):
/// warp_flip_resize looks them up instead of recomputing them per pixel (same floats).
struct WarpWeightsF32 {
  std::array<std::array<float, 4>, kInterTab * kInterTab> w;
  std::array<float, kInterTab * kInterTab> sum;
  WarpWeightsF32() {
    for (int ay = 0; ay < kInterTab; ++ay)
      for (int ax = 0; ax < kInterTab; ++ax) {
        const float fx = static_cast<float>(ax) * (1.f / kInterTab),
                    fy = static_cast<float>(ay) * (1.f / kInterTab);
        const float w0 = (1.f - fy) * (1.f - fx), w1 = (1.f - fy) * fx, w2 = fy * (1.f - fx),
                    w3 = fy * fx;
        w[ay * kInterTab + ax] = {w0, w1, w2, w3};
        const float one = 1.f;
        sum[ay * kInterTab + ax] = one * w0 + one * w1 + one * w2 + one * w3;
      }
  }
};
inline const WarpWeightsF32& warp_weights_f32() {
  static const WarpWeightsF32 t;
  return t;
}
}  // namespace detail

/// What warp_flip_resize reuses from one call to the next (one per thread): the resize taps, the
/// row/column selection and the compact warped grid (256 × 256 floats, 256 KiB, for a 512² warp
/// resized to 128²). Everything is overwritten by each call; the values never depend on it.
struct WarpResizeWorkspace {
  std::vector<int> xofs, ysrc, col_slot, row_slot, cols, rows;
  std::vector<float> xa, yb, grid, r0, r1;
  detail::WarpCoords coords;
};

/// resize_bilinear(flip?(warp_affine(FloatImage(src), m, warp_w, warp_h)), out_w, out_h), computed
/// only at the warped pixels the resize reads: same arithmetic, same floats, a fraction of the
/// work (a 4× downscale reads 2 of every 4 rows and columns, so a quarter of the warp).
///
/// @param src  (src_h, src_w) values as float (0/1 for a mask), or nullptr for "all ones"
/// @param out  out_h * out_w floats, row-major
/// @param ws   buffers reused between calls (the same values with or without it)
template <class T>
void warp_flip_resize(const T* src, int src_h, int src_w, const Affine& m, int warp_w, int warp_h,
                      bool flip, int out_w, int out_h, float* out, WarpResizeWorkspace& ws) {
  AMPKIT_CHECK(src_w > 0 && src_h > 0 && warp_w > 0 && warp_h > 0 && out_w > 0 && out_h > 0,
               "warp_flip_resize: empty image");
  // The resize's taps, exactly as resize_bilinear computes them.
  const double scale_x = 1. / (static_cast<double>(out_w) / warp_w);
  const double scale_y = 1. / (static_cast<double>(out_h) / warp_h);
  std::vector<int>& xofs = ws.xofs;
  std::vector<int>& ysrc = ws.ysrc;
  std::vector<float>& xa = ws.xa;
  std::vector<float>& yb = ws.yb;
  xofs.resize(static_cast<std::size_t>(out_w));
  ysrc.resize(static_cast<std::size_t>(out_h));
  xa.resize(2 * static_cast<std::size_t>(out_w));
  yb.resize(2 * static_cast<std::size_t>(out_h));
  for (int dx = 0; dx < out_w; ++dx) {
    float fx = static_cast<float>((dx + 0.5) * scale_x - 0.5);
    int sx = static_cast<int>(std::floor(fx));
    fx -= static_cast<float>(sx);
    if (sx < 0) fx = 0, sx = 0;
    if (sx >= warp_w - 1) fx = 0, sx = warp_w - 1;
    xofs[dx] = sx;
    xa[2 * dx] = 1.f - fx;
    xa[2 * dx + 1] = fx;
  }
  for (int dy = 0; dy < out_h; ++dy) {
    float fy = static_cast<float>((dy + 0.5) * scale_y - 0.5);
    ysrc[dy] = static_cast<int>(std::floor(fy));
    fy -= static_cast<float>(ysrc[dy]);
    yb[2 * dy] = 1.f - fy;
    yb[2 * dy + 1] = fy;
  }
  // Which warped rows / columns are read, and their slot in the compact grid (-1: unused).
  std::vector<int>& col_slot = ws.col_slot;
  std::vector<int>& row_slot = ws.row_slot;
  std::vector<int>& cols = ws.cols;
  std::vector<int>& rows = ws.rows;
  col_slot.assign(static_cast<std::size_t>(warp_w), -1);
  row_slot.assign(static_cast<std::size_t>(warp_h), -1);
  cols.clear();
  rows.clear();
  for (int dx = 0; dx < out_w; ++dx)
    for (int j = 0; j < 2; ++j) {
      const int c = xofs[dx] + j;
      if (c < warp_w && col_slot[c] < 0) col_slot[c] = 0;
    }
  for (int dy = 0; dy < out_h; ++dy)
    for (int j = 0; j < 2; ++j) row_slot[std::clamp(ysrc[dy] + j, 0, warp_h - 1)] = 0;
  for (int c = 0; c < warp_w; ++c)
    if (col_slot[c] == 0) col_slot[c] = static_cast<int>(cols.size()), cols.push_back(c);
  for (int r = 0; r < warp_h; ++r)
    if (row_slot[r] == 0) row_slot[r] = static_cast<int>(rows.size()), rows.push_back(r);

  // The warp at those pixels (column c of the flipped image is column warp_w - 1 - c).
  detail::WarpCoords& wc = ws.coords;
  wc.assign(m, warp_w);
  const std::size_t nc = cols.size();
  std::vector<float>& grid = ws.grid;
  grid.assign(rows.size() * nc, 0.f);
  auto value = [&](int y, int x) -> float {
    return src ? static_cast<float>(src[static_cast<std::size_t>(y) * src_w + x]) : 1.f;
  };
  const detail::WarpWeightsF32& wtab = detail::warp_weights_f32();
  for (std::size_t ri = 0; ri < rows.size(); ++ri) {
    const int y = rows[ri];
    const int x0 = wc.x0(y), y0 = wc.y0(y);
    float* g = &grid[ri * nc];
    for (std::size_t ci = 0; ci < nc; ++ci) {
      const int x = flip ? warp_w - 1 - cols[ci] : cols[ci];
      const int X = (x0 + wc.adelta[x]) >> (detail::kAbBits - detail::kInterBits);
      const int Y = (y0 + wc.bdelta[x]) >> (detail::kAbBits - detail::kInterBits);
      const int sx = std::clamp(X >> detail::kInterBits, -32768, 32767);
      const int sy = std::clamp(Y >> detail::kInterBits, -32768, 32767);
      const int ai = (Y & (detail::kInterTab - 1)) * detail::kInterTab + (X & (detail::kInterTab - 1));
      if (static_cast<unsigned>(sx) < static_cast<unsigned>(src_w - 1) &&
          static_cast<unsigned>(sy) < static_cast<unsigned>(src_h - 1)) {  // all four inside
        if (src == nullptr) {
          g[ci] = wtab.sum[ai];  // 1 * w_i summed: the same additions, precomputed
          continue;
        }
        const T* p = src + static_cast<std::size_t>(sy) * src_w + sx;
        const T* q = p + src_w;
        const float* w = wtab.w[ai].data();
        g[ci] = static_cast<float>(p[0]) * w[0] + static_cast<float>(p[1]) * w[1] +
                static_cast<float>(q[0]) * w[2] + static_cast<float>(q[1]) * w[3];
        continue;
      }
      const float w0 = wtab.w[ai][0], w1 = wtab.w[ai][1], w2 = wtab.w[ai][2], w3 = wtab.w[ai][3];
      const bool x0in = sx >= 0 && sx < src_w, x1in = sx + 1 >= 0 && sx + 1 < src_w;
      const bool y0in = sy >= 0 && sy < src_h, y1in = sy + 1 >= 0 && sy + 1 < src_h;
      if (!(x0in || x1in) || !(y0in || y1in)) continue;  // stays 0
      const float v0 = (y0in && x0in) ? value(sy, sx) : 0.f;
      const float v1 = (y0in && x1in) ? value(sy, sx + 1) : 0.f;
      const float v2 = (y1in && x0in) ? value(sy + 1, sx) : 0.f;
      const float v3 = (y1in && x1in) ? value(sy + 1, sx + 1) : 0.f;
      g[ci] = v0 * w0 + v1 * w1 + v2 * w2 + v3 * w3;
    }
  }
  // The resize over the compact grid.
  std::vector<float>& r0 = ws.r0;
  std::vector<float>& r1 = ws.r1;
  r0.resize(static_cast<std::size_t>(out_w));
  r1.resize(static_cast<std::size_t>(out_w));
  auto hrow = [&](int sy, std::vector<float>& o) {
    const float* g = &grid[static_cast<std::size_t>(row_slot[std::clamp(sy, 0, warp_h - 1)]) * nc];
    for (int dx = 0; dx < out_w; ++dx) {
      const int sx = xofs[dx];
      o[dx] = sx + 1 < warp_w ? g[col_slot[sx]] * xa[2 * dx] + g[col_slot[sx + 1]] * xa[2 * dx + 1]
                              : g[col_slot[sx]];
    }
  };
  for (int dy = 0; dy < out_h; ++dy) {
    hrow(ysrc[dy], r0);
    hrow(ysrc[dy] + 1, r1);
    const float b0 = yb[2 * dy], b1 = yb[2 * dy + 1];
    float* o = out + static_cast<std::size_t>(dy) * out_w;
    for (int dx = 0; dx < out_w; ++dx) o[dx] = r0[dx] * b0 + r1[dx] * b1;
  }
}

/// The same with buffers of its own (allocates them on every call).
template <class T>
void warp_flip_resize(const T* src, int src_h, int src_w, const Affine& m, int warp_w, int warp_h,
                      bool flip, int out_w, int out_h, float* out) {
  WarpResizeWorkspace ws;
  warp_flip_resize(src, src_h, src_w, m, warp_w, warp_h, flip, out_w, out_h, out, ws);
}

/// Mirror left-right in place (x -> w - 1 - x), as cv2.flip / mmcv.imflip('horizontal').
inline void flip_horizontal(Image& img) {
  for (int y = 0; y < img.h; ++y) {
    std::uint8_t* r = img.row(y);
    for (int a = 0, b = img.w - 1; a < b; ++a, --b)
      for (int k = 0; k < img.c; ++k) std::swap(r[a * img.c + k], r[b * img.c + k]);
  }
}
inline void flip_horizontal(FloatImage& img) {
  for (int y = 0; y < img.h; ++y) std::reverse(&img.at(y, 0), &img.at(y, 0) + img.w);
}

}  // namespace ampkit::data

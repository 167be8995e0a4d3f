/// @brief Bottom-up augmentation as mmpose does it for DEKR: BottomupRandomAffine, RandomFlip
/// (COCO flip pairs), ImageNet normalisation, and the test-time BottomupResize ('expand').
///
/// Reference: mmpose/datasets/transforms/bottomup_transforms.py and common_transforms.py
/// (RandomFlip, flip_keypoints). The random parameters come from SampleRng; the geometry
/// (window, aspect fix, warp matrix) follows the reference's arithmetic and dtypes.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <optional>
#include <span>
#include <type_traits>
#include <vector>

#include "ampkit/core/error.hpp"
#include "ampkit/data/affine.hpp"
#include "ampkit/data/sample_rng.hpp"

namespace ampkit::data {

/// COCO's left/right keypoint swap (flip_indices of configs/_base_/datasets/coco.py).
inline constexpr std::array<int, 17> kCocoFlipIndices = {0,  2,  1,  4,  3,  6,  5,  8, 7,
                                                         10, 9,  12, 11, 14, 13, 16, 15};

/// ImageNet statistics in RGB order (mmpose data_preprocessor, bgr_to_rgb=True).
inline constexpr std::array<float, 3> kImageNetMean = {123.675f, 116.28f, 103.53f};
inline constexpr std::array<float, 3> kImageNetStd = {58.395f, 57.12f, 57.375f};

struct RandomAffineConfig {
  int input_w = 512, input_h = 512;
  float shift_factor = 0.2f;
  float scale_min = 0.75f, scale_max = 1.5f;
  float rotate_factor = 30.f;
  float flip_prob = 0.5f;
};

/// One draw of BottomupRandomAffine + RandomFlip. Rates are float32 as in the reference.
struct AffineParams {
  float offset_x = 0, offset_y = 0;  // × image width / height
  float scale = 1;                   // × image size (short side fitted to the input)
  /// float64: mmpose multiplies the float32 draw by the Python float 30.0, which numpy 1.x
  /// promotes to float64 (the rotation's sin/cos are then float64 too).
  double rotate_deg = 0;
  bool flip = false;
};

/// Draw the parameters in the reference's order: shift (2 draws), scale, rotation, flip.
/// truncnorm on [-1, 1] everywhere, as distribution='trunc_norm'.
inline AffineParams sample_affine_params(const RandomAffineConfig& cfg, SampleRng& rng) {
  AffineParams p;
  p.offset_x = static_cast<float>(rng.trunc_normal()) * cfg.shift_factor;
  p.offset_y = static_cast<float>(rng.trunc_normal()) * cfg.shift_factor;
  const float t = static_cast<float>(rng.trunc_normal());
  p.scale = cfg.scale_min + (cfg.scale_max - cfg.scale_min) * (t + 1.f) / 2.f;
  p.rotate_deg = static_cast<double>(static_cast<float>(rng.trunc_normal())) * cfg.rotate_factor;
  p.flip = rng.uniform() < cfg.flip_prob;
  return p;
}

/// The warp of BottomupRandomAffine.transform (transform_mode='affine', scale_type='short').
inline Affine bottomup_affine_matrix(int img_w, int img_h, const AffineParams& p, int input_w,
                                     int input_h) {
  // float32 rates × integer sizes promote to float64 in numpy.
  const double off_x = static_cast<double>(p.offset_x) * img_w;
  const double off_y = static_cast<double>(p.offset_y) * img_h;
  double sw = static_cast<double>(p.scale) * img_w, sh = static_cast<double>(p.scale) * img_h;
  const double aspect = static_cast<double>(input_w) / input_h;
  // _fix_aspect_ratio, 'short': the window takes the input's aspect and covers the short side.
  if (sw > sh * aspect) sw = sh * aspect;
  else sh = sw / aspect;
  (void)sh;  // only the width enters get_warp_matrix
  const double cx = static_cast<double>(static_cast<float>(img_w / 2.0)) + off_x;
  const double cy = static_cast<double>(static_cast<float>(img_h / 2.0)) + off_y;
  return get_warp_matrix(cx, cy, sw, p.rotate_deg, input_w, input_h);
}

/// Apply `m` to (N, K, 2) keypoints and, when flipping an image of width `out_w`, mirror them
/// and swap left/right (flip_keypoints: x -> w - 1 - x, then reorder by flip_indices). `visible`
/// (N, K) is reordered with them.
inline void transform_keypoints(const Affine& m, bool flip, int out_w, std::span<float> kpts,
                                std::span<float> visible, std::span<const int> flip_indices) {
  const std::size_t K = flip_indices.size();
  AMPKIT_CHECK(K > 0 && kpts.size() % (2 * K) == 0 && visible.size() * 2 == kpts.size(),
               "transform_keypoints: ", kpts.size(), " coordinates and ", visible.size(),
               " visibilities do not form (N, ", K, ", 2)");
  for (std::size_t i = 0; i < kpts.size(); i += 2) transform_point(m, kpts[i], kpts[i + 1]);
  if (!flip) return;
  const std::size_t n = visible.size() / K;
  std::vector<float> tmp_k(2 * K), tmp_v(K);
  const float wm1 = static_cast<float>(out_w - 1);
  for (std::size_t j = 0; j < n; ++j) {
    float* kp = kpts.data() + j * 2 * K;
    float* vp = visible.data() + j * K;
    for (std::size_t k = 0; k < K; ++k) {
      const int src = flip_indices[k];
      tmp_k[2 * k] = wm1 - kp[2 * src];
      tmp_k[2 * k + 1] = kp[2 * src + 1];
      tmp_v[k] = vp[src];
    }
    std::copy(tmp_k.begin(), tmp_k.end(), kp);
    std::copy(tmp_v.begin(), tmp_v.end(), vp);
  }
}

/// (x - mean) / std of every 8-bit value per channel: a 3×256 table holding exactly the floats
/// the per-pixel expression gives (so a lookup replaces a subtract and a divide per value).
struct NormalizeTable {
  std::array<std::array<float, 256>, 3> v;
  NormalizeTable(const std::array<float, 3>& mean, const std::array<float, 3>& std) {
    for (int k = 0; k < 3; ++k)
      for (int i = 0; i < 256; ++i) v[k][i] = (static_cast<float>(i) - mean[k]) / std[k];
  }
};

namespace detail {
/// The ImageNet table is built once; other statistics build theirs in `own` (768 divides).
inline const NormalizeTable& normalize_table(const std::array<float, 3>& mean,
                                             const std::array<float, 3>& std,
                                             std::optional<NormalizeTable>& own) {
  static const NormalizeTable imagenet(kImageNetMean, kImageNetStd);
  if (mean == kImageNetMean && std == kImageNetStd) return imagenet;
  return own.emplace(mean, std);
}

/// One row of 3-channel bytes -> normalised values, mirrored when `flip`.
template <class T>
void normalize_row(const NormalizeTable& t, const std::uint8_t* p, int w, bool flip, T* out) {
  for (int x = 0; x < w; ++x) {
    const std::uint8_t* q = p + 3 * (flip ? w - 1 - x : x);
    out[3 * x + 0] = static_cast<T>(t.v[0][q[0]]);
    out[3 * x + 1] = static_cast<T>(t.v[1][q[1]]);
    out[3 * x + 2] = static_cast<T>(t.v[2][q[2]]);
  }
}
}  // namespace detail

/// (x - mean) / std per channel, in float32 as the data preprocessor does on the GPU.
/// `out` receives h*w*3 values, (H,W,C).
template <class T = float>
void normalize_image(const Image& img, T* out, const std::array<float, 3>& mean = kImageNetMean,
                     const std::array<float, 3>& std = kImageNetStd) {
  AMPKIT_CHECK(img.c == 3, "normalize_image: expected 3 channels, got ", img.c);
  std::optional<NormalizeTable> own;
  const NormalizeTable& t = detail::normalize_table(mean, std, own);
  for (int y = 0; y < img.h; ++y)
    detail::normalize_row(t, img.row(y), img.w, false, out + static_cast<std::size_t>(y) * img.w * 3);
}

#if defined(__SSE2__)
namespace detail {
/// One output row of warp_flip_normalize for float output, four pixels per step in SSE2 (what
/// the 512x512 training image spends most of its non-decode time on): the fixed-point source
/// positions of warp_affine_row_u8 for four columns at once (saturated to 16 bits as
/// saturate_cast<short> does), the interior blend t = Σ p_i a_i as pmaddwd of (p0, p1) and
/// (p2, p3) byte pairs with the integer weights a_i ≤ 1024, the same (t + 512) >> 10, then
/// (float(v) - mean) / std per value with IEEE subtract and divide, which are the very floats
/// NormalizeTable stores. So every value equals the scalar path's (tests/unit/data pin it).
/// Four-pixel groups with a column outside the source interior, and the out_w % 4 columns at the
/// end, go through the scalar kernel into `tmp` (out_w * 3 bytes).
/// Requires src.w, src.h ≤ 32768 (the interior test runs on 16-bit lanes).
inline void warp_flip_normalize_row_sse2(const Image& src, const WarpCoords& wc, int y, int out_w,
                                         bool flip, const NormalizeTable& table,
                                         const std::array<float, 3>& mean,
                                         const std::array<float, 3>& std, std::uint8_t* tmp,
                                         float* out) {
  const std::size_t stride = static_cast<std::size_t>(src.w) * 3;
  const std::uint8_t* base = src.pixels.data();
  const __m128i x0v = _mm_set1_epi32(wc.x0(y)), y0v = _mm_set1_epi32(wc.y0(y));
  const __m128i frac = _mm_set1_epi32(kInterTab - 1), tab = _mm_set1_epi16(kInterTab);
  const __m128i minus1 = _mm_set1_epi16(-1);
  const __m128i lim = _mm_setr_epi16(static_cast<short>(src.w - 1), static_cast<short>(src.w - 1),
                                     static_cast<short>(src.w - 1), static_cast<short>(src.w - 1),
                                     static_cast<short>(src.h - 1), static_cast<short>(src.h - 1),
                                     static_cast<short>(src.h - 1), static_cast<short>(src.h - 1));
  const __m128i half = _mm_set1_epi32(1 << (kAbBits - 1)), zero = _mm_setzero_si128();
  // Mean and std in the channel order of the three stores (12 values = 4 RGB pixels).
  const __m128 m0 = _mm_setr_ps(mean[0], mean[1], mean[2], mean[0]);
  const __m128 m1 = _mm_setr_ps(mean[1], mean[2], mean[0], mean[1]);
  const __m128 m2 = _mm_setr_ps(mean[2], mean[0], mean[1], mean[2]);
  const __m128 s0 = _mm_setr_ps(std[0], std[1], std[2], std[0]);
  const __m128 s1 = _mm_setr_ps(std[1], std[2], std[0], std[1]);
  const __m128 s2 = _mm_setr_ps(std[2], std[0], std[1], std[2]);
  // Bytes 0-3 and 2-5 of a 6-byte pixel pair (never read past it) -> r0 r1 g0 g1 b0 b1 . .
  const auto load_pair = [](const std::uint8_t* s) {
    std::int32_t a, b;
    std::memcpy(&a, s, 4);
    std::memcpy(&b, s + 2, 4);
    return _mm_unpacklo_epi8(_mm_cvtsi32_si128(a), _mm_srli_epi32(_mm_cvtsi32_si128(b), 8));
  };
  const int* ad = wc.adelta.data();
  const int* bd = wc.bdelta.data();
  int x = 0;
  for (; x + 4 <= out_w; x += 4) {
    const __m128i X = _mm_srai_epi32(
        _mm_add_epi32(x0v, _mm_loadu_si128(reinterpret_cast<const __m128i*>(ad + x))),
        kAbBits - kInterBits);
    const __m128i Y = _mm_srai_epi32(
        _mm_add_epi32(y0v, _mm_loadu_si128(reinterpret_cast<const __m128i*>(bd + x))),
        kAbBits - kInterBits);
    // sx0..3 sy0..3, saturated to int16 like saturate_cast<short>.
    const __m128i sxy =
        _mm_packs_epi32(_mm_srai_epi32(X, kInterBits), _mm_srai_epi32(Y, kInterBits));
    const __m128i inside = _mm_and_si128(_mm_cmpgt_epi16(sxy, minus1), _mm_cmpgt_epi16(lim, sxy));
    __m128i v[4];  // per pixel: the three blended channel values (and a spare lane)
    if (_mm_movemask_epi8(inside) == 0xFFFF) {
      // ax0..3 ay0..3 -> weights a0 = (32-ax)(32-ay), a1 = ax(32-ay), a2 = (32-ax)ay, a3 = ax ay.
      const __m128i axy = _mm_packs_epi32(_mm_and_si128(X, frac), _mm_and_si128(Y, frac));
      const __m128i ax = _mm_unpacklo_epi64(axy, axy), ay = _mm_unpackhi_epi64(axy, axy);
      const __m128i yy = _mm_unpacklo_epi64(_mm_sub_epi16(tab, ay), ay);  // 32-ay.. | ay..
      const __m128i w02 = _mm_mullo_epi16(_mm_sub_epi16(tab, ax), yy);    // a0.. | a2..
      const __m128i w13 = _mm_mullo_epi16(ax, yy);                        // a1.. | a3..
      const __m128i w01 = _mm_unpacklo_epi16(w02, w13);  // (a0, a1) of pixel i in lane i
      const __m128i w23 = _mm_unpackhi_epi16(w02, w13);
      alignas(16) std::int16_t s[8];
      _mm_store_si128(reinterpret_cast<__m128i*>(s), sxy);
      const auto blend = [&](int i, __m128i wa, __m128i wb) {
        const std::uint8_t* p = base + static_cast<std::size_t>(s[4 + i]) * stride +
                                static_cast<std::size_t>(s[i]) * 3;
        const __m128i pq = _mm_unpacklo_epi64(load_pair(p), load_pair(p + stride));
        const __m128i t = _mm_add_epi32(_mm_madd_epi16(_mm_unpacklo_epi8(pq, zero), wa),
                                        _mm_madd_epi16(_mm_unpackhi_epi8(pq, zero), wb));
        return _mm_srai_epi32(_mm_add_epi32(t, half), kAbBits);
      };
      v[0] = blend(0, _mm_shuffle_epi32(w01, 0x00), _mm_shuffle_epi32(w23, 0x00));
      v[1] = blend(1, _mm_shuffle_epi32(w01, 0x55), _mm_shuffle_epi32(w23, 0x55));
      v[2] = blend(2, _mm_shuffle_epi32(w01, 0xAA), _mm_shuffle_epi32(w23, 0xAA));
      v[3] = blend(3, _mm_shuffle_epi32(w01, 0xFF), _mm_shuffle_epi32(w23, 0xFF));
    } else {  // border pixels: the scalar kernel
      warp_affine_row_u8<3, false>(src, wc, y, x + 4, tmp, x);
      for (int i = 0; i < 4; ++i) {
        const std::uint8_t* d = tmp + 3 * static_cast<std::size_t>(x + i);
        v[i] = _mm_setr_epi32(d[0], d[1], d[2], 0);
      }
    }
    // Pixels a b c d in output order (reversed when flipped) -> a0 a1 a2 b0 | b1 b2 c0 c1 |
    // c2 d0 d1 d2.
    const __m128 a = _mm_cvtepi32_ps(v[flip ? 3 : 0]), b = _mm_cvtepi32_ps(v[flip ? 2 : 1]),
                 c = _mm_cvtepi32_ps(v[flip ? 1 : 2]), d = _mm_cvtepi32_ps(v[flip ? 0 : 3]);
    const __m128 o0 = _mm_shuffle_ps(a, _mm_shuffle_ps(a, b, _MM_SHUFFLE(0, 0, 2, 2)),
                                     _MM_SHUFFLE(2, 0, 1, 0));
    const __m128 o1 = _mm_shuffle_ps(b, c, _MM_SHUFFLE(1, 0, 2, 1));
    const __m128 o2 = _mm_shuffle_ps(_mm_shuffle_ps(c, d, _MM_SHUFFLE(0, 0, 2, 2)), d,
                                     _MM_SHUFFLE(2, 1, 2, 0));
    float* o = out + 3 * static_cast<std::size_t>(flip ? out_w - 4 - x : x);
    _mm_storeu_ps(o, _mm_div_ps(_mm_sub_ps(o0, m0), s0));
    _mm_storeu_ps(o + 4, _mm_div_ps(_mm_sub_ps(o1, m1), s1));
    _mm_storeu_ps(o + 8, _mm_div_ps(_mm_sub_ps(o2, m2), s2));
  }
  if (x < out_w) {  // the last out_w % 4 columns
    warp_affine_row_u8<3, false>(src, wc, y, out_w, tmp, x);
    for (; x < out_w; ++x) {
      const std::uint8_t* d = tmp + 3 * static_cast<std::size_t>(x);
      float* o = out + 3 * static_cast<std::size_t>(flip ? out_w - 1 - x : x);
      for (int k = 0; k < 3; ++k) o[k] = table.v[k][d[k]];
    }
  }
}
}  // namespace detail
#endif

/// warp_affine, then flip_horizontal when `flip`, then normalize_image, fused row by row (no
/// intermediate image): the same values as the three steps, in one pass.
/// `out` receives out_h*out_w*3 values, (H,W,C).
/// kSimd = false forces the portable scalar path (the tests compare the two).
template <class T = float, bool kSimd = true>
void warp_flip_normalize(const Image& src, const Affine& m, int out_w, int out_h, bool flip, T* out,
                         const std::array<float, 3>& mean = kImageNetMean,
                         const std::array<float, 3>& std = kImageNetStd) {
  AMPKIT_CHECK(src.c == 3, "warp_flip_normalize: expected 3 channels, got ", src.c);
  std::optional<NormalizeTable> own;
  const NormalizeTable& t = detail::normalize_table(mean, std, own);
  const detail::WarpCoords wc(m, out_w);
  std::vector<std::uint8_t> row(static_cast<std::size_t>(out_w) * 3);
#if defined(__SSE2__)
  if constexpr (std::is_same_v<T, float> && kSimd) {
    if (src.w <= 32768 && src.h <= 32768) {
      for (int y = 0; y < out_h; ++y)
        detail::warp_flip_normalize_row_sse2(src, wc, y, out_w, flip, t, mean, std, row.data(),
                                             out + static_cast<std::size_t>(y) * out_w * 3);
      return;
    }
  }
#endif
  for (int y = 0; y < out_h; ++y) {
    detail::warp_affine_row_u8<3, kSimd>(src, wc, y, out_w, row.data());
    detail::normalize_row(t, row.data(), out_w, flip, out + static_cast<std::size_t>(y) * out_w * 3);
  }
}

/// Geometry of the test-time BottomupResize (resize_mode='expand', size_factor 32): the short
/// side goes to the input size, the long side is padded up to a multiple of `size_factor`, and
/// the image sits centred. `input_center`/`input_scale` map predictions back:
/// kpt_image = kpt_input / input_size * input_scale + input_center - input_scale / 2.
struct ResizeGeometry {
  int input_w = 0, input_h = 0;       // padded input size (multiples of size_factor)
  double actual_w = 0, actual_h = 0;  // size of the resized image inside it
  float center_x = 0, center_y = 0;   // input_center
  float scale_w = 0, scale_h = 0;     // input_scale
  Affine warp;
};

/// @param round_center round the centre to whole pixels (np.round, half to even), as the
///        DEKR v1 refactor (mmpose PR #1901) did; current mmpose uses the exact centre.
inline ResizeGeometry bottomup_resize_geometry(int img_w, int img_h, int input_w, int input_h,
                                               int size_factor = 32, bool round_center = false) {
  AMPKIT_CHECK(img_w > 0 && img_h > 0, "bottomup_resize: empty image ", img_w, "x", img_h);
  auto ceil_to = [&](double s) {
    return static_cast<int>(std::ceil(s / size_factor) * size_factor);
  };
  const double ratio = static_cast<double>(img_w) / img_h;
  const int pad_w = ceil_to(input_w), pad_h = ceil_to(input_h);
  ResizeGeometry g;
  g.actual_w = std::max<double>(pad_w, pad_h * ratio);
  g.actual_h = std::max<double>(pad_h, pad_w / ratio);
  g.input_w = ceil_to(g.actual_w);
  g.input_h = ceil_to(g.actual_h);
  g.center_x = static_cast<float>(img_w / 2.0);
  g.center_y = static_cast<float>(img_h / 2.0);
  if (round_center) {
    g.center_x = std::nearbyint(g.center_x);
    g.center_y = std::nearbyint(g.center_y);
  }
  g.scale_w = static_cast<float>(img_w * g.input_w / g.actual_w);
  g.scale_h = static_cast<float>(img_h * g.input_h / g.actual_h);
  g.warp = get_warp_matrix(g.center_x, g.center_y, g.scale_w, 0.0, g.input_w, g.input_h);
  return g;
}

/// The test-time input of one image: BottomupResize (its `g`, from bottomup_resize_geometry of the
/// image's size) + ImageNet normalisation, as mmpose's val pipeline and data preprocessor make
/// it. `out` receives g.input_h * g.input_w * 3 values, (H,W,C); the image sits centred, the
/// padding is the normalised value of black (cv2.warpAffine's border 0, then normalised).
/// The flipped view of flip test is the model's job (it mirrors this tensor), as in mmpose.
template <class T = float>
void bottomup_resize_normalize(const Image& img, const ResizeGeometry& g, T* out,
                               const std::array<float, 3>& mean = kImageNetMean,
                               const std::array<float, 3>& std = kImageNetStd) {
  warp_flip_normalize(img, g.warp, g.input_w, g.input_h, /*flip=*/false, out, mean, std);
}

}  // namespace ampkit::data

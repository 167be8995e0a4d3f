// Augmentation geometry and warps against OpenCV, SPR targets against the numpy peer
// (tests/python/spr_peer.py), truncated-normal sampling, the distributed sampler and the loader
// (determinism across thread counts, bounded prefetch, errors).
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <tuple>

#include "ampkit/data/augment.hpp"
#include "ampkit/data/bottomup_dataset.hpp"
#include "ampkit/data/loader.hpp"
#include "ampkit/data/sampler.hpp"
#include "ampkit/data/spr.hpp"
#include "support/testing.hpp"

using namespace ampkit;
using namespace ampkit::data;

namespace {

const std::string kAnn = testing::source_path("data/coco_sample/annotations/person_keypoints_sample.json");
const std::string kImages = testing::source_path("data/coco_sample/images");

/// The golden container written by tests/python/spr_peer.py: zlib of a list of named arrays.
struct Golden {
  struct Array {
    int dtype = 0;  // 0 f32, 1 u8, 2 f64, 3 i32
    std::vector<std::size_t> dims;
    std::vector<unsigned char> bytes;
    template <class T>
    std::vector<T> as() const {
      std::vector<T> v(bytes.size() / sizeof(T));
      std::memcpy(v.data(), bytes.data(), bytes.size());
      return v;
    }
  };
  std::map<std::string, Array> arrays;

  explicit Golden(const std::string& rel) {
    const auto path = testing::source_path(rel);
    std::ifstream in(path, std::ios::binary);
    REQUIRE_MESSAGE(in.good(), "cannot open ", path);
    std::string z((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    int n = 0;
    char* raw = stbi_zlib_decode_malloc(z.data(), static_cast<int>(z.size()), &n);
    REQUIRE_MESSAGE(raw != nullptr, "cannot inflate ", path);
    const unsigned char* p = reinterpret_cast<const unsigned char*>(raw);
    const unsigned char* end = p + n;
    auto u32 = [&] {
      std::uint32_t v;
      std::memcpy(&v, p, 4);
      p += 4;
      return v;
    };
    while (p < end) {
      const std::uint32_t len = u32();
      std::string name(reinterpret_cast<const char*>(p), len);
      p += len;
      Array a;
      a.dtype = static_cast<int>(u32());
      const std::uint32_t nd = u32();
      std::size_t count = 1;
      for (std::uint32_t i = 0; i < nd; ++i) a.dims.push_back(u32()), count *= a.dims.back();
      const std::size_t es = a.dtype == 0 || a.dtype == 3 ? 4 : a.dtype == 1 ? 1 : 8;
      a.bytes.assign(p, p + count * es);
      p += count * es;
      arrays.emplace(std::move(name), std::move(a));
    }
    stbi_image_free(raw);  // stb's allocator (the block cache of image.hpp), not free()
  }
  const Array& operator[](const std::string& k) const {
    auto it = arrays.find(k);
    REQUIRE_MESSAGE(it != arrays.end(), "golden array '", k, "' missing");
    return it->second;
  }
};

template <class A, class B>
void require_close(const char* what, const std::vector<A>& got, const std::vector<B>& want,
                   double rtol, double atol) {
  const auto r = testing::compare(what, std::span<const A>(got), std::span<const B>(want), rtol, atol);
  CHECK_MESSAGE(r.ok, what);
}

struct Targets {
  HostTensor<float> hm, hw, dp, dw;
  Targets(int h, int w, int k) : hm({1, h, w, k + 1}), hw({1, h, w, k + 1}), dp({1, h, w, 2 * k}), dw({1, h, w, 2 * k}) {}
  SprTargetViews views() { return {hm.view(), hw.view(), dp.view(), dw.view()}; }
};

template <class T>
std::vector<T> vec(const HostTensor<T>& t) {
  return {t.data(), t.data() + t.numel()};
}

}  // namespace

TEST_CASE("affine: warp matrix, warpAffine (8-bit and float) and resize equal OpenCV's") {
  const Golden g("tests/unit/data/golden/warp.bin.z");
  const auto src_bytes = g["src"].as<std::uint8_t>();
  Image src(61, 83, 3);
  src.pixels = src_bytes;
  FloatImage src_mask(61, 83);
  src_mask.v = g["src_mask"].as<float>();
  const auto params = g["params"].as<double>();
  for (int j = 0; j < 6; ++j) {
    CAPTURE(j);
    const Affine m = get_warp_matrix(static_cast<float>(params[4 * j]), static_cast<float>(params[4 * j + 1]),
                                     params[4 * j + 2], params[4 * j + 3], 48, 40);
    // cv2.getAffineTransform solves the same float32 points by LU in double: agreement to a few
    // double ulps of the matrix' magnitude (entries are O(1..100)).
    require_close("warp matrix", std::vector<double>(m.m.begin(), m.m.end()), g["M" + std::to_string(j)].as<double>(),
                  1e-12, 1e-12);
    // The image and mask warps use the golden matrix so that they test the sampling alone; both
    // reproduce OpenCV's fixed-point arithmetic, so they must agree exactly.
    Affine gm;
    const auto gmv = g["M" + std::to_string(j)].as<double>();
    std::copy(gmv.begin(), gmv.end(), gm.m.begin());
    const Image w = warp_affine(src, gm, 48, 40);
    require_close("warpAffine u8", w.pixels, g["img" + std::to_string(j)].as<std::uint8_t>(), 0, 0);
    const FloatImage wm = warp_affine(src_mask, gm, 48, 40);
    require_close("warpAffine f32", wm.v, g["mask" + std::to_string(j)].as<float>(), 0, 0);
    const FloatImage small = resize_bilinear(wm, 12, 10);
    require_close("resize f32", small.v, g["mask" + std::to_string(j) + "_small"].as<float>(), 0, 0);
  }
}

TEST_CASE("spr: targets for fixed keypoint sets equal the numpy peer's") {
  const Golden g("tests/unit/data/golden/spr.bin.z");
  SprWorkspace ws;  // reused across the cases (sizes and instance counts differ): same targets
  for (const std::string name : {"overlap", "borders", "crowd"}) {
    CAPTURE(name);
    const auto sizes = g[name + "/sizes"].as<std::int32_t>();
    const auto kin = g[name + "/keypoints"].as<float>();
    const auto vis = g[name + "/visible"].as<float>();
    const int n = static_cast<int>(vis.size() / 17);
    SprConfig cfg;
    cfg.heatmap_w = sizes[2];
    cfg.heatmap_h = sizes[3];
    // encode_spr takes heatmap pixels: the input / heatmap ratio is exactly 4 here.
    std::vector<float> k(kin);
    for (auto& x : k) x /= 4.f;
    Targets t(cfg.heatmap_h, cfg.heatmap_w, 17);
    encode_spr(cfg, k, vis, n, t.views());
    // Heatmaps: numpy's float32 exp is faithfully rounded, ours correctly rounded: 1 ulp.
    require_close("heatmaps", vec(t.hm), g[name + "/heatmaps"].as<float>(), 1.2e-7, 0);
    require_close("heatmap_weights", vec(t.hw), g[name + "/heatmap_weights"].as<float>(), 0, 0);
    require_close("displacements", vec(t.dp), g[name + "/displacements"].as<float>(), 0, 0);
    require_close("displacement_weights", vec(t.dw), g[name + "/displacement_weights"].as<float>(), 0, 0);
    double s = 0;
    for (float x : vec(t.dw)) s += x;
    CHECK(s > 0);  // the case exercises displacements at all
    // With a workspace used before (other sizes, other instances; another σ on the second
    // call, which must rebuild the kernels): exactly the same targets.
    for (const int sigma_kpt : {cfg.sigma_keypoint + 1, cfg.sigma_keypoint}) {
      SprConfig c2 = cfg;
      c2.sigma_keypoint = sigma_kpt;
      Targets fresh(cfg.heatmap_h, cfg.heatmap_w, 17), reused(cfg.heatmap_h, cfg.heatmap_w, 17);
      testing::fill_uniform<float>(reused.dp.span(), 5, -3.f, 3.f);  // stale values
      testing::fill_uniform<float>(reused.hm.span(), 6, 0.f, 1.f);
      encode_spr(c2, k, vis, n, fresh.views());
      encode_spr(c2, k, vis, n, reused.views(), ws);
      CAPTURE(sigma_kpt);
      require_close("heatmaps (workspace)", vec(reused.hm), vec(fresh.hm), 0, 0);
      require_close("heatmap_weights (workspace)", vec(reused.hw), vec(fresh.hw), 0, 0);
      require_close("displacements (workspace)", vec(reused.dp), vec(fresh.dp), 0, 0);
      require_close("displacement_weights (workspace)", vec(reused.dw), vec(fresh.dw), 0, 0);
    }
    CHECK(ws.sigma_keypoint == cfg.sigma_keypoint);
  }
}

TEST_CASE("spr: the bundled sample after fixed affine + flip matches the peer (targets and mask)") {
  const Golden g("tests/unit/data/golden/spr.bin.z");
  BottomupCocoDataset ds(CocoKeypoints::load(kAnn, kImages), {});
  HostTensor<float> img(ds.image_shape()), mask(ds.mask_shape());
  Targets t(128, 128, 17);
  for (std::size_t i = 0; i < ds.size(); ++i) {
    CAPTURE(i);
    const std::string p = "sample" + std::to_string(i) + "/";
    const auto prm = g[p + "params"].as<double>();
    AffineParams ap;
    ap.offset_x = static_cast<float>(prm[0]);
    ap.offset_y = static_cast<float>(prm[1]);
    ap.scale = static_cast<float>(prm[2]);
    ap.rotate_deg = prm[3];
    ap.flip = prm[4] != 0;
    const SampleInfo info = ds.train_sample_with(i, ap, {img.view(), t.views(), mask.view()});
    require_close("warp", std::vector<double>(info.warp.m.begin(), info.warp.m.end()), g[p + "warp"].as<double>(),
                  1e-12, 1e-12);
    // Keypoints go through float32 arithmetic on both sides; the peer computes m0*x + m1*y + m2
    // in numpy float32 exactly as we do, so no tolerance is needed there; the targets follow.
    std::vector<float> kp, vis;
    for (const auto& person : ds.coco()[i].persons)
      for (int k = 0; k < 17; ++k) {
        kp.push_back(person.keypoints[3 * k]);
        kp.push_back(person.keypoints[3 * k + 1]);
        vis.push_back(std::min(1.f, person.keypoints[3 * k + 2]));
      }
    transform_keypoints(info.warp, ap.flip, 512, kp, vis, kCocoFlipIndices);
    require_close("keypoints", kp, g[p + "keypoints"].as<float>(), 0, 0);
    require_close("heatmaps", vec(t.hm), g[p + "heatmaps"].as<float>(), 1.2e-7, 0);
    require_close("displacements", vec(t.dp), g[p + "displacements"].as<float>(), 0, 0);
    require_close("displacement_weights", vec(t.dw), g[p + "displacement_weights"].as<float>(), 0, 0);
    // Weights are 1 exactly where the peer's heatmap is positive, 0.1 elsewhere.
    const auto ghm = g[p + "heatmaps"].as<float>();
    std::int64_t n_bad = 0;
    for (std::size_t e = 0; e < ghm.size(); ++e) n_bad += t.hw[e] != (ghm[e] > 0 ? 1.f : 0.1f);
    CHECK(n_bad == 0);
    // Mask: pycocotools ignore region -> cv2.warpAffine -> flip -> cv2.resize -> > 0.5.
    const auto gmask = g[p + "heatmap_mask"].as<std::uint8_t>();
    std::vector<float> want(gmask.begin(), gmask.end());
    require_close("heatmap_mask", vec(mask), want, 0, 0);
  }
}

TEST_CASE("augment: truncated-normal draws follow truncnorm(-1, 1) and stay in range") {
  // Kolmogorov-Smirnov against F(x) = (Φ(x) - Φ(-1)) / (Φ(1) - Φ(-1)): with 20000 draws the 0.1%
  // critical value is 1.95 / sqrt(20000) = 0.0138.
  SampleRng rng(3, 1, 4);
  std::vector<double> xs(20000);
  for (auto& x : xs) x = rng.trunc_normal();
  std::sort(xs.begin(), xs.end());
  const double lo = SampleRng::normal_cdf(-1), hi = SampleRng::normal_cdf(1);
  double d = 0, mean = 0, var = 0;
  for (std::size_t i = 0; i < xs.size(); ++i) {
    const double f = (SampleRng::normal_cdf(xs[i]) - lo) / (hi - lo);
    d = std::max({d, std::abs(f - double(i) / xs.size()), std::abs(f - double(i + 1) / xs.size())});
    mean += xs[i];
  }
  mean /= xs.size();
  for (double x : xs) var += (x - mean) * (x - mean);
  const double sd = std::sqrt(var / xs.size());
  MESSAGE("KS D = ", d, ", mean ", mean, ", sd ", sd, " (truncnorm(-1,1): sd 0.5377)");
  CHECK(d < 0.0138);
  CHECK(xs.front() >= -1.0);
  CHECK(xs.back() <= 1.0);
  CHECK(std::abs(sd - 0.5377) < 0.01);
  CHECK(std::abs(SampleRng::normal_quantile(SampleRng::normal_cdf(0.3)) - 0.3) < 1e-12);

  RandomAffineConfig cfg;
  int n_flip = 0;
  for (int i = 0; i < 2000; ++i) {
    SampleRng r(9, 0, static_cast<std::uint64_t>(i));
    const AffineParams p = sample_affine_params(cfg, r);
    CHECK(std::abs(p.offset_x) <= 0.2f);
    CHECK(p.scale >= 0.75f);
    CHECK(p.scale <= 1.5f);
    CHECK(std::abs(p.rotate_deg) <= 30.0);
    n_flip += p.flip;
  }
  CHECK(std::abs(n_flip - 1000) < 150);  // ~7 sd of Binomial(2000, 0.5)
}

TEST_CASE("augment: BottomupResize 'expand' keeps the short side at 512, pads to x32, centres") {
  // 640x425: ratio 1.5059, actual (771.01, 512), padded (800, 512), scale (664.07, 425).
  const ResizeGeometry g = bottomup_resize_geometry(640, 425, 512, 512);
  CHECK(g.input_w == 800);
  CHECK(g.input_h == 512);
  CHECK(g.actual_h == 512);
  CHECK(g.actual_w == doctest::Approx(512.0 * 640 / 425));
  CHECK(g.scale_w == doctest::Approx(640.0 * 800 / g.actual_w));
  CHECK(g.scale_h == doctest::Approx(425.0));
  float cx = g.center_x, cy = g.center_y;
  transform_point(g.warp, cx, cy);  // the image centre lands on the input centre
  CHECK(cx == doctest::Approx(400.0).epsilon(1e-6));
  CHECK(cy == doctest::Approx(256.0).epsilon(1e-6));
  float x1 = 640, y1 = 0;
  transform_point(g.warp, x1, y1);  // the image spans actual_w around the centre
  CHECK(x1 == doctest::Approx(400.0 + g.actual_w / 2).epsilon(1e-6));
  CHECK(y1 == doctest::Approx(0.0).epsilon(1e-6));
  // Portrait and exact multiples.
  const ResizeGeometry p = bottomup_resize_geometry(333, 500, 512, 512);
  CHECK(p.input_w == 512);
  CHECK(p.input_h == 800);  // 512 * 500 / 333 = 768.8 -> 800
  const ResizeGeometry r = bottomup_resize_geometry(501, 333, 512, 512, 32, /*round_center=*/true);
  CHECK(r.center_x == 250.f);  // np.round(250.5) = 250 (half to even)
}

TEST_CASE("augment: the fused train-image and mask paths equal the step-by-step OpenCV-exact ops") {
  // warp_flip_normalize == normalize(flip(warpAffine)) and warp_flip_resize ==
  // resize(flip(warpAffine(float))) byte for byte: the step-by-step ops are the ones checked
  // against OpenCV above, the fused ones are what the training sample runs.
  const Golden g("tests/unit/data/golden/warp.bin.z");
  Image src(61, 83, 3);
  src.pixels = g["src"].as<std::uint8_t>();
  Mask bits(61, 83);
  FloatImage fsrc(61, 83);
  std::vector<float> u(bits.bits.size());
  testing::fill_uniform<float>(u, 21, 0.f, 1.f);
  for (std::size_t i = 0; i < u.size(); ++i) fsrc.v[i] = bits.bits[i] = u[i] < 0.6f ? 1 : 0;
  WarpResizeWorkspace ws;  // reused across warps and output sizes: the same values as fresh buffers
  for (int j = 0; j < 6; ++j)
    for (const bool flip : {false, true}) {
      CAPTURE(j);
      CAPTURE(flip);
      Affine m;
      const auto gmv = g["M" + std::to_string(j)].as<double>();
      std::copy(gmv.begin(), gmv.end(), m.m.begin());
      Image w = warp_affine(src, m, 48, 40);
      if (flip) flip_horizontal(w);
      std::vector<float> want(w.pixels.size()), got(w.pixels.size());
      for (std::size_t e = 0; e < want.size(); ++e)
        want[e] = (static_cast<float>(w.pixels[e]) - kImageNetMean[e % 3]) / kImageNetStd[e % 3];
      warp_flip_normalize(src, m, 48, 40, flip, got.data());
      require_close("warp_flip_normalize", got, want, 0, 0);
      for (const auto& [ow, oh] : {std::pair{12, 10}, std::pair{17, 13}, std::pair{60, 50}}) {
        CAPTURE(ow);
        FloatImage wm = warp_affine(fsrc, m, 48, 40);
        if (flip) flip_horizontal(wm);
        const FloatImage small = resize_bilinear(wm, ow, oh);
        std::vector<float> fused(static_cast<std::size_t>(ow) * oh);
        warp_flip_resize(bits.bits.data(), 61, 83, m, 48, 40, flip, ow, oh, fused.data());
        require_close("warp_flip_resize", fused, small.v, 0, 0);
        std::fill(fused.begin(), fused.end(), -1.f);
        warp_flip_resize(bits.bits.data(), 61, 83, m, 48, 40, flip, ow, oh, fused.data(), ws);
        require_close("warp_flip_resize (workspace)", fused, small.v, 0, 0);
        // nullptr source = all ones
        const FloatImage ones(61, 83, 1.f);
        FloatImage wo = warp_affine(ones, m, 48, 40);
        if (flip) flip_horizontal(wo);
        warp_flip_resize<std::uint8_t>(nullptr, 61, 83, m, 48, 40, flip, ow, oh, fused.data());
        require_close("warp_flip_resize(ones)", fused, resize_bilinear(wo, ow, oh).v, 0, 0);
      }
    }
}

TEST_CASE("image: stb's per-thread block cache reuses blocks; a second decode allocates nothing") {
  using data::detail::StbBlockCache;
  {
    StbBlockCache c;
    // Small blocks pass through; a large one comes back from the cache, contents kept by realloc.
    void* small = c.allocate(100);
    c.deallocate(small);
    const std::size_t big = StbBlockCache::kMinCached + 12345;
    auto* a = static_cast<std::uint8_t*>(c.allocate(big));
    REQUIRE(a != nullptr);
    std::vector<float> r(big / 4);
    testing::fill_uniform<float>(r, 31, -1.f, 1.f);
    std::memcpy(a, r.data(), r.size() * 4);
    CHECK(reinterpret_cast<std::uintptr_t>(a) % 16 == 0);  // malloc's alignment for stb
    a = static_cast<std::uint8_t*>(c.reallocate(a, 3 * big));  // grows: a new block, copied
    CHECK(std::memcmp(a, r.data(), r.size() * 4) == 0);
    const std::int64_t n0 = c.n_block_allocations();
    c.deallocate(a);
    void* b = c.allocate(2 * big);  // fits the cached 3*big block
    CHECK(b == a);
    CHECK(c.n_block_allocations() == n0);
    c.deallocate(b);
    // A block beyond the per-thread byte limit is not kept.
    void* huge = c.allocate(StbBlockCache::kMaxCachedBytes + 1);
    c.deallocate(huge);
    const std::int64_t n1 = c.n_block_allocations();
    c.deallocate(c.allocate(StbBlockCache::kMaxCachedBytes + 1));
    CHECK(c.n_block_allocations() == n1 + 1);
    // At most kMaxBlocks blocks stay cached.
    std::vector<void*> many;
    for (int i = 0; i < StbBlockCache::kMaxBlocks + 3; ++i) many.push_back(c.allocate(StbBlockCache::kMinCached));
    for (void* p : many) c.deallocate(p);
    const std::int64_t n2 = c.n_block_allocations();
    for (void*& p : many) p = c.allocate(StbBlockCache::kMinCached);
    CHECK(c.n_block_allocations() == n2 + 3);
    for (void* p : many) c.deallocate(p);
  }
#if AMPKIT_STB_BLOCK_CACHE
  // Decoding on a fresh thread: the first decode fills its cache, the second (same image) gets
  // every large block from it, and the pixels are the same.
  std::thread([] {
    const std::string path = kImages + "/000000000785.jpg";
    std::vector<std::uint8_t> bytes;
    Image first, second;
    load_image_into(path, bytes, first);
    const std::int64_t n0 = data::detail::stb_block_cache().n_block_allocations();
    CHECK(n0 >= 2);  // stb allocated at least the output and a component plane through the cache
    load_image_into(path, bytes, second);
    CHECK(data::detail::stb_block_cache().n_block_allocations() == n0);
    CHECK(first.pixels == second.pixels);
  }).join();
#endif
}

TEST_CASE("augment: test-time BottomupResize + normalisation equals the mmpose peer's") {
  const Golden g("tests/unit/data/golden/resize.bin.z");
  for (int j = 0; j < 5; ++j) {
    CAPTURE(j);
    const std::string p = "case" + std::to_string(j) + "/";
    const auto& a = g[p + "src"];
    Image img(static_cast<int>(a.dims[0]), static_cast<int>(a.dims[1]), 3);
    img.pixels = a.as<std::uint8_t>();
    const ResizeGeometry geo = bottomup_resize_geometry(img.w, img.h, 32, 32);
    const auto size = g[p + "input_size"].as<std::int32_t>();
    CHECK(geo.input_w == size[0]);
    CHECK(geo.input_h == size[1]);
    // center and scale are float32 on both sides, from the same double arithmetic: exact.
    require_close("center", std::vector<float>{geo.center_x, geo.center_y}, g[p + "center"].as<float>(), 0, 0);
    require_close("scale", std::vector<float>{geo.scale_w, geo.scale_h}, g[p + "scale"].as<float>(), 0, 0);
    require_close("warp", std::vector<double>(geo.warp.m.begin(), geo.warp.m.end()), g[p + "warp"].as<double>(),
                  1e-12, 1e-12);
    std::vector<float> input(static_cast<std::size_t>(geo.input_w) * geo.input_h * 3);
    bottomup_resize_normalize(img, geo, input.data());
    require_close("input", input, g[p + "input"].as<float>(), 0, 0);
    // The meta decoding uses maps input points back onto the image:
    // image = input / input_size * input_scale + input_center - input_scale / 2.
    for (const auto& [x, y] : {std::pair{0.f, 0.f}, std::pair{float(img.w), float(img.h)}, std::pair{3.25f, 7.5f}}) {
      float ix = x, iy = y;
      transform_point(geo.warp, ix, iy);
      const double bx = ix / double(geo.input_w) * geo.scale_w + geo.center_x - geo.scale_w / 2.0;
      const double by = iy / double(geo.input_h) * geo.scale_h + geo.center_y - geo.scale_h / 2.0;
      CHECK(std::abs(bx - x) < 1e-4);
      CHECK(std::abs(by - y) < 1e-4);
    }
  }
  // The dataset's test sample: expand mode on the bundled 640x~425 images gives 800x512 inputs.
  BottomupCocoDataset ds(CocoKeypoints::load(kAnn, kImages), {});
  for (std::size_t i = 0; i < ds.size(); ++i) {
    CAPTURE(i);
    HostTensor<float> in;
    const TestSampleInfo info = ds.test_sample(i, in);
    const CocoImage& meta = ds.coco()[i];
    CHECK(info.image_id == meta.id);
    CHECK(std::min(info.geometry.input_w, info.geometry.input_h) == 512);
    CHECK(info.geometry.input_w % 32 == 0);
    CHECK(info.geometry.input_h % 32 == 0);
    CHECK(in.shape() == Shape{1, info.geometry.input_h, info.geometry.input_w, 3});
    // The input is the normalised warp of the decoded image (stb decode: not OpenCV's, so no golden).
    std::vector<float> want(static_cast<std::size_t>(in.numel()));
    bottomup_resize_normalize(load_image(ds.coco().image_path(i)), info.geometry, want.data());
    require_close("test_sample", vec(in), want, 0, 0);
  }
  HostTensor<float> wrong({1, 32, 32, 3});
  CHECK_THROWS_WITH_AS(ds.test_sample(0, wrong.view()), doctest::Contains("test sample 0"), Error);
}

TEST_CASE("sampler: mmengine DefaultSampler shares, round-up and per-epoch shuffle") {
  const std::size_t n = 10;
  std::multiset<std::size_t> all;
  for (int rank = 0; rank < 4; ++rank) {
    DistributedSampler s(n, 4, rank, true, 42);
    CHECK(s.num_samples() == 3);  // ceil(10 / 4)
    CHECK(s.total_size() == 12);
    const auto idx = s.indices(5);
    CHECK(idx.size() == 3);
    all.insert(idx.begin(), idx.end());
    CHECK(idx == DistributedSampler(n, 4, rank, true, 42).indices(5));  // same seed, same order
  }
  std::set<std::size_t> distinct(all.begin(), all.end());
  CHECK(distinct.size() == n);  // every sample is read; 2 are read twice (the padding)
  DistributedSampler s0(n, 1, 0, true, 42);
  CHECK(s0.indices(0) != s0.indices(1));
  DistributedSampler plain(n, 3, 1, false, 0, false);
  CHECK(plain.indices(0) == std::vector<std::size_t>{1, 4, 7});
  CHECK(plain.num_samples() == 3);
}

namespace {

/// A sample whose bytes depend on the index and on several RNG draws.
void synthetic_sample(std::size_t i, SampleRng& rng, std::span<const TensorView<float>> out) {
  for (const auto& v : out)
    for (std::int64_t e = 0; e < v.numel(); ++e)
      v[e] = static_cast<float>(i) + static_cast<float>(rng.uniform());
}

std::vector<std::vector<float>> run_epoch(int n_workers, std::uint64_t epoch,
                                          const std::vector<std::size_t>& order, int batch,
                                          Loader<>::SampleFn fn, std::vector<Shape> shapes) {
  LoaderConfig cfg;
  cfg.batch_size = batch;
  cfg.n_workers = n_workers;
  cfg.prefetch = 2;
  cfg.seed = 1234;
  Loader<> loader(cfg, std::move(shapes), std::move(fn));
  loader.begin_epoch(epoch, order);
  std::vector<std::vector<float>> out;
  while (auto b = loader.next()) {
    std::vector<float> flat;
    for (const auto& f : b->fields) flat.insert(flat.end(), f.data, f.data + f.numel());
    out.push_back(std::move(flat));
  }
  return out;
}

}  // namespace

TEST_CASE("loader: same seed, byte-identical batches with 1 and 4 threads; partial last batch") {
  DistributedSampler s(37, 1, 0, true, 7);
  const auto order = s.indices(3);
  const std::vector<Shape> shapes = {{1, 4, 5, 3}, {1, 2, 2, 7}};
  const auto a = run_epoch(1, 3, order, 8, synthetic_sample, shapes);
  const auto b = run_epoch(4, 3, order, 8, synthetic_sample, shapes);
  REQUIRE(a.size() == 5);  // 37 = 4 * 8 + 5
  CHECK(a.back().size() == 5 * (60 + 28));
  CHECK(a == b);
  const auto c = run_epoch(4, 4, order, 8, synthetic_sample, shapes);
  CHECK(a != c);  // another epoch draws other augmentations
}

TEST_CASE("loader: the real pipeline is deterministic across thread counts") {
  auto ds = std::make_shared<BottomupCocoDataset>(CocoKeypoints::load(kAnn, kImages), BottomupTrainConfig{});
  const std::vector<Shape> shapes = {ds->image_shape(), ds->heatmap_shape(), ds->heatmap_shape(),
                                     ds->displacement_shape(), ds->displacement_shape(), ds->mask_shape()};
  auto fn = [ds](std::size_t i, SampleRng& rng, std::span<const TensorView<float>> v) {
    ds->train_sample(i, rng, {v[0], {v[1], v[2], v[3], v[4]}, v[5]});
  };
  const std::vector<std::size_t> order = {3, 1, 0, 2, 1};
  const auto a = run_epoch(1, 0, order, 2, fn, shapes);
  const auto b = run_epoch(3, 0, order, 2, fn, shapes);
  REQUIRE(a.size() == 3);
  CHECK(a == b);
}

TEST_CASE("loader: a failing sample surfaces at its batch, named; skip policy substitutes and counts") {
  const std::vector<Shape> shapes = {{1, 2, 2, 1}};
  auto fn = [](std::size_t i, SampleRng& rng, std::span<const TensorView<float>> out) {
    if (i == 5) AMPKIT_FAIL("image 'broken.jpg': cannot decode (bad huffman code)");
    synthetic_sample(i, rng, out);
  };
  std::vector<std::size_t> order(12);
  std::iota(order.begin(), order.end(), std::size_t{0});
  LoaderConfig cfg;
  CHECK(cfg.bad_sample == BadSamplePolicy::kSkip);  // the default: never end a run at one bad file
  cfg.bad_sample = BadSamplePolicy::kThrow;
  cfg.batch_size = 4;
  cfg.n_workers = 3;
  {
    Loader<> loader(cfg, shapes, fn);
    loader.begin_epoch(0, order);
    REQUIRE(loader.next().has_value());  // batch 0: samples 0..3
    std::string msg;
    try {
      loader.next();  // batch 1 holds sample 5
    } catch (const Error& e) {
      msg = e.what();
    }
    CHECK(msg.find("broken.jpg") != std::string::npos);
    auto b2 = loader.next();  // the epoch goes on after the error
    REQUIRE(b2.has_value());
    CHECK(b2->index == 2);
    CHECK_FALSE(loader.next().has_value());
  }
  {
    cfg.bad_sample = BadSamplePolicy::kSkip;
    Loader<> loader(cfg, shapes, fn);
    loader.begin_epoch(0, order);
    int n = 0;
    while (auto b = loader.next()) {
      if (b->index == 1) CHECK(b->dataset_indices[1] == 6);  // 5 replaced by the next index
      ++n;
    }
    CHECK(n == 3);
    CHECK(loader.report().n_skipped == 1);
    REQUIRE(loader.report().messages.size() == 1);
    CHECK(loader.report().messages[0].find("broken.jpg") != std::string::npos);
  }
}

TEST_CASE("loader: bounded prefetch, abandoning an epoch and destruction never hang") {
  std::atomic<int> started{0};
  const std::vector<Shape> shapes = {{1, 1, 1, 1}};
  auto fn = [&](std::size_t i, SampleRng& rng, std::span<const TensorView<float>> out) {
    ++started;
    synthetic_sample(i, rng, out);
  };
  LoaderConfig cfg;
  cfg.batch_size = 2;
  cfg.n_workers = 4;
  cfg.prefetch = 2;
  std::vector<std::size_t> order(40);
  std::iota(order.begin(), order.end(), std::size_t{0});
  Loader<> loader(cfg, shapes, fn);
  loader.begin_epoch(0, order);
  REQUIRE(loader.next().has_value());
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  // One batch held by the consumer + 2 prefetched: at most 3 batches = 6 samples started.
  CHECK(started.load() <= 6);
  loader.begin_epoch(1, order);  // abandon epoch 0 half-way
  int n = 0;
  while (loader.next()) ++n;
  CHECK(n == 20);
  loader.begin_epoch(2, order);
  REQUIRE(loader.next().has_value());
  // The destructor runs with batches in flight.
}

TEST_CASE("loader: a missing image mid-epoch names the file") {
  nlohmann::json j = nlohmann::json::parse(std::ifstream(kAnn));
  j["images"][2]["file_name"] = "missing_000000196141.jpg";
  const auto path = (std::filesystem::temp_directory_path() / "ampkit_data_missing.json").string();
  std::ofstream(path) << j.dump();
  auto ds = std::make_shared<BottomupCocoDataset>(CocoKeypoints::load(path, kImages), BottomupTrainConfig{});
  const std::vector<Shape> shapes = {ds->image_shape(), ds->heatmap_shape(), ds->heatmap_shape(),
                                     ds->displacement_shape(), ds->displacement_shape(), ds->mask_shape()};
  const auto fill = [ds](std::size_t i, SampleRng& rng, std::span<const TensorView<float>> v) {
    ds->train_sample(i, rng, {v[0], {v[1], v[2], v[3], v[4]}, v[5]});
  };
  LoaderConfig cfg;
  cfg.batch_size = 2;
  cfg.n_workers = 2;
  {
    // Default (skip): the epoch completes with the image replaced, and the report names it.
    Loader<> loader(cfg, shapes, fill);
    loader.begin_epoch(0, {0, 1, 2, 3});
    int n = 0;
    while (loader.next()) ++n;
    CHECK(n == 2);
    CHECK(loader.report().n_skipped == 1);
    REQUIRE(loader.report().messages.size() == 1);
    CHECK(loader.report().messages[0].find("missing_000000196141.jpg") != std::string::npos);
  }
  cfg.bad_sample = BadSamplePolicy::kThrow;
  Loader<> loader(cfg, shapes, fill);
  loader.begin_epoch(0, {0, 1, 2, 3});
  REQUIRE(loader.next().has_value());
  std::string msg;
  try {
    loader.next();
  } catch (const Error& e) {
    msg = e.what();
  }
  MESSAGE(msg);
  CHECK(msg.find("missing_000000196141.jpg") != std::string::npos);
  CHECK(msg.find("image id 196141") != std::string::npos);
}

TEST_CASE("augment: the SSE2 warp + normalise paths equal the scalar kernels on random images and warps") {
  // Seeded random RGB images of odd sizes, warps from tiny to huge scale at any rotation (so
  // groups of four columns straddle the image border), output widths that are and are not
  // multiples of 4, both flips, ImageNet and other statistics: every float must be identical to
  // the scalar path's (integer blend + exact IEEE normalisation, no tolerance).
  std::vector<float> r(8);
  int seed = 0;
  for (const auto& [sw, sh, ow, oh] : {std::tuple{83, 61, 48, 40}, std::tuple{1, 1, 5, 3}, std::tuple{2, 3, 17, 9},
                                       std::tuple{157, 97, 64, 64}, std::tuple{40, 300, 33, 21}}) {
    Image src(sh, sw, 3);
    std::vector<float> u(src.pixels.size());
    testing::fill_uniform<float>(u, 500 + seed, 0.f, 255.99f);
    for (std::size_t i = 0; i < u.size(); ++i) src.pixels[i] = static_cast<std::uint8_t>(u[i]);
    for (int j = 0; j < 6; ++j, ++seed) {
      testing::fill_uniform<float>(r, 700 + seed, -1.f, 1.f);
      const double scale = std::pow(4.0, r[2]) * std::max(sw, sh);  // 1/4 to 4 times the image
      const Affine m = get_warp_matrix(sw * (0.5 + r[0]), sh * (0.5 + r[1]), scale, 180.0 * r[3], ow, oh);
      const std::array<float, 3> mean = j % 2 ? kImageNetMean : std::array<float, 3>{1.5f + r[4], 100.f, 250.f};
      const std::array<float, 3> sd = j % 2 ? kImageNetStd : std::array<float, 3>{0.3f, 7.f + r[5], 63.f};
      for (const bool flip : {false, true}) {
        CAPTURE(sw);
        CAPTURE(ow);
        CAPTURE(j);
        CAPTURE(flip);
        std::vector<float> simd(static_cast<std::size_t>(ow) * oh * 3, -9.f), scalar(simd.size(), 9.f);
        warp_flip_normalize<float, true>(src, m, ow, oh, flip, simd.data(), mean, sd);
        warp_flip_normalize<float, false>(src, m, ow, oh, flip, scalar.data(), mean, sd);
        require_close("warp_flip_normalize sse2 vs scalar", simd, scalar, 0, 0);
      }
      // The 8-bit row kernel alone (warp_affine), SSE2 interior blend vs scalar.
      const data::detail::WarpCoords wc(m, ow);
      std::vector<std::uint8_t> a(static_cast<std::size_t>(ow) * 3), b(a.size());
      for (int y = 0; y < oh; ++y) {
        data::detail::warp_affine_row_u8<3, true>(src, wc, y, ow, a.data());
        data::detail::warp_affine_row_u8<3, false>(src, wc, y, ow, b.data());
        CAPTURE(y);
        require_close("warp_affine_row_u8 sse2 vs scalar", a, b, 0, 0);
      }
    }
  }
}

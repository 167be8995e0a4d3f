// nn_sampling ops: the CUDA backend against the host backend on seeded random inputs, for fp32,
// fp16 and bf16 storage. Forward and backward of upsample nearest (x2/x4/x8, write and
// accumulate), bilinear resize, concat, resize_concat (the DEKR neck), deformable conv on both
// algorithms (im2col + GEMM and fused; DEKR shape family, 8/16/32 lanes, odd sizes, far offsets,
// general geometry, one and several chunks) and DEKR affine offsets.
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include "ampkit/backend/cuda/affine_offsets.cuh"
#include "ampkit/backend/cuda/concat.cuh"
#include "ampkit/backend/cuda/context.cuh"
#include "ampkit/backend/cuda/deform_conv2d.cuh"
#include "ampkit/backend/cuda/resize_bilinear.cuh"
#include "ampkit/backend/cuda/upsample_nearest.cuh"
#include "ampkit/backend/host/affine_offsets.hpp"
#include "ampkit/backend/host/concat.hpp"
#include "ampkit/backend/host/deform_conv2d.hpp"
#include "ampkit/backend/host/resize_bilinear.hpp"
#include "ampkit/backend/host/upsample_nearest.hpp"
#include "support/testing.hpp"

namespace {

using namespace ampkit;

Cuda& gpu() {
  static Cuda ctx;
  return ctx;
}

/// |gpu - host| <= rtol·|host| + atol·max|host| with rtol = 2·eps_T and
/// atol = eps_T·(2 + sqrt(n_terms)): both backends accumulate in fp32 but in different orders
/// (cuBLAS tiles, atomics, vs. sequential loops) and the CUDA im2col rounds its samples to T
/// before the tensor-core GEMM, so each output carries up to ~sqrt(n_terms) independent
/// half-ulp errors of the largest terms. An indexing/sign error is O(max|host|) and fails.
template <class T>
void check_close(const char* what, const HostTensor<T>& got, const HostTensor<T>& want, double n_terms) {
  REQUIRE(got.shape() == want.shape());
  double scale = 0;
  for (const T& v : want.span()) scale = std::max(scale, std::abs(static_cast<double>(static_cast<float>(v))));
  const double eps = epsilon_v<T>;
  const auto r = testing::compare<T, T>(what, got.span(), want.span(), 2 * eps,
                                        eps * (2 + std::sqrt(n_terms)) * std::max(scale, 1e-3));
  CHECK_MESSAGE(r.ok, what, ": ", r.n_bad, " mismatches, max rel err ", r.max_rel_err);
}

template <class T>
HostTensor<T> down(const cuda::DeviceTensor<T>& d) {
  return gpu().to_host(d.cview());
}

template <class T>
cuda::DeviceTensor<T> up(const HostTensor<T>& h) {
  return gpu().to_device(h);
}

/// Device tensor pre-filled with non-zero garbage, so unwritten elements show up.
template <class T>
cuda::DeviceTensor<T> garbage(Shape s, std::uint64_t seed) {
  return up(testing::random_tensor<T>(s, seed, 5.f, 9.f));
}

}  // namespace

TEST_CASE_TEMPLATE("upsample_nearest: CUDA matches host", T, float, ampkit::half, ampkit::bfloat16) {
  Host host;
  for (int scale : {2, 4, 8}) {
    for (Shape xs : {Shape{2, 5, 3, 32}, Shape{1, 3, 4, 3}}) {  // vectorised and scalar channel paths
      CAPTURE(scale);
      CAPTURE(xs);
      const Shape ys = upsample_nearest_output_shape(xs, scale);
      const auto x = testing::random_tensor<T>(xs, 1), dy = testing::random_tensor<T>(ys, 2);
      const auto y0 = testing::random_tensor<T>(ys, 3);
      for (Accumulate mode : {Accumulate::kNo, Accumulate::kYes}) {
        auto y_h = y0.clone();
        upsample_nearest_forward<T>(host, x.cview(), y_h.view(), scale, mode);
        auto y_d = up(y0);
        auto x_d = up(x);
        upsample_nearest_forward<T>(gpu(), x_d.cview(), y_d.view(), scale, mode);
        check_close("upsample y", down(y_d), y_h, 1);
        auto dx_h = testing::random_tensor<T>(xs, 4);
        auto dx_d = up(dx_h);
        auto dy_d = up(dy);
        upsample_nearest_backward<T>(host, dy.cview(), dx_h.view(), scale, mode);
        upsample_nearest_backward<T>(gpu(), dy_d.cview(), dx_d.view(), scale, mode);
        check_close("upsample dx", down(dx_d), dx_h, scale * scale);
      }
    }
  }
}

TEST_CASE_TEMPLATE("resize_bilinear: CUDA matches host (up, down, odd, identity)", T, float, ampkit::half, ampkit::bfloat16) {
  Host host;
  for (auto [xs, ys] : {std::pair{Shape{2, 16, 16, 64}, Shape{2, 128, 128, 64}}, {Shape{2, 5, 7, 3}, Shape{2, 13, 11, 3}},
                        {Shape{1, 9, 10, 8}, Shape{1, 4, 6, 8}}, {Shape{1, 6, 6, 4}, Shape{1, 6, 6, 4}},
                        {Shape{1, 1, 1, 2}, Shape{1, 3, 5, 2}}}) {
    CAPTURE(xs);
    CAPTURE(ys);
    const auto x = testing::random_tensor<T>(xs, 11), dy = testing::random_tensor<T>(ys, 12);
    HostTensor<T> y_h(ys), dx_h(xs);
    resize_bilinear_forward<T>(host, x.cview(), y_h.view());
    resize_bilinear_backward<T>(host, dy.cview(), dx_h.view());
    auto x_d = up(x), dy_d = up(dy);
    auto y_d = garbage<T>(ys, 13), dx_d = garbage<T>(xs, 14);
    resize_bilinear_forward<T>(gpu(), x_d.cview(), y_d.view());
    resize_bilinear_backward<T>(gpu(), dy_d.cview(), dx_d.view());
    check_close("resize y", down(y_d), y_h, 4);
    // Each input pixel gathers up to (2·ceil(out/in)+2)² weighted terms.
    const double n = std::pow(2.0 * std::ceil(double(ys.h) / xs.h) + 2, 2);
    check_close("resize dx", down(dx_d), dx_h, n);
  }
}

TEST_CASE_TEMPLATE("concat and resize_concat (DEKR neck): CUDA matches host", T, float, ampkit::half, ampkit::bfloat16) {
  Host host;
  // W32 neck at a small input: 32/64/128/256 channels at 1/4, 1/8, 1/16, 1/32; then an odd one.
  for (auto sizes : {std::vector<Shape>{{2, 16, 16, 32}, {2, 8, 8, 64}, {2, 4, 4, 128}, {2, 2, 2, 256}},
                     std::vector<Shape>{{1, 13, 17, 3}, {1, 7, 9, 5}, {1, 4, 5, 2}, {1, 2, 3, 7}}}) {
    std::vector<HostTensor<T>> xs, dxs_h;
    std::vector<cuda::DeviceTensor<T>> xs_d, dxs_d;
    std::int64_t c = 0;
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      xs.push_back(testing::random_tensor<T>(sizes[i], 20 + i));
      xs_d.push_back(up(xs.back()));
      dxs_h.emplace_back(sizes[i]);
      dxs_d.push_back(garbage<T>(sizes[i], 30 + i));
      c += sizes[i].c;
    }
    const Shape ys{sizes[0].n, sizes[0].h, sizes[0].w, c};
    const auto dy = testing::random_tensor<T>(ys, 40);
    auto dy_d = up(dy);
    std::vector<TensorView<const T>> xv, xv_d;
    std::vector<TensorView<T>> dv, dv_d;
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      xv.push_back(xs[i].cview());
      xv_d.push_back(xs_d[i].cview());
      dv.push_back(dxs_h[i].view());
      dv_d.push_back(dxs_d[i].view());
    }
    HostTensor<T> y_h(ys);
    auto y_d = garbage<T>(ys, 41);
    resize_concat_forward<T>(host, xv, y_h.view());
    resize_concat_forward<T>(gpu(), xv_d, y_d.view());
    check_close("resize_concat y", down(y_d), y_h, 4);
    resize_concat_backward<T>(host, dy.cview(), dv);
    resize_concat_backward<T>(gpu(), dy_d.cview(), dv_d);
    for (std::size_t i = 0; i < sizes.size(); ++i)
      check_close(("resize_concat dx" + std::to_string(i)).c_str(), down(dxs_d[i]), dxs_h[i], 100);
    // Plain concat/split: the first branch four times (equal sizes).
    const std::vector<TensorView<const T>> same_d(4, xs_d[0].cview()), same(4, xs[0].cview());
    const Shape cs{sizes[0].n, sizes[0].h, sizes[0].w, 4 * sizes[0].c};
    HostTensor<T> cy_h(cs);
    auto cy_d = garbage<T>(cs, 42);
    concat_forward<T>(host, same, cy_h.view());
    concat_forward<T>(gpu(), same_d, cy_d.view());
    check_close("concat y", down(cy_d), cy_h, 1);
    auto cdy = testing::random_tensor<T>(cs, 43);
    auto cdy_d = up(cdy);
    std::vector<HostTensor<T>> parts_h;
    std::vector<cuda::DeviceTensor<T>> parts_d;
    std::vector<TensorView<T>> pv, pv_d;
    for (int i = 0; i < 4; ++i) {
      parts_h.emplace_back(sizes[0]);
      parts_d.push_back(garbage<T>(sizes[0], 50 + i));
    }
    for (int i = 0; i < 4; ++i) {
      pv.push_back(parts_h[i].view());
      pv_d.push_back(parts_d[i].view());
    }
    concat_backward<T>(host, cdy.cview(), pv);
    concat_backward<T>(gpu(), cdy_d.cview(), pv_d);
    for (int i = 0; i < 4; ++i) check_close("concat split", down(parts_d[i]), parts_h[i], 1);
  }
}

namespace {
using cuda::sampling::DeformConvAlgo;

const char* algo_name(DeformConvAlgo a) {
  return a == DeformConvAlgo::kFused ? "fused" : a == DeformConvAlgo::kMma ? "mma (tensor cores)" : "im2col";
}

/// One deformable conv, forward + backward, on the host and on CUDA with algorithm `algo`
/// (workspace budget and fused pixels-per-block set for the call, then restored).
template <class T>
void deform_case(Shape xs, int k, const DeformConv2dParams& p, float offset_scale, std::size_t workspace_bytes,
                 DeformConvAlgo algo, int pixels_per_block = 4096) {
  CAPTURE(xs);
  CAPTURE(k);
  CAPTURE(workspace_bytes);
  CAPTURE(pixels_per_block);
  INFO("algorithm ", algo_name(algo));
  Host host;
  const Shape ys = deform_conv2d_output_shape(xs, k, p);
  const Shape os{xs.n, ys.h, ys.w, p.offset_channels()}, ws{k, p.kernel_h, p.kernel_w, xs.c / p.groups};
  const auto x = testing::random_tensor<T>(xs, 61), off = testing::random_tensor<T>(os, 62, -offset_scale, offset_scale);
  const auto w = testing::random_tensor<T>(ws, 63, -0.5f, 0.5f), dy = testing::random_tensor<T>(ys, 64);
  const auto dw0 = testing::random_tensor<T>(ws, 65, -0.1f, 0.1f);
  HostTensor<T> y_h(ys), dx_h(xs), doff_h(os);
  auto dw_h = dw0.clone();
  deform_conv2d_forward<T>(host, x.cview(), off.cview(), w.cview(), y_h.view(), p);
  deform_conv2d_backward<T>(host, x.cview(), off.cview(), w.cview(), dy.cview(), dx_h.view(), doff_h.view(),
                            dw_h.view(), p);
  auto& limit = cuda::sampling::deform_workspace_bytes();
  auto& algo_now = cuda::sampling::deform_conv_algo();
  auto& ppb = cuda::sampling::deform_fused_pixels_per_block();
  const std::size_t saved = limit;
  const DeformConvAlgo saved_algo = algo_now;
  const int saved_ppb = ppb;
  limit = workspace_bytes;
  algo_now = algo;
  ppb = pixels_per_block;
  auto x_d = up(x), off_d = up(off), w_d = up(w), dy_d = up(dy), dw_d = up(dw0);
  auto y_d = garbage<T>(ys, 66), dx_d = garbage<T>(xs, 67), doff_d = garbage<T>(os, 68);
  try {
    deform_conv2d_forward<T>(gpu(), x_d.cview(), off_d.cview(), w_d.cview(), y_d.view(), p);
    deform_conv2d_backward<T>(gpu(), x_d.cview(), off_d.cview(), w_d.cview(), dy_d.cview(), dx_d.view(),
                              doff_d.view(), dw_d.view(), p);
  } catch (...) {
    limit = saved, algo_now = saved_algo, ppb = saved_ppb;
    throw;
  }
  limit = saved, algo_now = saved_algo, ppb = saved_ppb;
  const double cg = double(xs.c) / p.groups, kg = double(k) / p.groups, cog = double(xs.c) / p.offset_groups;
  check_close("deform y", down(y_d), y_h, p.taps() * cg);
  check_close("deform dx", down(dx_d), dx_h, 4 * p.taps() * kg);
  check_close("deform doffsets", down(doff_d), doff_h, cog * kg);
  check_close("deform dw (accumulated)", down(dw_d), dw_h, double(ys.n * ys.h * ys.w));
}

/// The same case on every algorithm that applies: im2col, fused, and for fp16/bf16 with at most
/// 16 channels and filters per group the tensor-core kernels (same tolerances as im2col, which
/// also rounds the samples to T before the product).
template <class T>
void deform_both(Shape xs, int k, const DeformConv2dParams& p, float offset_scale, std::size_t workspace_bytes,
                 int pixels_per_block = 4096) {
  deform_case<T>(xs, k, p, offset_scale, workspace_bytes, DeformConvAlgo::kIm2col);
  REQUIRE(cuda::sampling::deform_fused_supported(xs, k, p));
  deform_case<T>(xs, k, p, offset_scale, workspace_bytes, DeformConvAlgo::kFused, pixels_per_block);
  if constexpr (!std::is_same_v<T, float>)
    if (cuda::sampling::deform_mma_supported(xs, k, p))
      deform_case<T>(xs, k, p, offset_scale, workspace_bytes, DeformConvAlgo::kMma, pixels_per_block);
}
}  // namespace

TEST_CASE_TEMPLATE("deform_conv2d: CUDA matches host (im2col, fused, tensor cores)", T, float, ampkit::half, ampkit::bfloat16) {
  DeformConv2dParams dekr;
  dekr.groups = dekr.offset_groups = 17;
  SUBCASE("DEKR: 255 channels, groups 17, 3x3 pad 1, one chunk") { deform_both<T>({2, 12, 10, 255}, 255, dekr, 2.f, 768u << 20); }
  SUBCASE("DEKR, fused with 7-pixel blocks (many blocks, partial tiles, many dW partials)") {
    deform_case<T>({2, 12, 10, 255}, 255, dekr, 2.f, 768u << 20, DeformConvAlgo::kFused, 7);
    // tensor cores: every 16-pixel tile partial (7 live rows), blocks with one busy warp
    if constexpr (!std::is_same_v<T, float>)
      deform_case<T>({2, 12, 10, 255}, 255, dekr, 2.f, 768u << 20, DeformConvAlgo::kMma, 7);
  }
  SUBCASE("DEKR, tensor cores over 3 chunks of 1 image and 100-pixel blocks (tiles across images)") {
    if constexpr (!std::is_same_v<T, float>)
      deform_case<T>({3, 11, 13, 255}, 255, dekr, 3.f, 1, DeformConvAlgo::kMma, 100);
  }
  SUBCASE("DEKR, odd size, offsets up to 8 px (many samples partly or wholly outside)") {
    deform_both<T>({3, 13, 9, 255}, 255, dekr, 8.f, 768u << 20, 37);
  }
  SUBCASE("DEKR family, small channels (8 lanes), 3 chunks of 1 image") { deform_both<T>({3, 9, 11, 34}, 51, dekr, 2.5f, 1, 5); }
  SUBCASE("DEKR family, 5 channels and 12 filters per group (16 lanes, lanes beyond C/g)") {
    deform_both<T>({2, 8, 7, 85}, 204, dekr, 2.f, 768u << 20, 9);
  }
  SUBCASE("32 channels per group (32 lanes), 20 filters per group, 3 groups") {
    DeformConv2dParams p;
    p.groups = p.offset_groups = 3;
    deform_both<T>({2, 6, 7, 96}, 60, p, 3.f, 768u << 20, 11);
  }
  SUBCASE("general with groups = offset groups: 2x3 kernel, stride 2x1, pad 0x1, dilation 2x1, groups 2") {
    DeformConv2dParams p;
    p.kernel_h = 2, p.kernel_w = 3, p.stride_h = 2, p.stride_w = 1, p.pad_h = 0, p.pad_w = 1;
    p.dilation_h = 2, p.dilation_w = 1, p.groups = p.offset_groups = 2;
    deform_both<T>({2, 9, 8, 12}, 8, p, 3.f, 768u << 20, 6);
  }
  SUBCASE("5x5 kernel, pad 2, groups 4 (25 taps: lanes loop over taps for the sample points)") {
    DeformConv2dParams p;
    p.kernel_h = p.kernel_w = 5, p.pad_h = p.pad_w = 2, p.groups = p.offset_groups = 4;
    deform_both<T>({1, 7, 6, 16}, 12, p, 2.f, 768u << 20, 13);
  }
  SUBCASE("general: 2x3 kernel, stride 2x1, pad 0x1, dilation 2x1, groups 2, offset groups 3 (im2col only)") {
    DeformConv2dParams p;
    p.kernel_h = 2, p.kernel_w = 3, p.stride_h = 2, p.stride_w = 1, p.pad_h = 0, p.pad_w = 1;
    p.dilation_h = 2, p.dilation_w = 1, p.groups = 2, p.offset_groups = 3;
    CHECK_FALSE(cuda::sampling::deform_fused_supported({2, 9, 8, 12}, 8, p));
    deform_case<T>({2, 9, 8, 12}, 8, p, 3.f, 768u << 20, DeformConvAlgo::kIm2col);
  }
  SUBCASE("one offset group over 40 channels (lanes loop over channels; im2col only)") {
    DeformConv2dParams p;
    CHECK_FALSE(cuda::sampling::deform_fused_supported({1, 7, 7, 40}, 16, p));
    deform_case<T>({1, 7, 7, 40}, 16, p, 1.5f, 768u << 20, DeformConvAlgo::kIm2col);
  }
}

TEST_CASE("deform_conv2d: kAuto picks tensor cores (fp16/bf16) or fused (fp32) for DEKR; kFused / kMma on an unsupported shape is a clear error") {
  DeformConv2dParams dekr;
  dekr.groups = dekr.offset_groups = 17;
  const Shape head{32, 128, 128, 255};
  CHECK(cuda::sampling::deform_fused_supported(head, 255, dekr));
  CHECK(cuda::sampling::deform_mma_supported(head, 255, dekr));
  auto& algo = cuda::sampling::deform_conv_algo();
  const DeformConvAlgo saved = algo;
  algo = DeformConvAlgo::kAuto;
  const bool tc = gpu().device().cc_major >= 8;  // mma.sync m16n8k16
  CHECK(cuda::sampling::use_mma<ampkit::half>(gpu(), head, 255, dekr) == tc);
  CHECK(cuda::sampling::use_mma<ampkit::bfloat16>(gpu(), head, 255, dekr) == tc);
  CHECK_FALSE(cuda::sampling::use_mma<float>(gpu(), head, 255, dekr));
  CHECK(cuda::sampling::use_fused(head, 255, dekr));  // what fp32 (and fp16 below 8.0) runs
  // 32 channels per group: too wide for one m16n8k16 K-step, so kAuto falls back to fused.
  DeformConv2dParams g8;
  g8.groups = g8.offset_groups = 8;
  CHECK_FALSE(cuda::sampling::use_mma<ampkit::half>(gpu(), {2, 8, 8, 256}, 256, g8));
  CHECK(cuda::sampling::use_fused({2, 8, 8, 256}, 256, g8));
  algo = saved;
  // The message of an fp16 forward of `groups` groups, c input channels and k filters under `a`
  // ("" when it does not throw).
  auto message = [&](DeformConvAlgo a, int groups, int c, int k) {
    DeformConv2dParams p;
    p.groups = p.offset_groups = groups;
    auto x = gpu().tensor<ampkit::half>({1, 4, 4, c});
    auto off = gpu().tensor<ampkit::half>({1, 4, 4, p.offset_channels()});
    auto w = gpu().tensor<ampkit::half>({k, 3, 3, c / groups});
    auto y = gpu().tensor<ampkit::half>({1, 4, 4, k});
    algo = a;
    std::string m;
    try {
      deform_conv2d_forward<ampkit::half>(gpu(), x.cview(), off.cview(), w.cview(), y.view(), p);
    } catch (const Error& e) {
      m = e.what();
    }
    algo = saved;
    return m;
  };
  // kFused: one group of 40 channels, more than 32 per group
  const std::string fused = message(DeformConvAlgo::kFused, 1, 40, 8);
  CHECK(fused.find("deform_conv2d") != std::string::npos);
  CHECK(fused.find("kFused") != std::string::npos);
  // kMma: at most 16 channels and 16 filters per group (3 groups of 32 channels here)
  CHECK_FALSE(cuda::sampling::deform_mma_supported({1, 4, 4, 96}, 24, [] {
    DeformConv2dParams p;
    p.groups = p.offset_groups = 3;
    return p;
  }()));
  const std::string mma = message(DeformConvAlgo::kMma, 3, 96, 24);
  CHECK(mma.find("kMma") != std::string::npos);
  CHECK(mma.find("16 channels") != std::string::npos);
}

TEST_CASE_TEMPLATE("affine_offsets: CUDA matches host", T, float, ampkit::half, ampkit::bfloat16) {
  Host host;
  const Shape as{2, 7, 9, 6 * 17}, os{2, 7, 9, 18 * 17};
  const auto a = testing::random_tensor<T>(as, 71, -1.5f, 1.5f), g = testing::random_tensor<T>(os, 72);
  HostTensor<T> o_h(os), da_h(as);
  affine_offsets_forward<T>(host, a.cview(), o_h.view());
  affine_offsets_backward<T>(host, g.cview(), da_h.view());
  auto a_d = up(a), g_d = up(g);
  auto o_d = garbage<T>(os, 73), da_d = garbage<T>(as, 74);
  affine_offsets_forward<T>(gpu(), a_d.cview(), o_d.view());
  affine_offsets_backward<T>(gpu(), g_d.cview(), da_d.view());
  check_close("affine offsets", down(o_d), o_h, 1);
  check_close("affine dL_daffine", down(da_d), da_h, 9);
}

TEST_CASE("CUDA ops reject bad shapes with the op name and both values") {
  auto x = gpu().tensor<ampkit::half>({1, 4, 4, 34});
  auto off = gpu().tensor<ampkit::half>({1, 4, 4, 18});
  auto w = gpu().tensor<ampkit::half>({34, 3, 3, 2});
  auto y = gpu().tensor<ampkit::half>({1, 4, 4, 34});
  DeformConv2dParams p;
  p.groups = p.offset_groups = 17;
  try {
    deform_conv2d_forward<ampkit::half>(gpu(), x.cview(), off.cview(), w.cview(), y.view(), p);
    FAIL("expected ampkit::Error");
  } catch (const Error& e) {
    const std::string m = e.what();
    CHECK(m.find("deform_conv2d") != std::string::npos);
    CHECK(m.find("(1,4,4,306)") != std::string::npos);
    CHECK(m.find("(1,4,4,18)") != std::string::npos);
  }
}

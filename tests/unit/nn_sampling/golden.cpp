// nn_sampling ops on the host backend against PyTorch goldens (tests/golden/gen_nn_sampling.py):
// upsample nearest, bilinear resize, resize+concat, deformable conv, DEKR adaptive offsets,
// outputs and gradients, fp32 and fp16-emulated.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "ampkit/backend/host/affine_offsets.hpp"
#include "ampkit/backend/host/concat.hpp"
#include "ampkit/backend/host/deform_conv2d.hpp"
#include "ampkit/backend/host/resize_bilinear.hpp"
#include "ampkit/backend/host/upsample_nearest.hpp"
#include "ampkit/core/safetensors.hpp"
#include "support/testing.hpp"

namespace {

using namespace ampkit;

const safetensors::File& goldens() {
  static const safetensors::File f =
      safetensors::File::load(testing::source_path("tests/golden/data/nn_sampling.safetensors"));
  return f;
}

template <class T>
HostTensor<T> golden(const std::string& name) {
  return goldens().tensor<T>(name);
}

template <class T>
HostTensor<T> like(const HostTensor<float>& ref) {
  // Seeded non-zero fill, so an op that forgets to write an element cannot pass by accident.
  return testing::random_tensor<T>(ref.shape(), 0xbadc0de, 7.f, 9.f);
}

double max_abs(const HostTensor<float>& t) {
  double m = 0;
  for (float v : t.span()) m = std::max(m, static_cast<double>(std::abs(v)));
  return m;
}

/// Tolerances. fp32 cases: only summation order differs from PyTorch; sums here have at most a
/// few hundred terms of magnitude <= ~|ref|, so 64 ulp relative plus 64 ulp of the largest
/// reference value absolute is generous yet catches any indexing error (those are O(|ref|)).
/// fp16-emulated cases: PyTorch's fp32 result rounded once to fp16 (0.5 ulp = eps/2) plus the
/// fp32 order noise, so 1 eps relative plus 1 eps of the largest value absolute.
template <class T>
void check(const char* what, const HostTensor<T>& got, const HostTensor<float>& want) {
  REQUIRE(got.shape() == want.shape());
  const double eps = std::is_same_v<T, float> ? 64 * epsilon_v<float> : epsilon_v<T>;
  const auto r = testing::compare<T, float>(what, got.span(), want.span(), eps, eps * max_abs(want));
  CHECK_MESSAGE(r.ok, what, ": ", r.n_bad, " mismatches, max rel err ", r.max_rel_err);
}

DeformConv2dParams params_of(const std::string& name) {
  const auto v = goldens().read<std::int32_t>(name + ".params");
  DeformConv2dParams p;
  p.kernel_h = v[0], p.kernel_w = v[1], p.stride_h = v[2], p.stride_w = v[3], p.pad_h = v[4], p.pad_w = v[5];
  p.dilation_h = v[6], p.dilation_w = v[7], p.groups = v[8], p.offset_groups = v[9];
  return p;
}

}  // namespace

TEST_CASE("upsample_nearest matches F.interpolate(nearest) forward and backward") {
  Host host;
  for (auto [name, scale] : {std::pair{"up2", 2}, {"up4", 4}, {"up8", 8}}) {
    CAPTURE(name);
    const std::string n = name;
    auto x = golden<float>(n + ".x"), dy = golden<float>(n + ".dy");
    const auto y_ref = golden<float>(n + ".y"), dx_ref = golden<float>(n + ".dx");
    auto y = like<float>(y_ref);
    upsample_nearest_forward<float>(host, x.cview(), y.view(), scale);
    check((n + ".y").c_str(), y, y_ref);
    auto dx = like<float>(dx_ref);
    upsample_nearest_backward<float>(host, dy.cview(), dx.view(), scale);
    check((n + ".dx").c_str(), dx, dx_ref);
  }
}

TEST_CASE_TEMPLATE("resize_bilinear matches F.interpolate(bilinear, align_corners=False)", T, float, half) {
  Host host;
  // fp16 storage is checked on the fp16-emulated case only: its inputs are exact in fp16.
  const std::vector<std::string> cases = std::is_same_v<T, float>
                                             ? std::vector<std::string>{"resize_up", "resize_down", "resize_mixed_f16"}
                                             : std::vector<std::string>{"resize_mixed_f16"};
  for (const auto& n : cases) {
    CAPTURE(n);
    auto x = golden<T>(n + ".x"), dy = golden<T>(n + ".dy");
    const auto y_ref = golden<float>(n + ".y"), dx_ref = golden<float>(n + ".dx");
    auto y = like<T>(y_ref);
    resize_bilinear_forward<T>(host, x.cview(), y.view());
    check((n + ".y").c_str(), y, y_ref);
    auto dx = like<T>(dx_ref);
    resize_bilinear_backward<T>(host, dy.cview(), dx.view());
    check((n + ".dx").c_str(), dx, dx_ref);
  }
}

TEST_CASE("resize_concat matches the DEKR neck (resize to 1/4 + torch.cat)") {
  Host host;
  for (const std::string n : {"neck", "neck_odd"}) {
    CAPTURE(n);
    std::vector<HostTensor<float>> xs, dxs;
    for (int i = 0; i < 4; ++i) xs.push_back(golden<float>(n + ".x" + std::to_string(i)));
    const auto y_ref = golden<float>(n + ".y");
    auto dy = golden<float>(n + ".dy");
    std::vector<TensorView<const float>> x_views;
    std::vector<TensorView<float>> dx_views;
    for (auto& x : xs) x_views.push_back(x.cview());
    for (int i = 0; i < 4; ++i) dxs.push_back(like<float>(golden<float>(n + ".dx" + std::to_string(i))));
    for (auto& dx : dxs) dx_views.push_back(dx.view());
    auto y = like<float>(y_ref);
    resize_concat_forward<float>(host, x_views, y.view());
    check((n + ".y").c_str(), y, y_ref);
    resize_concat_backward<float>(host, dy.cview(), dx_views);
    for (int i = 0; i < 4; ++i)
      check((n + ".dx" + std::to_string(i)).c_str(), dxs[static_cast<std::size_t>(i)],
            golden<float>(n + ".dx" + std::to_string(i)));
  }
}

namespace {
template <class T>
void deform_golden(const std::string& n) {
  CAPTURE(n);
  Host host;
  const DeformConv2dParams p = params_of(n);
  auto x = golden<T>(n + ".x"), off = golden<T>(n + ".offsets"), w = golden<T>(n + ".w"), dy = golden<T>(n + ".dy");
  const auto y_ref = golden<float>(n + ".y");
  auto y = like<T>(y_ref);
  deform_conv2d_forward<T>(host, x.cview(), off.cview(), w.cview(), y.view(), p);
  check((n + ".y").c_str(), y, y_ref);
  auto dx = like<T>(golden<float>(n + ".dx"));
  auto doff = like<T>(golden<float>(n + ".doffsets"));
  // dL_dw accumulates: start from a known non-zero value and check the sum.
  auto dw0 = testing::random_tensor<T>(w.shape(), 77, -0.25f, 0.25f);
  auto dw = dw0.clone();
  deform_conv2d_backward<T>(host, x.cview(), off.cview(), w.cview(), dy.cview(), dx.view(), doff.view(), dw.view(), p);
  check((n + ".dx").c_str(), dx, golden<float>(n + ".dx"));
  check((n + ".doffsets").c_str(), doff, golden<float>(n + ".doffsets"));
  auto dw_want = golden<float>(n + ".dw");
  for (std::int64_t i = 0; i < dw_want.numel(); ++i) dw_want[i] += static_cast<float>(dw0[i]);
  check((n + ".dw (accumulated)").c_str(), dw, dw_want);
}
}  // namespace

TEST_CASE("deform_conv2d matches torchvision.ops.deform_conv2d (fp32)") {
  deform_golden<float>("dc_g17");
  deform_golden<float>("dc_general");
  deform_golden<float>("dc_g17_f16");
}

TEST_CASE("deform_conv2d in fp16 storage matches fp16-emulated torchvision") { deform_golden<half>("dc_g17_f16"); }

TEST_CASE_TEMPLATE("DEKR adaptive offsets + deform conv match mmpose AdaptiveActivationBlock", T, float, half) {
  Host host;
  const std::string n = std::is_same_v<T, float> ? "aab" : "aab_f16";
  auto x = golden<T>(n + ".x"), affine = golden<T>(n + ".affine"), w = golden<T>(n + ".w"), dy = golden<T>(n + ".dy");
  const int groups = static_cast<int>(affine.shape().c / 6);
  DeformConv2dParams p;
  p.groups = p.offset_groups = groups;
  const auto off_ref = golden<float>(n + ".offsets");
  auto off = like<T>(off_ref);
  affine_offsets_forward<T>(host, affine.cview(), off.view());
  check((n + ".offsets").c_str(), off, off_ref);
  auto y = like<T>(golden<float>(n + ".y"));
  deform_conv2d_forward<T>(host, x.cview(), off.cview(), w.cview(), y.view(), p);
  check((n + ".y").c_str(), y, golden<float>(n + ".y"));
  auto dx = like<T>(golden<float>(n + ".dx"));
  auto doff = like<T>(off_ref);
  HostTensor<T> dw(w.shape(), convert<T>(0.f));
  deform_conv2d_backward<T>(host, x.cview(), off.cview(), w.cview(), dy.cview(), dx.view(), doff.view(), dw.view(), p);
  check((n + ".dx").c_str(), dx, golden<float>(n + ".dx"));
  check((n + ".doffsets").c_str(), doff, golden<float>(n + ".doffsets"));
  check((n + ".dw").c_str(), dw, golden<float>(n + ".dw"));
  auto daffine = like<T>(golden<float>(n + ".daffine"));
  affine_offsets_backward<T>(host, doff.cview(), daffine.view());
  // daffine sums 9 offset gradients, each already rounded to T: allow 3 eps (sqrt(9)) for fp16.
  const auto daff_ref = golden<float>(n + ".daffine");
  const double eps = std::is_same_v<T, float> ? 64 * epsilon_v<float> : 3 * epsilon_v<T>;
  const auto r = testing::compare<T, float>("daffine", daffine.span(), daff_ref.span(), eps, eps * max_abs(daff_ref));
  CHECK(r.ok);
}

// nn_sampling ops on the host backend: finite-difference gradient checks in double precision
// (the same host code instantiated in double), adjoint identities, concat/split, and the errors
// bad inputs must raise.
#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "ampkit/backend/host/affine_offsets.hpp"
#include "ampkit/backend/host/concat.hpp"
#include "ampkit/backend/host/deform_conv2d.hpp"
#include "ampkit/backend/host/resize_bilinear.hpp"
#include "ampkit/backend/host/upsample_nearest.hpp"
#include "support/testing.hpp"

namespace {

using namespace ampkit;

std::vector<double> rand_vec(std::size_t n, std::uint64_t seed, double lo = -1, double hi = 1) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> d(lo, hi);
  std::vector<double> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

template <class T>
TensorView<T> view(std::vector<T>& v, Shape s) {
  REQUIRE(static_cast<std::int64_t>(v.size()) == s.numel());
  return {v.data(), s};
}

template <class T>
TensorView<const T> cview(const std::vector<T>& v, Shape s) {
  REQUIRE(static_cast<std::int64_t>(v.size()) == s.numel());
  return {v.data(), s};
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

/// Central differences of L(v) = <dy, f(v)> for every element of `v`, against `analytic`.
/// Step 1e-5 in double: truncation error O(h²·|f'''|) ~ 1e-10 for the piecewise-quadratic
/// bilinear sampling, round-off ~ 1e-16/1e-5 = 1e-11 per unit of |L|; tolerance 1e-6 relative to
/// the largest gradient leaves margin while an indexing or sign error shows up as O(1).
/// A kink (a sample crossing a pixel line within ±h) would break the quadratic model; with
/// continuous random offsets that has probability ~1e-5 per element.
void check_fd(const char* what, std::vector<double>& v, const std::vector<double>& analytic,
              const std::function<double()>& loss) {
  const double h = 1e-5;
  std::vector<double> numeric(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) {
    const double keep = v[i];
    v[i] = keep + h;
    const double lp = loss();
    v[i] = keep - h;
    const double lm = loss();
    v[i] = keep;
    numeric[i] = (lp - lm) / (2 * h);
  }
  double scale = 0;
  for (double g : analytic) scale = std::max(scale, std::abs(g));
  const auto r = testing::compare<double, double>(what, analytic, numeric, 1e-6, 1e-6 * std::max(scale, 1.0));
  CHECK_MESSAGE(r.ok, what, ": max rel err ", r.max_rel_err);
}

void check_deform_fd(Shape xs, int k, const DeformConv2dParams& p, double offset_scale, std::uint64_t seed) {
  const Shape ys = deform_conv2d_output_shape(xs, k, p);
  const Shape os{xs.n, ys.h, ys.w, p.offset_channels()}, ws{k, p.kernel_h, p.kernel_w, xs.c / p.groups};
  auto x = rand_vec(static_cast<std::size_t>(xs.numel()), seed);
  auto off = rand_vec(static_cast<std::size_t>(os.numel()), seed + 1, -offset_scale, offset_scale);
  auto w = rand_vec(static_cast<std::size_t>(ws.numel()), seed + 2);
  const auto dy = rand_vec(static_cast<std::size_t>(ys.numel()), seed + 3);
  std::vector<double> y(static_cast<std::size_t>(ys.numel()));
  auto loss = [&] {
    detail::host_deform_conv2d_forward<double>(cview(x, xs), cview(off, os), cview(w, ws), view(y, ys), p);
    return dot(dy, y);
  };
  std::vector<double> dx(x.size()), doff(off.size()), dw(w.size(), 0.0);
  detail::host_deform_conv2d_backward<double>(cview(x, xs), cview(off, os), cview(w, ws), cview(dy, ys), view(dx, xs),
                                              view(doff, os), view(dw, ws), p);
  check_fd("deform dL_dx", x, dx, loss);
  check_fd("deform dL_doffsets", off, doff, loss);
  check_fd("deform dL_dw", w, dw, loss);
}

template <class F>
void expect_error(F&& f, std::initializer_list<const char*> parts) {
  try {
    f();
    FAIL("expected ampkit::Error");
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const char* part : parts) CHECK_MESSAGE(msg.find(part) != std::string::npos, "'", part, "' not in: ", msg);
  }
}

}  // namespace

TEST_CASE("deform_conv2d gradients match finite differences (double)") {
  SUBCASE("DEKR form: 3x3, stride 1, pad 1, groups = offset_groups = 17") {
    DeformConv2dParams p;
    p.groups = p.offset_groups = 17;
    check_deform_fd({2, 4, 5, 34}, 17, p, 1.7, 11);
  }
  SUBCASE("general: 2x3 kernel, stride 2x1, pad 0x1, dilation 2x1, groups 2, offset groups 3") {
    DeformConv2dParams p;
    p.kernel_h = 2, p.kernel_w = 3, p.stride_h = 2, p.stride_w = 1, p.pad_h = 0, p.pad_w = 1;
    p.dilation_h = 2, p.dilation_w = 1, p.groups = 2, p.offset_groups = 3;
    check_deform_fd({1, 7, 6, 6}, 4, p, 2.5, 21);
  }
}

TEST_CASE("affine_offsets gradient matches finite differences (double)") {
  const Shape as{2, 3, 4, 6 * 3}, os{2, 3, 4, 18 * 3};
  auto a = rand_vec(static_cast<std::size_t>(as.numel()), 5);
  const auto dy = rand_vec(static_cast<std::size_t>(os.numel()), 6);
  std::vector<double> o(static_cast<std::size_t>(os.numel())), da(a.size());
  auto loss = [&] {
    detail::host_affine_offsets_forward<double>(cview(a, as), view(o, os));
    return dot(dy, o);
  };
  detail::host_affine_offsets_backward<double>(cview(dy, os), view(da, as));
  check_fd("affine dL_daffine", a, da, loss);
  // The map itself: identity A = 0, t = 0 gives zero offsets; A = I doubles the grid.
  std::vector<double> m = {1, 0, 0.25, 0, 1, -0.5}, off(18);
  detail::host_affine_offsets_forward<double>(cview(m, {1, 1, 1, 6}), view(off, {1, 1, 1, 18}));
  for (int k = 0; k < 9; ++k) {
    CHECK(off[2 * k] == doctest::Approx(detail::affine_grid_dy(k) + 0.25));
    CHECK(off[2 * k + 1] == doctest::Approx(detail::affine_grid_dx(k) - 0.5));
  }
}

TEST_CASE("resize and upsample gradients match finite differences and are adjoint (double)") {
  for (auto [xs, ys] : {std::pair{Shape{2, 5, 7, 3}, Shape{2, 13, 11, 3}}, {Shape{1, 9, 10, 2}, Shape{1, 4, 6, 2}},
                        {Shape{1, 4, 4, 2}, Shape{1, 4, 4, 2}}, {Shape{1, 1, 3, 2}, Shape{1, 5, 2, 2}}}) {
    CAPTURE(xs);
    CAPTURE(ys);
    auto x = rand_vec(static_cast<std::size_t>(xs.numel()), 31);
    const auto dy = rand_vec(static_cast<std::size_t>(ys.numel()), 32);
    std::vector<double> y(dy.size()), dx(x.size());
    auto loss = [&] {
      detail::host_resize_into<double>(cview(x, xs), view(y, ys), 0);
      return dot(dy, y);
    };
    detail::host_resize_from<double>(cview(dy, ys), view(dx, xs), 0);
    check_fd("resize dL_dx", x, dx, loss);
    CHECK(dot(dx, x) == doctest::Approx(loss()).epsilon(1e-12));
  }
  Host host;
  const Shape xs{2, 3, 5, 4};
  for (int s : {2, 4, 8}) {
    const auto x = testing::random_tensor<float>(xs, 40 + s);
    const auto dy = testing::random_tensor<float>(upsample_nearest_output_shape(xs, s), 50 + s);
    HostTensor<float> y(dy.shape()), dx(xs);
    upsample_nearest_forward<float>(host, x.cview(), y.view(), s);
    upsample_nearest_backward<float>(host, dy.cview(), dx.view(), s);
    double lhs = 0, rhs = 0;
    for (std::int64_t i = 0; i < y.numel(); ++i) lhs += static_cast<double>(y[i]) * dy[i];
    for (std::int64_t i = 0; i < x.numel(); ++i) rhs += static_cast<double>(x[i]) * dx[i];
    // Each dx is a float sum of s² terms (relative error <= s²·eps), so the identity holds to ~1e-5.
    CHECK(lhs == doctest::Approx(rhs).epsilon(1e-5));
    // Accumulate mode adds to what is there.
    HostTensor<float> y2(dy.shape(), 1.5f);
    upsample_nearest_forward<float>(host, x.cview(), y2.view(), s, Accumulate::kYes);
    for (std::int64_t i = 0; i < y.numel(); ++i) REQUIRE(y2[i] == y[i] + 1.5f);
  }
}

TEST_CASE_TEMPLATE("concat and split are exact inverses; resize_concat at equal sizes is concat", T, float, half,
                   bfloat16) {
  Host host;
  const Shape a{2, 3, 5, 4}, b{2, 3, 5, 1}, c{2, 3, 5, 7};
  const auto xa = testing::random_tensor<T>(a, 1), xb = testing::random_tensor<T>(b, 2),
             xc = testing::random_tensor<T>(c, 3);
  const std::vector<TensorView<const T>> xs = {xa.cview(), xb.cview(), xc.cview()};
  HostTensor<T> y({2, 3, 5, 12}), y2({2, 3, 5, 12});
  concat_forward<T>(host, xs, y.view());
  resize_concat_forward<T>(host, xs, y2.view());
  for (std::int64_t i = 0; i < y.numel(); ++i) REQUIRE(y[i] == y2[i]);
  CHECK(y(1, 2, 4, 4) == xb(1, 2, 4, 0));
  CHECK(y(1, 2, 4, 11) == xc(1, 2, 4, 6));
  HostTensor<T> da(a), db(b), dc(c);
  const std::vector<TensorView<T>> ds = {da.view(), db.view(), dc.view()};
  concat_backward<T>(host, y.cview(), ds);
  for (std::int64_t i = 0; i < xa.numel(); ++i) REQUIRE(da[i] == xa[i]);
  for (std::int64_t i = 0; i < xb.numel(); ++i) REQUIRE(db[i] == xb[i]);
  for (std::int64_t i = 0; i < xc.numel(); ++i) REQUIRE(dc[i] == xc[i]);
}

TEST_CASE("bad inputs raise ampkit::Error naming the op, the expected and the given values") {
  Host host;
  HostTensor<float> x({1, 4, 4, 34}), y({1, 4, 4, 34}), w({34, 3, 3, 2}), off({1, 4, 4, 306});
  DeformConv2dParams p;
  p.groups = p.offset_groups = 17;
  deform_conv2d_forward<float>(host, x.cview(), off.cview(), w.cview(), y.view(), p);  // valid
  HostTensor<float> off_bad({1, 4, 4, 18});
  expect_error([&] { deform_conv2d_forward<float>(host, x.cview(), off_bad.cview(), w.cview(), y.view(), p); },
               {"deform_conv2d", "offsets", "(1,4,4,18)", "(1,4,4,306)"});
  HostTensor<float> w_bad({34, 3, 3, 4});
  expect_error([&] { deform_conv2d_forward<float>(host, x.cview(), off.cview(), w_bad.cview(), y.view(), p); },
               {"deform_conv2d", "weight", "(34,3,3,4)", "(34,3,3,2)"});
  DeformConv2dParams p_bad = p;
  p_bad.groups = 5;
  expect_error([&] { deform_conv2d_forward<float>(host, x.cview(), off.cview(), w.cview(), y.view(), p_bad); },
               {"deform_conv2d", "34", "not divisible by groups 5"});
  HostTensor<float> up_bad({1, 7, 8, 34});
  expect_error([&] { upsample_nearest_forward<float>(host, x.cview(), up_bad.view(), 2); },
               {"upsample_nearest", "(1,7,8,34)", "(1,8,8,34)"});
  expect_error([&] { upsample_nearest_forward<float>(host, x.cview(), up_bad.view(), 0); },
               {"upsample_nearest", "scale", "0"});
  HostTensor<float> r_bad({1, 9, 9, 3});
  expect_error([&] { resize_bilinear_forward<float>(host, x.cview(), r_bad.view()); },
               {"resize_bilinear", "34 channels", "3"});
  const std::vector<TensorView<const float>> xs = {x.cview(), x.cview()};
  HostTensor<float> cat_bad({1, 4, 4, 60});
  expect_error([&] { concat_forward<float>(host, xs, cat_bad.view()); }, {"concat", "68 channels", "60"});
  HostTensor<float> cat_small({1, 2, 2, 68});
  expect_error([&] { concat_forward<float>(host, xs, cat_small.view()); }, {"concat", "4x4", "2x2"});
  HostTensor<float> aff({1, 4, 4, 100});
  expect_error([&] { affine_offsets_forward<float>(host, aff.cview(), off.view()); },
               {"affine_offsets", "100 channels", "6 per group"});
}

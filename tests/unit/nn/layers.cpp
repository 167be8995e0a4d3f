// Host backend nn ops (conv2d, batch norm plain/fused, relu, add, sum): PyTorch golden values
// (tests/golden/gen_nn.py), finite-difference gradient checks in double, storage-type rounding
// checks and bad-input errors.
#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "ampkit/backend/host/batch_norm.hpp"
#include "ampkit/backend/host/conv2d.hpp"
#include "ampkit/backend/host/elementwise.hpp"
#include "ampkit/core/safetensors.hpp"
#include "support/testing.hpp"

using namespace ampkit;
namespace st = ampkit::safetensors;

namespace {

Host& ctx() {
  static Host h(1);
  return h;
}

template <class T>
std::span<const T> sp(const HostTensor<T>& t) {
  return t.span();
}

/// Random tensor of any host scalar type (double included), values uniform in [lo, hi).
template <class T>
HostTensor<T> rnd(Shape s, std::uint64_t seed, double lo = -1, double hi = 1) {
  HostTensor<T> t(s);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> d(lo, hi);
  for (auto& v : t.span()) {
    if constexpr (std::is_same_v<T, double>)
      v = d(rng);
    else
      v = convert<T>(static_cast<float>(d(rng)));
  }
  return t;
}

template <class To, class From>
HostTensor<To> cast(const HostTensor<From>& a) {
  HostTensor<To> r(a.shape());
  for (std::int64_t i = 0; i < a.numel(); ++i) {
    const double v = host::widen(a[i]);
    if constexpr (std::is_same_v<To, double>)
      r[i] = v;
    else
      r[i] = convert<To>(static_cast<float>(v));
  }
  return r;
}

double max_abs(std::span<const float> v) {
  double m = 0;
  for (float x : v) m = std::max(m, std::abs(static_cast<double>(x)));
  return m;
}

/// got vs golden with |err| <= rtol*|want| + atol_rel*max|want|; prints the first mismatches.
template <class A>
void expect_close(const std::string& what, std::span<const A> got, const std::vector<float>& want,
                  double rtol, double atol_rel) {
  const double scale = std::max(max_abs(want), 1e-6);
  const auto r = testing::compare(what.c_str(), got, std::span<const float>(want), rtol, atol_rel * scale);
  CHECK_MESSAGE(r.ok, what, ": ", r.n_bad, " mismatches, max rel err ", r.max_rel_err);
}

const st::File& conv_golden() {
  static const st::File f = st::File::load(testing::source_path("tests/golden/data/nn_conv2d.safetensors"));
  return f;
}
const st::File& bn_golden() {
  static const st::File f =
      st::File::load(testing::source_path("tests/golden/data/nn_batch_norm.safetensors"));
  return f;
}

Shape shape_of(const st::File& f, const std::string& name) {
  const auto& s = f.info(name).shape;
  REQUIRE(s.size() == 4);
  return {s[0], s[1], s[2], s[3]};
}

}  // namespace

// =================================================================================================
// Golden values from PyTorch
// =================================================================================================

/// f32 cases run with T = float; f16 ("fp16-emulated") cases with T = half. Tolerances:
///  float: PyTorch and Eigen sum the R*S*Cg (<= 54) products in different orders; each order is
///    within ~K*eps of the exact sum relative to sum|terms| <= max|y|, so 64*eps of the largest
///    output bounds the difference with margin; rtol 16*eps covers the large outputs.
///  half: the inputs are identical (pre-rounded), our fp32 sum differs from PyTorch's by the float
///    bound above, and the result is rounded once to half: 0.5 ulp = eps/2 relative. rtol = eps,
///    plus 2*eps of max|y| for values near zero where the rounding is absolute.
TEST_CASE_TEMPLATE("conv2d host: forward and all gradients match PyTorch goldens", T, float, half) {
  const auto& f = conv_golden();
  const std::string dt = std::is_same_v<T, float> ? "f32" : "f16";
  const double rtol = std::is_same_v<T, float> ? 16 * epsilon_v<float> : epsilon_v<half>;
  const double atol = std::is_same_v<T, float> ? 64 * epsilon_v<float> : 2 * epsilon_v<half>;
  const auto cases = nlohmann::json::parse(f.metadata().at("cases"));
  REQUIRE(cases.size() >= 7);
  for (auto it = cases.begin(); it != cases.end(); ++it) {
    const std::string p = it.key() + "/" + dt + "/";
    const auto& c = it.value();
    CAPTURE(p);
    Conv2dParams prm{c["stride"][0],   c["stride"][1],   c["pad"][0], c["pad"][1],
                     c["dilation"][0], c["dilation"][1], c["groups"]};
    const bool has_bias = c["bias"];
    const auto x = f.tensor<T>(p + "x", shape_of(f, p + "x"));
    const auto w = f.tensor<T>(p + "w", shape_of(f, p + "w"));
    const Shape ys = conv2d_output_shape(x.shape(), w.shape(), prm);
    REQUIRE(ys == shape_of(f, p + "y"));
    HostTensor<T> b;
    if (has_bias) b = f.tensor<T>(p + "b", Shape{1, 1, 1, w.shape().n});
    HostTensor<T> y(ys, T(7.f));  // poison: forward must overwrite every element
    conv2d_forward<T>(ctx(), x.cview(), w.cview(), b.cview(), y.view(), prm);
    expect_close(p + "y", sp(y), f.read_as<float>(p + "y"), rtol, atol);

    const auto dy = f.tensor<T>(p + "dL_dy", ys);
    HostTensor<T> dx(x.shape(), T(7.f));
    conv2d_backward_data<T>(ctx(), dy.cview(), w.cview(), dx.view(), prm);
    expect_close(p + "dL_dx", sp(dx), f.read_as<float>(p + "dL_dx"), rtol, atol);

    // Weight and bias gradients accumulate: start from a known non-zero value.
    auto dw = rnd<T>(w.shape(), 5, -0.25, 0.25);
    auto want_dw = f.read_as<float>(p + "dL_dw");
    for (std::size_t i = 0; i < want_dw.size(); ++i) want_dw[i] += static_cast<float>(dw[i]);
    conv2d_backward_filter<T>(ctx(), x.cview(), dy.cview(), dw.view(), prm);
    expect_close(p + "dL_dw (accumulated)", sp(dw), want_dw, rtol, atol);
    if (has_bias) {
      auto db = rnd<T>(b.shape(), 6, -0.25, 0.25);
      auto want_db = f.read_as<float>(p + "dL_db");
      for (std::size_t i = 0; i < want_db.size(); ++i) want_db[i] += static_cast<float>(db[i]);
      conv2d_backward_bias<T>(ctx(), dy.cview(), db.view());
      expect_close(p + "dL_db (accumulated)", sp(db), want_db, rtol, atol);
    }
  }
}

/// BN reduces in double on the host and PyTorch in float: the statistics agree to a few float
/// ulps. Outputs are O(1) after normalisation; float: rtol 64 eps (|y| can be tiny where
/// gamma*xhat ~ -beta, hence also atol 64 eps of max|y|). half: one rounding of the output,
/// eps relative, 2 eps of max absolute. Backward terms cancel (dz - mean - xhat*...), so the
/// absolute part is what matters there.
TEST_CASE_TEMPLATE("batch_norm host: training/eval forward, fused variants and backward match PyTorch", T,
                   float, half) {
  const auto& f = bn_golden();
  const std::string dt = std::is_same_v<T, float> ? "f32" : "f16";
  const double rtol = std::is_same_v<T, float> ? 64 * epsilon_v<float> : epsilon_v<half>;
  const double atol = std::is_same_v<T, float> ? 64 * epsilon_v<float> : 2 * epsilon_v<half>;
  const double stat_tol = 16 * epsilon_v<float>;  // fp32 statistics on both sides
  const auto cases = nlohmann::json::parse(f.metadata().at("cases"));
  REQUIRE(cases.size() >= 3);
  for (auto it = cases.begin(); it != cases.end(); ++it) {
    const std::string p = it.key() + "/" + dt + "/";
    CAPTURE(p);
    const Shape s = shape_of(f, p + "x");
    const Shape v{1, 1, 1, s.c};
    const auto x = f.tensor<T>(p + "x", s);
    const auto res = f.tensor<T>(p + "residual", s);
    const auto dy = f.tensor<T>(p + "dL_dy", s);
    const auto gamma = f.tensor<float>(p + "gamma", v), beta = f.tensor<float>(p + "beta", v);
    for (const std::string epi : {"none", "relu", "add_relu"}) {
      const std::string q = p + epi + "/";
      CAPTURE(q);
      auto rm = f.tensor<float>(p + "running_mean_in", v), rv = f.tensor<float>(p + "running_var_in", v);
      HostTensor<float> sm(v, 7.f), si(v, 7.f);
      HostTensor<T> y(s, T(7.f));
      if (epi == "none")
        batch_norm_forward_training<T>(ctx(), x.cview(), gamma.cview(), beta.cview(), rm.view(), rv.view(),
                                       sm.view(), si.view(), y.view());
      else if (epi == "relu")
        batch_norm_relu_forward_training<T>(ctx(), x.cview(), gamma.cview(), beta.cview(), rm.view(),
                                            rv.view(), sm.view(), si.view(), y.view());
      else
        batch_norm_add_relu_forward_training<T>(ctx(), x.cview(), res.cview(), gamma.cview(), beta.cview(),
                                                rm.view(), rv.view(), sm.view(), si.view(), y.view());
      expect_close(q + "y", sp(y), f.read_as<float>(q + "y"), rtol, atol);
      expect_close(q + "running_mean", sp(rm), f.read_as<float>(p + "running_mean_out"), stat_tol, stat_tol);
      expect_close(q + "running_var", sp(rv), f.read_as<float>(p + "running_var_out"), stat_tol, stat_tol);
      expect_close(q + "save_mean", sp(sm), f.read_as<float>(p + "save_mean"), stat_tol, stat_tol);
      expect_close(q + "save_invstd", sp(si), f.read_as<float>(p + "save_invstd"), stat_tol, stat_tol);

      HostTensor<T> dx(s, T(7.f)), dres(s, T(7.f));
      auto dg = rnd<float>(v, 11), db = rnd<float>(v, 12);  // accumulated onto these
      auto want_dg = f.read_as<float>(q + "dL_dgamma"), want_db = f.read_as<float>(q + "dL_dbeta");
      for (std::int64_t c = 0; c < s.c; ++c) {
        want_dg[c] += dg[c];
        want_db[c] += db[c];
      }
      if (epi == "none")
        batch_norm_backward<T>(ctx(), x.cview(), dy.cview(), gamma.cview(), sm.cview(), si.cview(), dx.view(),
                               dg.view(), db.view());
      else if (epi == "relu")
        batch_norm_relu_backward<T>(ctx(), x.cview(), y.cview(), dy.cview(), gamma.cview(), sm.cview(),
                                    si.cview(), dx.view(), dg.view(), db.view());
      else
        batch_norm_add_relu_backward<T>(ctx(), x.cview(), y.cview(), dy.cview(), gamma.cview(), sm.cview(),
                                        si.cview(), dx.view(), dres.view(), dg.view(), db.view());
      // dL_dx sums M = N*H*W terms that cancel: scale the absolute tolerance by the size.
      const double dx_atol = atol * 4;
      expect_close(q + "dL_dx", sp(dx), f.read_as<float>(q + "dL_dx"), rtol, dx_atol);
      expect_close(q + "dL_dgamma (accumulated)", sp(dg), want_dg, 64 * epsilon_v<float>,
                   atol * s.n * s.h * s.w / 8);
      expect_close(q + "dL_dbeta (accumulated)", sp(db), want_db, 64 * epsilon_v<float>,
                   atol * s.n * s.h * s.w / 8);
      if (epi == "add_relu")
        expect_close(q + "dL_dresidual", sp(dres), f.read_as<float>(q + "dL_dresidual"), 0, 0);  // dz exactly

      // Eval mode with the updated running statistics.
      HostTensor<T> ye(s, T(7.f));
      const auto rmo = f.tensor<float>(p + "running_mean_out", v),
                 rvo = f.tensor<float>(p + "running_var_out", v);
      if (epi == "none")
        batch_norm_forward_inference<T>(ctx(), x.cview(), gamma.cview(), beta.cview(), rmo.cview(),
                                        rvo.cview(), ye.view());
      else if (epi == "relu")
        batch_norm_relu_forward_inference<T>(ctx(), x.cview(), gamma.cview(), beta.cview(), rmo.cview(),
                                             rvo.cview(), ye.view());
      else
        batch_norm_add_relu_forward_inference<T>(ctx(), x.cview(), res.cview(), gamma.cview(), beta.cview(),
                                                 rmo.cview(), rvo.cview(), ye.view());
      expect_close(q + "y_eval", sp(ye), f.read_as<float>(q + "y_eval"), rtol, atol);
    }
  }
}

// =================================================================================================
// Finite differences in double
// =================================================================================================

namespace {

/// Central differences of L(t) = sum(dL_dy * f(t)) w.r.t. every element of `t`, compared to
/// `analytic`. h = 1e-6 in double: truncation O(h^2 * f''') ~ 1e-12, cancellation ~ 1e-16/1e-6
/// = 1e-10 relative to |L|; 1e-7 of the gradient scale is far above both and far below any bug.
void fd_check(const std::string& what, HostTensor<double>& t, const std::function<double()>& loss,
              std::span<const double> analytic) {
  const double h = 1e-6;
  std::vector<double> num(static_cast<std::size_t>(t.numel()));
  for (std::int64_t i = 0; i < t.numel(); ++i) {
    const double keep = t[i];
    t[i] = keep + h;
    const double lp = loss();
    t[i] = keep - h;
    const double lm = loss();
    t[i] = keep;
    num[static_cast<std::size_t>(i)] = (lp - lm) / (2 * h);
  }
  double scale = 1e-12;
  for (double v : num) scale = std::max(scale, std::abs(v));
  const auto r = testing::compare(what.c_str(), analytic, std::span<const double>(num), 1e-6, 1e-7 * scale);
  CHECK_MESSAGE(r.ok, what, ": ", r.n_bad, " elements differ from finite differences");
}

double dot(const HostTensor<double>& a, const HostTensor<double>& b) {
  double s = 0;
  for (std::int64_t i = 0; i < a.numel(); ++i) s += a[i] * b[i];
  return s;
}

}  // namespace

TEST_CASE("conv2d host: gradients match finite differences in double (stride, padding, dilation, groups)") {
  struct Case {
    Shape x;
    std::int64_t k, r, s;
    Conv2dParams p;
  };
  const Case cases[] = {
      {{2, 5, 4, 3}, 4, 3, 3, Conv2dParams::square(1, 1)},
      {{1, 7, 6, 4}, 6, 3, 3, Conv2dParams::square(2, 1, 1, 2)},
      {{2, 6, 5, 6}, 6, 3, 2, {2, 1, 1, 0, 2, 1, 3}},                // asymmetric, dilation 2 in h, groups 3
      {{1, 5, 5, 34}, 34, 1, 1, Conv2dParams::square(1, 0, 1, 17)},  // DEKR's grouped 1x1
  };
  for (const auto& c : cases) {
    CAPTURE(c.x);
    auto x = rnd<double>(c.x, 1), w = rnd<double>({c.k, c.r, c.s, c.x.c / c.p.groups}, 2),
         b = rnd<double>({1, 1, 1, c.k}, 3);
    const Shape ys = conv2d_output_shape(c.x, w.shape(), c.p);
    auto dy = rnd<double>(ys, 4);
    HostTensor<double> y(ys);
    auto loss = [&] {
      conv2d_forward<double>(ctx(), x.cview(), w.cview(), b.cview(), y.view(), c.p);
      return dot(y, dy);
    };
    HostTensor<double> dx(c.x), dw(w.shape(), 0.0), db(b.shape(), 0.0);
    conv2d_backward_data<double>(ctx(), dy.cview(), w.cview(), dx.view(), c.p);
    conv2d_backward_filter<double>(ctx(), x.cview(), dy.cview(), dw.view(), c.p);
    conv2d_backward_bias<double>(ctx(), dy.cview(), db.view());
    fd_check("conv dL_dx", x, loss, sp(dx));
    fd_check("conv dL_dw", w, loss, sp(dw));
    fd_check("conv dL_db", b, loss, sp(db));
  }
}

TEST_CASE("batch_norm host: training-mode gradients match finite differences in double (all epilogues)") {
  const Shape s{2, 3, 4, 5}, v{1, 1, 1, 5};
  auto x = rnd<double>(s, 21, -2, 2), res = rnd<double>(s, 22), dy = rnd<double>(s, 23);
  // gamma/beta are fp32 by contract. Quantise them to multiples of 2^-16 and step by exactly
  // 2^-16, so every perturbed value is representable in float and the difference is exact.
  const float q = 1.f / 65536.f;
  auto gamma = rnd<float>(v, 24, 0.5, 1.5), beta = rnd<float>(v, 25);
  for (int c = 0; c < 5; ++c) {
    gamma[c] = std::round(gamma[c] / q) * q;
    beta[c] = std::round(beta[c] / q) * q;
  }
  for (const auto epi : {BatchNormEpilogue::kNone, BatchNormEpilogue::kRelu, BatchNormEpilogue::kAddRelu}) {
    CAPTURE(static_cast<int>(epi));
    HostTensor<double> y(s);
    HostTensor<float> rm(v, 0.f), rv(v, 1.f), sm(v), si(v);
    auto forward = [&] {
      if (epi == BatchNormEpilogue::kNone)
        batch_norm_forward_training<double>(ctx(), x.cview(), gamma.cview(), beta.cview(), rm.view(),
                                            rv.view(), sm.view(), si.view(), y.view());
      else if (epi == BatchNormEpilogue::kRelu)
        batch_norm_relu_forward_training<double>(ctx(), x.cview(), gamma.cview(), beta.cview(), rm.view(),
                                                 rv.view(), sm.view(), si.view(), y.view());
      else
        batch_norm_add_relu_forward_training<double>(ctx(), x.cview(), res.cview(), gamma.cview(),
                                                     beta.cview(), rm.view(), rv.view(), sm.view(), si.view(),
                                                     y.view());
    };
    auto loss = [&] {
      forward();
      return dot(y, dy);
    };
    forward();
    HostTensor<double> dx(s), dres(s);
    HostTensor<float> dg(v, 0.f), dbt(v, 0.f);
    if (epi == BatchNormEpilogue::kNone)
      batch_norm_backward<double>(ctx(), x.cview(), dy.cview(), gamma.cview(), sm.cview(), si.cview(),
                                  dx.view(), dg.view(), dbt.view());
    else if (epi == BatchNormEpilogue::kRelu)
      batch_norm_relu_backward<double>(ctx(), x.cview(), y.cview(), dy.cview(), gamma.cview(), sm.cview(),
                                       si.cview(), dx.view(), dg.view(), dbt.view());
    else
      batch_norm_add_relu_backward<double>(ctx(), x.cview(), y.cview(), dy.cview(), gamma.cview(), sm.cview(),
                                           si.cview(), dx.view(), dres.view(), dg.view(), dbt.view());
    // Tolerance: the backward reads the saved statistics as fp32 by contract (relative rounding
    // 6e-8), and dgamma/dbeta are fp32; the forward in double mode uses exact statistics. 1e-5
    // of the gradient scale covers that with margin and is far below any real bug (O(scale)).
    auto check = [&](const char* what, std::span<const double> analytic, const std::vector<double>& num) {
      double scale = 1e-12;
      for (double g : num) scale = std::max(scale, std::abs(g));
      const auto r = testing::compare(what, analytic, std::span<const double>(num), 1e-5, 1e-5 * scale);
      CHECK_MESSAGE(r.ok, what, " differs from finite differences");
    };
    auto numeric = [&](auto& t, double h) {
      std::vector<double> g(static_cast<std::size_t>(t.numel()));
      for (std::int64_t i = 0; i < t.numel(); ++i) {
        const auto keep = t[i];
        t[i] = keep + h;
        const double lp = loss();
        t[i] = keep - h;
        const double lm = loss();
        t[i] = keep;
        g[static_cast<std::size_t>(i)] = (lp - lm) / (2 * h);
      }
      return g;
    };
    check("bn dL_dx", sp(dx), numeric(x, 1e-6));
    std::vector<double> ag(dg.span().begin(), dg.span().end()), ab(dbt.span().begin(), dbt.span().end());
    check("bn dL_dgamma", ag, numeric(gamma, q));
    check("bn dL_dbeta", ab, numeric(beta, q));
    if (epi == BatchNormEpilogue::kAddRelu) check("bn dL_dresidual", sp(dres), numeric(res, 1e-6));
  }
}

TEST_CASE("relu / add / sum_relu host: values and gradients (finite differences in double)") {
  const Shape s{2, 3, 3, 4};
  auto a = rnd<double>(s, 31), b = rnd<double>(s, 32), c = rnd<double>(s, 33), dy = rnd<double>(s, 34);
  HostTensor<double> y(s), dx(s);
  // relu
  relu_forward<double>(ctx(), a.cview(), y.view());
  for (std::int64_t i = 0; i < a.numel(); ++i) CHECK(y[i] == std::max(a[i], 0.0));
  relu_backward<double>(ctx(), y.cview(), dy.cview(), dx.view());
  fd_check(
      "relu dL_dx", a,
      [&] {
        relu_forward<double>(ctx(), a.cview(), y.view());
        return dot(y, dy);
      },
      sp(dx));
  // sum_relu of three inputs: each input's gradient is relu_backward(y, dy)
  const TensorView<const double> xs[] = {a.cview(), b.cview(), c.cview()};
  auto sum_loss = [&] {
    sum_relu_forward<double>(ctx(), std::span<const TensorView<const double>>(xs), y.view());
    return dot(y, dy);
  };
  sum_loss();
  for (std::int64_t i = 0; i < a.numel(); ++i) CHECK(y[i] == std::max(a[i] + b[i] + c[i], 0.0));
  relu_backward<double>(ctx(), y.cview(), dy.cview(), dx.view());
  fd_check("sum_relu dL_db", b, sum_loss, sp(dx));
  // plain sum and add, in place
  sum_forward<double>(ctx(), std::span<const TensorView<const double>>(xs), y.view());
  for (std::int64_t i = 0; i < a.numel(); ++i) CHECK(y[i] == a[i] + b[i] + c[i]);
  auto acc = a.clone();
  add_forward<double>(ctx(), acc.cview(), b.cview(), acc.view());
  for (std::int64_t i = 0; i < a.numel(); ++i) CHECK(acc[i] == a[i] + b[i]);
}

// =================================================================================================
// Storage-type emulation: host<T> equals host<double> on the same T-rounded inputs, up to the one
// final rounding to T (plus fp32 accumulation error).
// =================================================================================================

TEST_CASE_TEMPLATE("host ops round once to the storage type", T, float, half, bfloat16) {
  const Shape xs{2, 7, 5, 34};
  const Conv2dParams prm = Conv2dParams::square(2, 1, 1, 17);
  const auto x = rnd<T>(xs, 41), w = rnd<T>({51, 3, 3, 2}, 42), b = rnd<T>({1, 1, 1, 51}, 43);
  const Shape ys = conv2d_output_shape(xs, w.shape(), prm);
  HostTensor<T> y(ys);
  HostTensor<double> yd(ys);
  conv2d_forward<T>(ctx(), x.cview(), w.cview(), b.cview(), y.view(), prm);
  conv2d_forward<double>(ctx(), cast<double>(x).cview(), cast<double>(w).cview(), cast<double>(b).cview(),
                         yd.view(), prm);
  // One rounding: eps/2 relative; fp32 accumulation of 19 terms adds ~19*6e-8 of sum|terms|.
  std::vector<float> want(yd.span().begin(), yd.span().end());
  expect_close(std::string("conv y ") + type_name_v<T>, sp(y), want, epsilon_v<T> / 2 + 1e-6, 4e-6);

  const Shape bs{3, 4, 5, 6}, v{1, 1, 1, 6};
  const auto bx = rnd<T>(bs, 44, -3, 3), res = rnd<T>(bs, 45);
  const auto g = rnd<float>(v, 46, 0.5, 1.5), be = rnd<float>(v, 47);
  HostTensor<float> rm(v, 0.f), rv(v, 1.f), sm(v), si(v), rm2(v, 0.f), rv2(v, 1.f), sm2(v), si2(v);
  HostTensor<T> by(bs);
  HostTensor<double> byd(bs);
  batch_norm_add_relu_forward_training<T>(ctx(), bx.cview(), res.cview(), g.cview(), be.cview(), rm.view(),
                                          rv.view(), sm.view(), si.view(), by.view());
  batch_norm_add_relu_forward_training<double>(ctx(), cast<double>(bx).cview(), cast<double>(res).cview(),
                                               g.cview(), be.cview(), rm2.view(), rv2.view(), sm2.view(),
                                               si2.view(), byd.view());
  std::vector<float> bwant(byd.span().begin(), byd.span().end());
  expect_close(std::string("bn+add+relu y ") + type_name_v<T>, sp(by), bwant, epsilon_v<T> / 2 + 1e-6, 1e-6);
  CHECK(std::memcmp(rm.data(), rm2.data(), 6 * sizeof(float)) == 0);  // statistics do not depend on T
}

TEST_CASE_TEMPLATE("batch_norm_relu_forward_saved host: the training forward's output, bit for bit", T, float, half,
                   bfloat16) {
  // The rebuild of recompute_bn_outputs (nn/conv_bn.hpp): y from x and the saved statistics must
  // be the training forward's y exactly, for shifted/scaled data (mean far from 0: the affine
  // map's rounding matters) and channel counts of DEKR (17, 255) and of packs (64).
  for (const Shape xs : {Shape{2, 5, 7, 17}, Shape{1, 9, 4, 64}, Shape{2, 3, 3, 255}}) {
    CAPTURE(xs);
    const Shape v{1, 1, 1, xs.c};
    const auto x = rnd<T>(xs, 61 + static_cast<std::uint64_t>(xs.c), -2, 6);
    const auto g = rnd<float>(v, 62, 0.25, 2.5), be = rnd<float>(v, 63, -1, 1);
    HostTensor<float> rm(v, 0.f), rv(v, 1.f), sm(v), si(v);
    HostTensor<T> y(xs), again(xs, T(7.f));
    batch_norm_relu_forward_training<T>(ctx(), x.cview(), g.cview(), be.cview(), rm.view(), rv.view(), sm.view(),
                                        si.view(), y.view());
    const HostTensor<float> rm0 = rm.clone(), rv0 = rv.clone();
    batch_norm_relu_forward_saved<T>(ctx(), x.cview(), g.cview(), be.cview(), sm.cview(), si.cview(), again.view());
    std::int64_t n_diff = 0, n_pos = 0;
    for (std::int64_t i = 0; i < y.numel(); ++i) {
      n_diff += std::memcmp(&y[i], &again[i], sizeof(T)) != 0;
      n_pos += static_cast<float>(y[i]) > 0.f;
    }
    CHECK(n_diff == 0);
    CHECK(n_pos > y.numel() / 4);  // the ReLU did not zero everything (the comparison means something)
    CHECK(n_pos < y.numel());
    // Nothing updated: the running statistics are the forward's.
    CHECK(std::memcmp(rm.data(), rm0.data(), sizeof(float) * xs.c) == 0);
    CHECK(std::memcmp(rv.data(), rv0.data(), sizeof(float) * xs.c) == 0);
  }
  // Shapes are checked like every BN op.
  const Shape xs{1, 2, 2, 4};
  HostTensor<T> x(xs), y({1, 2, 2, 5});
  HostTensor<float> g({1, 1, 1, 4}, 1.f);
  CHECK_THROWS_WITH_AS(
      batch_norm_relu_forward_saved<T>(ctx(), x.cview(), g.cview(), g.cview(), g.cview(), g.cview(), y.view()),
      doctest::Contains("batch_norm_relu_forward_saved"), Error);
}

// =================================================================================================
// Bad input: clear errors naming the op, the expected and the given values
// =================================================================================================

TEST_CASE("nn host ops reject bad input with clear messages") {
  auto x = rnd<float>({1, 5, 5, 34}, 1), w = rnd<float>({34, 1, 1, 2}, 2);
  HostTensor<float> y({1, 5, 5, 34}), none;
  Conv2dParams g17 = Conv2dParams::square(1, 0, 1, 17);
  CHECK_NOTHROW(conv2d_forward<float>(ctx(), x.cview(), w.cview(), none.cview(), y.view(), g17));
  CHECK_THROWS_WITH_AS(
      conv2d_forward<float>(ctx(), x.cview(), w.cview(), none.cview(), y.view(), Conv2dParams{}),
      doctest::Contains("conv2d_forward: input has 34 channels, weights (34,1,1,2) (K,R,S,C/groups) "
                        "with groups=1 expect 2"),
      Error);
  CHECK_THROWS_WITH_AS(conv2d_forward<float>(ctx(), x.cview(), w.cview(), none.cview(), y.view(),
                                             Conv2dParams::square(1, 0, 1, 4)),
                       doctest::Contains("conv2d_forward: input has 34 channels, not divisible by groups=4"),
                       Error);
  auto w33 = rnd<float>({33, 1, 1, 2}, 2);
  CHECK_THROWS_WITH_AS(conv2d_forward<float>(ctx(), x.cview(), w33.cview(), none.cview(), y.view(), g17),
                       doctest::Contains("weights have 33 output channels, not divisible by groups=17"),
                       Error);
  HostTensor<float> ybad({1, 4, 5, 34});
  CHECK_THROWS_WITH_AS(conv2d_forward<float>(ctx(), x.cview(), w.cview(), none.cview(), ybad.view(), g17),
                       doctest::Contains("output has shape (1,4,5,34), expected (1,5,5,34)"), Error);
  HostTensor<float> bbad({1, 1, 1, 17});
  CHECK_THROWS_WITH_AS(conv2d_forward<float>(ctx(), x.cview(), w.cview(), bbad.cview(), y.view(), g17),
                       doctest::Contains("bias has shape (1,1,1,17), expected (1,1,1,34)"), Error);
  auto w7 = rnd<float>({34, 7, 7, 2}, 3);
  CHECK_THROWS_WITH_AS(conv2d_forward<float>(ctx(), x.cview(), w7.cview(), none.cview(), y.view(), g17),
                       doctest::Contains("padded input 5x5 is smaller than the dilated kernel 7x7"), Error);
  CHECK_THROWS_WITH_AS(conv2d_output_shape({1, 5, 5, 4}, {4, 3, 3, 4}, Conv2dParams::square(0, 1)),
                       doctest::Contains("stride must be >= 1"), Error);
  HostTensor<float> dwbad({34, 3, 3, 2});
  CHECK_THROWS_WITH_AS(
      conv2d_backward_filter<float>(ctx(), x.cview(), y.cview(), dwbad.view(), g17),
      doctest::Contains("conv2d_backward_filter: output has shape (1,5,5,34), expected (1,3,3,34)"), Error);

  const Shape s{2, 3, 3, 8};
  auto bx = rnd<float>(s, 4);
  HostTensor<float> by(s), g({1, 1, 1, 8}, 1.f), b({1, 1, 1, 8}, 0.f), g7({1, 1, 1, 7}, 1.f),
      rm({1, 1, 1, 8}, 0.f), rv({1, 1, 1, 8}, 1.f), sm({1, 1, 1, 8}), si({1, 1, 1, 8});
  CHECK_THROWS_WITH_AS(
      batch_norm_forward_training<float>(ctx(), bx.cview(), g7.cview(), b.cview(), rm.view(), rv.view(),
                                         sm.view(), si.view(), by.view()),
      doctest::Contains("batch_norm_forward_training: gamma has shape (1,1,1,7), expected (1,1,1,8)"), Error);
  auto one = rnd<float>({1, 1, 1, 8}, 5);
  HostTensor<float> yone({1, 1, 1, 8});
  CHECK_THROWS_WITH_AS(
      batch_norm_relu_forward_training<float>(ctx(), one.cview(), g.cview(), b.cview(), rm.view(), rv.view(),
                                              sm.view(), si.view(), yone.view()),
      doctest::Contains("more than 1 value per channel"), Error);
  HostTensor<float> resbad({2, 3, 3, 4});
  CHECK_THROWS_WITH_AS(
      batch_norm_add_relu_forward_training<float>(ctx(), bx.cview(), resbad.cview(), g.cview(), b.cview(),
                                                  rm.view(), rv.view(), sm.view(), si.view(), by.view()),
      doctest::Contains("residual has shape (2,3,3,4), expected (2,3,3,8)"), Error);
  CHECK_THROWS_WITH_AS(
      batch_norm_forward_training<float>(ctx(), bx.cview(), g.cview(), b.cview(), rm.view(), rv.view(),
                                         sm.view(), si.view(), by.view(), {0.1f, 0.f}),
      doctest::Contains("eps must be > 0"), Error);
  HostTensor<float> other({2, 3, 3, 4});
  CHECK_THROWS_WITH_AS(relu_forward<float>(ctx(), bx.cview(), other.view()),
                       doctest::Contains("relu_forward: y has shape (2,3,3,4), x has (2,3,3,8)"), Error);
  CHECK_THROWS_WITH_AS(add_forward<float>(ctx(), bx.cview(), other.cview(), by.view()),
                       doctest::Contains("add_forward: b has shape (2,3,3,4)"), Error);
  std::vector<TensorView<const float>> many(9, bx.cview());
  CHECK_THROWS_WITH_AS(
      sum_relu_forward<float>(ctx(), std::span<const TensorView<const float>>(many), by.view()),
      doctest::Contains("sum_relu_forward: takes 1 to 8 inputs, given 9"), Error);
}

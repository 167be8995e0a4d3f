/// @brief Test helpers: seeded random tensors and tolerance-aware comparison that prints the first
/// mismatches and the max relative error.
#pragma once

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "ampkit/core/numeric_types.hpp"
#include "ampkit/core/tensor.hpp"

namespace ampkit::testing {

/// Absolute path of a file in the source tree (tests run from any folder).
inline std::string source_path(const std::string& rel) {
#ifdef AMPKIT_SOURCE_DIR
  return std::string(AMPKIT_SOURCE_DIR) + "/" + rel;
#else
  return rel;
#endif
}

/// Fill with uniform values in [lo, hi), rounded to T. Seeded: reruns see the same data.
template <StorageScalar T>
void fill_uniform(std::span<T> v, std::uint64_t seed, float lo = -1.f, float hi = 1.f) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  for (auto& x : v) x = convert<T>(d(rng));
}

template <StorageScalar T>
HostTensor<T> random_tensor(Shape s, std::uint64_t seed, float lo = -1.f, float hi = 1.f) {
  HostTensor<T> t(s);
  fill_uniform<T>(t.span(), seed, lo, hi);
  return t;
}

struct CompareResult {
  bool ok = true;
  double max_abs_err = 0, max_rel_err = 0;
  std::int64_t n_bad = 0;
};

/// Compare `got` against `want` elementwise: |got - want| <= atol + rtol * |want|. NaN never
/// passes. Prints the first few mismatches and the max errors under `what`.
template <class A, class B>
CompareResult compare(const char* what, std::span<const A> got, std::span<const B> want, double rtol,
                      double atol, int max_print = 8) {
  CompareResult r;
  REQUIRE_MESSAGE(got.size() == want.size(), what, ": size ", got.size(), " vs ", want.size());
  int printed = 0;
  double ref_scale = 0;
  for (std::size_t i = 0; i < want.size(); ++i)
    ref_scale = std::max(ref_scale, std::abs(static_cast<double>(static_cast<float>(want[i]))));
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double g = static_cast<float>(got[i]), w = static_cast<float>(want[i]);
    const double err = std::abs(g - w);
    const bool bad = !(err <= atol + rtol * std::abs(w)) || std::isnan(g) != std::isnan(w);
    r.max_abs_err = std::max(r.max_abs_err, err);
    r.max_rel_err = std::max(r.max_rel_err, err / std::max(std::abs(w), 1e-30));
    if (bad) {
      ++r.n_bad;
      if (printed++ < max_print)
        std::printf("  %s[%zu]: got %.8g want %.8g (abs err %.3g)\n", what, i, g, w, err);
    }
  }
  r.ok = r.n_bad == 0;
  std::printf("%s: %zu elements, max abs err %.3g, max rel err %.3g (|ref| <= %.3g), %lld bad\n",
              what, got.size(), r.max_abs_err, r.max_rel_err, ref_scale,
              static_cast<long long>(r.n_bad));
  return r;
}

}  // namespace ampkit::testing

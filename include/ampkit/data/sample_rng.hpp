/// @brief Per-sample deterministic random numbers: a generator seeded from (seed, epoch, index),
/// so a sample's augmentation does not depend on which worker thread draws it or when.
///
/// mmpose draws from numpy's global generator inside each dataloader worker, so its
/// augmentations depend on the worker count and scheduling; ours depend only on the triple.
/// The distributions match (truncated normal on [-1, 1] by inverse CDF as scipy's truncnorm
/// does, uniform on [0, 1)); the individual draws are not numpy's.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace ampkit::data {

/// xoshiro256** seeded through SplitMix64; small, fast and the same on every platform.
class SampleRng {
 public:
  SampleRng(std::uint64_t seed, std::uint64_t epoch, std::uint64_t index) {
    std::uint64_t x = seed;
    x = mix(x ^ mix(epoch + 0x632be59bd9b4e019ULL));
    x = mix(x ^ mix(index + 0x9e3779b97f4a7c15ULL));
    for (auto& si : s_) si = splitmix(x);
  }

  std::uint64_t next_u64() {
    const std::uint64_t r = rotl(s_[1] * 5, 7) * 9;
    const std::uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return r;
  }
  /// Uniform on [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }

  /// Standard normal truncated to [lo, hi], by inverting the CDF at a uniform point of
  /// [Φ(lo), Φ(hi)] (scipy.stats.truncnorm's method): one uniform per draw.
  double trunc_normal(double lo = -1.0, double hi = 1.0) {
    const double plo = normal_cdf(lo), phi = normal_cdf(hi);
    double p = plo + uniform() * (phi - plo);
    return std::clamp(normal_quantile(p), lo, hi);
  }

  static double normal_cdf(double x) { return 0.5 * std::erfc(-x / std::sqrt(2.0)); }

  /// Φ⁻¹(p): Acklam's rational approximation (rel. error 1.15e-9) refined by one Halley step
  /// on erfc, which brings it to double precision.
  static double normal_quantile(double p) {
    if (p <= 0) return -INFINITY;
    if (p >= 1) return INFINITY;
    static constexpr double a[] = {-3.969683028665376e+01, 2.209460984245205e+02,
                                   -2.759285104469687e+02, 1.383577518672690e+02,
                                   -3.066479806614716e+01, 2.506628277459239e+00};
    static constexpr double b[] = {-5.447609879822406e+01, 1.615858368580409e+02,
                                   -1.556989798598866e+02, 6.680131188771972e+01,
                                   -1.328068155288572e+01};
    static constexpr double c[] = {-7.784894002430293e-03, -3.223964580411365e-01,
                                   -2.400758277161838e+00, -2.549732539343734e+00,
                                   4.374664141464968e+00,  2.938163982698783e+00};
    static constexpr double d[] = {7.784695709041462e-03, 3.224671290700398e-01,
                                   2.445134137142996e+00, 3.754408661907416e+00};
    constexpr double plow = 0.02425, phigh = 1 - plow;
    double x;
    if (p < plow) {
      const double q = std::sqrt(-2 * std::log(p));
      x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
          ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
    } else if (p <= phigh) {
      const double q = p - 0.5, r = q * q;
      x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
          (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
    } else {
      const double q = std::sqrt(-2 * std::log(1 - p));
      x = -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
          ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
    }
    const double e = normal_cdf(x) - p;
    const double u = e * std::sqrt(2 * 3.14159265358979323846) * std::exp(x * x / 2);
    return x - u / (1 + x * u / 2);
  }

 private:
  static std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  static std::uint64_t mix(std::uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  static std::uint64_t splitmix(std::uint64_t& x) {
    x += 0x9e3779b97f4a7c15ULL;
    return mix(x);
  }
  std::uint64_t s_[4];
};

}  // namespace ampkit::data

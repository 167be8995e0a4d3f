// fp16/bf16 conversions: exhaustive over all 65536 bit patterns, and bit-exact against CUDA's own
// host implementation (cuda_fp16.h / cuda_bf16.h) wherever the CUDA headers are installed.
#include <doctest/doctest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <ios>
#include <vector>
#include <limits>
#include <random>

#include "ampkit/core/numeric_types.hpp"

#if __has_include(<cuda_fp16.h>) && __has_include(<cuda_bf16.h>)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define AMPKIT_TEST_HAVE_CUDA_FP16 1
#endif

// cuda_fp16.h declares a global `half`, so spell ampkit's types out.
using AHalf = ampkit::half;
using ABf16 = ampkit::bfloat16;
using ampkit::Rounding;
using ampkit::convert;
namespace detail = ampkit::detail;

namespace {
// Reference: the exact mathematical answer via double, rounded to nearest even on the half grid.
std::uint16_t half_bits_reference(float f) {
  if (std::isnan(f)) return 0x7fff;
  const double d = f;
  const std::uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  const double a = std::abs(d);
  if (a >= 65520.0) return sign | 0x7c00;  // halfway between 65504 and 65536 rounds to inf
  // Search the positive half grid (monotone in the bit pattern) for the nearest value.
  std::uint16_t lo = 0, hi = 0x7bff;
  while (lo < hi) {  // first pattern with value >= a
    std::uint16_t mid = static_cast<std::uint16_t>((lo + hi) / 2);
    if (static_cast<double>(detail::half_bits_to_float(mid)) < a) lo = mid + 1; else hi = mid;
  }
  std::uint16_t best = lo;
  if (lo > 0) {
    const double up = detail::half_bits_to_float(lo), down = detail::half_bits_to_float(lo - 1);
    if (a - down < up - a || (a - down == up - a && ((lo - 1) & 1) == 0)) best = lo - 1;
  }
  return sign | best;
}

std::vector<float> sample_floats() {
  std::vector<float> v;
  std::mt19937 rng(1234);
  std::uniform_int_distribution<std::uint32_t> bits;
  for (int i = 0; i < 2'000'000; ++i) v.push_back(std::bit_cast<float>(bits(rng)));  // any pattern
  std::uniform_real_distribution<float> exps(-27.f, 17.f);  // the half range and just beyond
  std::uniform_real_distribution<float> mant(1.f, 2.f);
  for (int i = 0; i < 2'000'000; ++i)
    v.push_back((i & 1 ? -1.f : 1.f) * mant(rng) * std::exp2(std::floor(exps(rng))));
  // Every half value, the midpoints between neighbours (ties) and their float neighbours.
  for (std::uint32_t h = 0; h < 0x7c00; ++h) {
    const float a = detail::half_bits_to_float(static_cast<std::uint16_t>(h));
    const float b = detail::half_bits_to_float(static_cast<std::uint16_t>(h + 1));
    const float mid = static_cast<float>((static_cast<double>(a) + b) / 2);
    for (float x : {a, mid, std::nextafter(mid, 0.f), std::nextafter(mid, 1e9f)}) {
      v.push_back(x);
      v.push_back(-x);
    }
  }
  for (float x : {0.f, -0.f, 65504.f, 65519.996f, 65520.f, 65536.f, 1e30f,
                  std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                  std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::quiet_NaN(),
                  std::numeric_limits<float>::denorm_min(), std::numeric_limits<float>::max(),
                  5.9604645e-8f, 2.9802322e-8f, 2.9802326e-8f, 6.1035156e-5f})
    v.push_back(x);
  v.push_back(std::bit_cast<float>(0x7f800001u));  // signalling NaN
  v.push_back(std::bit_cast<float>(0xffc00123u));  // negative NaN with payload
  return v;
}
}  // namespace

TEST_CASE("half -> float -> half round-trips all 65536 bit patterns") {
  int n_checked = 0;
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const auto h = static_cast<std::uint16_t>(b);
    const float f = detail::half_bits_to_float(h);
    const bool is_nan = (h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0;
    if (is_nan) {
      CHECK(std::isnan(f));
      CHECK(detail::float_to_half_bits(f, Rounding::kNearestEven) == 0x7fff);
    } else {
      REQUIRE_MESSAGE(detail::float_to_half_bits(f, Rounding::kNearestEven) == h, "bits ", b);
      REQUIRE(detail::float_to_half_bits(f, Rounding::kTowardZero) == h);
    }
    ++n_checked;
  }
  CHECK(n_checked == 65536);
  CHECK(detail::half_bits_to_float(0x0001) == std::exp2(-24.f));  // smallest subnormal
  CHECK(detail::half_bits_to_float(0x7bff) == 65504.f);
  CHECK(std::isinf(detail::half_bits_to_float(0xfc00)));
}

TEST_CASE("float -> half rounds to nearest even, overflows to inf, flushes below 2^-25") {
  const auto v = sample_floats();
  std::int64_t n = 0;
  for (float f : v) {
    REQUIRE_MESSAGE(detail::float_to_half_bits(f, Rounding::kNearestEven) == half_bits_reference(f),
                    "float bits 0x", std::hex, std::bit_cast<std::uint32_t>(f));
    ++n;
  }
  MESSAGE("checked ", n, " floats against the exact reference");
  CHECK(AHalf(65519.f).bits == 0x7bff);
  CHECK(AHalf(65520.f).bits == 0x7c00);
  CHECK(AHalf(-1e10f).bits == 0xfc00);
  CHECK(AHalf(2.9802322e-8f).bits == 0x0000);  // exactly 2^-25: tie, rounds to even (zero)
  CHECK(AHalf(2.9802326e-8f).bits == 0x0001);  // just above: rounds up to the smallest subnormal
  CHECK(convert<AHalf>(65519.f, Rounding::kTowardZero).bits == 0x7bff);
  CHECK(convert<AHalf>(1e10f, Rounding::kTowardZero).bits == 0x7bff);
}

TEST_CASE("bfloat16 conversion: all 65536 patterns round-trip, RNE on samples") {
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const auto h = static_cast<std::uint16_t>(b);
    const float f = detail::bf16_bits_to_float(h);
    if (std::isnan(f)) {
      CHECK(detail::float_to_bf16_bits(f, Rounding::kNearestEven) == 0x7fff);
    } else {
      REQUIRE(detail::float_to_bf16_bits(f, Rounding::kNearestEven) == h);
    }
  }
  CHECK(ABf16(1.00390625f).bits == 0x3f80);   // 1 + 2^-8: tie, to even (1.0)
  CHECK(ABf16(1.01171875f).bits == 0x3f82);   // 1 + 3*2^-8: tie, to even (1 + 2^-6)
  CHECK(ABf16(std::bit_cast<float>(0x7f7f8000u)).bits == 0x7f80);  // max + half ulp: tie, to inf
  CHECK(ABf16(std::bit_cast<float>(0x7f7f7fffu)).bits == 0x7f7f);  // just below: stays finite
}

#ifdef AMPKIT_TEST_HAVE_CUDA_FP16
TEST_CASE("bit-exact with CUDA's __float2half_rn / __float2bfloat16_rn (host implementation)") {
  const auto v = sample_floats();
  for (float f : v) {
    const __half_raw hr = static_cast<__half_raw>(__float2half_rn(f));
    REQUIRE_MESSAGE(AHalf(f).bits == hr.x, "float bits 0x", std::hex, std::bit_cast<std::uint32_t>(f));
    const __nv_bfloat16_raw br = static_cast<__nv_bfloat16_raw>(__float2bfloat16_rn(f));
    REQUIRE_MESSAGE(ABf16(f).bits == br.x, "float bits 0x", std::hex, std::bit_cast<std::uint32_t>(f));
  }
  for (std::uint32_t b = 0; b < 65536; ++b) {
    __half_raw hr;
    hr.x = static_cast<unsigned short>(b);
    const float want = __half2float(__half(hr));
    const float got = static_cast<float>(AHalf::from_bits(static_cast<std::uint16_t>(b)));
    REQUIRE((std::bit_cast<std::uint32_t>(got) == std::bit_cast<std::uint32_t>(want) ||
             (std::isnan(got) && std::isnan(want))));
  }
  MESSAGE("compared ", v.size(), " floats and 65536 halves with cuda_fp16.h / cuda_bf16.h");
}
#endif

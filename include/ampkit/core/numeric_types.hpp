/// @brief 16-bit floating-point storage types (half, bfloat16) and the one conversion policy.
///
/// These are plain 2-byte structs with the same bit layout as CUDA's `__half` and `__nv_bfloat16`,
/// so a buffer written on the host can be handed to cuDNN/cuBLAS unchanged. The conversions are
/// integer-only, bit-exact with `__float2half_rn` / `__float2bfloat16_rn` (checked exhaustively in
/// tests/unit/core/numeric_types.cpp), and usable from host code and kernels alike. The host
/// backend stores activations in these types, so it rounds exactly where the GPU rounds.
#pragma once

#include <bit>  // (kernels use __builtin_bit_cast: std::bit_cast is not __device__)
#include <cstdint>
#include <type_traits>

#include "ampkit/config.hpp"

namespace ampkit {

/// How a value is rounded when it is narrowed.
enum class Rounding {
  kNearestEven,  ///< IEEE default; what cvt.rn does on the GPU
  kTowardZero,   ///< truncation; what a bare bit shift does
};

namespace detail {

AMPKIT_HOST_DEVICE constexpr std::uint16_t float_to_half_bits(float f, Rounding mode) {
  const std::uint32_t x = __builtin_bit_cast(std::uint32_t, f);
  const std::uint32_t u = x & 0x7fffffffu;
  const std::uint32_t sign = (x >> 16) & 0x8000u;
  if (u >= 0x7f800000u)  // inf keeps its sign; every NaN becomes the canonical 0x7fff, as on CUDA
    return static_cast<std::uint16_t>(u == 0x7f800000u ? (sign | 0x7c00u) : 0x7fffu);
  std::uint32_t result = 0, rem = 0, halfway = 0;
  if (u >= 0x38800000u) {  // |f| >= 2^-14: a normal half (or overflow, handled after rounding)
    const std::uint32_t rebased = u - 0x38000000u;  // exponent bias 127 -> 15
    result = rebased >> 13;
    rem = rebased & 0x1fffu;
    halfway = 0x1000u;
    if (result >= 0x7c00u) {  // beyond 65504 even before rounding
      return static_cast<std::uint16_t>(mode == Rounding::kNearestEven ? (sign | 0x7c00u)
                                                                        : (sign | 0x7bffu));
    }
  } else if (u < 0x33000000u) {  // below 2^-25: rounds to zero in every mode
    return static_cast<std::uint16_t>(sign);
  } else {  // subnormal half: shift the full significand right
    const std::uint32_t shift = 126u - (u >> 23);  // 14..24
    const std::uint32_t mant = (u & 0x7fffffu) | 0x800000u;
    result = mant >> shift;
    rem = mant & ((1u << shift) - 1u);
    halfway = 1u << (shift - 1u);
  }
  if (mode == Rounding::kNearestEven && (rem > halfway || (rem == halfway && (result & 1u))))
    ++result;  // may carry into the exponent, and up to 0x7c00 = inf, which is the right answer
  return static_cast<std::uint16_t>(sign | result);
}

AMPKIT_HOST_DEVICE constexpr float half_bits_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1fu;
  std::uint32_t mant = h & 0x3ffu;
  std::uint32_t bits = 0;
  if (exp == 0x1fu) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf / NaN (payload kept)
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);
  } else if (mant != 0) {  // subnormal: normalise
    std::uint32_t e = 113u;
    while ((mant & 0x400u) == 0) {
      mant <<= 1;
      --e;
    }
    bits = sign | (e << 23) | ((mant & 0x3ffu) << 13);
  } else {
    bits = sign;
  }
  return __builtin_bit_cast(float, bits);
}

AMPKIT_HOST_DEVICE constexpr std::uint16_t float_to_bf16_bits(float f, Rounding mode) {
  const std::uint32_t x = __builtin_bit_cast(std::uint32_t, f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;  // canonical NaN, as on CUDA
  if (mode == Rounding::kTowardZero) return static_cast<std::uint16_t>(x >> 16);
  const std::uint32_t bias = 0x7fffu + ((x >> 16) & 1u);  // ties to even
  return static_cast<std::uint16_t>((x + bias) >> 16);
}

AMPKIT_HOST_DEVICE constexpr float bf16_bits_to_float(std::uint16_t b) {
  return __builtin_bit_cast(float, static_cast<std::uint32_t>(b) << 16);
}

}  // namespace detail

/// IEEE binary16 storage. Arithmetic is deliberately absent: compute in float, store as half.
struct half {
  std::uint16_t bits = 0;

  half() = default;
  AMPKIT_HOST_DEVICE explicit constexpr half(float f)
      : bits(detail::float_to_half_bits(f, Rounding::kNearestEven)) {}
  AMPKIT_HOST_DEVICE explicit constexpr operator float() const {
    return detail::half_bits_to_float(bits);
  }
  AMPKIT_HOST_DEVICE static constexpr half from_bits(std::uint16_t b) {
    half h;
    h.bits = b;
    return h;
  }
  friend constexpr bool operator==(half a, half b) { return a.bits == b.bits; }
};

/// bfloat16 storage (8-bit exponent, 7-bit mantissa): fp32's range at a quarter of its precision.
struct bfloat16 {
  std::uint16_t bits = 0;

  bfloat16() = default;
  AMPKIT_HOST_DEVICE explicit constexpr bfloat16(float f)
      : bits(detail::float_to_bf16_bits(f, Rounding::kNearestEven)) {}
  AMPKIT_HOST_DEVICE explicit constexpr operator float() const {
    return detail::bf16_bits_to_float(bits);
  }
  AMPKIT_HOST_DEVICE static constexpr bfloat16 from_bits(std::uint16_t b) {
    bfloat16 h;
    h.bits = b;
    return h;
  }
  friend constexpr bool operator==(bfloat16 a, bfloat16 b) { return a.bits == b.bits; }
};

static_assert(sizeof(half) == 2 && std::is_trivially_copyable_v<half>);
static_assert(sizeof(bfloat16) == 2 && std::is_trivially_copyable_v<bfloat16>);

/// The element types a tensor may hold.
template <class T>
concept StorageScalar =
    std::is_same_v<T, float> || std::is_same_v<T, half> || std::is_same_v<T, bfloat16>;

/// The single conversion policy: `convert<half>(x)`, `convert<float>(h)`, with the rounding mode
/// explicit when narrowing. Every narrowing in ampkit goes through here.
template <StorageScalar To, StorageScalar From>
AMPKIT_HOST_DEVICE constexpr To convert(From x, Rounding mode = Rounding::kNearestEven) {
  if constexpr (std::is_same_v<To, From>) {
    return x;
  } else if constexpr (std::is_same_v<To, float>) {
    return static_cast<float>(x);
  } else {
    const float f = static_cast<float>(x);  // widening is exact
    if constexpr (std::is_same_v<To, half>)
      return half::from_bits(detail::float_to_half_bits(f, mode));
    else
      return bfloat16::from_bits(detail::float_to_bf16_bits(f, mode));
  }
}

/// Machine epsilon of a storage type (distance from 1 to the next value), for test tolerances.
template <StorageScalar T>
inline constexpr float epsilon_v = std::is_same_v<T, float>  ? 1.1920929e-7f   // 2^-23
                                   : std::is_same_v<T, half> ? 9.765625e-4f   // 2^-10
                                                             : 7.8125e-3f;    // 2^-7

/// Largest finite value of a storage type.
template <StorageScalar T>
inline constexpr float max_finite_v = std::is_same_v<T, float>  ? 3.4028235e38f
                                      : std::is_same_v<T, half> ? 65504.0f
                                                                : 3.3895314e38f;

/// Short name used in messages and file formats.
template <StorageScalar T>
inline constexpr const char* type_name_v = std::is_same_v<T, float>  ? "float32"
                                           : std::is_same_v<T, half> ? "float16"
                                                                     : "bfloat16";

}  // namespace ampkit

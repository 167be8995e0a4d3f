/// @brief Index and weight arithmetic shared by the resampling ops on both backends (PyTorch's
/// nearest and bilinear `align_corners=False` conventions), written once so host and device agree.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "ampkit/config.hpp"
#include "ampkit/core/numeric_types.hpp"

namespace ampkit {

/// Whether a forward/backward writes its output (=) or adds to it (+=). Accumulating lets HRNet's
/// fuse sum branches in place (`y_i += upsample(f_ij(x_j))`) instead of a separate add pass.
enum class Accumulate { kNo, kYes };

namespace detail {

/// Single-rounding float ops: nvcc contracts a*b+c into one FMA and g++ does not, which can move a
/// source coordinate across an integer and change the chosen pixel. Index maths goes through these
/// so the host reference and the kernels pick identical taps.
AMPKIT_HOST_DEVICE AMPKIT_FORCEINLINE float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
AMPKIT_HOST_DEVICE AMPKIT_FORCEINLINE float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

/// One output coordinate of a 1-D linear resize: it reads `i0` with weight `w0` and `i1` with
/// weight `w1` (i1 == i0 at the last input row).
struct LinearTap {
  int i0, i1;
  float w0, w1;
};

/// PyTorch `F.interpolate(mode='bilinear', align_corners=False)` with an explicit output size:
/// scale = in/out (float), src = max(scale * (dst + 0.5) - 0.5, 0), i0 = floor(src) clamped to
/// in-1, lambda = src - i0, i1 = i0 + (i0 < in-1).
AMPKIT_HOST_DEVICE AMPKIT_FORCEINLINE LinearTap linear_tap(int dst, int in_size, int out_size) {
  const float scale = static_cast<float>(in_size) / static_cast<float>(out_size);
  float src = add_rn(mul_rn(scale, add_rn(static_cast<float>(dst), 0.5f)), -0.5f);
  src = src < 0.f ? 0.f : src;
  int i0 = static_cast<int>(src);  // src >= 0: truncation is floor
  i0 = i0 < in_size - 1 ? i0 : in_size - 1;
  float lambda = src - static_cast<float>(i0);
  lambda = lambda < 0.f ? 0.f : (lambda > 1.f ? 1.f : lambda);
  const int i1 = i0 + (i0 < in_size - 1 ? 1 : 0);
  return {i0, i1, 1.f - lambda, lambda};
}

/// Host arithmetic type for a storage type: float for the storage scalars (what the GPU does),
/// double when the host core is instantiated in double for finite-difference gradient checks.
template <class T>
using host_acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <class A, class T>
AMPKIT_HOST_DEVICE AMPKIT_FORCEINLINE A load_as(T v) {
  if constexpr (std::is_same_v<T, double> || std::is_same_v<T, float>)
    return static_cast<A>(v);
  else
    return static_cast<A>(static_cast<float>(v));
}

template <class T, class A>
AMPKIT_HOST_DEVICE AMPKIT_FORCEINLINE T store_as(A v) {
  if constexpr (std::is_same_v<T, double>)
    return static_cast<double>(v);
  else
    return convert<T>(static_cast<float>(v));
}

}  // namespace detail
}  // namespace ampkit

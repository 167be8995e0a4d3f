/// @brief numpy's pairwise summation, so sums and means in the evaluators round exactly as the
/// Python peers (pycocotools, mmpose) do.
///
/// Why bother: COCO AP is a mean over up to 1010 precision values, and an OKS is a mean of 17
/// exponentials. A plain left-to-right loop differs from numpy in the last bits; with the same
/// summation tree the stats are bit-identical, so "equal to pycocotools" can be tested exactly.
#pragma once

#include <cstddef>
#include <span>

namespace ampkit::eval {

/// Sum as numpy's `add.reduce` does for a contiguous 1-D array (`pairwise_sum` in numpy's
/// loops_utils): fewer than 8 values are added in order; up to 128 values go into 8 interleaved
/// partial sums combined as a fixed tree, then the tail is added in order; longer runs split in
/// two (the first half a multiple of 8) and recurse. numpy starts the reduction from the identity,
/// so the result is `0 + pairwise(a)`.
/// @tparam T float or double; the accumulation type equals the element type, as in numpy.
template <class T>
T numpy_pairwise_sum(std::span<const T> a) {
  const std::size_t n = a.size();
  if (n < 8) {
    T res = T(0);
    for (std::size_t i = 0; i < n; ++i) res += a[i];
    return res;
  }
  if (n <= 128) {
    T r[8];
    for (std::size_t j = 0; j < 8; ++j) r[j] = a[j];
    std::size_t i = 8;
    for (; i < n - (n % 8); i += 8)
      for (std::size_t j = 0; j < 8; ++j) r[j] += a[i + j];
    T res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; ++i) res += a[i];
    return res;
  }
  std::size_t n2 = n / 2;
  n2 -= n2 % 8;
  return numpy_pairwise_sum(a.subspan(0, n2)) + numpy_pairwise_sum(a.subspan(n2));
}

/// numpy's `sum` of a contiguous 1-D array: the identity plus the pairwise sum.
template <class T>
T numpy_sum(std::span<const T> a) {
  return T(0) + numpy_pairwise_sum(a);
}

/// numpy's `mean` of a contiguous, non-empty 1-D array: the sum (accumulated in T) divided by
/// the count. numpy divides the scalar sum by an integer count, which promotes to double, and
/// casts the quotient back to T; so do we.
template <class T>
T numpy_mean(std::span<const T> a) {
  return static_cast<T>(static_cast<double>(numpy_sum(a)) / static_cast<double>(a.size()));
}

}  // namespace ampkit::eval

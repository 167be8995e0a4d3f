/// @brief ReLU, residual add and "sum of N inputs (+ ReLU)" on both backends: validation and the
/// gradient contract, shared.
///
/// All tensors are (N,H,W,C) in the storage type T; the sums are formed in fp32 and rounded once.
/// In-place use is allowed where noted (y may alias an input).
///
/// Gradients:
///   relu_backward(y, dL_dy) -> dL_dx = dL_dy * (y > 0), WRITTEN (may alias dL_dy). The mask is
///     taken from the output, as PyTorch's threshold_backward does, so x need not be kept.
///   add / sum: every input receives dL_dy unchanged (no op needed); for sum_relu, every input
///     receives relu_backward(y, dL_dy). Where branches merge, add_forward(dL_a, dL_b, dL_a)
///     accumulates one gradient into another.
#pragma once

#include <cstdint>
#include <span>

#include "ampkit/core/error.hpp"
#include "ampkit/core/tensor.hpp"

namespace ampkit {

/// The most inputs sum_forward / sum_relu_forward take in one pass (HRNet fuses at most 4).
inline constexpr int kMaxSumInputs = 8;

namespace detail {

template <class A, class B>
void check_same_shape(const char* op, const char* a_name, const TensorView<A>& a, const char* b_name,
                      const TensorView<B>& b) {
  AMPKIT_CHECK(a.shape == b.shape, op, ": ", b_name, " has shape ", b.shape, ", ", a_name, " has ", a.shape,
               " (N,H,W,C); they must match");
  AMPKIT_CHECK(a.data != nullptr || a.numel() == 0, op, ": ", a_name, " has no data");
  AMPKIT_CHECK(b.data != nullptr || b.numel() == 0, op, ": ", b_name, " has no data");
}

template <class T>
void check_sum_inputs(const char* op, std::span<const TensorView<const T>> xs, const TensorView<T>& y) {
  AMPKIT_CHECK(!xs.empty() && xs.size() <= static_cast<std::size_t>(kMaxSumInputs), op, ": takes 1 to ",
               kMaxSumInputs, " inputs, given ", xs.size());
  for (std::size_t i = 0; i < xs.size(); ++i)
    AMPKIT_CHECK(xs[i].shape == y.shape && (xs[i].data || xs[i].numel() == 0), op, ": input ", i,
                 " has shape ", xs[i].shape, ", output has ", y.shape, " (N,H,W,C); they must match");
  AMPKIT_CHECK(y.data != nullptr || y.numel() == 0, op, ": y has no data");
}

}  // namespace detail
}  // namespace ampkit

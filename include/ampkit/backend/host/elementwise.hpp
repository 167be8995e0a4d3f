/// @brief Host backend ReLU, residual add and sum of N inputs (+ ReLU). Semantics and gradients
/// are in nn/ops/elementwise.hpp.
#pragma once

#include <span>

#include "ampkit/backend/host/context.hpp"
#include "ampkit/backend/host/host_scalar.hpp"
#include "ampkit/core/tensor.hpp"
#include "ampkit/nn/ops/elementwise.hpp"

namespace ampkit {

/// y = max(x, 0). y may alias x.
template <HostScalar T>
void relu_forward(Host&, TensorView<const T> x, TensorView<T> y) {
  detail::check_same_shape("relu_forward", "x", x, "y", y);
  for (std::int64_t i = 0; i < x.numel(); ++i) y.data[i] = host::widen(x.data[i]) > 0 ? x.data[i] : T(0);
}

/// dL_dx = dL_dy * (y > 0). dL_dx may alias dL_dy.
template <HostScalar T>
void relu_backward(Host&, TensorView<const T> y, TensorView<const T> dL_dy, TensorView<T> dL_dx) {
  detail::check_same_shape("relu_backward", "y", y, "dL_dy", dL_dy);
  detail::check_same_shape("relu_backward", "y", y, "dL_dx", dL_dx);
  for (std::int64_t i = 0; i < y.numel(); ++i)
    dL_dx.data[i] = host::widen(y.data[i]) > 0 ? dL_dy.data[i] : T(0);
}

/// y = a + b (residual add; also accumulates one gradient into another). y may alias a or b.
template <HostScalar T>
void add_forward(Host&, TensorView<const T> a, TensorView<const T> b, TensorView<T> y) {
  detail::check_same_shape("add_forward", "a", a, "b", b);
  detail::check_same_shape("add_forward", "a", a, "y", y);
  for (std::int64_t i = 0; i < a.numel(); ++i)
    y.data[i] = host::narrow<T>(host::widen(a.data[i]) + host::widen(b.data[i]));
}

namespace host::detail {
template <HostScalar T>
void sum_impl(const char* op, std::span<const TensorView<const T>> xs, TensorView<T> y, bool relu) {
  ampkit::detail::check_sum_inputs(op, xs, y);
  for (std::int64_t i = 0; i < y.numel(); ++i) {
    acc_t<T> s = 0;
    for (const auto& x : xs) s += widen(x.data[i]);  // in input order, as the kernel does
    y.data[i] = narrow<T>(relu && !(s > 0) ? acc_t<T>(0) : s);
  }
}
}  // namespace host::detail

/// y = sum of the inputs, formed in fp32, rounded once. y may alias any input.
template <HostScalar T>
void sum_forward(Host&, std::span<const TensorView<const T>> xs, TensorView<T> y) {
  host::detail::sum_impl<T>("sum_forward", xs, y, false);
}
/// y = relu(sum of the inputs): HRNet's fuse-layer output. Backward: relu_backward(y, dL_dy)
/// gives every input's gradient.
template <HostScalar T>
void sum_relu_forward(Host&, std::span<const TensorView<const T>> xs, TensorView<T> y) {
  host::detail::sum_impl<T>("sum_relu_forward", xs, y, true);
}

}  // namespace ampkit

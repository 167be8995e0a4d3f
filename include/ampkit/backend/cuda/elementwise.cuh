/// @brief CUDA backend ReLU, residual add and sum of N inputs (+ ReLU): packed, grid-stride
/// kernels. Semantics and gradients are in nn/ops/elementwise.hpp; signatures mirror
/// backend/host/elementwise.hpp.
#pragma once

#include <span>

#include "ampkit/backend/cuda/check.cuh"
#include "ampkit/backend/cuda/context.cuh"
#include "ampkit/backend/cuda/packed_io.cuh"
#include "ampkit/core/tensor.hpp"
#include "ampkit/nn/ops/elementwise.hpp"

namespace ampkit {

namespace cuda::detail {

enum class EwOp { kRelu, kReluBackward, kSum, kSumRelu };

/// Up to kMaxSumInputs input pointers, passed by value.
template <class N>
struct EwInputs {
  const N* p[kMaxSumInputs];
  int n;
};

/// y = op(inputs). kRelu: relu(in0). kReluBackward: in1 * (in0 > 0). kSum[Relu]: sum (relu).
/// The sum is formed in fp32 in input order, then rounded once.
template <class N, int V, EwOp Op>
__global__ void elementwise_kernel(EwInputs<N> in, N* __restrict__ y, std::int64_t n_pack) {
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < n_pack;
       i += std::int64_t{gridDim.x} * blockDim.x) {
    const std::int64_t off = i * V;
    float r[V], a[V];
    load_pack<N, V>(in.p[0] + off, r);
    if constexpr (Op == EwOp::kRelu) {
#pragma unroll
      for (int v = 0; v < V; ++v) r[v] = r[v] > 0.f ? r[v] : 0.f;
    } else if constexpr (Op == EwOp::kReluBackward) {
      load_pack<N, V>(in.p[1] + off, a);
#pragma unroll
      for (int v = 0; v < V; ++v) r[v] = r[v] > 0.f ? a[v] : 0.f;
    } else {
      for (int k = 1; k < in.n; ++k) {
        load_pack<N, V>(in.p[k] + off, a);
#pragma unroll
        for (int v = 0; v < V; ++v) r[v] += a[v];
      }
      if constexpr (Op == EwOp::kSumRelu) {
#pragma unroll
        for (int v = 0; v < V; ++v) r[v] = r[v] > 0.f ? r[v] : 0.f;
      }
    }
    store_pack<N, V>(y + off, r);
  }
}

template <EwOp Op, StorageScalar T>
void launch_elementwise(const Cuda& ctx, std::span<const T* const> ins, T* y, std::int64_t n) {
  if (n == 0) return;
  using N = native_t<T>;
  EwInputs<N> in{};
  in.n = static_cast<int>(ins.size());
  for (std::size_t i = 0; i < ins.size(); ++i) in.p[i] = native(ins[i]);
  // Pack width: every pointer (inputs and output) aligned, and numel a multiple of it.
  int v = pack_width<T>(n, {y});
  for (const T* p : ins) v = std::min(v, pack_width<T>(n, {p}));
  constexpr int kThreads = 256;
  const int n_sm = ctx.device().multiprocessors;
  auto go = [&]<int V>() {
    elementwise_kernel<N, V, Op>
        <<<grid_for(n / V, kThreads, n_sm), kThreads, 0, ctx.stream()>>>(in, native(y), n / V);
    AMPKIT_CUDA_CHECK_LAUNCH();
  };
  if (v == 8)
    go.template operator()<8>();
  else if (v == 4)
    go.template operator()<4>();
  else if (v == 2)
    go.template operator()<2>();
  else
    go.template operator()<1>();
}

}  // namespace cuda::detail

/// y = max(x, 0). y may alias x.
template <StorageScalar T>
void relu_forward(Cuda& ctx, TensorView<const T> x, TensorView<T> y) {
  detail::check_same_shape("relu_forward", "x", x, "y", y);
  const T* ins[] = {x.data};
  cuda::detail::launch_elementwise<cuda::detail::EwOp::kRelu, T>(ctx, ins, y.data, x.numel());
}

/// dL_dx = dL_dy * (y > 0). dL_dx may alias dL_dy.
template <StorageScalar T>
void relu_backward(Cuda& ctx, TensorView<const T> y, TensorView<const T> dL_dy, TensorView<T> dL_dx) {
  detail::check_same_shape("relu_backward", "y", y, "dL_dy", dL_dy);
  detail::check_same_shape("relu_backward", "y", y, "dL_dx", dL_dx);
  const T* ins[] = {y.data, dL_dy.data};
  cuda::detail::launch_elementwise<cuda::detail::EwOp::kReluBackward, T>(ctx, ins, dL_dx.data, y.numel());
}

/// y = a + b. y may alias a or b.
template <StorageScalar T>
void add_forward(Cuda& ctx, TensorView<const T> a, TensorView<const T> b, TensorView<T> y) {
  detail::check_same_shape("add_forward", "a", a, "b", b);
  detail::check_same_shape("add_forward", "a", a, "y", y);
  const T* ins[] = {a.data, b.data};
  cuda::detail::launch_elementwise<cuda::detail::EwOp::kSum, T>(ctx, ins, y.data, a.numel());
}

/// y = sum of the inputs (fp32, input order, one rounding). y may alias any input.
template <StorageScalar T>
void sum_forward(Cuda& ctx, std::span<const TensorView<const T>> xs, TensorView<T> y) {
  detail::check_sum_inputs("sum_forward", xs, y);
  const T* ins[kMaxSumInputs];
  for (std::size_t i = 0; i < xs.size(); ++i) ins[i] = xs[i].data;
  cuda::detail::launch_elementwise<cuda::detail::EwOp::kSum, T>(
      ctx, std::span<const T* const>(ins, xs.size()), y.data, y.numel());
}

/// y = relu(sum of the inputs): HRNet's fuse-layer output in one pass.
template <StorageScalar T>
void sum_relu_forward(Cuda& ctx, std::span<const TensorView<const T>> xs, TensorView<T> y) {
  detail::check_sum_inputs("sum_relu_forward", xs, y);
  const T* ins[kMaxSumInputs];
  for (std::size_t i = 0; i < xs.size(); ++i) ins[i] = xs[i].data;
  cuda::detail::launch_elementwise<cuda::detail::EwOp::kSumRelu, T>(
      ctx, std::span<const T* const>(ins, xs.size()), y.data, y.numel());
}

}  // namespace ampkit

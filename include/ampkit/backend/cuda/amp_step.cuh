/// @brief CUDA backend of the AMP step: gradient check (per-block partials), one-block finalize,
/// fused unscale/clip/optimizer/copy/zero update, micro-batch accumulation, lr write, and the
/// pinned-memory + event readout. Same signatures as backend/host/amp_step.hpp.
///
/// No host synchronisation anywhere: every decision (skip, scale, clip, step count) is read from
/// StepState in device memory by the kernels that need it, so check + finalize + update can be
/// captured in a CUDA graph and replayed with a skip that changes from replay to replay.
/// Determinism: the check grid depends only on the number of gradients, partials are reduced in a
/// fixed order by one block (no atomics), so a replay reproduces the eager run bit for bit.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <type_traits>

#include "ampkit/amp/amp_step.hpp"
#include "ampkit/amp/loss_scaler.hpp"
#include "ampkit/amp/step_state.hpp"
#include "ampkit/backend/cuda/check.cuh"
#include "ampkit/backend/cuda/context.cuh"
#include "ampkit/backend/cuda/fill.cuh"
#include "ampkit/backend/cuda/graph_step.cuh"  // the trainer's graph hooks (train/graph_mode.hpp)
#include "ampkit/backend/cuda/memory.cuh"
#include "ampkit/optim/optimizer.hpp"
#include "ampkit/precision.hpp"

namespace ampkit {

namespace cuda::amp_kernels {

inline constexpr int kThreads = 256;
inline constexpr int kMaxPartials = 1024;
/// Check-pass blocks for n gradients: a function of n only, so the partial buffer, the launch
/// and the reduction order agree across calls (and graph replays). >= 2048 gradients per block.
inline int check_blocks(std::int64_t n) {
  return static_cast<int>(std::clamp<std::int64_t>((n + 2047) / 2048, 1, kMaxPartials));
}
inline int update_blocks(std::int64_t n) {
  return static_cast<int>(std::clamp<std::int64_t>((n + kThreads - 1) / kThreads, 1, 8192));
}

// Storage element <-> fp32 on the hardware units (bit-identical to ampkit::convert).
template <class T>
__device__ __forceinline__ float widen(T x) {
  if constexpr (std::is_same_v<T, float>)
    return x;
  else if constexpr (std::is_same_v<T, half>)
    return __half2float(__ushort_as_half(x.bits));
  else
    return __bfloat162float(__ushort_as_bfloat16(x.bits));
}
template <class T>
__device__ __forceinline__ T narrow(float x) {
  if constexpr (std::is_same_v<T, float>)
    return x;
  else if constexpr (std::is_same_v<T, half>)
    return half::from_bits(__half_as_ushort(__float2half_rn(x)));
  else
    return bfloat16::from_bits(__bfloat16_as_ushort(__float2bfloat16_rn(x)));
}
/// FlatParams::load_grad with hardware conversions (same value, same summation order).
template <class T>
__device__ __forceinline__ float load_grad(const optim::FlatParams<T>& f, std::int64_t i) {
  if (i < f.n_compute) {
    const float g = widen(f.grad[i]);
    return f.grad_accum ? f.grad_accum[i] + g : g;
  }
  return f.grad_fp32[i - f.n_compute];
}

/// Block-wide sum of a double and OR of an int; result valid in thread 0. Fixed tree order.
__device__ __forceinline__ void block_reduce(double& sum, int& flag) {
  __shared__ double s_sum[kThreads / 32];
  __shared__ int s_flag[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) {
    sum += __shfl_down_sync(0xffffffffu, sum, o);
    flag |= __shfl_down_sync(0xffffffffu, flag, o);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    s_sum[warp] = sum;
    s_flag[warp] = flag;
  }
  __syncthreads();
  if (warp == 0) {
    sum = lane < kThreads / 32 ? s_sum[lane] : 0.0;
    flag = lane < kThreads / 32 ? s_flag[lane] : 0;
    for (int o = 16; o > 0; o >>= 1) {
      sum += __shfl_down_sync(0xffffffffu, sum, o);
      flag |= __shfl_down_sync(0xffffffffu, flag, o);
    }
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    grad_check(optim::FlatParams<T> f, const amp::StepState* __restrict__ g_state,
               amp::GradPartial* __restrict__ g_partials) {
  const float inv = amp::inv_scale_of(g_state->scale);
  double sum = 0.0;
  int bad = 0;
  const std::int64_t n = f.n_total();
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(kThreads) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * kThreads) {
    const float g = load_grad(f, i);
    bad |= !isfinite(g);  // the scaled value, as torch
    const double u = static_cast<double>(__fmul_rn(g, inv));
    sum += u * u;
  }
  block_reduce(sum, bad);
  if (threadIdx.x == 0) g_partials[blockIdx.x] = {sum, bad, 0};
}

template <class Rule, class Scaler>
__global__ void __launch_bounds__(kThreads)
    finalize(amp::StepState* __restrict__ g_state, const amp::GradPartial* __restrict__ g_partials,
             int n_partials, Rule rule, Scaler scaler, amp::StepOptions opt) {
  double sum = 0.0;
  int bad = 0;
  for (int b = threadIdx.x; b < n_partials; b += kThreads) {
    sum += g_partials[b].sumsq;
    bad |= g_partials[b].nonfinite;
  }
  block_reduce(sum, bad);
  if (threadIdx.x == 0) amp::finalize_step(*g_state, sum, bad != 0, rule, scaler, opt);
}

template <class T, class Rule>
__global__ void __launch_bounds__(kThreads)
    apply_update(optim::FlatParams<T> f, float* __restrict__ g_slots, Rule rule,
                 const amp::StepState* __restrict__ g_state) {
  const amp::StepState s = *g_state;
  const std::int64_t n = f.n_total();
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(kThreads) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * kThreads) {
    if (!s.found_inf) {
      const float u = __fmul_rn(__fmul_rn(load_grad(f, i), s.inv_scale), s.clip_coef);
      float p = f.master[i];
      rule.update(p, u, g_slots + i, n, s);
      f.master[i] = p;
      if (f.weights && i < f.n_compute) f.weights[i] = narrow<T>(p);
    }
    // zero_grad after the step (also after a skipped one), fused into the same pass
    if (i < f.n_compute) {
      f.grad[i] = narrow<T>(0.f);
      if (f.grad_accum) f.grad_accum[i] = 0.f;
    } else {
      f.grad_fp32[i - f.n_compute] = 0.f;
    }
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads) accumulate(optim::FlatParams<T> f) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(kThreads) + threadIdx.x; i < f.n_compute;
       i += static_cast<std::int64_t>(gridDim.x) * kThreads) {
    f.grad_accum[i] = f.grad_accum[i] + widen(f.grad[i]);
    f.grad[i] = narrow<T>(0.f);
  }
}

__global__ void set_lr(amp::StepState* g_state, double lr) {
  g_state->lr = lr;
}

}  // namespace cuda::amp_kernels

/// Number of GradPartial slots the check pass writes for `n` gradients.
inline int amp_check_partials(const Cuda&, std::int64_t n) {
  return cuda::amp_kernels::check_blocks(n);
}

/// Pass 1 (see backend/host/amp_step.hpp).
template <StorageScalar T>
void amp_grad_check(Cuda& ctx, optim::FlatParams<T> f, const amp::StepState* state,
                    amp::GradPartial* partials, int n_partials) {
  const int blocks = cuda::amp_kernels::check_blocks(f.n_total());
  AMPKIT_CHECK(n_partials >= blocks, "amp_grad_check: ", f.n_total(), " gradients need ", blocks,
               " partial slots, given ", n_partials, " (size them with amp_check_partials)");
  cuda::amp_kernels::grad_check<T>
      <<<blocks, cuda::amp_kernels::kThreads, 0, ctx.stream()>>>(f, state, partials);
  AMPKIT_CUDA_CHECK_LAUNCH();
}

/// Pass 2: one block reduces the partials and decides.
template <optim::OptimizerRule Rule, amp::LossScalerType Scaler>
void amp_finalize(Cuda& ctx, amp::StepState* state, const amp::GradPartial* partials, int n_partials,
                  const Rule& rule, const Scaler& scaler, const amp::StepOptions& opt) {
  // n_partials == 0: no check ran (bf16/fp32 without norm tracking): a finite step, norm 0.
  cuda::amp_kernels::finalize<Rule, Scaler>
      <<<1, cuda::amp_kernels::kThreads, 0, ctx.stream()>>>(state, partials, n_partials, rule, scaler, opt);
  AMPKIT_CUDA_CHECK_LAUNCH();
}

/// Pass 3: unscale, clip, optimizer rule, storage-type copy, zero gradients.
template <StorageScalar T, optim::OptimizerRule Rule>
void amp_apply_update(Cuda& ctx, optim::FlatParams<T> f, float* slots, const Rule& rule,
                      const amp::StepState* state) {
  const std::int64_t n = f.n_total();
  if (!n) return;
  cuda::amp_kernels::apply_update<T, Rule>
      <<<cuda::amp_kernels::update_blocks(n), cuda::amp_kernels::kThreads, 0, ctx.stream()>>>(f, slots, rule,
                                                                                              state);
  AMPKIT_CUDA_CHECK_LAUNCH();
}

/// Zero the gradients (and the micro-batch accumulator).
template <StorageScalar T>
void amp_zero_grads(Cuda& ctx, optim::FlatParams<T> f) {
  zero_fill(ctx, TensorView<T>(f.grad, {1, 1, 1, f.n_compute}));
  if (f.grad_accum) zero_fill(ctx, TensorView<float>(f.grad_accum, {1, 1, 1, f.n_compute}));
  zero_fill(ctx, TensorView<float>(f.grad_fp32, {1, 1, 1, f.n_fp32}));
}

/// grad_accum += grad; grad = 0 (no-op without an accumulator).
template <StorageScalar T>
void amp_accumulate_grads(Cuda& ctx, optim::FlatParams<T> f) {
  if (!f.grad_accum || !f.n_compute) return;
  cuda::amp_kernels::accumulate<T>
      <<<cuda::amp_kernels::update_blocks(f.n_compute), cuda::amp_kernels::kThreads, 0, ctx.stream()>>>(f);
  AMPKIT_CUDA_CHECK_LAUNCH();
}

/// Write the lr of the next step. A one-thread kernel carries the value as a launch argument, so
/// no host memory has to outlive the call and nothing waits (a graph captures the value; set it
/// outside the captured region, or update the node).
inline void amp_set_lr(Cuda& ctx, amp::StepState* state, double lr) {
  cuda::amp_kernels::set_lr<<<1, 1, 0, ctx.stream()>>>(state, lr);
  AMPKIT_CUDA_CHECK_LAUNCH();
}

}  // namespace ampkit

namespace ampkit::amp {

/// Pinned memory + an event: request() enqueues a 100-byte device-to-host copy of StepState after
/// the step, poll() returns it once the event has completed. The training loop never waits.
template <>
class StepReadout<Cuda> {
 public:
  explicit StepReadout(const Cuda&) : host_(1) {
    AMPKIT_CUDA_CHECK(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming));
  }
  StepReadout(const StepReadout&) = delete;
  StepReadout& operator=(const StepReadout&) = delete;
  ~StepReadout() {
    if (event_) {
      (void)cudaEventSynchronize(event_);  // the copy into host_ must land before it is freed
      (void)cudaEventDestroy(event_);
    }
  }

  /// Enqueue the copy; false (and nothing enqueued) if the previous one has not landed yet.
  bool request(Cuda& ctx, const StepState* state) {
    if (pending_ && !done()) return false;
    AMPKIT_CUDA_CHECK(
        cudaMemcpyAsync(host_.data(), state, sizeof(StepState), cudaMemcpyDeviceToHost, ctx.stream()));
    AMPKIT_CUDA_CHECK(cudaEventRecord(event_, ctx.stream()));
    pending_ = true;
    return true;
  }
  /// The snapshot once the copy has landed (then clears it); never blocks.
  std::optional<StepStats> poll() {
    if (!pending_ || !done()) return std::nullopt;
    pending_ = false;
    StepStats st;
    st.state = host_[0];
    return st;
  }

 private:
  bool done() {
    const cudaError_t r = cudaEventQuery(event_);
    if (r == cudaErrorNotReady) {
      (void)cudaGetLastError();
      return false;
    }
    AMPKIT_CUDA_CHECK(r);
    return true;
  }

  cuda::PinnedBuffer<StepState> host_;
  cudaEvent_t event_ = nullptr;
  bool pending_ = false;
};

}  // namespace ampkit::amp

/// @brief What every optimizer rule provides, the flat view of the buffers it updates, and the
/// unfused fp32 arithmetic the rules are written in.
///
/// A rule (Adam, Sgd) is a small settings object with two host/device functions:
///   prepare(StepState&)  once per applied step, in the one-thread finalize: fold the fp64
///                        scalars (lr, bias corrections) into fp32 constants StepState::k[];
///   update(p, g, slots, stride, state)  once per element, in the fused update pass.
/// The same code runs in the host loop and in the CUDA kernel, so the backends agree bit for bit
/// wherever the inputs agree (no FMA contraction on the device: see mul/add below).
#pragma once

#include <concepts>
#include <cstdint>

#include "ampkit/amp/step_state.hpp"
#include "ampkit/config.hpp"
#include "ampkit/core/numeric_types.hpp"
#include "ampkit/nn/parameter_store.hpp"

namespace ampkit::optim {

/// Raw pointers to the flat buffers one step reads and writes (taken by value by kernels).
/// Layout as nn::ParameterStore: master = [compute segment | fp32 segment].
/// @tparam T  the policy's storage type.
template <StorageScalar T>
struct FlatParams {
  float* master = nullptr;      ///< (n_total) fp32 master weights
  T* weights = nullptr;         ///< (n_compute) storage-type copies to write; nullptr when T is float
  T* grad = nullptr;            ///< (n_compute) this micro-batch's gradients of compute parameters
  float* grad_accum = nullptr;  ///< (n_compute) fp32 sum of the window's earlier micro-batches, or nullptr
  float* grad_fp32 = nullptr;   ///< (n_fp32) gradients of fp32 parameters (BatchNorm)
  std::int64_t n_compute = 0;
  std::int64_t n_fp32 = 0;

  AMPKIT_HOST_DEVICE constexpr std::int64_t n_total() const { return n_compute + n_fp32; }
  /// Element i's gradient in fp32, summed over the window: the one definition that the check
  /// pass and the update pass share. grad_accum + grad keeps PyTorch's order of summation
  /// (.grad += each micro-batch's gradient, in fp32).
  AMPKIT_HOST_DEVICE float load_grad(std::int64_t i) const {
    if (i < n_compute) {
      const float g = static_cast<float>(grad[i]);
      return grad_accum ? grad_accum[i] + g : g;
    }
    return grad_fp32[i - n_compute];
  }
};

/// The flat view of a parameter store, plus the optional fp32 micro-batch accumulator
/// (owned by the AMP optimizer; `accum` may be null).
template <PrecisionPolicy P, class Ctx>
FlatParams<storage_t<P>> flat_params(const nn::ParameterStore<P, Ctx>& store, float* accum = nullptr) {
  using T = storage_t<P>;
  FlatParams<T> f;
  f.master = store.master_all().data;
  f.weights = std::is_same_v<T, float> ? nullptr : store.compute_all().data;
  f.grad = store.grad_compute_all().data;
  f.grad_accum = accum;
  f.grad_fp32 = store.grad_fp32_all().data;
  f.n_compute = store.n_compute_slots();
  f.n_fp32 = store.n_fp32_slots();
  return f;
}

namespace detail {
// Single-rounding fp32 operations. nvcc contracts a*b+c into one FMA by default, g++ on x86-64
// does not; spelling the roundings out keeps host and device bit-identical (and each op is what
// PyTorch's CPU kernels round: mul_, add_, addcmul_, addcdiv_ are separate roundings).
AMPKIT_HOST_DEVICE inline float mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
AMPKIT_HOST_DEVICE inline float add(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
AMPKIT_HOST_DEVICE inline float div(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
AMPKIT_HOST_DEVICE inline float sqrt(float a) {
#if defined(__CUDA_ARCH__)
  return __fsqrt_rn(a);
#else
  return __builtin_sqrtf(a);
#endif
}
}  // namespace detail

/// An optimizer rule: settings + prepare + per-element update over `n_slots()` fp32 state slots.
template <class R>
concept OptimizerRule = requires(const R r, amp::StepState& s, const amp::StepState& cs, float& p, float g,
                                 float* slots, std::int64_t stride) {
  { r.n_slots() } -> std::convertible_to<int>;
  r.prepare(s);
  r.update(p, g, slots, stride, cs);
  { R::name() } -> std::convertible_to<const char*>;
};

}  // namespace ampkit::optim

/// @brief Precision policies (`Precision<fp16, fp32_master>` ...) and THE traits header mapping
/// each policy to its storage, master and accumulation types and to cuDNN/cuBLAS/NCCL data types.
///
/// Precision is a compile-time type, never a build macro or a run-time flag inside the hot path.
/// Every template that takes a policy is constrained by `PrecisionPolicy`. A training binary may
/// instantiate several policies and pick one from a flag at its top level only.
///
/// All data-type mappings live in this one file. The library-enum members (`cudnn_data_type` ...)
/// exist only when the CUDA headers are available (nvcc, or AMPKIT_ENABLE_CUDA), so the file still
/// compiles with a plain host compiler.
#pragma once

#include <concepts>
#include <string_view>
#include <type_traits>

#include "ampkit/config.hpp"
#include "ampkit/core/error.hpp"
#include "ampkit/core/numeric_types.hpp"

#if AMPKIT_HAS_CUDA_HEADERS
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cudnn.h>
#include <nccl.h>
#endif

namespace ampkit {

// ---- tags -----------------------------------------------------------------------------------
/// 32-bit float compute (TF32 is not used implicitly: fp32 means fp32).
struct fp32 {};
/// IEEE half compute: tensor cores from compute capability 7.0; needs loss scaling.
struct fp16 {};
/// bfloat16 compute: tensor cores from compute capability 8.0; fp32's range, no loss scaling.
struct bf16 {};
/// Master-weight tag: the optimizer keeps fp32 weights and writes compute-type copies.
struct fp32_master {};

template <class T>
concept ComputeTag = std::same_as<T, fp32> || std::same_as<T, fp16> || std::same_as<T, bf16>;

namespace detail {
template <class Compute, class Master>
struct precision_check {
  static_assert(ComputeTag<Compute>,
                "Precision<Compute, Master>: Compute must be ampkit::fp32, ampkit::fp16 or ampkit::bf16");
  static_assert(std::is_void_v<Master> || std::is_same_v<Master, fp32_master>,
                "Precision<Compute, Master>: Master must be ampkit::fp32_master (or omitted for fp32)");
  static_assert(!(std::is_same_v<Compute, fp16> && std::is_void_v<Master>),
                "Precision<fp16> needs a master type: use Precision<fp16, fp32_master>");
  static_assert(!(std::is_same_v<Compute, bf16> && std::is_void_v<Master>),
                "Precision<bf16> needs a master type: use Precision<bf16, fp32_master>");
  static_assert(!(std::is_same_v<Compute, fp32> && std::is_same_v<Master, fp32_master>),
                "Precision<fp32, fp32_master> is redundant: fp32 weights are the master; use Precision<fp32>");
  static constexpr bool ok = true;
};
}  // namespace detail

/// A precision policy: what activations/weight copies are stored as, and whether fp32 master
/// weights back them.
/// @tparam Compute  fp32, fp16 or bf16: storage of activations, activation gradients and the
///                  weight copies the kernels read.
/// @tparam Master   fp32_master for the reduced-precision policies; omitted for fp32.
template <class Compute, class Master = void>
struct Precision {
  static_assert(detail::precision_check<Compute, Master>::ok);
  using compute_tag = Compute;
  using master_tag = Master;
};

template <class T>
inline constexpr bool is_precision_v = false;
template <class C, class M>
inline constexpr bool is_precision_v<Precision<C, M>> = true;

/// Satisfied by the three valid policies only.
template <class P>
concept PrecisionPolicy = is_precision_v<P>;

using AmpFp16 = Precision<fp16, fp32_master>;  ///< what `--amp` selects (mmpose AmpOptimWrapper)
using AmpBf16 = Precision<bf16, fp32_master>;  ///< bf16 autocast equivalent
using Fp32 = Precision<fp32>;                  ///< plain fp32 training

// ---- traits ---------------------------------------------------------------------------------
/// Everything a policy decides, in one place.
template <PrecisionPolicy P>
struct PrecisionTraits;

namespace detail {
template <class Storage>
struct common_traits {
  /// Activations, activation gradients and the weight copies kernels read.
  using storage_t = Storage;
  /// Optimizer master weights and state. Always fp32: updates of size lr*g are below fp16's
  /// resolution for most weights, so they would round away.
  using master_t = float;
  /// Accumulation in every reduction, GEMM and conv: fp32 on all policies.
  using accum_t = float;
  /// BatchNorm scale/shift and running statistics stay fp32 (as autocast and Apex O2 do):
  /// the running variance of a 1e-4-scale feature is far below fp16's normal range.
  using bn_param_t = float;
  /// The loss is computed in fp32 from storage-type predictions.
  using loss_t = float;
  static constexpr bool has_master_weights = !std::is_same_v<Storage, float>;
};
}  // namespace detail

template <>
struct PrecisionTraits<Fp32> : detail::common_traits<float> {
  static constexpr std::string_view name = "fp32";
  /// fp32 gradients do not underflow at DEKR's loss magnitudes (1e-4 .. 1e-5).
  static constexpr bool needs_loss_scaling = false;
  static constexpr int min_compute_capability = 0;  // any CUDA device; TF32 is not enabled
#if AMPKIT_HAS_CUDA_HEADERS
  using native_t = float;
  static constexpr cudnnDataType_t cudnn_data_type = CUDNN_DATA_FLOAT;
  static constexpr cudnnDataType_t cudnn_compute_type = CUDNN_DATA_FLOAT;
  static constexpr cudaDataType_t cublas_data_type = CUDA_R_32F;
  static constexpr cublasComputeType_t cublas_compute_type = CUBLAS_COMPUTE_32F;
  static constexpr ncclDataType_t nccl_grad_type = ncclFloat32;
#endif
};

template <>
struct PrecisionTraits<AmpFp16> : detail::common_traits<half> {
  static constexpr std::string_view name = "fp16";
  /// fp16's smallest normal is 6.1e-5: DEKR's gradients (loss ~1e-4) underflow without scaling.
  static constexpr bool needs_loss_scaling = true;
  static constexpr int min_compute_capability = 70;  // tensor cores for fp16
#if AMPKIT_HAS_CUDA_HEADERS
  using native_t = __half;
  static constexpr cudnnDataType_t cudnn_data_type = CUDNN_DATA_HALF;
  static constexpr cudnnDataType_t cudnn_compute_type = CUDNN_DATA_FLOAT;
  static constexpr cudaDataType_t cublas_data_type = CUDA_R_16F;
  static constexpr cublasComputeType_t cublas_compute_type = CUBLAS_COMPUTE_32F;
  /// Gradients are reduced in fp32 buckets: the all-reduce sums world_size values of up to the
  /// loss scale times the gradient, which can exceed 65504 where each term did not.
  static constexpr ncclDataType_t nccl_grad_type = ncclFloat32;
#endif
};

template <>
struct PrecisionTraits<AmpBf16> : detail::common_traits<bfloat16> {
  static constexpr std::string_view name = "bf16";
  /// bf16 has fp32's exponent range: gradients do not underflow, so no loss scaling.
  static constexpr bool needs_loss_scaling = false;
  static constexpr int min_compute_capability = 80;  // bf16 tensor cores (Ampere)
#if AMPKIT_HAS_CUDA_HEADERS
  using native_t = __nv_bfloat16;
  static constexpr cudnnDataType_t cudnn_data_type = CUDNN_DATA_BFLOAT16;
  static constexpr cudnnDataType_t cudnn_compute_type = CUDNN_DATA_FLOAT;
  static constexpr cudaDataType_t cublas_data_type = CUDA_R_16BF;
  static constexpr cublasComputeType_t cublas_compute_type = CUBLAS_COMPUTE_32F;
  static constexpr ncclDataType_t nccl_grad_type = ncclFloat32;
#endif
};

template <PrecisionPolicy P>
using storage_t = typename PrecisionTraits<P>::storage_t;
template <PrecisionPolicy P>
using master_t = typename PrecisionTraits<P>::master_t;
template <PrecisionPolicy P>
using accum_t = typename PrecisionTraits<P>::accum_t;

#if AMPKIT_HAS_CUDA_HEADERS
/// The CUDA-native element type of a storage type (ampkit::half -> __half ...), for kernels.
template <StorageScalar T>
using native_t = std::conditional_t<std::is_same_v<T, half>, __half,
                                    std::conditional_t<std::is_same_v<T, bfloat16>, __nv_bfloat16, float>>;
/// cuDNN / cuBLAS / NCCL enums of a storage type (for tensors that are not the policy's storage,
/// e.g. fp32 BN parameters).
template <StorageScalar T>
inline constexpr cudnnDataType_t cudnn_type_v = std::is_same_v<T, half>       ? CUDNN_DATA_HALF
                                                : std::is_same_v<T, bfloat16> ? CUDNN_DATA_BFLOAT16
                                                                              : CUDNN_DATA_FLOAT;
template <StorageScalar T>
inline constexpr cudaDataType_t cublas_type_v = std::is_same_v<T, half>       ? CUDA_R_16F
                                                : std::is_same_v<T, bfloat16> ? CUDA_R_16BF
                                                                              : CUDA_R_32F;
template <StorageScalar T>
inline constexpr ncclDataType_t nccl_type_v = std::is_same_v<T, half>       ? ncclFloat16
                                              : std::is_same_v<T, bfloat16> ? ncclBfloat16
                                                                            : ncclFloat32;
#endif

/// Policy names as the command line spells them ("fp32", "fp16", "bf16").
template <PrecisionPolicy P>
inline constexpr std::string_view policy_name_v = PrecisionTraits<P>::name;

/// Call `f.template operator()<P>()` with the policy named at run time. The only place a run-time
/// precision choice becomes a type: the top level of a binary.
template <class F>
decltype(auto) dispatch_precision(std::string_view name, F&& f) {
  if (name == "fp16") return f.template operator()<AmpFp16>();
  if (name == "bf16") return f.template operator()<AmpBf16>();
  if (name == "fp32") return f.template operator()<Fp32>();
  AMPKIT_FAIL("unknown precision '", name, "': use fp32, fp16 or bf16");
}

}  // namespace ampkit

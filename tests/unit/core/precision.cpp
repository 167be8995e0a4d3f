// Precision policies and their traits. Misuse that must not compile is covered by
// tests/compile_fail (each snippet must fail with its readable message).
#include <doctest/doctest.h>

#include <string>
#include <type_traits>

#include "ampkit/precision.hpp"

using namespace ampkit;

static_assert(PrecisionPolicy<Precision<fp16, fp32_master>>);
static_assert(PrecisionPolicy<Precision<bf16, fp32_master>>);
static_assert(PrecisionPolicy<Precision<fp32>>);
static_assert(!PrecisionPolicy<float>);
static_assert(!PrecisionPolicy<fp16>);

TEST_CASE_TEMPLATE("every policy: fp32 master, accumulation, BN and loss", P, AmpFp16, AmpBf16, Fp32) {
  using Tr = PrecisionTraits<P>;
  CHECK(std::is_same_v<typename Tr::master_t, float>);
  CHECK(std::is_same_v<typename Tr::accum_t, float>);
  CHECK(std::is_same_v<typename Tr::bn_param_t, float>);
  CHECK(std::is_same_v<typename Tr::loss_t, float>);
  CHECK(Tr::has_master_weights == !std::is_same_v<storage_t<P>, float>);
}

TEST_CASE("policy-specific traits") {
  CHECK(std::is_same_v<storage_t<AmpFp16>, half>);
  CHECK(std::is_same_v<storage_t<AmpBf16>, bfloat16>);
  CHECK(std::is_same_v<storage_t<Fp32>, float>);
  CHECK(PrecisionTraits<AmpFp16>::needs_loss_scaling);
  CHECK_FALSE(PrecisionTraits<AmpBf16>::needs_loss_scaling);
  CHECK_FALSE(PrecisionTraits<Fp32>::needs_loss_scaling);
  CHECK(PrecisionTraits<AmpFp16>::min_compute_capability == 70);
  CHECK(PrecisionTraits<AmpBf16>::min_compute_capability == 80);
}

TEST_CASE("dispatch_precision turns a flag into a type, and names the choices on a typo") {
  auto size_of = []<PrecisionPolicy P>() { return static_cast<int>(sizeof(storage_t<P>)); };
  CHECK(dispatch_precision("fp16", size_of) == 2);
  CHECK(dispatch_precision("bf16", size_of) == 2);
  CHECK(dispatch_precision("fp32", size_of) == 4);
  CHECK_THROWS_WITH_AS(dispatch_precision("fp8", size_of),
                       doctest::Contains("unknown precision 'fp8': use fp32, fp16 or bf16"), Error);
}

#if AMPKIT_HAS_CUDA_HEADERS
TEST_CASE("library data types") {
  CHECK(PrecisionTraits<AmpFp16>::cudnn_data_type == CUDNN_DATA_HALF);
  CHECK(PrecisionTraits<AmpFp16>::cudnn_compute_type == CUDNN_DATA_FLOAT);
  CHECK(PrecisionTraits<AmpBf16>::cublas_data_type == CUDA_R_16BF);
  CHECK(PrecisionTraits<AmpFp16>::cublas_compute_type == CUBLAS_COMPUTE_32F);
  CHECK(PrecisionTraits<AmpFp16>::nccl_grad_type == ncclFloat32);
  CHECK(cudnn_type_v<float> == CUDNN_DATA_FLOAT);
  CHECK(nccl_type_v<half> == ncclFloat16);
}
#endif

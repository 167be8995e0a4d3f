// Foundation on a real device: conversions bit-exact with CUDA's intrinsics, the Cuda context,
// the caching allocator on cudaMalloc, and the error macros' messages.
#include <doctest/doctest.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "ampkit/backend/cuda/context.cuh"
#include "ampkit/precision.hpp"

namespace ak = ampkit;  // cuda_fp16.h declares a global `half`

namespace {
__global__ void float_to_16(const float* in, unsigned short* h, unsigned short* b, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    h[i] = __half_as_ushort(__float2half_rn(in[i]));
    b[i] = __bfloat16_as_ushort(__float2bfloat16_rn(in[i]));
  }
}
__global__ void half_to_float(float* out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < 65536) out[i] = __half2float(__ushort_as_half(static_cast<unsigned short>(i)));
}
__global__ void ampkit_types_on_device(const float* in, unsigned short* h, int n) {
  // ampkit::half's own conversion compiled for the device must agree too.
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) h[i] = ak::half(in[i]).bits;
}
__global__ void noop() {}
/// Keeps the stream busy for about `cycles` clocks, so uploads queue behind real work.
__global__ void spin(long long cycles) {
  const long long t0 = clock64();
  while (clock64() - t0 < cycles) {
  }
}
}  // namespace

TEST_CASE("fp16/bf16 conversions are bit-exact with the device's cvt.rn on every special value") {
  ak::Cuda ctx;
  std::vector<float> v;
  std::mt19937 rng(99);
  std::uniform_int_distribution<std::uint32_t> bits;
  for (int i = 0; i < (1 << 22); ++i) v.push_back(std::bit_cast<float>(bits(rng)));
  for (std::uint32_t hb = 0; hb < 0x7c00; ++hb) {  // every half, the ties between neighbours
    const float a = ak::detail::half_bits_to_float(static_cast<std::uint16_t>(hb));
    const float c = ak::detail::half_bits_to_float(static_cast<std::uint16_t>(hb + 1));
    const float mid = static_cast<float>((static_cast<double>(a) + c) / 2);
    for (float x : {a, mid, std::nextafter(mid, 0.f), std::nextafter(mid, 1e9f)}) {
      v.push_back(x);
      v.push_back(-x);
    }
  }
  for (std::uint32_t special : {0x7f800000u, 0xff800000u, 0x7fc00000u, 0xffc00001u, 0x7f800001u,
                                0x00000001u, 0x477ff000u, 0x477fefffu, 0x33000000u, 0x33000001u,
                                0x7f7f8000u, 0x7f7f7fffu})
    v.push_back(std::bit_cast<float>(special));
  const int n = static_cast<int>(v.size());
  auto d_in = ctx.alloc<float>(v.size());
  auto d_h = ctx.alloc<unsigned short>(v.size());
  auto d_b = ctx.alloc<unsigned short>(v.size());
  auto d_h2 = ctx.alloc<unsigned short>(v.size());
  AMPKIT_CUDA_CHECK(cudaMemcpy(d_in.data(), v.data(), v.size() * 4, cudaMemcpyHostToDevice));
  float_to_16<<<(n + 255) / 256, 256, 0, ctx.stream()>>>(d_in.data(), d_h.data(), d_b.data(), n);
  AMPKIT_CUDA_CHECK_LAUNCH();
  ampkit_types_on_device<<<(n + 255) / 256, 256, 0, ctx.stream()>>>(d_in.data(), d_h2.data(), n);
  AMPKIT_CUDA_CHECK_LAUNCH();
  std::vector<unsigned short> h(v.size()), b(v.size()), h2(v.size());
  ctx.synchronize();
  AMPKIT_CUDA_CHECK(cudaMemcpy(h.data(), d_h.data(), v.size() * 2, cudaMemcpyDeviceToHost));
  AMPKIT_CUDA_CHECK(cudaMemcpy(b.data(), d_b.data(), v.size() * 2, cudaMemcpyDeviceToHost));
  AMPKIT_CUDA_CHECK(cudaMemcpy(h2.data(), d_h2.data(), v.size() * 2, cudaMemcpyDeviceToHost));
  int bad = 0;
  for (int i = 0; i < n; ++i) {
    const auto hb = ak::detail::float_to_half_bits(v[i], ak::Rounding::kNearestEven);
    const auto bb = ak::detail::float_to_bf16_bits(v[i], ak::Rounding::kNearestEven);
    if ((hb != h[i] || bb != b[i] || h2[i] != h[i]) && bad++ < 8)
      MESSAGE("float 0x", std::hex, std::bit_cast<std::uint32_t>(v[i]), ": host half ", hb, " device ",
              h[i], " (ampkit on device ", h2[i], "), host bf16 ", bb, " device ", b[i]);
  }
  CHECK(bad == 0);
  MESSAGE("compared ", n, " floats with __float2half_rn / __float2bfloat16_rn on ", ctx.device().name);

  auto d_f = ctx.alloc<float>(65536);
  half_to_float<<<256, 256, 0, ctx.stream()>>>(d_f.data());
  AMPKIT_CUDA_CHECK_LAUNCH();
  std::vector<float> f(65536);
  ctx.synchronize();
  AMPKIT_CUDA_CHECK(cudaMemcpy(f.data(), d_f.data(), 65536 * 4, cudaMemcpyDeviceToHost));
  int bad_h = 0;
  for (std::uint32_t i = 0; i < 65536; ++i) {
    const float want = f[i], got = static_cast<float>(ak::half::from_bits(static_cast<std::uint16_t>(i)));
    if (!(std::bit_cast<std::uint32_t>(got) == std::bit_cast<std::uint32_t>(want) ||
          (std::isnan(got) && std::isnan(want))))
      ++bad_h;
  }
  CHECK(bad_h == 0);
}

TEST_CASE("Cuda context: the device supports every policy on an H200-class GPU") {
  ak::Cuda ctx;
  const auto& d = ctx.device();
  MESSAGE("device ", d.index, ": ", d.name, " sm_", d.cc_major, d.cc_minor, ", ", d.multiprocessors,
          " SMs, ", d.total_bytes >> 20, " MiB; driver CUDA ", d.driver_version, ", runtime ", d.runtime_version,
          ", cuDNN ", cudnnGetVersion());
  CHECK(d.total_bytes > 0);
  CHECK_NOTHROW(ak::check_device_supports<ak::AmpFp16>(d));
  if (d.compute_capability() >= 80) CHECK_NOTHROW(ak::check_device_supports<ak::AmpBf16>(d));
  CHECK_THROWS_WITH_AS(ak::Cuda(1000), doctest::Contains("CUDA device 1000 requested but only"), ak::Error);
}

TEST_CASE("caching allocator on cudaMalloc: reuse, stats, host round trip, clear OOM") {
  ak::Cuda ctx;
  void* first = nullptr;
  void* second = nullptr;
  {
    auto t = ctx.tensor<ak::half>({2, 8, 8, 16});
    first = t.data();
    ak::HostTensor<ak::half> h({2, 8, 8, 16});
    for (std::int64_t i = 0; i < h.numel(); ++i) h[i] = ak::half(static_cast<float>(i % 97) - 48.f);
    auto d = ctx.to_device(h);
    second = d.data();
    auto back = ctx.to_host(d.cview());
    for (std::int64_t i = 0; i < h.numel(); ++i) REQUIRE(back[i] == h[i]);
  }
  auto again = ctx.tensor<ak::half>({2, 8, 8, 16});
  // Same stream, same bin: one of the two freed blocks is reused without a cudaMalloc.
  CHECK((again.data() == first || again.data() == second));
  const auto st = ctx.memory_stats();
  CHECK(st.n_cache_hits >= 1);
  CHECK(st.peak_allocated >= 2 * 2048 * sizeof(ak::half));
  CHECK_THROWS_WITH_AS(ctx.alloc<float>(std::size_t{1} << 48),
                       doctest::Contains("out of device memory: asked for"), ak::OutOfMemoryError);
}

TEST_CASE("Cuda::upload: no wait on the stream, the source reusable at once, the staging ring wrapping") {
  // Three times as many uploads as staging slots, of growing and shrinking sizes (slots are
  // re-allocated when too small), each source overwritten right after the call, with the stream
  // kept busy so the copies really are still queued when the host moves on.
  ak::Cuda ctx;
  constexpr int kUploads = 3 * static_cast<int>(ak::cuda::UploadStaging::kSlots);
  std::mt19937 rng(7);
  std::vector<ak::cuda::DeviceTensor<float>> dst;
  std::vector<std::vector<float>> want;
  std::vector<float> src;
  for (int i = 0; i < kUploads; ++i) {
    const std::int64_t n = 1 + static_cast<std::int64_t>(rng() % 50000) * ((i % 7) + 1);
    src.resize(static_cast<std::size_t>(n));
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    for (auto& v : src) v = u(rng);
    want.push_back(src);
    dst.push_back(ctx.tensor<float>({1, 1, 1, n}));
    if (i % 5 == 0) spin<<<1, 1, 0, ctx.stream()>>>(200000);
    ctx.upload(dst.back().view(), std::span<const float>(src));
    std::fill(src.begin(), src.end(), 1e30f);  // the caller's buffer is free again
  }
  for (std::size_t i = 0; i < dst.size(); ++i) {
    const auto back = ctx.to_host(dst[i].cview());
    CAPTURE(i);
    REQUIRE(back.numel() == static_cast<std::int64_t>(want[i].size()));
    CHECK(std::memcmp(back.data(), want[i].data(), want[i].size() * sizeof(float)) == 0);
  }
  CHECK_THROWS_WITH_AS(ctx.upload(dst[0].view(), std::span<const float>(src.data(), 3)),
                       doctest::Contains("upload: destination holds"), ak::Error);
}

TEST_CASE("error macros carry the call, the place and the library's message") {
  ak::Cuda ctx;
  CHECK_THROWS_WITH_AS(AMPKIT_CUDA_CHECK(cudaMemcpy(nullptr, reinterpret_cast<void*>(16), 64, cudaMemcpyDeviceToDevice)),
                       doctest::Contains("cudaMemcpy(nullptr"), ak::Error);
  noop<<<1, 4096, 0, ctx.stream()>>>();  // more threads than a block may have
  CHECK_THROWS_WITH_AS(AMPKIT_CUDA_CHECK_LAUNCH(), doctest::Contains("cudaGetLastError() failed: cudaError"), ak::Error);
  cudnnTensorDescriptor_t desc;
  AMPKIT_CUDNN_CHECK(cudnnCreateTensorDescriptor(&desc));
  CHECK_THROWS_WITH_AS(AMPKIT_CUDNN_CHECK(cudnnSetTensor4dDescriptor(desc, CUDNN_TENSOR_NHWC, CUDNN_DATA_HALF, -1, 3, 4, 4)),
                       doctest::Contains("CUDNN_STATUS_BAD_PARAM"), ak::Error);
  cudnnDestroyTensorDescriptor(desc);
  CHECK_THROWS_WITH_AS(AMPKIT_CUBLAS_CHECK(cublasSgemm(ctx.cublas(), CUBLAS_OP_N, CUBLAS_OP_N, -1, 1, 1, nullptr,
                                                       nullptr, 1, nullptr, 1, nullptr, nullptr, 1)),
                       doctest::Contains("CUBLAS_STATUS_INVALID_VALUE"), ak::Error);
  ncclComm_t comm;
  ncclUniqueId id{};
  CHECK_THROWS_WITH_AS(AMPKIT_NCCL_CHECK(ncclCommInitRank(&comm, 0, id, 0)), doctest::Contains("ncclCommInitRank"), ak::Error);
  try {
    AMPKIT_CUDA_CHECK(cudaSetDevice(-5));
  } catch (const ak::Error& e) {
    CHECK(e.where().find("tests/gpu/core/core.cu:") == 0);
  }
}

TEST_CASE("library data types in the traits header") {
  CHECK(ak::PrecisionTraits<ak::AmpFp16>::cudnn_data_type == CUDNN_DATA_HALF);
  CHECK(ak::PrecisionTraits<ak::AmpBf16>::cudnn_data_type == CUDNN_DATA_BFLOAT16);
  CHECK(ak::PrecisionTraits<ak::Fp32>::cudnn_data_type == CUDNN_DATA_FLOAT);
  CHECK(ak::PrecisionTraits<ak::AmpFp16>::cublas_compute_type == CUBLAS_COMPUTE_32F);
  CHECK(ak::PrecisionTraits<ak::AmpBf16>::cublas_data_type == CUDA_R_16BF);
  CHECK(ak::PrecisionTraits<ak::AmpFp16>::nccl_grad_type == ncclFloat32);
  CHECK(std::is_same_v<ak::PrecisionTraits<ak::AmpFp16>::native_t, __half>);
  CHECK(std::is_same_v<ak::native_t<ak::bfloat16>, __nv_bfloat16>);
}

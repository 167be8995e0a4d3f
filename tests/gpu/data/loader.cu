// The CUDA data loader: batches assembled in pinned memory and copied on a copy stream arrive on
// the device byte-identical to the host loader's (1 thread), for a synthetic sample and for the
// real COCO pipeline; errors propagate; a kernel on the compute stream sees the copied data.
#include <doctest/doctest.h>

#include <memory>
#include <numeric>

#include "ampkit/backend/cuda/context.cuh"
#include "ampkit/backend/cuda/data_loader.cuh"
#include "ampkit/data/bottomup_dataset.hpp"
#include "ampkit/data/loader.hpp"
#include "ampkit/data/sampler.hpp"
#include "support/testing.hpp"

using namespace ampkit;
using namespace ampkit::data;

namespace {

void synthetic_sample(std::size_t i, SampleRng& rng, std::span<const TensorView<float>> out) {
  for (const auto& v : out)
    for (std::int64_t e = 0; e < v.numel(); ++e) v[e] = static_cast<float>(i) + static_cast<float>(rng.uniform());
}

std::vector<std::vector<float>> host_epoch(LoaderConfig cfg, std::vector<Shape> shapes, Loader<>::SampleFn fn,
                                           std::uint64_t epoch, const std::vector<std::size_t>& order) {
  cfg.n_workers = 1;
  Loader<> loader(cfg, std::move(shapes), std::move(fn));
  loader.begin_epoch(epoch, order);
  std::vector<std::vector<float>> out;
  while (auto b = loader.next()) {
    std::vector<float> flat;
    for (const auto& f : b->fields) flat.insert(flat.end(), f.data, f.data + f.numel());
    out.push_back(std::move(flat));
  }
  return out;
}

std::vector<std::vector<float>> device_epoch(Cuda& cuda, LoaderConfig cfg, std::vector<Shape> shapes,
                                             Loader<>::SampleFn fn, std::uint64_t epoch,
                                             const std::vector<std::size_t>& order) {
  cuda::DeviceLoader loader(cuda, cfg, std::move(shapes), std::move(fn));
  loader.begin_epoch(epoch, order);
  std::vector<std::vector<float>> out;
  while (auto b = loader.next()) {
    std::vector<float> flat;
    for (const auto& f : b->fields) {
      // to_host runs on the compute stream, which waits on the copy event: no extra sync.
      const auto h = cuda.to_host(TensorView<const float>(f));
      flat.insert(flat.end(), h.data(), h.data() + h.numel());
    }
    out.push_back(std::move(flat));
  }
  return out;
}

__global__ void sum_kernel(const float* x, std::int64_t n, double* out) {
  double s = 0;
  for (std::int64_t i = threadIdx.x; i < n; i += blockDim.x) s += x[i];
  atomicAdd(out, s);
}

}  // namespace

TEST_CASE("gpu data: pinned + copy-stream batches equal the host loader's, byte for byte") {
  Cuda cuda;
  LoaderConfig cfg;
  cfg.batch_size = 6;
  cfg.n_workers = 4;
  cfg.prefetch = 2;
  cfg.seed = 99;
  const std::vector<Shape> shapes = {{1, 16, 12, 3}, {1, 4, 3, 18}};
  const auto order = DistributedSampler(45, 2, 1, true, 5).indices(2);
  const auto want = host_epoch(cfg, shapes, synthetic_sample, 2, order);
  const auto got = device_epoch(cuda, cfg, shapes, synthetic_sample, 2, order);
  REQUIRE(got.size() == want.size());
  for (std::size_t b = 0; b < got.size(); ++b) CHECK(got[b] == want[b]);
}

TEST_CASE("gpu data: a kernel on the compute stream reads each batch after its copy") {
  Cuda cuda;
  LoaderConfig cfg;
  cfg.batch_size = 4;
  cfg.n_workers = 3;
  const std::vector<Shape> shapes = {{1, 64, 64, 3}};
  std::vector<std::size_t> order(16);
  std::iota(order.begin(), order.end(), std::size_t{0});
  const auto want = host_epoch(cfg, shapes, synthetic_sample, 0, order);
  cuda::DeviceLoader loader(cuda, cfg, shapes, synthetic_sample);
  loader.begin_epoch(0, order);
  auto sum = cuda.tensor<double>({1, 1, 1, 1});
  std::size_t b = 0;
  while (auto batch = loader.next()) {
    AMPKIT_CUDA_CHECK(cudaMemsetAsync(sum.data(), 0, sizeof(double), cuda.stream()));
    sum_kernel<<<1, 256, 0, cuda.stream()>>>(batch->fields[0].data, batch->fields[0].numel(), sum.data());
    AMPKIT_CUDA_CHECK_LAUNCH();
    const auto h = cuda.to_host(sum.cview());
    double ref = 0;
    for (float x : want[b]) ref += x;
    // The kernel sums in a different order: relative error ~ n * eps_double.
    CHECK(h[0] == doctest::Approx(ref).epsilon(1e-9));
    ++b;
  }
  CHECK(b == want.size());
}

TEST_CASE("gpu data: the COCO training pipeline through pinned memory equals the host's") {
  const std::string ann = testing::source_path("data/coco_sample/annotations/person_keypoints_sample.json");
  auto ds = std::make_shared<BottomupCocoDataset>(CocoKeypoints::load(ann, testing::source_path("data/coco_sample/images")),
                                                  BottomupTrainConfig{});
  const std::vector<Shape> shapes = {ds->image_shape(), ds->heatmap_shape(), ds->heatmap_shape(),
                                     ds->displacement_shape(), ds->displacement_shape(), ds->mask_shape()};
  auto fn = [ds](std::size_t i, SampleRng& rng, std::span<const TensorView<float>> v) {
    ds->train_sample(i, rng, {v[0], {v[1], v[2], v[3], v[4]}, v[5]});
  };
  LoaderConfig cfg;
  cfg.batch_size = 2;
  cfg.n_workers = 3;
  const std::vector<std::size_t> order = {2, 0, 3, 1, 1};
  Cuda cuda;
  const auto want = host_epoch(cfg, shapes, fn, 1, order);
  const auto got = device_epoch(cuda, cfg, shapes, fn, 1, order);
  REQUIRE(got.size() == 3);
  for (std::size_t b = 0; b < got.size(); ++b) CHECK(got[b] == want[b]);
}

TEST_CASE("gpu data: a sample error reaches the caller through the device loader") {
  Cuda cuda;
  LoaderConfig cfg;
  cfg.batch_size = 2;
  cfg.n_workers = 2;
  auto fn = [](std::size_t i, SampleRng& rng, std::span<const TensorView<float>> out) {
    if (i == 3) AMPKIT_FAIL("image 'corrupt.jpg': cannot decode");
    synthetic_sample(i, rng, out);
  };
  SUBCASE("data.bad_sample = raise: the batch that holds it throws, the epoch goes on") {
    cfg.bad_sample = BadSamplePolicy::kThrow;
    cuda::DeviceLoader loader(cuda, cfg, {{1, 2, 2, 1}}, fn);
    loader.begin_epoch(0, {0, 1, 2, 3, 4, 5});
    REQUIRE(loader.next().has_value());
    CHECK_THROWS_WITH_AS(loader.next(), doctest::Contains("corrupt.jpg"), Error);
    CHECK(loader.next().has_value());
    CHECK_FALSE(loader.next().has_value());
  }
  SUBCASE("data.bad_sample = skip (the default): replaced by the next index, counted, named") {
    REQUIRE(cfg.bad_sample == BadSamplePolicy::kSkip);
    cuda::DeviceLoader loader(cuda, cfg, {{1, 2, 2, 1}}, fn);
    loader.begin_epoch(0, {0, 1, 2, 3, 4, 5});
    int n = 0;
    while (loader.next()) ++n;
    CHECK(n == 3);
    CHECK(loader.report().n_skipped == 1);
    REQUIRE(loader.report().messages.size() == 1);
    CHECK(loader.report().messages[0].find("corrupt.jpg") != std::string::npos);
  }
}

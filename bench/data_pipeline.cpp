// Data-pipeline benchmarks (host only, g++ alone; see bench/results/coco_json_load.md and
// bench/results/data_pipeline.md for the commands and numbers).
//
//   data_pipeline json FILE             time CocoKeypoints::load on FILE, print counts + peak RSS
//   data_pipeline train [N] [THREADS]   full train sample (decode + affine + flip + SPR + mask)
//                                       on the bundled sample at 512x512: samples/s
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "ampkit/data/bottomup_dataset.hpp"
#include "ampkit/data/loader.hpp"

using namespace ampkit;
using namespace ampkit::data;

static double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

static long peak_rss_mb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss / 1024;
}

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "json" && argc > 2) {
    const double t0 = now();
    const auto ds = CocoKeypoints::load(argv[2], ".");
    const double t1 = now();
    const auto& r = ds.report();
    std::printf("load %.2f s, peak RSS %ld MB: %lld images, %lld annotations, %lld valid persons, "
                "%lld crowd, %lld without keypoints, %lld images kept\n",
                t1 - t0, peak_rss_mb(), (long long)r.n_images, (long long)r.n_annotations,
                (long long)r.n_valid_persons, (long long)r.n_crowd, (long long)r.n_no_keypoints,
                (long long)r.n_images_kept);
    return 0;
  }
  if (mode == "train") {
    const int n = argc > 2 ? std::atoi(argv[2]) : 200;
    const int threads = argc > 3 ? std::atoi(argv[3]) : 1;
    auto ds = std::make_shared<BottomupCocoDataset>(
        CocoKeypoints::load("data/coco_sample/annotations/person_keypoints_sample.json",
                            "data/coco_sample/images"),
        BottomupTrainConfig{});
    const std::vector<Shape> shapes = {ds->image_shape(), ds->heatmap_shape(), ds->heatmap_shape(),
                                       ds->displacement_shape(), ds->displacement_shape(),
                                       ds->mask_shape()};
    LoaderConfig cfg;
    cfg.batch_size = 10;
    cfg.n_workers = threads;
    cfg.prefetch = 2;
    Loader<> loader(cfg, shapes, [ds](std::size_t i, SampleRng& rng, std::span<const TensorView<float>> v) {
      ds->train_sample(i, rng, {v[0], {v[1], v[2], v[3], v[4]}, v[5]});
    });
    std::vector<std::size_t> order(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) order[i] = static_cast<std::size_t>(i) % ds->size();
    loader.begin_epoch(0, order);
    const double t0 = now();
    int got = 0;
    while (auto b = loader.next()) got += b->n;
    const double t1 = now();
    std::printf("train pipeline 512x512: %d samples in %.2f s with %d worker thread(s): %.1f samples/s "
                "(%.1f samples/s per thread)\n",
                got, t1 - t0, threads, got / (t1 - t0), got / (t1 - t0) / threads);
    return 0;
  }
  std::fprintf(stderr, "usage: %s json FILE | train [N] [THREADS]\n", argv[0]);
  return 2;
}

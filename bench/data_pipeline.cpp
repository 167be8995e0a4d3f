// Data-pipeline benchmarks (host only, g++ alone; see bench/results/coco_json_load.md and
// bench/results/data_pipeline.md for the commands and numbers).
//
//   data_pipeline json FILE             time CocoKeypoints::load on FILE, print counts + peak RSS
//   data_pipeline train [N] [THREADS]   full train sample (decode + affine + flip + SPR + mask)
//                                       through the threaded Loader on the bundled sample at
//                                       512x512: samples/s (wall), process CPU time and minor
//                                       page faults per sample, after an untimed warm-up epoch
//   data_pipeline cpu [N]               the same samples on the calling thread, timed with the
//                                       thread's CPU clock (what a loaded, shared machine can
//                                       still measure), plus the JPEG-decode share alone and
//                                       the thread's minor page faults per sample
#include <sys/resource.h>
#include <time.h>

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

/// CPU seconds used by the calling thread (immune to other processes sharing the cores).
static double thread_cpu() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

/// CPU seconds (user + system) used by the whole process so far.
static double process_cpu() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         1e-6 * static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

/// Minor page faults of the whole process so far (a fresh page touched: mmap'ed or trimmed-and-
/// regrown heap memory, zero-filled by the kernel on first touch).
static long process_minor_faults() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_minflt;
}

/// Minor page faults of the calling thread so far.
static long thread_minor_faults() {
  rusage u{};
  getrusage(RUSAGE_THREAD, &u);
  return u.ru_minflt;
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
  const auto load_sample = [] {
    return std::make_shared<BottomupCocoDataset>(
        CocoKeypoints::load("data/coco_sample/annotations/person_keypoints_sample.json",
                            "data/coco_sample/images"),
        BottomupTrainConfig{});
  };
  if (mode == "cpu") {
    const int n = argc > 2 ? std::atoi(argv[2]) : 200;
    auto ds = load_sample();
    HostTensor<float> img(ds->image_shape()), hm(ds->heatmap_shape()), hw(ds->heatmap_shape()),
        dp(ds->displacement_shape()), dw(ds->displacement_shape()), mask(ds->mask_shape());
    const TrainSampleViews views{img.view(), {hm.view(), hw.view(), dp.view(), dw.view()}, mask.view()};
    for (std::size_t i = 0; i < ds->size(); ++i) {  // warm-up: buffers, page cache
      SampleRng rng(0, 99, i);
      ds->train_sample(i, rng, views);
    }
    const long f0 = thread_minor_faults();
    const double t0 = thread_cpu();
    for (int i = 0; i < n; ++i) {
      SampleRng rng(0, 0, static_cast<std::uint64_t>(i));
      ds->train_sample(static_cast<std::size_t>(i) % ds->size(), rng, views);
    }
    const double t1 = thread_cpu();
    const long f1 = thread_minor_faults();
    for (int i = 0; i < n; ++i) {
      const Image im = load_image(ds->coco().image_path(static_cast<std::size_t>(i) % ds->size()));
      if (im.w == 0) return 1;
    }
    const double t2 = thread_cpu();
    const double per = (t1 - t0) / n, dec = (t2 - t1) / n;
    std::printf("train sample 512x512 on one thread: %.2f ms CPU per sample -> %.1f samples/s per "
                "core (of which JPEG read+decode %.2f ms, %.0f%%)\n",
                1e3 * per, 1 / per, 1e3 * dec, 100 * dec / per);
    std::printf("train sample page faults: %.1f minor faults per sample\n",
                static_cast<double>(f1 - f0) / n);
    return 0;
  }
  if (mode == "train") {
    const int n = argc > 2 ? std::atoi(argv[2]) : 200;
    const int threads = argc > 3 ? std::atoi(argv[3]) : 1;
    auto ds = load_sample();
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
    // One epoch of `count` samples: wall seconds, process CPU seconds, process minor faults.
    struct EpochStats {
      int samples = 0;
      double wall = 0, cpu = 0;
      long faults = 0;
    };
    const auto run_epoch = [&](std::uint64_t epoch, int count) {
      std::vector<std::size_t> order(static_cast<std::size_t>(count));
      for (int i = 0; i < count; ++i) order[i] = static_cast<std::size_t>(i) % ds->size();
      EpochStats s;
      const long f0 = process_minor_faults();
      const double c0 = process_cpu(), t0 = now();
      loader.begin_epoch(epoch, std::move(order));
      while (auto b = loader.next()) s.samples += b->n;
      s.wall = now() - t0;
      s.cpu = process_cpu() - c0;
      s.faults = process_minor_faults() - f0;
      return s;
    };
    // Untimed warm-up epoch: the first pass through the batch ring touches its pages for the first
    // time (prefetch+1 slots x batch x ~9.9 MB at 512x512: ~300 MB, ~74k page faults, paid once
    // per Loader; pinned CUDA memory is faulted in when it is allocated), and each worker's first
    // samples grow its malloc arena and thread-local scratch. A short timed run would otherwise
    // charge all of that to its few samples.
    const int ring_samples = (cfg.prefetch + 1) * cfg.batch_size;
    const EpochStats w = run_epoch(1000, ring_samples + 4 * threads);
    const EpochStats s = run_epoch(0, n);
    const int got = s.samples;
    std::printf("train pipeline 512x512: %d samples in %.2f s with %d worker thread(s): %.1f samples/s "
                "(%.1f samples/s per thread); process CPU %.2f ms per sample (%.1f samples/s per core)\n",
                got, s.wall, threads, got / s.wall, got / s.wall / threads, 1e3 * s.cpu / got,
                got / s.cpu);
    std::printf("train pipeline page faults: %.1f minor faults per sample (warm-up epoch before it, "
                "first touch of the batch ring: %d samples, %.1f faults and %.2f ms CPU per sample)\n",
                static_cast<double>(s.faults) / got, w.samples,
                static_cast<double>(w.faults) / w.samples, 1e3 * w.cpu / w.samples);
    return 0;
  }
  std::fprintf(stderr, "usage: %s json FILE | train [N] [THREADS] | cpu [N]\n", argv[0]);
  return 2;
}

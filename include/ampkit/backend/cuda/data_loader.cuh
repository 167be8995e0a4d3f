/// @brief The data loader on the CUDA backend: batch slots in pinned memory, each batch copied to
/// device tensors on a dedicated copy stream while the compute stream works on the previous one.
///
/// Synchronisation (no device-wide or compute-stream sync anywhere):
/// - the compute stream waits on a "copied" event before it reads a batch (cudaStreamWaitEvent);
/// - before the copy stream overwrites a device buffer, it waits on an event recorded on the
///   compute stream after all work that was enqueued while that buffer was current;
/// - the pinned slot goes back to the loader's workers only once its copy has finished: a host
///   wait on the copy event alone, which has normally completed long before (the copy of
///   batch b overlaps the forward/backward of batch b-1).
#pragma once

#include <cuda_runtime.h>

#include <optional>
#include <vector>

#include "ampkit/backend/cuda/check.cuh"
#include "ampkit/backend/cuda/context.cuh"
#include "ampkit/backend/cuda/memory.cuh"
#include "ampkit/data/loader.hpp"

namespace ampkit::cuda {

/// data::Loader memory policy: page-locked host memory, so batch copies are truly asynchronous.
struct PinnedBatchMemory {
  void* allocate(std::size_t bytes) {
    void* p = nullptr;
    AMPKIT_CUDA_CHECK(cudaMallocHost(&p, bytes));
    return p;
  }
  void deallocate(void* p, std::size_t) noexcept { (void)cudaFreeHost(p); }
};

/// A batch on the device: one (n, H, W, C) view per field, valid until the next call to next().
struct DeviceBatch {
  std::int64_t index = 0;
  int n = 0;
  std::vector<TensorView<float>> fields;
  std::vector<std::size_t> dataset_indices;
};

class DeviceLoader {
 public:
  /// @param n_device_buffers device copies of a batch in rotation (2: one being read by the
  ///        compute stream, one being filled by the copy stream)
  DeviceLoader(const Cuda& cuda, data::LoaderConfig cfg, std::vector<Shape> sample_shapes,
               data::Loader<PinnedBatchMemory>::SampleFn fn, int n_device_buffers = 2)
      : cuda_(cuda), shapes_(sample_shapes), loader_(cfg, sample_shapes, std::move(fn)) {
    AMPKIT_CHECK(n_device_buffers >= 1, "DeviceLoader: need at least one device buffer");
    AMPKIT_CUDA_CHECK(cudaStreamCreateWithFlags(&copy_stream_, cudaStreamNonBlocking));
    bufs_.resize(n_device_buffers);
    for (auto& b : bufs_) {
      for (Shape s : shapes_) {
        s.n = cfg.batch_size;
        b.fields.push_back(cuda.tensor<float>(s));
      }
      AMPKIT_CUDA_CHECK(cudaEventCreateWithFlags(&b.copied, cudaEventDisableTiming));
      AMPKIT_CUDA_CHECK(cudaEventCreateWithFlags(&b.released, cudaEventDisableTiming));
    }
  }
  DeviceLoader(const DeviceLoader&) = delete;
  DeviceLoader& operator=(const DeviceLoader&) = delete;
  ~DeviceLoader() {
    if (copy_stream_) (void)cudaStreamSynchronize(copy_stream_);
    for (auto& b : bufs_) {
      if (b.copied) (void)cudaEventDestroy(b.copied);
      if (b.released) (void)cudaEventDestroy(b.released);
    }
    if (copy_stream_) (void)cudaStreamDestroy(copy_stream_);
  }

  void begin_epoch(std::uint64_t epoch, std::vector<std::size_t> order) {
    wait_pending_copy();
    loader_.begin_epoch(epoch, std::move(order));
  }

  /// The next batch on the device (the compute stream is already ordered after its copy), or
  /// nullopt at the end of the epoch. Errors of the host loader propagate unchanged.
  std::optional<DeviceBatch> next() {
    wait_pending_copy();  // the previous pinned slot may now go back to the workers
    Buf& buf = bufs_[counter_ % bufs_.size()];
    // Everything enqueued on the compute stream so far may read this buffer's previous batch.
    AMPKIT_CUDA_CHECK(cudaEventRecord(buf.released, cuda_.stream()));
    auto b = loader_.next();
    if (!b) return std::nullopt;
    AMPKIT_CUDA_CHECK(cudaStreamWaitEvent(copy_stream_, buf.released, 0));
    DeviceBatch out;
    out.index = b->index;
    out.n = b->n;
    out.dataset_indices = b->dataset_indices;
    for (std::size_t f = 0; f < shapes_.size(); ++f) {
      AMPKIT_CUDA_CHECK(cudaMemcpyAsync(buf.fields[f].data(), b->fields[f].data, b->fields[f].bytes(),
                                        cudaMemcpyHostToDevice, copy_stream_));
      out.fields.emplace_back(buf.fields[f].data(), b->fields[f].shape);
    }
    AMPKIT_CUDA_CHECK(cudaEventRecord(buf.copied, copy_stream_));
    AMPKIT_CUDA_CHECK(cudaStreamWaitEvent(cuda_.stream(), buf.copied, 0));
    pending_ = &buf;
    ++counter_;
    return out;
  }

  data::LoaderReport report() const { return loader_.report(); }
  std::size_t batches_per_epoch() const { return loader_.batches_per_epoch(); }
  cudaStream_t copy_stream() const { return copy_stream_; }

 private:
  struct Buf {
    std::vector<DeviceTensor<float>> fields;
    cudaEvent_t copied = nullptr, released = nullptr;
  };
  void wait_pending_copy() {
    if (pending_) AMPKIT_CUDA_CHECK(cudaEventSynchronize(pending_->copied));
    pending_ = nullptr;
  }

  const Cuda& cuda_;
  std::vector<Shape> shapes_;
  data::Loader<PinnedBatchMemory> loader_;
  cudaStream_t copy_stream_ = nullptr;
  std::vector<Buf> bufs_;
  Buf* pending_ = nullptr;
  std::size_t counter_ = 0;
};

}  // namespace ampkit::cuda

/// @brief Device memory: the CUDA raw system for CachingAllocator, move-only DeviceBuffer /
/// DeviceTensor, pinned host buffers, and the scoped workspace.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <memory>
#include <type_traits>
#include <utility>

#include "ampkit/backend/cuda/check.cuh"
#include "ampkit/core/caching_allocator.hpp"
#include "ampkit/core/tensor.hpp"

namespace ampkit::cuda {

/// cudaMalloc/cudaFree and events, as CachingAllocator's raw system.
struct RawCudaMemory {
  using Stream = cudaStream_t;
  using Event = cudaEvent_t;

  void* malloc(std::size_t bytes) {
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, bytes);
    if (e == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      return nullptr;  // the allocator frees its cache and retries, then reports
    }
    AMPKIT_CUDA_CHECK(e);
    return p;
  }
  void free(void* p) noexcept { (void)cudaFree(p); }
  Event record(Stream s) {
    cudaEvent_t e;
    AMPKIT_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    AMPKIT_CUDA_CHECK(cudaEventRecord(e, s));
    return e;
  }
  bool done(const Event& e) {
    const cudaError_t r = cudaEventQuery(e);
    if (r == cudaErrorNotReady) {
      (void)cudaGetLastError();
      return false;
    }
    AMPKIT_CUDA_CHECK(r);
    return true;
  }
  void wait(const Event& e) noexcept { (void)cudaEventSynchronize(e); }
  void release(Event& e) noexcept { (void)cudaEventDestroy(e); }
  std::size_t free_bytes() {
    std::size_t f = 0, t = 0;
    (void)cudaMemGetInfo(&f, &t);
    return f;
  }
  std::size_t total_bytes() {
    std::size_t f = 0, t = 0;
    (void)cudaMemGetInfo(&f, &t);
    return t;
  }
};

using DeviceAllocator = CachingAllocator<RawCudaMemory>;

/// Owning device memory for `n` elements of T, from a caching allocator, in stream order.
/// Move-only; the allocator is shared so a buffer can never outlive it.
template <class T>
class DeviceBuffer {
  static_assert(std::is_trivially_copyable_v<T>);

 public:
  DeviceBuffer() = default;
  DeviceBuffer(std::shared_ptr<DeviceAllocator> alloc, std::size_t n, cudaStream_t stream)
      : alloc_(std::move(alloc)), size_(n) {
    if (n) data_ = static_cast<T*>(alloc_->allocate(n * sizeof(T), stream));
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept
      : alloc_(std::move(o.alloc_)), data_(std::exchange(o.data_, nullptr)),
        size_(std::exchange(o.size_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      reset();
      alloc_ = std::move(o.alloc_);
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }
  ~DeviceBuffer() { reset(); }

  void reset() noexcept {
    if (data_ && alloc_) alloc_->deallocate(data_);
    data_ = nullptr;
    size_ = 0;
  }
  T* data() const { return data_; }
  std::size_t size() const { return size_; }
  std::size_t bytes() const { return size_ * sizeof(T); }

 private:
  std::shared_ptr<DeviceAllocator> alloc_;
  T* data_ = nullptr;
  std::size_t size_ = 0;
};

/// An owning NHWC tensor in device memory.
template <class T>
class DeviceTensor {
 public:
  DeviceTensor() = default;
  DeviceTensor(DeviceBuffer<T> buf, Shape s) : buf_(std::move(buf)), shape_(s) {
    AMPKIT_CHECK(buf_.size() == static_cast<std::size_t>(s.numel()), "DeviceTensor: buffer holds ",
                 buf_.size(), " elements, shape ", s, " needs ", s.numel());
  }
  const Shape& shape() const { return shape_; }
  std::int64_t numel() const { return shape_.numel(); }
  T* data() const { return buf_.data(); }
  TensorView<T> view() const { return {buf_.data(), shape_}; }
  TensorView<const T> cview() const { return {buf_.data(), shape_}; }

 private:
  DeviceBuffer<T> buf_;
  Shape shape_{};
};

/// Page-locked host memory: the only host memory a copy engine reads asynchronously.
template <class T>
class PinnedBuffer {
  static_assert(std::is_trivially_copyable_v<T>);

 public:
  PinnedBuffer() = default;
  explicit PinnedBuffer(std::size_t n) : size_(n) {
    if (n) {
      void* p = nullptr;
      AMPKIT_CUDA_CHECK(cudaMallocHost(&p, n * sizeof(T)));
      data_ = static_cast<T*>(p);
    }
  }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  PinnedBuffer(PinnedBuffer&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  PinnedBuffer& operator=(PinnedBuffer&& o) noexcept {
    if (this != &o) {
      reset();
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }
  ~PinnedBuffer() { reset(); }
  void reset() noexcept {
    if (data_) (void)cudaFreeHost(data_);
    data_ = nullptr;
    size_ = 0;
  }
  T* data() const { return data_; }
  std::size_t size() const { return size_; }
  T& operator[](std::size_t i) const { return data_[i]; }

 private:
  T* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace ampkit::cuda

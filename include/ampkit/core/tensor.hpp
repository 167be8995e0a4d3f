/// @brief NHWC shapes, non-owning tensor views and the owning host tensor.
///
/// Why NHWC: cuDNN's tensor-core convolutions and our own elementwise/BN kernels read channels
/// contiguously; NCHW would cost a transpose around every conv (PyTorch's "channels_last" is the
/// same layout). Every tensor in ampkit is a 4-D NHWC view; lower-rank data uses leading 1s
/// (a bias of K values is (1,1,1,K); a conv weight is (K,R,S,C/groups), i.e. KRSC).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <ostream>
#include <span>
#include <type_traits>
#include <utility>

#include "ampkit/config.hpp"
#include "ampkit/core/error.hpp"

namespace ampkit {

/// (N, H, W, C), outermost first; C is contiguous.
struct Shape {
  std::int64_t n = 0, h = 0, w = 0, c = 0;

  AMPKIT_HOST_DEVICE constexpr std::int64_t numel() const { return n * h * w * c; }
  constexpr bool operator==(const Shape&) const = default;
  friend std::ostream& operator<<(std::ostream& os, const Shape& s) {
    return os << "(" << s.n << "," << s.h << "," << s.w << "," << s.c << ")";
  }
};

/// A non-owning view of NHWC data on the host or on a device (the view does not know which;
/// the op it is passed to does). Cheap to copy; `TensorView<const T>` for inputs.
template <class T>
struct TensorView {
  T* data = nullptr;
  Shape shape{};

  TensorView() = default;
  AMPKIT_HOST_DEVICE constexpr TensorView(T* d, Shape s) : data(d), shape(s) {}
  /// A view of mutable data converts to a view of const data, never the reverse.
  template <class U>
    requires(std::is_same_v<const U, T> && !std::is_same_v<U, T>)
  AMPKIT_HOST_DEVICE constexpr TensorView(TensorView<U> o) : data(o.data), shape(o.shape) {}

  AMPKIT_HOST_DEVICE constexpr std::int64_t numel() const { return shape.numel(); }
  AMPKIT_HOST_DEVICE constexpr std::size_t bytes() const {
    return static_cast<std::size_t>(numel()) * sizeof(T);
  }
  AMPKIT_HOST_DEVICE constexpr std::int64_t offset(std::int64_t n, std::int64_t h, std::int64_t w,
                                                   std::int64_t c) const {
    return ((n * shape.h + h) * shape.w + w) * shape.c + c;
  }
  AMPKIT_HOST_DEVICE constexpr T& operator()(std::int64_t n, std::int64_t h, std::int64_t w,
                                             std::int64_t c) const {
    return data[offset(n, h, w, c)];
  }
  AMPKIT_HOST_DEVICE constexpr T& operator[](std::int64_t i) const { return data[i]; }
  std::span<T> span() const { return {data, static_cast<std::size_t>(numel())}; }
  /// The n-th image as a (1,H,W,C) view.
  TensorView image(std::int64_t n) const {
    AMPKIT_CHECK(n >= 0 && n < shape.n, "image index ", n, " out of range for batch ", shape.n);
    return {data + n * shape.h * shape.w * shape.c, {1, shape.h, shape.w, shape.c}};
  }
};

/// Check that a view has the expected shape, naming the op and the argument in the message.
template <class T>
void check_shape(const char* op, const char* arg, const TensorView<T>& t, Shape expected) {
  AMPKIT_CHECK(t.shape == expected, op, ": ", arg, " has shape ", t.shape, ", expected ", expected,
               " (N,H,W,C)");
  AMPKIT_CHECK(t.data != nullptr || t.numel() == 0, op, ": ", arg, " has no data");
}

/// Live and peak bytes of every HostBuffer in the process: the host backend's allocation count
/// (tests compare it with train/memory_plan.hpp's dry run). Relaxed atomics: a count, not a
/// synchronisation; the loader's worker threads allocate too.
struct HostMemoryStats {
  std::size_t live = 0;
  std::size_t peak = 0;
};

namespace detail {
struct HostMemoryCounter {
  std::atomic<std::size_t> live{0}, peak{0};
  void add(std::size_t b) {
    const std::size_t now = live.fetch_add(b, std::memory_order_relaxed) + b;
    std::size_t p = peak.load(std::memory_order_relaxed);
    while (now > p && !peak.compare_exchange_weak(p, now, std::memory_order_relaxed)) {
    }
  }
  void sub(std::size_t b) { live.fetch_sub(b, std::memory_order_relaxed); }
};
inline HostMemoryCounter& host_memory_counter() {
  static HostMemoryCounter c;
  return c;
}
}  // namespace detail

inline HostMemoryStats host_memory_stats() {
  auto& c = detail::host_memory_counter();
  return {c.live.load(std::memory_order_relaxed), c.peak.load(std::memory_order_relaxed)};
}
/// Start a new high-water mark at the current live level.
inline void reset_host_memory_peak() {
  auto& c = detail::host_memory_counter();
  c.peak.store(c.live.load(std::memory_order_relaxed), std::memory_order_relaxed);
}

/// Owning, 64-byte aligned host memory. Move-only: copying a large buffer by accident is a
/// silent performance bug, so it has to be spelled `clone()`.
template <class T>
class HostBuffer {
  static_assert(std::is_trivially_copyable_v<T>, "HostBuffer holds trivially copyable elements");

 public:
  HostBuffer() = default;
  explicit HostBuffer(std::size_t n) : size_(n) {
    if (n) {
      data_ = static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t{64}));
      detail::host_memory_counter().add(n * sizeof(T));
    }
  }
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;
  HostBuffer(HostBuffer&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  HostBuffer& operator=(HostBuffer&& o) noexcept {
    if (this != &o) {
      release();
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }
  ~HostBuffer() { release(); }

  T* data() { return data_; }
  const T* data() const { return data_; }
  std::size_t size() const { return size_; }
  T& operator[](std::size_t i) { return data_[i]; }
  const T& operator[](std::size_t i) const { return data_[i]; }
  T* begin() { return data_; }
  T* end() { return data_ + size_; }
  const T* begin() const { return data_; }
  const T* end() const { return data_ + size_; }
  HostBuffer clone() const {
    HostBuffer b(size_);
    if (size_) std::memcpy(b.data_, data_, size_ * sizeof(T));
    return b;
  }

 private:
  void release() noexcept {
    if (data_) {
      ::operator delete(data_, std::align_val_t{64});
      detail::host_memory_counter().sub(size_ * sizeof(T));
    }
    data_ = nullptr;
    size_ = 0;
  }
  T* data_ = nullptr;
  std::size_t size_ = 0;
};

/// An owning NHWC tensor in host memory.
template <class T>
class HostTensor {
 public:
  HostTensor() = default;
  explicit HostTensor(Shape s) : shape_(s), buf_(static_cast<std::size_t>(s.numel())) {
    AMPKIT_CHECK(s.n >= 0 && s.h >= 0 && s.w >= 0 && s.c >= 0, "negative tensor shape ", s);
  }
  HostTensor(Shape s, T fill) : HostTensor(s) {
    for (auto& x : buf_) x = fill;
  }

  const Shape& shape() const { return shape_; }
  std::int64_t numel() const { return shape_.numel(); }
  T* data() { return buf_.data(); }
  const T* data() const { return buf_.data(); }
  TensorView<T> view() { return {buf_.data(), shape_}; }
  TensorView<const T> view() const { return {buf_.data(), shape_}; }
  TensorView<const T> cview() const { return {buf_.data(), shape_}; }
  T& operator[](std::int64_t i) { return buf_[static_cast<std::size_t>(i)]; }
  const T& operator[](std::int64_t i) const { return buf_[static_cast<std::size_t>(i)]; }
  T& operator()(std::int64_t n, std::int64_t h, std::int64_t w, std::int64_t c) {
    return view()(n, h, w, c);
  }
  const T& operator()(std::int64_t n, std::int64_t h, std::int64_t w, std::int64_t c) const {
    return view()(n, h, w, c);
  }
  std::span<T> span() { return {buf_.data(), buf_.size()}; }
  std::span<const T> span() const { return {buf_.data(), buf_.size()}; }
  HostTensor clone() const {
    HostTensor t;
    t.shape_ = shape_;
    t.buf_ = buf_.clone();
    return t;
  }

 private:
  Shape shape_{};
  HostBuffer<T> buf_;
};

}  // namespace ampkit

/// @brief ampkit::Meta, a shape-only backend: tensors have shapes and (fake) addresses but no
/// memory, ops compute nothing, and every tensor allocation goes through the same
/// CachingAllocator policy as ampkit::Cuda, so that running the REAL model code on it records the
/// sizes and lifetimes of every device tensor a step allocates, without touching memory.
///
/// Why a backend and not a formula: the models are written once over a backend (ops found by
/// argument-dependent lookup on the context), and every tensor they keep or free is a
/// `ctx.tensor<T>()`. A dry run on this context is therefore the model's own allocation sequence:
/// a layer that starts keeping one more tensor for backward shows up in the plan with no edit
/// here (train/memory_plan.hpp). A hand-written formula would drift the day a layer changes.
///
/// Two counts are kept:
///   requested()      bytes exactly as asked (sum of live tensor sizes), live and peak: what the
///                    host backend allocates for the same code (tests compare the two);
///   memory_stats()   ampkit::CachingAllocator's statistics over a fake raw system: the 512 B /
///                    512 KiB rounding, the block reuse (a cached block up to twice the request)
///                    and the reserved high-water mark, as the CUDA allocator reports them.
/// What it cannot see: scratch a CUDA op asks for inside itself (ctx.workspace(): cuDNN
/// workspaces, the deformable conv's fp32 dx scratch, BN partials) and memory outside the
/// allocator (CUDA context, cuDNN/cuBLAS handles). train/memory_plan.hpp adds a stated allowance.
///
/// Addresses are fake (from 2^46 upward, never mapped by this code): a stray dereference faults
/// instead of reading garbage. The ops are in backend/meta/ops.hpp.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <source_location>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "ampkit/core/caching_allocator.hpp"
#include "ampkit/core/error.hpp"
#include "ampkit/core/tensor.hpp"

namespace ampkit {

namespace meta {

/// CachingAllocator's raw system without memory: unique fake addresses, one stream, events that
/// are always complete, and an unlimited pool (the plan decides what fits, not the dry run).
struct FakeRawMemory {
  using Stream = int;
  using Event = int;

  static constexpr std::uintptr_t kBase = std::uintptr_t{1} << 46;
  std::uintptr_t next = kBase;

  void* malloc(std::size_t bytes) {
    void* p = reinterpret_cast<void*>(next);
    next += (bytes + 511) / 512 * 512;  // keeps every address unique and 512-byte aligned
    return p;
  }
  void free(void*) {}
  Event record(Stream) { return 0; }
  bool done(const Event&) { return true; }
  void wait(const Event&) {}
  void release(Event&) {}
  std::size_t free_bytes() { return ~std::size_t{0} >> 1; }
  std::size_t total_bytes() { return ~std::size_t{0} >> 1; }
};

using MetaAllocator = CachingAllocator<FakeRawMemory>;

/// Bytes as requested (no rounding, no cache).
struct RequestedBytes {
  std::size_t live = 0;
  std::size_t peak = 0;
  std::size_t n_allocs = 0;
};

/// Where a tensor was allocated: the `ctx.tensor<T>()` call in the layer code. The line says the
/// role (a conv output, a BN output, a saved statistic, a gradient) without any tag in the layers.
struct AllocationSite {
  const char* file = "";
  const char* function = "";
  std::uint_least32_t line = 0;
  friend bool operator<(const AllocationSite& a, const AllocationSite& b) {
    const int f = std::string_view(a.file).compare(b.file);
    return f != 0 ? f < 0 : a.line < b.line;
  }
};

/// Live requested bytes and tensor count of one site.
struct SiteBytes {
  std::size_t bytes = 0;
  std::size_t count = 0;
};

/// The shared state of one Meta context: the allocator and the exact request count. Buffers
/// hold a shared_ptr to it, so a tensor may outlive its context safely (as DeviceBuffer does).
struct MetaPool {
  explicit MetaPool(std::size_t large_granularity = MetaAllocator::kLargeGranularity)
      : alloc(FakeRawMemory{}, large_granularity) {}
  MetaAllocator alloc;
  RequestedBytes req;
  /// Live bytes per allocation site, kept only while track_sites is set (Meta::track_sites):
  /// the breakdown of a memory plan (train/memory_plan.hpp, --plan-detail).
  bool track_sites = false;
  std::map<AllocationSite, SiteBytes> sites;
  std::map<AllocationSite, SiteBytes> sites_at_peak;  ///< `sites` when req.peak was last raised
};

/// Owning "memory" for n elements: an address from the pool, counted while alive. Move-only.
template <class T>
class MetaBuffer {
 public:
  MetaBuffer() = default;
  MetaBuffer(std::shared_ptr<MetaPool> pool, std::size_t n, AllocationSite site = {})
      : pool_(std::move(pool)), size_(n), site_(site) {
    if (n) {
      data_ = static_cast<T*>(pool_->alloc.allocate(n * sizeof(T), 0));
      pool_->req.live += bytes();
      pool_->req.peak = std::max(pool_->req.peak, pool_->req.live);
      ++pool_->req.n_allocs;
      if (pool_->track_sites) {
        auto& b = pool_->sites[site_];
        b.bytes += bytes();
        ++b.count;
        tracked_ = true;
        if (pool_->req.peak == pool_->req.live) pool_->sites_at_peak = pool_->sites;
      }
    }
  }
  MetaBuffer(const MetaBuffer&) = delete;
  MetaBuffer& operator=(const MetaBuffer&) = delete;
  MetaBuffer(MetaBuffer&& o) noexcept
      : pool_(std::move(o.pool_)),
        data_(std::exchange(o.data_, nullptr)),
        size_(std::exchange(o.size_, 0)),
        site_(o.site_),
        tracked_(std::exchange(o.tracked_, false)) {}
  MetaBuffer& operator=(MetaBuffer&& o) noexcept {
    if (this != &o) {
      reset();
      pool_ = std::move(o.pool_);
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
      site_ = o.site_;
      tracked_ = std::exchange(o.tracked_, false);
    }
    return *this;
  }
  ~MetaBuffer() { reset(); }

  void reset() noexcept {
    if (data_ && pool_) {
      pool_->alloc.deallocate(data_);
      pool_->req.live -= bytes();
      if (tracked_) {
        auto& b = pool_->sites[site_];
        b.bytes -= bytes();
        --b.count;
      }
    }
    data_ = nullptr;
    size_ = 0;
    tracked_ = false;
  }
  T* data() const { return data_; }
  std::size_t size() const { return size_; }
  std::size_t bytes() const { return size_ * sizeof(T); }

 private:
  std::shared_ptr<MetaPool> pool_;
  T* data_ = nullptr;
  std::size_t size_ = 0;
  AllocationSite site_;
  bool tracked_ = false;  ///< counted in pool_->sites (allocated while tracking was on)
};

/// A shape-only NHWC tensor: the interface of cuda::DeviceTensor / HostTensor that layers use.
template <class T>
class MetaTensor {
 public:
  MetaTensor() = default;
  MetaTensor(MetaBuffer<T> buf, Shape s) : buf_(std::move(buf)), shape_(s) {}
  const Shape& shape() const { return shape_; }
  std::int64_t numel() const { return shape_.numel(); }
  T* data() const { return buf_.data(); }
  TensorView<T> view() const { return {buf_.data(), shape_}; }
  TensorView<const T> cview() const { return {buf_.data(), shape_}; }

 private:
  MetaBuffer<T> buf_;
  Shape shape_{};
};

}  // namespace meta

/// Backend tag and context of the shape-only backend (see the file comment). Same allocation and
/// copy interface as ampkit::Host / ampkit::Cuda; copies do nothing, to_host() returns zeros.
class Meta {
 public:
  /// @param large_granularity  the caching allocator's rounding of large requests (as
  ///                           ampkit::Cuda's; another value models another allocator)
  explicit Meta(std::size_t large_granularity = meta::MetaAllocator::kLargeGranularity)
      : pool_(std::make_shared<meta::MetaPool>(large_granularity)) {}
  Meta(const Meta&) = delete;
  Meta& operator=(const Meta&) = delete;

  static constexpr const char* name() { return "meta"; }
  /// Tells generic code (nn::ParameterStore) that values are never read: skip host-side work
  /// that only produces values (weight initialisation).
  static constexpr bool kShapeOnly = true;
  void synchronize() const {}

  /// `loc` is the caller's line (defaulted): the allocation site that track_sites() counts.
  template <class T>
  meta::MetaTensor<T> tensor(Shape s, std::source_location loc = std::source_location::current()) const {
    AMPKIT_CHECK(s.n >= 0 && s.h >= 0 && s.w >= 0 && s.c >= 0, "negative tensor shape ", s);
    return meta::MetaTensor<T>(meta::MetaBuffer<T>(pool_, static_cast<std::size_t>(s.numel()),
                                                   meta::AllocationSite{loc.file_name(), loc.function_name(), loc.line()}),
                               s);
  }
  template <class T>
  meta::MetaTensor<T> to_device(const HostTensor<T>& h) const {
    return tensor<T>(h.shape());
  }
  template <class T>
  void copy_to_device(TensorView<T> dst, std::span<const T> src) const {
    AMPKIT_CHECK(static_cast<std::size_t>(dst.numel()) == src.size(), "copy_to_device: destination holds ",
                 dst.numel(), " elements, source ", src.size());
  }
  template <class T>
  HostTensor<std::remove_const_t<T>> to_host(TensorView<T> d) const {
    return HostTensor<std::remove_const_t<T>>(d.shape, std::remove_const_t<T>{});
  }

  /// The CUDA allocator's view of the dry run (rounded blocks, reuse, reserved).
  MemoryStats memory_stats() const { return pool_->alloc.stats(); }
  /// Exact requested bytes, live and peak.
  meta::RequestedBytes requested() const { return pool_->req; }
  /// Count live bytes per allocation site from now on (tensors allocated before are not counted).
  void track_sites(bool on = true) { pool_->track_sites = on; }
  /// Live requested bytes per allocation site (sites that have none left included, with 0).
  const std::map<meta::AllocationSite, meta::SiteBytes>& live_by_site() const { return pool_->sites; }
  /// live_by_site() at the requested high-water mark since the last reset_peak().
  const std::map<meta::AllocationSite, meta::SiteBytes>& live_by_site_at_peak() const { return pool_->sites_at_peak; }
  /// Start a new high-water mark at the current level (both counts).
  void reset_peak() {
    pool_->alloc.reset_peak();
    pool_->req.peak = pool_->req.live;
    pool_->sites_at_peak = pool_->sites;
  }

 private:
  std::shared_ptr<meta::MetaPool> pool_;
};

}  // namespace ampkit

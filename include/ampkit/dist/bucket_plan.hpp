/// @brief Gradient buckets for data-parallel training: which parameters share one all-reduce,
/// and, during backward, which buckets have all their gradients and may be reduced now.
///
/// Parameters are numbered in forward order and their gradients sit in one flat buffer in that
/// order. Backward produces gradients roughly in REVERSE order, so buckets are formed from the
/// last parameter backwards: bucket 0 holds the last layers' gradients, is complete first, and
/// its all-reduce overlaps the rest of backward. Because the parameters of one bucket are
/// adjacent in the flat buffer, a bucket is one contiguous range and one NCCL call, no packing.
/// The first bucket is small (1 MiB, as in PyTorch DDP) so communication starts early; the rest
/// are up to 25 MiB: large enough to run NCCL near its bus bandwidth, small enough to overlap.
#pragma once

#include <algorithm>
#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include "ampkit/core/error.hpp"

namespace ampkit::dist {

struct BucketOptions {
  std::size_t bucket_bytes = std::size_t{25} << 20;      ///< cap of every bucket but the first
  std::size_t first_bucket_bytes = std::size_t{1} << 20;  ///< cap of bucket 0 (the last layers)
  std::size_t element_bytes = 4;                          ///< fp32 gradients
};

/// Parameters [first, first + count) in forward order.
struct ParamRange {
  std::size_t first = 0;
  std::size_t count = 1;
};

/// One all-reduce: parameters [first_param, end_param) and their elements [begin, end) of the
/// flat gradient buffer (padding between parameters, if any, travels along).
struct Bucket {
  std::size_t first_param = 0, end_param = 0;
  std::size_t begin = 0, end = 0;
  std::size_t numel() const { return end - begin; }
};

/// Buckets [first, end), in launch order.
struct BucketSpan {
  std::size_t first = 0, end = 0;
  bool empty() const { return first == end; }
  std::size_t size() const { return end - first; }
};

/// The fixed assignment of parameters to buckets.
class BucketPlan {
 public:
  /// @param sizes    elements of each parameter, forward order (each > 0)
  /// @param offsets  element offset of each parameter in the flat buffer, increasing and
  ///                 non-overlapping; empty means packed back to back
  explicit BucketPlan(std::span<const std::size_t> sizes, BucketOptions opts = {},
                      std::span<const std::size_t> offsets = {})
      : opts_(opts), sizes_(sizes.begin(), sizes.end()) {
    AMPKIT_CHECK(!sizes.empty(), "BucketPlan: no parameters");
    AMPKIT_CHECK(opts.element_bytes > 0 && opts.bucket_bytes >= opts.element_bytes &&
                     opts.first_bucket_bytes >= opts.element_bytes,
                 "BucketPlan: bucket caps (", opts.first_bucket_bytes, ", ", opts.bucket_bytes,
                 " bytes) must hold at least one ", opts.element_bytes, "-byte element");
    AMPKIT_CHECK(offsets.empty() || offsets.size() == sizes.size(), "BucketPlan: ", offsets.size(),
                 " offsets for ", sizes.size(), " parameters");
    offsets_.resize(sizes.size());
    std::size_t next = 0;
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      AMPKIT_CHECK(sizes[i] > 0, "BucketPlan: parameter ", i, " has no elements");
      offsets_[i] = offsets.empty() ? next : offsets[i];
      AMPKIT_CHECK(offsets_[i] >= next, "BucketPlan: parameter ", i, " at offset ", offsets_[i],
                   " overlaps the previous one, which ends at ", next);
      next = offsets_[i] + sizes[i];
    }
    extent_ = next;

    // Walk backwards; close a bucket before it would pass its cap. A parameter larger than the
    // cap gets a bucket of its own: gradients are never split across buckets.
    bucket_of_.resize(sizes.size());
    std::size_t end_param = sizes.size();
    auto close = [&](std::size_t first_param) {
      Bucket b;
      b.first_param = first_param;
      b.end_param = end_param;
      b.begin = offsets_[first_param];
      b.end = offsets_[end_param - 1] + sizes_[end_param - 1];
      for (std::size_t p = first_param; p < end_param; ++p) bucket_of_[p] = buckets_.size();
      buckets_.push_back(b);
      end_param = first_param;
    };
    for (std::size_t p = sizes.size(); p-- > 0;) {
      const std::size_t cap = buckets_.empty() ? opts.first_bucket_bytes : opts.bucket_bytes;
      // Span in the buffer if p joins: from p's offset to the bucket's end, padding included.
      const std::size_t span_bytes =
          (offsets_[end_param - 1] + sizes_[end_param - 1] - offsets_[p]) * opts.element_bytes;
      if (p + 1 < end_param && span_bytes > cap) close(p + 1);
    }
    close(0);
  }

  std::size_t n_params() const { return sizes_.size(); }
  std::size_t n_buckets() const { return buckets_.size(); }
  std::span<const Bucket> buckets() const { return buckets_; }
  const Bucket& bucket(std::size_t i) const { return buckets_.at(i); }
  std::size_t bucket_of(std::size_t param) const { return bucket_of_.at(param); }
  std::size_t size(std::size_t param) const { return sizes_.at(param); }
  std::size_t offset(std::size_t param) const { return offsets_.at(param); }
  /// Elements the flat buffer must have: the end of the last parameter.
  std::size_t extent() const { return extent_; }
  const BucketOptions& options() const { return opts_; }

  /// The parameters that exactly cover elements [begin, end) of the flat buffer.
  ParamRange params_covering(std::size_t begin, std::size_t end) const {
    AMPKIT_CHECK(begin < end && end <= extent_, "gradient range [", begin, ", ", end,
                 ") is empty or outside the flat buffer of ", extent_, " elements");
    const auto first = std::lower_bound(offsets_.begin(), offsets_.end(), begin) - offsets_.begin();
    AMPKIT_CHECK(static_cast<std::size_t>(first) < offsets_.size() &&
                     offsets_[static_cast<std::size_t>(first)] == begin,
                 "gradient range [", begin, ", ", end, ") does not start at a parameter boundary");
    std::size_t last = static_cast<std::size_t>(first);
    while (last < sizes_.size() && offsets_[last] + sizes_[last] < end) ++last;
    AMPKIT_CHECK(last < sizes_.size() && offsets_[last] + sizes_[last] == end, "gradient range [", begin, ", ",
                 end, ") does not end at a parameter boundary");
    return {static_cast<std::size_t>(first), last + 1 - static_cast<std::size_t>(first)};
  }

 private:
  BucketOptions opts_;
  std::vector<std::size_t> sizes_, offsets_, bucket_of_;
  std::vector<Bucket> buckets_;
  std::size_t extent_ = 0;
};

/// Readiness during one backward pass. Buckets are released strictly in index order, whatever
/// order gradients arrive in: NCCL matches collectives across ranks by issue order, so every rank
/// must issue the same sequence even if its backward marks parameters in a different order.
class BucketTracker {
 public:
  explicit BucketTracker(const BucketPlan& plan)
      : plan_(&plan), ready_(plan.n_params(), false), pending_(plan.n_buckets()) {
    reset();
  }

  /// Start a new backward pass.
  void reset() {
    std::fill(ready_.begin(), ready_.end(), false);
    for (std::size_t b = 0; b < plan_->n_buckets(); ++b) {
      const Bucket& k = plan_->bucket(b);
      pending_[b] = k.end_param - k.first_param;
    }
    next_ = 0;
  }

  /// Mark parameters' gradients final. Returns the buckets that may be reduced now (possibly
  /// none, possibly several).
  BucketSpan mark_ready(ParamRange r) {
    AMPKIT_CHECK(r.count > 0 && r.first + r.count <= plan_->n_params(), "mark_ready: parameters [", r.first,
                 ", ", r.first + r.count, ") outside the ", plan_->n_params(), " parameters");
    for (std::size_t p = r.first; p < r.first + r.count; ++p) {
      AMPKIT_CHECK(!ready_[p], "mark_ready: parameter ", p, " (bucket ", plan_->bucket_of(p),
                   ") was marked ready twice in one backward pass");
      ready_[p] = true;
      --pending_[plan_->bucket_of(p)];
    }
    const std::size_t first = next_;
    while (next_ < plan_->n_buckets() && pending_[next_] == 0) ++next_;
    return {first, next_};
  }

  bool all_released() const { return next_ == plan_->n_buckets(); }
  std::size_t n_released() const { return next_; }

  /// "parameters 3, 7 (buckets 2, 2)": for the error when backward ends with gaps.
  std::string unready() const {
    std::string s;
    int n = 0;
    for (std::size_t p = 0; p < ready_.size(); ++p) {
      if (ready_[p]) continue;
      if (n++ < 12) s += (s.empty() ? "" : ", ") + std::to_string(p);
    }
    if (n > 12) s += ", ... (" + std::to_string(n) + " in all)";
    return s;
  }

 private:
  const BucketPlan* plan_;
  std::vector<bool> ready_;
  std::vector<std::size_t> pending_;
  std::size_t next_ = 0;
};

}  // namespace ampkit::dist

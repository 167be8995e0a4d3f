/// @brief nn::BranchScope: run a model's independent branches concurrently where the backend can.
///
/// On ampkit::Cuda a scope forks the compute stream into one stream per branch
/// (Cuda::fork_branches), enter(b) sends the ops that follow to branch b's stream, and join() (or
/// the destructor, when unwinding) makes the compute stream wait for all of them. On a backend
/// without streams (Host, the memory plan's Meta) every call is a no-op and the branches run one
/// after another, as written. The results are the same either way: each branch's ops run in the
/// same order on their own tensors; only their overlap in time changes.
///
/// A branch must touch only its own tensors and the read-only inputs shared by all branches
/// (no branch may read what another writes inside the same scope). Gradient-ready notifications
/// made inside the scope are held and delivered at the join, on the compute stream
/// (ParameterStore::hold_grads_ready), so data-parallel reducers never see a gradient that a side
/// stream is still writing.
#pragma once

#include <concepts>
#include <cstdlib>

#include "ampkit/core/error.hpp"

namespace ampkit::nn {

/// Where a model forks (a bit each), for BranchScope's `site` and branch_sites().
enum BranchSite : unsigned {
  kBranchModuleForward = 1u,   ///< HRModule: the branches' blocks, forward
  kBranchFuseForward = 2u,     ///< HRModule: the fuse layers' outputs, forward
  kBranchModuleBackward = 4u,  ///< HRModule: the branches' blocks, backward
  kBranchHeadForward = 8u,     ///< DekrHead: heatmap and displacement branches, forward
  kBranchHeadBackward = 16u,   ///< DekrHead: the same, backward
};

/// Every fork site; the default of branch_sites().
inline constexpr unsigned kAllBranchSites =
    kBranchModuleForward | kBranchFuseForward | kBranchModuleBackward | kBranchHeadForward | kBranchHeadBackward;

/// The sites that fork when branch streams are on (Cuda::set_branch_streams, AMPKIT_BRANCH_STREAMS;
/// on by default): all of them. With every site on, the H200 gave eager steps bit-identical to
/// in-order ones and CUDA graph replays equal to eager runs (2026-12-01,
/// bench/results/gpu_h200_20261201_1059.md), and the fastest step (bench/NOTES.md).
inline constexpr unsigned kDefaultBranchSites = kAllBranchSites;

/// The sites allowed to fork (process-wide): AMPKIT_BRANCH_SITES, a decimal mask of BranchSite
/// bits, 0-31 (read once; default kDefaultBranchSites; 31 = every site). For measuring and
/// bisecting. Anything else stops the run with a message naming the variable.
inline unsigned& branch_sites() {
  static unsigned mask = [] {
    const char* v = std::getenv("AMPKIT_BRANCH_SITES");
    if (!v || !*v) return kDefaultBranchSites;
    char* end = nullptr;
    const unsigned long m = std::strtoul(v, &end, 10);
    AMPKIT_CHECK(*end == '\0' && v[0] != '-' && m <= kAllBranchSites, "AMPKIT_BRANCH_SITES='", v,
                 "': expected a decimal mask 0-31 (1 HRNet branches forward, 2 fuse forward, 4 HRNet branches "
                 "backward, 8 DEKR head forward, 16 DEKR head backward; unset = ", kDefaultBranchSites, ")");
    return static_cast<unsigned>(m);
  }();
  return mask;
}

template <class Backend, class Store>
class BranchScope {
  static constexpr bool kStreams = requires(Backend& c) {
    { c.fork_branches(2) } -> std::same_as<bool>;
    c.enter_branch(0);
    c.join_branches();
  };

 public:
  /// Fork `n` branches when `allow` (callers pass false on a module's first call, so that the
  /// algorithm timings of benchmark mode run without other branches on the device).
  BranchScope(Backend& ctx, const Store& store, int n, bool allow, BranchSite site) : ctx_(ctx), store_(store) {
    if constexpr (kStreams) {
      if (allow && (branch_sites() & site) && ctx_.fork_branches(n)) {
        forked_ = true;
        store_.hold_grads_ready();
      }
    }
  }
  BranchScope(const BranchScope&) = delete;
  BranchScope& operator=(const BranchScope&) = delete;
  ~BranchScope() {
    if constexpr (kStreams) {
      if (forked_) {
        ctx_.join_branches();
        store_.drop_held_grads_ready();
      }
    }
  }

  bool forked() const { return forked_; }
  /// The ops that follow belong to branch b (0 <= b < n).
  void enter(int b) {
    if constexpr (kStreams)
      if (forked_) ctx_.enter_branch(b);
  }
  /// Back to the compute stream once every branch is done; held notifications are delivered.
  void join() {
    if constexpr (kStreams) {
      if (!forked_) return;
      forked_ = false;
      ctx_.join_branches();
      store_.release_grads_ready();
    }
  }

 private:
  Backend& ctx_;
  const Store& store_;
  bool forked_ = false;
};

}  // namespace ampkit::nn

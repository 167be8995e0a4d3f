/// @brief Which dataset indices each rank reads in an epoch: mmengine's DefaultSampler semantics
/// (shuffle by seed + epoch, each rank a strided share, the list padded by wrapping around so
/// every rank gets ceil(n / world_size) samples).
#pragma once

#include <cstdint>
#include <numeric>
#include <vector>

#include "ampkit/core/error.hpp"
#include "ampkit/data/sample_rng.hpp"

namespace ampkit::data {

class DistributedSampler {
 public:
  /// @param round_up pad to world_size * ceil(n / world_size) by repeating from the start
  ///        (mmengine's default), so all ranks run the same number of iterations.
  DistributedSampler(std::size_t n, int world_size = 1, int rank = 0, bool shuffle = true,
                     std::uint64_t seed = 0, bool round_up = true)
      : n_(n), world_(world_size), rank_(rank), shuffle_(shuffle), seed_(seed), round_up_(round_up) {
    AMPKIT_CHECK(n > 0, "DistributedSampler: the dataset is empty");
    AMPKIT_CHECK(world_size > 0 && rank >= 0 && rank < world_size, "DistributedSampler: rank ",
                 rank, " is not in [0, ", world_size, ")");
  }

  /// Samples this rank reads per epoch.
  std::size_t num_samples() const {
    const std::size_t w = static_cast<std::size_t>(world_);
    return round_up_ ? (n_ + w - 1) / w
                     : (n_ > static_cast<std::size_t>(rank_) ? (n_ - rank_ + w - 1) / w : 0);
  }
  std::size_t total_size() const {
    return round_up_ ? num_samples() * static_cast<std::size_t>(world_) : n_;
  }

  /// This rank's indices for `epoch`. The permutation is a Fisher-Yates shuffle driven by
  /// SampleRng(seed + epoch), the same on every rank (mmengine seeds torch.randperm with
  /// seed + epoch; the permutation itself is ours).
  std::vector<std::size_t> indices(std::uint64_t epoch) const {
    std::vector<std::size_t> all(n_);
    std::iota(all.begin(), all.end(), std::size_t{0});
    if (shuffle_) {
      SampleRng rng(seed_ + epoch, 0x5eed, 0);
      for (std::size_t i = n_ - 1; i > 0; --i) {
        const std::size_t j = static_cast<std::size_t>(rng.next_u64() % (i + 1));
        std::swap(all[i], all[j]);
      }
    }
    const std::size_t total = total_size();
    std::vector<std::size_t> out;
    out.reserve(num_samples());
    for (std::size_t i = static_cast<std::size_t>(rank_); i < total; i += world_)
      out.push_back(all[i % n_]);
    return out;
  }

 private:
  std::size_t n_;
  int world_, rank_;
  bool shuffle_;
  std::uint64_t seed_;
  bool round_up_;
};

}  // namespace ampkit::data

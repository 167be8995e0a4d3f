/// @brief BatchNorm across ranks: averaging running statistics (mmengine's SyncBuffersHook, the
/// default at the end of each epoch) and, as an option (config key runtime.sync_bn), SyncBatchNorm:
/// the NCCL exchange the BatchNorm kernels call (batch_norm.cuh) to normalise with the global batch.
///
/// SyncBatchNorm numerics: each rank merges its per-channel Welford statistics (count, mean, M2)
/// as for a local BatchNorm; one all-gather brings every rank's triple to every rank, and each
/// merges them in rank order with Chan's formula, so all ranks hold bit-identical statistics and
/// the variance never goes through E[x^2] - E[x]^2 (which cancels catastrophically in fp32 for
/// channels whose mean is large next to their spread). Backward all-reduces (sum) the per-channel
/// [sum(dz) | sum(dz * (x - mean))].
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <span>
#include <vector>

#include "ampkit/backend/cuda/check.cuh"
#include "ampkit/backend/cuda/context.cuh"
#include "ampkit/backend/cuda/dist/process_group.cuh"
#include "ampkit/core/tensor.hpp"
#include "ampkit/precision.hpp"

namespace ampkit::dist {

/// Average fp32 buffers (running mean, running variance, ...) over the ranks, in one NCCL group.
inline void sync_batch_norm_buffers(ProcessGroup& pg, std::span<const std::span<float>> buffers,
                                    cudaStream_t stream) {
  std::vector<DeviceChunk> chunks;
  std::size_t n = 0;
  for (std::span<float> b : buffers) {
    if (b.empty()) continue;
    chunks.push_back({b.data(), b.size()});
    n += b.size();
  }
  if (chunks.empty()) return;
  pg.all_reduce_grouped(chunks, ncclFloat32, ReduceOp::kAvg, stream,
                        ::ampkit::detail::concat("all-reduce (avg) of ", format_count(n),
                                                 " BatchNorm running statistics"));
}

/// SyncBatchNorm over NCCL: installed on a context (Cuda::set_batch_norm_sync), it makes every
/// training-mode BatchNorm of that context normalise with the global batch's statistics
/// (batch_norm.cuh: each rank's per-channel Welford statistics are all-gathered and merged in
/// rank order; the backward's per-channel sums are all-reduced). The collectives run on the
/// context's stream, so they are captured into the trainer's CUDA graphs like the rest of the step.
class NcclBatchNormSync final : public cuda::BatchNormSync {
 public:
  explicit NcclBatchNormSync(ProcessGroup& pg) : pg_(&pg) {}
  int rank() const override { return pg_->rank(); }
  int world_size() const override { return pg_->world_size(); }
  void all_gather(float* data, std::size_t count, cudaStream_t stream) override {
    pg_->all_gather_inplace(data, count, stream, "all-gather of SyncBatchNorm statistics");
  }
  void all_reduce_sum(float* data, std::size_t count, cudaStream_t stream) override {
    pg_->all_reduce(data, count, ncclFloat32, ReduceOp::kSum, stream, "all-reduce (sum) of SyncBatchNorm gradient sums");
  }

 private:
  ProcessGroup* pg_;
};

}  // namespace ampkit::dist

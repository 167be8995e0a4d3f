/// @brief DEKR's training loss (mmpose DEKRHead.loss): heatmap MSE with per-pixel weights and the
/// crowd/unlabelled mask, plus the soft-weight smooth-L1 displacement loss. Shared definitions,
/// validation and the backend-independent DekrLoss object; kernels in backend/host/dekr_loss.hpp
/// and backend/cuda/dekr_loss.cuh.
///
///   L_hm   = heatmap_weight · (1 / (N·H·W·K')) · Σ m · w · (ŷ − y)²        (mean over ALL elements)
///   L_disp = displacement_weight · Σ w_d · s_β(d̂ − d) / max(N_pos, 1),
///            s_β(δ) = δ²/(2β) if |δ| < β else |δ| − β/2,  N_pos = #{w_d > 0} (x and y separately)
///   L      = L_hm + L_disp
/// Why fp32: the predictions are read in the storage type but every product, sum and the result
/// are fp32 (autocast runs mse_loss in fp32; mmpose's smooth-L1 promotes to fp32). DEKR's losses
/// are ~1e-4, whose squares and sums are far below fp16's normal range.
///
/// Backward: dL_dŷ = heatmap_weight · 2·m·w·(ŷ − y) / numel,
///           dL_dd̂ = displacement_weight · w_d · s'_β(δ) / max(N_pos, 1),   s' = δ/β or sign(δ),
/// each multiplied by `scale` (the device-resident loss scale, optional) × `factor` (e.g.
/// 1/accumulation count) and rounded ONCE to the storage type. Both gradients are WRITTEN (=).
///
/// Layouts (NHWC): heatmaps (N,H,W,K+1) in T; displacements (N,H,W,2K) in T; targets fp32:
/// gt_heatmaps and heatmap_weights (N,H,W,K+1), heatmap_mask (N,H,W,1) broadcast over channels or
/// (N,H,W,K+1), or empty for no mask; gt_displacements and displacement_weights (N,H,W,2K).
/// The result is an fp32 (1,1,1,4) tensor on the backend: [total, heatmap, displacement, N_pos],
/// left on the device so a training step needs no host synchronisation.
#pragma once

#include <cstdint>

#include "ampkit/core/error.hpp"
#include "ampkit/core/tensor.hpp"
#include "ampkit/precision.hpp"

namespace ampkit {

/// mmpose's DEKR config values (ablations vary both weights).
struct DekrLossConfig {
  float heatmap_weight = 1.f;          ///< KeypointMSELoss loss_weight
  float displacement_weight = 0.002f;  ///< SoftWeightSmoothL1Loss loss_weight
  float beta = 1.f / 9.f;              ///< smooth-L1 transition point
};

/// Index of each value in the loss result tensor.
enum class DekrLossValue : int { kTotal = 0, kHeatmap = 1, kDisplacement = 2, kNumPositive = 3 };

/// Predictions (storage type) and targets (fp32) of one batch.
template <class T>
struct DekrLossInputs {
  TensorView<const T> heatmaps, displacements;
  TensorView<const float> gt_heatmaps, heatmap_weights, heatmap_mask;
  TensorView<const float> gt_displacements, displacement_weights;

  void validate(const char* op) const {
    const Shape h = heatmaps.shape, d = displacements.shape;
    AMPKIT_CHECK(h.numel() > 0 && d.numel() > 0, op, ": empty predictions ", h, " / ", d);
    AMPKIT_CHECK(h.n == d.n && h.h == d.h && h.w == d.w, op, ": heatmaps ", h, " and displacements ", d,
                 " must share N, H, W");
    check_shape(op, "gt_heatmaps", gt_heatmaps, h);
    check_shape(op, "heatmap_weights", heatmap_weights, h);
    if (heatmap_mask.data)
      AMPKIT_CHECK(heatmap_mask.shape == (Shape{h.n, h.h, h.w, 1}) || heatmap_mask.shape == h, op,
                   ": heatmap_mask has shape ", heatmap_mask.shape, ", expected ", Shape{h.n, h.h, h.w, 1}, " or ", h);
    check_shape(op, "gt_displacements", gt_displacements, d);
    check_shape(op, "displacement_weights", displacement_weights, d);
    AMPKIT_CHECK(heatmaps.data && displacements.data, op, ": predictions have no data");
  }
};

namespace detail {
inline void check_dekr_loss_result(const char* op, const TensorView<const float>& r) {
  check_shape(op, "result", r, Shape{1, 1, 1, 4});
}
}  // namespace detail

/// The loss as an object: owns its (1,1,1,4) result on the backend.
/// @tparam P        precision policy (predictions and gradients in storage_t<P>)
/// @tparam Backend  ampkit::Host or ampkit::Cuda (include the backend's dekr_loss header)
template <PrecisionPolicy P, class Backend>
class DekrLoss {
 public:
  using T = storage_t<P>;
  using Result = decltype(std::declval<const Backend&>().template tensor<float>(Shape{}));

  struct Values {
    float total = 0, heatmap = 0, displacement = 0, n_positive = 0;
  };

  explicit DekrLoss(Backend& ctx, DekrLossConfig cfg = {})
      : cfg_(cfg), result_(ctx.template tensor<float>({1, 1, 1, 4})) {}

  const DekrLossConfig& config() const { return cfg_; }

  /// Compute the loss into the result tensor (stays on the backend).
  TensorView<const float> forward(Backend& ctx, const DekrLossInputs<T>& in) {
    dekr_loss_forward(ctx, in, result_.view(), cfg_);
    return result_.cview();
  }

  /// dL/dpredictions × (*scale if given) × factor, WRITTEN in T. Needs the forward's N_pos.
  void backward(Backend& ctx, const DekrLossInputs<T>& in, TensorView<T> dL_dheatmaps, TensorView<T> dL_ddisplacements,
                float factor = 1.f, TensorView<const float> scale = {}) {
    dekr_loss_backward(ctx, in, result_.cview(), scale, factor, dL_dheatmaps, dL_ddisplacements, cfg_);
  }

  /// Copy the values to the host (synchronises: for logging and tests).
  Values values(Backend& ctx) const {
    const auto h = ctx.to_host(result_.cview());
    return {h[0], h[1], h[2], h[3]};
  }
  TensorView<const float> result() const { return result_.cview(); }

 private:
  DekrLossConfig cfg_;
  Result result_;
};

}  // namespace ampkit

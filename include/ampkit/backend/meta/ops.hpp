/// @brief The ops of the shape-only backend (backend/meta/context.hpp): every op the DEKR model,
/// its loss and the AMP step call, as a no-op on ampkit::Meta, plus the StepReadout the
/// AmpOptimizer needs. Together with the model headers, everything a dry run of a training step
/// needs, in one include.
///
/// Why variadic no-ops: the ops are found by argument-dependent lookup on the context type, so
/// one overload per name that takes `const Meta&` first and anything after it serves every
/// storage type and signature variant; the host and CUDA overloads never match a Meta context.
/// The convolutions still validate their shapes (the shared check of nn/ops/conv2d.hpp), so a dry
/// run also rejects a model/input combination the real backends would reject.
#pragma once

#include <cstdint>
#include <optional>

#include "ampkit/amp/amp_step.hpp"
#include "ampkit/amp/step_state.hpp"
#include "ampkit/backend/meta/context.hpp"
#include "ampkit/loss/dekr_loss.hpp"
#include "ampkit/models/dekr.hpp"
#include "ampkit/nn/ops/conv2d.hpp"

namespace ampkit {

#define AMPKIT_META_NOOP_OP(op) \
  template <class... Args>      \
  void op(const Meta&, Args&&...) {}

// convolutions (conv2d_forward validates below)
AMPKIT_META_NOOP_OP(conv2d_backward_data)
AMPKIT_META_NOOP_OP(conv2d_backward_filter)
AMPKIT_META_NOOP_OP(conv2d_backward_bias)
AMPKIT_META_NOOP_OP(deform_conv2d_forward)
AMPKIT_META_NOOP_OP(deform_conv2d_backward)
AMPKIT_META_NOOP_OP(affine_offsets_forward)
AMPKIT_META_NOOP_OP(affine_offsets_backward)
// batch norm
AMPKIT_META_NOOP_OP(batch_norm_forward_training)
AMPKIT_META_NOOP_OP(batch_norm_relu_forward_training)
AMPKIT_META_NOOP_OP(batch_norm_add_relu_forward_training)
AMPKIT_META_NOOP_OP(batch_norm_forward_inference)
AMPKIT_META_NOOP_OP(batch_norm_relu_forward_inference)
AMPKIT_META_NOOP_OP(batch_norm_add_relu_forward_inference)
AMPKIT_META_NOOP_OP(batch_norm_backward)
AMPKIT_META_NOOP_OP(batch_norm_relu_backward)
AMPKIT_META_NOOP_OP(batch_norm_add_relu_backward)
AMPKIT_META_NOOP_OP(batch_norm_relu_forward_saved)
// elementwise, resampling, concatenation, fills
AMPKIT_META_NOOP_OP(relu_forward)
AMPKIT_META_NOOP_OP(relu_backward)
AMPKIT_META_NOOP_OP(add_forward)
AMPKIT_META_NOOP_OP(sum_forward)
AMPKIT_META_NOOP_OP(sum_relu_forward)
AMPKIT_META_NOOP_OP(upsample_nearest_forward)
AMPKIT_META_NOOP_OP(upsample_nearest_backward)
AMPKIT_META_NOOP_OP(resize_bilinear_forward)
AMPKIT_META_NOOP_OP(resize_bilinear_backward)
AMPKIT_META_NOOP_OP(concat_forward)
AMPKIT_META_NOOP_OP(concat_backward)
AMPKIT_META_NOOP_OP(resize_concat_forward)
AMPKIT_META_NOOP_OP(resize_concat_backward)
AMPKIT_META_NOOP_OP(zero_fill)
AMPKIT_META_NOOP_OP(convert_copy)
// loss
AMPKIT_META_NOOP_OP(dekr_loss_forward)
AMPKIT_META_NOOP_OP(dekr_loss_backward)
// AMP step
AMPKIT_META_NOOP_OP(amp_grad_check)
AMPKIT_META_NOOP_OP(amp_finalize)
AMPKIT_META_NOOP_OP(amp_zero_grads)
AMPKIT_META_NOOP_OP(amp_apply_update)
AMPKIT_META_NOOP_OP(amp_accumulate_grads)
AMPKIT_META_NOOP_OP(amp_set_lr)

#undef AMPKIT_META_NOOP_OP

/// Validates the shapes as both real backends do, computes nothing.
template <class T>
void conv2d_forward(const Meta&, TensorView<const T> x, TensorView<const T> w, TensorView<const T> bias,
                    TensorView<T> y, const Conv2dParams& p) {
  detail::check_conv2d("conv2d_forward", x.shape, w.shape, y.shape, &bias, p);
}

/// One partial slot (its size is a few bytes; the CUDA backend's count differs by a few hundred B).
inline int amp_check_partials(const Meta&, std::int64_t) { return 1; }

}  // namespace ampkit

namespace ampkit::amp {

/// No device state to read: requests succeed and polls return nothing (no statistics exist).
template <>
class StepReadout<Meta> {
 public:
  explicit StepReadout(const Meta&) {}
  bool request(Meta&, const StepState*) { return true; }
  std::optional<StepStats> poll() { return std::nullopt; }
};

}  // namespace ampkit::amp

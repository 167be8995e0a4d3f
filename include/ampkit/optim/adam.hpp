/// @brief Adam and AdamW with torch.optim's exact update (bias correction, eps outside the
/// square root, L2 weight decay for Adam, decoupled decay for AdamW), on fp32 master weights.
///
/// mmpose DEKR: Adam, lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight decay 0.
/// Per element, for the step t (t counts applied steps; skipped ones don't count, as in torch):
///   Adam:  g += wd * p
///   AdamW: p *= 1 - lr * wd
///   m = b1 * m + (1 - b1) * g;  v = b2 * v + (1 - b2) * g * g
///   p -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
/// The step scalars are formed in fp64 (torch forms them in Python floats) and rounded once.
#pragma once

#include <cmath>

#include "ampkit/amp/step_state.hpp"
#include "ampkit/core/error.hpp"
#include "ampkit/optim/optimizer.hpp"

namespace ampkit::optim {

struct AdamConfig {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  bool decoupled = false;  ///< true: AdamW's decoupled weight decay
  void validate() const {
    AMPKIT_CHECK(beta1 >= 0.0 && beta1 < 1.0, "Adam: beta1 must be in [0, 1), got ", beta1);
    AMPKIT_CHECK(beta2 >= 0.0 && beta2 < 1.0, "Adam: beta2 must be in [0, 1), got ", beta2);
    AMPKIT_CHECK(eps >= 0.0, "Adam: eps must be >= 0, got ", eps);
    AMPKIT_CHECK(weight_decay >= 0.0, "Adam: weight_decay must be >= 0, got ", weight_decay);
  }
};

/// Adam (or AdamW with `decoupled`): two state slots, exp_avg (m) and exp_avg_sq (v).
struct Adam {
  AdamConfig config{};

  static constexpr const char* name() { return "Adam"; }
  static Adam adamw(double weight_decay = 1e-2) { return Adam{{0.9, 0.999, 1e-8, weight_decay, true}}; }
  int n_slots() const { return 2; }

  /// k = {step_size, sqrt(1 - b2^t), 1 - lr*wd (AdamW) or wd (Adam), unused}.
  AMPKIT_HOST_DEVICE void prepare(amp::StepState& s) const {
    s.beta1_pow *= config.beta1;
    s.beta2_pow *= config.beta2;
    const double bc1 = 1.0 - s.beta1_pow;
    const double bc2 = 1.0 - s.beta2_pow;
    s.k[0] = static_cast<float>(s.lr / bc1);
#if defined(__CUDA_ARCH__)
    s.k[1] = static_cast<float>(::sqrt(bc2));
#else
    s.k[1] = static_cast<float>(std::sqrt(bc2));
#endif
    s.k[2] = config.decoupled ? static_cast<float>(1.0 - s.lr * config.weight_decay)
                              : static_cast<float>(config.weight_decay);
    s.k[3] = 0.f;
  }

  /// slots[0] = m[i], slots[stride] = v[i].
  AMPKIT_HOST_DEVICE void update(float& p, float g, float* slots, std::int64_t stride,
                                 const amp::StepState& s) const {
    using namespace detail;
    if (config.weight_decay != 0.0) {
      if (config.decoupled)
        p = mul(p, s.k[2]);
      else
        g = add(g, mul(p, s.k[2]));
    }
    float& m = slots[0];
    float& v = slots[stride];
    const float b1 = static_cast<float>(config.beta1), b2 = static_cast<float>(config.beta2);
    m = add(mul(m, b1), mul(g, static_cast<float>(1.0 - config.beta1)));
    v = add(mul(v, b2), mul(mul(static_cast<float>(1.0 - config.beta2), g), g));
    const float denom = add(div(sqrt(v), s.k[1]), static_cast<float>(config.eps));
    p = add(p, div(mul(-s.k[0], m), denom));
  }
};

/// AdamW is Adam with decoupled weight decay.
inline Adam make_adamw(AdamConfig c) {
  c.decoupled = true;
  return Adam{c};
}

}  // namespace ampkit::optim

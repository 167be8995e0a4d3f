/// @brief SGD with momentum, dampening, Nesterov and L2 weight decay, with torch.optim.SGD's
/// exact update, on fp32 master weights.
///
/// Per element (t counts applied steps):
///   g += wd * p
///   momentum != 0:  buf = (t == 1) ? g : momentum * buf + (1 - dampening) * g
///                   g = nesterov ? g + momentum * buf : buf
///   p -= lr * g
/// (torch creates the momentum buffer as a copy of the first gradient: no dampening on step 1.)
#pragma once

#include "ampkit/amp/step_state.hpp"
#include "ampkit/core/error.hpp"
#include "ampkit/optim/optimizer.hpp"

namespace ampkit::optim {

struct SgdConfig {
  double momentum = 0.0;
  double dampening = 0.0;
  bool nesterov = false;
  double weight_decay = 0.0;
  void validate() const {
    AMPKIT_CHECK(momentum >= 0.0, "SGD: momentum must be >= 0, got ", momentum);
    AMPKIT_CHECK(weight_decay >= 0.0, "SGD: weight_decay must be >= 0, got ", weight_decay);
    AMPKIT_CHECK(!nesterov || (momentum > 0.0 && dampening == 0.0),
                 "SGD: Nesterov momentum requires a momentum and zero dampening (as torch.optim.SGD)");
  }
};

/// SGD: one state slot (the momentum buffer) when momentum != 0.
struct Sgd {
  SgdConfig config{};

  static constexpr const char* name() { return "SGD"; }
  int n_slots() const { return config.momentum != 0.0 ? 1 : 0; }

  /// k = {lr, first step ? 1 : 0, unused, unused}.
  AMPKIT_HOST_DEVICE void prepare(amp::StepState& s) const {
    s.k[0] = static_cast<float>(s.lr);
    s.k[1] = s.opt_step == 1 ? 1.f : 0.f;
    s.k[2] = 0.f;
    s.k[3] = 0.f;
  }

  AMPKIT_HOST_DEVICE void update(float& p, float g, float* slots, std::int64_t,
                                 const amp::StepState& s) const {
    using namespace detail;
    if (config.weight_decay != 0.0) g = add(g, mul(p, static_cast<float>(config.weight_decay)));
    if (config.momentum != 0.0) {
      const float mom = static_cast<float>(config.momentum);
      float& buf = slots[0];
      buf = s.k[1] != 0.f ? g : add(mul(buf, mom), mul(g, static_cast<float>(1.0 - config.dampening)));
      g = config.nesterov ? add(g, mul(buf, mom)) : buf;
    }
    p = add(p, mul(g, -s.k[0]));
  }
};

}  // namespace ampkit::optim

/// @brief One check of the AMP step's device-decided state (amp::StepState) against another: the
/// scale, the overflow decision and every counter must be equal bit for bit wherever two runs
/// (host vs CUDA, eager vs CUDA graph, eager repeats) saw the same finite / non-finite facts and
/// the same host lr. Shared by tests/gpu/amp, tests/gpu/models and tests/support/graph_judge.cuh.
#pragma once

#include <doctest/doctest.h>

#include "ampkit/amp/step_state.hpp"

namespace ampkit::testing {

/// grad_norm is left to the caller: its fp32 rounding depends on the reduction order.
inline void check_same_step_state(const amp::StepState& want, const amp::StepState& got) {
  CHECK(got.scale == want.scale);
  CHECK(got.growth_tracker == want.growth_tracker);
  CHECK(got.found_inf == want.found_inf);
  CHECK(got.n_steps == want.n_steps);
  CHECK(got.n_skipped == want.n_skipped);
  CHECK(got.opt_step == want.opt_step);
  CHECK(got.lr == want.lr);
}

}  // namespace ampkit::testing

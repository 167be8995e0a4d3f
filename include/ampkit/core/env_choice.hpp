/// @brief Process-wide switches read from environment variables (AMPKIT_CONV_GEMM,
/// AMPKIT_CUDNN_GRAPH_API, AMPKIT_CUDNN_BENCHMARK, AMPKIT_DEFORM_CONV_ALGO, AMPKIT_BN_FLAT_PACKS,
/// AMPKIT_CONV_FORCE_CUDNN):
/// one parser, so that a misspelt value stops the run with one message instead of silently
/// leaving the default in place (a benchmark run with `AMPKIT_CONV_GEMM=off` would otherwise
/// measure the GEMM path while its author believes it is off).
#pragma once

#include <cstdlib>
#include <initializer_list>
#include <string>
#include <utility>

#include "ampkit/core/error.hpp"

namespace ampkit {

/// `value` (the variable's text; nullptr or "" = unset) mapped through `choices`, or `unset` when
/// the variable is unset. Anything else throws ampkit::Error naming the variable, the value, the
/// accepted values and what unset means.
template <class E>
E env_choice_from(const char* name, const char* value,
                  std::initializer_list<std::pair<const char*, E>> choices, E unset,
                  const char* unset_meaning) {
  if (value == nullptr || *value == '\0') return unset;
  std::string accepted;
  for (const auto& [text, e] : choices) {
    if (std::string(value) == text) return e;
    accepted += accepted.empty() ? text : std::string(", ") + text;
  }
  AMPKIT_FAIL(name, "=", value, " is not one of ", accepted, "; unset it for the default (", unset_meaning,
              ")");
}

/// env_choice_from over std::getenv(name).
template <class E>
E env_choice(const char* name, std::initializer_list<std::pair<const char*, E>> choices, E unset,
             const char* unset_meaning) {
  return env_choice_from(name, std::getenv(name), choices, unset, unset_meaning);
}

}  // namespace ampkit

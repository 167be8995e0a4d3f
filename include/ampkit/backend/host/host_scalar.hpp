/// @brief Element types the host backend's nn ops accept: the storage types plus double (for
/// finite-difference gradient checks), with the accumulation type and the one rounding step.
#pragma once

#include <type_traits>

#include "ampkit/core/numeric_types.hpp"

namespace ampkit {

/// float, half, bfloat16 (what the policies store) or double (gradient checks only).
template <class T>
concept HostScalar = StorageScalar<T> || std::is_same_v<T, double>;

namespace host {

/// Accumulation type: fp32 for every storage type (as on the GPU), double for double.
template <HostScalar T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

/// Widen a stored value (exact).
template <HostScalar T>
constexpr acc_t<T> widen(T x) {
  if constexpr (std::is_same_v<T, double>)
    return x;
  else
    return static_cast<float>(x);
}

/// Round an accumulated value to the storage type (nearest even), the single rounding step.
template <HostScalar T>
constexpr T narrow(acc_t<T> x) {
  if constexpr (std::is_same_v<T, double>)
    return x;
  else
    return convert<T>(x);
}

}  // namespace host
}  // namespace ampkit

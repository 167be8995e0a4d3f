/// @brief Host twins of the flat-buffer passes the parameter store needs: zero a view, and
/// round an fp32 view into a storage-type view (master weights -> compute copies).
#pragma once

#include <algorithm>

#include "ampkit/backend/host/context.hpp"
#include "ampkit/core/numeric_types.hpp"
#include "ampkit/core/tensor.hpp"

namespace ampkit {

/// dst = 0 (every element).
template <class T>
void zero_fill(Host&, TensorView<T> dst) {
  std::fill(dst.data, dst.data + dst.numel(), T(0.f));
}

/// dst = round_to_T(src), elementwise, round-to-nearest-even (the GPU's __float2half_rn).
template <StorageScalar T>
void convert_copy(Host&, TensorView<const float> src, TensorView<T> dst) {
  AMPKIT_CHECK(src.numel() == dst.numel(), "convert_copy: source holds ", src.numel(), " elements, destination ",
               dst.numel());
  for (std::int64_t i = 0; i < src.numel(); ++i) dst.data[i] = convert<T>(src.data[i]);
}

}  // namespace ampkit

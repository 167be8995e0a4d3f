#include <doctest/doctest.h>

#include <type_traits>

#include "ampkit/core/tensor.hpp"
#include "support/testing.hpp"

using namespace ampkit;

TEST_CASE("NHWC indexing: C is contiguous, then W, H, N") {
  HostTensor<float> t({2, 3, 4, 5});
  for (std::int64_t i = 0; i < t.numel(); ++i) t[i] = static_cast<float>(i);
  CHECK(t(0, 0, 0, 1) == 1.f);
  CHECK(t(0, 0, 1, 0) == 5.f);
  CHECK(t(0, 1, 0, 0) == 20.f);
  CHECK(t(1, 0, 0, 0) == 60.f);
  auto img = t.view().image(1);
  CHECK(img.shape == Shape{1, 3, 4, 5});
  CHECK(img(0, 2, 3, 4) == t(1, 2, 3, 4));
  CHECK_THROWS_WITH_AS(t.view().image(2), doctest::Contains("image index 2 out of range for batch 2"), Error);
}

TEST_CASE("buffers are move-only and 64-byte aligned; views convert to const, not back") {
  static_assert(!std::is_copy_constructible_v<HostBuffer<float>>);
  static_assert(!std::is_copy_constructible_v<HostTensor<half>>);
  static_assert(std::is_convertible_v<TensorView<float>, TensorView<const float>>);
  static_assert(!std::is_convertible_v<TensorView<const float>, TensorView<float>>);
  HostBuffer<half> b(1000);
  CHECK(reinterpret_cast<std::uintptr_t>(b.data()) % 64 == 0);
  auto t = testing::random_tensor<half>({1, 2, 2, 3}, 7);
  auto c = t.clone();
  CHECK(c[5] == t[5]);
  HostTensor<half> moved = std::move(t);
  CHECK(moved[5] == c[5]);
}

TEST_CASE("check_shape names the op, the argument and both shapes") {
  HostTensor<float> t({1, 2, 3, 4});
  CHECK_THROWS_WITH_AS(check_shape("conv2d", "x", t.cview(), {1, 2, 3, 8}),
                       doctest::Contains("conv2d: x has shape (1,2,3,4), expected (1,2,3,8)"), Error);
}

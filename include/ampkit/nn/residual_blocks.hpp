/// @brief ResNet's BasicBlock and Bottleneck (mmpose `backbones/resnet.py` semantics and names),
/// built from ConvBn with the residual add + ReLU fused into the last BatchNorm.
///
/// BasicBlock:  y = relu(bn2(conv2(relu(bn1(conv1(x))))) + r),  r = x or downsample(x)
/// Bottleneck:  y = relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + r), mid = out / 4
/// Names: `prefix.conv1.weight`, `prefix.bn1.weight` ..., `prefix.downsample.0.weight` (1x1 conv),
/// `prefix.downsample.1.*` (its BN). Gradient contract as nn/conv_bn.hpp: dL_dx returned (=),
/// parameter gradients accumulated (+=).
///
/// With the store's recompute_bn_outputs() the inner BN+ReLU outputs (conv1's, and conv2's in the
/// Bottleneck) are freed after the next conv's forward and rebuilt right before its backward
/// (nn/conv_bn.hpp recompute_after_forward); the block output (add+ReLU) is kept. The block's
/// own input can be freed and rebuilt by its producer the same way: forget_input() /
/// rebind_input() reach every layer of the block whose backward reads the input (conv1 and
/// the downsample conv; the identity residual is read by the forward only).
#pragma once

#include <optional>
#include <string>

#include "ampkit/nn/conv_bn.hpp"

namespace ampkit::nn {

template <PrecisionPolicy P, class Backend>
class BasicBlock {
 public:
  using T = storage_t<P>;
  using Store = ParameterStore<P, Backend>;
  template <class U>
  using Tensor = typename Store::template Tensor<U>;
  static constexpr int kExpansion = 1;

  BasicBlock(Store& s, const std::string& prefix, std::int64_t in, std::int64_t out, std::int64_t stride = 1,
             ConvInit init = {})
      : conv1_(s, prefix + ".conv1", prefix + ".bn1", {in, out, 3, stride}, BatchNormEpilogue::kRelu, init),
        conv2_(s, prefix + ".conv2", prefix + ".bn2", {out, out, 3, 1}, BatchNormEpilogue::kAddRelu, init) {
    if (stride != 1 || in != out)
      downsample_.emplace(s, prefix + ".downsample.0", prefix + ".downsample.1", ConvSpec{in, out, 1, stride},
                          BatchNormEpilogue::kNone, init);
  }

  TensorView<const T> forward(Backend& ctx, TensorView<const T> x, bool training) {
    const auto h = conv1_.forward(ctx, x, training);
    const auto r = downsample_ ? downsample_->forward(ctx, x, training) : x;
    const auto y = conv2_.forward(ctx, h, training, r);
    // The residual is read only by the add+relu forward (its backward needs y, not r).
    if (downsample_) downsample_->release_output();
    recompute_after_forward(conv1_, conv2_);
    return y;
  }

  Tensor<T> backward(Backend& ctx, TensorView<const T> dL_dy, bool need_dx = true) {
    rebuild_before_backward(ctx, conv1_, conv2_);
    auto dL_dh = conv2_.backward(ctx, dL_dy);
    auto dL_dr = conv2_.take_dL_dresidual();
    auto dL_dx = conv1_.backward(ctx, dL_dh.cview(), need_dx);
    if (!need_dx) {
      if (downsample_) downsample_->backward(ctx, dL_dr.cview(), false);
      return dL_dx;
    }
    if (downsample_) {
      auto d = downsample_->backward(ctx, dL_dr.cview());
      accumulate(ctx, dL_dx.view(), d.cview());
    } else {
      accumulate(ctx, dL_dx.view(), dL_dr.cview());
    }
    return dL_dx;
  }

  TensorView<const T> output() const { return conv2_.output(); }
  void forget_input() {
    conv1_.forget_input();
    if (downsample_) downsample_->forget_input();
  }
  void rebind_input(TensorView<const T> x) {
    conv1_.rebind_input(x);
    if (downsample_) downsample_->rebind_input(x);
  }
  std::size_t saved_bytes() const {
    return conv1_.saved_bytes() + conv2_.saved_bytes() + (downsample_ ? downsample_->saved_bytes() : 0);
  }

 private:
  ConvBn<P, Backend> conv1_, conv2_;
  std::optional<ConvBn<P, Backend>> downsample_;
};

template <PrecisionPolicy P, class Backend>
class Bottleneck {
 public:
  using T = storage_t<P>;
  using Store = ParameterStore<P, Backend>;
  template <class U>
  using Tensor = typename Store::template Tensor<U>;
  static constexpr int kExpansion = 4;

  /// @param out  output channels (mid = out / 4, as mmpose's Bottleneck(in, out, expansion=4))
  Bottleneck(Store& s, const std::string& prefix, std::int64_t in, std::int64_t out, std::int64_t stride = 1,
             ConvInit init = {})
      : conv1_(s, prefix + ".conv1", prefix + ".bn1", {in, out / kExpansion, 1, 1}, BatchNormEpilogue::kRelu, init),
        conv2_(s, prefix + ".conv2", prefix + ".bn2", {out / kExpansion, out / kExpansion, 3, stride},
               BatchNormEpilogue::kRelu, init),
        conv3_(s, prefix + ".conv3", prefix + ".bn3", {out / kExpansion, out, 1, 1}, BatchNormEpilogue::kAddRelu,
               init) {
    AMPKIT_CHECK(out % kExpansion == 0, "Bottleneck '", prefix, "': out channels ", out, " not divisible by 4");
    if (stride != 1 || in != out)
      downsample_.emplace(s, prefix + ".downsample.0", prefix + ".downsample.1", ConvSpec{in, out, 1, stride},
                          BatchNormEpilogue::kNone, init);
  }

  TensorView<const T> forward(Backend& ctx, TensorView<const T> x, bool training) {
    const auto h1 = conv1_.forward(ctx, x, training);
    const auto h2 = conv2_.forward(ctx, h1, training);
    const auto r = downsample_ ? downsample_->forward(ctx, x, training) : x;
    const auto y = conv3_.forward(ctx, h2, training, r);
    // The residual is read only by the add+relu forward (its backward needs y, not r).
    if (downsample_) downsample_->release_output();
    recompute_after_forward(conv1_, conv2_);
    recompute_after_forward(conv2_, conv3_);
    return y;
  }

  Tensor<T> backward(Backend& ctx, TensorView<const T> dL_dy, bool need_dx = true) {
    // With recompute_conv_outputs, rebuilding h2 recomputes conv2's output from h1: h1 first.
    if (conv2_.rebuild_reads_input()) rebuild_before_backward(ctx, conv1_, conv2_);
    rebuild_before_backward(ctx, conv2_, conv3_);
    auto d2 = conv3_.backward(ctx, dL_dy);
    auto dL_dr = conv3_.take_dL_dresidual();
    rebuild_before_backward(ctx, conv1_, conv2_);  // (a no-op when done above)
    auto d1 = conv2_.backward(ctx, d2.cview());
    auto dL_dx = conv1_.backward(ctx, d1.cview(), need_dx);
    if (!need_dx) {
      if (downsample_) downsample_->backward(ctx, dL_dr.cview(), false);
      return dL_dx;
    }
    if (downsample_) {
      auto d = downsample_->backward(ctx, dL_dr.cview());
      accumulate(ctx, dL_dx.view(), d.cview());
    } else {
      accumulate(ctx, dL_dx.view(), dL_dr.cview());
    }
    return dL_dx;
  }

  TensorView<const T> output() const { return conv3_.output(); }
  void forget_input() {
    conv1_.forget_input();
    if (downsample_) downsample_->forget_input();
  }
  void rebind_input(TensorView<const T> x) {
    conv1_.rebind_input(x);
    if (downsample_) downsample_->rebind_input(x);
  }
  std::size_t saved_bytes() const {
    return conv1_.saved_bytes() + conv2_.saved_bytes() + conv3_.saved_bytes() +
           (downsample_ ? downsample_->saved_bytes() : 0);
  }

 private:
  ConvBn<P, Backend> conv1_, conv2_, conv3_;
  std::optional<ConvBn<P, Backend>> downsample_;
};

}  // namespace ampkit::nn

/// @brief The flat parameter store: every parameter, its fp32 master, its compute-type copy and its
/// gradient live in a few flat buffers (one per type); layers hold ids and read views.
///
/// Why flat: the optimizer, the unscale/inf check, gradient clipping and the all-reduce are then
/// single passes over contiguous memory instead of one launch per tensor (HRNet-W32 + DEKR has
/// ~1,200 parameter tensors).
///
/// Two kinds of parameters (DESIGN.md: BN stays fp32 under every policy):
///   kCompute  conv weights and biases. Master fp32; kernels read a storage-type copy; gradients
///             are accumulated in the storage type (the conv ops' contract).
///   kFp32     BatchNorm gamma/beta. Kernels read the fp32 master directly; gradients are fp32.
/// Layout (element offsets, every tensor aligned to kParamAlign elements so vector loads and cuDNN
/// see 128-byte aligned pointers; the padding is zero and stays zero under Adam/SGD):
///   master       fp32 [ compute segment (n_compute_slots) | fp32 segment (n_fp32_slots) ]
///   compute      T    [ compute segment ]        (aliases master's compute segment when T = float)
///   grad_compute T    [ compute segment ]
///   grad_fp32    fp32 [ fp32 segment ]           (with T = float, grad_compute and grad_fp32 are
///                                                  the two halves of ONE buffer, like master)
///   buffers      fp32 BN running_mean / running_var (not trained, saved in checkpoints)
/// Names are mmpose's state-dict names (`backbone.stage2.0.branches.1.0.conv1.weight`), kept in
/// registration order, which follows the PyTorch module order.
///
/// Backend ops used: zero_fill, convert_copy (backend/host/fill.hpp, backend/cuda/fill.cuh).
///
/// Protocol: layers `add()` their parameters while being constructed, then `allocate(ctx, seed)`
/// lays out the buffers and initialises them; afterwards views are valid until the store dies.
///
/// Gradient-ready hook (data-parallel overlap, docs/architecture.md "In the trainer"): every layer
/// with parameters calls notify_grads_ready(first, count) in its backward right after the last op
/// that writes those parameters' gradients has been issued, exactly once per backward. On a
/// stream backend "ready" means "final in stream order": work issued after the call sees them.
/// The store forwards to an optional observer (none: one branch per layer, no other cost).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "ampkit/backend/host/fill.hpp"
#include "ampkit/core/error.hpp"
#include "ampkit/core/numeric_types.hpp"
#include "ampkit/core/tensor.hpp"
#include "ampkit/precision.hpp"

namespace ampkit::nn {

/// Parameter tensors start at multiples of this many elements (128 bytes in fp16).
inline constexpr std::int64_t kParamAlign = 64;

enum class ParamKind {
  kCompute,  ///< conv weight / bias: storage-type copy and gradient
  kFp32,     ///< BatchNorm gamma / beta: fp32 only
};

/// How a parameter is initialised on allocate(): Normal(0, a), Uniform(-a, a) or Constant(a).
struct ParamInit {
  enum class Kind { kNormal, kUniform, kConstant } kind = Kind::kConstant;
  float a = 0.f;
  static constexpr ParamInit normal(float std) { return {Kind::kNormal, std}; }
  static constexpr ParamInit uniform(float bound) { return {Kind::kUniform, bound}; }
  static constexpr ParamInit constant(float v) { return {Kind::kConstant, v}; }
};

struct ParamId {
  int index = -1;
  bool valid() const { return index >= 0; }
};
struct BufferId {
  int index = -1;
  bool valid() const { return index >= 0; }
};

/// One registered parameter.
struct ParamInfo {
  std::string name;
  std::vector<std::int64_t> dims;  ///< shape as saved: KRSC weights [K,R,S,C], vectors [C]
  Shape shape;                     ///< the NHWC view shape
  ParamKind kind = ParamKind::kCompute;
  ParamInit init;
  std::int64_t numel = 0;
  std::int64_t slot = 0;  ///< offset inside its segment (compute or fp32)
};

/// One registered fp32 buffer (BN running statistics).
struct BufferInfo {
  std::string name;
  std::vector<std::int64_t> dims;
  Shape shape;
  float init = 0.f;
  std::int64_t numel = 0;
  std::int64_t offset = 0;
};

/// The flat store for one policy on one backend.
/// @tparam P        precision policy: T = storage_t<P> for compute copies and their gradients
/// @tparam Backend  ampkit::Host or ampkit::Cuda (owns the memory through ctx.tensor<U>())
template <PrecisionPolicy P, class Backend>
class ParameterStore {
 public:
  using T = storage_t<P>;
  template <class U>
  using Tensor = decltype(std::declval<const Backend&>().template tensor<U>(Shape{}));
  static constexpr bool kAliasCompute = std::is_same_v<T, float>;

  ParameterStore() = default;
  ParameterStore(const ParameterStore&) = delete;
  ParameterStore& operator=(const ParameterStore&) = delete;

  // ---- registration ---------------------------------------------------------------------------
  /// Register a parameter. `dims` is the saved shape; its product must equal shape.numel().
  ParamId add(std::string name, std::vector<std::int64_t> dims, Shape shape, ParamKind kind, ParamInit init) {
    AMPKIT_CHECK(!allocated_, "parameter store: cannot add '", name, "' after allocate()");
    AMPKIT_CHECK(!index_.contains(name), "parameter store: '", name, "' registered twice");
    std::int64_t n = 1;
    for (auto d : dims) n *= d;
    AMPKIT_CHECK(n == shape.numel() && n > 0, "parameter store: '", name, "' dims hold ", n,
                 " elements, view shape ", shape, " holds ", shape.numel());
    index_[name] = static_cast<int>(params_.size());
    params_.push_back({std::move(name), std::move(dims), shape, kind, init, n, 0});
    return {static_cast<int>(params_.size()) - 1};
  }
  /// Register an fp32 buffer filled with `init` (running_mean 0, running_var 1).
  BufferId add_buffer(std::string name, std::vector<std::int64_t> dims, Shape shape, float init) {
    AMPKIT_CHECK(!allocated_, "parameter store: cannot add buffer '", name, "' after allocate()");
    AMPKIT_CHECK(!buffer_index_.contains(name), "parameter store: buffer '", name, "' registered twice");
    buffer_index_[name] = static_cast<int>(buffers_.size());
    buffers_.push_back({std::move(name), std::move(dims), shape, init, shape.numel(), 0});
    return {static_cast<int>(buffers_.size()) - 1};
  }

  // ---- allocation -----------------------------------------------------------------------------
  /// Lay out the flat buffers, initialise the master weights on the host with a seeded RNG (in
  /// registration order), copy them to the backend and write the compute copies.
  void allocate(Backend& ctx, std::uint64_t seed) {
    AMPKIT_CHECK(!allocated_, "parameter store: allocate() called twice");
    n_compute_slots_ = n_fp32_slots_ = n_buffer_ = 0;
    for (auto& p : params_) {
      std::int64_t& seg = p.kind == ParamKind::kCompute ? n_compute_slots_ : n_fp32_slots_;
      p.slot = seg;
      seg += round_up(p.numel);
    }
    for (auto& b : buffers_) {
      b.offset = n_buffer_;
      n_buffer_ += b.numel;
    }
    const std::int64_t n_total = n_compute_slots_ + n_fp32_slots_;
    master_ = ctx.template tensor<float>(vec(n_total));
    if constexpr (!kAliasCompute) {
      compute_ = ctx.template tensor<T>(vec(n_compute_slots_));
      grad_compute_ = ctx.template tensor<T>(vec(n_compute_slots_));
      grad_fp32_ = ctx.template tensor<float>(vec(n_fp32_slots_));
    } else {
      grad_fp32_ = ctx.template tensor<float>(vec(n_total));
    }
    buffers_t_ = ctx.template tensor<float>(vec(std::max<std::int64_t>(n_buffer_, 1)));
    allocated_ = true;
    // A shape-only backend (ampkit::Meta, for memory plans) never reads values: skip the seeded
    // initialisation, which for W32 is ~30 M random draws and a 118 MB host buffer.
    if constexpr (requires { Backend::kShapeOnly; }) return;

    // Initialise on the host (deterministic for a seed on every backend), then copy once.
    HostTensor<float> host_master(vec(n_total), 0.f);
    std::mt19937_64 rng(seed);
    for (const auto& p : params_) {
      float* dst = host_master.data() + master_offset(p);
      switch (p.init.kind) {
        case ParamInit::Kind::kNormal: {
          std::normal_distribution<float> d(0.f, p.init.a);
          for (std::int64_t i = 0; i < p.numel; ++i) dst[i] = d(rng);
          break;
        }
        case ParamInit::Kind::kUniform: {
          std::uniform_real_distribution<float> d(-p.init.a, p.init.a);
          for (std::int64_t i = 0; i < p.numel; ++i) dst[i] = d(rng);
          break;
        }
        case ParamInit::Kind::kConstant:
          for (std::int64_t i = 0; i < p.numel; ++i) dst[i] = p.init.a;
          break;
      }
    }
    ctx.copy_to_device(master_.view(), std::span<const float>(host_master.span()));
    reset_buffers(ctx);
    sync_compute(ctx);
    zero_grad(ctx);
  }

  /// running_mean = 0, running_var = 1 (their registered initial values).
  void reset_buffers(Backend& ctx) {
    HostTensor<float> h(buffers_t_.shape(), 0.f);
    for (const auto& b : buffers_)
      for (std::int64_t i = 0; i < b.numel; ++i) h[b.offset + i] = b.init;
    ctx.copy_to_device(buffers_t_.view(), std::span<const float>(h.span()));
  }

  /// compute copies = round(master) (after an optimizer step or a load). No-op for fp32.
  void sync_compute(Backend& ctx) {
    check_allocated();
    if constexpr (!kAliasCompute) convert_copy(ctx, TensorView<const float>(master_compute_segment()), compute_.view());
  }

  /// Every gradient = 0 (start of an accumulation window).
  void zero_grad(Backend& ctx) {
    check_allocated();
    if constexpr (!kAliasCompute) zero_fill(ctx, grad_compute_.view());
    zero_fill(ctx, grad_fp32_.view());
  }

  // ---- per-parameter views --------------------------------------------------------------------
  /// The storage-type copy kernels read (kCompute parameters).
  TensorView<const T> weight(ParamId id) const {
    const auto& p = compute_param(id);
    if constexpr (kAliasCompute) return {master_.data() + p.slot, p.shape};
    else return {compute_.data() + p.slot, p.shape};
  }
  /// Its gradient, accumulated (+=) by backward in the storage type.
  TensorView<T> weight_grad(ParamId id) const {
    const auto& p = compute_param(id);
    if constexpr (kAliasCompute) return {grad_fp32_.data() + p.slot, p.shape};
    else return {grad_compute_.data() + p.slot, p.shape};
  }
  /// An fp32 parameter (BN gamma/beta): the master itself.
  TensorView<const float> fp32_param(ParamId id) const {
    const auto& p = fp32_param_info(id);
    return {master_.data() + n_compute_slots_ + p.slot, p.shape};
  }
  TensorView<float> fp32_grad(ParamId id) const {
    const auto& p = fp32_param_info(id);
    const std::int64_t base = kAliasCompute ? n_compute_slots_ : 0;
    return {grad_fp32_.data() + base + p.slot, p.shape};
  }
  /// The fp32 master of any parameter.
  TensorView<float> master(ParamId id) const {
    check_allocated();
    const auto& p = info(id);
    return {master_.data() + master_offset(p), p.shape};
  }
  TensorView<float> buffer(BufferId id) const {
    check_allocated();
    AMPKIT_CHECK(id.index >= 0 && id.index < static_cast<int>(buffers_.size()), "parameter store: bad buffer id");
    const auto& b = buffers_[static_cast<std::size_t>(id.index)];
    return {buffers_t_.data() + b.offset, b.shape};
  }

  // ---- flat views (optimizer, scaler, all-reduce, checkpoints) -------------------------------
  TensorView<float> master_all() const { return master_.view(); }
  TensorView<float> master_compute_segment() const { return {master_.data(), vec(n_compute_slots_)}; }
  TensorView<float> master_fp32_segment() const { return {master_.data() + n_compute_slots_, vec(n_fp32_slots_)}; }
  /// Storage-type copies of the compute segment (aliases master_compute_segment() when T = float).
  TensorView<T> compute_all() const {
    if constexpr (kAliasCompute) return master_compute_segment();
    else return compute_.view();
  }
  /// Gradients of the compute segment, in T.
  TensorView<T> grad_compute_all() const {
    if constexpr (kAliasCompute) return {grad_fp32_.data(), vec(n_compute_slots_)};
    else return grad_compute_.view();
  }
  /// Gradients of the fp32 segment.
  TensorView<float> grad_fp32_all() const {
    if constexpr (kAliasCompute) return {grad_fp32_.data() + n_compute_slots_, vec(n_fp32_slots_)};
    else return grad_fp32_.view();
  }
  TensorView<float> buffers_all() const { return {buffers_t_.data(), vec(n_buffer_)}; }

  // ---- introspection --------------------------------------------------------------------------
  bool allocated() const { return allocated_; }
  const std::vector<ParamInfo>& params() const { return params_; }
  const std::vector<BufferInfo>& buffers() const { return buffers_; }
  const ParamInfo& info(ParamId id) const {
    AMPKIT_CHECK(id.index >= 0 && id.index < static_cast<int>(params_.size()), "parameter store: bad param id ",
                 id.index);
    return params_[static_cast<std::size_t>(id.index)];
  }
  std::optional<ParamId> find(const std::string& name) const {
    auto it = index_.find(name);
    if (it == index_.end()) return std::nullopt;
    return ParamId{it->second};
  }
  std::optional<BufferId> find_buffer(const std::string& name) const {
    auto it = buffer_index_.find(name);
    if (it == buffer_index_.end()) return std::nullopt;
    return BufferId{it->second};
  }
  /// Offset of a parameter in master_all().
  std::int64_t master_offset(const ParamInfo& p) const {
    return p.kind == ParamKind::kCompute ? p.slot : n_compute_slots_ + p.slot;
  }
  /// Trainable scalars (without alignment padding): what PyTorch's sum(p.numel()) prints.
  std::int64_t n_params() const {
    std::int64_t n = 0;
    for (const auto& p : params_) n += p.numel;
    return n;
  }
  /// Activation-memory policy of the layers on this store (nn/conv_bn.hpp, ConvBn): when set,
  /// a training forward frees each ConvBn's conv output (the BN input) and backward recomputes
  /// it with the same conv2d_forward call. Why here: every layer of a model holds this store,
  /// so one switch reaches them all without threading a flag through every constructor.
  void set_recompute_conv_outputs(bool on) { recompute_conv_outputs_ = on; }
  bool recompute_conv_outputs() const { return recompute_conv_outputs_; }
  /// Second activation-memory policy (nn/conv_bn.hpp, BatchNorm::drop_output), ON by default:
  /// a training forward frees the BN+ReLU outputs whose consumers sit in the same block or conv
  /// chain, and backward rebuilds each from the kept BN input and the saved batch statistics
  /// with the forward's own elementwise code. Bit-identical (one elementwise pass, no conv), so
  /// there is nothing to trade; off only to reproduce the measurements of older code. Composes
  /// with recompute_conv_outputs (then the BN input is recomputed first).
  void set_recompute_bn_outputs(bool on) { recompute_bn_outputs_ = on; }
  bool recompute_bn_outputs() const { return recompute_bn_outputs_; }

  // ---- gradient-ready hook ----------------------------------------------------------------------
  /// Told (first, count): parameters [first.index, first.index + count) (registration order) have
  /// their final gradients for this backward pass.
  using GradReadyObserver = std::function<void(ParamId first, int count)>;
  /// Install (or, with an empty function, remove) the observer.
  void set_grad_ready_observer(GradReadyObserver f) { grad_ready_ = std::move(f); }
  bool has_grad_ready_observer() const { return static_cast<bool>(grad_ready_); }
  /// Called by layers: the gradients of parameters [first, first + count) are final (issued).
  void notify_grads_ready(ParamId first, int count = 1) const {
    if (!grad_ready_) return;
    AMPKIT_CHECK(count > 0 && first.index >= 0 && first.index + count <= static_cast<int>(params_.size()),
                 "parameter store: notify_grads_ready(", first.index, ", ", count, ") outside the ", params_.size(),
                 " parameters");
    if (hold_depth_ > 0) {
      held_.emplace_back(first, count);
      return;
    }
    grad_ready_(first, count);
  }
  /// Hold notifications until the matching release_grads_ready (nests). For layers run on branch
  /// streams (nn::BranchScope): their gradients are final on the compute stream only after the
  /// join, and an observer acts on the compute stream.
  void hold_grads_ready() const { ++hold_depth_; }
  /// Deliver the held notifications, in the order they were made, once the outermost hold ends.
  void release_grads_ready() const {
    if (hold_depth_ == 0 || --hold_depth_ > 0) return;
    std::vector<std::pair<ParamId, int>> q;
    q.swap(held_);
    if (grad_ready_)
      for (const auto& [first, count] : q) grad_ready_(first, count);
  }
  /// End a hold without delivering (a backward abandoned by an exception).
  void drop_held_grads_ready() const noexcept {
    if (hold_depth_ > 0 && --hold_depth_ == 0) held_.clear();
  }
  std::int64_t n_compute_slots() const { return n_compute_slots_; }
  std::int64_t n_fp32_slots() const { return n_fp32_slots_; }
  /// Bytes of parameter state this store holds (master + copies + gradients + buffers).
  std::size_t bytes() const {
    std::size_t b = sizeof(float) * static_cast<std::size_t>(n_compute_slots_ + n_fp32_slots_ + n_buffer_);
    if constexpr (!kAliasCompute)
      b += 2 * sizeof(T) * static_cast<std::size_t>(n_compute_slots_) + sizeof(float) * n_fp32_slots_;
    else b += sizeof(float) * static_cast<std::size_t>(n_compute_slots_ + n_fp32_slots_);
    return b;
  }

 private:
  static std::int64_t round_up(std::int64_t n) { return (n + kParamAlign - 1) / kParamAlign * kParamAlign; }
  static Shape vec(std::int64_t n) { return {1, 1, 1, n}; }
  void check_allocated() const { AMPKIT_CHECK(allocated_, "parameter store: used before allocate()"); }
  const ParamInfo& compute_param(ParamId id) const {
    check_allocated();
    const auto& p = info(id);
    AMPKIT_CHECK(p.kind == ParamKind::kCompute, "parameter store: '", p.name, "' is an fp32 parameter");
    return p;
  }
  const ParamInfo& fp32_param_info(ParamId id) const {
    check_allocated();
    const auto& p = info(id);
    AMPKIT_CHECK(p.kind == ParamKind::kFp32, "parameter store: '", p.name, "' is a compute-type parameter");
    return p;
  }

  std::vector<ParamInfo> params_;
  std::vector<BufferInfo> buffers_;
  std::map<std::string, int> index_, buffer_index_;
  std::int64_t n_compute_slots_ = 0, n_fp32_slots_ = 0, n_buffer_ = 0;
  bool allocated_ = false;
  bool recompute_conv_outputs_ = false;
  bool recompute_bn_outputs_ = true;
  GradReadyObserver grad_ready_;
  mutable int hold_depth_ = 0;
  mutable std::vector<std::pair<ParamId, int>> held_;  ///< notifications held back, in order
  // mutable: views handed out by const accessors point into them (the store owns the memory,
  // constness of the store guards its layout, not the values).
  mutable Tensor<float> master_;
  mutable Tensor<T> compute_, grad_compute_;
  mutable Tensor<float> grad_fp32_;
  mutable Tensor<float> buffers_t_;
};

}  // namespace ampkit::nn

/// @brief ampkit::Host, the host backend context: the reference every CUDA op is tested against,
/// and the backend that runs the whole flow on a machine without a GPU.
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <span>
#include <thread>
#include <type_traits>

#include "ampkit/core/tensor.hpp"

namespace ampkit {

/// Backend tag and context for the host (Eigen) backend. Ops are free functions overloaded on it,
/// with the same signatures as on ampkit::Cuda. Storage types are emulated faithfully: tensors
/// hold ampkit::half / bfloat16 and every op rounds its outputs with round-to-nearest-even, as
/// the GPU does, while computing in float.
class Host {
 public:
  /// @param n_threads  Eigen's GEMM threads (0: all hardware threads).
  explicit Host(int n_threads = 0) {
    n_threads_ = n_threads > 0 ? n_threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    Eigen::setNbThreads(n_threads_);
  }
  Host(const Host&) = delete;
  Host& operator=(const Host&) = delete;

  static constexpr const char* name() { return "host"; }
  int n_threads() const { return n_threads_; }
  void synchronize() const {}

  // The same allocation/copy interface as ampkit::Cuda, so model and test code is written once.
  template <class T>
  HostTensor<T> tensor(Shape s) const {
    return HostTensor<T>(s);
  }
  template <class T>
  HostTensor<T> to_device(const HostTensor<T>& h) const {
    return h.clone();
  }
  template <class T>
  void copy_to_device(TensorView<T> dst, std::span<const T> src) const {
    AMPKIT_CHECK(static_cast<std::size_t>(dst.numel()) == src.size(), "copy_to_device: destination holds ",
                 dst.numel(), " elements, source ", src.size());
    std::copy(src.begin(), src.end(), dst.data);
  }
  template <class T>
  HostTensor<std::remove_const_t<T>> to_host(TensorView<T> d) const {
    HostTensor<std::remove_const_t<T>> h(d.shape);
    std::copy(d.data, d.data + d.numel(), h.data());
    return h;
  }

 private:
  int n_threads_ = 1;
};

}  // namespace ampkit

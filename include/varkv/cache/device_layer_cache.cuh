#pragma once
//! \file
//! Device storage of one layer's KV cache, laid out exactly like the host `LayerKvStore`.
//!
//! \par Overview
//! Keys and values are [sequences, heads, capacity, head_dim] (contiguous), each (sequence, head)
//! row holds its first `lengths[row]` slots, `positions` [sequences, heads, capacity] give each slot's
//! flattened token position (-1 past the length). Same layout as `LayerKvStore`, so CPU and GPU
//! policies select the same slots and tests compare buffers byte for byte. `DeviceLayerCache` owns
//! the memory; `DeviceLayerCacheView` is what kernels take by value.
//!
//! \par Snippet
//! \code
//! varkv::DeviceLayerCache<__nv_bfloat16> dev(host_store);   // upload
//! auto v = dev.view();                                       // pass to fused_attention / compaction
//! \endcode

#include <cstdint>
#include <array>
#include <vector>

#include "varkv/cache/layer_kv_store.hpp"
#include "varkv/core/cuda_check.cuh"
#include "varkv/core/tensor_view.hpp"

namespace varkv {

//! Non-owning device view of one layer's cache.
template <class T>
struct DeviceLayerCacheView {
  TensorView<T, 4> keys;                 //!< [S, H, cap, d]
  TensorView<T, 4> values;               //!< [S, H, cap, d]
  std::int32_t* lengths = nullptr;       //!< [S * H], row = seq * H + head
  TensorView<std::int32_t, 3> positions; //!< [S, H, cap]; -1 past the length

  VARKV_HOST_DEVICE std::int64_t sequences() const { return keys.shape(0); }
  VARKV_HOST_DEVICE std::int64_t heads() const { return keys.shape(1); }
  VARKV_HOST_DEVICE std::int64_t capacity() const { return keys.shape(2); }
  VARKV_HOST_DEVICE std::int64_t head_dim() const { return keys.shape(3); }
};

template <class T>
class DeviceLayerCache {
 public:
  DeviceLayerCache() = default;
  DeviceLayerCache(int sequences, int heads, int head_dim, std::int64_t capacity)
      : sequences_(sequences), heads_(heads), head_dim_(head_dim), capacity_(capacity) {
    require(sequences > 0 && heads > 0 && head_dim > 0 && capacity >= 0,
            "device KV cache: sequences ({}), heads ({}), head_dim ({}) must be positive and capacity ({}) non-negative",
            sequences, heads, head_dim, capacity);
    const auto slots = static_cast<std::size_t>(std::int64_t{sequences} * heads * capacity);
    keys_ = DeviceBuffer<T>(slots * head_dim);
    values_ = DeviceBuffer<T>(slots * head_dim);
    positions_ = DeviceBuffer<std::int32_t>(slots);
    lengths_ = DeviceBuffer<std::int32_t>(static_cast<std::size_t>(sequences) * heads);
    if (slots) VARKV_CUDA_CHECK(cudaMemset(positions_.data(), 0xFF, positions_.bytes()));  // -1 everywhere
    VARKV_CUDA_CHECK(cudaMemset(lengths_.data(), 0, lengths_.bytes()));
  }
  //! Uploads a host store (same element size; e.g. bf16 on both sides).
  template <class U>
  explicit DeviceLayerCache(const LayerKvStore<U>& host)
      : DeviceLayerCache(host.sequences(), host.heads(), host.head_dim(), host.capacity()) {
    upload(host);
  }

  template <class U>
  void upload(const LayerKvStore<U>& host) {
    static_assert(sizeof(U) == sizeof(T), "device KV cache: host and device element sizes differ");
    require(host.sequences() == sequences_ && host.heads() == heads_ && host.head_dim() == head_dim_ &&
                host.capacity() == capacity_,
            "device KV cache: host store [{}, {}, {}, {}] does not match device [{}, {}, {}, {}]", host.sequences(),
            host.heads(), host.capacity(), host.head_dim(), sequences_, heads_, capacity_, head_dim_);
    copy_in(keys_, host.keys().data());
    copy_in(values_, host.values().data());
    copy_in(positions_, host.positions().data());
    copy_in(lengths_, host.lengths().data());
  }

  DeviceLayerCacheView<T> view() const {
    const std::int64_t d = head_dim_, cap = capacity_;
    const std::array<std::int64_t, 4> shape{sequences_, heads_, cap, d};
    const std::array<std::int64_t, 4> strides{heads_ * cap * d, cap * d, d, 1};
    return {TensorView<T, 4>(keys_.data(), shape, strides), TensorView<T, 4>(values_.data(), shape, strides),
            lengths_.data(),
            TensorView<std::int32_t, 3>(positions_.data(), {sequences_, heads_, cap}, {heads_ * cap, cap, 1})};
  }

  std::vector<T> download_keys() const { return keys_.download(); }
  std::vector<T> download_values() const { return values_.download(); }
  std::vector<std::int32_t> download_positions() const { return positions_.download(); }
  std::vector<std::int32_t> download_lengths() const { return lengths_.download(); }

  int sequences() const { return sequences_; }
  int heads() const { return heads_; }
  int head_dim() const { return head_dim_; }
  std::int64_t capacity() const { return capacity_; }

 private:
  template <class D, class S>
  static void copy_in(DeviceBuffer<D>& dst, const S* src) {
    if (dst.size()) VARKV_CUDA_CHECK(cudaMemcpy(dst.data(), src, dst.bytes(), cudaMemcpyHostToDevice));
  }
  int sequences_ = 0, heads_ = 0, head_dim_ = 0;
  std::int64_t capacity_ = 0;
  DeviceBuffer<T> keys_, values_;
  DeviceBuffer<std::int32_t> positions_, lengths_;
};

}  // namespace varkv

#pragma once
//! \file
//! Non-owning strided views over host or device memory, with checked construction.
//!
//! \par Overview
//! A `TensorView<T, Rank>` is a pointer, a shape and strides (in elements), small enough to pass to a
//! kernel by value. It never owns memory and never checks on access (device code reads it); all
//! checking happens once, on the host, in `make_view` / `expect_shape`, which throw `varkv::Error`
//! naming the tensor and the expected vs given shape.
//!
//! \par Snippet
//! \code
//! std::vector<float> buf(2 * 16 * 4 * 64);
//! auto q = varkv::make_view<4>("q", buf.data(), {2, 16, 4, 64});       // contiguous
//! varkv::expect_shape("q", q, {2, 16, varkv::kAnyExtent, 64});        // ok
//! varkv::make_view<4>("q", buf.data(), {2, 16, 4, 64}, buf.size() - 1); // throws: needs 8192 elements
//! \endcode

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <type_traits>

#include "varkv/core/config.hpp"

#include "varkv/core/error.hpp"

namespace varkv {

template <class T, int Rank>
class TensorView {
  static_assert(Rank >= 1 && Rank <= 6, "TensorView supports ranks 1..6");

 public:
  using element_type = T;
  using Extents = std::array<std::int64_t, Rank>;
  static constexpr int rank = Rank;

  constexpr TensorView() = default;
  //! Unchecked: use make_view() on the host.
  VARKV_HOST_DEVICE constexpr TensorView(T* data, const Extents& shape, const Extents& strides)
      : data_(data), shape_(shape), strides_(strides) {}

  //! A view of const elements from a view of mutable ones, over the same memory.
  template <class U>
    requires(std::is_same_v<const U, T> && !std::is_same_v<U, T>)
  VARKV_HOST_DEVICE constexpr TensorView(const TensorView<U, Rank>& other)
      : data_(other.data()), shape_(other.shape()), strides_(other.strides()) {}

  VARKV_HOST_DEVICE constexpr T* data() const { return data_; }
  VARKV_HOST_DEVICE constexpr std::int64_t shape(int i) const { return shape_[i]; }
  VARKV_HOST_DEVICE constexpr std::int64_t stride(int i) const { return strides_[i]; }
  VARKV_HOST_DEVICE constexpr const Extents& shape() const { return shape_; }
  VARKV_HOST_DEVICE constexpr const Extents& strides() const { return strides_; }
  VARKV_HOST_DEVICE constexpr std::int64_t size() const {
    std::int64_t n = 1;
    for (int i = 0; i < Rank; ++i) n *= shape_[i];
    return n;
  }
  VARKV_HOST_DEVICE constexpr bool empty() const { return size() == 0; }
  VARKV_HOST_DEVICE constexpr bool is_contiguous() const {
    std::int64_t expect = 1;
    for (int i = Rank - 1; i >= 0; --i) {
      if (shape_[i] != 1 && strides_[i] != expect) return false;
      expect *= shape_[i];
    }
    return true;
  }

  template <class... I>
    requires(sizeof...(I) == Rank)
  VARKV_HOST_DEVICE constexpr std::int64_t offset(I... idx) const {
    const std::int64_t i[] = {static_cast<std::int64_t>(idx)...};
    std::int64_t o = 0;
    for (int d = 0; d < Rank; ++d) o += i[d] * strides_[d];
    return o;
  }
  template <class... I>
    requires(sizeof...(I) == Rank)
  VARKV_HOST_DEVICE constexpr T& operator()(I... idx) const {
    return data_[offset(idx...)];
  }

 private:
  T* data_ = nullptr;
  Extents shape_{};
  Extents strides_{};
};

//! Row-major (C-order) strides of a shape.
template <int Rank>
constexpr std::array<std::int64_t, Rank> contiguous_strides(const std::array<std::int64_t, Rank>& shape) {
  std::array<std::int64_t, Rank> s{};
  std::int64_t acc = 1;
  for (int i = Rank - 1; i >= 0; --i) {
    s[i] = acc;
    acc *= shape[i];
  }
  return s;
}

//! Wildcard extent for expect_shape().
inline constexpr std::int64_t kAnyExtent = -1;

//! "[2, 16, *, 64]"; kAnyExtent prints as * when `wildcards` is set.
template <std::size_t N>
inline std::string format_shape(const std::array<std::int64_t, N>& s, bool wildcards = false) {
  std::string out = "[";
  for (std::size_t i = 0; i < N; ++i) {
    if (i) out += ", ";
    out += wildcards && s[i] == kAnyExtent ? std::string("*") : std::to_string(s[i]);
  }
  return out + "]";
}

//! Checked view. `capacity` is the number of elements the allocation holds (pass it whenever it is
//! known: the view must fit inside). Negative extents, a null pointer for a non-empty view, or a view
//! that reaches beyond `capacity` throw varkv::Error naming `name`.
template <int Rank, class T>
TensorView<T, Rank> make_view(std::string_view name, T* data, const std::array<std::int64_t, Rank>& shape,
                              const std::array<std::int64_t, Rank>& strides,
                              std::int64_t capacity = -1) {
  std::int64_t extent = 1;  // one past the largest offset reached
  bool empty = false;
  // The messages' shapes are formatted only on failure: views are made on every launch path.
  for (int i = 0; i < Rank; ++i) {
    if (shape[i] < 0) fail("tensor '{}': extent {} of shape {} is negative", name, i, format_shape(shape));
    if (strides[i] < 0) fail("tensor '{}': stride {} of strides {} is negative", name, i, format_shape(strides));
    if (shape[i] == 0) empty = true;
    else extent += (shape[i] - 1) * strides[i];
  }
  if (empty) return {data, shape, strides};
  if (data == nullptr) fail("tensor '{}': null data for non-empty shape {}", name, format_shape(shape));
  if (capacity >= 0 && extent > capacity)
    fail("tensor '{}': shape {} with strides {} needs {} elements but its buffer holds {}", name, format_shape(shape),
         format_shape(strides), extent, capacity);
  return {data, shape, strides};
}

//! Checked contiguous (row-major) view.
template <int Rank, class T>
TensorView<T, Rank> make_view(std::string_view name, T* data, const std::array<std::int64_t, Rank>& shape,
                              std::int64_t capacity = -1) {
  return make_view<Rank, T>(name, data, shape, contiguous_strides<Rank>(shape), capacity);
}

//! Throws varkv::Error "tensor 'name': expected shape [..], got [..]" unless every extent matches
//! (kAnyExtent matches anything).
template <class T, int Rank>
void expect_shape(std::string_view name, const TensorView<T, Rank>& v, const std::array<std::int64_t, Rank>& expected) {
  for (int i = 0; i < Rank; ++i) {
    if (expected[i] != kAnyExtent && expected[i] != v.shape(i))
      fail("tensor '{}': expected shape {}, got {}", name, format_shape(expected, true), format_shape(v.shape()));
  }
}

//! Throws unless the innermost dimension is unit-stride (kernels read rows as vectors).
template <class T, int Rank>
void expect_unit_inner_stride(std::string_view name, const TensorView<T, Rank>& v) {
  if (v.shape(Rank - 1) > 1 && v.stride(Rank - 1) != 1)  // formatted only on failure (every launch checks)
    fail("tensor '{}': innermost stride must be 1, got {} (shape {})", name, v.stride(Rank - 1), format_shape(v.shape()));
}

}  // namespace varkv

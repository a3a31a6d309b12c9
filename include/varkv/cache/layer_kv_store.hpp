#pragma once
//! \file
//! Host storage of one layer's KV cache: ragged rows, in-place compaction, token positions.
//!
//! \par Overview
//! Keys and values live in [sequences, heads, capacity, head_dim] buffers. Each (sequence, head) row
//! holds its first `length(row)` slots; rows may differ in length (head-wise budgets, separate CFG
//! selection). Every slot remembers the flattened position of its token in the generation, so a
//! policy knows which scale each kept token came from. `retain` compacts a row in place: evicted
//! memory is free for the next scale (no masking).

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "varkv/core/error.hpp"
#include "varkv/core/tensor_view.hpp"

namespace varkv {

template <class T>
class LayerKvStore {
 public:
  LayerKvStore() = default;
  LayerKvStore(int sequences, int heads, int head_dim, std::int64_t capacity)
      : sequences_(sequences), heads_(heads), head_dim_(head_dim), capacity_(capacity) {
    require(sequences > 0 && heads > 0 && head_dim > 0 && capacity >= 0,
            "KV store: sequences ({}), heads ({}), head_dim ({}) must be positive and capacity ({}) non-negative",
            sequences, heads, head_dim, capacity);
    const auto slots = static_cast<std::size_t>(rows() * capacity_);
    keys_.assign(slots * head_dim_, T{});
    values_.assign(slots * head_dim_, T{});
    positions_.assign(slots, -1);
    lengths_.assign(static_cast<std::size_t>(rows()), 0);
  }

  int sequences() const { return sequences_; }
  int heads() const { return heads_; }
  int head_dim() const { return head_dim_; }
  std::int64_t capacity() const { return capacity_; }
  std::int64_t rows() const { return std::int64_t{sequences_} * heads_; }
  std::int32_t length(int seq, int head) const { return lengths_[row(seq, head)]; }
  std::span<const std::int32_t> lengths() const { return lengths_; }
  std::int32_t max_length() const { return lengths_.empty() ? 0 : *std::max_element(lengths_.begin(), lengths_.end()); }
  //! Tokens held over all rows.
  std::int64_t tokens_held() const {
    std::int64_t t = 0;
    for (auto l : lengths_) t += l;
    return t;
  }

  TensorView<const T, 4> keys() const { return view(keys_.data()); }
  TensorView<const T, 4> values() const { return view(values_.data()); }
  TensorView<T, 4> keys() { return view(keys_.data()); }
  TensorView<T, 4> values() { return view(values_.data()); }
  //! [sequences, heads, capacity] flattened positions; -1 beyond a row's length.
  TensorView<const std::int32_t, 3> positions() const {
    return {positions_.data(), {sequences_, heads_, capacity_}, {std::int64_t{heads_} * capacity_, capacity_, 1}};
  }
  std::int32_t position(int seq, int head, std::int64_t slot) const {
    require(slot >= 0 && slot < length(seq, head), "KV store: slot {} outside row (seq {}, head {}) of length {}",
            slot, seq, head, length(seq, head));
    return positions_[row(seq, head) * capacity_ + slot];
  }

  //! Appends n tokens to every row: k, v are [sequences, heads, n, head_dim]; they take the
  //! positions first_position .. first_position + n - 1.
  void append(TensorView<const T, 4> k, TensorView<const T, 4> v, std::int32_t first_position) {
    const std::int64_t n = k.shape(2);
    expect_shape("k (append)", k, {sequences_, heads_, kAnyExtent, head_dim_});
    expect_shape("v (append)", v, {sequences_, heads_, n, head_dim_});
    require(first_position >= 0, "KV store: first position {} is negative", first_position);
    for (int s = 0; s < sequences_; ++s)
      for (int h = 0; h < heads_; ++h) {
        const std::int64_t r = row(s, h), len = lengths_[r];
        require(len + n <= capacity_, "KV store: appending {} tokens to row (seq {}, head {}) holding {} exceeds capacity {}",
                n, s, h, len, capacity_);
        for (std::int64_t i = 0; i < n; ++i) {
          const std::int64_t slot = r * capacity_ + len + i;
          for (int c = 0; c < head_dim_; ++c) {
            keys_[slot * head_dim_ + c] = k(s, h, i, c);
            values_[slot * head_dim_ + c] = v(s, h, i, c);
          }
          positions_[slot] = first_position + static_cast<std::int32_t>(i);
        }
        lengths_[r] = static_cast<std::int32_t>(len + n);
      }
  }

  //! Keeps only `slots` of row (seq, head), in the given order, which must be strictly increasing
  //! (survivors stay in position order). Compacts in place; the row's length becomes slots.size().
  void retain(int seq, int head, std::span<const std::int32_t> slots) {
    const std::int64_t r = row(seq, head), len = lengths_[r];
    for (std::size_t i = 0; i < slots.size(); ++i) {
      require(slots[i] >= 0 && slots[i] < len, "KV store: retained slot {} outside row (seq {}, head {}) of length {}",
              slots[i], seq, head, len);
      require(i == 0 || slots[i] > slots[i - 1], "KV store: retained slots must be strictly increasing ({} after {})",
              slots[i], slots[i - 1]);
    }
    for (std::size_t i = 0; i < slots.size(); ++i) {
      const std::int64_t dst = r * capacity_ + static_cast<std::int64_t>(i), src = r * capacity_ + slots[i];
      if (dst == src) continue;
      std::copy_n(keys_.begin() + src * head_dim_, head_dim_, keys_.begin() + dst * head_dim_);
      std::copy_n(values_.begin() + src * head_dim_, head_dim_, values_.begin() + dst * head_dim_);
      positions_[dst] = positions_[src];
    }
    for (std::int64_t i = static_cast<std::int64_t>(slots.size()); i < len; ++i) positions_[r * capacity_ + i] = -1;
    lengths_[r] = static_cast<std::int32_t>(slots.size());
  }

 private:
  std::int64_t row(int seq, int head) const {
    require(seq >= 0 && seq < sequences_ && head >= 0 && head < heads_,
            "KV store: (seq {}, head {}) outside {} sequences x {} heads", seq, head, sequences_, heads_);
    return std::int64_t{seq} * heads_ + head;
  }
  template <class P>
  TensorView<P, 4> view(P* data) const {
    return {data,
            {sequences_, heads_, capacity_, head_dim_},
            {std::int64_t{heads_} * capacity_ * head_dim_, capacity_ * head_dim_, head_dim_, 1}};
  }

  int sequences_ = 0, heads_ = 0, head_dim_ = 0;
  std::int64_t capacity_ = 0;
  std::vector<T> keys_, values_;
  std::vector<std::int32_t> positions_;
  std::vector<std::int32_t> lengths_;
};

}  // namespace varkv

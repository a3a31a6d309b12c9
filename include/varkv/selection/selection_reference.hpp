#pragma once
//! \file
//! CPU reference of top-k selection and in-place compaction of one layer's KV cache.
//!
//! \par Overview
//! For each (sequence, head) row the candidates are its cache slots [0, len) followed by the current
//! scale's n_new keys (positions first_new_position + i). Their scores live in the key_stat index
//! space of `reference_attention` (cache slot j at j, new key i at cap + i). With a budget B and R
//! retained candidates (positions inside a `RetentionRanges`), the survivors are: every candidate
//! when B >= len + n_new, else all retained ones plus the B - R best-scored others, ties to the lower
//! position (= lower candidate index: slots are kept in position order). R > B is an error. The
//! survivors stay in position order. `compact_reference` then rewrites the store so it holds exactly
//! the survivors (what the GPU kernel `select_and_compact` does in place).
//!
//! \par Snippet
//! \code
//! auto keep = varkv::select_survivors_reference(scores_row, positions_row, len, cap, n_new, first, ranges, 10);
//! varkv::compact_reference(store, scores, new_k, new_v, first, ranges, budgets);
//! \endcode

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <span>
#include <vector>

#include "varkv/cache/layer_kv_store.hpp"
#include "varkv/core/error.hpp"
#include "varkv/core/tensor_view.hpp"
#include "varkv/selection/retention_ranges.hpp"

namespace varkv {

//! Survivors of one row as increasing candidate indices (c < len: cache slot c; c >= len: new key c - len).
//! `scores` has cap + n_new entries, `positions` the row's cap slot positions.
inline std::vector<std::int32_t> select_survivors_reference(std::span<const float> scores,
                                                            std::span<const std::int32_t> positions, std::int32_t len,
                                                            std::int32_t cap, std::int32_t n_new,
                                                            std::int32_t first_new_position,
                                                            const RetentionRanges& retained, std::int32_t budget) {
  require(len >= 0 && len <= cap, "selection: row length {} outside 0..{} (capacity)", len, cap);
  require(n_new >= 0, "selection: n_new is negative ({})", n_new);
  require(static_cast<std::int64_t>(scores.size()) == std::int64_t{cap} + n_new,
          "selection: scores hold {} entries, expected cap + n_new = {}", scores.size(), std::int64_t{cap} + n_new);
  require(static_cast<std::int64_t>(positions.size()) >= len, "selection: {} positions for a row of length {}",
          positions.size(), len);
  require(budget >= 0, "selection: budget {} is negative", budget);
  const std::int32_t n = len + n_new;
  std::vector<std::int32_t> all(static_cast<std::size_t>(n));
  std::iota(all.begin(), all.end(), 0);
  if (budget >= n) return all;
  std::vector<std::uint32_t> key(static_cast<std::size_t>(n));
  std::int32_t kept = 0;
  for (std::int32_t c = 0; c < n; ++c) {
    const std::int32_t pos = c < len ? positions[c] : first_new_position + (c - len);
    const bool keep = retained.contains(pos);
    kept += keep;
    key[c] = keep ? kRetainedKey : score_key(scores[c < len ? c : cap + (c - len)]);
  }
  require(kept <= budget, "selection: {} retained tokens exceed the budget of {}", kept, budget);
  // Best first: larger key, then lower candidate index.
  std::stable_sort(all.begin(), all.end(), [&](std::int32_t a, std::int32_t b) { return key[a] > key[b]; });
  all.resize(static_cast<std::size_t>(budget));
  std::sort(all.begin(), all.end());
  return all;
}

//! Applies the selection to every row of `store`: scores [S, H, cap + n_new], new_k / new_v
//! [S, H, n_new, d], budgets [S * H]. The reference appends the new keys and then retains the
//! survivors, so it needs max length + n_new <= capacity (the GPU kernel does not).
template <class T>
void compact_reference(LayerKvStore<T>& store, TensorView<const float, 3> scores, TensorView<const T, 4> new_k,
                       TensorView<const T, 4> new_v, std::int32_t first_new_position, const RetentionRanges& retained,
                       std::span<const std::int32_t> budgets) {
  retained.validate();
  const int S = store.sequences(), H = store.heads();
  const auto cap = static_cast<std::int32_t>(store.capacity());
  const auto n_new = static_cast<std::int32_t>(new_k.shape(2));
  expect_shape("scores", scores, {S, H, std::int64_t{cap} + n_new});
  require(static_cast<std::int64_t>(budgets.size()) == std::int64_t{S} * H, "selection: {} budgets for {} rows",
          budgets.size(), std::int64_t{S} * H);
  require(store.max_length() + n_new <= cap,
          "selection reference: longest row {} + {} new keys exceeds capacity {} (append-then-retain needs room)",
          store.max_length(), n_new, cap);
  // Decide every row before touching the store, so an error leaves it unchanged.
  std::vector<std::vector<std::int32_t>> keep(static_cast<std::size_t>(S) * H);
  const auto pos = store.positions();
  for (int s = 0; s < S; ++s)
    for (int h = 0; h < H; ++h) {
      const std::int64_t r = std::int64_t{s} * H + h;
      std::vector<float> row(static_cast<std::size_t>(cap + n_new));
      for (std::int32_t j = 0; j < cap + n_new; ++j) row[j] = scores(s, h, j);
      std::vector<std::int32_t> prow(static_cast<std::size_t>(cap));
      for (std::int32_t j = 0; j < cap; ++j) prow[j] = pos(s, h, j);
      try {
        keep[r] = select_survivors_reference(row, prow, store.length(s, h), cap, n_new, first_new_position, retained,
                                             budgets[r]);
      } catch (const Error& e) {
        fail("selection: sequence {}, head {}: {}", s, h, e.what());
      }
    }
  store.append(new_k, new_v, first_new_position);
  for (int s = 0; s < S; ++s)
    for (int h = 0; h < H; ++h) store.retain(s, h, keep[std::int64_t{s} * H + h]);
}

}  // namespace varkv

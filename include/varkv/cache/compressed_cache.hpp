#pragma once
//! \file
//! The KV cache type built from a `cache_policy`: same surface as FullCache plus the statistics seam.
//!
//! \par Overview
//! Per (step, layer) the model asks `statistics(step, l)`; when `.needed`, it runs attention with those
//! observers and that statistic and passes key_stat [S, H, cap + n_new] (cap = layer(l).capacity(),
//! the layout of `reference_attention`) to `commit(step, l, k, v, key_stat)`; otherwise it calls
//! `commit(step, l, k, v)`. Commit:
//! 1. classifies every layer at this step (classification axis) and counts the drafters;
//! 2. scores every candidate of every (sequence, head) row: the kept cache, then the step's own keys
//!    (eviction axis; higher = kept first);
//! 3. sizes each row (budget axis; head-adaptive budgets split one total over the heads of a sequence);
//! 4. keeps the retained positions (retention axis) plus the best-scored candidates up to the row's
//!    size, ties to the lower position, survivors in position order, by in-place compaction
//!    (`LayerKvStore::retain`): evicted memory is free for the next scale, never masked;
//! 5. records what each row now holds in the `KvLedger` (exact bytes per layer, head and origin scale).
//!
//! \par Budget rules
//! A row's budget counts its retained tokens. When the retained tokens alone exceed it, commit throws
//! `varkv::Error` naming step, layer, sequence and head, unless the retention policy says
//! `retention_wins()`: then the row keeps exactly its retained tokens.
//!
//! \par CFG
//! `policy.options.cfg_shared` (default false, as in the public ScaleKV code): false = every batch row
//! selects for itself; true = the conditional and unconditional rows of an image keep the same tokens,
//! ranked by the sum of both rows' scores.
//!
//! \par What costs nothing when unused
//! A policy that keeps everything (no eviction, unlimited budget) only appends. Key norms are computed
//! only for policies that declare `uses_key_norm`, accumulated statistics kept only for those that
//! declare `uses_accumulated`, and statistics are requested only when the eviction policy asks.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "varkv/cache/full_cache.hpp"
#include "varkv/policy/compose.hpp"
#include "varkv/selection/selection_reference.hpp"

namespace varkv {

template <class T, class Policy>
class CompressedCache {
  using E = typename Policy::eviction_type;
  using Bud = typename Policy::budget_type;
  static constexpr bool kKeepsAll = policy_traits<Policy>::keeps_all;
  static constexpr bool kKeyNorm = policy_traits<Policy>::key_norm;
  static constexpr bool kAccumulated = policy_traits<Policy>::accumulated;
  static constexpr bool kHeadSplit = policy_traits<Policy>::head_split;

 public:
  using policy_type = Policy;

  CompressedCache(const ModelGeometry& geometry, const ScaleSchedule& schedule, BatchShape batch, KvDTypes accounted_as,
                  Policy policy = {})
      : geometry_(geometry), schedule_(schedule), batch_(batch), ledger_(geometry, schedule, accounted_as),
        policy_(std::move(policy)) {
    batch_.validate();
    require(!policy_.options.cfg_shared || batch_.cfg,
            "compressed cache: cfg_shared selection needs a CFG batch (conditional + unconditional rows)");
    for (int l = 0; l < geometry.layers; ++l) {
      layers_.emplace_back(batch.sequences(), geometry.heads, geometry.head_dim, schedule.total());
      if constexpr (kAccumulated) acc_.emplace_back(static_cast<std::size_t>(layers_.back().rows() * schedule.total()), 0.f);
    }
  }
  const ModelGeometry& geometry() const { return geometry_; }
  const ScaleSchedule& schedule() const { return schedule_; }
  BatchShape batch() const { return batch_; }
  const LayerKvStore<T>& layer(int l) const { return layers_.at(check_layer(l)); }
  const KvLedger& ledger() const { return ledger_; }
  const Policy& policy() const { return policy_; }

  //! What the attention of (step, layer) must measure for this policy (`.needed` false: nothing).
  StatRequest statistics(int step, int l) const {
    check_layer(l);
    require(step >= 0 && step < schedule_.size(), "compressed cache: step {} outside schedule '{}'", step, schedule_.name());
    return policy_.eviction.request(step, l, schedule_);
  }

  void commit(int step, int l, TensorView<const T, 4> k, TensorView<const T, 4> v) {
    require(!statistics(step, l).needed, "compressed cache: eviction '{}' needs key_stat at step {}, layer {}", E::name,
            step, l);
    commit_impl(step, l, k, v, nullptr);
  }
  void commit(int step, int l, TensorView<const T, 4> k, TensorView<const T, 4> v, TensorView<const float, 3> key_stat) {
    commit_impl(step, l, k, v, &key_stat);
  }

 private:
  struct Row {
    std::vector<float> scores;        // candidate order: cache slots, then new keys
    std::vector<std::uint32_t> keys;  // selection keys (retained above every score)
    std::int32_t retained = 0;
  };

  void commit_impl(int step, int l, TensorView<const T, 4> k, TensorView<const T, 4> v, const TensorView<const float, 3>* ks) {
    check_layer(l);
    require(step >= 0 && step < schedule_.size(), "compressed cache: step {} outside schedule '{}'", step, schedule_.name());
    auto& store = layers_[l];
    const int S = batch_.sequences(), H = geometry_.heads, d = geometry_.head_dim;
    const auto n_new = static_cast<std::int32_t>(schedule_.tokens(step));
    const auto first = static_cast<std::int32_t>(schedule_.begin(step));
    const auto cap = static_cast<std::int32_t>(store.capacity());
    expect_shape("k (commit)", k, {S, H, n_new, d});
    expect_shape("v (commit)", v, {S, H, n_new, d});
    if (ks) expect_shape("key_stat (commit)", *ks, {S, H, std::int64_t{cap} + n_new});
    require(last_step_[l] == step - 1, "compressed cache: layer {} got step {} after step {}; commit steps in order", l,
            step, last_step_[l]);
    last_step_[l] = step;
    if constexpr (kKeepsAll) {
      store.append(k, v, first);
      record_store(ledger_, step, l, store);
      return;
    }

    const RetentionRanges ranges = policy_.retention.ranges(step, schedule_);
    ranges.validate();
    BudgetContext bc = budget_context(policy_, step, l, schedule_, geometry_);
    const auto pos = store.positions();

    // 2. scores
    std::vector<Row> rows(static_cast<std::size_t>(S) * H);
    std::vector<std::int32_t> cpos;
    std::vector<float> stat, acc, norm;
    for (int s = 0; s < S; ++s)
      for (int h = 0; h < H; ++h) {
        const std::int64_t r = std::int64_t{s} * H + h;
        const std::int32_t len = store.length(s, h), n = len + n_new;
        cpos.resize(n);
        for (std::int32_t c = 0; c < n; ++c) cpos[c] = c < len ? pos(s, h, c) : first + (c - len);
        stat.assign(ks ? n : 0, 0.f);
        for (std::int32_t c = 0; c < (ks ? n : 0); ++c) stat[c] = (*ks)(s, h, c < len ? c : cap + (c - len));
        acc.assign(kAccumulated ? n : 0, 0.f);
        if constexpr (kAccumulated) std::copy_n(acc_[l].begin() + r * cap, len, acc.begin());
        norm.assign(kKeyNorm ? n : 0, 0.f);
        if constexpr (kKeyNorm)
          for (std::int32_t c = 0; c < n; ++c) {
            double q = 0;
            for (int e = 0; e < d; ++e) {
              const double x = c < len ? double(store.keys()(s, h, c, e)) : double(k(s, h, c - len, e));
              q += x * x;
            }
            norm[c] = static_cast<float>(std::sqrt(q));
          }
        const ScoreContext ctx{step, l, s, h, &schedule_, len, n_new, first, cpos, stat, acc, norm};
        Row& row = rows[r];
        row.scores.assign(n, 0.f);
        policy_.eviction.score(ctx, row.scores);
        if constexpr (kAccumulated) {
          // What the row will remember: the accumulated statistic including this step's.
          for (std::int32_t c = 0; c < n; ++c) acc[c] += ks ? stat[c] : 0.f;
          next_acc_[r] = acc;
        }
        row.keys.resize(n);
        row.retained = 0;
        for (std::int32_t c = 0; c < n; ++c) {
          const bool kept = ranges.contains(cpos[c]);
          row.retained += kept;
          row.keys[c] = kept ? kRetainedKey : score_key(row.scores[c]);
        }
      }
    if (policy_.options.cfg_shared) share_cfg_scores(rows, store);

    // 3. budgets
    std::vector<std::int32_t> budget(rows.size());
    for (int s = 0; s < S; ++s) {
      for (int h = 0; h < H; ++h) {
        bc.head = h;
        const std::int64_t b = policy_.budget.capacity(bc);
        require(b >= 0, "compressed cache: budget {} for step {}, layer {}, head {} is negative", b, step, l, h);
        const std::int64_t r = std::int64_t{s} * H + h;
        budget[r] = static_cast<std::int32_t>(std::min<std::int64_t>(b, rows[r].keys.size()));
      }
      if constexpr (kHeadSplit) split_over_heads(rows, budget, s, step, l);
    }

    // 4. selection and compaction
    std::vector<std::vector<std::int32_t>> keep(rows.size());
    std::vector<float> sc;
    std::vector<std::int32_t> prow;
    for (int s = 0; s < S; ++s)
      for (int h = 0; h < H; ++h) {
        const std::int64_t r = std::int64_t{s} * H + h;
        const std::int32_t len = store.length(s, h);
        std::int32_t b = budget[r];
        if (rows[r].retained > b) {
          require(policy_.retention.retention_wins(),
                  "compressed cache: step {}, layer {}, seq {}, head {}: {} retained tokens exceed the budget of {} "
                  "(set retention wins=1 to keep them anyway)",
                  step, l, s, h, rows[r].retained, b);
          b = rows[r].retained;
        }
        sc.assign(static_cast<std::size_t>(cap + n_new), 0.f);
        prow.assign(static_cast<std::size_t>(cap), -1);
        for (std::int32_t c = 0; c < len + n_new; ++c) sc[c < len ? c : cap + (c - len)] = rows[r].scores[c];
        for (std::int32_t c = 0; c < len; ++c) prow[c] = pos(s, h, c);
        keep[r] = select_survivors_reference(sc, prow, len, cap, n_new, first, ranges, b);
      }
    store.append(k, v, first);
    for (int s = 0; s < S; ++s)
      for (int h = 0; h < H; ++h) {
        const std::int64_t r = std::int64_t{s} * H + h;
        store.retain(s, h, keep[r]);
        if constexpr (kAccumulated)
          for (std::size_t i = 0; i < keep[r].size(); ++i) acc_[l][r * cap + i] = next_acc_[r][keep[r][i]];
      }
    record_store(ledger_, step, l, store);
  }

  // CFG-shared selection: both rows of an image rank by the sum of their scores.
  void share_cfg_scores(std::vector<Row>& rows, const LayerKvStore<T>& store) const {
    const int H = geometry_.heads, images = batch_.sequences() / 2;
    for (int s = 0; s < images; ++s)
      for (int h = 0; h < H; ++h) {
        Row& a = rows[std::int64_t{s} * H + h];
        Row& b = rows[std::int64_t{s + images} * H + h];
        require(a.scores.size() == b.scores.size() && store.length(s, h) == store.length(s + images, h),
                "compressed cache: CFG rows of image {} (head {}) hold different tokens; cfg_shared needs a cache that "
                "was always shared",
                s, h);
        for (std::size_t i = 0; i < a.scores.size(); ++i) {
          b.scores[i] = a.scores[i] = a.scores[i] + b.scores[i];
          if (a.keys[i] != kRetainedKey) b.keys[i] = a.keys[i] = score_key(a.scores[i]);
        }
      }
  }

  // Head-adaptive split of sequence s: heads share the sum of their budgets.
  void split_over_heads(const std::vector<Row>& rows, std::vector<std::int32_t>& budget, int s, int step, int l) const {
    const int H = geometry_.heads;
    const std::int64_t r0 = std::int64_t{s} * H;
    std::int64_t total = 0, retained = 0, need = 0;
    for (int h = 0; h < H; ++h) {
      total += budget[r0 + h];
      retained += rows[r0 + h].retained;
    }
    const std::int64_t average = H > 0 ? total / H : 0;
    const std::int64_t guaranteed = policy_.budget.guaranteed(average);
    std::vector<std::int32_t> base(H);
    for (int h = 0; h < H; ++h) {
      const auto n = static_cast<std::int64_t>(rows[r0 + h].keys.size());
      base[h] = static_cast<std::int32_t>(std::min(n, std::max<std::int64_t>(rows[r0 + h].retained, guaranteed)));
      need += base[h];
    }
    if (retained > total) {
      require(policy_.retention.retention_wins(),
              "compressed cache: step {}, layer {}, seq {}: {} retained tokens exceed the heads' shared budget of {} "
              "(set retention wins=1 to keep them anyway)",
              step, l, s, retained, total);
      for (int h = 0; h < H; ++h) budget[r0 + h] = rows[r0 + h].retained;
      return;
    }
    if (need > total)
      for (int h = 0; h < H; ++h) base[h] = rows[r0 + h].retained;  // floors do not fit: retained only
    std::int64_t left = total;
    for (int h = 0; h < H; ++h) left -= base[h];
    // Candidates of each head in its selection order; the heads' remainders compete on one ranking.
    struct Cand { std::uint32_t key; int head; std::int32_t index; };
    std::vector<Cand> pool;
    for (int h = 0; h < H; ++h) {
      const auto& keys = rows[r0 + h].keys;
      std::vector<std::int32_t> order(keys.size());
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](std::int32_t a, std::int32_t b) { return keys[a] > keys[b]; });
      for (std::size_t i = static_cast<std::size_t>(base[h]); i < order.size(); ++i) pool.push_back({keys[order[i]], h, order[i]});
    }
    const auto take = static_cast<std::size_t>(std::min<std::int64_t>(left, static_cast<std::int64_t>(pool.size())));
    std::partial_sort(pool.begin(), pool.begin() + static_cast<std::ptrdiff_t>(take), pool.end(), [](const Cand& a, const Cand& b) {
      if (a.key != b.key) return a.key > b.key;
      if (a.head != b.head) return a.head < b.head;
      return a.index < b.index;
    });
    for (int h = 0; h < H; ++h) budget[r0 + h] = base[h];
    for (std::size_t i = 0; i < take; ++i) ++budget[r0 + pool[i].head];
  }

  int check_layer(int l) const {
    require(l >= 0 && l < geometry_.layers, "compressed cache: layer {} outside 0..{}", l, geometry_.layers - 1);
    return l;
  }
  ModelGeometry geometry_;
  ScaleSchedule schedule_;
  BatchShape batch_;
  KvLedger ledger_;
  Policy policy_;
  std::vector<LayerKvStore<T>> layers_;
  std::vector<std::vector<float>> acc_;                       // [layer][row * cap + slot] (uses_accumulated only)
  std::vector<std::vector<float>> next_acc_ = std::vector<std::vector<float>>(
      static_cast<std::size_t>(batch_.sequences()) * geometry_.heads);
  std::vector<int> last_step_ = std::vector<int>(static_cast<std::size_t>(geometry_.layers), -1);
};

}  // namespace varkv

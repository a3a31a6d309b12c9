#pragma once
//! \file
//! The uncompressed KV cache: every scale's K/V appended to every layer, nothing evicted.
//!
//! \par Overview
//! The baseline every compressed cache is measured against (and the `Full` preset of the policy
//! framework). One `LayerKvStore` per layer, sized for the whole schedule; after each scale step
//! `commit` appends the step's K/V and records what the layer now holds in the `KvLedger`.
//!
//! \par Protocol per step s and layer l
//! 1. attention of the step's queries over `layer(l)` (the kept tokens) + the step's own K/V;
//! 2. `commit(s, l, k, v)`: the step's K/V join the cache.

#include <cstdint>
#include <vector>

#include "varkv/cache/layer_kv_store.hpp"
#include "varkv/core/kv_ledger.hpp"

namespace varkv {

//! Fills the ledger's entries of (step, layer) from the positions a store holds.
template <class T>
void record_store(KvLedger& ledger, int step, int layer, const LayerKvStore<T>& store) {
  const ScaleSchedule& sched = ledger.schedule();
  const auto pos = store.positions();
  std::vector<std::int64_t> per_origin(static_cast<std::size_t>(sched.size()));
  for (int h = 0; h < store.heads(); ++h) {
    std::fill(per_origin.begin(), per_origin.end(), 0);
    for (int s = 0; s < store.sequences(); ++s)
      for (std::int32_t j = 0; j < store.length(s, h); ++j) ++per_origin[sched.scale_of(pos(s, h, j))];
    for (int o = 0; o < sched.size(); ++o) {
      require(o <= step || per_origin[o] == 0, "KV ledger: layer {} holds tokens of scale {} after step {}", layer, o, step);
      if (o <= step) ledger.set_tokens(step, layer, h, o, per_origin[o]);
    }
  }
}

template <class T>
class FullCache {
 public:
  FullCache(const ModelGeometry& geometry, const ScaleSchedule& schedule, BatchShape batch, KvDTypes accounted_as)
      : geometry_(geometry), schedule_(schedule), batch_(batch), ledger_(geometry, schedule, accounted_as) {
    batch_.validate();
    layers_.reserve(static_cast<std::size_t>(geometry.layers));
    for (int l = 0; l < geometry.layers; ++l)
      layers_.emplace_back(batch.sequences(), geometry.heads, geometry.head_dim, schedule.total());
  }

  const ModelGeometry& geometry() const { return geometry_; }
  const ScaleSchedule& schedule() const { return schedule_; }
  BatchShape batch() const { return batch_; }
  const LayerKvStore<T>& layer(int l) const { return layers_.at(check_layer(l)); }
  const KvLedger& ledger() const { return ledger_; }

  //! Appends step `step`'s K/V ([sequences, heads, tokens(step), head_dim]) to layer `l`.
  void commit(int step, int l, TensorView<const T, 4> k, TensorView<const T, 4> v) {
    check_layer(l);
    require(step >= 0 && step < schedule_.size(), "full cache: step {} outside schedule '{}' ({} scales)", step,
            schedule_.name(), schedule_.size());
    auto& store = layers_[l];
    const std::int64_t expected_first = schedule_.begin(step);
    require(store.max_length() == expected_first,
            "full cache: layer {} holds {} tokens but step {} begins at position {}; commit steps in order", l,
            store.max_length(), step, expected_first);
    expect_shape("k (commit)", k, {batch_.sequences(), geometry_.heads, schedule_.tokens(step), geometry_.head_dim});
    store.append(k, v, static_cast<std::int32_t>(expected_first));
    record_store(ledger_, step, l, store);
  }

 private:
  int check_layer(int l) const {
    require(l >= 0 && l < geometry_.layers, "full cache: layer {} outside 0..{}", l, geometry_.layers - 1);
    return l;
  }
  ModelGeometry geometry_;
  ScaleSchedule schedule_;
  BatchShape batch_;
  KvLedger ledger_;
  std::vector<LayerKvStore<T>> layers_;
};

}  // namespace varkv

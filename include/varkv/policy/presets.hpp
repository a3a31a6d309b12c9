#pragma once
//! \file
//! Named presets: the published methods as compositions of the four axes, with their defaults.
//!
//! \par Overview
//! | preset | eviction | budget | classification | retention |
//! |---|---|---|---|---|
//! | `Full` | none | unlimited | uniform | none |
//! | `ScaleKV` | 4x4 patch-centre window, max-pool 5 | drafter/refiner | profile (ScaleKV table) | none |
//! | `AMSKV` | recency | condensed + local scales | profile (AMS-KV table) | condensed scales |
//! | `StreamingLLM` | sinks + recent | uniform | uniform | none |
//! | `H2O` | accumulated attention mass | uniform | uniform | none |
//! | `SnapKV` | observation window (whole current map), max-pool 7 | uniform | uniform | none |
//! | `PyramidKV` | SnapKV's | depth pyramid | uniform | none |
//! | `AdaKV` | SnapKV's | head-adaptive | uniform | none |
//! | `KeyNorm`, `Random` | smallest key norm / seeded random (controls) | uniform | uniform | none |
//! Each factory takes the runtime parameters; `registry.hpp` builds them from text.
//!
//! \par Snippet
//! \code
//! auto p = varkv::presets::amskv({.condensed = 2, .local = 1}, profile);
//! varkv::CompressedCache<float, varkv::presets::AMSKV> cache(geometry, schedule, batch, dtypes, p);
//! \endcode
#include "varkv/policy/budget/drafter_refiner.hpp"
#include "varkv/policy/budget/head_adaptive.hpp"
#include "varkv/policy/budget/pyramid.hpp"
#include "varkv/policy/budget/scale_window.hpp"
#include "varkv/policy/budget/uniform.hpp"
#include "varkv/policy/classification/profile.hpp"
#include "varkv/policy/compose.hpp"
#include "varkv/policy/eviction/h2o.hpp"
#include "varkv/policy/eviction/key_norm.hpp"
#include "varkv/policy/eviction/random.hpp"
#include "varkv/policy/eviction/recency.hpp"
#include "varkv/policy/eviction/scalekv.hpp"
#include "varkv/policy/eviction/snapkv.hpp"
#include "varkv/policy/eviction/streaming_llm.hpp"
#include "varkv/policy/retention/scales.hpp"

namespace varkv::presets {

using Full = cache_policy<>;
using ScaleKV = cache_policy<eviction::scalekv, budget::drafter_refiner, classification::profile>;
using AMSKV = cache_policy<eviction::recency, budget::scale_window, classification::profile, retention::scales>;
using StreamingLLM = cache_policy<eviction::streaming_llm, budget::uniform>;
using H2O = cache_policy<eviction::h2o, budget::uniform>;
using SnapKV = cache_policy<eviction::snapkv, budget::uniform>;
using PyramidKV = cache_policy<eviction::snapkv, budget::pyramid>;
using AdaKV = cache_policy<eviction::snapkv, budget::head_adaptive>;
using KeyNorm = cache_policy<eviction::key_norm, budget::uniform>;
using Random = cache_policy<eviction::random, budget::uniform>;

//! A uniform budget: `budget` x the full cache length per row, or `tokens` per row when >= 0.
struct budget_params { double budget = 0.1; std::int64_t tokens = -1; };

inline StreamingLLM streaming_llm(budget_params b, std::int32_t sinks = 4) {
  return StreamingLLM(eviction::streaming_llm{{sinks}}, budget::uniform{{b.budget, b.tokens}});
}
inline H2O h2o(budget_params b) { return H2O(eviction::h2o{}, budget::uniform{{b.budget, b.tokens}}); }
inline SnapKV snapkv(budget_params b, std::int32_t window = 0, std::int32_t kernel = 7) {
  return SnapKV(eviction::snapkv{{window, kernel}}, budget::uniform{{b.budget, b.tokens}});
}
//! ScaleKV at a global budget; `profile` from varkv-calibrate (ProfileSource::scalekv); without one every
//! layer keeps the average.
inline ScaleKV scalekv(budget_params b, classification::profile profile = {},
                       budget::drafter_refiner::params_type split = {}, eviction::scalekv::params_type window = {}) {
  split.fraction = b.budget;
  split.tokens = b.tokens;
  return ScaleKV(eviction::scalekv{window}, budget::drafter_refiner{split}, std::move(profile));
}
//! AMS-KV: condensed + local scales; `profile` (ProfileSource::amskv) marks the cache-demanding layers.
inline AMSKV amskv(budget::scale_window::params_type scales = {}, classification::profile profile = {}) {
  return AMSKV(eviction::recency{}, budget::scale_window{scales}, std::move(profile),
               retention::scales{{0, scales.condensed, 0, false}});
}
inline PyramidKV pyramidkv(double fraction, double ratio = 0.5) {
  return PyramidKV(eviction::snapkv{}, budget::pyramid{{fraction, ratio}});
}
inline AdaKV adakv(budget_params b, double floor_share = 0.2, std::int32_t window = 0, std::int32_t kernel = 7) {
  return AdaKV(eviction::snapkv{{window, kernel}}, budget::head_adaptive{{b.budget, b.tokens, floor_share}});
}

}  // namespace varkv::presets

#pragma once
//! \file
//! A complete custom eviction policy: keep the keys the last query of the current map attends to most.
//! Satisfies varkv::eviction_policy, so it composes with any budget / retention policy in the CPU
//! `CompressedCache`; its `scorer` also makes it a varkv::device_eviction_policy, so the same header
//! runs in `DeviceCompressedCache` (fused attention measures the statistic, a scoring kernel applies
//! the scorer, the compaction kernel keeps the best) without touching library code.
#include "varkv/policy/eviction/eviction_concept.hpp"

namespace my {

struct last_query {
  using axis = varkv::eviction_axis;  // which axis this policy fills
  static constexpr std::string_view name = "last_query";
  static constexpr bool uses_statistics = true;  // it asks for one (a device cache compiles the statistic kernels)
  struct params_type { int unused = 0; };  // trivially copyable: what a CUDA kernel would receive
  params_type params() const { return {}; }

  //! One observer: the last query of step `step`; the attention kernel returns its probability mass per key.
  varkv::StatRequest request(int step, int, const varkv::ScaleSchedule& s) const {
    return {true, {static_cast<std::int32_t>(s.tokens(step) - 1)}, varkv::KeyStatistic::probability_mass};
  }
  //! Score = that mass; the cache keeps the best within the budget (ties -> lower position). Runs on the
  //! host and in the device cache's scoring kernel; `row.statistic(c)` reads candidate c's entry of the
  //! attention statistic wherever it lives.
  struct scorer {
    VARKV_HOST_DEVICE float operator()(const varkv::CandidateRow& row, std::int32_t c) const { return row.statistic(c); }
  };
  scorer make_scorer(int, int, const varkv::ScaleSchedule&) const { return {}; }
  //! The CPU cache's entry point: the scorer over every candidate (one definition for both caches).
  void score(const varkv::ScoreContext& c, std::span<float> out) const { varkv::score_candidates(scorer{}, c, out); }
};
static_assert(varkv::eviction_policy<last_query>);
static_assert(varkv::device_eviction_policy<last_query>);

}  // namespace my

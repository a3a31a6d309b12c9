#pragma once
//! \file Recency eviction: the most recent tokens survive (score = position). With retention of the
//! first scales this is AMS-KV's condensed + local rule; with sink retention it is StreamingLLM.
#include "varkv/policy/eviction/eviction_concept.hpp"
namespace varkv::eviction {
struct recency {
  using axis = eviction_axis;
  static constexpr std::string_view name = "recency";
  static constexpr bool uses_statistics = false;
  struct params_type { int unused = 0; };
  params_type params() const { return {}; }
  StatRequest request(int, int, const ScaleSchedule&) const { return {}; }
  struct scorer {
    VARKV_HOST_DEVICE float operator()(const CandidateRow& r, std::int32_t c) const {
      return static_cast<float>(r.position(c));
    }
  };
  scorer make_scorer(int, int, const ScaleSchedule&) const { return {}; }
  void score(const ScoreContext& c, std::span<float> out) const { score_candidates(scorer{}, c, out); }
};
}  // namespace varkv::eviction

#pragma once
//! \file Eviction no-op: every candidate scores the same; with the default budget nothing is dropped.
#include <algorithm>
#include "varkv/policy/eviction/eviction_concept.hpp"
namespace varkv::eviction {
struct none {
  using axis = eviction_axis;
  static constexpr std::string_view name = "none";
  static constexpr bool uses_statistics = false;
  struct params_type { int unused = 0; };
  params_type params() const { return {}; }
  StatRequest request(int, int, const ScaleSchedule&) const { return {}; }
  //! Every candidate scores 0 (a budget, if any, then keeps the lowest positions).
  struct scorer {
    VARKV_HOST_DEVICE float operator()(const CandidateRow&, std::int32_t) const { return 0.0f; }
  };
  scorer make_scorer(int, int, const ScaleSchedule&) const { return {}; }
  void score(const ScoreContext& c, std::span<float> out) const { score_candidates(scorer{}, c, out); }
};
}  // namespace varkv::eviction

#pragma once
//! \file H2O: heavy hitters by attention mass accumulated over every query seen so far (all steps).
#include "varkv/policy/eviction/eviction_concept.hpp"
#include <numeric>
namespace varkv::eviction {
struct h2o {
  using axis = eviction_axis;
  static constexpr std::string_view name = "h2o";
  static constexpr bool uses_accumulated = true;
  static constexpr bool uses_statistics = true;
  struct params_type { int unused = 0; };
  params_type params() const { return {}; }
  StatRequest request(int step, int, const ScaleSchedule& s) const {
    StatRequest r{true, std::vector<std::int32_t>(static_cast<std::size_t>(s.tokens(step))), KeyStatistic::probability_mass};
    std::iota(r.observers.begin(), r.observers.end(), 0);
    return r;
  }
  //! Mass accumulated by earlier steps (0 for new keys) plus this step's.
  struct scorer {
    VARKV_HOST_DEVICE float operator()(const CandidateRow& r, std::int32_t c) const {
      return r.accumulated_at(c) + r.statistic(c);
    }
  };
  scorer make_scorer(int, int, const ScaleSchedule&) const { return {}; }
  void score(const ScoreContext& c, std::span<float> out) const { score_candidates(scorer{}, c, out); }
};
}  // namespace varkv::eviction

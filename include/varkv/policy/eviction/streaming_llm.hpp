#pragma once
//! \file StreamingLLM: keep `sinks` first positions and the most recent tokens (score = position).
#include <cmath>
#include "varkv/policy/eviction/eviction_concept.hpp"
namespace varkv::eviction {
struct streaming_llm {
  using axis = eviction_axis;
  static constexpr std::string_view name = "streaming_llm";
  static constexpr bool uses_statistics = false;
  struct params_type { std::int32_t sinks = 4; };
  params_type p{};
  params_type params() const { return p; }
  StatRequest request(int, int, const ScaleSchedule&) const { return {}; }
  //! Sinks score +inf (kept first), every other token its position.
  struct scorer {
    std::int32_t sinks = 4;
    VARKV_HOST_DEVICE float operator()(const CandidateRow& r, std::int32_t c) const {
      const std::int32_t pos = r.position(c);
      return pos < sinks ? INFINITY : static_cast<float>(pos);
    }
  };
  scorer make_scorer(int, int, const ScaleSchedule&) const { return {p.sinks}; }
  void score(const ScoreContext& c, std::span<float> out) const { score_candidates(scorer{p.sinks}, c, out); }
};
}  // namespace varkv::eviction

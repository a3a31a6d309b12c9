#pragma once
//! \file Recency eviction: the most recent tokens survive (score = position). With retention of the
//! first scales this is AMS-KV's condensed + local rule; with sink retention it is StreamingLLM.
#include "varkv/policy/eviction/eviction_concept.hpp"
namespace varkv::eviction {
struct recency {
  using axis = eviction_axis;
  static constexpr std::string_view name = "recency";
  struct params_type { int unused = 0; };
  params_type params() const { return {}; }
  StatRequest request(int, int, const ScaleSchedule&) const { return {}; }
  void score(const ScoreContext& c, std::span<float> out) const {
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = static_cast<float>(c.positions[i]);
  }
};
}  // namespace varkv::eviction

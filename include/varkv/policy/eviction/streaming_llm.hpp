#pragma once
//! \file StreamingLLM: keep `sinks` first positions and the most recent tokens (score = position).
#include <limits>
#include "varkv/policy/eviction/eviction_concept.hpp"
namespace varkv::eviction {
struct streaming_llm {
  using axis = eviction_axis;
  static constexpr std::string_view name = "streaming_llm";
  struct params_type { std::int32_t sinks = 4; };
  params_type p{};
  params_type params() const { return p; }
  StatRequest request(int, int, const ScaleSchedule&) const { return {}; }
  void score(const ScoreContext& c, std::span<float> out) const {
    for (std::size_t i = 0; i < out.size(); ++i)
      out[i] = c.positions[i] < p.sinks ? std::numeric_limits<float>::infinity() : static_cast<float>(c.positions[i]);
  }
};
}  // namespace varkv::eviction

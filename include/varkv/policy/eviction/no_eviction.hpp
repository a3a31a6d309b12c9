#pragma once
//! \file Eviction no-op: every candidate scores the same; with the default budget nothing is dropped.
#include "varkv/policy/eviction/eviction_concept.hpp"
namespace varkv::eviction {
struct none {
  using axis = eviction_axis;
  static constexpr std::string_view name = "none";
  struct params_type { int unused = 0; };
  params_type params() const { return {}; }
  StatRequest request(int, int, const ScaleSchedule&) const { return {}; }
  void score(const ScoreContext&, std::span<float> out) const { std::fill(out.begin(), out.end(), 0.f); }
};
}  // namespace varkv::eviction

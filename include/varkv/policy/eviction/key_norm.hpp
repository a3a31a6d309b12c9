#pragma once
//! \file Key-norm eviction: keep the smallest-L2-norm keys. Degenerate for VAR (documented baseline).
#include "varkv/policy/eviction/eviction_concept.hpp"
namespace varkv::eviction {
struct key_norm {
  using axis = eviction_axis;
  static constexpr std::string_view name = "key_norm";
  static constexpr bool uses_key_norm = true;
  struct params_type { int unused = 0; };
  params_type params() const { return {}; }
  StatRequest request(int, int, const ScaleSchedule&) const { return {}; }
  void score(const ScoreContext& c, std::span<float> out) const {
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = -c.key_norm[i];
  }
};
}  // namespace varkv::eviction

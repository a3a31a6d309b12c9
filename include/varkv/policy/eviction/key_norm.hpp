#pragma once
//! \file Key-norm eviction: keep the smallest-L2-norm keys. Degenerate for VAR (documented baseline).
#include "varkv/policy/eviction/eviction_concept.hpp"
namespace varkv::eviction {
struct key_norm {
  using axis = eviction_axis;
  static constexpr std::string_view name = "key_norm";
  static constexpr bool uses_key_norm = true;
  static constexpr bool uses_statistics = false;
  struct params_type { int unused = 0; };
  params_type params() const { return {}; }
  StatRequest request(int, int, const ScaleSchedule&) const { return {}; }
  struct scorer {
    VARKV_HOST_DEVICE float operator()(const CandidateRow& r, std::int32_t c) const { return -r.norm(c); }
  };
  scorer make_scorer(int, int, const ScaleSchedule&) const { return {}; }
  void score(const ScoreContext& c, std::span<float> out) const { score_candidates(scorer{}, c, out); }
};
}  // namespace varkv::eviction

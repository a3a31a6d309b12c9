#pragma once
//! \file
//! A complete custom eviction policy: keep the keys the last query of the current map attends to most.
//! Satisfies varkv::eviction_policy, so it composes with any budget / retention policy.
#include "varkv/policy/eviction/eviction_concept.hpp"

namespace my {

struct last_query {
  using axis = varkv::eviction_axis;  // which axis this policy fills
  static constexpr std::string_view name = "last_query";
  struct params_type { int unused = 0; };  // trivially copyable: what a CUDA kernel would receive
  params_type params() const { return {}; }

  //! One observer: the last query of step `step`; the attention kernel returns its probability mass per key.
  varkv::StatRequest request(int step, int, const varkv::ScaleSchedule& s) const {
    return {true, {static_cast<std::int32_t>(s.tokens(step) - 1)}, varkv::KeyStatistic::probability_mass};
  }
  //! Score = that mass; the cache keeps the best within the budget (ties -> lower position).
  void score(const varkv::ScoreContext& c, std::span<float> out) const {
    std::copy(c.key_stat.begin(), c.key_stat.end(), out.begin());
  }
};
static_assert(varkv::eviction_policy<last_query>);

}  // namespace my

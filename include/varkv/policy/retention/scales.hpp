#pragma once
//! \file Retention of sink tokens, the first N (condensed) scales and the last M (local) scales up to the
//! current step; any combination (zero disables a part).
#include <algorithm>
#include "varkv/policy/retention/retention_concept.hpp"
namespace varkv::retention {
struct scales {
  using axis = retention_axis;
  static constexpr std::string_view name = "scales";
  struct params_type { std::int32_t sinks = 0, first = 0, last = 0; bool wins = false; };
  params_type p{};
  params_type params() const { return p; }
  bool retention_wins() const { return p.wins; }
  RetentionRanges ranges(int step, const ScaleSchedule& s) const {
    RetentionRanges r;
    auto add = [&](std::int64_t b, std::int64_t e) {
      if (e > b) { r.begin[r.count] = static_cast<std::int32_t>(b); r.end[r.count] = static_cast<std::int32_t>(e); ++r.count; }
    };
    add(0, p.sinks);
    if (p.first > 0) add(0, s.begin(std::min(p.first, step + 1) - 1) + s.tokens(std::min(p.first, step + 1) - 1));
    if (p.last > 0) add(s.begin(std::max(0, step - p.last + 1)), s.begin(step) + s.tokens(step));
    return r;
  }
};
}  // namespace varkv::retention

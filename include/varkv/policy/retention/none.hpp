#pragma once
//! \file Retention no-op: nothing forced (every token competes on score).
#include "varkv/policy/retention/retention_concept.hpp"
namespace varkv::retention {
struct none {
  using axis = retention_axis;
  static constexpr std::string_view name = "none";
  RetentionRanges ranges(int, const ScaleSchedule&) const { return {}; }
  bool retention_wins() const { return false; }
};
}  // namespace varkv::retention

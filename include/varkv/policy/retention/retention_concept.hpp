#pragma once
//! \file The concept a retention policy satisfies: `ranges(step, schedule)` = positions always kept.
//! `retention_wins`: false (default) -> retained > budget is a varkv::Error; true -> the row keeps
//! exactly its retained tokens (budget raised to that count for this row).
#include <concepts>
#include "varkv/policy/axis.hpp"
#include "varkv/selection/retention_ranges.hpp"
namespace varkv {
template <class P>
concept retention_policy = requires(const P& p, int step, const ScaleSchedule& s) {
  requires std::same_as<typename P::axis, retention_axis>;
  { P::name } -> std::convertible_to<std::string_view>;
  { p.ranges(step, s) } -> std::same_as<RetentionRanges>;
  { p.retention_wins() } -> std::same_as<bool>;
};
}  // namespace varkv

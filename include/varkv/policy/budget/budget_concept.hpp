#pragma once
//! \file The concept a budget policy satisfies: `capacity(ctx)` = tokens a row may hold after committing step ctx.step.
#include <cmath>
#include <concepts>
#include <type_traits>
#include "varkv/core/error.hpp"
#include "varkv/policy/axis.hpp"
namespace varkv {
template <class P>
concept budget_policy = requires(const P& p, const BudgetContext& c) {
  requires std::same_as<typename P::axis, budget_axis>;
  { P::name } -> std::convertible_to<std::string_view>;
  { p.capacity(c) } -> std::convertible_to<std::int64_t>;
  requires std::is_trivially_copyable_v<std::remove_cvref_t<decltype(p.params())>>;
};

//! The usual way a budget is given: `tokens` per row when >= 0, else ceil(`fraction` x the schedule's
//! full length). `who` names the policy in the error for a fraction outside [0, 1].
inline std::int64_t row_budget(double fraction, std::int64_t tokens, const ScaleSchedule& s, std::string_view who) {
  if (tokens >= 0) return tokens;
  require(fraction >= 0.0 && fraction <= 1.0, "budget {}: fraction {} outside [0, 1]", who, fraction);
  return static_cast<std::int64_t>(std::ceil(fraction * static_cast<double>(s.total()) - 1e-9));
}
}  // namespace varkv

#pragma once
//! \file Budget no-op: a row may hold the whole schedule.
#include "varkv/policy/budget/budget_concept.hpp"
namespace varkv::budget {
struct unlimited {
  using axis = budget_axis;
  static constexpr std::string_view name = "unlimited";
  struct params_type { int unused = 0; };
  params_type params() const { return {}; }
  std::int64_t capacity(const BudgetContext& c) const { return c.schedule->total(); }
};
}  // namespace varkv::budget

#pragma once
//! \file Uniform budget: every row holds at most `tokens` (when > 0) or ceil(fraction * full cache length).
#include <cmath>
#include "varkv/core/error.hpp"
#include "varkv/policy/budget/budget_concept.hpp"
namespace varkv::budget {
struct uniform {
  using axis = budget_axis;
  static constexpr std::string_view name = "uniform";
  struct params_type { double fraction = 1.0; std::int64_t tokens = -1; };
  params_type p{};
  params_type params() const { return p; }
  std::int64_t capacity(const BudgetContext& c) const {
    return row_budget(p.fraction, p.tokens, *c.schedule, name);
  }
};
}  // namespace varkv::budget

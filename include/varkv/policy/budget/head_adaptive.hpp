#pragma once
//! \file
//! Head-adaptive budget (AdaKV): a layer's heads share H x A tokens per sequence; each head is
//! guaranteed `floor_share` x A and the rest goes to the best-scored candidates over all heads.
//!
//! \par Overview
//! `capacity()` is the per-head average A (as `budget::uniform`); `head_adaptive = true` tells the cache
//! to split H x A across the heads of each sequence by one top-k over all heads' scores (ties: lower
//! head, then lower position), after giving each head min(its candidates, max(its retained tokens,
//! floor(floor_share x A))). Rows then differ in length and the memory is really saved: the cache
//! stores each head's survivors only and the ledger counts them per head. Scores must be comparable
//! across heads (true for attention mass over the same observers: every head's sums to the window).
#include <cmath>
#include "varkv/core/error.hpp"
#include "varkv/policy/budget/budget_concept.hpp"
namespace varkv::budget {
struct head_adaptive {
  using axis = budget_axis;
  static constexpr std::string_view name = "head_adaptive";
  static constexpr bool head_adaptive_split = true;
  struct params_type { double fraction = 0.1; std::int64_t tokens = -1; double floor_share = 0.2; };
  params_type p{};
  params_type params() const { return p; }
  std::int64_t capacity(const BudgetContext& c) const {
    return row_budget(p.fraction, p.tokens, *c.schedule, name);
  }
  std::int64_t guaranteed(std::int64_t average) const {
    require(p.floor_share >= 0.0 && p.floor_share <= 1.0, "budget head_adaptive: floor_share {} outside [0, 1]",
            p.floor_share);
    return static_cast<std::int64_t>(std::floor(p.floor_share * static_cast<double>(average)));
  }
};
}  // namespace varkv::budget

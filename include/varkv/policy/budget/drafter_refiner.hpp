#pragma once
//! \file
//! ScaleKV's budget: per scale, drafter layers keep a large capacity ("Max") and refiner layers a small
//! one ("Min"), with the same total memory as a uniform budget.
//!
//! \par Overview
//! A = the average tokens a layer may keep (`tokens`, or ceil(`fraction` x the schedule's full length),
//! as `budget::uniform`). After step s a row would hold P = prefix(s) tokens without eviction:
//! - P <= max(A, `base`): nothing is compressed (ScaleKV's "base capacity"; every layer keeps P);
//! - drafters: Max = min(P, ceil(`drafter` x P)), lowered if needed so refiners keep at least
//!   `floor` tokens each;
//! - refiners: Min = (L x A - n_d x Max) / (L - n_d) (rounded down), so the L layers together never
//!   hold more than L x A tokens: the global budget is honoured at every scale;
//! - `uniform` layers (no profile) keep A, so ScaleKV without a calibration profile is SnapKV-like.
//! n_d (the drafters at this step) comes from the classification axis through BudgetContext.
#include <algorithm>
#include <cmath>
#include "varkv/core/error.hpp"
#include "varkv/policy/budget/budget_concept.hpp"
namespace varkv::budget {
struct drafter_refiner {
  using axis = budget_axis;
  static constexpr std::string_view name = "drafter_refiner";
  struct params_type {
    double fraction = 0.1;     //!< average budget, fraction of the full cache
    std::int64_t tokens = -1;  //!< >= 0: average budget in tokens per row instead
    double drafter = 1.0;      //!< drafters keep this fraction of what they would hold
    std::int64_t floor = 16;   //!< refiners keep at least this many (ScaleKV's window)
    std::int64_t base = 0;     //!< rows never compressed below this
  };
  params_type p{};
  params_type params() const { return p; }

  std::int64_t average(const BudgetContext& c) const { return row_budget(p.fraction, p.tokens, *c.schedule, name); }
  std::int64_t capacity(const BudgetContext& c) const {
    require(p.drafter > 0.0 && p.drafter <= 1.0, "budget drafter_refiner: drafter {} outside (0, 1]", p.drafter);
    require(p.floor >= 0 && p.base >= 0, "budget drafter_refiner: floor ({}) and base ({}) must be >= 0", p.floor, p.base);
    const std::int64_t A = average(c), P = c.prefix();
    if (P <= std::max(A, p.base)) return P;
    const std::int64_t L = c.geometry->layers, nd = std::clamp<std::int64_t>(c.drafters, 0, L);
    if (c.layer_class == LayerClass::uniform || nd == 0 || nd == L) return std::max(A, p.base);
    const std::int64_t floor = std::min(p.floor, A), total = L * A;
    std::int64_t max_cap = std::min<std::int64_t>(P, static_cast<std::int64_t>(std::ceil(p.drafter * P - 1e-9)));
    max_cap = std::max<std::int64_t>(0, std::min(max_cap, (total - (L - nd) * floor) / nd));
    if (c.layer_class == LayerClass::drafter) return std::max(max_cap, p.base);
    return std::max(std::min(P, (total - nd * max_cap) / (L - nd)), p.base);
  }
};
}  // namespace varkv::budget

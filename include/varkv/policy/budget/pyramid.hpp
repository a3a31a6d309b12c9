#pragma once
//! \file PyramidKV-style depth pyramid: layer l's capacity falls linearly from (2 - ratio) * avg at layer 0
//! to ratio * avg at the last layer (avg = ceil(fraction * full length)); the layer mean stays avg.
#include <cmath>
#include "varkv/core/error.hpp"
#include "varkv/policy/budget/budget_concept.hpp"
namespace varkv::budget {
struct pyramid {
  using axis = budget_axis;
  static constexpr std::string_view name = "pyramid";
  struct params_type { double fraction = 0.1; double ratio = 0.5; };
  params_type p{};
  params_type params() const { return p; }
  std::int64_t capacity(const BudgetContext& c) const {
    require(p.ratio > 0.0 && p.ratio <= 1.0, "budget: pyramid ratio {} outside (0, 1]", p.ratio);
    const double avg = p.fraction * static_cast<double>(c.schedule->total());
    const int L = c.geometry->layers;
    const double t = L > 1 ? static_cast<double>(c.layer) / (L - 1) : 0.5;
    return static_cast<std::int64_t>(std::ceil(avg * ((2.0 - p.ratio) * (1.0 - t) + p.ratio * t) - 1e-9));
  }
};
}  // namespace varkv::budget

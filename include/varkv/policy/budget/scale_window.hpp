#pragma once
//! \file
//! AMS-KV's budget: a row keeps the tokens of its condensed scales (the first `condensed`) and of its
//! local scales (the last `local` up to the current step); cache-demanding layers keep `demanding_local`
//! local scales instead (-1: every scale, i.e. no compression).
//!
//! \par Overview
//! The capacity is the token count of that union of scales, so with `retention::scales` keeping the
//! condensed scales and `eviction::recency` ranking the rest, exactly the condensed + local scales
//! survive (`presets::AMSKV`). Layer classes come from the classification axis: `drafter` =
//! cache-demanding (from AMS-KV's inter-scale KV similarity), anything else = cache-efficient.
#include <algorithm>
#include "varkv/core/error.hpp"
#include "varkv/policy/budget/budget_concept.hpp"
namespace varkv::budget {
struct scale_window {
  using axis = budget_axis;
  static constexpr std::string_view name = "scale_window";
  struct params_type {
    std::int32_t condensed = 2;         //!< first scales always kept
    std::int32_t local = 1;             //!< most recent scales kept by cache-efficient layers
    std::int32_t demanding_local = -1;  //!< ... by cache-demanding layers (-1: all)
  };
  params_type p{};
  params_type params() const { return p; }
  std::int64_t capacity(const BudgetContext& c) const {
    require(p.condensed >= 0 && p.local >= 0 && p.demanding_local >= -1,
            "budget scale_window: condensed ({}), local ({}) must be >= 0 and demanding_local ({}) >= -1", p.condensed,
            p.local, p.demanding_local);
    const int m = c.layer_class == LayerClass::drafter ? p.demanding_local : p.local;
    if (m < 0) return c.prefix();
    const ScaleSchedule& s = *c.schedule;
    std::int64_t n = 0;
    for (int o = 0; o <= c.step; ++o)
      if (o < p.condensed || o > c.step - m) n += s.tokens(o);
    return n;
  }
};
}  // namespace varkv::budget

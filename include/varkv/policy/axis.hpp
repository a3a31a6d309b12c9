#pragma once
//! \file
//! Axis tags and the small context structs every policy axis sees (host side).
//!
//! \par Overview
//! A cache policy is composed of one policy per axis: eviction (how candidates are scored),
//! budget (how many tokens a row may keep), classification (per-layer class used by budgets),
//! retention (positions always kept). Each policy names its axis with `using axis = ...;`.

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "varkv/attention/reference_attention.hpp"
#include "varkv/core/model_geometry.hpp"
#include "varkv/core/scale_schedule.hpp"

namespace varkv {

struct eviction_axis { static constexpr std::string_view name = "eviction"; };
struct budget_axis { static constexpr std::string_view name = "budget"; };
struct classification_axis { static constexpr std::string_view name = "classification"; };
struct retention_axis { static constexpr std::string_view name = "retention"; };

//! What attention statistics the eviction policy needs for one (step, layer).
struct StatRequest {
  bool needed = false;
  std::vector<std::int32_t> observers;  //!< query indices within the step (strictly increasing)
  KeyStatistic statistic = KeyStatistic::probability_mass;
};

//! One (sequence, head) row at commit time. Candidates: cache slots [0, len) then new keys [len, len + n_new).
struct ScoreContext {
  int step = 0, layer = 0, seq = 0, head = 0;
  const ScaleSchedule* schedule = nullptr;
  std::int32_t len = 0, n_new = 0, first_new_position = 0;
  std::span<const std::int32_t> positions;   //!< len + n_new candidate positions (increasing)
  std::span<const float> key_stat;           //!< len + n_new (empty when no statistics were requested)
  //! len + n_new: key_stat summed over previous steps (0 for new keys); empty unless the eviction
  //! policy declares `static constexpr bool uses_accumulated = true;`
  std::span<const float> accumulated;
  //! len + n_new: L2 norm of each candidate key; empty unless it declares `uses_key_norm = true`
  std::span<const float> key_norm;
};

//! Layer class produced by the classification axis and read by budgets.
enum class LayerClass : std::uint8_t { uniform, drafter, refiner };

//! What a budget policy sees for one (step, layer, head): the row's capacity after committing `step`.
struct BudgetContext {
  int step = 0, layer = 0, head = 0;
  const ScaleSchedule* schedule = nullptr;
  const ModelGeometry* geometry = nullptr;
  LayerClass layer_class = LayerClass::uniform;
  int drafters = 0;  //!< layers classified `drafter` at this step (all layers' budgets share one total)

  //! Tokens generated up to and including `step`: what a full cache holds after it.
  std::int64_t prefix() const { return schedule->begin(step) + schedule->tokens(step); }
};

//! Runtime options of a whole cache policy (beside its per-axis parameters).
struct PolicyOptions {
  //! CFG: false (default, as the public ScaleKV code does it: every batch row selects for itself) or
  //! true (the conditional and unconditional rows of one image keep the same tokens, chosen by the
  //! sum of both rows' scores).
  bool cfg_shared = false;
};

}  // namespace varkv

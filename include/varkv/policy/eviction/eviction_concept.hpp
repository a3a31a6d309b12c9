#pragma once
//! \file
//! The concept an eviction policy satisfies.
//!
//! \par Overview
//! `request(step, layer, schedule)` says which statistics the policy needs; `score(ctx, out)`
//! writes one score per candidate (higher = kept first; ties go to the lower position);
//! `params()` returns a trivially copyable struct for device code.

#include <concepts>
#include <span>
#include <type_traits>

#include "varkv/policy/axis.hpp"

namespace varkv {

template <class P>
concept eviction_policy = requires(const P& p, int step, int layer, const ScaleSchedule& s, const ScoreContext& c,
                                   std::span<float> out) {
  requires std::same_as<typename P::axis, eviction_axis>;
  { P::name } -> std::convertible_to<std::string_view>;
  { p.request(step, layer, s) } -> std::same_as<StatRequest>;
  { p.score(c, out) } -> std::same_as<void>;
  requires std::is_trivially_copyable_v<std::remove_cvref_t<decltype(p.params())>>;
};

}  // namespace varkv

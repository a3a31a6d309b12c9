#pragma once
//! \file The concept a classification policy satisfies: `classify(step, layer)` -> LayerClass.
#include <concepts>
#include "varkv/policy/axis.hpp"
namespace varkv {
template <class P>
concept classification_policy = requires(const P& p, int step, int layer) {
  requires std::same_as<typename P::axis, classification_axis>;
  { P::name } -> std::convertible_to<std::string_view>;
  { p.classify(step, layer) } -> std::same_as<LayerClass>;
};
}  // namespace varkv

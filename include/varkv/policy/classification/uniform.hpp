#pragma once
//! \file Classification no-op: every layer is LayerClass::uniform.
#include "varkv/policy/classification/classification_concept.hpp"
namespace varkv::classification {
struct uniform {
  using axis = classification_axis;
  static constexpr std::string_view name = "uniform";
  LayerClass classify(int, int) const { return LayerClass::uniform; }
};
}  // namespace varkv::classification

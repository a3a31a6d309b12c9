#pragma once
//! \file
//! Layer classification from a calibration profile (host only).
//!
//! \par Overview
//! `varkv-calibrate` measures, per layer and scale, ScaleKV's attention selectivity and AMS-KV's
//! inter-scale KV similarity, and writes both classifications into one JSON profile:
//! \code
//! {"format": "varkv-profile/1", "layers": 2, "scales": 3, "schedule": "var-256",
//!  "drafter":   [[true, true, false], [false, true, false]],   // ScaleKV: [layer][scale]
//!  "demanding": [true, false],                                  // AMS-KV: [layer]
//!  ... measured statistics (informational) ...}
//! \endcode
//! `profile` answers `classify(step, layer)` from one of the two tables (`ProfileSource`):
//! ScaleKV's per-scale drafters, or AMS-KV's cache-demanding layers (the same at every scale). Both map
//! to `LayerClass::drafter` (keeps more) and `LayerClass::refiner`. A default-constructed profile
//! (no table) classifies every layer `uniform`, so a preset that takes a profile still runs without one.
//!
//! Reading the JSON file is `profile_json.hpp`'s job (it needs nlohmann-json; this header does not).
//!
//! \par Errors
//! Classifying a (step, layer) outside the table throws `varkv::Error`.
#include <cstdint>
#include <vector>

#include "varkv/core/error.hpp"
#include "varkv/policy/classification/classification_concept.hpp"

namespace varkv::classification {

enum class ProfileSource : std::uint8_t { scalekv, amskv };

struct profile {
  using axis = classification_axis;
  static constexpr std::string_view name = "profile";
  int layers = 0, scales = 0;          //!< 0 x 0: no table, every layer uniform
  std::vector<std::uint8_t> drafter;   //!< [layer * scales + scale]: 1 = drafter / demanding

  bool empty() const { return drafter.empty(); }
  LayerClass classify(int step, int layer) const {
    if (empty()) return LayerClass::uniform;
    require(layer >= 0 && layer < layers && step >= 0 && step < scales,
            "classification profile: (step {}, layer {}) outside its {} layers x {} scales", step, layer, layers, scales);
    return drafter[std::size_t(layer) * scales + step] ? LayerClass::drafter : LayerClass::refiner;
  }
  //! Drafters (demanding layers) at one step.
  int drafters(int step) const {
    int n = 0;
    for (int l = 0; l < layers; ++l) n += classify(step, l) == LayerClass::drafter;
    return n;
  }
};

}  // namespace varkv::classification

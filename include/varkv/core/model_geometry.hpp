#pragma once
//! \file
//! Transformer geometry that decides the KV cache's size: layers, heads, head dimension.
//!
//! \par Overview
//! `ModelGeometry` is the attention shape of a model; `BatchShape` is how many images run at once and
//! whether classifier-free guidance doubles them (conditional + null class), which doubles the cache.

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "varkv/core/error.hpp"

namespace varkv {

struct ModelGeometry {
  std::string name;
  int layers = 0;
  int heads = 0;
  int head_dim = 0;

  int width() const { return heads * head_dim; }

  void validate() const {
    require(layers > 0 && heads > 0 && head_dim > 0,
            "model geometry '{}': layers ({}), heads ({}) and head_dim ({}) must be positive", name, layers,
            heads, head_dim);
  }
};

//! Images per call and the classifier-free-guidance doubling of the batch.
struct BatchShape {
  int images = 1;
  bool cfg = true;  //!< VAR and Infinity generate with CFG: each image is two sequences
  //! Sequences that each own a KV cache: images x 2 under CFG.
  int sequences() const { return images * (cfg ? 2 : 1); }
  void validate() const { require(images > 0, "batch: images must be positive, got {}", images); }
};

namespace geometries {

//! VAR-d{depth}: depth layers, width 64 x depth, depth heads of 64 (FoundationVision/VAR's rule).
inline ModelGeometry var_depth(int depth) {
  require(depth > 0 && depth <= 64, "VAR depth must be in 1..64, got {}", depth);
  return {"var-d" + std::to_string(depth), depth, depth, 64};
}
inline ModelGeometry var_d16() { return var_depth(16); }
inline ModelGeometry var_d20() { return var_depth(20); }
inline ModelGeometry var_d24() { return var_depth(24); }
inline ModelGeometry var_d30() { return var_depth(30); }
//! Infinity-2B: 32 layers, width 2048, 16 heads of 128.
inline ModelGeometry infinity_2b() { return {"infinity-2b", 32, 16, 128}; }
//! Infinity-8B (FoundationVision/Infinity `infinity_8b`): 40 layers, width 3584, 28 heads of 128.
inline ModelGeometry infinity_8b() { return {"infinity-8b", 40, 28, 128}; }

inline constexpr std::array<std::string_view, 6> names() {
  return {"var-d16", "var-d20", "var-d24", "var-d30", "infinity-2b", "infinity-8b"};
}

inline ModelGeometry by_name(std::string_view name) {
  if (name == "infinity-2b") return infinity_2b();
  if (name == "infinity-8b") return infinity_8b();
  if (name.starts_with("var-d")) {
    int depth = 0;
    for (char c : name.substr(5)) {
      require(c >= '0' && c <= '9', "unknown model geometry '{}'", name);
      depth = depth * 10 + (c - '0');
      require(depth <= 64, "unknown model geometry '{}'", name);
    }
    return var_depth(depth);
  }
  fail("unknown model geometry '{}' (known: var-dN, infinity-2b, infinity-8b)", name);
}

}  // namespace geometries
}  // namespace varkv

#pragma once
//! \file ScaleKV eviction: 16 window queries at the 4x4 grid of patch centres of the current map,
//! window tokens always kept, attention mass max-pooled (kernel 5, stride 1, same padding).
#include <algorithm>
#include <cmath>
#include <vector>
#include "varkv/core/error.hpp"
#include "varkv/policy/eviction/eviction_concept.hpp"
#include "varkv/policy/eviction/pooling.hpp"
namespace varkv::eviction {
//! Row (or column) of patch centre i of a side of length `side` cut into `grid` patches.
VARKV_HOST_DEVICE inline int patch_centre_coordinate(int i, int side, int grid) {
  const int x = (2 * i + 1) * side / (2 * grid);
  return x < side - 1 ? x : side - 1;
}
//! Query indices (row-major in an h x w map) of the grid x grid patch centres, deduplicated, increasing.
inline std::vector<std::int32_t> patch_centres(int h, int w, int grid = 4) {
  std::vector<std::int32_t> out;
  for (int i = 0; i < grid; ++i)
    for (int j = 0; j < grid; ++j)
      out.push_back(patch_centre_coordinate(i, h, grid) * w + patch_centre_coordinate(j, w, grid));
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}
struct scalekv {
  using axis = eviction_axis;
  static constexpr std::string_view name = "scalekv";
  static constexpr bool uses_statistics = true;
  struct params_type {
    std::int32_t grid = 4;    //!< window = grid x grid patch centres of the current map
    std::int32_t kernel = 5;  //!< max-pool kernel along token order (odd)
    //! probability mass (the paper's attention scores, exact through the log-sum-exp) or the sum of
    //! raw scaled logits (what the public code does)
    KeyStatistic statistic = KeyStatistic::probability_mass;
  };
  params_type p{};
  params_type params() const { return p; }
  StatRequest request(int step, int, const ScaleSchedule& s) const {
    const Scale sc = s.scale(step);
    return {true, patch_centres(sc.h, sc.w, p.grid), p.statistic};
  }
  //! Window tokens (new keys at patch centres of the current h x w map) score +inf; every other
  //! candidate its max-pooled statistic. The window is a grid x grid product of centre rows and
  //! columns, so membership is two scans of `grid` coordinates (no list on the device).
  struct scorer {
    std::int32_t kernel = 5, grid = 4, h = 1, w = 1;
    VARKV_HOST_DEVICE bool in_window(std::int32_t q) const {
      const int r = q / w, col = q % w;
      bool row_hit = false, col_hit = false;
      for (int i = 0; i < grid; ++i) {
        row_hit = row_hit || patch_centre_coordinate(i, h, grid) == r;
        col_hit = col_hit || patch_centre_coordinate(i, w, grid) == col;
      }
      return row_hit && col_hit;
    }
    VARKV_HOST_DEVICE float operator()(const CandidateRow& row, std::int32_t c) const {
      if (c >= row.len && in_window(c - row.len)) return INFINITY;
      return max_pooled_statistic(row, c, kernel);
    }
  };
  scorer make_scorer(int step, int, const ScaleSchedule& s) const {
    require(p.kernel >= 1 && p.kernel % 2 == 1, "max pool: kernel {} must be odd and >= 1", p.kernel);
    require(p.grid >= 1, "eviction scalekv: grid {} must be >= 1", p.grid);
    const Scale sc = s.scale(step);
    return {p.kernel, p.grid, sc.h, sc.w};
  }
  void score(const ScoreContext& c, std::span<float> out) const {
    score_candidates(make_scorer(c.step, c.layer, *c.schedule), c, out);
  }
};
}  // namespace varkv::eviction

#pragma once
//! \file ScaleKV eviction: 16 window queries at the 4x4 grid of patch centres of the current map,
//! window tokens always kept, attention mass max-pooled (kernel 5, stride 1, same padding).
#include <algorithm>
#include <limits>
#include <vector>
#include "varkv/policy/eviction/eviction_concept.hpp"
#include "varkv/policy/eviction/pooling.hpp"
namespace varkv::eviction {
//! Query indices (row-major in an h x w map) of the grid x grid patch centres, deduplicated, increasing.
inline std::vector<std::int32_t> patch_centres(int h, int w, int grid = 4) {
  std::vector<std::int32_t> out;
  for (int i = 0; i < grid; ++i)
    for (int j = 0; j < grid; ++j) {
      const int r = std::min(h - 1, (2 * i + 1) * h / (2 * grid)), c = std::min(w - 1, (2 * j + 1) * w / (2 * grid));
      out.push_back(r * w + c);
    }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}
struct scalekv {
  using axis = eviction_axis;
  static constexpr std::string_view name = "scalekv";
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
  void score(const ScoreContext& c, std::span<float> out) const {
    const auto pooled = max_pool_1d(c.key_stat, p.kernel);
    std::copy(pooled.begin(), pooled.end(), out.begin());
    const Scale sc = c.schedule->scale(c.step);
    for (std::int32_t q : patch_centres(sc.h, sc.w, p.grid)) out[c.len + q] = std::numeric_limits<float>::infinity();
  }
};
}  // namespace varkv::eviction

#pragma once
//! \file SnapKV for VAR: observation window = the last `window` queries of the current map
//! (0 = the whole map), attention mass max-pooled along token order with `kernel`.
#include <numeric>
#include "varkv/core/error.hpp"
#include "varkv/policy/eviction/eviction_concept.hpp"
#include "varkv/policy/eviction/pooling.hpp"
namespace varkv::eviction {
struct snapkv {
  using axis = eviction_axis;
  static constexpr std::string_view name = "snapkv";
  static constexpr bool uses_statistics = true;
  struct params_type { std::int32_t window = 0; std::int32_t kernel = 7; };
  params_type p{};
  params_type params() const { return p; }
  StatRequest request(int step, int, const ScaleSchedule& s) const {
    const auto n = static_cast<std::int32_t>(s.tokens(step));
    const std::int32_t w = (p.window <= 0 || p.window > n) ? n : p.window;
    StatRequest r{true, std::vector<std::int32_t>(static_cast<std::size_t>(w)), KeyStatistic::probability_mass};
    std::iota(r.observers.begin(), r.observers.end(), n - w);
    return r;
  }
  //! The window's mass max-pooled along candidate order (`max_pool_1d` over the row).
  struct scorer {
    std::int32_t kernel = 7;
    VARKV_HOST_DEVICE float operator()(const CandidateRow& r, std::int32_t c) const {
      return max_pooled_statistic(r, c, kernel);
    }
  };
  scorer make_scorer(int, int, const ScaleSchedule&) const { return checked_scorer(); }
  void score(const ScoreContext& c, std::span<float> out) const { score_candidates(checked_scorer(), c, out); }

 private:
  scorer checked_scorer() const {
    require(p.kernel >= 1 && p.kernel % 2 == 1, "max pool: kernel {} must be odd and >= 1", p.kernel);
    return {p.kernel};
  }
};
}  // namespace varkv::eviction

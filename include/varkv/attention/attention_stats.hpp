#pragma once
//! \file
//! Which per-key statistic a fused attention launch accumulates, and for which observing queries.
//!
//! \par Overview
//! Eviction policies rank cached keys by what a few "observer" queries think of them. The fused
//! attention kernel takes the statistic as a type (`NoStats`, `ObserverProbabilityMass`,
//! `ObserverLogitSum`) so that a policy that needs none compiles none of it, and the observers as a
//! small by-value `ObserverSet` (a listed set, e.g. ScaleKV's 16 window queries, or every query, as
//! H2O uses). Plain structs: usable on host and device.
//!
//! \par Snippet
//! \code
//! auto obs = varkv::ObserverSet::listed({0, 5, 10, 15});      // checked on the host
//! auto all = varkv::ObserverSet::every_query();
//! static_assert(!varkv::NoStats::enabled);
//! \endcode

#include <cstdint>
#include <initializer_list>
#include <span>
#include <vector>

#include "varkv/attention/reference_attention.hpp"
#include "varkv/core/config.hpp"
#include "varkv/core/error.hpp"

namespace varkv {

//! No statistic: the kernel is the plain attention kernel.
struct NoStats {
  static constexpr bool enabled = false;
  static constexpr bool logits = false;         //!< accumulates logits in the main pass
  static constexpr bool probabilities = false;  //!< accumulates exp(s - lse) in a second sweep
};
//! Sum over observers of the exact softmax probability exp(s - lse) of each key.
struct ObserverProbabilityMass {
  static constexpr bool enabled = true;
  static constexpr bool logits = false;
  static constexpr bool probabilities = true;
  static constexpr KeyStatistic statistic = KeyStatistic::probability_mass;
};
//! Sum over observers of the scaled logit s = scale * q.k of each key (ScaleKV's public code).
struct ObserverLogitSum {
  static constexpr bool enabled = true;
  static constexpr bool logits = true;
  static constexpr bool probabilities = false;
  static constexpr KeyStatistic statistic = KeyStatistic::logit_sum;
};

//! The observing queries of one launch: every query, or up to kMaxListed listed query indices.
struct ObserverSet {
  static constexpr int kMaxListed = 64;
  bool all = false;
  int count = 0;  //!< listed entries (ignored when all)
  std::int32_t index[kMaxListed] = {};

  static ObserverSet every_query() {
    ObserverSet s;
    s.all = true;
    return s;
  }
  //! Strictly increasing query indices; more than kMaxListed throws varkv::Error.
  static ObserverSet listed(std::span<const std::int32_t> idx) {
    require(idx.size() <= static_cast<std::size_t>(kMaxListed),
            "observer set: {} observers listed, at most {} supported (use every_query() for all)", idx.size(),
            kMaxListed);
    ObserverSet s;
    s.count = static_cast<int>(idx.size());
    for (std::size_t i = 0; i < idx.size(); ++i) {
      require(idx[i] >= 0, "observer set: entry {} is negative ({})", i, idx[i]);
      require(i == 0 || idx[i] > idx[i - 1], "observer set: entries must be strictly increasing (entry {} is {} after {})",
              i, idx[i], idx[i - 1]);
      s.index[i] = idx[i];
    }
    return s;
  }
  static ObserverSet listed(std::initializer_list<std::int32_t> idx) {
    return listed(std::span<const std::int32_t>(idx.begin(), idx.size()));
  }

  bool empty() const { return !all && count == 0; }
  //! Whether query q observes (linear scan: at most kMaxListed entries, once per thread per tile).
  VARKV_HOST_DEVICE bool contains(int q) const {
    if (all) return true;
    for (int i = 0; i < count; ++i)
      if (index[i] == q) return true;
    return false;
  }
  //! Whether any query of [q0, q1) observes.
  VARKV_HOST_DEVICE bool any_in(int q0, int q1) const {
    if (all) return q0 < q1;
    for (int i = 0; i < count; ++i)
      if (index[i] >= q0 && index[i] < q1) return true;
    return false;
  }
  //! Every query index as a list, for the CPU reference (n_q queries).
  std::vector<std::int32_t> indices(int n_q) const {
    std::vector<std::int32_t> v;
    if (all) {
      for (int i = 0; i < n_q; ++i) v.push_back(i);
    } else {
      v.assign(index, index + count);
    }
    return v;
  }
};

}  // namespace varkv

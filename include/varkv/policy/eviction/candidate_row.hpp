#pragma once
//! \file
//! What an eviction scorer sees of one (sequence, head) row: plain pointers, usable on host and device.
//!
//! \par Overview
//! A row's candidates are its cache slots [0, len) followed by the step's new keys [len, len + n_new)
//! (positions first_new_position + i). Per-key data lives in the key_stat index space of
//! `reference_attention` / `fused_attention`: cache slot j at j, new key i at cap + i, so a scorer
//! reads the fused kernel's statistic in place. `index(c)` maps candidate c there.
//!
//! The same struct serves the CPU cache (`CompressedCache` hands its `ScoreContext` over with
//! cap = len, so the index space is plain candidate order) and the device cache (cap = the layer's
//! device capacity), which is what lets one scorer definition rank candidates on both.
//!
//! \par Snippet
//! \code
//! varkv::CandidateRow row{.stat = ks_row, .positions = pos_row, .len = 40, .cap = 68, .n_new = 256,
//!                         .first_new_position = 424};
//! row.statistic(41);   // ks_row[68 + 1]: new key 1
//! row.position(41);    // 425
//! \endcode
#include <cstdint>

#include "varkv/core/config.hpp"

namespace varkv {

struct CandidateRow {
  //! [cap + n_new] the step's key statistic (key_stat index space); null when none was requested.
  const float* stat = nullptr;
  //! [len] token positions of the cache slots (increasing).
  const std::int32_t* positions = nullptr;
  //! [len] statistic accumulated over earlier steps per cache slot; new keys count 0. Only for
  //! eviction policies that declare `uses_accumulated` (null otherwise).
  const float* accumulated = nullptr;
  //! [cap + n_new] L2 norm of every candidate key (key_stat index space). Only for policies that
  //! declare `uses_key_norm` (null otherwise).
  const float* key_norm = nullptr;
  std::int32_t len = 0;                 //!< cache slots held by the row
  std::int32_t cap = 0;                 //!< start of the new keys in the key_stat index space
  std::int32_t n_new = 0;               //!< the step's new keys
  std::int32_t first_new_position = 0;  //!< position of new key 0 (the step's begin)
  std::int32_t seq = 0;                 //!< batch row (sequence) of this row
  std::int32_t head = 0;                //!< head of this row

  VARKV_HOST_DEVICE std::int32_t candidates() const { return len + n_new; }
  //! Candidate c's entry in the key_stat index space.
  VARKV_HOST_DEVICE std::int32_t index(std::int32_t c) const { return c < len ? c : cap + (c - len); }
  VARKV_HOST_DEVICE std::int32_t position(std::int32_t c) const {
    return c < len ? positions[c] : first_new_position + (c - len);
  }
  VARKV_HOST_DEVICE float statistic(std::int32_t c) const { return stat[index(c)]; }
  VARKV_HOST_DEVICE float accumulated_at(std::int32_t c) const { return c < len ? accumulated[c] : 0.0f; }
  VARKV_HOST_DEVICE float norm(std::int32_t c) const { return key_norm[index(c)]; }
};

//! The statistic of candidate c max-pooled along candidate (= token) order: stride 1, same
//! padding, odd `kernel`. Same values as `max_pool_1d` over the row's candidates, comparisons as
//! std::max does them (so a NaN propagates exactly as it does there).
VARKV_HOST_DEVICE inline float max_pooled_statistic(const CandidateRow& row, std::int32_t c, std::int32_t kernel) {
  const std::int32_t r = kernel / 2, n = row.candidates();
  const std::int32_t lo = c - r < 0 ? 0 : c - r, hi = c + r > n - 1 ? n - 1 : c + r;
  float m = row.statistic(c);
  for (std::int32_t j = lo; j <= hi; ++j) {
    const float x = row.statistic(j);
    m = m < x ? x : m;
  }
  return m;
}

}  // namespace varkv

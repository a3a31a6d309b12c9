#pragma once
//! \file
//! What a selection keeps no matter its score: ranges of token positions, and the score ordering.
//!
//! \par Overview
//! Policies always keep some tokens (ScaleKV's condensed scales, a local window): a
//! `RetentionRanges` lists up to 16 half-open position ranges [begin, end). Selection ranks the
//! other candidates by a 32-bit key that orders floats (NaN ranks lowest) with retained tokens above
//! every score; ties go to the lower position. Plain structs, shared by the CPU reference and the
//! CUDA compaction kernel, so both choose the same tokens.
//!
//! \par Snippet
//! \code
//! auto keep = varkv::RetentionRanges::of({{0, 10}, {200, 264}});  // first scales + a window
//! keep.contains(5);   // true
//! \endcode

#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <utility>

#include "varkv/core/config.hpp"
#include "varkv/core/error.hpp"

namespace varkv {

struct RetentionRanges {
  static constexpr int kMaxRanges = 16;
  int count = 0;
  std::int32_t begin[kMaxRanges] = {};
  std::int32_t end[kMaxRanges] = {};

  //! Checked construction: each range must have 0 <= begin <= end.
  static RetentionRanges of(std::initializer_list<std::pair<std::int32_t, std::int32_t>> ranges) {
    require(ranges.size() <= static_cast<std::size_t>(kMaxRanges), "retention ranges: {} given, at most {} supported",
            ranges.size(), kMaxRanges);
    RetentionRanges r;
    for (const auto& [b, e] : ranges) {
      require(b >= 0 && b <= e, "retention ranges: range {} is [{}, {}); need 0 <= begin <= end", r.count, b, e);
      r.begin[r.count] = b;
      r.end[r.count] = e;
      ++r.count;
    }
    return r;
  }
  void validate() const {
    require(count >= 0 && count <= kMaxRanges, "retention ranges: count {} outside 0..{}", count, kMaxRanges);
    for (int i = 0; i < count; ++i)
      require(begin[i] >= 0 && begin[i] <= end[i], "retention ranges: range {} is [{}, {}); need 0 <= begin <= end", i,
              begin[i], end[i]);
  }
  VARKV_HOST_DEVICE bool contains(std::int32_t pos) const {
    for (int i = 0; i < count; ++i)
      if (pos >= begin[i] && pos < end[i]) return true;
    return false;
  }
};

//! Key of a retained token: above the key of every score (the largest, +inf, maps to 0xFF800000).
inline constexpr std::uint32_t kRetainedKey = 0xFFFFFFFFu;

//! Order-preserving 32-bit key of a score (larger score, larger key); NaN maps to 0, below -inf.
VARKV_HOST_DEVICE inline std::uint32_t score_key(float s) {
  std::uint32_t b;
#if VARKV_IN_DEVICE_CODE
  b = __float_as_uint(s);
#else
  std::memcpy(&b, &s, sizeof b);
#endif
  if ((b & 0x7FFFFFFFu) > 0x7F800000u) return 0u;  // NaN
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

}  // namespace varkv

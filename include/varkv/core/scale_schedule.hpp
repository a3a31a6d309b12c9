#pragma once
//! \file
//! Scale schedules of next-scale prediction: which token maps a generation runs through.
//!
//! \par Overview
//! Step s of a VAR generation predicts a whole h_s x w_s token map at once; its tokens occupy the
//! positions [begin(s), end(s)) of the flattened sequence. `ScaleSchedule` is the host object (named
//! schedules, validation); `ScaleTable` is its plain, fixed-size copy that kernels take by value.
//!
//! \par Snippet
//! \code
//! auto s = varkv::schedules::var_256();   // 1,2,3,4,5,6,8,10,13,16
//! s.total();          // 680
//! s.begin(9);         // 424
//! s.scale_of(500);    // 9
//! \endcode

#include <algorithm>
#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "varkv/core/config.hpp"
#include "varkv/core/error.hpp"

namespace varkv {

//! One token map of the schedule.
struct Scale {
  int h = 0;
  int w = 0;
  constexpr std::int64_t tokens() const { return std::int64_t{h} * w; }
  friend constexpr bool operator==(const Scale&, const Scale&) = default;
};

//! Plain copy of a schedule for device code: begin offsets of every scale, by value.
struct ScaleTable {
  static constexpr int kMaxScales = 32;
  int count = 0;
  int h[kMaxScales] = {};
  int w[kMaxScales] = {};
  int begin[kMaxScales + 1] = {};  //!< begin[count] is the total token count

  VARKV_HOST_DEVICE int tokens(int s) const { return begin[s + 1] - begin[s]; }
  VARKV_HOST_DEVICE int total() const { return begin[count]; }
  //! Scale that holds flattened position `pos` (binary search; count <= 32).
  VARKV_HOST_DEVICE int scale_of(int pos) const {
    int lo = 0, hi = count - 1;
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (begin[mid] <= pos) lo = mid; else hi = mid - 1;
    }
    return lo;
  }
};

class ScaleSchedule {
 public:
  ScaleSchedule(std::string name, std::vector<Scale> scales) : name_(std::move(name)), scales_(std::move(scales)) {
    require(!scales_.empty(), "scale schedule '{}' has no scales", name_);
    require(scales_.size() <= static_cast<std::size_t>(ScaleTable::kMaxScales),
            "scale schedule '{}' has {} scales; at most {} are supported", name_, scales_.size(),
            ScaleTable::kMaxScales);
    begin_.reserve(scales_.size() + 1);
    begin_.push_back(0);
    for (std::size_t i = 0; i < scales_.size(); ++i) {
      const Scale sc = scales_[i];
      require(sc.h > 0 && sc.w > 0, "scale schedule '{}': scale {} is {}x{}; both sides must be positive",
              name_, i, sc.h, sc.w);
      begin_.push_back(begin_.back() + sc.tokens());
    }
    require(begin_.back() <= (std::int64_t{1} << 30), "scale schedule '{}' holds {} tokens; too many",
            name_, begin_.back());
  }

  //! Square maps of the given sides (VAR's `patch_nums`).
  static ScaleSchedule squares(std::string name, std::span<const int> sides) {
    std::vector<Scale> s;
    for (int side : sides) s.push_back({side, side});
    return {std::move(name), std::move(s)};
  }

  const std::string& name() const { return name_; }
  int size() const { return static_cast<int>(scales_.size()); }
  const std::vector<Scale>& scales() const { return scales_; }
  Scale scale(int s) const { check_index(s); return scales_[s]; }
  std::int64_t tokens(int s) const { check_index(s); return scales_[s].tokens(); }
  std::int64_t begin(int s) const { check_index(s); return begin_[s]; }
  std::int64_t end(int s) const { check_index(s); return begin_[s + 1]; }
  //! Tokens of all scales, L.
  std::int64_t total() const { return begin_.back(); }
  //! Scale that holds flattened position `pos`.
  int scale_of(std::int64_t pos) const {
    require(pos >= 0 && pos < total(), "position {} is outside schedule '{}' (0..{})", pos, name_, total() - 1);
    return static_cast<int>(std::upper_bound(begin_.begin(), begin_.end(), pos) - begin_.begin()) - 1;
  }
  ScaleTable table() const {
    ScaleTable t;
    t.count = size();
    for (int s = 0; s < size(); ++s) {
      t.h[s] = scales_[s].h;
      t.w[s] = scales_[s].w;
      t.begin[s] = static_cast<int>(begin_[s]);
    }
    t.begin[size()] = static_cast<int>(total());
    return t;
  }

 private:
  void check_index(int s) const {
    require(s >= 0 && s < size(), "scale index {} is outside schedule '{}' ({} scales)", s, name_, size());
  }
  std::string name_;
  std::vector<Scale> scales_;
  std::vector<std::int64_t> begin_;
};

namespace schedules {

//! VAR at 256 px: 10 scales, L = 680.
inline ScaleSchedule var_256() {
  static constexpr int sides[] = {1, 2, 3, 4, 5, 6, 8, 10, 13, 16};
  return ScaleSchedule::squares("var-256", sides);
}
//! VAR at 512 px: 10 scales, L = 2240.
inline ScaleSchedule var_512() {
  static constexpr int sides[] = {1, 2, 3, 4, 6, 9, 13, 18, 24, 32};
  return ScaleSchedule::squares("var-512", sides);
}
//! Infinity at 1024 px (square aspect): 13 scales, L = 10521.
inline ScaleSchedule infinity_1024() {
  static constexpr int sides[] = {1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64};
  return ScaleSchedule::squares("infinity-1024", sides);
}

inline constexpr std::array<std::string_view, 3> names() { return {"var-256", "var-512", "infinity-1024"}; }

inline ScaleSchedule by_name(std::string_view name) {
  if (name == "var-256") return var_256();
  if (name == "var-512") return var_512();
  if (name == "infinity-1024") return infinity_1024();
  fail("unknown scale schedule '{}' (known: var-256, var-512, infinity-1024)", name);
}

}  // namespace schedules
}  // namespace varkv

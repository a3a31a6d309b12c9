#pragma once
//! \file
//! The concept an eviction policy satisfies, and the optional device scorer that lets it run on the GPU.
//!
//! \par Overview
//! `request(step, layer, schedule)` says which statistics the policy needs; `score(ctx, out)`
//! writes one score per candidate (higher = kept first; ties go to the lower position);
//! `params()` returns a trivially copyable struct for device code. That is all the CPU
//! `CompressedCache` needs (`eviction_policy`).
//!
//! \par Device scorer (optional)
//! A policy that also runs in `DeviceCompressedCache` (`device_eviction_policy`) has a trivially
//! copyable nested `scorer`, built on the host once per (step, layer) by
//! `make_scorer(step, layer, schedule)`, whose
//! `VARKV_HOST_DEVICE float operator()(const CandidateRow& row, std::int32_t c) const` is candidate
//! c's score. The library's policies define `score()` as that scorer applied to every candidate
//! (`score_candidates`), so the CPU and the GPU rank by one definition, bit for bit.
//!
//! \par Statistics flag
//! `static constexpr bool uses_statistics` says whether `request` can ever ask for a statistic. A
//! device cache of a policy that says false compiles only the statistic-free attention kernel
//! (`fused_attention<NoStats>`); a policy that does not say is assumed to need one.
//!
//! \par Snippet
//! \code
//! struct last_query {   // ... the CPU members, then:
//!   static constexpr bool uses_statistics = true;
//!   struct scorer {
//!     VARKV_HOST_DEVICE float operator()(const varkv::CandidateRow& r, std::int32_t c) const { return r.statistic(c); }
//!   };
//!   scorer make_scorer(int, int, const varkv::ScaleSchedule&) const { return {}; }
//! };
//! static_assert(varkv::device_eviction_policy<last_query>);
//! \endcode

#include <concepts>
#include <cstdint>
#include <span>
#include <type_traits>

#include "varkv/policy/axis.hpp"
#include "varkv/policy/eviction/candidate_row.hpp"

namespace varkv {

template <class P>
concept eviction_policy = requires(const P& p, int step, int layer, const ScaleSchedule& s, const ScoreContext& c,
                                   std::span<float> out) {
  requires std::same_as<typename P::axis, eviction_axis>;
  { P::name } -> std::convertible_to<std::string_view>;
  { p.request(step, layer, s) } -> std::same_as<StatRequest>;
  { p.score(c, out) } -> std::same_as<void>;
  requires std::is_trivially_copyable_v<std::remove_cvref_t<decltype(p.params())>>;
};

//! An eviction policy with a device scorer: what `DeviceCompressedCache` needs.
template <class P>
concept device_eviction_policy =
    eviction_policy<P> && requires(const P& p, int step, int layer, const ScaleSchedule& s, const CandidateRow& row,
                                   std::int32_t c) {
      typename P::scorer;
      requires std::is_trivially_copyable_v<typename P::scorer>;
      { p.make_scorer(step, layer, s) } -> std::same_as<typename P::scorer>;
      { static_cast<const typename P::scorer&>(p.make_scorer(step, layer, s))(row, c) } -> std::same_as<float>;
    };

namespace detail {
template <class P> concept declares_statistics_flag = requires { { P::uses_statistics } -> std::convertible_to<bool>; };
template <class P> constexpr bool eviction_statistics() {
  if constexpr (declares_statistics_flag<P>) return P::uses_statistics;
  else return true;  // undeclared: it may ask, so a cache must be able to measure
}
}  // namespace detail

//! Whether eviction policy P can ever request a statistic (`P::uses_statistics`; true when undeclared).
template <class P>
inline constexpr bool eviction_uses_statistics_v = detail::eviction_statistics<P>();

//! A CPU `ScoreContext` as a `CandidateRow` over `n` candidates. The context's spans are in candidate
//! order, so cap = len makes the key_stat index space candidate order too; new keys take the positions
//! first_new_position + i (what `CompressedCache` builds them as).
inline CandidateRow candidate_row(const ScoreContext& c, std::size_t n) {
  CandidateRow r;
  r.stat = c.key_stat.empty() ? nullptr : c.key_stat.data();
  r.positions = c.positions.empty() ? nullptr : c.positions.data();
  r.accumulated = c.accumulated.empty() ? nullptr : c.accumulated.data();
  r.key_norm = c.key_norm.empty() ? nullptr : c.key_norm.data();
  r.len = c.len;
  r.cap = c.len;
  r.n_new = static_cast<std::int32_t>(n) - c.len;
  r.first_new_position = c.first_new_position;
  r.seq = c.seq;
  r.head = c.head;
  return r;
}

//! out[c] = f(row, c) for every candidate of a CPU `ScoreContext`: how the library's policies define
//! `score()` through their device scorer.
template <class Scorer>
void score_candidates(const Scorer& f, const ScoreContext& c, std::span<float> out) {
  const CandidateRow row = candidate_row(c, out.size());
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = f(row, static_cast<std::int32_t>(i));
}

}  // namespace varkv

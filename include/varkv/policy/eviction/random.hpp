#pragma once
//! \file Random control: score = hash(seed, layer, seq, head, position); deterministic per seed.
#include "varkv/policy/eviction/eviction_concept.hpp"
namespace varkv::eviction {
struct random {
  using axis = eviction_axis;
  static constexpr std::string_view name = "random";
  static constexpr bool uses_statistics = false;
  struct params_type { std::uint64_t seed = 0; };
  params_type p{};
  params_type params() const { return p; }
  StatRequest request(int, int, const ScaleSchedule&) const { return {}; }
  //! A 64-bit mix (murmur3's finaliser) of the seed and the token's identity; the top 24 bits as a float,
  //! so every score is exact in fp32 on both sides.
  struct scorer {
    std::uint64_t seed = 0;
    std::int32_t layer = 0;
    VARKV_HOST_DEVICE float operator()(const CandidateRow& r, std::int32_t c) const {
      std::uint64_t x = seed ^ (std::uint64_t(layer) << 48) ^ (std::uint64_t(r.seq) << 40) ^
                        (std::uint64_t(r.head) << 32) ^ std::uint64_t(std::uint32_t(r.position(c)));
      x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ULL; x ^= x >> 33;
      return static_cast<float>(x >> 40);
    }
  };
  scorer make_scorer(int, int layer, const ScaleSchedule&) const { return {p.seed, layer}; }
  // The schedule is not needed (a bare ScoreContext without one is valid here).
  void score(const ScoreContext& c, std::span<float> out) const { score_candidates(scorer{p.seed, c.layer}, c, out); }
};
}  // namespace varkv::eviction

#pragma once
//! \file Random control: score = hash(seed, layer, seq, head, position); deterministic per seed.
#include "varkv/policy/eviction/eviction_concept.hpp"
namespace varkv::eviction {
struct random {
  using axis = eviction_axis;
  static constexpr std::string_view name = "random";
  struct params_type { std::uint64_t seed = 0; };
  params_type p{};
  params_type params() const { return p; }
  StatRequest request(int, int, const ScaleSchedule&) const { return {}; }
  void score(const ScoreContext& c, std::span<float> out) const {
    for (std::size_t i = 0; i < out.size(); ++i) {
      std::uint64_t x = p.seed ^ (std::uint64_t(c.layer) << 48) ^ (std::uint64_t(c.seq) << 40) ^
                        (std::uint64_t(c.head) << 32) ^ std::uint64_t(std::uint32_t(c.positions[i]));
      x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ULL; x ^= x >> 33;
      out[i] = static_cast<float>(x >> 40);
    }
  }
};
}  // namespace varkv::eviction

#pragma once
// Fresh random inputs for every test run; the seed is printed so a failure can be replayed
// (VARKV_TEST_SEED=<seed> forces it).
#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

namespace varkv::testing {

inline std::uint64_t fresh_seed() {
  if (const char* s = std::getenv("VARKV_TEST_SEED")) return std::strtoull(s, nullptr, 10);
  std::random_device rd;
  return (static_cast<std::uint64_t>(rd()) << 32) ^ rd();
}

inline std::vector<float> random_normal(std::size_t n, std::mt19937_64& rng, float stddev = 1.0f) {
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

inline std::string seed_note(std::uint64_t seed) { return "replay with VARKV_TEST_SEED=" + std::to_string(seed); }

}  // namespace varkv::testing

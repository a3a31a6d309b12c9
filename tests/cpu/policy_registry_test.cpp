// Registry parsing and dispatch; random-eviction determinism; retention ranges.
#include <gtest/gtest.h>

#include <string>

#include "varkv/policy/registry.hpp"

namespace {
using namespace varkv;

std::string error_of(std::string_view spec) {
  try {
    with_policy(spec, [](auto) -> int { return 0; });
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

TEST(PolicyRegistry, DispatchesPresetTypesAndParameters) {
  with_policy("scalekv:budget=0.25", [](auto p) -> int {
    EXPECT_TRUE((std::is_same_v<decltype(p), presets::ScaleKV>));
    if constexpr (std::is_same_v<decltype(p), presets::ScaleKV>) {
      EXPECT_DOUBLE_EQ(p.budget.params().fraction, 0.25);
    }
    return 0;
  });
  const int sinks = with_policy("streamingllm:tokens=64,sinks=8", [](auto p) -> int {
    if constexpr (std::is_same_v<decltype(p), presets::StreamingLLM>) {
      EXPECT_EQ(p.budget.params().tokens, 64);
      return p.eviction.params().sinks;
    }
    return -1;
  });
  EXPECT_EQ(sinks, 8);
  with_policy("full", [](auto p) -> int {
    EXPECT_TRUE((std::is_same_v<decltype(p), presets::Full>));
    return 0;
  });
}

TEST(PolicyRegistry, PreciseErrors) {
  EXPECT_EQ(error_of("bogus:budget=0.1"),
            "policy 'bogus:budget=0.1': unknown preset 'bogus' (known: full scalekv amskv streamingllm h2o snapkv "
            "pyramidkv adakv keynorm random)");
  EXPECT_EQ(error_of("h2o:window=3"), "policy 'h2o': unknown parameter 'window' (allowed: budget tokens cfg)");
  EXPECT_EQ(error_of("full:budget=0.1"), "policy 'full': takes no parameters (got 'budget')");
  EXPECT_EQ(error_of("amskv:local=-1"), "policy 'amskv': condensed=2 and local=-1 must be >= 0, demanding_local=-1 >= -1");
  EXPECT_EQ(error_of("h2o:cfg=both"), "policy 'h2o': cfg='both' (expected separate or shared)");
  EXPECT_EQ(error_of("scalekv:stat=max"), "policy 'scalekv': stat='max' (expected mass or logit)");
  EXPECT_EQ(error_of("adakv:floor=2"), "policy 'adakv': floor=2 outside [0, 1]");
  EXPECT_EQ(error_of("snapkv:window=-3"), "policy 'snapkv': window=-3 is negative (0: the whole current map)");
  EXPECT_EQ(error_of("scalekv:profile=/nonexistent/p.json"),
            "classification profile '/nonexistent/p.json': cannot open file");
  EXPECT_EQ(error_of("scalekv:budget=abc"), "policy 'scalekv': parameter budget='abc' is not a number");
  EXPECT_EQ(error_of("scalekv:budget=1.5"), "policy 'scalekv': budget=1.5 outside [0, 1]");
  EXPECT_EQ(error_of("snapkv:kernel=4"), "policy 'snapkv': kernel=4 must be odd and >= 1");
  EXPECT_EQ(error_of("random:seed=1x"), "policy 'random': parameter seed='1x' is not an integer");
  EXPECT_EQ(error_of("h2o:budget"), "policy 'h2o:budget': parameter 'budget' is not key=value");
  EXPECT_EQ(error_of("h2o:budget=0.1,budget=0.2"), "policy 'h2o:budget=0.1,budget=0.2': parameter 'budget' given twice");
  EXPECT_EQ(error_of(":budget=0.1"), "policy ':budget=0.1': empty preset name");
}

TEST(PolicyRetention, ScalesRanges) {
  static const int sides[] = {1, 2, 3, 4};
  const auto s = ScaleSchedule::squares("t", sides);  // begins 0, 1, 5, 14; total 30
  const retention::scales r{{2, 2, 1, false}};
  const RetentionRanges a = r.ranges(3, s);
  for (int p = 0; p < 30; ++p) EXPECT_EQ(a.contains(p), p < 5 || p >= 14) << p;
  const RetentionRanges b = r.ranges(0, s);  // first scales clipped at the current step
  EXPECT_TRUE(b.contains(0));
  EXPECT_TRUE(b.contains(1));  // sinks
  EXPECT_FALSE(b.contains(2));
}

TEST(PolicyEviction, RandomIsSeededAndDeterministic) {
  const std::vector<std::int32_t> pos{0, 1, 2, 3, 4, 5, 6, 7};
  ScoreContext c;
  c.positions = pos;
  std::vector<float> a(8), b(8), d(8);
  eviction::random{{1}}.score(c, a);
  eviction::random{{1}}.score(c, b);
  eviction::random{{2}}.score(c, d);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, d);
}

}  // namespace

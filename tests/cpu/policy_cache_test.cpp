// Compressed cache + policy tests on hand-built cases with known survivors.
#include <gtest/gtest.h>

#include <random>

#include "varkv/cache/compressed_cache.hpp"
#include "varkv/policy/presets.hpp"

namespace {
using namespace varkv;

// Tiny schedule 1x1, 2x2, 4x4 (21 tokens); geometry 1 layer, 2 heads, d=4.
ScaleSchedule tiny() {
  static const int sides[] = {1, 2, 4};
  return ScaleSchedule::squares("tiny", sides);
}
ModelGeometry geo(int layers = 1) { return ModelGeometry{"t", layers, 2, 4}; }

struct StepData {
  std::vector<float> k, v;
  TensorView<const float, 4> kv(const std::vector<float>& x, int S, int H, int n, int d) const {
    return make_view<4>("kv", x.data(), {S, H, n, d});
  }
};

std::vector<float> randv(std::size_t n, std::mt19937& g) {
  std::normal_distribution<float> nd;
  std::vector<float> x(n);
  for (auto& e : x) e = nd(g);
  return x;
}

std::vector<std::int32_t> row_positions(const LayerKvStore<float>& st, int s, int h) {
  std::vector<std::int32_t> p;
  for (int j = 0; j < st.length(s, h); ++j) p.push_back(st.position(s, h, j));
  return p;
}

TEST(PolicyCompose, DefaultsAndConcepts) {
  static_assert(std::is_same_v<presets::Full::eviction_type, eviction::none>);
  static_assert(std::is_same_v<cache_policy<budget::uniform, eviction::h2o>::eviction_type, eviction::h2o>);
  static_assert(std::is_same_v<cache_policy<budget::uniform, eviction::h2o>::retention_type, retention::none>);
  static_assert(composable<eviction::snapkv, budget::uniform, retention::scales>);
  static_assert(!composable<eviction::snapkv, eviction::h2o>);
  static_assert(!composable<int>);
  static_assert(!composable<budget::uniform, budget::pyramid>);
  static_assert(eviction_policy<eviction::scalekv> && eviction_policy<eviction::random>);
  static_assert(!eviction_policy<budget::uniform>);
  static_assert(budget_policy<budget::pyramid> && retention_policy<retention::scales>);
  static_assert(std::is_trivially_copyable_v<eviction::scalekv::params_type>);
  SUCCEED();
}

TEST(PolicyEviction, PatchCentres) {
  const auto c16 = eviction::patch_centres(16, 16);
  ASSERT_EQ(c16.size(), 16u);
  EXPECT_EQ(c16[0], 2 * 16 + 2);
  EXPECT_EQ(c16[1], 2 * 16 + 6);
  EXPECT_EQ(c16[15], 14 * 16 + 14);
  const auto c4 = eviction::patch_centres(4, 4);
  EXPECT_EQ(c4.size(), 16u);  // every token of a 4x4 map
  EXPECT_EQ(eviction::patch_centres(1, 1), std::vector<std::int32_t>{0});
  EXPECT_EQ(eviction::patch_centres(2, 2), (std::vector<std::int32_t>{0, 1, 2, 3}));
}

TEST(PolicyEviction, MaxPool) {
  const std::vector<float> x{0, 0, 5, 0, 0, 0, 0, 1};
  EXPECT_EQ(eviction::max_pool_1d(x, 5), (std::vector<float>{5, 5, 5, 5, 5, 1, 1, 1}));
  EXPECT_EQ(eviction::max_pool_1d(x, 1), x);
  EXPECT_THROW(eviction::max_pool_1d(x, 4), Error);
}

TEST(PolicyCache, FullPresetReproducesFullCache) {
  std::mt19937 g(1);
  const auto sched = tiny();
  BatchShape b{1, true};
  FullCache<float> full(geo(2), sched, b, {DType::bf16, DType::bf16});
  CompressedCache<float, presets::Full> comp(geo(2), sched, b, {DType::bf16, DType::bf16});
  for (int s = 0; s < sched.size(); ++s)
    for (int l = 0; l < 2; ++l) {
      const int n = static_cast<int>(sched.tokens(s));
      auto k = randv(std::size_t(2) * 2 * n * 4, g), v = randv(k.size(), g);
      auto kv = make_view<4>("k", static_cast<const float*>(k.data()), {2, 2, n, 4});
      auto vv = make_view<4>("v", static_cast<const float*>(v.data()), {2, 2, n, 4});
      full.commit(s, l, kv, vv);
      comp.commit(s, l, kv, vv);
    }
  for (int l = 0; l < 2; ++l)
    for (int s = 0; s < 2; ++s)
      for (int h = 0; h < 2; ++h) {
        ASSERT_EQ(row_positions(full.layer(l), s, h), row_positions(comp.layer(l), s, h));
        for (int j = 0; j < full.layer(l).length(s, h); ++j)
          for (int e = 0; e < 4; ++e)
            ASSERT_EQ(full.layer(l).keys()(s, h, j, e), comp.layer(l).keys()(s, h, j, e));
      }
  for (int s = 0; s < sched.size(); ++s)
    for (int l = 0; l < 2; ++l)
      for (int h = 0; h < 2; ++h)
        for (int o = 0; o <= s; ++o)
          ASSERT_EQ(full.ledger().tokens(s, l, h, o), comp.ledger().tokens(s, l, h, o));
}

// Drives a one-layer cache with planted key_stat; returns survivors of (seq 0, head 0).
template <class Policy>
struct Driver {
  ScaleSchedule sched = tiny();
  BatchShape b{1, false};
  CompressedCache<float, Policy> cache;
  std::mt19937 g{7};
  explicit Driver(Policy p, bool cfg_shared = false, BatchShape bs = {1, false})
      : b(bs), cache(geo(), sched, bs, {DType::fp32, DType::fp32}, with_cfg(p, cfg_shared)) {}
  static Policy with_cfg(Policy p, bool shared) {
    p.options.cfg_shared = shared;
    return p;
  }
  // stat(seq, head, candidate_position) gives the planted statistic.
  template <class F> void step(int s, F stat) {
    const int S = b.sequences(), n = static_cast<int>(sched.tokens(s));
    auto k = randv(std::size_t(S) * 2 * n * 4, g), v = randv(k.size(), g);
    auto kv = make_view<4>("k", static_cast<const float*>(k.data()), {S, 2, n, 4});
    auto vv = make_view<4>("v", static_cast<const float*>(v.data()), {S, 2, n, 4});
    const auto& st = cache.layer(0);
    const auto cap = st.capacity();
    std::vector<float> ks(std::size_t(S) * 2 * (cap + n), 0.f);
    for (int q = 0; q < S; ++q)
      for (int h = 0; h < 2; ++h) {
        float* row = ks.data() + (std::size_t(q) * 2 + h) * (cap + n);
        for (int j = 0; j < st.length(q, h); ++j) row[j] = stat(q, h, st.position(q, h, j));
        for (int i = 0; i < n; ++i) row[cap + i] = stat(q, h, int(sched.begin(s)) + i);
      }
    cache.commit(s, 0, kv, vv, make_view<3>("ks", static_cast<const float*>(ks.data()), {S, 2, cap + n}));
  }
};

TEST(PolicyCache, H2OAccumulatesAcrossSteps) {
  // Budget 3 tokens. Step 0: pos 0. Step 1: pos 1..4, mass on 1 high. Step 2: mass on 2 (accumulated small
  // vs 1's larger history) and on new token 15 and 16.
  Driver<presets::H2O> d(presets::h2o({0.0, 3}));
  d.step(0, [](int, int, int p) { return p == 0 ? 1.f : 0.f; });
  d.step(1, [](int, int, int p) { return p == 1 ? 5.f : (p == 3 ? 0.5f : 0.f); });
  EXPECT_EQ(row_positions(d.cache.layer(0), 0, 0), (std::vector<std::int32_t>{0, 1, 3}));
  // step 2: position 3 gets 0.6 now (acc 1.1), position 0 gets 0 (acc 1), new pos 10 gets 1.05.
  d.step(2, [](int, int, int p) { return p == 3 ? 0.6f : (p == 10 ? 1.05f : 0.f); });
  EXPECT_EQ(row_positions(d.cache.layer(0), 0, 0), (std::vector<std::int32_t>{1, 3, 10}));
  EXPECT_EQ(d.cache.ledger().tokens(2, 0, 0, 2), 1);
}

TEST(PolicyCache, BudgetsZeroOneAndTies) {
  Driver<presets::H2O> zero(presets::h2o({0.0, 0}));
  zero.step(0, [](int, int, int) { return 1.f; });
  zero.step(1, [](int, int, int) { return 1.f; });
  EXPECT_EQ(zero.cache.layer(0).tokens_held(), 0);
  Driver<presets::H2O> one(presets::h2o({0.0, 1}));
  one.step(0, [](int, int, int) { return 0.f; });
  one.step(1, [](int, int, int) { return 0.f; });  // all ties -> lowest position
  EXPECT_EQ(row_positions(one.cache.layer(0), 0, 1), std::vector<std::int32_t>{0});
  Driver<presets::H2O> all(presets::h2o({1.0, -1}));
  for (int s = 0; s < 3; ++s) all.step(s, [](int, int, int) { return 0.f; });
  EXPECT_EQ(all.cache.layer(0).tokens_held(), 21 * 2);
}

TEST(PolicyCache, StatisticsSeam) {
  CompressedCache<float, presets::ScaleKV> c(geo(), tiny(), {1, false}, {DType::fp32, DType::fp32},
                                             presets::scalekv({0.5, -1}));
  const auto r = c.statistics(2, 0);
  EXPECT_TRUE(r.needed);
  EXPECT_EQ(r.observers.size(), 16u);
  std::vector<float> k(2 * 1 * 4, 0.f);
  EXPECT_THROW(c.commit(0, 0, make_view<4>("k", static_cast<const float*>(k.data()), {1, 2, 1, 4}),
                        make_view<4>("v", static_cast<const float*>(k.data()), {1, 2, 1, 4})),
               Error);
  CompressedCache<float, presets::StreamingLLM> s(geo(), tiny(), {1, false}, {DType::fp32, DType::fp32});
  EXPECT_FALSE(s.statistics(0, 0).needed);
}

TEST(PolicyCache, ScaleKVKeepsWindowAndPooledNeighbours) {
  // Step 2 is a 4x4 map: all 16 new tokens are window tokens (score +inf). Budget 20 leaves 4 of the 5 old
  // tokens, chosen by the max-pooled (kernel 5) mass planted on position 4.
  Driver<presets::ScaleKV> d(presets::scalekv({0.0, 20}));
  d.step(0, [](int, int, int) { return 0.f; });
  d.step(1, [](int, int, int) { return 0.f; });
  d.step(2, [](int, int, int p) { return p == 4 ? 1.f : 0.f; });  // pooled: 2,3,4 (and new 5,6 are window)
  const auto kept = row_positions(d.cache.layer(0), 0, 0);
  ASSERT_EQ(kept.size(), 20u);
  // old candidates 0..4 : pooled scores pos0=0, pos1=0, pos2..4 = 1 -> keep 2,3,4 + tie lowest 0.
  EXPECT_EQ(std::vector<std::int32_t>(kept.begin(), kept.begin() + 4), (std::vector<std::int32_t>{0, 2, 3, 4}));
}

TEST(PolicyCache, StreamingLLMSinksAndRecent) {
  CompressedCache<float, presets::StreamingLLM> c(geo(), tiny(), {1, false}, {DType::fp32, DType::fp32},
                                                  presets::streaming_llm({0.0, 6}, 2));
  std::mt19937 g(3);
  for (int s = 0; s < 3; ++s) {
    const int n = static_cast<int>(tiny().tokens(s));
    auto k = randv(std::size_t(2) * n * 4, g);
    auto kv = make_view<4>("k", static_cast<const float*>(k.data()), {1, 2, n, 4});
    c.commit(s, 0, kv, kv);
  }
  EXPECT_EQ(row_positions(c.layer(0), 0, 0), (std::vector<std::int32_t>{0, 1, 17, 18, 19, 20}));
}

TEST(PolicyCache, RetentionExceedingBudget) {
  using P = cache_policy<eviction::h2o, budget::uniform, retention::scales>;
  P p(eviction::h2o{}, budget::uniform{{0.0, 2}}, retention::scales{{0, 2, 0, false}});
  Driver<P> d(p);
  d.step(0, [](int, int, int) { return 0.f; });
  try {
    d.step(1, [](int, int, int) { return 0.f; });
    FAIL() << "expected varkv::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("5 retained tokens exceed the budget of 2"), std::string::npos) << e.what();
  }
  P wins(eviction::h2o{}, budget::uniform{{0.0, 2}}, retention::scales{{0, 2, 0, true}});
  Driver<P> w(wins);
  w.step(0, [](int, int, int) { return 0.f; });
  w.step(1, [](int, int, int) { return 0.f; });
  EXPECT_EQ(row_positions(w.cache.layer(0), 0, 0), (std::vector<std::int32_t>{0, 1, 2, 3, 4}));
}

TEST(PolicyCache, CfgSharedVsSeparate) {
  auto plant = [](int q, int, int p) { return (q == 0 && p == 1) || (q == 1 && p == 2) ? 1.f : 0.f; };
  Driver<presets::H2O> sep(presets::h2o({0.0, 2}), false, {1, true});
  sep.step(0, plant);
  sep.step(1, plant);
  EXPECT_EQ(row_positions(sep.cache.layer(0), 0, 0), (std::vector<std::int32_t>{0, 1}));
  EXPECT_EQ(row_positions(sep.cache.layer(0), 1, 0), (std::vector<std::int32_t>{0, 2}));
  Driver<presets::H2O> sh(presets::h2o({0.0, 2}), true, {1, true});
  sh.step(0, plant);
  sh.step(1, plant);
  EXPECT_EQ(row_positions(sh.cache.layer(0), 0, 0), (std::vector<std::int32_t>{1, 2}));
  EXPECT_EQ(row_positions(sh.cache.layer(0), 1, 0), (std::vector<std::int32_t>{1, 2}));
}

TEST(PolicyCache, KeyNormKeepsSmallest) {
  CompressedCache<float, presets::KeyNorm> c(geo(), tiny(), {1, false}, {DType::fp32, DType::fp32},
                                             presets::KeyNorm(eviction::key_norm{}, budget::uniform{{0.0, 2}}));
  std::vector<float> k0(2 * 4, 3.f), k1(2 * 4 * 4, 0.f);
  for (int h = 0; h < 2; ++h)
    for (int i = 0; i < 4; ++i)
      for (int e = 0; e < 4; ++e) k1[(h * 4 + i) * 4 + e] = float(4 - i);  // norms decrease with i
  c.commit(0, 0, make_view<4>("k", static_cast<const float*>(k0.data()), {1, 2, 1, 4}),
           make_view<4>("v", static_cast<const float*>(k0.data()), {1, 2, 1, 4}));
  c.commit(1, 0, make_view<4>("k", static_cast<const float*>(k1.data()), {1, 2, 4, 4}),
           make_view<4>("v", static_cast<const float*>(k1.data()), {1, 2, 4, 4}));
  EXPECT_EQ(row_positions(c.layer(0), 0, 1), (std::vector<std::int32_t>{3, 4}));
}

}  // namespace


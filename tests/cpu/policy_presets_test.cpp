// The published presets on hand-built caches whose survivors are known exactly: ScaleKV's
// drafter/refiner split, AMS-KV's condensed + local scales, head-adaptive budgets; every preset at
// budgets 0, 1 token, 10% and 100%; calibration profiles.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <set>

#include "../support/random.hpp"
#include "varkv/cache/compressed_cache.hpp"
#include "varkv/policy/classification/profile_json.hpp"
#include "varkv/policy/registry.hpp"

namespace {
using namespace varkv;
using varkv::testing::fresh_seed;
using varkv::testing::seed_note;

// 1x1, 2x2, 4x4: 21 tokens, begins 0, 1, 5.
ScaleSchedule tiny() {
  static const int sides[] = {1, 2, 4};
  return ScaleSchedule::squares("tiny", sides);
}

std::vector<std::int32_t> row_positions(const LayerKvStore<float>& st, int s, int h) {
  std::vector<std::int32_t> p;
  for (int j = 0; j < st.length(s, h); ++j) p.push_back(st.position(s, h, j));
  return p;
}

// Drives every layer of a cache through the schedule with random K/V and a planted statistic
// stat(step, layer, seq, head, position); the statistic is given only when the policy asks for one.
template <class Cache, class Stat>
void drive(Cache& cache, int steps, std::mt19937_64& rng, Stat stat) {
  const auto& sched = cache.schedule();
  const int S = cache.batch().sequences(), H = cache.geometry().heads, d = cache.geometry().head_dim;
  for (int s = 0; s < steps; ++s)
    for (int l = 0; l < cache.geometry().layers; ++l) {
      const int n = static_cast<int>(sched.tokens(s));
      auto k = varkv::testing::random_normal(std::size_t(S) * H * n * d, rng);
      auto v = varkv::testing::random_normal(k.size(), rng);
      const auto kv = make_view<4>("k", static_cast<const float*>(k.data()), {S, H, n, d});
      const auto vv = make_view<4>("v", static_cast<const float*>(v.data()), {S, H, n, d});
      if (!cache.statistics(s, l).needed) {
        cache.commit(s, l, kv, vv);
        continue;
      }
      const auto& st = cache.layer(l);
      const std::int64_t cap = st.capacity();
      std::vector<float> ks(std::size_t(S) * H * (cap + n), std::numeric_limits<float>::quiet_NaN());
      for (int q = 0; q < S; ++q)
        for (int h = 0; h < H; ++h) {
          float* row = ks.data() + (std::size_t(q) * H + h) * (cap + n);
          for (int j = 0; j < st.length(q, h); ++j) row[j] = stat(s, l, q, h, st.position(q, h, j));
          for (int i = 0; i < n; ++i) row[cap + i] = stat(s, l, q, h, int(sched.begin(s)) + i);
        }
      cache.commit(s, l, kv, vv, make_view<3>("ks", static_cast<const float*>(ks.data()), {S, H, cap + n}));
    }
}

classification::profile table(int layers, int scales, std::vector<std::uint8_t> drafter) {
  classification::profile p;
  p.layers = layers;
  p.scales = scales;
  p.drafter = std::move(drafter);
  return p;
}

TEST(PolicyProfile, LoadsBothTablesAndNamesBadFiles) {
  const std::string path = std::string(VARKV_SOURCE_DIR) + "/tests/data/policy_profile.json";
  const auto sk = classification::load_profile(path, classification::ProfileSource::scalekv);
  const auto am = classification::load_profile(path, classification::ProfileSource::amskv);
  for (int s = 0; s < 3; ++s) {
    EXPECT_EQ(sk.classify(s, 0), LayerClass::drafter);
    EXPECT_EQ(sk.classify(s, 1), LayerClass::refiner);
    EXPECT_EQ(am.classify(s, 0), LayerClass::refiner);
    EXPECT_EQ(am.classify(s, 1), LayerClass::drafter);
  }
  EXPECT_EQ(sk.drafters(2), 1);
  EXPECT_EQ(classification::profile{}.classify(7, 3), LayerClass::uniform);  // no table
  auto message = [](const nlohmann::json& j, classification::ProfileSource src) {
    try {
      classification::profile_from_json(j, src, "p.json");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  using nlohmann::json;
  EXPECT_EQ(message(json{{"layers", 2}, {"scales", 1}, {"drafter", {{true}}}}, classification::ProfileSource::scalekv),
            "classification profile 'p.json': 'drafter' needs 2 rows (layers)");
  EXPECT_EQ(message(json{{"layers", 1}, {"scales", 2}, {"drafter", {{true}}}}, classification::ProfileSource::scalekv),
            "classification profile 'p.json': drafter[0] needs 2 entries (scales)");
  EXPECT_EQ(message(json{{"layers", 1}, {"scales", 1}}, classification::ProfileSource::amskv),
            "classification profile 'p.json': no 'demanding' table (AMS-KV)");
  EXPECT_EQ(message(json{{"layers", 0}, {"scales", 1}}, classification::ProfileSource::amskv),
            "classification profile 'p.json': layers (0) and scales (1) must be positive");
  EXPECT_NE(message(json{{"layers", "two"}}, classification::ProfileSource::amskv).find("p.json"), std::string::npos);
  EXPECT_EQ(message(json{{"layers", 1}, {"scales", 100000}, {"demanding", {true}}}, classification::ProfileSource::amskv),
            "classification profile 'p.json': layers (1) and scales (100000) must be at most 4096");
  try {
    classification::profile_from_text("{\"layers\": 2,", classification::ProfileSource::scalekv, "t.json");
    ADD_FAILURE() << "expected varkv::Error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("classification profile 't.json': invalid JSON: ", 0), 0u) << e.what();
  }
  EXPECT_THROW(sk.classify(3, 0), Error);
  EXPECT_THROW(sk.classify(0, 2), Error);
}

// ScaleKV's budget: drafters keep (nearly) everything, refiners share the rest; the layers together
// never exceed L x A, at every scale.
TEST(PolicyBudget, DrafterRefinerHonoursTheGlobalBudgetAtEveryScale) {
  const auto sched = schedules::var_256();  // 680 tokens
  const ModelGeometry geo{"g", 8, 2, 4};
  const budget::drafter_refiner b{{0.1, -1, 1.0, 16, 0}};  // A = 68
  for (int nd = 0; nd <= 8; ++nd)
    for (int step = 0; step < sched.size(); ++step) {
      BudgetContext c{step, 0, 0, &sched, &geo, LayerClass::drafter, nd};
      const std::int64_t P = c.prefix();
      std::int64_t total = 0;
      for (int l = 0; l < 8; ++l) {
        c.layer = l;
        c.layer_class = nd == 0 ? LayerClass::uniform : (l < nd ? LayerClass::drafter : LayerClass::refiner);
        const auto cap = b.capacity(c);
        EXPECT_LE(cap, P);
        total += std::min(cap, P);
      }
      if (P > 68) {
        EXPECT_LE(total, 8 * 68);
      } else {
        EXPECT_EQ(total, 8 * P);
      }
    }
  // Hand-computed: step 9 (P = 680), 2 drafters of 8: Max = min(680, (544 - 6 * 16) / 2 = 224) = 224,
  // Min = (544 - 2 * 224) / 6 = 16.
  BudgetContext c{9, 0, 0, &sched, &geo, LayerClass::drafter, 2};
  EXPECT_EQ(b.capacity(c), 224);
  c.layer_class = LayerClass::refiner;
  EXPECT_EQ(b.capacity(c), 16);
  // Step 6 (P = 155): Max = min(155, 224) = 155, Min = (544 - 310) / 6 = 39.
  c.step = 6;
  EXPECT_EQ(b.capacity(c), 39);
  c.layer_class = LayerClass::drafter;
  EXPECT_EQ(b.capacity(c), 155);
  // Below the average (P = 55 at step 4) nothing is compressed; `base` keeps small rows whole too.
  c.step = 4;
  c.layer_class = LayerClass::refiner;
  EXPECT_EQ(b.capacity(c), 55);
  const budget::drafter_refiner based{{0.1, -1, 1.0, 16, 100}};
  c.step = 6;
  EXPECT_EQ(based.capacity(c), 100);
  const budget::drafter_refiner bad{{0.1, -1, 0.0, 16, 0}};
  EXPECT_THROW(bad.capacity(c), Error);
}

TEST(PolicyPresets, ScaleKVWithProfileKeepsDrafterRowsAndTheWindow) {
  const auto seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  // Layer 0 drafter at every scale, layer 1 refiner; A = 8 tokens per row, floor 4.
  auto p = presets::scalekv({0.0, 8}, table(2, 3, {1, 1, 1, 0, 0, 0}), {.drafter = 1.0, .floor = 4, .base = 0});
  CompressedCache<float, presets::ScaleKV> c({"g", 2, 2, 4}, tiny(), {1, true}, {DType::bf16, DType::bf16}, p);
  // Mass planted on position 2 (scale 1) in every row.
  drive(c, 3, rng, [](int, int, int, int, int pos) { return pos == 2 ? 1.f : 0.f; });
  // Step 2 (P = 21): Max = min(21, (16 - 4) / 1) = 12, Min = (16 - 12) / 1 = 4.
  for (int s = 0; s < 2; ++s)
    for (int h = 0; h < 2; ++h) {
      EXPECT_EQ(c.layer(0).length(s, h), 12);
      // The refiner keeps 4 of its 16 window tokens (the 4x4 map is all window): the lowest positions.
      EXPECT_EQ(row_positions(c.layer(1), s, h), (std::vector<std::int32_t>{5, 6, 7, 8}));
      // The drafter's 12 places go to window tokens too (16 of them, all +inf): the lowest 12 positions.
      const auto d = row_positions(c.layer(0), s, h);
      EXPECT_EQ(d.front(), 5);
      EXPECT_EQ(d.back(), 16);
    }
  // Step 1 (P = 5 <= A): nothing compressed anywhere.
  EXPECT_EQ(c.ledger().tokens(1), 2 * 2 * 2 * 5);
  EXPECT_EQ(c.ledger().tokens(2, 0), 2 * 2 * 12);
  EXPECT_EQ(c.ledger().tokens(2, 1), 2 * 2 * 4);
}

TEST(PolicyPresets, ScaleKVPoolsTheWindowMassOverNeighbours) {
  // A larger step: 2x2 -> 6x6 map (36 tokens, 16 window patch centres); the mass on one old token
  // spreads over its pooling neighbours (kernel 5) and those win the remaining budget.
  static const int sides[] = {1, 2, 6};
  const auto sched = ScaleSchedule::squares("s", sides);  // 41 tokens, begins 0, 1, 5
  auto p = presets::scalekv({0.0, 20});
  CompressedCache<float, presets::ScaleKV> c({"g", 1, 1, 4}, sched, {1, false}, {DType::fp32, DType::fp32}, p);
  std::mt19937_64 rng(fresh_seed());
  drive(c, 3, rng, [](int, int, int, int, int pos) { return pos == 0 ? 3.f : (pos == 20 ? 1.f : 0.f); });
  const auto kept = row_positions(c.layer(0), 0, 0);
  ASSERT_EQ(kept.size(), 20u);
  const std::set<std::int32_t> k(kept.begin(), kept.end());
  const auto window = eviction::patch_centres(6, 6);
  for (auto q : window) EXPECT_TRUE(k.count(5 + q)) << "window token " << 5 + q;
  // 4 places left: pooled mass 3 covers positions 0..2, mass 1 covers 18..22 (22 may be window).
  EXPECT_TRUE(k.count(0) && k.count(1) && k.count(2));
  EXPECT_TRUE(k.count(18));  // pooled mass 1 over 18..22; 19, 20, 22 are window tokens, 18 < 21 wins the tie
}

TEST(PolicyPresets, AMSKVKeepsCondensedAndLocalScalesAndDemandingLayersKeepAll) {
  const auto sched = schedules::var_256();
  const auto seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  // Layer 1 cache-demanding (keeps everything), layers 0 and 2 cache-efficient.
  auto prof = table(3, 10, std::vector<std::uint8_t>(30, 0));
  std::fill(prof.drafter.begin() + 10, prof.drafter.begin() + 20, 1);
  const auto p = presets::amskv({.condensed = 2, .local = 2, .demanding_local = -1}, prof);
  CompressedCache<float, presets::AMSKV> c({"g", 3, 2, 8}, sched, {2, true}, {DType::bf16, DType::bf16}, p);
  drive(c, 10, rng, [](int, int, int, int, int) { return 0.f; });
  for (int step = 0; step < 10; ++step)
    for (int l = 0; l < 3; ++l) {
      std::int64_t expect = 0;
      for (int o = 0; o <= step; ++o)
        if (l == 1 || o < 2 || o > step - 2) expect += sched.tokens(o);
      EXPECT_EQ(c.ledger().tokens(step, l), expect * 4 * 2) << "step " << step << " layer " << l;
    }
  // After the last step a cache-efficient row holds exactly scales 0, 1, 8, 9.
  std::vector<std::int32_t> want;
  for (int o : {0, 1, 8, 9})
    for (std::int64_t i = sched.begin(o); i < sched.begin(o) + sched.tokens(o); ++i) want.push_back(static_cast<std::int32_t>(i));
  EXPECT_EQ(row_positions(c.layer(0), 3, 1), want);
  EXPECT_EQ(c.layer(1).length(3, 1), 680);
  // Bytes per origin scale: intermediate scales 2..7 hold nothing in layer 0.
  for (int o = 2; o < 8; ++o) EXPECT_EQ(c.ledger().tokens(9, 0, 0, o), 0);
  EXPECT_EQ(c.ledger().tokens(9, 0, 0, 8), 169 * 4);
}

TEST(PolicyPresets, HeadAdaptiveSplitsOneTotalOverHeads) {
  // 1 layer, 3 heads, 4 candidate tokens after step 1 per head, average budget 2 -> 6 per sequence,
  // floor share 0.5 -> each head keeps >= 1. Head 0 gets all the big scores.
  const auto p = presets::adakv({0.0, 2}, 0.5, 0, 1);  // kernel 1: no pooling
  CompressedCache<float, presets::AdaKV> c({"g", 1, 3, 4}, tiny(), {1, false}, {DType::fp32, DType::fp32}, p);
  std::mt19937_64 rng(fresh_seed());
  drive(c, 2, rng, [](int step, int, int, int h, int pos) {
    if (step == 0) return 0.f;
    return h == 0 ? 10.f - float(pos) : (h == 1 ? (pos == 3 ? 2.f : 0.f) : 0.5f);
  });
  // Step 1: candidates per head = positions 0..4. Floors: 1 each (heads: 0 -> pos 0, 1 -> pos 3, 2 -> pos 0).
  // Remaining 3 by global rank: head 0's 9 (pos 1), 8 (pos 2), 7 (pos 3).
  EXPECT_EQ(row_positions(c.layer(0), 0, 0), (std::vector<std::int32_t>{0, 1, 2, 3}));
  EXPECT_EQ(row_positions(c.layer(0), 0, 1), (std::vector<std::int32_t>{3}));
  EXPECT_EQ(row_positions(c.layer(0), 0, 2), (std::vector<std::int32_t>{0}));
  EXPECT_EQ(c.ledger().tokens(1, 0), 6);  // memory is per head: 4 + 1 + 1 rows, no padding
  EXPECT_EQ(c.ledger().tokens(1, 0, 0), 4);
  EXPECT_EQ(c.ledger().tokens(1, 0, 1), 1);
}

TEST(PolicyPresets, HeadAdaptiveConservesTheTotalOnRandomScores) {
  const auto seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  const auto sched = schedules::var_256();
  const auto p = presets::adakv({0.1, -1}, 0.2, 0, 7);  // A = 68 per head
  CompressedCache<float, presets::AdaKV> c({"g", 2, 4, 8}, sched, {1, true}, {DType::bf16, DType::bf16}, p);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  std::vector<float> noise(4096);
  for (auto& x : noise) x = u(rng);
  drive(c, 10, rng, [&](int step, int l, int q, int h, int pos) { return noise[(pos * 7 + h * 131 + q * 17 + l * 3 + step) % 4096] * float(h + 1); });
  // Every step: the layer's heads hold exactly min(H x A, H x P) tokens per sequence (ledger, exact).
  for (int step = 0; step < 10; ++step) {
    const std::int64_t P = sched.begin(step) + sched.tokens(step);
    for (int l = 0; l < 2; ++l) EXPECT_EQ(c.ledger().tokens(step, l), 2 * std::min<std::int64_t>(4 * 68, 4 * P)) << "step " << step;
  }
  // After the last step, per sequence: the total is conserved and every head keeps its floor (0.2 x 68).
  for (int l = 0; l < 2; ++l)
    for (int q = 0; q < 2; ++q) {
      std::int64_t sum = 0;
      for (int h = 0; h < 4; ++h) {
        EXPECT_GE(c.layer(l).length(q, h), 13);
        sum += c.layer(l).length(q, h);
      }
      EXPECT_EQ(sum, 4 * 68);
    }
  // Heads with larger scores (h = 3) end with longer rows than h = 0 somewhere: the split is adaptive.
  EXPECT_GT(c.layer(0).length(0, 3), c.layer(0).length(0, 0));
}

// Every preset at budgets 0, 1 token, 10% and 100% on random statistics: rows never exceed their
// budget, 100% reproduces the full cache, and compressing presets hold less than it at 10%.
template <class Policy>
void check_budget_levels(const std::string& name, std::mt19937_64& rng) {
  const auto sched = tiny();
  const ModelGeometry geo{"g", 2, 2, 4};
  std::uniform_real_distribution<float> u(0.f, 1.f);
  for (const std::string b : {"tokens=0", "tokens=1", "budget=0.1", "budget=1"}) {
    SCOPED_TRACE(name + ":" + b);
    with_policy(name + ":" + b, [&](auto p) -> int {
      if constexpr (std::is_same_v<decltype(p), Policy>) {
        CompressedCache<float, Policy> c(geo, sched, {1, true}, {DType::fp32, DType::fp32}, p);
        drive(c, 3, rng, [&](int, int, int, int, int) { return u(rng); });
        std::int64_t limit = b == "tokens=0" ? 0 : b == "tokens=1" ? 1 : b == "budget=0.1" ? 3 : 21;
        for (int l = 0; l < 2; ++l)
          for (int q = 0; q < 2; ++q)
            for (int h = 0; h < 2; ++h) {
              if constexpr (detail::declares_head_split<typename Policy::budget_type>)
                EXPECT_LE(c.layer(l).length(q, 0) + c.layer(l).length(q, 1), 2 * limit);
              else
                EXPECT_EQ(c.layer(l).length(q, h), std::min<std::int64_t>(limit, 21));
            }
        if (b == "budget=1") {
          EXPECT_EQ(c.ledger().peak_bytes(), KvLedger::full(geo, sched, {1, true}, {DType::fp32, DType::fp32}).peak_bytes());
        }
      } else {
        ADD_FAILURE() << "registry built another type for " << name;
      }
      return 0;
    });
  }
}

TEST(PolicyPresets, EveryPresetHonoursBudgetsZeroOneTenAndHundredPercent) {
  const auto seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  check_budget_levels<presets::ScaleKV>("scalekv", rng);
  check_budget_levels<presets::StreamingLLM>("streamingllm", rng);
  check_budget_levels<presets::H2O>("h2o", rng);
  check_budget_levels<presets::SnapKV>("snapkv", rng);
  check_budget_levels<presets::AdaKV>("adakv", rng);
  check_budget_levels<presets::KeyNorm>("keynorm", rng);
  check_budget_levels<presets::Random>("random", rng);
}

TEST(PolicyPresets, SnapKVObservesTheLastQueriesAndPyramidKVCutsDeeperLayersMore) {
  // SnapKV with a window of the last 2 queries: the request names exactly them.
  const auto snap = presets::snapkv({0.0, 4}, 2, 3);
  const auto req = snap.eviction.request(2, 0, tiny());
  EXPECT_TRUE(req.needed);
  EXPECT_EQ(req.observers, (std::vector<std::int32_t>{14, 15}));
  EXPECT_EQ(presets::snapkv({0.0, 4}).eviction.request(2, 0, tiny()).observers.size(), 16u);  // window 0: whole map
  // Mass 1 on position 9 and 0.5 on 20, max-pooled by kernel 3 along token order: 8, 9, 10 score 1,
  // 19 and 20 score 0.5. Budget 4 -> 8, 9, 10 and 19 (the tie 19/20 goes to the lower position).
  CompressedCache<float, presets::SnapKV> c({"g", 1, 1, 4}, tiny(), {1, false}, {DType::fp32, DType::fp32}, snap);
  std::mt19937_64 rng(fresh_seed());
  drive(c, 3, rng, [](int step, int, int, int, int pos) { return step < 2 ? 0.f : (pos == 9 ? 1.f : (pos == 20 ? 0.5f : 0.f)); });
  EXPECT_EQ(row_positions(c.layer(0), 0, 0), (std::vector<std::int32_t>{8, 9, 10, 19}));

  // PyramidKV over 3 layers at 50% of 21 tokens (average 10.5): 16, 11, 6 tokens (ratio 0.5).
  const auto pyr = presets::pyramidkv(0.5, 0.5);
  CompressedCache<float, presets::PyramidKV> p({"g", 3, 1, 4}, tiny(), {1, false}, {DType::fp32, DType::fp32}, pyr);
  drive(p, 3, rng, [](int, int, int, int, int pos) { return float(pos % 5); });
  EXPECT_EQ(p.layer(0).length(0, 0), 16);
  EXPECT_EQ(p.layer(1).length(0, 0), 11);
  EXPECT_EQ(p.layer(2).length(0, 0), 6);
}

TEST(PolicyPresets, PyramidBudgetsFallWithDepthAndAverageTheBudget) {
  const auto sched = schedules::var_256();
  const ModelGeometry geo{"g", 6, 1, 4};
  const budget::pyramid b{{0.1, 0.5}};
  std::int64_t sum = 0, prev = 1 << 30;
  for (int l = 0; l < 6; ++l) {
    BudgetContext c{9, l, 0, &sched, &geo, LayerClass::uniform, 0};
    const auto cap = b.capacity(c);
    EXPECT_LT(cap, prev);
    prev = cap;
    sum += cap;
  }
  EXPECT_NEAR(double(sum) / 6, 68.0, 1.0);
}

TEST(PolicyRegistry, BuildsTheNewPresetsWithTheirParameters) {
  with_policy("amskv:condensed=3,local=2,demanding_local=4", [](auto p) -> int {
    if constexpr (std::is_same_v<decltype(p), presets::AMSKV>) {
      EXPECT_EQ(p.budget.params().condensed, 3);
      EXPECT_EQ(p.budget.params().local, 2);
      EXPECT_EQ(p.budget.params().demanding_local, 4);
      EXPECT_EQ(p.retention.params().first, 3);  // the condensed scales are retained
    } else {
      ADD_FAILURE() << "amskv built another type";
    }
    return 0;
  });
  const std::string prof = std::string(VARKV_SOURCE_DIR) + "/tests/data/policy_profile.json";
  with_policy("scalekv:budget=0.2,profile=" + prof + ",stat=logit,cfg=shared,floor=8", [](auto p) -> int {
    if constexpr (std::is_same_v<decltype(p), presets::ScaleKV>) {
      EXPECT_DOUBLE_EQ(p.budget.params().fraction, 0.2);
      EXPECT_EQ(p.budget.params().floor, 8);
      EXPECT_EQ(p.classification.classify(1, 0), LayerClass::drafter);
      EXPECT_EQ(p.eviction.params().statistic, KeyStatistic::logit_sum);
      EXPECT_TRUE(p.options.cfg_shared);
    } else {
      ADD_FAILURE() << "scalekv built another type";
    }
    return 0;
  });
  with_policy("amskv:profile=" + prof, [](auto p) -> int {
    if constexpr (std::is_same_v<decltype(p), presets::AMSKV>) {
      EXPECT_EQ(p.classification.classify(0, 1), LayerClass::drafter);
    } else {
      ADD_FAILURE() << "amskv built another type";
    }
    return 0;
  });
}

TEST(PolicyCache, FullPresetIsAPureAppendAndRejectsOutOfOrderSteps) {
  CompressedCache<float, presets::Full> c({"g", 1, 1, 4}, tiny(), {1, false}, {DType::fp32, DType::fp32});
  EXPECT_FALSE(c.statistics(0, 0).needed);
  std::vector<float> k(4 * 4, 1.f);
  EXPECT_THROW(c.commit(1, 0, make_view<4>("k", static_cast<const float*>(k.data()), {1, 1, 4, 4}),
                        make_view<4>("v", static_cast<const float*>(k.data()), {1, 1, 4, 4})),
               Error);
  EXPECT_THROW(c.statistics(0, 1), Error);
  EXPECT_THROW(c.statistics(3, 0), Error);
}

}  // namespace

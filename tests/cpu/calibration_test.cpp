// varkv-calibrate and its library part (varkv_reference/calibration.hpp): the attention selectivity
// index and the inter-scale similarity on planted inputs with exact expected values, the
// classification rules, the accumulation over runs on a tiny random VAR, the profile JSON as the
// classification policies load it, the picture, and the command-line tool (default random model,
// golden weights, one-line errors).
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <varkv/core/error.hpp>
#include <varkv/policy/classification/profile_json.hpp>
#include <varkv_reference/calibration.hpp>
#include <varkv_reference/var_model.hpp>
#include <varkv_reference/vqvae.hpp>

#include "../support/stb_image_reader.hpp"

#include "../support/random.hpp"
#include "../support/tiny_vae.hpp"

using namespace varkv::ref;
using varkv::testing::fresh_seed;
using varkv::testing::seed_note;

namespace {

namespace fs = std::filesystem;

// ---- helpers ----

VarConfig tiny_config() {
  VarConfig c;
  c.depth = 3;
  c.width = 32;
  c.heads = 2;
  c.num_classes = 10;
  c.vocab = 64;
  c.Cvae = 4;
  c.patch_nums = {1, 2, 3, 4};
  return c;
}

using varkv::testing::tiny_vae_config;

fs::path fresh_dir(const std::string& tag) {
  std::mt19937_64 rng(fresh_seed());
  const fs::path p = fs::temp_directory_path() / ("varkv-calibrate-" + tag + "-" + std::to_string(rng()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

// Expected ASI of a row by the definition, computed independently (sort, not nth_element).
RowSelectivity expected_row(std::vector<double> history, double current) {
  double hist = 0;
  for (double m : history) hist += m;
  RowSelectivity r;
  if (history.empty() || hist == 0) return r;
  std::sort(history.rbegin(), history.rend());
  const std::size_t k = (history.size() + 9) / 10;  // ceil(n / 10)
  double top = 0;
  for (std::size_t j = 0; j < k; ++j) top += history[j];
  r.history_mass = hist / (hist + current);
  r.concentration = top / hist;
  r.asi = 1 - r.history_mass + r.history_mass * r.concentration;
  return r;
}

// A [N, H, n, d] tensor.
struct Kv {
  std::vector<float> data;
  std::int64_t N, H, n, d;
  Kv(std::int64_t N_, std::int64_t H_, std::int64_t n_, std::int64_t d_)
      : data(static_cast<std::size_t>(N_ * H_ * n_ * d_)), N(N_), H(H_), n(n_), d(d_) {}
  float& at(std::int64_t b, std::int64_t h, std::int64_t i, std::int64_t c) { return data[((b * H + h) * n + i) * d + c]; }
  varkv::TensorView<const float, 4> view() const { return varkv::make_view<4>("kv", data.data(), {N, H, n, d}); }
};

std::vector<float> random_vec(std::size_t n, std::mt19937_64& rng) { return varkv::testing::random_normal(n, rng); }

// ---- the selectivity of one row ----

TEST(Calibration, RowSelectivityFollowsTheDefinition) {
  const auto seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> unit(0.05, 0.95);

  // All the mass on the current map: nothing to lose, ASI 1.
  {
    const std::vector<float> zeros(20, 0.0f);
    const auto r = row_selectivity(zeros, 7.0);
    EXPECT_EQ(r.asi, 1.0);
    EXPECT_EQ(r.history_mass, 0.0);
    EXPECT_EQ(r.concentration, 1.0);
  }
  // Mass h spread evenly over 20 or 30 history keys: the top tenth (2 or 3 keys) carries 10% of it,
  // so ASI = 1 - h + 0.1 h (30 keys: 0.1 x 30 must give 3 keys, not 4).
  for (int keys : {20, 30, 10}) {
    const double h = unit(rng), nq = 9;
    const std::vector<float> hist(static_cast<std::size_t>(keys), static_cast<float>(h * nq / keys));
    const auto r = row_selectivity(hist, (1 - h) * nq);
    EXPECT_NEAR(r.history_mass, h, 1e-6) << keys;
    EXPECT_NEAR(r.concentration, 0.1, 1e-6) << keys;
    EXPECT_NEAR(r.asi, 1 - h + 0.1 * h, 1e-6) << keys;
  }
  // A single history key: the top tenth is that key, ASI 1 whatever its mass.
  {
    const std::vector<float> one{3.0f};
    const auto r = row_selectivity(one, 1.0);
    EXPECT_NEAR(r.history_mass, 0.75, 1e-12);
    EXPECT_EQ(r.concentration, 1.0);
    EXPECT_NEAR(r.asi, 1.0, 1e-12);
  }
  // Random rows against the plain definition.
  for (int trial = 0; trial < 50; ++trial) {
    const int n = 1 + static_cast<int>(rng() % 60);
    std::vector<float> hist(static_cast<std::size_t>(n));
    std::vector<double> hist_d;
    for (auto& m : hist) {
      m = static_cast<float>(std::pow(unit(rng), 4.0));
      hist_d.push_back(m);
    }
    const double current = unit(rng) * 5;
    const auto got = row_selectivity(hist, current);
    const auto want = expected_row(hist_d, current);
    ASSERT_NEAR(got.history_mass, want.history_mass, 1e-12) << "n " << n;
    ASSERT_NEAR(got.concentration, want.concentration, 1e-12) << "n " << n;
    ASSERT_NEAR(got.asi, want.asi, 1e-12) << "n " << n;
    EXPECT_GE(got.concentration, std::ceil(n / 10.0) / n - 1e-12);  // the top tenth carries at least its share
  }
  const std::vector<float> bad{1.0f, -0.5f};
  EXPECT_THROW(row_selectivity(bad, 1.0), varkv::Error);
  const std::vector<float> nan{std::numeric_limits<float>::quiet_NaN()};
  EXPECT_THROW(row_selectivity(nan, 1.0), varkv::Error);
  const std::vector<float> ok{1.0f};
  EXPECT_THROW(row_selectivity(ok, 1.0, 0.0), varkv::Error);
  const std::vector<float> empty;
  EXPECT_THROW(row_selectivity(empty, 0.0), varkv::Error);  // no mass at all
}

// ---- planted key statistics through the CalibratingCache ----

// Schedule 1, 2x2, 3x3 (positions 0 | 1..4 | 5..13); 2 layers, 2 heads, batch 1 under CFG (2 rows).
// Layer 0 gets planted masses with known ASI; layer 1 puts all mass on the current map (ASI 1).
TEST(Calibration, PlantedKeyStatGivesExactSelectivity) {
  const auto seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> unit(0.1, 1.0);
  const std::vector<int> sides{1, 2, 3};
  const auto sched = varkv::ScaleSchedule::squares("tiny", sides);
  const varkv::ModelGeometry geo{"tiny", 2, 2, 4};
  const int N = 2, H = 2, d = 4, cap = static_cast<int>(sched.total());
  CalibrationAccumulator acc(2, sched);
  CalibratingCache cache(geo, sched, {1, true}, acc);

  // Expected means of layer 0 per step, accumulated from the planted rows.
  std::vector<double> want_asi(3, 0), want_h(3, 0), want_c(3, 0);
  for (int s = 0; s < 3; ++s) {
    const auto n = sched.tokens(s), begin = sched.begin(s);
    const auto req = cache.statistics(s, 0);
    EXPECT_TRUE(req.needed);
    EXPECT_EQ(req.statistic, varkv::KeyStatistic::probability_mass);
    ASSERT_EQ(static_cast<std::int64_t>(req.observers.size()), n);  // every query of the step
    for (std::int64_t i = 0; i < n; ++i) EXPECT_EQ(req.observers[i], i);
    for (int l = 0; l < 2; ++l) {
      Kv k(N, H, n, d), v(N, H, n, d);
      k.data = random_vec(k.data.size(), rng);
      v.data = random_vec(v.data.size(), rng);
      std::vector<float> stat(static_cast<std::size_t>(N * H * (cap + n)), 0.0f);
      for (int r = 0; r < N * H; ++r) {
        float* row = stat.data() + std::size_t(r) * (cap + n);
        if (l == 1 || s == 0) {  // all the mass on the own map, spread evenly
          for (std::int64_t i = 0; i < n; ++i) row[cap + i] = 1.0f;
          if (l == 0) want_asi[s] += 1, want_c[s] += 1;
          continue;
        }
        // Layer 0, step >= 1: random history masses over the begin(s) cached keys, the rest on the map.
        const double h = unit(rng) * 0.9;
        std::vector<double> w(static_cast<std::size_t>(begin));
        double wsum = 0;
        for (auto& x : w) wsum += (x = std::pow(unit(rng), 3.0));
        std::vector<double> hist;
        for (std::int64_t j = 0; j < begin; ++j) {
          row[j] = static_cast<float>(h * n * w[j] / wsum);
          hist.push_back(row[j]);
        }
        double current = 0;
        for (std::int64_t i = 0; i < n; ++i) current += (row[cap + i] = static_cast<float>(1 - h));
        const auto e = expected_row(hist, current);
        want_asi[s] += e.asi;
        want_h[s] += e.history_mass;
        want_c[s] += e.concentration;
      }
      cache.commit(s, l, k.view(), v.view(), varkv::make_view<3>("stat", stat.data(), {N, H, cap + n}));
      EXPECT_EQ(acc.selectivity_rows(l, s), N * H);
    }
    EXPECT_EQ(cache.layer(0).max_length(), sched.end(s));  // the step's K/V joined the full cache
  }
  const auto t = acc.tables();
  for (int s = 0; s < 3; ++s) {
    SCOPED_TRACE("step " + std::to_string(s));
    EXPECT_NEAR(t.at(t.selectivity, 0, s), want_asi[s] / (N * H), 1e-9);
    EXPECT_NEAR(t.at(t.history_mass, 0, s), want_h[s] / (N * H), 1e-9);
    EXPECT_NEAR(t.at(t.concentration, 0, s), want_c[s] / (N * H), 1e-9);
    EXPECT_EQ(t.at(t.selectivity, 1, s), 1.0);
    EXPECT_EQ(t.at(t.history_mass, 1, s), 0.0);
  }
  EXPECT_EQ(t.at(t.selectivity, 0, 0), 1.0);  // step 0: no history
  EXPECT_NEAR(t.at(t.selectivity, 0, 1), 1.0, 1e-12);  // step 1: one history key, always in the top tenth
  EXPECT_LT(t.at(t.selectivity, 0, 2), 1.0);  // step 2: 5 history keys, the top one keeps part of the mass

  // A key statistic that is not the mass of all the step's queries, and a commit without statistics.
  CalibrationAccumulator acc2(2, sched);
  CalibratingCache bad(geo, sched, {1, true}, acc2);
  Kv k(N, H, 1, d);
  std::vector<float> stat(static_cast<std::size_t>(N * H * (cap + 1)), 0.0f);
  for (int r = 0; r < N * H; ++r) stat[std::size_t(r) * (cap + 1) + cap] = 0.5f;  // sums to 0.5, not 1
  try {
    bad.commit(0, 0, k.view(), k.view(), varkv::make_view<3>("stat", stat.data(), {N, H, cap + 1}));
    FAIL() << "expected varkv::Error";
  } catch (const varkv::Error& e) {
    EXPECT_NE(std::string(e.what()).find("sums to 0.5"), std::string::npos) << e.what();
  }
  EXPECT_THROW(bad.commit(0, 1, k.view(), k.view()), varkv::Error);
  // Unmeasured cells make the tables an error.
  EXPECT_THROW((void)acc2.tables(), varkv::Error);
}

// ---- inter-scale similarity ----

TEST(Calibration, BilinearResamplingMatchesPyTorchAlignCornersFalse) {
  // 2x2 -> 3x3: source coordinates -1/6 (clamped to 0), 1/2, 7/6 (both neighbours row/column 1).
  const double a = 1, b = 2, c = 4, dd = 8;
  const std::vector<float> in{1, 2, 4, 8};
  const auto out = resample_token_map(in, 2, 2, 1, 3, 3);
  const std::vector<double> want{a, (a + b) / 2, b, (a + c) / 2, (a + b + c + dd) / 4, (b + dd) / 2, c, (c + dd) / 2, dd};
  ASSERT_EQ(out.size(), want.size());
  for (std::size_t i = 0; i < want.size(); ++i) EXPECT_DOUBLE_EQ(out[i], want[i]) << i;
  // 3 -> 4 along one axis, two channels: source 0.75 (dst + 0.5) - 0.5 = -0.125 (0), 0.625, 1.375, 2.125 (2).
  // [1, 3, 2] channels last: channel 0 = 0, 10, 20; channel 1 = 5, 6, 7.
  const std::vector<float> interleaved{0, 5, 10, 6, 20, 7};
  const auto r = resample_token_map(interleaved, 1, 3, 2, 1, 4);
  const std::vector<double> want0{0, 6.25, 13.75, 20}, want1{5, 5.625, 6.375, 7};
  for (int x = 0; x < 4; ++x) {
    EXPECT_DOUBLE_EQ(r[std::size_t(x) * 2], want0[x]) << x;
    EXPECT_DOUBLE_EQ(r[std::size_t(x) * 2 + 1], want1[x]) << x;
  }
  EXPECT_THROW(resample_token_map(in, 2, 3, 1, 3, 3), varkv::Error);  // 4 values are not 2 x 3
  // Cosine: equal 1, opposite -1, orthogonal 0, a zero vector 0; averaged over tokens.
  const std::vector<float> x{1, 0, 0, 2, 3, 0};
  const std::vector<double> y{2, 0, 1, 0, 0, 0};  // same direction, orthogonal, zero
  EXPECT_DOUBLE_EQ(mean_token_cosine(x, y, 3, 2), (1.0 + 0.0 + 0.0) / 3);
  const std::vector<double> neg{-1, 0, 0, -2, -3, 0};
  EXPECT_DOUBLE_EQ(mean_token_cosine(x, neg, 3, 2), -1.0);
}

// K and V maps constant per (row, channel) repeat across scales in layer 0 (cosine 1 after any
// resampling) and flip sign every scale in layer 1 (cosine -1).
TEST(Calibration, RepeatedMapsGiveSimilarityOneAndNegatedMapsMinusOne) {
  const auto seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  const std::vector<int> sides{1, 2, 3, 5};
  const auto sched = varkv::ScaleSchedule::squares("sim", sides);
  const varkv::ModelGeometry geo{"sim", 3, 2, 8};
  const int N = 4, H = 2, d = 8, cap = static_cast<int>(sched.total());
  CalibrationAccumulator acc(3, sched);
  CalibratingCache cache(geo, sched, {2, true}, acc);
  const auto base_k = random_vec(std::size_t(N * H * d), rng), base_v = random_vec(std::size_t(N * H * d), rng);
  for (int s = 0; s < sched.size(); ++s) {
    const auto n = sched.tokens(s);
    for (int l = 0; l < 3; ++l) {
      Kv k(N, H, n, d), v(N, H, n, d);
      const float sign = (l == 1 && s % 2 == 1) ? -1.0f : 1.0f;
      for (int b = 0; b < N; ++b)
        for (int h = 0; h < H; ++h)
          for (std::int64_t i = 0; i < n; ++i)
            for (int c = 0; c < d; ++c) {
              k.at(b, h, i, c) = sign * base_k[std::size_t((b * H + h) * d + c)];
              v.at(b, h, i, c) = sign * base_v[std::size_t((b * H + h) * d + c)];
            }
      if (l == 2) {  // layer 2: fresh random maps, similarity strictly between -1 and 1
        k.data = random_vec(k.data.size(), rng);
        v.data = random_vec(v.data.size(), rng);
      }
      std::vector<float> stat(static_cast<std::size_t>(N * H * (cap + n)), 0.0f);
      for (int r = 0; r < N * H; ++r)
        for (std::int64_t i = 0; i < n; ++i) stat[std::size_t(r) * (cap + n) + cap + i] = 1.0f;
      cache.commit(s, l, k.view(), v.view(), varkv::make_view<3>("stat", stat.data(), {N, H, cap + n}));
    }
  }
  const auto t = acc.tables(2);
  for (int l = 0; l < 3; ++l) EXPECT_TRUE(std::isnan(t.at(t.similarity, l, 0))) << l;
  for (int s = 1; s < sched.size(); ++s) {
    EXPECT_NEAR(t.at(t.similarity_k, 0, s), 1.0, 1e-6) << s;
    EXPECT_NEAR(t.at(t.similarity_v, 0, s), 1.0, 1e-6) << s;
    EXPECT_NEAR(t.at(t.similarity_k, 1, s), -1.0, 1e-6) << s;
    EXPECT_NEAR(t.at(t.similarity, 1, s), -1.0, 1e-6) << s;
    EXPECT_LT(std::abs(t.at(t.similarity, 2, s)), 0.9) << s;
    EXPECT_EQ(acc.similarity_rows(0, s), N * H);
  }
  EXPECT_NEAR(t.similarity_mean[0], 1.0, 1e-6);
  EXPECT_NEAR(t.similarity_mean[1], -1.0, 1e-6);
  EXPECT_NEAR(t.similarity_mean[2], (t.at(t.similarity, 2, 2) + t.at(t.similarity, 2, 3)) / 2, 1e-12);
  // The lowest similarity (layer 1) is the demanding one.
  const auto cls = classify(t, {.drafters_per_scale = 1, .demanding_fraction = 0.2, .similarity_from = 2});
  EXPECT_EQ(cls.demanding, (std::vector<std::uint8_t>{0, 1, 0}));
}

// ---- the classification rules ----

TEST(Calibration, RulesPickTheLowestLayersWithTiesToTheLowerIndex) {
  const auto seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  EXPECT_EQ(CalibrationRules{}.drafters(4), 1);
  EXPECT_EQ(CalibrationRules{}.drafters(3), 1);   // round(0.375) = 0, at least 1
  EXPECT_EQ(CalibrationRules{}.drafters(12), 2);  // round(1.5)
  EXPECT_EQ(CalibrationRules{}.drafters(16), 2);
  EXPECT_EQ(CalibrationRules{}.drafters(30), 4);
  EXPECT_EQ(CalibrationRules{.drafters_per_scale = 3}.drafters(30), 3);
  EXPECT_EQ(CalibrationRules{}.demanding(4), 1);
  EXPECT_EQ(CalibrationRules{}.demanding(2), 1);
  EXPECT_EQ(CalibrationRules{}.demanding(30), 8);  // round(7.5)
  EXPECT_EQ(CalibrationRules{.demanding_fraction = 0.01}.demanding(30), 1);

  const int L = 7, S = 5;
  for (int trial = 0; trial < 20; ++trial) {
    CalibrationTables t;
    t.layers = L;
    t.scales = S;
    // Values from a few levels so that ties are frequent.
    std::uniform_int_distribution<int> level(0, 3);
    for (int i = 0; i < L * S; ++i) t.selectivity.push_back(0.4 + 0.1 * level(rng));
    for (int l = 0; l < L; ++l) t.similarity_mean.push_back(0.2 * level(rng) - 0.1);
    const CalibrationRules rules{.drafters_per_scale = 1 + static_cast<int>(rng() % L),
                                 .demanding_fraction = 0.1 + 0.9 * std::uniform_real_distribution<double>()(rng)};
    const auto cls = classify(t, rules);
    const int K = rules.drafters(L), D = rules.demanding(L);
    EXPECT_EQ(cls.drafters_per_scale, K);
    EXPECT_EQ(cls.demanding_layers, D);
    // Rank of a layer: layers strictly lower, or equal and of lower index. Selected iff rank < count.
    const auto rank = [&](const std::function<double(int)>& value, int l) {
      int r = 0;
      for (int o = 0; o < L; ++o) r += value(o) < value(l) || (value(o) == value(l) && o < l);
      return r;
    };
    for (int l = 0; l < L; ++l) {
      EXPECT_EQ(cls.drafter[std::size_t(l) * S], 1) << "scale 0: every layer is a drafter";
      for (int s = 1; s < S; ++s)
        EXPECT_EQ(cls.drafter[std::size_t(l) * S + s] != 0,
                  rank([&](int o) { return t.at(t.selectivity, o, s); }, l) < K)
            << "layer " << l << " scale " << s;
      EXPECT_EQ(cls.demanding[l] != 0, rank([&](int o) { return t.similarity_mean[o]; }, l) < D) << "layer " << l;
    }
  }
  // Bad rules name themselves.
  CalibrationTables t;
  t.layers = 4;
  t.scales = 3;
  t.selectivity.assign(12, 0.5);
  t.similarity_mean.assign(4, 0.5);
  const auto expect_rule_error = [&](CalibrationRules r, const std::string& needle) {
    try {
      (void)classify(t, r);
      ADD_FAILURE() << "expected an error naming " << needle;
    } catch (const varkv::Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_rule_error({.drafters_per_scale = 5}, "--drafters 5");
  expect_rule_error({.drafters_per_scale = -1}, "--drafters -1");
  expect_rule_error({.demanding_fraction = 0}, "--demanding 0");
  expect_rule_error({.demanding_fraction = 1.5}, "--demanding 1.5");
  expect_rule_error({.similarity_from = 0}, "--similarity-from 0");
  expect_rule_error({.similarity_from = 3}, "--similarity-from 3");
  expect_rule_error({.history_top_fraction = 0}, "history_top_fraction");
}

// ---- a tiny random VAR, end to end ----

struct TinyModel {
  VarModel var;
  VqVae vae;
};

TinyModel tiny_model(std::uint64_t seed) {
  const VarConfig c = tiny_config();
  return {VarModel::random(c, seed), VqVae::random(tiny_vae_config(c), seed + 1)};
}

TEST(Calibration, TinyModelStatisticsAreInRangeAndAverageOverRuns) {
  const auto seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  const TinyModel m = tiny_model(seed);
  std::mt19937_64 rng(seed);
  CalibrationRequest req{.classes = {1, 5, 9}, .seeds = {rng(), rng()}, .cfg = 2.0, .top_k = 8, .top_p = 0.9, .rules = {}};
  int progress_calls = 0;
  const auto both = calibrate(m.var, m.vae, req, [&](const CalibrationProgress& p) {
    EXPECT_EQ(p.runs, 2);
    EXPECT_EQ(p.seed, req.seeds[p.run]);
    ++progress_calls;
  });
  const int L = 3, S = 4;
  EXPECT_EQ(progress_calls, 2 * S);
  ASSERT_EQ(both.layers(), L);
  ASSERT_EQ(both.scales(), S);
  EXPECT_EQ(both.runs, 2);
  EXPECT_EQ(both.sequences_per_run, 6);
  EXPECT_EQ(both.model.depth, 3);
  const auto& t = both.tables;
  const auto sides = tiny_config().patch_nums;
  for (int l = 0; l < L; ++l) {
    EXPECT_EQ(t.at(t.selectivity, l, 0), 1.0);
    EXPECT_EQ(t.at(t.history_mass, l, 0), 0.0);
    EXPECT_EQ(t.at(t.concentration, l, 0), 1.0);
    EXPECT_NEAR(t.at(t.selectivity, l, 1), 1.0, 1e-12);  // one history key
    EXPECT_TRUE(std::isnan(t.at(t.similarity, l, 0)));
    for (int s = 1; s < S; ++s) {
      SCOPED_TRACE("layer " + std::to_string(l) + " scale " + std::to_string(s));
      const double asi = t.at(t.selectivity, l, s), h = t.at(t.history_mass, l, s), c = t.at(t.concentration, l, s);
      EXPECT_GE(asi, 0.0);
      EXPECT_LE(asi, 1.0);
      EXPECT_GT(h, 0.0);  // softmax gives every history key some mass
      EXPECT_LT(h, 1.0);
      const int hist_keys = static_cast<int>(varkv::ScaleSchedule::squares("t", sides).begin(s));
      EXPECT_GE(c, std::ceil(hist_keys / 10.0) / hist_keys - 1e-12);
      EXPECT_LE(c, 1.0);
      EXPECT_GE(asi, 1 - h - 1e-12);  // the current map is always kept
      const double sim = t.at(t.similarity, l, s);
      EXPECT_GE(sim, -1.0);
      EXPECT_LE(sim, 1.0);
      EXPECT_NEAR(sim, 0.5 * (t.at(t.similarity_k, l, s) + t.at(t.similarity_v, l, s)), 1e-12);
    }
    EXPECT_NEAR(t.similarity_mean[l], 0.5 * (t.at(t.similarity, l, 2) + t.at(t.similarity, l, 3)), 1e-12);
  }
  // The classification is the rules applied to the tables: 1 drafter per scale, 1 demanding layer.
  const auto cls = classify(t, req.rules);
  EXPECT_EQ(both.classes.drafter, cls.drafter);
  EXPECT_EQ(both.classes.demanding, cls.demanding);
  for (int s = 1; s < S; ++s) {
    int n = 0;
    for (int l = 0; l < L; ++l) n += both.drafter(l, s);
    EXPECT_EQ(n, 1) << s;
  }

  // Runs are independent (a fresh cache each) and averaged with equal weight: the two-seed tables
  // are the mean of the one-seed tables, and a repeated calibration is identical.
  auto one = req;
  one.seeds = {req.seeds[0]};
  const auto a = calibrate(m.var, m.vae, one);
  one.seeds = {req.seeds[1]};
  const auto b = calibrate(m.var, m.vae, one);
  const auto again = calibrate(m.var, m.vae, one);
  for (auto table : {&CalibrationTables::selectivity, &CalibrationTables::history_mass, &CalibrationTables::concentration,
                     &CalibrationTables::similarity_k, &CalibrationTables::similarity_v}) {
    for (std::size_t i = 0; i < (t.*table).size(); ++i) {
      if (i % S == 0 && std::isnan((t.*table)[i])) continue;
      EXPECT_NEAR((t.*table)[i], 0.5 * ((a.tables.*table)[i] + (b.tables.*table)[i]), 1e-12) << i;
      EXPECT_EQ((b.tables.*table)[i], (again.tables.*table)[i]) << i;
    }
  }
}

TEST(Calibration, ProfileJsonLoadsThroughTheClassificationPolicies) {
  const auto seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  const TinyModel m = tiny_model(seed);
  CalibrationRequest req{.classes = {2, 3}, .seeds = {seed}, .cfg = 1.5, .top_k = 1, .top_p = 0.0, .rules = {}};
  req.rules.drafters_per_scale = 2;
  req.rules.demanding_fraction = 0.5;
  auto p = calibrate(m.var, m.vae, req);
  p.model.init_seed = seed;
  const fs::path dir = fresh_dir("json");
  const std::string path = (dir / "profile.json").string();
  write_profile_json(path, p);

  const int L = p.layers(), S = p.scales();
  const auto scalekv = varkv::classification::load_profile(path, varkv::classification::ProfileSource::scalekv);
  const auto amskv = varkv::classification::load_profile(path, varkv::classification::ProfileSource::amskv);
  ASSERT_EQ(scalekv.layers, L);
  ASSERT_EQ(scalekv.scales, S);
  ASSERT_EQ(amskv.layers, L);
  for (int l = 0; l < L; ++l)
    for (int s = 0; s < S; ++s) {
      EXPECT_EQ(scalekv.classify(s, l) == varkv::LayerClass::drafter, p.drafter(l, s)) << l << "," << s;
      EXPECT_EQ(amskv.classify(s, l) == varkv::LayerClass::drafter, p.demanding(l)) << l << "," << s;
    }
  EXPECT_EQ(scalekv.drafter, p.classes.drafter);
  for (int s = 1; s < S; ++s) EXPECT_EQ(scalekv.drafters(s), 2);
  EXPECT_EQ(scalekv.drafters(0), L);
  EXPECT_EQ(amskv.drafters(0), 2);  // round(0.5 x 3) = 2

  std::ifstream f(path);
  const auto j = nlohmann::json::parse(f);
  EXPECT_EQ(j.at("format"), "varkv-profile/1");
  EXPECT_EQ(j.at("schedule"), "var");
  EXPECT_EQ(j.at("model").at("weights"), "random-init");
  EXPECT_EQ(j.at("model").at("init_seed").get<std::uint64_t>(), seed);
  EXPECT_EQ(j.at("model").at("patch_nums"), nlohmann::json(tiny_config().patch_nums));
  EXPECT_EQ(j.at("calibration").at("seeds")[0].get<std::uint64_t>(), seed);
  EXPECT_EQ(j.at("calibration").at("runs"), 1);
  EXPECT_EQ(j.at("calibration").at("top_k"), 1);
  EXPECT_EQ(j.at("rules").at("drafters_per_scale"), 2);
  EXPECT_EQ(j.at("rules").at("demanding_fraction"), 0.5);
  EXPECT_EQ(j.at("rules").at("similarity_from"), 2);
  EXPECT_EQ(j.at("rules").at("history_top_fraction"), 0.1);
  for (const char* key : {"selectivity", "history_mass", "concentration", "similarity", "similarity_k", "similarity_v"}) {
    ASSERT_EQ(j.at(key).size(), std::size_t(L)) << key;
    for (int l = 0; l < L; ++l) ASSERT_EQ(j.at(key)[l].size(), std::size_t(S)) << key;
  }
  for (int l = 0; l < L; ++l) {
    EXPECT_TRUE(j.at("similarity")[l][0].is_null());
    for (int s = 0; s < S; ++s)  // doubles round-trip exactly
      EXPECT_EQ(j.at("selectivity")[l][s].get<double>(), p.tables.at(p.tables.selectivity, l, s));
    EXPECT_EQ(j.at("similarity_mean")[l].get<double>(), p.tables.similarity_mean[l]);
  }
  // The table names every layer and marks drafters and demanding layers.
  const std::string table = format_profile_table(p);
  EXPECT_NE(table.find('*'), std::string::npos) << table;
  // The legend's '* = drafter', then scale 0: all layers; then 2 per scale.
  EXPECT_EQ(std::count(table.begin(), table.end(), '*'), 1 + L + (S - 1) * 2) << table;
  std::size_t marks = 0;
  for (std::size_t at = table.find(" D\n"); at != std::string::npos; at = table.find(" D\n", at + 1)) ++marks;
  EXPECT_EQ(marks, 2u) << table;
  EXPECT_NE(table.find("selectivity"), std::string::npos) << table;
  EXPECT_NE(table.find("similarity"), std::string::npos) << table;
  fs::remove_all(dir);
}

// ---- the picture ----

TEST(Calibration, ImageShowsAsiColoursDraftersAndDemandingBars) {
  const auto seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  const int L = 5, S = 4;
  CalibrationProfile p;
  p.schedule = "var";
  p.model.patch_nums = {1, 2, 3, 4};
  p.tables.layers = L;
  p.tables.scales = S;
  for (int i = 0; i < L * S; ++i) p.tables.selectivity.push_back(0.3 + 0.7 * u(rng));
  for (int l = 0; l < L; ++l) p.tables.similarity_mean.push_back(-0.5 + 1.5 * u(rng));
  p.request.rules.drafters_per_scale = 2;
  p.classes = classify(p.tables, p.request.rules);

  const ProfileImage img = render_profile_image(p);
  ASSERT_EQ(img.rgb.size(), std::size_t(img.width) * img.height * 3);
  double lo = 1e9, hi = -1e9;
  for (double v : p.tables.selectivity) lo = std::min(lo, v), hi = std::max(hi, v);
  for (int l = 0; l < L; ++l)
    for (int s = 0; s < S; ++s) {
      SCOPED_TRACE("cell " + std::to_string(l) + "," + std::to_string(s));
      const auto c = img.cell(l, s);
      ASSERT_LE(c.x + c.w, img.width);
      ASSERT_LE(c.y + c.h, img.height);
      const auto fill = heat_colour((p.tables.at(p.tables.selectivity, l, s) - lo) / (hi - lo));
      EXPECT_EQ(img.pixel(c.x + c.w / 2, c.y + c.h / 2), fill);  // the centre shows ASI's colour
      const auto edge = img.pixel(c.x + 2, c.y + c.h / 2);       // the left edge: outlined iff drafter
      if (p.drafter(l, s))
        EXPECT_EQ(edge, kMarkColour);
      else
        EXPECT_EQ(edge, fill);
    }
  // The colour ramp runs from viridis' dark purple to its yellow.
  EXPECT_EQ(heat_colour(0.0), (std::array<std::uint8_t, 3>{68, 1, 84}));
  EXPECT_EQ(heat_colour(1.0), (std::array<std::uint8_t, 3>{253, 231, 37}));
  ASSERT_EQ(img.bars.size(), std::size_t(L));
  for (int l = 0; l < L; ++l) {
    SCOPED_TRACE("bar " + std::to_string(l));
    const auto& r = img.bars[l];
    const double v = p.tables.similarity_mean[l];
    EXPECT_NEAR(r.w, std::abs(v) * img.bar_unit, 1.0);
    EXPECT_EQ(v >= 0 ? r.x : r.x + r.w, img.bar_zero_x);
    if (r.w >= 3) {
      EXPECT_EQ(img.pixel(r.x + r.w / 2, r.y + r.h / 2), p.demanding(l) ? kMarkColour : kPlainBarColour);
    }
  }
  // The PNG holds exactly these pixels.
  const fs::path dir = fresh_dir("png");
  const std::string path = (dir / "profile.png").string();
  write_profile_png(path, p);
  int w = 0, h = 0, ch = 0;
  unsigned char* data = stbi_load(path.c_str(), &w, &h, &ch, 3);
  ASSERT_NE(data, nullptr) << stbi_failure_reason();
  EXPECT_EQ(w, img.width);
  EXPECT_EQ(h, img.height);
  EXPECT_TRUE(std::equal(img.rgb.begin(), img.rgb.end(), data));
  stbi_image_free(data);
  fs::remove_all(dir);
}

}  // namespace

// ---- the command-line tool ----

#if defined(VARKV_CALIBRATE_EXE)

namespace {

struct ToolRun {
  int code = -1;
  std::string out, err;
};

ToolRun run_calibrate(const std::string& args, const fs::path& dir) {
  const fs::path out = dir / "stdout.txt", err = dir / "stderr.txt";
  const std::string cmd = std::string(VARKV_CALIBRATE_EXE) + " " + args + " > \"" + out.string() + "\" 2> \"" +
                          err.string() + "\"";
  ToolRun r;
  const int status = std::system(cmd.c_str());
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream fo(out), fe(err);
  r.out.assign(std::istreambuf_iterator<char>(fo), {});
  r.err.assign(std::istreambuf_iterator<char>(fe), {});
  return r;
}

void expect_one_line_error(const ToolRun& r, const std::string& needle) {
  EXPECT_NE(r.code, 0);
  EXPECT_EQ(r.err.rfind("varkv-calibrate: error: ", 0), 0u) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_NE(r.err.find(needle), std::string::npos) << "expected '" << needle << "' in: " << r.err;
}

// Checks a tool-written profile: loads for both policies, rule counts hold, PNG decodes.
void check_outputs(const fs::path& out, int layers, int scales, int drafters, int demanding) {
  const std::string json_path = (out / "profile.json").string();
  const auto scalekv = varkv::classification::load_profile(json_path, varkv::classification::ProfileSource::scalekv);
  const auto amskv = varkv::classification::load_profile(json_path, varkv::classification::ProfileSource::amskv);
  ASSERT_EQ(scalekv.layers, layers);
  ASSERT_EQ(scalekv.scales, scales);
  EXPECT_EQ(scalekv.drafters(0), layers);
  for (int s = 1; s < scales; ++s) EXPECT_EQ(scalekv.drafters(s), drafters) << s;
  for (int s = 0; s < scales; ++s) EXPECT_EQ(amskv.drafters(s), demanding) << s;
  int w = 0, h = 0, ch = 0;
  unsigned char* data = stbi_load((out / "profile.png").string().c_str(), &w, &h, &ch, 3);
  ASSERT_NE(data, nullptr) << "profile.png: " << stbi_failure_reason();
  EXPECT_GT(w, 200);
  EXPECT_GT(h, 100);
  // Drafters are outlined and the demanding layer's bar drawn in the mark colour.
  std::size_t marked = 0;
  for (int i = 0; i < w * h; ++i)
    marked += data[i * 3] == kMarkColour[0] && data[i * 3 + 1] == kMarkColour[1] && data[i * 3 + 2] == kMarkColour[2];
  EXPECT_GT(marked, 100u);
  stbi_image_free(data);
}

// The default random model (VAR-d4, 10 scales, classes 207 and 360, seed 0), with a smaller VQ-VAE
// (its decoder does not run; only its initialisation would take time).
TEST(CalibrateCli, DefaultRandomModelWritesProfileTableAndPng) {
  const fs::path dir = fresh_dir("cli");
  const ToolRun r = run_calibrate("--vae-ch 32 --out \"" + (dir / "out").string() + "\"", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("scale 10/10"), std::string::npos) << "progress per scale on stderr expected: " << r.err;
  check_outputs(dir / "out", 4, 10, 1, 1);
  std::ifstream f(dir / "out" / "profile.json");
  const auto j = nlohmann::json::parse(f);
  EXPECT_EQ(j.at("calibration").at("classes"), nlohmann::json({207, 360}));
  EXPECT_EQ(j.at("calibration").at("cfg"), 4.0);
  EXPECT_EQ(j.at("model").at("depth"), 4);
  EXPECT_EQ(j.at("model").at("weights"), "random-init");
  // stdout: both tables, one row per layer, drafters marked '*', the demanding layer 'D'.
  EXPECT_NE(r.out.find("selectivity"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("16x16"), std::string::npos) << r.out;
  int star_rows = 0, d_rows = 0;
  std::size_t pos = 0;
  while ((pos = r.out.find('\n', pos)) != std::string::npos) {
    const auto next = r.out.find('\n', pos + 1);
    const std::string line = r.out.substr(pos + 1, next == std::string::npos ? std::string::npos : next - pos - 1);
    star_rows += line.find("1.000*") != std::string::npos;  // scale 0 of each layer
    d_rows += line.size() > 2 && line.substr(line.size() - 2) == " D";
    pos += 1;
  }
  EXPECT_EQ(star_rows, 4) << r.out;
  EXPECT_EQ(d_rows, 1) << r.out;
  fs::remove_all(dir);
}

TEST(CalibrateCli, HelpListsTheOptions) {
  const fs::path dir = fresh_dir("help");
  const ToolRun r = run_calibrate("--help", dir);
  EXPECT_EQ(r.code, 0);
  for (const char* opt : {"--classes", "--seeds", "--drafters", "--demanding", "--similarity-from", "--out", "--var"})
    EXPECT_NE(r.out.find(opt), std::string::npos) << opt;
  fs::remove_all(dir);
}

TEST(CalibrateCli, BadArgumentsAreOneLineErrors) {
  const fs::path dir = fresh_dir("bad");
  const std::string out = " --out \"" + (dir / "out").string() + "\"";
  expect_one_line_error(run_calibrate("--drafters 5" + out, dir), "--drafters 5");
  expect_one_line_error(run_calibrate("--drafters 0" + out, dir), "--drafters 0");
  expect_one_line_error(run_calibrate("--demanding 0" + out, dir), "--demanding 0");
  expect_one_line_error(run_calibrate("--demanding 1.5" + out, dir), "--demanding 1.5");
  expect_one_line_error(run_calibrate("--similarity-from 0" + out, dir), "--similarity-from 0");
  expect_one_line_error(run_calibrate("--similarity-from 10" + out, dir), "--similarity-from 10");
  expect_one_line_error(run_calibrate("--seeds 1,x" + out, dir), "--seeds");
  expect_one_line_error(run_calibrate("--seeds -1" + out, dir), "--seeds");
  expect_one_line_error(run_calibrate("--classes 1000" + out, dir), "class 1000");
  expect_one_line_error(run_calibrate("--classes 3,,4" + out, dir), "--classes");
  expect_one_line_error(run_calibrate("--cfg abc" + out, dir), "--cfg");
  expect_one_line_error(run_calibrate("--top-p 2" + out, dir), "--top-p");
  expect_one_line_error(run_calibrate("--patch-nums 1,3,2" + out, dir), "patch_nums");
  expect_one_line_error(run_calibrate("--no-such-option" + out, dir), "--no-such-option");
  const std::string missing = (dir / "missing.safetensors").string();
  expect_one_line_error(run_calibrate("--var \"" + missing + "\" --vae \"" + missing + "\"" + out, dir),
                        "missing.safetensors");
  expect_one_line_error(run_calibrate("--var \"" + missing + "\"" + out, dir), "--var and --vae");
  std::ofstream(dir / "file") << "not a directory";
  expect_one_line_error(run_calibrate("--patch-nums 1,2,3 --out \"" + (dir / "file").string() + "\"", dir), "--out");
  EXPECT_FALSE(fs::exists(dir / "out" / "profile.json"));
  fs::remove_all(dir);
}

bool on_ci() {
  const char* ci = std::getenv("CI");
  return ci && std::string(ci) == "true";
}

// The official VAR-d4 weights of the golden data (greedy, its labels, seed and cfg).
TEST(CalibrateCli, GoldenWeights) {
  const fs::path golden = fs::path(VARKV_GOLDEN_DIR) / "var_d4_256";
  if (!fs::exists(golden / "meta.json") || !fs::exists(golden / "var.safetensors") ||
      !fs::exists(golden / "vae.safetensors")) {
    const std::string msg = "no golden weights under " + golden.string() + " (meta.json, var.safetensors, vae.safetensors)";
    if (on_ci()) FAIL() << msg;
    GTEST_SKIP() << msg;
  }
  std::ifstream mf(golden / "meta.json");
  const auto meta = nlohmann::json::parse(mf);
  std::string classes, patch;
  for (const auto& c : meta.at("labels")) classes += (classes.empty() ? "" : ",") + std::to_string(c.get<int>());
  for (const auto& s : meta.at("patch_nums")) patch += (patch.empty() ? "" : ",") + std::to_string(s.get<int>());
  const int depth = meta.at("depth").get<int>();
  const fs::path dir = fresh_dir("golden");
  const std::string args = "--var \"" + (golden / "var.safetensors").string() + "\" --vae \"" +
                           (golden / "vae.safetensors").string() + "\" --depth " + std::to_string(depth) + " --vae-ch " +
                           std::to_string(meta.at("vae_ch").get<int>()) + " --patch-nums " + patch + " --classes " +
                           classes + " --seeds " + std::to_string(meta.at("seed").get<int>()) + " --cfg " +
                           std::to_string(meta.at("cfg").get<double>()) + " --top-k 1 --top-p 0 --out \"" +
                           (dir / "out").string() + "\"";
  const ToolRun r = run_calibrate(args, dir);
  ASSERT_EQ(r.code, 0) << r.err;
  const int scales = static_cast<int>(meta.at("patch_nums").size());
  check_outputs(dir / "out", depth, scales, std::max(1, static_cast<int>(std::lround(depth / 8.0))), 1);
  std::ifstream f(dir / "out" / "profile.json");
  const auto j = nlohmann::json::parse(f);
  EXPECT_EQ(j.at("model").at("weights").at("var"), (golden / "var.safetensors").string());
  for (int l = 0; l < depth; ++l)
    for (int s = 1; s < scales; ++s) {
      const double asi = j.at("selectivity")[l][s].get<double>(), sim = j.at("similarity")[l][s].get<double>();
      EXPECT_TRUE(asi >= 0 && asi <= 1) << l << "," << s << ": " << asi;
      EXPECT_TRUE(sim >= -1 && sim <= 1) << l << "," << s << ": " << sim;
    }
  std::cout << r.out;
  fs::remove_all(dir);
}

}  // namespace

#endif  // VARKV_CALIBRATE_EXE

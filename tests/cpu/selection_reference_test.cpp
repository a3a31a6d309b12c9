// CPU reference of top-k selection + compaction: hand-built cases with planted scores.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include <varkv/selection/selection_reference.hpp>

using namespace varkv;

namespace {
// One row: cache slots with the given positions, n_new new keys; scores over cap + n_new entries.
std::vector<std::int32_t> pick(const std::vector<float>& scores, const std::vector<std::int32_t>& positions,
                               std::int32_t len, std::int32_t cap, std::int32_t n_new, std::int32_t first,
                               const RetentionRanges& keep, std::int32_t budget) {
  return select_survivors_reference(scores, positions, len, cap, n_new, first, keep, budget);
}
}  // namespace

TEST(SelectionReference, PlantedTopScoresSurviveInPositionOrder) {
  // cap 6 with 5 used slots (positions 0,1,2,4,7), 3 new keys at positions 10..12.
  const std::vector<std::int32_t> pos = {0, 1, 2, 4, 7, -1};
  std::vector<float> sc(6 + 3, -1.0f);
  sc[3] = 5.0f;   // slot 3
  sc[0] = 4.0f;   // slot 0
  sc[6 + 2] = 9;  // new key 2
  EXPECT_EQ(pick(sc, pos, 5, 6, 3, 10, {}, 3), (std::vector<std::int32_t>{0, 3, 7}));
}

TEST(SelectionReference, BudgetZeroOneTenPercentAndFull) {
  const std::int32_t len = 40, cap = 48, n_new = 10;
  std::vector<std::int32_t> pos(cap, -1);
  for (int j = 0; j < len; ++j) pos[j] = 2 * j;
  std::vector<float> sc(cap + n_new, 0.0f);
  for (int c = 0; c < len + n_new; ++c) sc[c < len ? c : cap + (c - len)] = static_cast<float>((c * 37) % 50);
  EXPECT_TRUE(pick(sc, pos, len, cap, n_new, 100, {}, 0).empty());
  // Budget 1: the single best, score 49 at c = 37 ((37*37) % 50 = 19 ... search it instead of trusting arithmetic).
  int best = 0;
  for (int c = 1; c < len + n_new; ++c)
    if (sc[c < len ? c : cap + (c - len)] > sc[best < len ? best : cap + (best - len)]) best = c;
  EXPECT_EQ(pick(sc, pos, len, cap, n_new, 100, {}, 1), (std::vector<std::int32_t>{best}));
  // 10%: 5 of 50, scores 49..45 (c*37 mod 50 is a permutation of 0..49).
  const auto ten = pick(sc, pos, len, cap, n_new, 100, {}, 5);
  ASSERT_EQ(ten.size(), 5u);
  for (std::size_t i = 0; i < ten.size(); ++i) {
    EXPECT_GE(sc[ten[i] < len ? ten[i] : cap + (ten[i] - len)], 45.0f);
    if (i) {
      EXPECT_LT(ten[i - 1], ten[i]);
    }
  }
  // 100% (and more): everything, in order.
  for (int b : {50, 60}) {
    const auto all = pick(sc, pos, len, cap, n_new, 100, {}, b);
    ASSERT_EQ(all.size(), 50u);
    for (int c = 0; c < 50; ++c) EXPECT_EQ(all[c], c);
  }
}

TEST(SelectionReference, TiesGoToTheLowerPositionAndNaNRanksLast) {
  const std::vector<std::int32_t> pos = {3, 5, 8, 9};
  std::vector<float> sc = {1.0f, 2.0f, 2.0f, 2.0f, std::numeric_limits<float>::quiet_NaN(), 2.0f};
  // cap 4, len 4, 2 new keys (positions 20, 21): candidates 1,2,3,5 tie at 2.0; budget 2 takes 1 and 2.
  EXPECT_EQ(pick(sc, pos, 4, 4, 2, 20, {}, 2), (std::vector<std::int32_t>{1, 2}));
  // NaN (candidate 4) is below even -inf-free score 1.0 (candidate 0): budget 5 drops the NaN.
  EXPECT_EQ(pick(sc, pos, 4, 4, 2, 20, {}, 5), (std::vector<std::int32_t>{0, 1, 2, 3, 5}));
}

TEST(SelectionReference, RetainedRangesAlwaysSurvive) {
  const std::vector<std::int32_t> pos = {0, 1, 2, 3, 4, 5, 6, 7};
  std::vector<float> sc(8 + 4, 0.0f);
  for (int i = 0; i < 12; ++i) sc[i] = static_cast<float>(i);  // later = better
  const auto keep = RetentionRanges::of({{0, 2}, {9, 10}});      // positions 0,1 and new key at 9 (c = 9)
  // Budget 5: retained {0, 1, 9} + best two others: new keys c = 11, 10.
  EXPECT_EQ(pick(sc, pos, 8, 8, 4, 8, keep, 5), (std::vector<std::int32_t>{0, 1, 9, 10, 11}));
  // Budget exactly the retained count: only they survive.
  EXPECT_EQ(pick(sc, pos, 8, 8, 4, 8, keep, 3), (std::vector<std::int32_t>{0, 1, 9}));
}

TEST(SelectionReference, RetentionExceedingTheBudgetIsAClearError) {
  const std::vector<std::int32_t> pos = {0, 1, 2, 3};
  std::vector<float> sc(4 + 2, 1.0f);
  const auto keep = RetentionRanges::of({{0, 3}});
  try {
    pick(sc, pos, 4, 4, 2, 4, keep, 2);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("3 retained tokens exceed the budget of 2"), std::string::npos) << e.what();
  }
  EXPECT_THROW(pick(sc, pos, 4, 4, 2, 4, {}, -1), Error);
  EXPECT_THROW(pick(sc, pos, 5, 4, 2, 4, {}, 1), Error);           // length past capacity
  EXPECT_THROW(RetentionRanges::of({{5, 3}}), Error);               // begin > end
}

TEST(SelectionReference, CompactionRewritesTheStoreToExactlyTheSurvivors) {
  // 1 sequence x 2 heads, d = 2, capacity 8; 3 cached tokens (positions 0..2), 2 new (positions 3, 4).
  LayerKvStore<float> store(1, 2, 2, 8);
  std::vector<float> k0(1 * 2 * 3 * 2), v0(k0.size());
  for (std::size_t i = 0; i < k0.size(); ++i) { k0[i] = float(i); v0[i] = float(100 + i); }
  store.append(make_view<4, const float>("k", k0.data(), {1, 2, 3, 2}), make_view<4, const float>("v", v0.data(), {1, 2, 3, 2}), 0);
  std::vector<float> k1(1 * 2 * 2 * 2), v1(k1.size());
  for (std::size_t i = 0; i < k1.size(); ++i) { k1[i] = float(50 + i); v1[i] = float(150 + i); }
  // Scores [1, 2, 10]: head 0 prefers slot 1 and new key 1; head 1 slot 0 and new key 0.
  std::vector<float> sc(1 * 2 * 10, 0.0f);
  sc[1] = 5; sc[8 + 1] = 6;            // head 0: slot 1, new key 1
  sc[10 + 0] = 5; sc[10 + 8 + 0] = 6;  // head 1: slot 0, new key 0
  const std::vector<std::int32_t> budgets = {2, 2};
  compact_reference<float>(store, make_view<3, const float>("s", sc.data(), {1, 2, 10}),
                           make_view<4, const float>("k", k1.data(), {1, 2, 2, 2}),
                           make_view<4, const float>("v", v1.data(), {1, 2, 2, 2}), 3, {}, budgets);
  EXPECT_EQ(store.length(0, 0), 2);
  EXPECT_EQ(store.length(0, 1), 2);
  EXPECT_EQ(store.position(0, 0, 0), 1);
  EXPECT_EQ(store.position(0, 0, 1), 4);
  EXPECT_EQ(store.position(0, 1, 0), 0);
  EXPECT_EQ(store.position(0, 1, 1), 3);
  EXPECT_EQ(store.keys()(0, 0, 0, 0), k0[2]);        // head 0 slot 1 = old k0 row 1
  EXPECT_EQ(store.keys()(0, 0, 1, 1), k1[2 + 1]);    // head 0 new key 1
  EXPECT_EQ(store.values()(0, 1, 0, 0), v0[6]);      // head 1 slot 0 = old row (h1, 0)
  EXPECT_EQ(store.values()(0, 1, 1, 1), v1[4 + 1]);  // head 1 new key 0
  EXPECT_EQ(store.positions()(0, 0, 2), -1);
  // A retention exceeding one row's budget names the row and leaves the store unchanged.
  const auto keep = RetentionRanges::of({{0, 5}});
  const std::vector<std::int32_t> small = {1, 1};
  try {
    compact_reference<float>(store, make_view<3, const float>("s", sc.data(), {1, 2, 10}),
                             make_view<4, const float>("k", k1.data(), {1, 2, 2, 2}),
                             make_view<4, const float>("v", v1.data(), {1, 2, 2, 2}), 5, keep, small);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("sequence 0, head 0"), std::string::npos) << e.what();
  }
  EXPECT_EQ(store.length(0, 0), 2);
}

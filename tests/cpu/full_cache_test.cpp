#include <gtest/gtest.h>

#include <vector>

#include <varkv/cache/full_cache.hpp>

#include "../support/random.hpp"

using namespace varkv;

namespace {
std::vector<float> tokens(int seqs, int heads, std::int64_t n, int d, float base) {
  // Element value encodes (seq, head, token, channel) so misplaced copies are detected.
  std::vector<float> v(seqs * heads * n * d);
  for (int s = 0; s < seqs; ++s)
    for (int h = 0; h < heads; ++h)
      for (std::int64_t i = 0; i < n; ++i)
        for (int c = 0; c < d; ++c)
          v[((s * heads + h) * n + i) * d + c] = base + s * 1e4f + h * 1e3f + static_cast<float>(i) + c * 1e-2f;
  return v;
}
}  // namespace

TEST(LayerKvStore, AppendKeepsPositionsAndRetainCompactsInPlace) {
  LayerKvStore<float> st(2, 3, 4, 10);
  auto k0 = tokens(2, 3, 4, 4, 0.0f), v0 = tokens(2, 3, 4, 4, 0.5f);
  st.append(make_view<4, const float>("k", k0.data(), {2, 3, 4, 4}), make_view<4, const float>("v", v0.data(), {2, 3, 4, 4}), 1);
  EXPECT_EQ(st.length(1, 2), 4);
  EXPECT_EQ(st.position(1, 2, 3), 4);
  const std::int32_t keep[] = {1, 3};
  st.retain(1, 2, keep);
  EXPECT_EQ(st.length(1, 2), 2);
  EXPECT_EQ(st.length(0, 2), 4);  // other rows untouched
  EXPECT_EQ(st.position(1, 2, 0), 2);
  EXPECT_EQ(st.position(1, 2, 1), 4);
  EXPECT_EQ(st.keys()(1, 2, 1, 3), k0[((1 * 3 + 2) * 4 + 3) * 4 + 3]);
  EXPECT_EQ(st.values()(1, 2, 0, 0), v0[((1 * 3 + 2) * 4 + 1) * 4 + 0]);
  EXPECT_EQ(st.positions()(1, 2, 2), -1);
  EXPECT_EQ(st.tokens_held(), 5 * 4 + 2);
  const std::int32_t bad[] = {3, 1};
  EXPECT_THROW(st.retain(0, 0, bad), Error);
  const std::int32_t out_of_row[] = {4};
  EXPECT_THROW(st.retain(0, 0, out_of_row), Error);
  auto big = tokens(2, 3, 7, 4, 0.0f);
  EXPECT_THROW(st.append(make_view<4, const float>("k", big.data(), {2, 3, 7, 4}),
                         make_view<4, const float>("v", big.data(), {2, 3, 7, 4}), 5),
               Error);  // 4 + 7 > 10
}

TEST(FullCache, HoldsEveryScaleAndLedgerIsExact) {
  const ModelGeometry g{"tiny", 2, 2, 8};
  const auto sched = schedules::var_256();
  FullCache<float> cache(g, sched, {1, true}, KvDTypes::uniform(DType::bf16));
  for (int step = 0; step < sched.size(); ++step)
    for (int l = 0; l < g.layers; ++l) {
      const auto n = sched.tokens(step);
      auto k = tokens(2, 2, n, 8, static_cast<float>(step)), v = tokens(2, 2, n, 8, -1.0f);
      cache.commit(step, l, make_view<4, const float>("k", k.data(), {2, 2, n, 8}),
                   make_view<4, const float>("v", v.data(), {2, 2, n, 8}));
      EXPECT_EQ(cache.layer(l).length(1, 1), sched.end(step));
      EXPECT_EQ(cache.layer(l).position(1, 1, sched.begin(step)), sched.begin(step));
      if (n > 2) {
        EXPECT_EQ(cache.layer(l).keys()(0, 1, sched.begin(step) + 2, 0), k[(1 * n + 2) * 8]);
      }
      EXPECT_EQ(cache.layer(l).values()(1, 0, sched.end(step) - 1, 3), v[((2 * n) + n - 1) * 8 + 3]);
    }
  const auto expected = KvLedger::full(g, sched, {1, true}, KvDTypes::uniform(DType::bf16));
  for (int step = 0; step < sched.size(); ++step)
    for (int l = 0; l < g.layers; ++l)
      for (int h = 0; h < g.heads; ++h)
        for (int o = 0; o <= step; ++o) ASSERT_EQ(cache.ledger().tokens(step, l, h, o), expected.tokens(step, l, h, o));
  EXPECT_EQ(cache.ledger().peak_bytes(), 2LL * 680 * 16 * 4 * 2);
}

TEST(FullCache, OutOfOrderCommitIsAnError) {
  const ModelGeometry g{"tiny", 1, 1, 4};
  FullCache<float> cache(g, schedules::var_256(), {1, false}, KvDTypes::uniform(DType::fp32));
  std::vector<float> k(4 * 4);
  try {
    cache.commit(1, 0, make_view<4, const float>("k", k.data(), {1, 1, 4, 4}), make_view<4, const float>("v", k.data(), {1, 1, 4, 4}));
    FAIL();
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "full cache: layer 0 holds 0 tokens but step 1 begins at position 1; commit steps in order");
  }
  EXPECT_THROW(cache.commit(0, 1, make_view<4, const float>("k", k.data(), {1, 1, 1, 4}),
                            make_view<4, const float>("v", k.data(), {1, 1, 1, 4})),
               Error);
  EXPECT_THROW(cache.commit(0, 0, make_view<4, const float>("k", k.data(), {1, 1, 2, 4}),
                            make_view<4, const float>("v", k.data(), {1, 1, 2, 4})),
               Error);
}

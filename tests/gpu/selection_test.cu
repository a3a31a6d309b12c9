// GPU top-k selection + in-place compaction vs the CPU reference (compact_reference): the same
// survivors, byte-exact keys/values for every kept slot, identical positions (-1 past the length)
// and lengths. Scores are drawn from few distinct values so ties are frequent.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <cuda_bf16.h>

#include <varkv/selection/selection_reference.hpp>
#include <varkv/selection/topk_compaction.cuh>

#include "../support/random.hpp"

using namespace varkv;
using bf16 = __nv_bfloat16;

namespace {

struct SelCase {
  int S, H, d;
  int prefix;   // tokens appended before the step (positions 0..prefix-1), then randomly thinned
  int n_new;    // new keys at positions prefix..prefix+n_new-1
  double keep;  // fraction of the prefix each row holds before the step
  bool retain;  // retain the first 5 positions and the last 3 new keys
};

void run_selection(const SelCase& c, std::uint64_t seed) {
  SCOPED_TRACE("S" + std::to_string(c.S) + " H" + std::to_string(c.H) + " d" + std::to_string(c.d) + " prefix " +
               std::to_string(c.prefix) + " n_new " + std::to_string(c.n_new));
  std::mt19937_64 rng(seed);
  const int S = c.S, H = c.H, d = c.d, cap = c.prefix + c.n_new;
  auto rnd_bf16 = [&](std::size_t n) {
    const auto f = varkv::testing::random_normal(n, rng);
    std::vector<bf16> b(n);
    for (std::size_t i = 0; i < n; ++i) b[i] = __float2bfloat16(f[i]);
    return b;
  };
  LayerKvStore<bf16> store(S, H, d, cap);
  {
    const auto k = rnd_bf16(static_cast<std::size_t>(S) * H * c.prefix * d), v = rnd_bf16(k.size());
    store.append(make_view<4, const bf16>("k", k.data(), {S, H, c.prefix, d}),
                 make_view<4, const bf16>("v", v.data(), {S, H, c.prefix, d}), 0);
    std::bernoulli_distribution keep(c.keep);
    for (int s = 0; s < S; ++s)
      for (int h = 0; h < H; ++h) {
        std::vector<std::int32_t> slots;
        for (int j = 0; j < c.prefix; ++j)
          if (keep(rng) || (c.retain && j < 5)) slots.push_back(j);
        store.retain(s, h, slots);
      }
  }
  const auto nk = rnd_bf16(static_cast<std::size_t>(S) * H * c.n_new * d), nv = rnd_bf16(nk.size());
  std::vector<float> scores(static_cast<std::size_t>(S) * H * (cap + c.n_new));
  std::uniform_int_distribution<int> level(0, 15);  // 16 distinct values: many ties
  for (auto& x : scores) x = static_cast<float>(level(rng)) * 0.25f - 1.0f;
  // Budgets: 0, 1, 10%, 100% (and beyond) of each row's candidates, cycling over rows.
  std::vector<std::int32_t> budgets(static_cast<std::size_t>(S) * H);
  const auto retained = c.retain ? RetentionRanges::of({{0, 5}, {c.prefix + c.n_new - 3, c.prefix + c.n_new}})
                                 : RetentionRanges{};
  for (int r = 0; r < S * H; ++r) {
    const int n = store.lengths()[r] + c.n_new;
    const int retained_n = c.retain ? 5 + 3 : 0;
    switch (r % 5) {
      case 0: budgets[r] = retained_n; break;  // 0 without retention
      case 1: budgets[r] = std::max(1, retained_n); break;
      case 2: budgets[r] = std::max(retained_n, n / 10); break;
      case 3: budgets[r] = n; break;
      default: budgets[r] = n + 7; break;
    }
  }

  DeviceLayerCache<bf16> dev(store);
  DeviceBuffer<float> dscores(scores);
  DeviceBuffer<bf16> dnk(nk), dnv(nv);
  DeviceBuffer<std::int32_t> dbudgets(budgets), status(3);
  SelectionArgs<bf16> a;
  a.cache = dev.view();
  a.scores = make_view<3, const float>("scores", dscores.data(), {S, H, cap + c.n_new});
  a.new_k = make_view<4, const bf16>("new_k", dnk.data(), {S, H, c.n_new, d});
  a.new_v = make_view<4, const bf16>("new_v", dnv.data(), {S, H, c.n_new, d});
  a.first_new_position = c.prefix;
  a.retained = retained;
  a.budgets = dbudgets.data();
  a.status = status.data();
  select_and_compact(a);

  compact_reference<bf16>(store, make_view<3, const float>("scores", scores.data(), {S, H, cap + c.n_new}),
                          make_view<4, const bf16>("new_k", nk.data(), {S, H, c.n_new, d}),
                          make_view<4, const bf16>("new_v", nv.data(), {S, H, c.n_new, d}), c.prefix, retained, budgets);

  const auto lens = dev.download_lengths();
  const auto pos = dev.download_positions();
  const auto keys = dev.download_keys(), vals = dev.download_values();
  ASSERT_EQ(lens, std::vector<std::int32_t>(store.lengths().begin(), store.lengths().end()));
  const auto hp = store.positions();
  for (int s = 0; s < S; ++s)
    for (int h = 0; h < H; ++h)
      for (int j = 0; j < cap; ++j)
        ASSERT_EQ(pos[(static_cast<std::size_t>(s) * H + h) * cap + j], hp(s, h, j)) << "s " << s << " h " << h << " slot " << j;
  const auto hk = store.keys(), hv = store.values();
  for (int r = 0; r < S * H; ++r) {
    const std::size_t off = static_cast<std::size_t>(r) * cap * d, n = static_cast<std::size_t>(lens[r]) * d;
    ASSERT_EQ(std::memcmp(keys.data() + off, hk.data() + off, n * sizeof(bf16)), 0) << "keys of row " << r;
    ASSERT_EQ(std::memcmp(vals.data() + off, hv.data() + off, n * sizeof(bf16)), 0) << "values of row " << r;
  }
}

}  // namespace

TEST(SelectAndCompact, MatchesTheCpuReferenceByteForByte) {
  const auto seed = varkv::testing::fresh_seed();
  SCOPED_TRACE(varkv::testing::seed_note(seed));
  const SelCase cases[] = {
      {2, 3, 64, 10, 6, 1.0, false},       {4, 5, 64, 55, 36, 0.3, true},    {2, 4, 128, 424, 256, 0.5, false},
      {3, 2, 64, 1, 4, 1.0, false},        {2, 3, 128, 300, 169, 0.1, true}, {2, 2, 128, 6425, 4096, 0.6, true},
      {2, 2, 64, 0, 9, 1.0, false},        {3, 3, 64, 1500, 600, 0.9, true},
  };
  // Rows of 2048+ candidates (6425 + 4096, 1500 + 600) run on 512 threads, the rest on 128.
  for (std::size_t i = 0; i < std::size(cases); ++i) {
    run_selection(cases[i], seed + i);
    if (HasFailure()) return;
  }
}

TEST(SelectAndCompact, RetentionOverBudgetIsAnErrorNamingTheRow) {
  const int S = 1, H = 2, d = 64, cap = 16, n_new = 4;
  LayerKvStore<bf16> store(S, H, d, cap);
  std::vector<bf16> k(S * H * 8 * d, __float2bfloat16(1.0f));
  store.append(make_view<4, const bf16>("k", k.data(), {S, H, 8, d}), make_view<4, const bf16>("v", k.data(), {S, H, 8, d}), 0);
  DeviceLayerCache<bf16> dev(store);
  std::vector<float> scores(S * H * (cap + n_new), 0.0f);
  DeviceBuffer<float> dscores(scores);
  DeviceBuffer<bf16> dk(std::vector<bf16>(S * H * n_new * d, __float2bfloat16(2.0f)));
  DeviceBuffer<std::int32_t> budgets(std::vector<std::int32_t>{12, 3}), status(3);
  SelectionArgs<bf16> a;
  a.cache = dev.view();
  a.scores = make_view<3, const float>("scores", dscores.data(), {S, H, cap + n_new});
  a.new_k = a.new_v = make_view<4, const bf16>("new_k", dk.data(), {S, H, n_new, d});
  a.first_new_position = 8;
  a.retained = RetentionRanges::of({{0, 4}});
  a.budgets = budgets.data();
  a.status = status.data();
  try {
    select_and_compact(a);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("row 1 (sequence 0, head 1) retains 4 tokens"), std::string::npos) << e.what();
  }
  EXPECT_EQ(dev.download_lengths()[1], 8) << "the failing row must be left unchanged";
  // Host-side validation names the argument and launches nothing.
  a.scores = make_view<3, const float>("scores", dscores.data(), {S, H, cap});
  EXPECT_THROW(select_and_compact(a), Error);
}

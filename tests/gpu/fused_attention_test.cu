// Fused attention over a compacted cache vs the exact CPU reference (varkv::reference_attention).
//
// Bounds (bf16 inputs, fp32 accumulation, bf16 output; reference = the same bf16-rounded inputs in
// fp64): relative Frobenius error of O < 1e-2; max |LSE - LSE_ref| < 1e-2 (natural log); key_stat
// relative Frobenius error < 2e-2 over every entry, entries past a row's length exactly 0.
// Top-k rule: with k = 10% of a row's candidates and t the reference's k-th largest statistic,
// margin = 2e-2 * max|stat_ref| of the row: every key whose reference statistic exceeds t + margin
// must be in the kernel's top-k, and none below t - margin may be.
// Every output is poisoned with NaN before the launch; cache slots past a row's length hold NaN, so
// a read past the length shows up as NaN in O.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <cuda_bf16.h>

#include <varkv/attention/fused_attention.cuh>
#include <varkv/attention/reference_attention.hpp>
#include <varkv/core/scale_schedule.hpp>

#include "../support/error_norms.hpp"
#include "../support/random.hpp"

using namespace varkv;

namespace {

enum class StatKind { none, probability_mass, logit_sum };
enum class ObsKind { window16, every, listed40 };  // listed40: 40 queries spread over the map

struct Case {
  std::string schedule;
  int scale = 0;
  int S = 2, H = 2, d = 64;
  double budget = 1.0;  // fraction of the full cache each row keeps (ragged around it)
  StatKind stat = StatKind::none;
  ObsKind obs = ObsKind::window16;
  bool var_style = false;  // L2-normalised q, k with the scale folded into q, softmax scale 1
  int rows = 0;            // forced rows_per_item (0: automatic)
  AttentionKernel kernel = AttentionKernel::automatic;
  int key_tile = 0;        // keys per tile of the warp (16, 32) or warpgroup (64, 128) kernel (0: automatic)
  int cap = 0;             // cache capacity (0: the full cache of the scale)
  int new_keys = 0;        // the scale's own keys (0: n_q, as in VAR)
  bool rising = false;     // keys scaled up along the row: the softmax max rises tile after tile
  std::vector<int> lengths;  // kept lengths of the rows, cycled (empty: ragged around budget)
};

std::string name(const Case& c) {
  static const char* st[] = {"none", "prob", "logit"};
  return c.schedule + " scale " + std::to_string(c.scale) + " S" + std::to_string(c.S) + " H" + std::to_string(c.H) +
         " d" + std::to_string(c.d) + " budget " + std::to_string(c.budget) + " stat " +
         st[static_cast<int>(c.stat)] +
         (c.obs == ObsKind::every ? " all-observers" : c.obs == ObsKind::listed40 ? " 40-observers" : " window-observers") +
         (c.var_style ? " var-style" : "") + (c.rows ? " rows " + std::to_string(c.rows) : "") +
         (c.kernel == AttentionKernel::warpgroup_mma           ? " warpgroup-kernel"
          : c.kernel == AttentionKernel::warpgroup_resident_kv ? " resident-kv-kernel"
          : c.kernel == AttentionKernel::warpgroup_specialized ? " specialized-kernel"
          : c.kernel == AttentionKernel::warpgroup_persistent  ? " persistent-kernel"
          : c.kernel == AttentionKernel::warp_mma              ? " warp-kernel"
                                                               : "") +
         (c.key_tile ? " key-tile " + std::to_string(c.key_tile) : "") +
         (c.cap ? " cap " + std::to_string(c.cap) : "") + (c.new_keys ? " n_new " + std::to_string(c.new_keys) : "") +
         (c.rising ? " rising-logits" : "") + (c.lengths.empty() ? "" : " listed lengths");
}

float bf16_round(float x) { return __bfloat162float(__float2bfloat16(x)); }

std::vector<bf16> to_bf16(const std::vector<float>& v) {
  std::vector<bf16> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = __float2bfloat16(v[i]);
  return out;
}

// ScaleKV's observation window: 16 queries on a 4x4 grid of the h x w map (fewer on small maps).
std::vector<std::int32_t> window_observers(int h, int w) {
  std::vector<std::int32_t> idx;
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) {
      const int r = (2 * i + 1) * h / 8, c = (2 * j + 1) * w / 8;
      idx.push_back(r * w + c);
    }
  std::sort(idx.begin(), idx.end());
  idx.erase(std::unique(idx.begin(), idx.end()), idx.end());
  return idx;
}

using varkv::testing::rel_fro;

struct Errors {
  double o = 0, lse = 0, stat = 0;
};

Errors run_case(const Case& c, std::uint64_t seed) {
  SCOPED_TRACE(name(c));
  std::mt19937_64 rng(seed);
  const auto sched = schedules::by_name(c.schedule);
  const int S = c.S, H = c.H, d = c.d;
  const int nq = static_cast<int>(sched.tokens(c.scale)), n_new = c.new_keys ? c.new_keys : nq;
  const int full = static_cast<int>(sched.begin(c.scale));
  const int cap = c.cap ? c.cap : full;
  // Ragged lengths around budget * full (clamped to 0..cap); every row needs a key: n_new >= 1 always.
  std::vector<std::int32_t> len(static_cast<std::size_t>(S * H));
  const int base = static_cast<int>(std::lround(c.budget * full));
  const int jitter = std::max(1, base / 8);
  std::uniform_int_distribution<int> jd(-jitter, jitter);
  for (auto& l : len) l = c.budget == 0.0 ? 0 : std::clamp(base + jd(rng), 0, cap);
  if (c.budget == 1.0 && !len.empty()) len[0] = cap;
  for (std::size_t r = 0; !c.lengths.empty() && r < len.size(); ++r) {
    len[r] = c.lengths[r % c.lengths.size()];
    if (len[r] < 0 || len[r] > cap) ADD_FAILURE() << "test case: length " << len[r] << " outside 0.." << cap;
  }

  const double scale = c.var_style ? 1.0 : 1.0 / std::sqrt(static_cast<double>(d));
  auto gen = [&](std::size_t n, float sd) { return varkv::testing::random_normal(n, rng, sd); };
  std::vector<float> q = gen(static_cast<std::size_t>(S) * H * nq * d, 1.0f);
  std::vector<float> ck = gen(static_cast<std::size_t>(S) * H * cap * d, 1.0f);
  std::vector<float> cv = gen(static_cast<std::size_t>(S) * H * cap * d, 1.0f);
  std::vector<float> nk = gen(static_cast<std::size_t>(S) * H * n_new * d, 1.0f);
  std::vector<float> nv = gen(static_cast<std::size_t>(S) * H * n_new * d, 1.0f);
  if (c.var_style) {  // L2-normalise rows; fold a logit scale of 8 into q (VAR's scale_mul, clamped)
    auto norm_rows = [&](std::vector<float>& v, float mul) {
      for (std::size_t r = 0; r < v.size() / d; ++r) {
        double s = 0;
        for (int i = 0; i < d; ++i) s += double(v[r * d + i]) * v[r * d + i];
        const float f = mul / static_cast<float>(std::sqrt(s));
        for (int i = 0; i < d; ++i) v[r * d + i] *= f;
      }
    };
    norm_rows(q, 8.0f); norm_rows(ck, 1.0f); norm_rows(nk, 1.0f);
  }
  if (c.rising) {  // key j of a row's order scaled by 0.25 + 4 j / 64: logits grow ~4x per 64-key tile
    for (int r = 0; r < S * H; ++r) {
      auto scale_key = [&](float* k, int j) {
        for (int i = 0; i < d; ++i) k[i] *= 0.25f + 4.0f * static_cast<float>(j) / 64.0f;
      };
      for (int j = 0; j < len[r]; ++j) scale_key(&ck[(static_cast<std::size_t>(r) * cap + j) * d], j);
      for (int j = 0; j < n_new; ++j) scale_key(&nk[(static_cast<std::size_t>(r) * n_new + j) * d], len[r] + j);
    }
  }
  for (auto* v : {&q, &ck, &cv, &nk, &nv})
    for (auto& x : *v) x = bf16_round(x);
  if (c.rising) {
    // The premise: for most (query, later 64-key tile) pairs the tile's max logit exceeds the running
    // max of the tiles before it (checked on the first 8 queries of every row with >= 2 tiles).
    int moved = 0, later_tiles = 0;
    for (int r = 0; r < S * H; ++r) {
      const int nkr = len[r] + n_new;
      for (int i = 0; i < std::min(nq, 8); ++i) {
        const float* qi = &q[(static_cast<std::size_t>(r) * nq + i) * d];
        double run = -INFINITY, tile_max = -INFINITY;
        for (int j = 0; j < nkr; ++j) {
          const float* kj = j < len[r] ? &ck[(static_cast<std::size_t>(r) * cap + j) * d]
                                       : &nk[(static_cast<std::size_t>(r) * n_new + j - len[r]) * d];
          double dot = 0;
          for (int e = 0; e < d; ++e) dot += double(qi[e]) * kj[e];
          tile_max = std::max(tile_max, dot);
          if (j % 64 == 63 || j == nkr - 1) {
            if (j >= 64) {
              ++later_tiles;
              moved += tile_max > run;
            }
            run = std::max(run, tile_max);
            tile_max = -INFINITY;
          }
        }
      }
    }
    EXPECT_GT(later_tiles, 0) << "rising-logit case without a second key tile";
    EXPECT_GE(2 * moved, later_tiles) << "rising logits: only " << moved << " of " << later_tiles
                                      << " later tiles raise the running max";
  }
  // Slots past a row's length: NaN in device memory (a read would poison O); zeros for the reference.
  std::vector<float> ck_dev = ck, cv_dev = cv;
  for (int r = 0; r < S * H; ++r)
    for (int j = len[r]; j < cap; ++j)
      for (int i = 0; i < d; ++i) {
        const std::size_t o = (static_cast<std::size_t>(r) * cap + j) * d + i;
        ck_dev[o] = cv_dev[o] = NAN;
      }

  std::vector<std::int32_t> observers;
  if (c.stat != StatKind::none) {
    if (c.obs == ObsKind::every) {
      for (int i = 0; i < nq; ++i) observers.push_back(i);
    } else if (c.obs == ObsKind::listed40) {
      for (int i = 0; i < 40 && i < nq; ++i) observers.push_back(static_cast<std::int32_t>(std::int64_t{i} * nq / 40));
    } else {
      observers = window_observers(sched.scale(c.scale).h, sched.scale(c.scale).w);
    }
  }

  // Reference.
  std::vector<float> ref_o(static_cast<std::size_t>(S) * H * nq * d), ref_lse(static_cast<std::size_t>(S) * H * nq);
  std::vector<float> ref_stat(static_cast<std::size_t>(S) * H * (cap + n_new));
  {
    ReferenceAttentionArgs a;
    a.q = make_view<4, const float>("q", q.data(), {S, H, nq, d});
    a.cache_k = make_view<4, const float>("ck", ck.data(), {S, H, cap, d});
    a.cache_v = make_view<4, const float>("cv", cv.data(), {S, H, cap, d});
    a.cache_len = len;
    a.new_k = make_view<4, const float>("nk", nk.data(), {S, H, n_new, d});
    a.new_v = make_view<4, const float>("nv", nv.data(), {S, H, n_new, d});
    a.softmax_scale = scale;
    a.out = make_view<4>("o", ref_o.data(), {S, H, nq, d});
    a.lse = make_view<3>("lse", ref_lse.data(), {S, H, nq});
    a.observers = observers;
    a.statistic = c.stat == StatKind::logit_sum ? KeyStatistic::logit_sum : KeyStatistic::probability_mass;
    a.key_stat = make_view<3>("ks", ref_stat.data(), {S, H, cap + n_new});
    reference_attention(a);
  }

  // Device.
  LayerKvStore<bf16> host_store(S, H, d, cap);
  DeviceLayerCache<bf16> cache(S, H, d, cap);
  {
    // Write the cache buffers directly (same layout as LayerKvStore): keys, values, lengths.
    const auto v = cache.view();
    const auto kb = to_bf16(ck_dev), vb = to_bf16(cv_dev);
    if (!kb.empty()) {
      VARKV_CUDA_CHECK(cudaMemcpy(v.keys.data(), kb.data(), kb.size() * sizeof(bf16), cudaMemcpyHostToDevice));
      VARKV_CUDA_CHECK(cudaMemcpy(v.values.data(), vb.data(), vb.size() * sizeof(bf16), cudaMemcpyHostToDevice));
    }
    VARKV_CUDA_CHECK(cudaMemcpy(v.lengths, len.data(), len.size() * sizeof(std::int32_t), cudaMemcpyHostToDevice));
  }
  DeviceBuffer<bf16> dq(to_bf16(q)), dnk(to_bf16(nk)), dnv(to_bf16(nv));
  DeviceBuffer<bf16> dout(ref_o.size());
  DeviceBuffer<float> dlse(ref_lse.size()), dstat(ref_stat.size());
  dout.poison();
  dlse.poison();
  dstat.poison();

  FusedAttentionArgs a;
  a.q = make_view<4, const bf16>("q", dq.data(), {S, H, nq, d});
  a.cache = cache.view();
  a.new_k = make_view<4, const bf16>("new_k", dnk.data(), {S, H, n_new, d});
  a.new_v = make_view<4, const bf16>("new_v", dnv.data(), {S, H, n_new, d});
  a.softmax_scale = static_cast<float>(scale);
  a.out = make_view<4>("out", dout.data(), {S, H, nq, d});
  a.lse = make_view<3>("lse", dlse.data(), {S, H, nq});
  a.host_lengths = len;
  a.rows_per_item = c.rows;
  a.kernel = c.kernel;
  a.key_tile = c.key_tile;
  if (c.stat != StatKind::none) {
    a.observers = c.obs == ObsKind::every ? ObserverSet::every_query() : ObserverSet::listed(observers);
    a.key_stat = make_view<3>("key_stat", dstat.data(), {S, H, cap + n_new});
  }
  switch (c.stat) {
    case StatKind::none: fused_attention<NoStats>(a); break;
    case StatKind::probability_mass: fused_attention<ObserverProbabilityMass>(a); break;
    case StatKind::logit_sum: fused_attention<ObserverLogitSum>(a); break;
  }
  VARKV_CUDA_CHECK(cudaDeviceSynchronize());

  const auto ob = dout.download();
  std::vector<float> got_o(ob.size());
  for (std::size_t i = 0; i < ob.size(); ++i) got_o[i] = __bfloat162float(ob[i]);
  const auto got_lse = dlse.download();
  Errors e;
  e.o = rel_fro(got_o, ref_o);
  for (std::size_t i = 0; i < ref_lse.size(); ++i)
    e.lse = std::max(e.lse, std::isnan(got_lse[i]) ? INFINITY : std::abs(double(got_lse[i]) - ref_lse[i]));
  EXPECT_LT(e.o, 1e-2) << "O relative Frobenius error";
  EXPECT_LT(e.lse, 1e-2) << "max |LSE error|";

  if (c.stat != StatKind::none) {
    const auto got_stat = dstat.download();
    e.stat = rel_fro(got_stat, ref_stat);
    EXPECT_LT(e.stat, 2e-2) << "key_stat relative Frobenius error";
    for (int r = 0; r < S * H; ++r) {
      const std::size_t base_i = static_cast<std::size_t>(r) * (cap + n_new);
      int nonzero_past_length = 0;
      for (int j = len[r]; j < cap; ++j) nonzero_past_length += got_stat[base_i + j] != 0.0f;
      EXPECT_EQ(nonzero_past_length, 0) << "row " << r << ": key_stat past the length must be 0";
      // Top-k agreement where the reference's margin allows.
      std::vector<int> cand;
      for (int j = 0; j < len[r]; ++j) cand.push_back(j);
      for (int j = 0; j < n_new; ++j) cand.push_back(cap + j);
      const int k = std::max<int>(1, static_cast<int>(cand.size()) / 10);
      std::vector<float> rs;
      double mx = 0;
      for (int j : cand) {
        rs.push_back(ref_stat[base_i + j]);
        mx = std::max(mx, std::abs(double(ref_stat[base_i + j])));
      }
      std::vector<float> sorted = rs;
      std::sort(sorted.begin(), sorted.end(), std::greater<>());
      const double t = sorted[k - 1], margin = 2e-2 * mx;
      auto by_got = cand;
      std::stable_sort(by_got.begin(), by_got.end(),
                       [&](int x, int y) { return got_stat[base_i + x] > got_stat[base_i + y]; });
      by_got.resize(k);
      std::sort(by_got.begin(), by_got.end());
      for (std::size_t ci = 0; ci < cand.size(); ++ci) {
        const bool in = std::binary_search(by_got.begin(), by_got.end(), cand[ci]);
        if (rs[ci] > t + margin) EXPECT_TRUE(in) << "row " << r << " key " << cand[ci] << " should be in the top-" << k;
        if (rs[ci] < t - margin) EXPECT_FALSE(in) << "row " << r << " key " << cand[ci] << " should not be in the top-" << k;
      }
    }
  }
  return e;
}

void run_all(const std::vector<Case>& cases) {
  const auto seed = varkv::testing::fresh_seed();
  SCOPED_TRACE(varkv::testing::seed_note(seed));
  Errors worst;
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const Errors e = run_case(cases[i], seed + i);
    worst.o = std::max(worst.o, e.o);
    worst.lse = std::max(worst.lse, e.lse);
    worst.stat = std::max(worst.stat, e.stat);
    if (::testing::Test::HasFailure()) return;
  }
  std::printf("  %zu cases, worst errors: O rel-Frobenius %.3g, LSE abs %.3g, key_stat rel-Frobenius %.3g\n",
              cases.size(), worst.o, worst.lse, worst.stat);
}

// One random scale step in device memory: a [S, H, cap] cache (its lengths set by the caller), the
// queries and the step's own keys/values, all N(0, 1) in bf16 from a fresh seed.
struct RandomStep {
  int S, H, nq, d, cap, n_new;
  DeviceLayerCache<bf16> cache;
  DeviceBuffer<bf16> q, k, v;
  // q_slack: elements past the queries (room for misaligned or strided views of q).
  RandomStep(int S_, int H_, int nq_, int d_, int cap_, int n_new_, int q_slack = 0)
      : S(S_), H(H_), nq(nq_), d(d_), cap(cap_), n_new(n_new_), cache(S, H, d, cap), q(S * H * nq * d + q_slack),
        k(S * H * n_new * d), v(S * H * n_new * d) {
    std::mt19937_64 rng(varkv::testing::fresh_seed());
    auto fill = [&](bf16* dst, std::size_t n) {
      const auto r = to_bf16(varkv::testing::random_normal(n, rng, 1.0f));
      VARKV_CUDA_CHECK(cudaMemcpy(dst, r.data(), n * sizeof(bf16), cudaMemcpyHostToDevice));
    };
    const auto cv = cache.view();
    fill(cv.keys.data(), cv.keys.size());
    fill(cv.values.data(), cv.values.size());
    fill(q.data(), q.size());
    fill(k.data(), k.size());
    fill(v.data(), v.size());
  }
  void set_device_lengths(const std::vector<std::int32_t>& lengths) {
    VARKV_CUDA_CHECK(cudaMemcpy(cache.view().lengths, lengths.data(), lengths.size() * 4, cudaMemcpyHostToDevice));
  }
  // q, cache, new K/V and softmax scale 1/8; the caller adds outputs and choices.
  FusedAttentionArgs args() {
    FusedAttentionArgs a;
    a.q = make_view<4, const bf16>("q", q.data(), {S, H, nq, d});
    a.cache = cache.view();
    a.new_k = make_view<4, const bf16>("k", k.data(), {S, H, n_new, d});
    a.new_v = make_view<4, const bf16>("v", v.data(), {S, H, n_new, d});
    a.softmax_scale = 0.125f;
    return a;
  }
};

constexpr double kBudgets[] = {0.0, 0.05, 0.10, 1.0};
constexpr StatKind kStats[] = {StatKind::none, StatKind::probability_mass, StatKind::logit_sum};

}  // namespace

TEST(FusedAttention, EveryVar256ScaleHeadDim64) {
  std::vector<Case> cases;
  int i = 0;
  for (int s = 0; s < 10; ++s)
    for (double b : kBudgets) {
      Case c{.schedule = "var-256", .scale = s, .S = 4, .H = 3, .d = 64, .budget = b};
      c.stat = kStats[i % 3];
      c.obs = (i % 5 == 0) ? ObsKind::every : ObsKind::window16;
      c.var_style = (i % 2 == 1);
      cases.push_back(c);
      ++i;
    }
  run_all(cases);
}

TEST(FusedAttention, EveryVar256ScaleHeadDim128) {
  std::vector<Case> cases;
  int i = 0;
  for (int s = 0; s < 10; ++s)
    for (double b : kBudgets) {
      Case c{.schedule = "var-256", .scale = s, .S = 2, .H = 2, .d = 128, .budget = b};
      c.stat = kStats[(i + 1) % 3];
      c.obs = (i % 4 == 0) ? ObsKind::every : ObsKind::window16;
      c.var_style = (i % 2 == 0);
      cases.push_back(c);
      ++i;
    }
  run_all(cases);
}

TEST(FusedAttention, Var512Sample) {
  std::vector<Case> cases;
  for (int s : {4, 7, 9})
    for (double b : {0.05, 1.0}) {
      Case c{.schedule = "var-512", .scale = s, .S = 2, .H = 2, .d = 64, .budget = b};
      c.stat = s == 9 ? StatKind::probability_mass : StatKind::logit_sum;
      c.var_style = true;
      cases.push_back(c);
    }
  run_all(cases);
}

TEST(FusedAttention, Infinity1024SampleWithLastScale) {
  std::vector<Case> cases;
  cases.push_back({.schedule = "infinity-1024", .scale = 3, .S = 2, .H = 4, .d = 128, .budget = 0.10,
                   .stat = StatKind::probability_mass});
  cases.push_back({.schedule = "infinity-1024", .scale = 9, .S = 2, .H = 1, .d = 128, .budget = 1.0,
                   .stat = StatKind::logit_sum});
  // The last scale: 4096 queries over 6425 cached + 4096 new keys (10,521 at full budget).
  cases.push_back({.schedule = "infinity-1024", .scale = 12, .S = 2, .H = 1, .d = 128, .budget = 1.0,
                   .stat = StatKind::probability_mass});
  cases.push_back({.schedule = "infinity-1024", .scale = 12, .S = 2, .H = 1, .d = 128, .budget = 0.10,
                   .stat = StatKind::none});
  run_all(cases);
}

// Every work-item configuration (16 rows: 4 rows per CTA; 32: 4 rows per CTA, 2 m-tiles per warp;
// 64: 4 warps x 16; 128: 4 warps x 32) on
// maps smaller and larger than its tile, both head dims, both statistics.
TEST(FusedAttention, EveryWorkItemConfiguration) {
  std::vector<Case> cases;
  int i = 0;
  for (int rows : {16, 32, 64, 128})
    for (int s : {2, 6, 9})
      for (int d : {64, 128}) {
        Case c{.schedule = "var-256", .scale = s, .S = 2, .H = 3, .d = d, .budget = (i % 2) ? 0.1 : 1.0};
        c.stat = kStats[i % 3];
        c.obs = (i % 4 == 1) ? ObsKind::every : ObsKind::window16;
        c.rows = rows;
        cases.push_back(c);
        ++i;
      }
  run_all(cases);
}

// The premise of the wgmma kernel's unpadded layout (<64, 1, 64, 3> without alignment slack: four
// CTAs per SM): on an sm_90 GPU, dynamic shared memory of a kernel without static shared memory
// starts 1024-byte aligned. Fails, not skips, where that stops holding, so that the loss of the fast
// path is seen (the launcher then falls back to the padded four-stage layout).
TEST(FusedAttention, DynamicSharedMemoryIsAligned) {
  if (!fused_attention_has_warpgroup_kernel()) GTEST_SKIP() << "needs an sm_90 GPU and an sm_90a build";
  const long long base = detail::fattn::sm90::measure_dynamic_smem_base(nullptr);
  ASSERT_GE(base, 0);
  EXPECT_EQ(base % 1024, 0) << "dynamic shared memory starts at shared address " << base;
  EXPECT_TRUE(detail::fattn::sm90::dynamic_smem_1024_aligned(nullptr));
}

// The padded four-stage layout of the one-warpgroup wgmma kernel at head dim 64 (what runs before
// the alignment probe, inside a first capture, or on a device whose window is unaligned) against the
// unpadded three-stage one that `automatic` takes where the probe allows: the same tiles in the same
// order through the same code, so O and the LSE agree bit for bit. 8x8 queries over ragged rows of
// up to 364 keys: six key tiles, so both rings wrap.
TEST(FusedAttention, WgmmaPaddedLayoutMatchesUnpadded) {
  if (!fused_attention_has_warpgroup_kernel() || !detail::fattn::sm90::dynamic_smem_1024_aligned(nullptr))
    GTEST_SKIP() << "needs an sm_90 GPU, an sm_90a build and an aligned dynamic shared-memory window";
  const int S = 2, H = 3, nq = 64, d = 64;
  RandomStep step(S, H, nq, d, 300, 64);
  const std::vector<std::int32_t> lengths{0, 9, 64, 65, 191, 300};
  step.set_device_lengths(lengths);
  DeviceBuffer<bf16> o1(S * H * nq * d), o2(S * H * nq * d);
  DeviceBuffer<float> lse1(S * H * nq), lse2(S * H * nq);
  auto a = step.args();
  a.host_lengths = lengths;
  a.kernel = AttentionKernel::warpgroup_mma;
  a.rows_per_item = 64;
  o1.poison();
  lse1.poison();
  a.out = make_view<4>("o1", o1.data(), {S, H, nq, d});
  a.lse = make_view<3>("lse1", lse1.data(), {S, H, nq});
  fused_attention(a);  // the unpadded three-stage layout
  o2.poison();
  lse2.poison();
  a.out = make_view<4>("o2", o2.data(), {S, H, nq, d});
  a.lse = make_view<3>("lse2", lse2.data(), {S, H, nq});
  detail::fattn::sm90::launch<64, 1, 64, 4, NoStats>(detail::fattn::make_params(a, false), ObserverSet{}, nullptr);
  VARKV_CUDA_CHECK(cudaDeviceSynchronize());
  const auto a_o = o1.download(), b_o = o2.download();
  const auto a_l = lse1.download(), b_l = lse2.download();
  EXPECT_EQ(std::memcmp(a_o.data(), b_o.data(), a_o.size() * sizeof(bf16)), 0) << "O differs between the layouts";
  EXPECT_EQ(std::memcmp(a_l.data(), b_l.data(), a_l.size() * sizeof(float)), 0) << "LSE differs between the layouts";
  int finite = 0;
  for (float x : a_l) finite += std::isfinite(x);
  EXPECT_EQ(finite, S * H * nq) << "every row has keys: every LSE is finite";
}

// The warp kernel's 16-row items with both key tiles (16: six CTAs per SM, Q re-read from shared
// memory; 32) on every map they serve and beyond (8x8: four items per row), every budget (ragged
// lengths: tiles straddle the cache/new boundary), every statistic, the every-query one (a second
// sweep over K through both tile buffers) included.
TEST(FusedAttention, WarpKernelKeyTiles) {
  std::vector<Case> cases;
  int i = 0;
  for (int tile : {16, 32})
    for (int s = 0; s < 7; ++s)
      for (double b : kBudgets) {
        Case c{.schedule = "var-256", .scale = s, .S = 3, .H = 2, .d = 64, .budget = b};
        c.stat = kStats[i % 3];
        c.obs = (i % 3 == 1) ? ObsKind::every : ObsKind::window16;
        c.var_style = (i % 2 == 1);
        c.kernel = AttentionKernel::warp_mma;
        c.rows = 16;
        c.key_tile = tile;
        cases.push_back(c);
        ++i;
      }
  run_all(cases);
}

// The warpgroup (wgmma, sm_90a) kernel forced on every shape class: maps smaller than its 128-row
// CTA (3x3, 8x8), padded (10x10: 100 rows), several CTAs per row (16x16 at var-256, 32x32 at
// var-512), budgets 0 / 5% / 10% / 100% (ragged lengths, so tiles straddle the cache/new boundary at
// different keys per row), both key tiles, both head dims, no statistic and both listed-observer
// statistics (their observer CTAs run inside the same launch with 8 warps).
TEST(FusedAttention, WarpgroupKernelEveryConfiguration) {
  if (!fused_attention_has_warpgroup_kernel()) {
    const auto pr = detail::fattn::sm90::probe_wgmma();
    GTEST_SKIP() << "the warpgroup kernel needs an sm_90 GPU and an sm_90a build (device cc " << pr.cc_major << "."
                 << pr.cc_minor << ", probe attributes: " << cudaGetErrorString(pr.attributes_error)
                 << ", probe static smem " << pr.probe_static_smem << " B, binary version " << pr.binary_version
                 << ", kernel registers " << pr.kernel_registers << ")";
  }
  std::vector<Case> cases;
  int i = 0;
  for (int tile : {64, 128})
    for (int d : {64, 128})
      for (int s : {2, 6, 7, 9})
        for (double b : kBudgets) {
          Case c{.schedule = "var-256", .scale = s, .S = 2, .H = 3, .d = d, .budget = b};
          c.stat = kStats[i % 3];
          c.var_style = (i % 2 == 1);
          c.kernel = AttentionKernel::warpgroup_mma;
          c.key_tile = tile;
          cases.push_back(c);
          ++i;
        }
  for (int tile : {64, 128}) {
    Case c{.schedule = "var-512", .scale = 9, .S = 1, .H = 2, .d = 64, .budget = 0.1};
    c.kernel = AttentionKernel::warpgroup_mma;
    c.key_tile = tile;
    c.stat = StatKind::probability_mass;
    cases.push_back(c);
  }
  // One warpgroup per CTA (64 rows, 64-key tiles): maps of 100 and 169 queries, both head dims.
  for (int d : {64, 128})
    for (int s : {7, 8})
      for (double b : {0.0, 0.1, 1.0}) {
        Case c{.schedule = "var-256", .scale = s, .S = 2, .H = 3, .d = d, .budget = b};
        c.stat = kStats[i % 3];
        c.kernel = AttentionKernel::warpgroup_mma;
        c.rows = 64;
        cases.push_back(c);
        ++i;
      }
  run_all(cases);
}

// The resident-KV warpgroup kernel (a CTA loads its row's K/V once; its query tiles run over it):
// every VAR-256 step whose keys fit (kept + n_new <= 384), budgets 0 / 5% / 10% (ragged) and the full
// cache up to 10x10, with and without listed-observer statistics. Six rows split a row's query tiles
// over CTAs (one tile per warpgroup); 288 rows keep a row in one CTA, so a warpgroup runs 2 (16x16)
// or 5 (24x24 over 64 new keys) query tiles over the resident K/V, each tile's Q copied into the
// warpgroup's buffer once the previous tile is done; the observer rows run in leading CTAs of the
// same launch. 16x16 with up to 128 kept keys fills all six tiles (384 keys).
TEST(FusedAttention, WarpgroupResidentKvKernel) {
  if (!fused_attention_has_warpgroup_kernel()) GTEST_SKIP() << "the resident-KV kernel needs an sm_90 GPU and an sm_90a build";
  std::vector<Case> cases;
  int i = 0;
  for (int s : {0, 2, 4, 6, 7, 8, 9})
    for (double b : kBudgets) {
      if (b == 1.0 && s > 7) continue;  // the full cache of 13x13 and 16x16 does not fit
      Case c{.schedule = "var-256", .scale = s, .S = 2, .H = 3, .d = 64, .budget = b};
      if (s >= 8) c.cap = 64;  // 10% of 424 or 680 kept slots, ragged: at most ~47 (+ 256 new keys <= 384)
      c.stat = kStats[i % 3];
      c.var_style = (i % 2 == 1);
      c.kernel = AttentionKernel::warpgroup_resident_kv;
      cases.push_back(c);
      ++i;
    }
  for (int s : {8, 9}) {
    Case c{.schedule = "var-256", .scale = s, .S = 8, .H = 36, .d = 64, .budget = 0.1, .cap = 64};
    c.stat = s == 9 ? StatKind::probability_mass : StatKind::none;
    c.kernel = AttentionKernel::warpgroup_resident_kv;
    cases.push_back(c);
  }
  // 288 rows keep a row's query tiles in one CTA: the statistic computed at the CTA's end from the
  // resident K and the row's own LSE (10x10, 13x13, 16x16; both statistics; window and 40 listed
  // observers: three chunks of 16).
  for (int s : {7, 8, 9})
    for (StatKind st : {StatKind::probability_mass, StatKind::logit_sum}) {
      Case c{.schedule = "var-256", .scale = s, .S = 8, .H = 36, .d = 64, .budget = 0.1, .cap = 64};
      c.stat = st;
      c.var_style = (s == 8);
      c.obs = (s == 9 && st == StatKind::logit_sum) ? ObsKind::listed40 : ObsKind::window16;
      c.kernel = AttentionKernel::warpgroup_resident_kv;
      cases.push_back(c);
    }
  {  // ScaleKV's last step: 68 kept (10% of 680) + 256 new; here up to 128 + 256 = 384 (all six tiles)
    Case c{.schedule = "var-256", .scale = 9, .S = 2, .H = 3, .d = 64, .budget = 0.3, .cap = 128};
    c.stat = StatKind::probability_mass;
    c.kernel = AttentionKernel::warpgroup_resident_kv;
    cases.push_back(c);
  }
  {  // capacity 424 (the full 13x13 prefix) but kept lengths ~21: the host lengths decide
    Case c{.schedule = "var-256", .scale = 8, .S = 2, .H = 3, .d = 64, .budget = 0.05};
    c.kernel = AttentionKernel::warpgroup_resident_kv;
    cases.push_back(c);
  }
  {
    Case c{.schedule = "infinity-1024", .scale = 8, .S = 8, .H = 36, .d = 64, .budget = 0.05, .cap = 128};
    c.new_keys = 64;
    c.var_style = true;
    c.kernel = AttentionKernel::warpgroup_resident_kv;
    cases.push_back(c);
  }
  run_all(cases);
}

// New K/V shared by the heads of a sequence, passed as views with head stride 0 (a broadcast the
// launcher accepts: every stride is a multiple of 16 bytes), must give exactly (bit for bit: the same
// kernel and tile order) the outputs of per-head copies, through each kernel that serves a 100-query
// step (automatic: the resident-KV kernel; the streaming warpgroup kernel; the warp kernel).
TEST(FusedAttention, BroadcastNewKeysMatchPerHeadCopies) {
  if (!fused_attention_has_warpgroup_kernel())
    GTEST_SKIP() << "the wgmma kernels need an sm_90 GPU and an sm_90a build";
  const int S = 2, H = 3, nq = 100, d = 64, cap = 40, n_new = 100;
  RandomStep step(S, H, nq, d, cap, n_new);
  const std::vector<std::int32_t> lens = {5, 13, 40, 0, 27, 33};
  step.set_device_lengths(lens);
  // Per-head copies of head 0's new keys and values of each sequence.
  DeviceBuffer<bf16> mk(S * H * n_new * d), mv(S * H * n_new * d);
  for (int s = 0; s < S; ++s)
    for (int h = 0; h < H; ++h) {
      const std::size_t dst = (static_cast<std::size_t>(s) * H + h) * n_new * d, src = std::size_t(s) * H * n_new * d;
      const std::size_t bytes = std::size_t(n_new) * d * sizeof(bf16);
      VARKV_CUDA_CHECK(cudaMemcpy(mk.data() + dst, step.k.data() + src, bytes, cudaMemcpyDeviceToDevice));
      VARKV_CUDA_CHECK(cudaMemcpy(mv.data() + dst, step.v.data() + src, bytes, cudaMemcpyDeviceToDevice));
    }
  const std::array<std::int64_t, 4> broadcast = {std::int64_t{H} * n_new * d, 0, d, 1};
  auto run = [&](bool broadcast_kv, AttentionKernel kernel, std::vector<bf16>& o_host, std::vector<float>& lse_host) {
    DeviceBuffer<bf16> o(S * H * nq * d);
    DeviceBuffer<float> lse(S * H * nq);
    VARKV_CUDA_CHECK(cudaMemset(o.data(), 0xFF, o.size() * sizeof(bf16)));  // NaN
    VARKV_CUDA_CHECK(cudaMemset(lse.data(), 0xFF, lse.size() * sizeof(float)));
    FusedAttentionArgs a = step.args();
    if (broadcast_kv) {
      a.new_k = make_view<4, const bf16>("k", step.k.data(), {S, H, n_new, d}, broadcast);
      a.new_v = make_view<4, const bf16>("v", step.v.data(), {S, H, n_new, d}, broadcast);
    } else {
      a.new_k = make_view<4, const bf16>("k", mk.data(), {S, H, n_new, d});
      a.new_v = make_view<4, const bf16>("v", mv.data(), {S, H, n_new, d});
    }
    a.out = make_view<4>("o", o.data(), {S, H, nq, d});
    a.lse = make_view<3>("lse", lse.data(), {S, H, nq});
    a.host_lengths = lens;
    a.kernel = kernel;
    fused_attention(a);
    VARKV_CUDA_CHECK(cudaDeviceSynchronize());
    o_host.resize(o.size());
    lse_host.resize(lse.size());
    VARKV_CUDA_CHECK(cudaMemcpy(o_host.data(), o.data(), o.size() * sizeof(bf16), cudaMemcpyDeviceToHost));
    VARKV_CUDA_CHECK(cudaMemcpy(lse_host.data(), lse.data(), lse.size() * sizeof(float), cudaMemcpyDeviceToHost));
  };
  for (AttentionKernel kernel :
       {AttentionKernel::automatic, AttentionKernel::warpgroup_mma, AttentionKernel::warp_mma}) {
    SCOPED_TRACE(static_cast<int>(kernel));
    std::vector<bf16> o_bc, o_ref;
    std::vector<float> lse_bc, lse_ref;
    run(true, kernel, o_bc, lse_bc);
    run(false, kernel, o_ref, lse_ref);
    ASSERT_EQ(o_bc.size(), o_ref.size());
    int o_diff = 0, lse_diff = 0, nan = 0;
    for (std::size_t i = 0; i < o_ref.size(); ++i) {
      nan += std::isnan(__bfloat162float(o_bc[i])) || std::isnan(__bfloat162float(o_ref[i]));
      o_diff += std::memcmp(&o_bc[i], &o_ref[i], sizeof(bf16)) != 0;
    }
    for (std::size_t i = 0; i < lse_ref.size(); ++i) lse_diff += std::memcmp(&lse_bc[i], &lse_ref[i], 4) != 0;
    EXPECT_EQ(nan, 0) << "outputs left unwritten (poison) or NaN";
    EXPECT_EQ(o_diff, 0) << "outputs differ from those of per-head copies";
    EXPECT_EQ(lse_diff, 0);
  }
}

// The persistent warpgroup kernel (one CTA per SM walks the rows; four consumer warpgroups take a
// row's query tiles, a producer warpgroup streams Q and K/V through two Q slots and an 8-stage ring):
// 10x10, 13x13 (one warpgroup idle per row: it still releases every stage) and 16x16 at budgets
// 0 / 5% / 10% / 100% (ragged: rows of different tile counts, so the ring's stage of a key tile
// shifts from row to row; at 16x16 full, 11 tiles per row wrap the ring inside a row). Six rows (one
// per CTA), 288 rows (2-3 per CTA: both Q slots) and 1920 rows (~15 per CTA at 132 SMs, the ring
// wraps many times); Infinity's 16x16 over 64 new keys, var-512's 13x13 at half budget, and
// `automatic` on the full cache of 13x13 and 16x16 at 300 rows (its choice there up to 150 SMs).
TEST(FusedAttention, WarpgroupPersistentKernel) {
  if (!fused_attention_has_warpgroup_kernel()) GTEST_SKIP() << "the persistent kernel needs an sm_90 GPU and an sm_90a build";
  std::vector<Case> cases;
  int i = 0;
  for (int s : {7, 8, 9})
    for (double b : kBudgets) {
      Case c{.schedule = "var-256", .scale = s, .S = 2, .H = 3, .d = 64, .budget = b};
      c.var_style = (i++ % 2 == 1);
      c.kernel = AttentionKernel::warpgroup_persistent;
      cases.push_back(c);
    }
  for (int s : {7, 8, 9})
    for (double b : {0.1, 1.0}) {
      Case c{.schedule = "var-256", .scale = s, .S = 8, .H = 36, .d = 64, .budget = b};
      c.var_style = (i++ % 2 == 1);
      c.kernel = AttentionKernel::warpgroup_persistent;
      cases.push_back(c);
    }
  for (int s : {8, 9}) {
    Case c{.schedule = "var-256", .scale = s, .S = 64, .H = 30, .d = 64, .budget = 0.1, .cap = 64};
    c.kernel = AttentionKernel::warpgroup_persistent;
    cases.push_back(c);
  }
  {
    Case c{.schedule = "infinity-1024", .scale = 6, .S = 4, .H = 16, .d = 64, .budget = 0.1};
    c.new_keys = 64;
    c.kernel = AttentionKernel::warpgroup_persistent;
    cases.push_back(c);
  }
  {
    Case c{.schedule = "var-512", .scale = 6, .S = 2, .H = 4, .d = 64, .budget = 0.5};
    c.kernel = AttentionKernel::warpgroup_persistent;
    cases.push_back(c);
  }
  for (int s : {8, 9}) {  // automatic: the full cache at 300 rows takes this kernel
    Case c{.schedule = "var-256", .scale = s, .S = 10, .H = 30, .d = 64, .budget = 1.0};
    c.var_style = true;
    cases.push_back(c);
  }
  run_all(cases);
}

// The warp-specialised warpgroup kernel (producer warpgroup + two consumers taking turns): maps
// smaller than its 128-row CTA (3x3, 8x8), padded (10x10), several CTAs per row (16x16, 32x32 at
// var-512), one key tile (2x2) and rows of 1..85 tiles, so the K and V rings wrap many times;
// budgets 0 / 5% / 10% / 100% (ragged: tiles straddle the cache/new boundary at different keys),
// both head dims, no statistic and both listed-observer statistics (observer CTAs of 12 warps);
// Infinity's last scale (10,521 keys, 83 tiles of 128 per row) at full and 10% budget.
TEST(FusedAttention, WarpgroupSpecializedKernel) {
  if (!fused_attention_has_warpgroup_kernel()) GTEST_SKIP() << "the warp-specialised kernel needs an sm_90 GPU and an sm_90a build";
  std::vector<Case> cases;
  int i = 0;
  for (int d : {64, 128})
    for (int s : {1, 2, 6, 7, 9})
      for (double b : kBudgets) {
        Case c{.schedule = "var-256", .scale = s, .S = 2, .H = 3, .d = d, .budget = b};
        c.stat = kStats[i % 3];
        c.var_style = (i % 2 == 1);
        c.kernel = AttentionKernel::warpgroup_specialized;
        cases.push_back(c);
        ++i;
      }
  {
    Case c{.schedule = "var-512", .scale = 9, .S = 1, .H = 2, .d = 128, .budget = 1.0};
    c.stat = StatKind::probability_mass;
    c.kernel = AttentionKernel::warpgroup_specialized;
    cases.push_back(c);
  }
  for (double b : {1.0, 0.1}) {
    Case c{.schedule = "infinity-1024", .scale = 12, .S = 2, .H = 1, .d = 128, .budget = b};
    c.stat = b == 1.0 ? StatKind::none : StatKind::logit_sum;
    c.kernel = AttentionKernel::warpgroup_specialized;
    cases.push_back(c);
  }
  run_all(cases);
}

// Logits that grow along each row's keys (the running max rises by far more than the spread of a
// tile's logits from tile to tile): the wgmma kernels' online softmax must move its reference and
// rescale O and l on almost every tile, where random inputs settle it after the first. Every wgmma
// kernel, both head dims, key tiles of 64 and 128, with and without a statistic (normalised by the
// LSE that the same reference gives).
TEST(FusedAttention, WgmmaKernelsRisingLogits) {
  if (!fused_attention_has_warpgroup_kernel()) GTEST_SKIP() << "the wgmma kernels need an sm_90 GPU and an sm_90a build";
  std::vector<Case> cases;
  auto add = [&](Case c, AttentionKernel k) {
    c.rising = true;
    c.kernel = k;
    cases.push_back(c);
  };
  for (int s : {7, 8, 9}) {
    add(Case{.schedule = "var-256", .scale = s, .S = 2, .H = 3, .d = 64, .budget = 0.1, .cap = 64},
        AttentionKernel::warpgroup_resident_kv);
    add(Case{.schedule = "var-256", .scale = s, .S = 2, .H = 3, .d = 64, .budget = 1.0},
        AttentionKernel::warpgroup_persistent);
    for (int d : {64, 128}) {
      add(Case{.schedule = "var-256", .scale = s, .S = 2, .H = 3, .d = d, .budget = 1.0, .stat = StatKind::probability_mass},
          AttentionKernel::warpgroup_specialized);
      for (int kt : {64, 128})
        add(Case{.schedule = "var-256", .scale = s, .S = 2, .H = 3, .d = d, .budget = 0.5, .stat = StatKind::logit_sum,
                 .key_tile = kt},
            AttentionKernel::warpgroup_mma);
    }
  }
  add(Case{.schedule = "var-256", .scale = 8, .S = 8, .H = 36, .d = 64, .budget = 0.1, .stat = StatKind::probability_mass,
           .cap = 64},
      AttentionKernel::warpgroup_resident_kv);  // in-CTA statistic
  run_all(cases);
}

// The last key tile of a row runs only as wide as its keys (16-key steps of a 64-key tile, 32-key steps
// of a 128-key one): rows whose key counts end on both sides of every step boundary past whole tiles
// (13x13: 169 new keys after 87 + r kept, 256 + r keys, r = 1, 15, 16, 17, ... 127, 128) and rows of
// one tile (10x10's queries over 4 new keys after 0..55 kept: 4..59 keys). Every wgmma kernel (the
// streaming one with 64- and 128-key tiles and with one warpgroup, the warp-specialised one, the
// resident-KV one with its statistic split off and computed in-CTA, the persistent one with the ring
// shifting row to row), both head dims where the kernel has them, with and without a statistic.
TEST(FusedAttention, WgmmaLastTileWidths) {
  if (!fused_attention_has_warpgroup_kernel()) GTEST_SKIP() << "the wgmma kernels need an sm_90 GPU and an sm_90a build";
  std::vector<int> long_rows, one_tile_rows;
  for (int r : {1, 15, 16, 17, 31, 32, 33, 47, 48, 49, 63, 64, 65, 79, 80, 81, 95, 96, 97, 111, 112, 113, 127, 128})
    long_rows.push_back(87 + r);
  for (int keys : {4, 15, 16, 17, 31, 32, 33, 47, 48, 49, 59}) one_tile_rows.push_back(keys - 4);
  const Case long_case{.schedule = "var-256", .scale = 8, .S = 2, .H = 12, .d = 64, .budget = 0.5};
  const Case short_case{.schedule = "var-256", .scale = 7, .S = 1, .H = 11, .d = 64, .budget = 0.5, .new_keys = 4};
  std::vector<Case> cases;
  int i = 0;
  // Both row sets through one configuration; `stat` < 0: a statistic in turn.
  auto add = [&](Case c, int stat) {
    c.var_style = (i % 2 == 1);
    c.stat = stat < 0 ? kStats[i % 3] : static_cast<StatKind>(stat);
    ++i;
    for (bool one_tile : {false, true}) {
      Case r = one_tile ? short_case : long_case;
      r.S = c.S, r.d = c.d, r.stat = c.stat, r.var_style = c.var_style;
      r.kernel = c.kernel, r.rows = c.rows, r.key_tile = c.key_tile;
      r.lengths = one_tile ? one_tile_rows : long_rows;
      cases.push_back(r);
    }
  };
  for (int d : {64, 128}) {
    for (int kt : {64, 128}) add(Case{.d = d, .kernel = AttentionKernel::warpgroup_mma, .key_tile = kt}, -1);
    add(Case{.d = d, .rows = 64, .kernel = AttentionKernel::warpgroup_mma}, -1);
    add(Case{.d = d, .kernel = AttentionKernel::warpgroup_specialized}, -1);
  }
  for (int st = 0; st < 3; ++st) {
    add(Case{.kernel = AttentionKernel::warpgroup_resident_kv}, st);
    // 288 rows: each CTA holds all of its row's query tiles and computes the statistic itself.
    add(Case{.S = 24, .kernel = AttentionKernel::warpgroup_resident_kv}, st);
  }
  add(Case{.kernel = AttentionKernel::warpgroup_persistent}, 0);
  add(Case{.S = 64, .kernel = AttentionKernel::warpgroup_persistent}, 0);  // ~12 rows per CTA
  run_all(cases);
}

// Host lengths that understate a device length: the resident kernel never writes past its tiles;
// that row's outputs are NaN, the other row's are computed.
namespace {

// H rows of one sequence; every third is longer on the device (beyond_len) than host_lengths says
// (host_beyond): with `tested` (host lengths given) those must come out NaN, outputs and LSE, and the
// others as `reference` computes them (no host lengths: every row read whole).
void expect_nan_beyond_host_lengths(int H, int nq, int cap, int n_new, int fit_lo, int fit_span, int beyond_len,
                                    int host_beyond, const std::function<void(FusedAttentionArgs&)>& reference,
                                    const std::function<void(FusedAttentionArgs&)>& tested) {
  const int S = 1, d = 64;
  RandomStep step(S, H, nq, d, cap, n_new);
  std::vector<std::int32_t> device_lengths(H), host_lengths(H);
  for (int r = 0; r < H; ++r) {
    const bool beyond = r % 3 == 1;
    device_lengths[r] = beyond ? beyond_len : fit_lo + r % fit_span;
    host_lengths[r] = beyond ? host_beyond : device_lengths[r];
  }
  step.set_device_lengths(device_lengths);
  DeviceBuffer<bf16> o(S * H * nq * d), o_ref(S * H * nq * d);
  DeviceBuffer<float> lse(S * H * nq), lse_ref(S * H * nq);
  auto a = step.args();
  a.out = make_view<4>("o_ref", o_ref.data(), {S, H, nq, d});
  a.lse = make_view<3>("lse_ref", lse_ref.data(), {S, H, nq});
  reference(a);
  fused_attention(a);
  const auto ref_o = o_ref.download();
  const auto ref_lse = lse_ref.download();
  o.poison();
  lse.poison();
  a = step.args();
  a.out = make_view<4>("o", o.data(), {S, H, nq, d});
  a.lse = make_view<3>("lse", lse.data(), {S, H, nq});
  a.host_lengths = host_lengths;
  tested(a);
  fused_attention(a);
  VARKV_CUDA_CHECK(cudaDeviceSynchronize());
  const auto got_o = o.download();
  const auto got_lse = lse.download();
  // Rows that fit: the same keys as the reference, another summation order; O is bf16 with |O| < ~1
  // here, so 2e-2 absolute covers two roundings and the fp32 reordering.
  float worst = 0.f;
  int nan_in_fit = 0, finite_in_beyond = 0;
  for (int r = 0; r < H; ++r) {
    const bool beyond = r % 3 == 1;
    for (int i = 0; i < nq * d; ++i) {
      const std::size_t e = static_cast<std::size_t>(r) * nq * d + i;
      const float x = __bfloat162float(got_o[e]);
      if (beyond) {
        finite_in_beyond += !std::isnan(x);
      } else if (!std::isfinite(x)) {
        ++nan_in_fit;
      } else {
        worst = std::max(worst, std::abs(x - __bfloat162float(ref_o[e])));
      }
    }
    for (int i = 0; i < nq; ++i) {
      const std::size_t e = static_cast<std::size_t>(r) * nq + i;
      if (beyond) EXPECT_TRUE(std::isnan(got_lse[e])) << "row " << r << " LSE " << i;
      else EXPECT_NEAR(got_lse[e], ref_lse[e], 1e-3f) << "row " << r << " LSE " << i;
    }
  }
  EXPECT_EQ(nan_in_fit, 0) << "rows whose keys fit must be computed";
  EXPECT_EQ(finite_in_beyond, 0) << "rows longer on the device than the host bound must be NaN";
  EXPECT_LT(worst, 2e-2f) << "rows that fit differ from the reference kernel";
}

}  // namespace

TEST(FusedAttention, WarpgroupResidentKvDeviceLengthBeyondHostLengths) {
  if (!fused_attention_has_warpgroup_kernel()) GTEST_SKIP() << "the resident-KV kernel needs an sm_90 GPU and an sm_90a build";
  // 300 rows of 100 queries; the long ones hold 300 + 100 new keys > 384 on the device.
  expect_nan_beyond_host_lengths(
      300, 100, 400, 100, 10, 50, 300, 10, [](FusedAttentionArgs& a) { a.kernel = AttentionKernel::warpgroup_mma; },
      [](FusedAttentionArgs& a) { a.kernel = AttentionKernel::warpgroup_resident_kv; });
}

// The warp kernel's one-tile rows (no tile loop), sized by the host lengths: 2x2 with 16-key tiles
// (long rows: 20 + 4 keys > 16; 3840 rows, VAR-d30 B=64's count) and 4x4 with 32-key tiles (30 + 16 >
// 32); the reference, without host lengths, reads every row through the 16-key tile loop.
TEST(FusedAttention, WarpKernelOneTileDeviceLengthBeyondHostLengths) {
  expect_nan_beyond_host_lengths(
      3840, 4, 24, 4, 0, 13, 20, 2,
      [](FusedAttentionArgs& a) { a.kernel = AttentionKernel::warp_mma; a.rows_per_item = 16; a.key_tile = 16; },
      [](FusedAttentionArgs& a) { a.kernel = AttentionKernel::warp_mma; a.rows_per_item = 16; a.key_tile = 16; });
  expect_nan_beyond_host_lengths(
      600, 16, 40, 16, 1, 16, 30, 5,
      [](FusedAttentionArgs& a) { a.kernel = AttentionKernel::warp_mma; a.rows_per_item = 16; a.key_tile = 16; },
      [](FusedAttentionArgs& a) { a.kernel = AttentionKernel::warp_mma; a.rows_per_item = 16; a.key_tile = 32; });
}

// The launcher refuses what the kernel cannot handle, naming the argument.
TEST(FusedAttention, LauncherRejectsBadArguments) {
  const int S = 2, H = 2, nq = 4, d = 64, cap = 8, n_new = 4;
  RandomStep step(S, H, nq, d, cap, n_new, 8);
  auto &q = step.q, &v = step.v;
  DeviceBuffer<bf16> o(S * H * nq * d);
  DeviceBuffer<float> lse(S * H * nq), stat(S * H * (cap + n_new));
  std::vector<std::int32_t> lens(S * H, 3);
  auto good = [&] {
    FusedAttentionArgs a = step.args();
    a.out = make_view<4>("o", o.data(), {S, H, nq, d});
    a.lse = make_view<3>("lse", lse.data(), {S, H, nq});
    a.host_lengths = lens;
    return a;
  };
  auto expect_error = [](auto&& fn, const char* needle) {
    try {
      fn();
      ADD_FAILURE() << "no error; expected one mentioning '" << needle << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error([&] { auto a = good(); a.q = make_view<4, const bf16>("q", q.data(), {S, H, nq, 32}); fused_attention(a); },
               "head_dim");
  expect_error([&] { auto a = good(); a.q = make_view<4, const bf16>("q", q.data() + 1, {S, H, nq, d}); fused_attention(a); },
               "'q' is not 16-byte aligned");
  expect_error([&] {
    auto a = good();
    a.q = make_view<4, const bf16>("q", q.data(), {S, H, nq, d}, {H * nq * 68, nq * 68, 68, 1});
    fused_attention(a);
  }, "16-byte boundaries");
  expect_error([&] { auto a = good(); a.new_v = make_view<4, const bf16>("v", v.data(), {S, H, 2, d}); fused_attention(a); },
               "new_v");
  expect_error([&] { auto a = good(); a.softmax_scale = NAN; fused_attention(a); }, "softmax_scale");
  expect_error([&] { auto a = good(); a.rows_per_item = 48; fused_attention(a); }, "rows_per_item");
  expect_error([&] { auto a = good(); a.key_tile = 96; fused_attention(a); }, "key_tile");
  expect_error([&] { auto a = good(); a.kernel = AttentionKernel::warp_mma; a.key_tile = 64; fused_attention(a); },
               "key_tile");
  expect_error([&] { auto a = good(); a.key_tile = 16; fused_attention(a); }, "needs kernel = warp_mma");
  expect_error([&] { auto a = good(); a.kernel = AttentionKernel::warp_mma; a.rows_per_item = 64; a.key_tile = 32; fused_attention(a); },
               "16-row items at head dim 64");
  if (fused_attention_has_warpgroup_kernel()) {
    expect_error([&] { auto a = good(); a.kernel = AttentionKernel::warpgroup_mma; a.rows_per_item = 32; fused_attention(a); },
                 "rows_per_item");
    expect_error(
        [&] {
          auto a = good();
          a.kernel = AttentionKernel::warpgroup_mma;
          a.observers = ObserverSet::every_query();
          a.key_stat = make_view<3>("key_stat", stat.data(), {S, H, cap + n_new});
          fused_attention<ObserverProbabilityMass>(a);
        },
        "every-query");
    DeviceLayerCache<bf16> big(S, H, d, kResidentKvMaxKeys);
    expect_error(
        [&] {
          auto a = good();
          a.kernel = AttentionKernel::warpgroup_resident_kv;
          a.cache = big.view();
          a.host_lengths = {};
          fused_attention(a);
        },
        "holds at most 384 keys; cache capacity (no host_lengths) 384 + n_new 4 = 388");
    expect_error(
        [&] {
          auto a = good();
          a.kernel = AttentionKernel::warpgroup_resident_kv;
          a.cache = big.view();
          std::vector<std::int32_t> long_rows(S * H, 3);
          long_rows[2] = 381;
          a.host_lengths = long_rows;
          fused_attention(a);
        },
        "holds at most 384 keys; longest host length 381 + n_new 4 = 385");
    expect_error([&] { auto a = good(); a.kernel = AttentionKernel::warpgroup_resident_kv; a.rows_per_item = 64; fused_attention(a); },
                 "do not apply to the resident-KV kernel");
    expect_error([&] { auto a = good(); a.kernel = AttentionKernel::warpgroup_specialized; a.key_tile = 64; fused_attention(a); },
                 "do not apply to the warp-specialised kernel");
    expect_error(
        [&] {
          auto a = good();
          a.kernel = AttentionKernel::warpgroup_specialized;
          a.observers = ObserverSet::every_query();
          a.key_stat = make_view<3>("key_stat", stat.data(), {S, H, cap + n_new});
          fused_attention<ObserverLogitSum>(a);
        },
        "warp-specialised kernel has no every-query statistic");
    {
      DeviceLayerCache<bf16> c128(S, H, 128, cap);
      DeviceBuffer<bf16> q128(S * H * nq * 128), k128(S * H * n_new * 128), o128(S * H * nq * 128);
      auto a = good();
      a.kernel = AttentionKernel::warpgroup_resident_kv;
      a.q = make_view<4, const bf16>("q", q128.data(), {S, H, nq, 128});
      a.cache = c128.view();
      a.new_k = a.new_v = make_view<4, const bf16>("k", k128.data(), {S, H, n_new, 128});
      a.out = make_view<4>("o", o128.data(), {S, H, nq, 128});
      expect_error([&] { fused_attention(a); }, "resident-KV kernel takes head_dim 64, got 128");
      a.kernel = AttentionKernel::warpgroup_persistent;
      expect_error([&] { fused_attention(a); }, "persistent kernel takes head_dim 64, got 128");
    }
    expect_error([&] { auto a = good(); a.kernel = AttentionKernel::warpgroup_persistent; fused_attention(a); },
                 "persistent kernel takes 65..256 queries (two to four 64-row tiles), got n_q 4");
    {  // 100 queries: in the persistent kernel's range
      const int nq2 = 100;
      DeviceBuffer<bf16> q2(S * H * nq2 * d), o2(S * H * nq2 * d);
      DeviceBuffer<float> lse2(S * H * nq2);
      auto a = good();
      a.kernel = AttentionKernel::warpgroup_persistent;
      a.q = make_view<4, const bf16>("q", q2.data(), {S, H, nq2, d});
      a.out = make_view<4>("o", o2.data(), {S, H, nq2, d});
      a.lse = make_view<3>("lse", lse2.data(), {S, H, nq2});
      expect_error([&] { auto b = a; b.key_tile = 64; fused_attention(b); }, "do not apply to the persistent kernel");
      expect_error(
          [&] {
            auto b = a;
            b.observers = ObserverSet::listed({1, 2});
            b.key_stat = make_view<3>("key_stat", stat.data(), {S, H, cap + n_new});
            fused_attention<ObserverLogitSum>(b);
          },
          "persistent kernel computes no statistic");
    }
  } else {
    expect_error([&] { auto a = good(); a.kernel = AttentionKernel::warpgroup_mma; fused_attention(a); }, "sm_90a");
  }
  expect_error([&] {
    auto a = good();
    std::vector<std::int32_t> bad(S * H, 3);
    bad[3] = cap + 1;
    a.host_lengths = bad;
    fused_attention(a);
  }, "row 3");
  expect_error([&] { auto a = good(); fused_attention<ObserverProbabilityMass>(a); }, "observer set is empty");
  expect_error([&] {
    auto a = good();
    a.observers = ObserverSet::listed({1, nq});
    a.key_stat = make_view<3>("key_stat", stat.data(), {S, H, cap + n_new});
    fused_attention<ObserverLogitSum>(a);
  }, "outside 0..3");
  expect_error([&] {
    auto a = good();
    a.observers = ObserverSet::listed({1});
    a.key_stat = make_view<3>("key_stat", stat.data(), {S, H, cap});
    fused_attention<ObserverLogitSum>(a);
  }, "key_stat");
  expect_error([] { (void)ObserverSet::listed({3, 2}); }, "strictly increasing");
  // A valid call still works after all the refusals.
  auto a = good();
  o.poison();
  fused_attention(a);
  VARKV_CUDA_CHECK(cudaDeviceSynchronize());
}

// DeviceCompressedCache (policy-driven scoring and compaction on the GPU) vs the CPU CompressedCache.
//
// Every case: 3 layers, 2 heads of 64, 2 images under CFG (4 sequences), the VAR 256 px schedule (10
// steps, 680 tokens), fresh random bf16 inputs per run (seed printed, VARKV_TEST_SEED replays). Cases:
// every registry preset the device cache supports (AdaKV's head-adaptive split must be refused with a
// clear error), CFG-shared variants, the logit statistic, the custom example policy my::last_query and
// a retention-wins policy.
// (a) Same statistic: the device commit gets the CPU reference statistic (the CPU cache's own key_stat
//     re-indexed to the device capacity, every non-candidate entry NaN) and must keep exactly the CPU
//     CompressedCache<float>'s tokens after every (step, layer): lengths, positions of every slot
//     (-1 past the length) and K/V bytes identical; the ledgers identical at the end.
// (b) End to end: attend (fused attention + statistic) + commit on the device vs reference_attention on
//     the device cache's own pre-step state: O relative Frobenius < 1e-2, max |LSE error| < 1e-2
//     (outputs poisoned with NaN before each launch), key_stat relative Frobenius < 2e-2 over the
//     candidates. Survivors: with k = the row's survivors, t = the k-th largest reference score (the
//     policy's CPU score of the reference statistic; retained = +inf; CFG-shared rows summed) and
//     margin = 2e-2 x max|finite reference score| of the row, every candidate above t + margin must
//     survive and none below t - margin may. Lockstep with the CPU cache: a statistic-free policy
//     must stay identical to it; a statistic policy may leave it only through a within-margin swap
//     (counted and printed).
// (c) Memory: 10% ScaleKV / SnapKV caches allocate 10% of the full cache's K/V (capacity per layer
//     and measured cudaMemGetInfo difference).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <cuda_bf16.h>

#include <varkv/attention/reference_attention.hpp>
#include <varkv/cache/compressed_cache.hpp>
#include <varkv/cache/device_compressed_cache.cuh>
#include <varkv/policy/registry.hpp>

#include "../../examples/custom_policy/last_query_eviction.hpp"
#include "../support/error_norms.hpp"
#include "../support/random.hpp"

using namespace varkv;

namespace {

constexpr int kLayers = 3, kHeads = 2, kHeadDim = 64;
constexpr BatchShape kBatch{2, true};
constexpr KvDTypes kDTypes{DType::bf16, DType::bf16};

ModelGeometry test_geometry() { return {"dcc-test", kLayers, kHeads, kHeadDim}; }

float bf16_round(float x) { return __bfloat162float(__float2bfloat16(x)); }

std::vector<bf16> to_bf16(const std::vector<float>& v) {
  std::vector<bf16> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = __float2bfloat16(v[i]);
  return out;
}
std::uint16_t bits(bf16 x) {
  std::uint16_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
}

std::vector<float> random_bf16_values(std::size_t n, std::mt19937_64& rng) {
  auto v = varkv::testing::random_normal(n, rng);
  for (auto& x : v) x = bf16_round(x);
  return v;
}

using varkv::testing::rel_fro;

// One calibration profile for both tables: ScaleKV drafters (layer 0 at every scale, layer 1 at scales
// 5..7, layer 2 never) and AMS-KV's demanding layer (layer 0).
const std::string& profile_path() {
  static const std::string path = [] {
    const auto p = std::filesystem::temp_directory_path() / "varkv_device_cache_test_profile.json";
    std::ofstream f(p);
    f << R"({"format": "varkv-profile/1", "layers": 3, "scales": 10, "schedule": "var-256", "drafter": [)"
      << "[true,true,true,true,true,true,true,true,true,true],"
      << "[false,false,false,false,false,true,true,true,false,false],"
      << "[false,false,false,false,false,false,false,false,false,false]],"
      << R"("demanding": [true, false, false]})";
    return p.string();
  }();
  return path;
}

// A layer's device state on the host.
struct HostLayer {
  std::int64_t cap = 0;
  std::vector<bf16> k, v;
  std::vector<std::int32_t> pos, len;
};
HostLayer download(const DeviceLayerCache<bf16>& c) {
  return {c.capacity(), c.download_keys(), c.download_values(), c.download_positions(), c.download_lengths()};
}

// "" when the CPU store and the device layer hold the same tokens (lengths, positions of every device
// slot, K/V bits of every kept slot); else the first difference.
std::string compare_layer(const LayerKvStore<float>& cpu, const HostLayer& dev) {
  const int S = cpu.sequences(), H = cpu.heads(), d = cpu.head_dim();
  const auto cpos = cpu.positions();
  for (int s = 0; s < S; ++s)
    for (int h = 0; h < H; ++h) {
      const std::int64_t r = std::int64_t{s} * H + h;
      const std::int32_t len = cpu.length(s, h);
      if (len != dev.len[r])
        return "seq " + std::to_string(s) + " head " + std::to_string(h) + ": length " + std::to_string(dev.len[r]) +
               " on the device, " + std::to_string(len) + " on the CPU";
      if (len > dev.cap) return "CPU row longer than the device capacity " + std::to_string(dev.cap);
      for (std::int64_t j = 0; j < dev.cap; ++j) {
        const std::int32_t want = j < cpu.capacity() ? cpos(s, h, j) : -1;
        if (dev.pos[r * dev.cap + j] != want)
          return "seq " + std::to_string(s) + " head " + std::to_string(h) + " slot " + std::to_string(j) +
                 ": position " + std::to_string(dev.pos[r * dev.cap + j]) + " on the device, " + std::to_string(want) +
                 " on the CPU";
      }
      for (std::int32_t j = 0; j < len; ++j)
        for (int e = 0; e < d; ++e) {
          const std::size_t o = (static_cast<std::size_t>(r) * dev.cap + j) * d + e;
          if (bits(dev.k[o]) != bits(__float2bfloat16(cpu.keys()(s, h, j, e))) ||
              bits(dev.v[o]) != bits(__float2bfloat16(cpu.values()(s, h, j, e))))
            return "seq " + std::to_string(s) + " head " + std::to_string(h) + " slot " + std::to_string(j) +
                   ": K/V bytes differ";
        }
    }
  return "";
}

struct Reference {
  std::vector<float> o, lse, stat;  // stat: [S, H, cap + n] (empty when no statistic was asked for)
};
// reference_attention over a cache [S, H, cap, d] with row lengths `len`, the step's q/k/v [S, H, n, d].
Reference reference(const float* ck, const float* cv, std::int64_t cap, std::span<const std::int32_t> len,
                    const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v, int n,
                    double scale, const StatRequest& req) {
  const int S = kBatch.sequences(), H = kHeads, d = kHeadDim;
  Reference out;
  out.o.resize(static_cast<std::size_t>(S) * H * n * d);
  out.lse.resize(static_cast<std::size_t>(S) * H * n);
  if (req.needed) out.stat.assign(static_cast<std::size_t>(S) * H * (cap + n), 0.f);
  ReferenceAttentionArgs a;
  a.q = make_view<4, const float>("q", q.data(), {S, H, n, d});
  a.cache_k = make_view<4, const float>("ck", ck, {S, H, cap, d});
  a.cache_v = make_view<4, const float>("cv", cv, {S, H, cap, d});
  a.cache_len = len;
  a.new_k = make_view<4, const float>("k", k.data(), {S, H, n, d});
  a.new_v = make_view<4, const float>("v", v.data(), {S, H, n, d});
  a.softmax_scale = scale;
  a.out = make_view<4>("o", out.o.data(), {S, H, n, d});
  a.lse = make_view<3>("lse", out.lse.data(), {S, H, n});
  if (req.needed) {
    a.observers = req.observers;
    a.statistic = req.statistic;
    a.key_stat = make_view<3>("ks", out.stat.data(), {S, H, cap + n});
  }
  reference_attention(a);
  return out;
}

// key_stat [S, H, from_cap + n] -> [S, H, to_cap + n] for rows of the given lengths; entries that are
// no candidate get `fill`.
std::vector<float> reindex_stat(const std::vector<float>& src, std::int64_t from_cap, std::int64_t to_cap,
                                std::span<const std::int32_t> len, int n, float fill) {
  const std::size_t rows = len.size();
  std::vector<float> out(rows * (to_cap + n), fill);
  for (std::size_t r = 0; r < rows; ++r) {
    for (std::int32_t j = 0; j < len[r]; ++j) out[r * (to_cap + n) + j] = src[r * (from_cap + n) + j];
    for (int i = 0; i < n; ++i) out[r * (to_cap + n) + to_cap + i] = src[r * (from_cap + n) + from_cap + i];
  }
  return out;
}

template <class P>
constexpr bool kHeadSplit = detail::declares_head_split<typename P::budget_type>;

// ---------------------------------------------------------------------------------------------------
// (a) the CPU reference statistic handed to both caches: identical tokens, bytes and ledgers.
template <class P>
void same_statistic(const P& policy, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  const auto geo = test_geometry();
  const auto sched = schedules::var_256();
  const int S = kBatch.sequences(), H = kHeads, d = kHeadDim;
  CompressedCache<float, P> cpu(geo, sched, kBatch, kDTypes, policy);
  DeviceCompressedCache<P> dev(geo, sched, kBatch, kDTypes, policy);
  for (int step = 0; step < sched.size(); ++step)
    for (int l = 0; l < kLayers; ++l) {
      SCOPED_TRACE("step " + std::to_string(step) + ", layer " + std::to_string(l));
      const int n = static_cast<int>(sched.tokens(step));
      const std::size_t elems = static_cast<std::size_t>(S) * H * n * d;
      const auto k = random_bf16_values(elems, rng), v = random_bf16_values(elems, rng);
      const auto kv = make_view<4, const float>("k", k.data(), {S, H, n, d});
      const auto vv = make_view<4, const float>("v", v.data(), {S, H, n, d});
      DeviceBuffer<bf16> dk(to_bf16(k)), dv(to_bf16(v));
      const auto dkv = make_view<4, const bf16>("k", dk.data(), {S, H, n, d});
      const auto dvv = make_view<4, const bf16>("v", dv.data(), {S, H, n, d});
      const StatRequest req = cpu.statistics(step, l), dreq = dev.statistics(step, l);
      ASSERT_EQ(req.needed, dreq.needed);
      ASSERT_EQ(req.observers, dreq.observers);
      const std::vector<std::int32_t> len_before(dev.lengths(l).begin(), dev.lengths(l).end());
      if (req.needed) {
        const auto q = random_bf16_values(elems, rng);
        const auto& store = cpu.layer(l);
        const Reference ref = reference(store.keys().data(), store.values().data(), store.capacity(), store.lengths(), q,
                                        k, v, n, 1.0 / std::sqrt(double(d)), req);
        cpu.commit(step, l, kv, vv, make_view<3, const float>("key_stat", ref.stat.data(), {S, H, store.capacity() + n}));
        const std::int64_t dcap = dev.capacity(l);
        DeviceBuffer<float> dks(reindex_stat(ref.stat, store.capacity(), dcap, len_before, n, NAN));
        dev.commit(step, l, dkv, dvv, make_view<3, const float>("key_stat", dks.data(), {S, H, dcap + n}));
      } else {
        cpu.commit(step, l, kv, vv);
        dev.commit(step, l, dkv, dvv);
      }
      const std::string diff = compare_layer(cpu.layer(l), download(dev.layer(l)));
      ASSERT_EQ(diff, "") << "device and CPU caches differ";
      ASSERT_TRUE(std::equal(dev.lengths(l).begin(), dev.lengths(l).end(), cpu.layer(l).lengths().begin()));
    }
  for (int step = 0; step < sched.size(); ++step)
    for (int l = 0; l < kLayers; ++l)
      for (int h = 0; h < H; ++h)
        for (int o = 0; o <= step; ++o)
          ASSERT_EQ(dev.ledger().tokens(step, l, h, o), cpu.ledger().tokens(step, l, h, o))
              << "ledger: step " << step << ", layer " << l << ", head " << h << ", origin " << o;
  EXPECT_EQ(dev.ledger().peak_bytes(), cpu.ledger().peak_bytes());
  std::printf("    %d steps x %d layers identical; peak KV %lld bytes (full %lld); device capacity per layer:", sched.size(),
              kLayers, static_cast<long long>(dev.ledger().peak_bytes()),
              static_cast<long long>(KvLedger::full(geo, sched, kBatch, kDTypes).peak_bytes()));
  for (int l = 0; l < kLayers; ++l) std::printf(" %lld", static_cast<long long>(dev.capacity(l)));
  std::printf("\n");
}

// ---------------------------------------------------------------------------------------------------
// (b) end to end.
struct Worst {
  double o = 0, lse = 0, stat = 0;
  int diverged = 0;
};

// Candidate c of a pre-step row for a kept position (-1: none).
int candidate_of(std::int32_t pos, const std::int32_t* slot_pos, int len, int first) {
  if (pos >= first) return len + (pos - first);
  const auto* it = std::lower_bound(slot_pos, slot_pos + len, pos);
  return it != slot_pos + len && *it == pos ? static_cast<int>(it - slot_pos) : -1;
}

template <class P>
void check_margin(const P& policy, const ScaleSchedule& sched, int step, int l, const HostLayer& pre,
                  const HostLayer& post, const std::vector<float>& ref_stat, const std::vector<float>& acc) {
  const int S = kBatch.sequences(), H = kHeads, n = static_cast<int>(sched.tokens(step));
  const auto first = static_cast<std::int32_t>(sched.begin(step));
  const std::int64_t cap = pre.cap;
  const RetentionRanges ranges = policy.retention.ranges(step, sched);
  std::vector<std::vector<float>> score(static_cast<std::size_t>(S) * H);
  std::vector<std::vector<std::int32_t>> cpos(score.size());
  for (int s = 0; s < S; ++s)
    for (int h = 0; h < H; ++h) {
      const std::int64_t r = std::int64_t{s} * H + h;
      const int len = pre.len[r], nc = len + n;
      auto& p = cpos[r];
      p.resize(nc);
      std::vector<float> st(nc), ac;
      for (int c = 0; c < nc; ++c) {
        p[c] = c < len ? pre.pos[r * cap + c] : first + (c - len);
        st[c] = ref_stat[r * (cap + n) + (c < len ? c : cap + (c - len))];
      }
      if (!acc.empty()) {
        ac.assign(nc, 0.f);
        for (int c = 0; c < len; ++c) ac[c] = acc[r * cap + c];
      }
      const ScoreContext ctx{step, l, s, h, &sched, len, n, first, p, st, ac, {}};
      score[r].resize(nc);
      policy.eviction.score(ctx, score[r]);
    }
  if (policy.options.cfg_shared)
    for (int s = 0; s < S / 2; ++s)
      for (int h = 0; h < H; ++h) {
        auto& a = score[std::int64_t{s} * H + h];
        auto& b = score[std::int64_t{s + S / 2} * H + h];
        ASSERT_EQ(a.size(), b.size());
        for (std::size_t i = 0; i < a.size(); ++i) a[i] = b[i] = a[i] + b[i];
      }
  for (std::int64_t r = 0; r < std::int64_t{S} * H; ++r) {
    auto& sc = score[r];
    const int len = pre.len[r], nc = len + n, k = post.len[r];
    for (int c = 0; c < nc; ++c)
      if (ranges.contains(cpos[r][c])) sc[c] = INFINITY;
    std::vector<char> kept(nc, 0);
    for (int j = 0; j < k; ++j) {
      const int c = candidate_of(post.pos[r * post.cap + j], &pre.pos[r * cap], len, first);
      ASSERT_GE(c, 0) << "row " << r << ": survivor at position " << post.pos[r * post.cap + j] << " was no candidate";
      kept[c] = 1;
    }
    if (k == 0) continue;
    std::vector<float> sorted = sc;
    std::sort(sorted.begin(), sorted.end(), std::greater<>());
    const double t = sorted[k - 1];
    double mx = 0;
    for (float x : sc)
      if (std::isfinite(x)) mx = std::max(mx, std::abs(double(x)));
    const double margin = 2e-2 * mx;
    for (int c = 0; c < nc; ++c) {
      if (sc[c] > t + margin) EXPECT_TRUE(kept[c]) << "row " << r << ": position " << cpos[r][c] << " (score " << sc[c]
                                                   << ", threshold " << t << ") should survive";
      if (sc[c] < t - margin) EXPECT_FALSE(kept[c]) << "row " << r << ": position " << cpos[r][c] << " (score " << sc[c]
                                                    << ", threshold " << t << ") should not survive";
    }
  }
}

template <class P>
Worst end_to_end(const P& policy, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  const auto geo = test_geometry();
  const auto sched = schedules::var_256();
  const int S = kBatch.sequences(), H = kHeads, d = kHeadDim;
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  CompressedCache<float, P> cpu(geo, sched, kBatch, kDTypes, policy);
  DeviceCompressedCache<P> dev(geo, sched, kBatch, kDTypes, policy);
  std::vector<char> in_sync(kLayers, 1);
  Worst w;
  for (int step = 0; step < sched.size(); ++step)
    for (int l = 0; l < kLayers; ++l) {
      SCOPED_TRACE("step " + std::to_string(step) + ", layer " + std::to_string(l));
      const int n = static_cast<int>(sched.tokens(step));
      const std::size_t elems = static_cast<std::size_t>(S) * H * n * d;
      const auto q = random_bf16_values(elems, rng), k = random_bf16_values(elems, rng), v = random_bf16_values(elems, rng);
      const StatRequest req = dev.statistics(step, l);

      // The reference sees exactly what the kernel sees: the device cache's pre-step state.
      const HostLayer pre = download(dev.layer(l));
      std::vector<float> ck(pre.k.size()), cv(pre.v.size());
      for (std::size_t i = 0; i < ck.size(); ++i) {
        ck[i] = __bfloat162float(pre.k[i]);
        cv[i] = __bfloat162float(pre.v[i]);
      }
      const Reference ref = reference(ck.data(), cv.data(), pre.cap, pre.len, q, k, v, n, scale, req);

      DeviceBuffer<bf16> dq(to_bf16(q)), dk(to_bf16(k)), dv(to_bf16(v)), dout(elems);
      DeviceBuffer<float> dlse(static_cast<std::size_t>(S) * H * n);
      dout.poison();
      dlse.poison();
      const auto dkv = make_view<4, const bf16>("k", dk.data(), {S, H, n, d});
      const auto dvv = make_view<4, const bf16>("v", dv.data(), {S, H, n, d});
      dev.attend(step, l, make_view<4, const bf16>("q", dq.data(), {S, H, n, d}), dkv, dvv, static_cast<float>(scale),
                 make_view<4>("out", dout.data(), {S, H, n, d}), make_view<3>("lse", dlse.data(), {S, H, n}));
      VARKV_CUDA_CHECK(cudaDeviceSynchronize());
      const auto ob = dout.download();
      std::vector<float> got_o(ob.size());
      for (std::size_t i = 0; i < ob.size(); ++i) got_o[i] = __bfloat162float(ob[i]);
      const auto got_lse = dlse.download();
      const double eo = rel_fro(got_o, ref.o);
      double e_lse = 0;
      for (std::size_t i = 0; i < got_lse.size(); ++i)
        e_lse = std::max(e_lse, std::isnan(got_lse[i]) ? INFINITY : std::abs(double(got_lse[i]) - ref.lse[i]));
      EXPECT_LT(eo, 1e-2) << "O relative Frobenius error";
      EXPECT_LT(e_lse, 1e-2) << "max |LSE error|";
      w.o = std::max(w.o, eo);
      w.lse = std::max(w.lse, e_lse);
      if (req.needed) {
        const auto ksv = dev.key_stat();
        EXPECT_EQ(ksv.size(), static_cast<std::int64_t>(ref.stat.size()));
        if (ksv.size() != static_cast<std::int64_t>(ref.stat.size())) return w;
        std::vector<float> got(ref.stat.size());
        VARKV_CUDA_CHECK(cudaMemcpy(got.data(), ksv.data(), got.size() * sizeof(float), cudaMemcpyDeviceToHost));
        std::vector<float> g, rs;  // candidates only
        for (std::int64_t r = 0; r < std::int64_t{S} * H; ++r)
          for (std::int64_t j = 0; j < pre.cap + n; ++j)
            if (j < pre.len[r] || j >= pre.cap) {
              g.push_back(got[r * (pre.cap + n) + j]);
              rs.push_back(ref.stat[r * (pre.cap + n) + j]);
            }
        const double es = rel_fro(g, rs);
        EXPECT_LT(es, 2e-2) << "key_stat relative Frobenius error";
        w.stat = std::max(w.stat, es);
      } else {
        EXPECT_TRUE(dev.key_stat().empty()) << "a statistic was measured although the policy asked for none";
      }

      // The CPU cache takes the same step while it still holds what the device holds.
      if (in_sync[l]) {
        const auto kv = make_view<4, const float>("k", k.data(), {S, H, n, d});
        const auto vv = make_view<4, const float>("v", v.data(), {S, H, n, d});
        if (req.needed) {
          const auto cst = reindex_stat(ref.stat, pre.cap, cpu.layer(l).capacity(), pre.len, n, 0.f);
          cpu.commit(step, l, kv, vv, make_view<3, const float>("ks", cst.data(), {S, H, cpu.layer(l).capacity() + n}));
        } else {
          cpu.commit(step, l, kv, vv);
        }
      }
      const auto acc = dev.download_accumulated(l);
      dev.commit(step, l, dkv, dvv);
      const HostLayer post = download(dev.layer(l));
      if constexpr (DeviceCompressedCache<P>::uses_statistics) {
        if (req.needed) check_margin(policy, sched, step, l, pre, post, ref.stat, acc);
      }
      if (in_sync[l]) {
        const std::string diff = compare_layer(cpu.layer(l), post);
        if (!diff.empty()) {
          if constexpr (!DeviceCompressedCache<P>::uses_statistics) ADD_FAILURE() << "statistic-free policy diverged: " << diff;
          in_sync[l] = 0;
          ++w.diverged;
        }
      }
      if (::testing::Test::HasFailure()) return w;
    }
  if (w.diverged == 0)
    for (int step = 0; step < sched.size(); ++step)
      for (int l = 0; l < kLayers; ++l)
        EXPECT_EQ(dev.ledger().tokens(step, l), cpu.ledger().tokens(step, l)) << "ledger: step " << step << ", layer " << l;
  return w;
}

// ---------------------------------------------------------------------------------------------------
enum class Mode { same_statistic, end_to_end };

template <class P>
void check_policy(const std::string& label, const P& policy, Mode mode, std::uint64_t seed) {
  SCOPED_TRACE(label);
  if constexpr (kHeadSplit<P>) {
    try {
      DeviceCompressedCache<P> dev(test_geometry(), schedules::var_256(), kBatch, kDTypes, policy);
      ADD_FAILURE() << "head-adaptive budget accepted by the device cache";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("head_adaptive"), std::string::npos) << e.what();
      std::printf("  %-58s refused: %s\n", label.c_str(), e.what());
    }
  } else if (mode == Mode::same_statistic) {
    std::printf("  %-58s\n", label.c_str());
    same_statistic(policy, seed);
  } else {
    const Worst w = end_to_end(policy, seed);
    std::printf("  %-58s O %.3g, LSE %.3g, key_stat %.3g, left the CPU lockstep %d time(s)\n", label.c_str(), w.o, w.lse,
                w.stat, w.diverged);
  }
}

using CustomPolicy = cache_policy<my::last_query, budget::uniform>;
using RetainWinsPolicy = cache_policy<eviction::snapkv, budget::uniform, retention::scales>;

void for_every_policy(Mode mode) {
  const auto seed = varkv::testing::fresh_seed();
  SCOPED_TRACE(varkv::testing::seed_note(seed));
  std::printf("  seed %llu (%s)\n", static_cast<unsigned long long>(seed), varkv::testing::seed_note(seed).c_str());
  const std::string prof = profile_path();
  const std::vector<std::string> specs = {
      "full",
      "scalekv:budget=0.1,profile=" + prof,
      "scalekv:budget=0.1,profile=" + prof + ",stat=logit,kernel=3,grid=3,cfg=shared",
      "amskv:profile=" + prof,
      "amskv:profile=" + prof + ",local=2,demanding_local=3",
      "streamingllm:budget=0.1",
      "h2o:budget=0.1",
      "h2o:budget=0.1,cfg=shared",
      "snapkv:budget=0.1",
      "snapkv:budget=0.1,window=16,kernel=5,cfg=shared",
      "pyramidkv:budget=0.1",
      "adakv:budget=0.1",
      "keynorm:budget=0.1",
      "random:budget=0.1,seed=7",
  };
  std::uint64_t i = 0;
  auto run = [&](const std::string& label, const auto& policy) {
    check_policy(label, policy, mode, seed + 1000 * i++);
  };
  for (const auto& spec : specs) {
    std::string label = spec;
    if (const auto at = label.find(prof); at != std::string::npos) label.replace(at, prof.size(), "<drafters 0, 1@5..7>");
    with_policy(spec, [&](auto policy) { run(label, policy); });
    if (::testing::Test::HasFailure()) return;
  }
  run("custom my::last_query, 24 tokens", CustomPolicy(my::last_query{}, budget::uniform{{0.0, 24}}));
  if (::testing::Test::HasFailure()) return;
  // Sinks, the first 2 scales and the current scale always kept, winning over 40 tokens (261 at step 9).
  run("snapkv window 16 + retention wins, 40 tokens",
      RetainWinsPolicy(eviction::snapkv{{16, 3}}, budget::uniform{{0.0, 40}}, retention::scales{{2, 2, 1, true}}));
}

template <class F>
void expect_error(F&& fn, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "no error; expected one mentioning '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

}  // namespace

// No statistic-free policy compiles the statistic kernels in; the rest can measure one.
static_assert(!DeviceCompressedCache<presets::StreamingLLM>::uses_statistics);
static_assert(!DeviceCompressedCache<presets::AMSKV>::uses_statistics);
static_assert(!DeviceCompressedCache<presets::Full>::uses_statistics);
static_assert(!DeviceCompressedCache<presets::KeyNorm>::uses_statistics);
static_assert(DeviceCompressedCache<presets::ScaleKV>::uses_statistics);
static_assert(DeviceCompressedCache<CustomPolicy>::uses_statistics);

TEST(DeviceCompressedCache, SameStatisticKeepsSameTokensEveryPreset) { for_every_policy(Mode::same_statistic); }

TEST(DeviceCompressedCache, EndToEndMatchesCpuEveryPreset) { for_every_policy(Mode::end_to_end); }

// A 10% budget allocates 10% of the full cache: VAR-d30, 16 images under CFG.
TEST(DeviceCompressedCache, TenPercentBudgetAllocatesTenPercent) {
  const auto geo = geometries::var_d30();
  const auto sched = schedules::var_256();
  const BatchShape batch{16, true};
  auto used = [](auto&& make) {
    VARKV_CUDA_CHECK(cudaDeviceSynchronize());
    std::size_t free0 = 0, free1 = 0, total = 0;
    VARKV_CUDA_CHECK(cudaMemGetInfo(&free0, &total));
    auto cache = make();
    VARKV_CUDA_CHECK(cudaDeviceSynchronize());
    VARKV_CUDA_CHECK(cudaMemGetInfo(&free1, &total));
    return std::make_pair(static_cast<double>(free0) - static_cast<double>(free1), cache.kv_bytes());
  };
  const auto full = used([&] { return DeviceCompressedCache<presets::Full>(geo, sched, batch, kDTypes); });
  const auto skv = used([&] {
    return DeviceCompressedCache<presets::ScaleKV>(geo, sched, batch, kDTypes, presets::scalekv({0.1}));
  });
  const auto snap = used([&] { return DeviceCompressedCache<presets::SnapKV>(geo, sched, batch, kDTypes, presets::snapkv({0.1})); });
  // ScaleKV with drafters: layer 0 drafts at every scale, so it keeps up to the full prefix.
  classification::profile prof;
  prof.layers = geo.layers;
  prof.scales = sched.size();
  prof.drafter.assign(static_cast<std::size_t>(prof.layers) * prof.scales, 0);
  for (int s = 0; s < prof.scales; ++s) prof.drafter[s] = 1;
  const auto skv_d = used([&] {
    return DeviceCompressedCache<presets::ScaleKV>(geo, sched, batch, kDTypes, presets::scalekv({0.1}, prof));
  });
  const double full_kv = static_cast<double>(full.second);
  EXPECT_EQ(full.second, std::int64_t{30} * 32 * 30 * 680 * 64 * 4);  // VAR-d30, 32 sequences, 680 tokens, bf16 K+V
  EXPECT_EQ(skv.second * 10, full.second) << "uniform ScaleKV at 10%: 68 of 680 slots per row";
  EXPECT_EQ(snap.second * 10, full.second) << "SnapKV at 10%: 68 of 680 slots per row";
  EXPECT_LT(skv_d.second, 0.15 * full_kv) << "ScaleKV with a drafter layer";
  // What the driver really handed out (K/V plus positions, lengths and scratch).
  EXPECT_GT(full.first, 0.95 * full_kv);
  EXPECT_LT(skv.first, 0.13 * full.first);
  EXPECT_LT(snap.first, 0.13 * full.first);
  std::printf("  device memory (VAR-d30, 16 images x2 CFG): full %.1f MB K/V (%.1f MB allocated); ScaleKV 10%% %.1f MB "
              "(%.1f); SnapKV 10%% %.1f MB (%.1f); ScaleKV 10%% with a drafter layer %.1f MB (%.1f) = %.1f%% of full\n",
              full_kv / 1e6, full.first / 1e6, skv.second / 1e6, skv.first / 1e6, snap.second / 1e6, snap.first / 1e6,
              skv_d.second / 1e6, skv_d.first / 1e6, 100.0 * skv_d.second / full_kv);
}

TEST(DeviceCompressedCache, RejectsBadArgumentsClearly) {
  const auto geo = test_geometry();
  const auto sched = schedules::var_256();
  const BatchShape batch{1, true};
  const int S = batch.sequences(), H = kHeads, d = kHeadDim;
  expect_error([&] { DeviceCompressedCache<presets::AdaKV> c(geo, sched, batch, kDTypes, presets::adakv({0.1})); },
               "budget 'head_adaptive'");
  expect_error([&] { DeviceCompressedCache<presets::Full> c(ModelGeometry{"odd", 1, 2, 12}, sched, batch, kDTypes); },
               "head_dim 12");
  expect_error(
      [&] {
        auto p = presets::snapkv({0.1});
        p.options.cfg_shared = true;
        DeviceCompressedCache<presets::SnapKV> c(geo, sched, BatchShape{1, false}, kDTypes, p);
      },
      "cfg_shared");

  DeviceBuffer<bf16> one(static_cast<std::size_t>(S) * H * 4 * d);  // room for 4 tokens
  VARKV_CUDA_CHECK(cudaMemset(one.data(), 0, one.bytes()));
  auto kv = [&](int n) { return make_view<4, const bf16>("kv", one.data(), {S, H, n, d}); };
  DeviceCompressedCache<presets::SnapKV> snap(geo, sched, batch, kDTypes, presets::snapkv({0.1}));
  expect_error([&] { snap.commit(0, 0, kv(1), kv(1)); }, "call attend(0, 0, ...) first");
  expect_error([&] { snap.commit(0, 3, kv(1), kv(1)); }, "layer 3 outside 0..2");
  expect_error([&] { snap.commit(10, 0, kv(1), kv(1)); }, "step 10 outside schedule");
  DeviceBuffer<float> stat(static_cast<std::size_t>(S) * H * (snap.capacity(0) + 4));
  VARKV_CUDA_CHECK(cudaMemset(stat.data(), 0, stat.bytes()));
  auto ks = [&](std::int64_t width) { return make_view<3, const float>("key_stat", stat.data(), {S, H, width}); };
  expect_error([&] { snap.commit(0, 0, kv(1), kv(1), ks(snap.capacity(0))); }, "tensor 'key_stat (commit)'");
  expect_error([&] { snap.commit(0, 0, kv(2), kv(1), ks(snap.capacity(0) + 1)); }, "tensor 'k (commit)'");
  expect_error([&] { snap.commit(1, 0, kv(4), kv(4), ks(snap.capacity(0) + 4)); }, "commit steps in order");
  DeviceBuffer<bf16> out(static_cast<std::size_t>(S) * H * d);
  DeviceBuffer<float> lse(static_cast<std::size_t>(S) * H);
  expect_error(
      [&] {
        snap.attend(0, 0, kv(2), kv(1), kv(1), 0.125f, make_view<4>("out", out.data(), {S, H, 1, d}),
                    make_view<3>("lse", lse.data(), {S, H, 1}));
      },
      "tensor 'q (attend)'");
  snap.commit(0, 0, kv(1), kv(1), ks(snap.capacity(0) + 1));  // still usable after the refusals
  EXPECT_EQ(snap.lengths(0)[0], 1);
  EXPECT_EQ(snap.ledger().tokens(0, 0), S * H);

  // Retained tokens over the budget: refused before the cache changes, with the CPU cache's message.
  using P = cache_policy<eviction::h2o, budget::uniform, retention::scales>;
  const P p(eviction::h2o{}, budget::uniform{{0.0, 2}}, retention::scales{{0, 2, 0, false}});
  DeviceCompressedCache<P> c(geo, sched, batch, kDTypes, p);
  c.commit(0, 0, kv(1), kv(1), ks(c.capacity(0) + 1));
  expect_error([&] { c.commit(1, 0, kv(4), kv(4), ks(c.capacity(0) + 4)); },
               "step 1, layer 0, seq 0, head 0: 5 retained tokens exceed the budget of 2");
  EXPECT_EQ(c.lengths(0)[0], 1);
  const auto pos = c.layer(0).download_positions();
  EXPECT_EQ(pos[0], 0);
  EXPECT_EQ(pos[1], -1);
}

// CPU reference attention per VAR-256 scale step (one layer of VAR-d16, one image x 2 CFG).
// Counters: FLOP/s of the 4*n_q*n_k*d multiply-adds; the CPU reference is fp64 and scalar, so this
// is the host baseline, not a speed target.
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include <varkv/varkv.hpp>

static void BM_ReferenceAttentionStep(benchmark::State& state) {
  const auto sched = varkv::schedules::var_256();
  const int step = static_cast<int>(state.range(0));
  const std::int64_t S = 2, H = 16, d = 64, n = sched.tokens(step), cap = sched.begin(step);
  std::mt19937_64 rng(1);
  std::normal_distribution<float> dist;
  auto fill = [&](std::int64_t count) {
    std::vector<float> v(count);
    for (auto& x : v) x = dist(rng) * 0.125f;
    return v;
  };
  auto q = fill(S * H * n * d), ck = fill(S * H * cap * d), cv = fill(S * H * cap * d), k = fill(S * H * n * d),
       v = fill(S * H * n * d);
  std::vector<float> out(q.size()), lse(S * H * n);
  varkv::ReferenceAttentionArgs a;
  a.q = varkv::make_view<4, const float>("q", q.data(), {S, H, n, d});
  a.cache_k = varkv::make_view<4, const float>("ck", ck.data(), {S, H, cap, d});
  a.cache_v = varkv::make_view<4, const float>("cv", cv.data(), {S, H, cap, d});
  a.new_k = varkv::make_view<4, const float>("k", k.data(), {S, H, n, d});
  a.new_v = varkv::make_view<4, const float>("v", v.data(), {S, H, n, d});
  a.softmax_scale = 1.0;
  a.out = varkv::make_view<4>("out", out.data(), {S, H, n, d});
  a.lse = varkv::make_view<3>("lse", lse.data(), {S, H, n});
  for (auto _ : state) {
    varkv::reference_attention(a);
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["FLOP/s"] = benchmark::Counter(4.0 * S * H * n * (cap + n) * d, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_ReferenceAttentionStep)->DenseRange(0, 9)->Unit(benchmark::kMillisecond);

// Plugs my::last_query into a CompressedCache and runs the first scale steps of VAR-256 on random
// Q/K/V through varkv::reference_attention, printing the cache size after every step.
#include <cmath>
#include <random>
#include <vector>

#include <fmt/core.h>

#include "last_query_eviction.hpp"
#include "varkv/cache/compressed_cache.hpp"
#include "varkv/policy/budget/uniform.hpp"

int main() {
  using Policy = varkv::cache_policy<my::last_query, varkv::budget::uniform>;
  const auto schedule = varkv::schedules::var_256();
  const varkv::ModelGeometry geometry{"toy", 2, 2, 16};
  const varkv::BatchShape batch{1, true};
  const Policy policy(my::last_query{}, varkv::budget::uniform{{0.0, 24}});  // 24 tokens per row
  varkv::CompressedCache<float, Policy> cache(geometry, schedule, batch, {varkv::DType::bf16, varkv::DType::bf16}, policy);

  std::mt19937 rng(2024);
  std::normal_distribution<float> normal;
  const int S = batch.sequences(), H = geometry.heads, d = geometry.head_dim, steps = 5;
  for (int step = 0; step < steps; ++step)
    for (int l = 0; l < geometry.layers; ++l) {
      const int n = static_cast<int>(schedule.tokens(step));
      std::vector<float> q(std::size_t(S) * H * n * d), k(q.size()), v(q.size()), out(q.size());
      for (auto* x : {&q, &k, &v})
        for (auto& e : *x) e = normal(rng);
      const auto& store = cache.layer(l);
      const std::int64_t cap = store.capacity();
      std::vector<float> lse(std::size_t(S) * H * n), key_stat(std::size_t(S) * H * (cap + n));
      const varkv::StatRequest need = cache.statistics(step, l);
      varkv::ReferenceAttentionArgs args;
      args.q = varkv::make_view<4>("q", static_cast<const float*>(q.data()), {S, H, n, d});
      args.cache_k = store.keys();
      args.cache_v = store.values();
      args.cache_len = store.lengths();
      args.new_k = varkv::make_view<4>("k", static_cast<const float*>(k.data()), {S, H, n, d});
      args.new_v = varkv::make_view<4>("v", static_cast<const float*>(v.data()), {S, H, n, d});
      args.softmax_scale = 1.0 / std::sqrt(double(d));
      args.out = varkv::make_view<4>("out", out.data(), {S, H, n, d});
      args.lse = varkv::make_view<3>("lse", lse.data(), {S, H, n});
      args.observers = need.observers;
      args.statistic = need.statistic;
      args.key_stat = varkv::make_view<3>("key_stat", key_stat.data(), {S, H, cap + n});
      varkv::reference_attention(args);
      cache.commit(step, l, args.new_k, args.new_v,
                   varkv::make_view<3>("key_stat", static_cast<const float*>(key_stat.data()), {S, H, cap + n}));
    }
  for (int step = 0; step < steps; ++step)
    fmt::print("step {}: {} tokens held over all layers/heads (full cache: {})\n", step, cache.ledger().tokens(step),
               varkv::KvLedger::full(geometry, schedule, batch, {varkv::DType::bf16, varkv::DType::bf16}).tokens(step));
  return 0;
}

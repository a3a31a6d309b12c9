// varkv-demo: exact multi-scale attention through a full KV cache on a VAR-shaped random problem.
//
// For every scale step and layer, the step's queries attend to the cached tokens of all earlier
// scales plus the step's own tokens (the CPU reference), then the step's K/V join the cache. Prints
// the time and attention statistics per step and the exact KV bytes per layer and scale.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <varkv/varkv.hpp>

namespace {

// VAR L2-normalises q and k per head; random unit vectors give realistic logit ranges.
void random_unit_rows(std::vector<float>& v, int d, std::mt19937_64& rng) {
  std::normal_distribution<float> n(0.0f, 1.0f);
  for (std::size_t r = 0; r < v.size() / d; ++r) {
    double norm = 0;
    for (int c = 0; c < d; ++c) norm += (v[r * d + c] = n(rng)) * double(v[r * d + c]);
    const float inv = static_cast<float>(1.0 / std::sqrt(norm));
    for (int c = 0; c < d; ++c) v[r * d + c] *= inv;
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"varkv-demo: exact multi-scale attention with a full KV cache on a random VAR-shaped problem"};
  std::string model = "var-d16", schedule = "var-256", kv_dtype = "bf16";
  int images = 1;
  std::uint64_t seed = 0;
  double logit_scale = 8.0;
  app.add_option("--model", model, "geometry: var-dN, infinity-2b, infinity-8b")->capture_default_str();
  app.add_option("--schedule", schedule, "scale schedule: var-256, var-512, infinity-1024")->capture_default_str();
  app.add_option("--images", images, "images per batch (CFG doubles the sequences)")->capture_default_str();
  app.add_option("--kv-dtype", kv_dtype, "element type the KV bytes are accounted in: bf16, fp16, fp32")
      ->capture_default_str();
  app.add_option("--seed", seed, "random seed")->capture_default_str();
  app.add_option("--logit-scale", logit_scale, "softmax scale on unit q, k (VAR's learned scale is ~ln 100 max)")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  try {
    const auto geom = varkv::geometries::by_name(model);
    const auto sched = varkv::schedules::by_name(schedule);
    const varkv::BatchShape batch{images, true};
    batch.validate();
    const int S = batch.sequences(), H = geom.heads, d = geom.head_dim;
    varkv::FullCache<float> cache(geom, sched, batch, varkv::KvDTypes::uniform(varkv::parse_dtype(kv_dtype)));
    std::mt19937_64 rng(seed);

    fmt::print("varkv-demo: {} ({} layers, {} heads of {}), schedule {} (L = {}), {} image(s) x 2 CFG\n", geom.name,
               geom.layers, H, d, sched.name(), sched.total(), images);
    fmt::print("{:>5} {:>7} {:>8} {:>9} {:>10} {:>12}\n", "step", "scale", "queries", "keys", "ms", "mean lse");
    for (int step = 0; step < sched.size(); ++step) {
      const std::int64_t n = sched.tokens(step);
      std::vector<float> q(S * H * n * d), k(q.size()), v(q.size()), out(q.size()), lse(S * H * n);
      const auto t0 = std::chrono::steady_clock::now();
      double lse_sum = 0;
      for (int l = 0; l < geom.layers; ++l) {
        random_unit_rows(q, d, rng);
        random_unit_rows(k, d, rng);
        random_unit_rows(v, d, rng);
        const auto& store = cache.layer(l);
        varkv::ReferenceAttentionArgs a;
        a.q = varkv::make_view<4, const float>("q", q.data(), {S, H, n, d});
        a.cache_k = store.keys();
        a.cache_v = store.values();
        a.cache_len = store.lengths();
        a.new_k = varkv::make_view<4, const float>("k", k.data(), {S, H, n, d});
        a.new_v = varkv::make_view<4, const float>("v", v.data(), {S, H, n, d});
        a.softmax_scale = logit_scale;
        a.out = varkv::make_view<4>("out", out.data(), {S, H, n, d});
        a.lse = varkv::make_view<3>("lse", lse.data(), {S, H, n});
        varkv::reference_attention(a);
        for (float x : lse) lse_sum += x;
        cache.commit(step, l, a.new_k, a.new_v);
      }
      const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      const auto sc = sched.scale(step);
      fmt::print("{:>5} {:>7} {:>8} {:>9} {:>10.2f} {:>12.4f}\n", step, fmt::format("{}x{}", sc.h, sc.w), n,
                 sched.end(step), ms, lse_sum / (double(lse.size()) * geom.layers));
    }
    fmt::print("\n{}", varkv::format_ledger_table(cache.ledger()));
    fmt::print("KV per image: {} ({} bytes)\n", varkv::format_bytes(cache.ledger().peak_bytes() / images),
               cache.ledger().peak_bytes() / images);
  } catch (const varkv::Error& e) {
    fmt::print(stderr, "varkv-demo: error: {}\n", e.what());
    return 2;
  }
  return 0;
}

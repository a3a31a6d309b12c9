#include "varkv_reference/generate.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "varkv/core/error.hpp"

namespace varkv::ref {

float top2_gap(std::span<const float> logits) {
  if (logits.size() < 2) return 0.0f;
  float a = -std::numeric_limits<float>::infinity(), b = a;
  for (float v : logits) {
    if (v > a) {
      b = a;
      a = v;
    } else if (v > b) {
      b = v;
    }
  }
  return a - b;
}

std::int32_t sample_token(std::span<float> logits, int top_k, double top_p, std::mt19937_64& rng) {
  const std::size_t V = logits.size();
  require(V > 0, "sampling: empty logits row");
  require(top_k >= 0, "sampling: top_k must be >= 0, got {}", top_k);
  require(top_p >= 0.0 && top_p <= 1.0, "sampling: top_p must be in [0, 1], got {}", top_p);
  if (top_k == 1) {  // greedy: first maximum
    return static_cast<std::int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  }
  const float neg_inf = -std::numeric_limits<float>::infinity();
  if (top_k > 0 && static_cast<std::size_t>(top_k) < V) {
    std::vector<float> tmp(logits.begin(), logits.end());
    std::nth_element(tmp.begin(), tmp.begin() + (top_k - 1), tmp.end(), std::greater<float>());
    const float kth = tmp[static_cast<std::size_t>(top_k - 1)];
    for (auto& v : logits)
      if (v < kth) v = neg_inf;
  }
  if (top_p > 0.0) {
    std::vector<std::int32_t> order(V);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](std::int32_t a, std::int32_t b) { return logits[a] < logits[b]; });
    const double m = logits[order.back()];
    double total = 0;
    for (float v : logits) total += std::exp(double(v) - m);
    double cum = 0;
    std::vector<bool> remove(V, false);
    for (std::size_t i = 0; i + 1 < V; ++i) {  // the largest is never removed
      cum += std::exp(double(logits[order[i]]) - m) / total;
      if (cum <= 1.0 - top_p) remove[static_cast<std::size_t>(order[i])] = true;
    }
    for (std::size_t j = 0; j < V; ++j)
      if (remove[j]) logits[j] = neg_inf;
  }
  const double m = *std::max_element(logits.begin(), logits.end());
  std::vector<double> p(V);
  double total = 0;
  for (std::size_t j = 0; j < V; ++j) total += (p[j] = std::exp(double(logits[j]) - m));
  const double u = std::uniform_real_distribution<double>(0.0, total)(rng);
  double cum = 0;
  std::size_t last = 0;
  for (std::size_t j = 0; j < V; ++j) {
    if (p[j] <= 0) continue;
    last = j;
    cum += p[j];
    if (u < cum) return static_cast<std::int32_t>(j);
  }
  return static_cast<std::int32_t>(last);  // u rounded up to total
}

std::vector<float> guide_logits(std::span<const float> logits, int B, std::int64_t row_values, double t) {
  require(static_cast<std::int64_t>(logits.size()) == 2 * std::int64_t{B} * row_values,
          "CFG: logits hold {} values, expected 2 x {} x {}", logits.size(), B, row_values);
  // torch: (1 + t) * cond - t * uncond with Python-float scalars applied to fp32 tensors.
  const float a = static_cast<float>(1.0 + t), bt = static_cast<float>(t);
  const std::int64_t half = std::int64_t{B} * row_values;
  std::vector<float> g(static_cast<std::size_t>(half));
  for (std::int64_t i = 0; i < half; ++i) {
    const float c = a * logits[i];
    const float u = bt * logits[half + i];
    g[i] = c - u;
  }
  return g;
}

namespace detail {
void validate_request(const VarModel& var, const VqVae& vae, const GenerationRequest& req) {
  const VarConfig& cfg = var.config();
  require(!req.labels.empty(), "generation: no class labels given");
  for (int label : req.labels)
    require(label >= 0 && label < cfg.num_classes, "generation: class {} is outside 0..{}", label, cfg.num_classes - 1);
  require(std::isfinite(req.cfg) && req.cfg >= 0, "generation: cfg must be finite and >= 0, got {}", req.cfg);
  require(req.top_k >= 0, "generation: top_k must be >= 0, got {}", req.top_k);
  require(req.top_p >= 0.0 && req.top_p <= 1.0, "generation: top_p must be in [0, 1], got {}", req.top_p);
  const VqVaeConfig& vc = vae.config();
  require(vc.patch_nums == cfg.patch_nums, "generation: the VQ-VAE's patch_nums differ from the transformer's");
  require(vc.Cvae == cfg.Cvae && vc.vocab == cfg.vocab,
          "generation: VQ-VAE (vocab {}, Cvae {}) does not match the transformer (vocab {}, Cvae {})", vc.vocab, vc.Cvae,
          cfg.vocab, cfg.Cvae);
}
}  // namespace detail

}  // namespace varkv::ref

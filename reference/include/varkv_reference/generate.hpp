#pragma once
//! \file
//! VAR's class-conditional generation (official `autoregressive_infer_cfg`) through any varkv cache.
//!
//! \par Overview
//! Per scale si: the token map of 2B sequences (B conditional, then B null-class ones) runs
//! through every block; each block's attention is `varkv::reference_attention` over the cache
//! type's kept K/V of that layer plus the scale's own K/V, after which the scale's K/V are committed
//! to the cache. The head's logits are guided, l = (1 + t) cond - t uncond with t = cfg si / (S - 1),
//! filtered (top-k, then top-p) and sampled; the tokens go through the VQ-VAE quantizer
//! (`VqVae::next_autoregressive_input`), whose output, word-embedded plus the next scale's level and
//! position embedding, is the next token map (duplicated for CFG). Finally f_hat is decoded.
//!
//! \par Cache types
//! `GenerationCache`: `layer(l)` returns a `LayerKvStore<float>` (keys(), values(), lengths()),
//! `commit(step, l, k, v)` takes the step's K/V [2B, H, n, d], `ledger()` the `KvLedger`.
//! `varkv::FullCache<float>` is one. A cache that may rank keys by attention (every
//! `varkv::CompressedCache`) adds `statistics(step, l) -> varkv::StatRequest` (needed?, observing
//! queries, statistic) and `commit(step, l, k, v, key_stat)`, key_stat [2B, H, cap + n] as
//! `reference_attention` lays it out (cap = the layer store's capacity); the loop detects that at
//! compile time and measures only when the request says `needed`.
//!
//! \par Sampling and its generator
//! top_k == 1 is greedy (argmax, ties to the lowest index). Otherwise every row is filtered as the
//! official `sample_with_top_k_top_p_` does (keep logits >= the k-th largest; then drop the
//! ascending-sorted prefix whose cumulative softmax is <= 1 - top_p, never the largest) and one
//! token is drawn from the softmax of the rest with a `std::mt19937_64` seeded with `seed`,
//! consumed row by row (scale, image, token order): deterministic for a seed, but NOT torch's
//! generator, so sampled (non-greedy) tokens cannot equal the official code's.
//!
//! \par Snippet
//! \code
//! varkv::FullCache<float> cache(var.config().geometry(), var.config().schedule(), {.images = 2, .cfg = true},
//!                               {varkv::DType::fp32, varkv::DType::fp32});
//! auto r = varkv::ref::generate(var, vae, cache, {.labels = {3, 207}, .cfg = 1.5, .top_k = 1});
//! \endcode

#include <chrono>
#include <concepts>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <span>
#include <vector>

#include "varkv/attention/reference_attention.hpp"
#include "varkv/cache/layer_kv_store.hpp"
#include "varkv/core/kv_ledger.hpp"
#include "varkv/policy/axis.hpp"
#include "varkv_reference/var_model.hpp"
#include "varkv_reference/vqvae.hpp"

namespace varkv::ref {

struct GenerationRequest {
  std::vector<int> labels;  //!< one class per image, 0..num_classes-1
  double cfg = 1.5;
  int top_k = 900;     //!< 0: no top-k; 1: greedy
  double top_p = 0.96;  //!< 0: no top-p
  std::uint64_t seed = 0;
  bool decode = true;  //!< run the VQ-VAE decoder at the end
};

template <class C>
concept GenerationCache = requires(C& c, const C& cc, int step, int l, TensorView<const float, 4> kv) {
  { cc.layer(l) } -> std::convertible_to<const LayerKvStore<float>&>;
  c.commit(step, l, kv, kv);
  { cc.ledger() } -> std::convertible_to<const KvLedger&>;
};

template <class C>
concept ObservingCache = GenerationCache<C> && requires(C& c, int step, int l, TensorView<const float, 4> kv,
                                                        TensorView<const float, 3> stat) {
  { c.statistics(step, l) } -> std::convertible_to<StatRequest>;
  c.commit(step, l, kv, kv, stat);
};

struct ScaleProgress {
  int step = 0;
  int scales = 0;
  int side = 0;
  double seconds = 0;        //!< transformer + sampling + quantizer of this scale
  std::int64_t kv_bytes = 0;  //!< the cache's KvLedger after this step
};
using ProgressFn = std::function<void(const ScaleProgress&)>;

struct GenerationResult {
  int images = 0;
  std::vector<std::int32_t> tokens;      //!< [B, L]
  std::vector<float> f_hat;              //!< [B, Cvae, P, P]
  std::vector<float> pixels;             //!< [B, 3, 16P, 16P] in [0, 1] (empty without decode)
  int image_side = 0;
  std::vector<double> scale_seconds;     //!< per scale
  double decode_seconds = 0;
  std::vector<float> min_gap_per_scale;  //!< smallest top-1 minus top-2 guided logit per scale
};

//! Chooses a token from one row of guided logits (modified in place by the filters). See the file
//! comment for the exact rule and the generator.
std::int32_t sample_token(std::span<float> logits, int top_k, double top_p, std::mt19937_64& rng);
//! Top-1 minus top-2 of a row (0 for a single entry).
float top2_gap(std::span<const float> logits);

//! Guided logits [B, n, V] from the model's [2B, n, V]: (1 + t) cond - t uncond in fp32, as torch does.
std::vector<float> guide_logits(std::span<const float> logits, int B, std::int64_t row_values, double t);

namespace detail {
void validate_request(const VarModel& var, const VqVae& vae, const GenerationRequest& req);
}

//! Runs the whole generation; the cache must be fresh and sized for 2 x labels.size() sequences.
template <GenerationCache Cache>
GenerationResult generate(const VarModel& var, const VqVae& vae, Cache& cache, const GenerationRequest& req,
                          const ProgressFn& progress = {}) {
  using clock = std::chrono::steady_clock;
  detail::validate_request(var, vae, req);
  const VarConfig& cfg = var.config();
  const int B = static_cast<int>(req.labels.size()), N = 2 * B, S = cfg.scales(), V = cfg.vocab;
  const std::int64_t L = cfg.total_tokens();
  const int P = cfg.patch_nums.back();

  std::vector<int> labels(req.labels);
  for (int b = 0; b < B; ++b) labels.push_back(cfg.num_classes);  // null class for CFG
  const auto cond = var.class_embedding(labels);
  const Conditioning conditioning = var.condition(cond, N);
  std::vector<float> x = var.first_token_map(cond, N);

  GenerationResult r;
  r.images = B;
  r.tokens.assign(static_cast<std::size_t>(B * L), -1);
  r.f_hat.assign(static_cast<std::size_t>(B) * cfg.Cvae * P * P, 0.0f);
  std::mt19937_64 rng(req.seed);
  std::int64_t begin = 0;
  std::vector<float> lse, key_stat;

  for (int si = 0; si < S; ++si) {
    const auto t0 = clock::now();
    const int pn = cfg.patch_nums[si], n = pn * pn;
    const AttentionFn attend = [&](const AttentionStep& st) {
      const auto& store = cache.layer(st.layer);
      const std::int64_t H = st.q.shape(1), cap = store.capacity();
      lse.assign(static_cast<std::size_t>(N * H * n), 0.0f);
      ReferenceAttentionArgs a;
      a.q = st.q;
      a.cache_k = store.keys();
      a.cache_v = store.values();
      a.cache_len = store.lengths();
      a.new_k = st.k;
      a.new_v = st.v;
      a.softmax_scale = 1.0;  // q carries exp(scale_mul): attn_l2_norm attention uses scale 1
      a.out = st.out;
      a.lse = make_view<3>("lse", lse.data(), {N, H, n});
      if constexpr (ObservingCache<Cache>) {
        const StatRequest request = cache.statistics(si, st.layer);
        if (!request.needed) {
          reference_attention(a);
          cache.commit(si, st.layer, st.k, st.v);
          return;
        }
        key_stat.assign(static_cast<std::size_t>(N * H * (cap + n)), 0.0f);
        const auto stat_view = make_view<3>("key_stat", key_stat.data(), {N, H, cap + n});
        a.observers = request.observers;
        a.statistic = request.statistic;
        a.key_stat = stat_view;
        reference_attention(a);
        cache.commit(si, st.layer, st.k, st.v, TensorView<const float, 3>(stat_view));
      } else {
        reference_attention(a);
        cache.commit(si, st.layer, st.k, st.v);
      }
    };
    for (int l = 0; l < cfg.depth; ++l) var.block_forward(l, x, N, n, conditioning, attend);
    const auto logits = var.logits(x, N, n, conditioning);

    // As Python evaluates it: ratio = si / (S - 1), then t = cfg * ratio (same double rounding).
    const double ratio = S > 1 ? static_cast<double>(si) / (S - 1) : 0.0;
    const double t = req.cfg * ratio;
    auto guided = guide_logits(logits, B, std::int64_t{n} * V, t);
    std::vector<std::int32_t> tokens(static_cast<std::size_t>(B) * n);
    float gap = std::numeric_limits<float>::infinity();
    for (int b = 0; b < B; ++b)
      for (int i = 0; i < n; ++i) {
        std::span<float> row(guided.data() + (std::int64_t{b} * n + i) * V, static_cast<std::size_t>(V));
        gap = std::min(gap, top2_gap(row));
        tokens[std::size_t(b) * n + i] = sample_token(row, req.top_k, req.top_p, rng);
        r.tokens[std::size_t(b) * L + begin + i] = tokens[std::size_t(b) * n + i];
      }
    r.min_gap_per_scale.push_back(gap);

    const auto next = vae.next_autoregressive_input(si, r.f_hat, B, tokens);
    if (si + 1 < S) {
      const auto e = var.embed_scale_input(si + 1, next, B);
      x.resize(e.size() * 2);
      std::copy(e.begin(), e.end(), x.begin());
      std::copy(e.begin(), e.end(), x.begin() + static_cast<std::ptrdiff_t>(e.size()));
    }
    begin += n;
    const double sec = std::chrono::duration<double>(clock::now() - t0).count();
    r.scale_seconds.push_back(sec);
    if (progress) progress({si, S, pn, sec, cache.ledger().bytes(si)});
  }
  if (req.decode) {
    const auto t0 = clock::now();
    r.pixels = vae.decode(r.f_hat, B);
    r.image_side = 16 * P;
    r.decode_seconds = std::chrono::duration<double>(clock::now() - t0).count();
  }
  return r;
}

}  // namespace varkv::ref

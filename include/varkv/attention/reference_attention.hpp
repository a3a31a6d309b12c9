#pragma once
//! \file
//! Exact CPU attention for one scale step: the reference every kernel is tested against.
//!
//! \par Overview
//! Queries of the current scale (B, H, n_q, d) attend to [kept cache tokens ; current scale tokens],
//! with no mask (VAR inference sees every earlier scale and the whole current map). Inputs are fp32,
//! every sum is fp64. Outputs: the attention output, the natural-log log-sum-exp of each query's
//! scaled logits, and optionally one statistic per key summed over a set of observing queries (what
//! eviction policies rank keys by).
//!
//! \par Key index space of `key_stat`
//! Cache keys keep their storage slot: entry j < cap is cache slot j (0 when j >= that row's length),
//! entry cap + i is the current scale's i-th key. Kernels write the same layout, so a compaction can
//! read scores in place.
//!
//! \par Snippet
//! \code
//! varkv::ReferenceAttentionArgs a{.q = q, .cache_k = ck, .cache_v = cv, .cache_len = lens,
//!                                 .new_k = k, .new_v = v, .softmax_scale = 0.125,
//!                                 .out = out, .lse = lse};
//! varkv::reference_attention(a);
//! \endcode

#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include "varkv/core/error.hpp"
#include "varkv/core/tensor_view.hpp"

namespace varkv {

//! Which per-key statistic the observing queries accumulate.
enum class KeyStatistic : std::uint8_t {
  probability_mass,  //!< sum of softmax probabilities exp(s - lse): the papers' attention score
  logit_sum,         //!< sum of scaled logits s = scale * q.k: what ScaleKV's public code ranks by
};

struct ReferenceAttentionArgs {
  TensorView<const float, 4> q;                //!< [B, H, n_q, d]
  TensorView<const float, 4> cache_k;          //!< [B, H, cap, d]; cap may be 0
  TensorView<const float, 4> cache_v;          //!< [B, H, cap, d]
  std::span<const std::int32_t> cache_len;     //!< B*H valid lengths (row b*H+h); empty: all rows hold cap
  TensorView<const float, 4> new_k;            //!< [B, H, n_new, d]: the current scale's keys
  TensorView<const float, 4> new_v;            //!< [B, H, n_new, d]
  double softmax_scale = 0.0;                  //!< logits are softmax_scale * q.k
  TensorView<float, 4> out;                    //!< [B, H, n_q, d]
  TensorView<float, 3> lse;                    //!< [B, H, n_q], natural log
  std::span<const std::int32_t> observers;     //!< strictly increasing query indices; may be empty
  KeyStatistic statistic = KeyStatistic::probability_mass;
  TensorView<float, 3> key_stat;               //!< [B, H, cap + n_new] when observers are given
};

namespace detail {
inline void validate(const ReferenceAttentionArgs& a) {
  const std::int64_t B = a.q.shape(0), H = a.q.shape(1), nq = a.q.shape(2), d = a.q.shape(3);
  const std::int64_t cap = a.cache_k.shape(2), n_new = a.new_k.shape(2);
  require(d > 0, "reference attention: head dimension of 'q' must be positive, got {}", d);
  expect_shape("cache_k", a.cache_k, {B, H, kAnyExtent, d});
  expect_shape("cache_v", a.cache_v, {B, H, cap, d});
  expect_shape("new_k", a.new_k, {B, H, kAnyExtent, d});
  expect_shape("new_v", a.new_v, {B, H, n_new, d});
  expect_shape("out", a.out, {B, H, nq, d});
  expect_shape("lse", a.lse, {B, H, nq});
  require(std::isfinite(a.softmax_scale) && a.softmax_scale > 0,
          "reference attention: softmax_scale must be finite and positive, got {}", a.softmax_scale);
  require(a.cache_len.empty() || static_cast<std::int64_t>(a.cache_len.size()) == B * H,
          "reference attention: cache_len has {} entries, expected B*H = {}", a.cache_len.size(), B * H);
  for (std::size_t i = 0; i < a.cache_len.size(); ++i)
    require(a.cache_len[i] >= 0 && a.cache_len[i] <= cap,
            "reference attention: cache_len[{}] = {} is outside 0..{} (cache capacity)", i, a.cache_len[i], cap);
  for (std::size_t i = 0; i < a.observers.size(); ++i) {
    require(a.observers[i] >= 0 && a.observers[i] < nq, "reference attention: observer {} is query {}, outside 0..{}",
            i, a.observers[i], nq - 1);
    require(i == 0 || a.observers[i] > a.observers[i - 1],
            "reference attention: observers must be strictly increasing (entry {} is {} after {})", i,
            a.observers[i], a.observers[i - 1]);
  }
  if (!a.observers.empty()) expect_shape("key_stat", a.key_stat, {B, H, cap + n_new});
}
}  // namespace detail

//! Computes out, lse and (when observers are given) key_stat. Throws varkv::Error on any shape,
//! length or observer mismatch, and when a (sequence, head) row has no key at all.
inline void reference_attention(const ReferenceAttentionArgs& a) {
  detail::validate(a);
  const std::int64_t B = a.q.shape(0), H = a.q.shape(1), nq = a.q.shape(2), d = a.q.shape(3);
  const std::int64_t cap = a.cache_k.shape(2), n_new = a.new_k.shape(2);
  for (std::int64_t r = 0; r < B * H; ++r) {
    const std::int64_t len = a.cache_len.empty() ? cap : a.cache_len[r];
    require(len + n_new > 0, "reference attention: sequence {}, head {} has no key to attend to", r / H, r % H);
  }
  const bool stats = !a.observers.empty();

#pragma omp parallel for collapse(2) schedule(dynamic)
  for (std::int64_t b = 0; b < B; ++b) {
    for (std::int64_t h = 0; h < H; ++h) {
      const std::int64_t len = a.cache_len.empty() ? cap : a.cache_len[b * H + h];
      const std::int64_t nk = len + n_new;
      std::vector<double> logits(static_cast<std::size_t>(nk));
      std::vector<double> acc(static_cast<std::size_t>(d));
      std::vector<double> stat(stats ? static_cast<std::size_t>(nk) : 0, 0.0);
      std::size_t next_observer = 0;
      // Row pointers once per (b, h): keys j < len come from the cache, the rest from the new scale.
      std::vector<const float*> krow(static_cast<std::size_t>(nk)), vrow(static_cast<std::size_t>(nk));
      for (std::int64_t j = 0; j < nk; ++j) {
        krow[j] = j < len ? &a.cache_k(b, h, j, 0) : &a.new_k(b, h, j - len, 0);
        vrow[j] = j < len ? &a.cache_v(b, h, j, 0) : &a.new_v(b, h, j - len, 0);
      }
      const std::int64_t ks_c = a.cache_k.stride(3), ks_n = a.new_k.stride(3);
      const std::int64_t vs_c = a.cache_v.stride(3), vs_n = a.new_v.stride(3), qs = a.q.stride(3);
      for (std::int64_t i = 0; i < nq; ++i) {
        const float* qi = &a.q(b, h, i, 0);
        double m = -std::numeric_limits<double>::infinity();
        for (std::int64_t j = 0; j < nk; ++j) {
          const std::int64_t ks = j < len ? ks_c : ks_n;
          double s = 0;
          for (std::int64_t c = 0; c < d; ++c) s += static_cast<double>(qi[c * qs]) * krow[j][c * ks];
          logits[j] = s * a.softmax_scale;
          m = std::max(m, logits[j]);
        }
        double sum = 0;
        for (std::int64_t j = 0; j < nk; ++j) sum += std::exp(logits[j] - m);
        const double lse = m + std::log(sum);
        std::fill(acc.begin(), acc.end(), 0.0);
        for (std::int64_t j = 0; j < nk; ++j) {
          const double p = std::exp(logits[j] - lse);
          const std::int64_t vs = j < len ? vs_c : vs_n;
          for (std::int64_t c = 0; c < d; ++c) acc[c] += p * vrow[j][c * vs];
        }
        for (std::int64_t c = 0; c < d; ++c) a.out(b, h, i, c) = static_cast<float>(acc[c]);
        a.lse(b, h, i) = static_cast<float>(lse);
        if (stats && next_observer < a.observers.size() && a.observers[next_observer] == i) {
          ++next_observer;
          for (std::int64_t j = 0; j < nk; ++j)
            stat[j] += a.statistic == KeyStatistic::probability_mass ? std::exp(logits[j] - lse) : logits[j];
        }
      }
      if (stats) {
        for (std::int64_t j = 0; j < cap; ++j) a.key_stat(b, h, j) = j < len ? static_cast<float>(stat[j]) : 0.0f;
        for (std::int64_t j = 0; j < n_new; ++j) a.key_stat(b, h, cap + j) = static_cast<float>(stat[len + j]);
      }
    }
  }
}

}  // namespace varkv

#pragma once
//! \file
//! Fused attention of one scale step over a compacted KV cache, with optional per-key statistics.
//!
//! \par Overview
//! Queries [S, H, n_q, d] of the current scale attend to each (sequence, head) row's kept cache
//! slots [0, lengths[row]) followed by the scale's own keys [S, H, n_new, d]. The compacted storage
//! is read in place (no gather copy). bf16 in, fp32 accumulation on tensor cores, online softmax;
//! writes O in bf16 and the natural-log LSE in fp32.
//!
//! \par Kernels
//! Five kernels share this contract (`FusedAttentionArgs::kernel`). Four are warpgroup kernels
//! (wgmma, 64 query rows per warpgroup, one warpgroup's softmax under the others' MMAs) for sm_90
//! GPUs when the code is compiled for sm_90a: the streaming one (detail/fused_attention_sm90.cuh: K/V tiles
//! through cp.async rings, any key count), the resident-KV one
//! (detail/fused_attention_sm90_resident.cuh: a CTA loads its row's K/V once and runs all its query
//! tiles over it; head dim 64, at most 384 keys per row: VAR's 10% steps), the persistent one
//! (detail/fused_attention_sm90_persistent.cuh: one CTA per SM walks the rows, four warpgroups take
//! a row's query tiles while a producer warpgroup streams the next rows' Q and K/V; head dim 64,
//! 65..256 queries, no statistic: VAR's full cache at 13x13 and 16x16) and the warp-specialised
//! one (detail/fused_attention_sm90_specialized.cuh: a producer warpgroup copies, two consumer
//! warpgroups take turns on the tensor cores; 128-row query blocks, one persistent CTA per SM
//! walking them: Infinity's head dim 128).
//! `automatic` gives them every map whose statistic they support (none, or listed observers) at head
//! dim 128, and at head dim 64 every map of more than 25 queries (16 where the launch has no more
//! (sequence, head) rows than SMs): at head dim 128 with more than 192 queries the
//! warp-specialised one (measured slower at Infinity's 12x12: 144 queries pad to two 128-row CTAs);
//! at head dim 64 the resident one where the keys fit and the map has more than one 64-row tile, the
//! persistent one for 129..256 queries over more keys at two or more rows per SM, else the
//! streaming one. The warp kernel (detail/fused_attention_sm80.cuh: mma.sync m16n8k16) takes the
//! rest: small maps at head dim 64, where its work packing matters, every-query statistics, and GPUs
//! without wgmma.
//!
//! \par Work packing (warp kernel)
//! A CTA has 4 warps. A work item is 16 x MT x G query rows of one (sequence, head) row (each warp
//! holds MT m16 tiles); the G warps of an item share its K/V tiles in shared memory. Small maps
//! (n_q <= 36) use G = 1, MT = 1: a CTA serves four 16-row items, with 32-key tiles, or at head dim
//! 64 with 16-key tiles at six CTAs per SM where those pad the row less (fused_attention_warp_key_tile:
//! latency-bound launches of thousands of short rows need fewer waves); at head dim 64, rows whose
//! keys fit one tile by the host's bound (`host_lengths`, else the capacity) run without the tile
//! loop at nine (16 keys) or five (32) CTAs per SM, and a row longer on the device than that bound
//! gets NaN outputs (and no every-query statistic); larger maps use G = 4, and
//! MT = 2 (128 rows) where the padding allows, which reuses each K/V fragment for two m16 tiles.
//! One launch covers the whole step.
//!
//! \par Statistics
//! `Stats` is `NoStats` (nothing compiled in), `ObserverLogitSum` or `ObserverProbabilityMass`.
//! The per-key statistic lands in key_stat [S, H, cap + n_new], the index space of
//! `reference_attention` (entry j < cap is cache slot j, 0 past the row's length; cap + i is new
//! key i), by fp32 atomics (the launcher zeroes key_stat first, on the same stream).
//! - Listed observers (ScaleKV's 16 window queries): the same launch gets S*H extra CTAs, scheduled
//!   first, one per (sequence, head) row. For the probability mass they recompute the observers'
//!   exact LSE (pass 1: QK^T and online max/sum of just those <= 64 rows, no V) and then add
//!   exp(s - lse) per key (pass 2); for the logit sum one pass adds s. Cost O(n_obs x n_k) per row;
//!   the attention work items run exactly the NoStats code path. The resident-KV kernel, where a
//!   CTA holds all of its row's query tiles, instead computes the statistic at the CTA's end from the
//!   resident K and the row's own LSE (no second read of K, no recomputed LSE: VAR-d30 B=64 16x16
//!   10%, 16 window observers, probability mass 399 -> 329 us, logit sum 362 -> 320, NoStats 281).
//! - Every query observes (H2O): the work items accumulate it themselves: the logit sum during the
//!   main pass, the probability mass in a second sweep over K once each item knows its rows' LSE.
//! No separate O(n_q x n_k) pass over memory either way.
//!
//! \par Snippet
//! \code
//! varkv::FusedAttentionArgs a{.q = q, .cache = dev_cache.view(), .new_k = k, .new_v = v,
//!                             .softmax_scale = 1.0f, .out = o, .lse = lse};
//! varkv::fused_attention(a, stream);                                   // no statistic
//! a.observers = varkv::ObserverSet::listed({...}); a.key_stat = stat;
//! varkv::fused_attention<varkv::ObserverProbabilityMass>(a, stream);   // with statistic
//! \endcode

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string_view>
#include <span>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "varkv/attention/attention_stats.hpp"
#include "varkv/attention/detail/fused_attention_common.cuh"
#include "varkv/attention/detail/fused_attention_sm80.cuh"
#include "varkv/attention/detail/fused_attention_sm90.cuh"
#include "varkv/attention/detail/fused_attention_sm90_resident.cuh"
#include "varkv/attention/detail/fused_attention_sm90_persistent.cuh"
#include "varkv/attention/detail/fused_attention_sm90_specialized.cuh"
#include "varkv/cache/device_layer_cache.cuh"
#include "varkv/core/cuda_check.cuh"
#include "varkv/core/error.hpp"
#include "varkv/core/tensor_view.hpp"

namespace varkv {

using bf16 = __nv_bfloat16;

//! Which kernel runs a fused attention launch.
enum class AttentionKernel {
  //! where a wgmma kernel can run (and, at head dim 64, n_q > 25, or n_q > 16 where the rows S*H are
  //! no more than the SMs): at head dim 128 and n_q > 192 the warp-specialised one; the resident-KV one when n_q > 64 and its keys fit; the persistent one
  //! (no statistic) for 129..256 queries whose keys do not fit, at two rows per SM or more; else the
  //! streaming one; otherwise the warp kernel
  automatic,
  warp_mma,       //!< mma.sync kernel: any sm_80+ GPU, every statistic; `rows_per_item` applies
  warpgroup_mma,  //!< wgmma kernel: sm_90 GPU and an sm_90a build; no statistic or listed observers
  //! wgmma kernel with the row's K/V loaded once and kept in shared memory while the CTA's query
  //! tiles run over it: as warpgroup_mma, and head dim 64 with at most 384 keys per row (the longest of
  //! host_lengths, else the cache capacity, + n_new; a row longer on the device gets NaN outputs)
  warpgroup_resident_kv,
  //! warp-specialised wgmma kernel (a producer warpgroup copies, two consumer warpgroups take turns
  //! on the tensor cores; persistent CTAs walk 128-row query blocks): as warpgroup_mma; for long rows
  warpgroup_specialized,
  //! persistent wgmma kernel (one CTA per SM walks the rows; four warpgroups take a row's 64-row
  //! query tiles while a producer warpgroup streams the next rows' Q and K/V): head dim 64, 65..256
  //! queries, any number of keys, no statistic
  warpgroup_persistent,
};

//! Most keys (kept cache + new keys) per row that the resident-KV kernel holds in shared memory.
inline constexpr int kResidentKvMaxKeys = detail::fattn::sm90::ResidentConfig<64, 6>::kKeys;

//! Key-tile pairs in the persistent kernel's ring, and the most queries it takes (four 64-row tiles).
inline constexpr int kPersistentStages = 8;
inline constexpr int kPersistentMaxQueries = detail::fattn::sm90::PersistentConfig<kPersistentStages>::kMaxQueries;

//! Arguments of one fused attention launch (all pointers are device memory).
struct FusedAttentionArgs {
  TensorView<const bf16, 4> q;              //!< [S, H, n_q, d]
  DeviceLayerCacheView<bf16> cache;         //!< keys/values [S, H, cap, d], lengths [S*H] (read only)
  TensorView<const bf16, 4> new_k;          //!< [S, H, n_new, d]
  TensorView<const bf16, 4> new_v;          //!< [S, H, n_new, d]
  float softmax_scale = 0.0f;               //!< logits = softmax_scale * q.k
  TensorView<bf16, 4> out;                  //!< [S, H, n_q, d]
  TensorView<float, 3> lse;                 //!< [S, H, n_q], natural log
  ObserverSet observers{};                  //!< observing queries (statistics only)
  TensorView<float, 3> key_stat;            //!< [S, H, cap + n_new], contiguous (statistics only)
  //! Optional host copy of cache.lengths, checked against the capacity when given. Without it the
  //! kernel still never reads past a row: a row whose length is outside 0..cap gets NaN outputs.
  //! Its maximum (else the capacity) sizes the kernels that hold a row's keys whole (the resident-KV
  //! kernel; the warp kernel's one-tile rows): a row longer on the device gets NaN outputs there.
  std::span<const std::int32_t> host_lengths{};
  //! Query rows per work item: 0 picks by n_q (fused_attention_rows_per_item); 16, 32, 64 or 128 force
  //! one configuration (tuning, benchmarks, tests of every path).
  int rows_per_item = 0;
  //! Kernel choice: automatic, or one forced (tests, benchmarks). Forcing the warpgroup kernel where
  //! it cannot run is an error naming the reason.
  AttentionKernel kernel = AttentionKernel::automatic;
  //! Keys per tile: 0 picks. The warpgroup kernel: 64 or 128 (automatic: 128 at head dim 128, 64 at
  //! 64). The warp kernel (kernel = warp_mma) with 16-row items at head dim 64: 16 or 32 (automatic:
  //! fused_attention_warp_key_tile).
  int key_tile = 0;
};

namespace detail::fattn {
// Launch parameters of a validated call (`with_stat`: the statistic's output too; the caller zeroes
// it). Shared by the launcher and the tests that run one kernel configuration directly.
inline Params make_params(const FusedAttentionArgs& a, bool with_stat) {
  Params p{};
  p.q = a.q.data(); fill_strides(p.q_s, a.q);
  p.ck = a.cache.keys.data(); fill_strides(p.ck_s, a.cache.keys);
  p.cv = a.cache.values.data(); fill_strides(p.cv_s, a.cache.values);
  p.len = a.cache.lengths;
  p.nk = a.new_k.data(); fill_strides(p.nk_s, a.new_k);
  p.nv = a.new_v.data(); fill_strides(p.nv_s, a.new_v);
  p.o = a.out.data(); fill_strides(p.o_s, a.out);
  p.lse = a.lse.data(); fill_strides(p.lse_s, a.lse);
  p.S = static_cast<int>(a.q.shape(0)); p.H = static_cast<int>(a.q.shape(1)); p.nq = static_cast<int>(a.q.shape(2));
  p.cap = static_cast<int>(a.cache.keys.shape(2)); p.n_new = static_cast<int>(a.new_k.shape(2));
  p.scale = a.softmax_scale;
  p.scale_log2 = a.softmax_scale * 1.4426950408889634f;
  if (with_stat) {
    p.key_stat = a.key_stat.data();
    fill_strides(p.ks_s, a.key_stat);
  }
  return p;
}
}  // namespace detail::fattn

//! True when the warpgroup (wgmma) kernel can run on the current device: an sm_90 GPU and a binary
//! compiled for sm_90a. Cached per device; launches nothing.
inline bool fused_attention_has_warpgroup_kernel() { return detail::fattn::sm90::wgmma_available(); }

//! Query rows per work item that `fused_attention` picks for n_q queries: 16 (one warp; a CTA packs
//! four items) up to 36 queries (two or three items per (sequence, head) row: at VAR-d30 B=64, 5x5
//! 31.3 vs 34.5 us with 32-row items, 6x6 full 67.0 vs 74.5 with 64-row ones), 64 (four warps of
//! 16 rows) or 128 (four warps of 32 rows: K/V fragments reused twice, the fastest per row when the
//! padding of n_q to 128 wastes at most ~15% more rows than padding to 64). 32 (one warp of 2 x 16
//! rows) only when forced: its 188 registers allow two CTAs per SM.
inline int fused_attention_rows_per_item(std::int64_t n_q) {
  if (n_q <= 36) return 16;
  if (n_q <= 64) return 64;
  const std::int64_t pad64 = (n_q + 63) / 64 * 64, pad128 = (n_q + 127) / 128 * 128;
  return pad128 * 100 <= pad64 * 115 ? 128 : 64;
}

//! Query rows per CTA that the warpgroup kernel picks for n_q queries: 128 (two warpgroups sharing
//! each K/V tile) unless padding n_q to 128 wastes over 15% more rows than padding to 64 (13x13 =
//! 169 queries: 256 vs 192 rows); then 64 (one warpgroup, 64-key tiles).
inline int fused_attention_warpgroup_rows(std::int64_t n_q) {
  const std::int64_t pad64 = (n_q + 63) / 64 * 64, pad128 = (n_q + 127) / 128 * 128;
  return pad128 * 100 <= pad64 * 115 ? 128 : 64;
}

//! Keys per tile that the warp kernel's 16-row items (head dim 64) take for rows of up to `max_keys`
//! keys (kept cache + n_new): 16 where that pads the row less than 32 does (max_keys mod 32 in 1..16:
//! the one-tile rows of 1x1..3x3, VAR's 6x6 at 10%), else 32. Over several tiles the 16-key
//! configuration runs six CTAs (24 warps) per SM instead of four, so a launch of thousands of short
//! rows needs fewer waves (VAR-d30 B=64 x2 6x6 at 10%: 45.3 -> 38.6 us in graphs); where both pad
//! alike the 32-key tiles' fewer steps win (4x4 at 10%, 17 keys: 12.0 vs 13.0 us). Rows that fit one
//! tile take the loop-free configurations of either size instead (nine / five CTAs per SM: 1x1 10.5
//! -> 6.7 us). Head dim 128: 32 (the warp kernel there serves forced and every-query launches only).
inline int fused_attention_warp_key_tile(std::int64_t d, std::int64_t max_keys) {
  return d == 64 && (max_keys + 15) / 16 * 16 < (max_keys + 31) / 32 * 32 ? 16 : 32;
}

//! Runs one scale step's attention (and the statistic `Stats`) on `stream`. Validates every shape,
//! stride, alignment, head_dim (64 or 128), observer and (when given) length; throws varkv::Error
//! naming the bad argument and launches nothing in that case.
template <class Stats = NoStats>
void fused_attention(const FusedAttentionArgs& a, cudaStream_t stream = nullptr) {
  const std::int64_t S = a.q.shape(0), H = a.q.shape(1), nq = a.q.shape(2), d = a.q.shape(3);
  const std::int64_t cap = a.cache.keys.shape(2), n_new = a.new_k.shape(2);
  require(d == 64 || d == 128, "fused attention: head_dim of 'q' is {}; supported: 64, 128", d);
  require(S > 0 && H > 0, "fused attention: 'q' has {} sequences and {} heads; both must be positive", S, H);
  expect_shape("cache.keys", a.cache.keys, {S, H, kAnyExtent, d});
  expect_shape("cache.values", a.cache.values, {S, H, cap, d});
  expect_shape("new_k", a.new_k, {S, H, kAnyExtent, d});
  expect_shape("new_v", a.new_v, {S, H, n_new, d});
  expect_shape("out", a.out, {S, H, nq, d});
  expect_shape("lse", a.lse, {S, H, nq});
  require(cap > 0 || n_new > 0, "fused attention: no keys at all (cache capacity 0 and n_new 0)");
  require(cap + n_new < (std::int64_t{1} << 30) && nq < (std::int64_t{1} << 30) && S * H < (std::int64_t{1} << 30),
          "fused attention: sizes too large (cap {}, n_new {}, n_q {}, rows {})", cap, n_new, nq, S * H);
  require(a.cache.lengths != nullptr, "fused attention: cache.lengths is null (it must hold S*H lengths, also for capacity 0)");
  require(std::isfinite(a.softmax_scale) && a.softmax_scale > 0.f,
          "fused attention: softmax_scale must be finite and positive, got {}", a.softmax_scale);
  detail::fattn::check_rows("q", a.q, 8);
  detail::fattn::check_rows("cache.keys", a.cache.keys, 8);
  detail::fattn::check_rows("cache.values", a.cache.values, 8);
  detail::fattn::check_rows("new_k", a.new_k, 8);
  detail::fattn::check_rows("new_v", a.new_v, 8);
  detail::fattn::check_rows("out", a.out, 8);
  expect_unit_inner_stride("lse", a.lse);
  require(a.rows_per_item == 0 || a.rows_per_item == 16 || a.rows_per_item == 32 || a.rows_per_item == 64 ||
              a.rows_per_item == 128,
          "fused attention: rows_per_item is {}; supported: 0 (automatic), 16, 32, 64, 128", a.rows_per_item);
  require(a.key_tile == 0 || a.key_tile == 16 || a.key_tile == 32 || a.key_tile == 64 || a.key_tile == 128,
          "fused attention: key_tile is {}; supported: 0 (automatic), 16, 32 (warp kernel), 64, 128 (warpgroup kernel)",
          a.key_tile);
  if (a.key_tile == 16 || a.key_tile == 32) {
    require(a.kernel == AttentionKernel::warp_mma,
            "fused attention: key_tile {} selects the warp kernel's tile; it needs kernel = warp_mma", a.key_tile);
    require(d == 64 && (a.rows_per_item ? a.rows_per_item : fused_attention_rows_per_item(nq)) == 16,
            "fused attention: key_tile {} applies to the warp kernel's 16-row items at head dim 64 (head_dim {}, "
            "rows_per_item {}, n_q {})",
            a.key_tile, d, a.rows_per_item, nq);
  }
  const bool every_query_stat = Stats::enabled && a.observers.all;
  if (a.kernel == AttentionKernel::warpgroup_mma) {
    require(a.rows_per_item == 0 || a.rows_per_item == 64 || a.rows_per_item == 128,
            "fused attention: rows_per_item is {}; the warpgroup kernel takes 0 (automatic), 64 or 128",
            a.rows_per_item);
    require(!(a.rows_per_item == 64 && a.key_tile == 128),
            "fused attention: key_tile 128 needs two warpgroups (rows_per_item 0 or 128), got rows_per_item 64");
    require(!every_query_stat,
            "fused attention: the warpgroup kernel has no every-query statistic (H2O); use the warp kernel");
    require(detail::fattn::sm90::wgmma_available(),
            "fused attention: kernel = warpgroup_mma needs an sm_90 GPU and code compiled for sm_90a");
  }
  // Longest kept cache a row can have: the host lengths' maximum when given, else the capacity.
  std::int64_t max_len = cap;
  if (!a.host_lengths.empty()) {
    max_len = 0;
    require(static_cast<std::int64_t>(a.host_lengths.size()) == S * H,
            "fused attention: host_lengths has {} entries, expected S*H = {}", a.host_lengths.size(), S * H);
    // One branch-free pass (thousands of rows at B = 64; the launch itself costs ~5 us), then the
    // offending row is looked up only when there is one.
    std::int32_t lo = a.host_lengths[0], hi = a.host_lengths[0];
    for (const std::int32_t v : a.host_lengths) {
      lo = std::min(lo, v);
      hi = std::max(hi, v);
    }
    if (lo < 0 || hi > cap || lo + n_new <= 0) {
      for (std::size_t i = 0; i < a.host_lengths.size(); ++i) {
        require(a.host_lengths[i] >= 0 && a.host_lengths[i] <= cap,
                "fused attention: cache length of row {} (seq {}, head {}) is {}, outside 0..{} (capacity)", i,
                static_cast<std::int64_t>(i) / H, static_cast<std::int64_t>(i) % H, a.host_lengths[i], cap);
        require(a.host_lengths[i] + n_new > 0, "fused attention: row {} has no key to attend to", i);
      }
    }
    max_len = hi;
  }
  if (a.kernel == AttentionKernel::warpgroup_resident_kv) {
    require(d == 64, "fused attention: the resident-KV kernel takes head_dim 64, got {}", d);
    require(max_len + n_new <= kResidentKvMaxKeys,
            "fused attention: the resident-KV kernel holds at most {} keys; {} {} + n_new {} = {}", kResidentKvMaxKeys,
            a.host_lengths.empty() ? "cache capacity (no host_lengths)" : "longest host length", max_len, n_new,
            max_len + n_new);
    require(a.rows_per_item == 0 && a.key_tile == 0,
            "fused attention: rows_per_item ({}) and key_tile ({}) do not apply to the resident-KV kernel",
            a.rows_per_item, a.key_tile);
    require(!every_query_stat,
            "fused attention: the resident-KV kernel has no every-query statistic (H2O); use the warp kernel");
    require(detail::fattn::sm90::wgmma_available(),
            "fused attention: kernel = warpgroup_resident_kv needs an sm_90 GPU and code compiled for sm_90a");
  }
  if (a.kernel == AttentionKernel::warpgroup_specialized) {
    require(a.rows_per_item == 0 && a.key_tile == 0,
            "fused attention: rows_per_item ({}) and key_tile ({}) do not apply to the warp-specialised kernel",
            a.rows_per_item, a.key_tile);
    require(!every_query_stat,
            "fused attention: the warp-specialised kernel has no every-query statistic (H2O); use the warp kernel");
    require(detail::fattn::sm90::wgmma_available(),
            "fused attention: kernel = warpgroup_specialized needs an sm_90 GPU and code compiled for sm_90a");
  }
  if (a.kernel == AttentionKernel::warpgroup_persistent) {
    require(d == 64, "fused attention: the persistent kernel takes head_dim 64, got {}", d);
    require(nq > 64 && nq <= kPersistentMaxQueries,
            "fused attention: the persistent kernel takes 65..{} queries (two to four 64-row tiles), got n_q {}",
            kPersistentMaxQueries, nq);
    require(a.rows_per_item == 0 && a.key_tile == 0,
            "fused attention: rows_per_item ({}) and key_tile ({}) do not apply to the persistent kernel",
            a.rows_per_item, a.key_tile);
    require(!Stats::enabled, "fused attention: the persistent kernel computes no statistic; use another kernel");
    require(detail::fattn::sm90::wgmma_available(),
            "fused attention: kernel = warpgroup_persistent needs an sm_90 GPU and code compiled for sm_90a");
  }
  if (a.kernel == AttentionKernel::warp_mma)
    require(a.key_tile == 0 || a.key_tile == 16 || a.key_tile == 32,
            "fused attention: key_tile {} applies to the warpgroup kernels; the warp kernel takes 16 or 32", a.key_tile);
  if constexpr (Stats::enabled) {
    require(!a.observers.empty(), "fused attention: a statistic was asked for but the observer set is empty");
    require(a.observers.count >= 0 && a.observers.count <= ObserverSet::kMaxListed,
            "fused attention: observer count {} outside 0..{}", a.observers.count, ObserverSet::kMaxListed);
    for (int i = 0; !a.observers.all && i < a.observers.count; ++i) {
      require(a.observers.index[i] >= 0 && a.observers.index[i] < nq,
              "fused attention: observer {} is query {}, outside 0..{}", i, a.observers.index[i], nq - 1);
      require(i == 0 || a.observers.index[i] > a.observers.index[i - 1],
              "fused attention: observers must be strictly increasing (entry {} is {} after {})", i,
              a.observers.index[i], a.observers.index[i - 1]);
    }
    expect_shape("key_stat", a.key_stat, {S, H, cap + n_new});
    require(a.key_stat.is_contiguous() && a.key_stat.data() != nullptr,
            "fused attention: key_stat must be a contiguous, non-null [S, H, cap + n_new] tensor");
  }
  if (nq == 0) return;

  detail::fattn::Params p = detail::fattn::make_params(a, Stats::enabled);
  if constexpr (Stats::enabled)
    VARKV_CUDA_CHECK(cudaMemsetAsync(a.key_stat.data(), 0, a.key_stat.size() * sizeof(float), stream));
  // The persistent kernel where the resident one cannot hold the keys (VAR's full cache at 13x13 and
  // 16x16): three or four query tiles per row and at least two rows per SM to overlap (VAR-d30 B=64
  // 16x16 full 528 vs 583 us on the streaming kernel, 13x13 287 vs 357; worse below three tiles or
  // with one row per SM; a tie with the resident one where that one fits).
  const bool persistent =
      a.kernel == AttentionKernel::warpgroup_persistent ||
      (!Stats::enabled && a.kernel == AttentionKernel::automatic && a.rows_per_item == 0 && a.key_tile == 0 &&
       d == 64 && nq > 128 && nq <= kPersistentMaxQueries && max_len + n_new > kResidentKvMaxKeys &&
       detail::fattn::sm90::wgmma_available() && S * H >= 2 * detail::fattn::sm90::device_sm_count());
  if (persistent) {
    detail::fattn::sm90::launch_persistent<kPersistentStages>(p, stream);
    return;
  }
  const bool resident_kv =
      a.kernel == AttentionKernel::warpgroup_resident_kv ||
      (a.kernel == AttentionKernel::automatic && a.rows_per_item == 0 && a.key_tile == 0 && d == 64 && nq > 64 &&
       max_len + n_new <= kResidentKvMaxKeys && !every_query_stat && detail::fattn::sm90::wgmma_available());
  if (resident_kv) {
    detail::fattn::sm90::launch_resident<64, 6, Stats>(p, a.observers, stream);
    return;
  }
  const bool specialized =
      a.kernel == AttentionKernel::warpgroup_specialized ||
      (a.kernel == AttentionKernel::automatic && a.rows_per_item == 0 && a.key_tile == 0 && d == 128 && nq > 192 &&
       !every_query_stat && detail::fattn::sm90::wgmma_available());
  if (specialized) {
    if (d == 64) detail::fattn::sm90::launch_specialized<64, 128, 4, Stats>(p, a.observers, stream);
    else detail::fattn::sm90::launch_specialized<128, 128, 3, Stats>(p, a.observers, stream);
    return;
  }
  // Small maps: the warp kernel packs four rows per CTA, which pays where thousands of rows fill the
  // GPU (VAR B=16/64 up to 5x5); the one-warpgroup wgmma kernel's 64-row items are quicker per row,
  // which is all that counts where the rows are fewer than the SMs (VAR B=1, 4x4..6x6: 4.0 / 6.1 /
  // 7.7 -> 3.5 / 3.6 / 4.9 us in graphs) and at head dim 128 (Infinity B=1/4 1x1..4x4: 5.3-6.2 ->
  // 4.0-5.0 us). VAR's 6x6 (36 queries) at any batch: since the last key tile runs only as wide as
  // its keys, the wgmma kernel wins there too (VAR-d30 B=64 10% / full 39.0 / 61.0 -> 37.4 / 52.4 us,
  // B=16 11.9 / 18.5 -> 8.8 / 12.3); at 5x5 it loses at B=16/64 (VAR-d30 B=64 10% 22.4 -> 31.1).
  const std::int64_t warp_kernel_max_nq =
      d == 128 ? 0 : (S * H <= detail::fattn::sm90::device_sm_count() ? 16 : 25);
  const bool warpgroup =
      a.kernel == AttentionKernel::warpgroup_mma ||
      (a.kernel == AttentionKernel::automatic && a.rows_per_item == 0 && nq > warp_kernel_max_nq && !every_query_stat &&
       detail::fattn::sm90::wgmma_available());
  if (warpgroup) {
    namespace sm90 = detail::fattn::sm90;
    const int rows = a.rows_per_item ? a.rows_per_item : fused_attention_warpgroup_rows(nq);
    if (rows == 64) {  // one warpgroup per CTA, 64 keys per tile
      // Head dim 64: three stages without alignment slack where the device allows it, four CTAs per
      // SM instead of three (VAR-d30 B=64 8x8: 64.2 -> 57.2 us at 10%, 85.4 -> 78.9 full, in graphs).
      if (d == 64 && sm90::dynamic_smem_1024_aligned(stream)) sm90::launch<64, 1, 64, 3, Stats, true>(p, a.observers, stream);
      else if (d == 64) sm90::launch<64, 1, 64, 4, Stats>(p, a.observers, stream);
      else sm90::launch<128, 1, 64, 3, Stats>(p, a.observers, stream);
      return;
    }
    const int tile = a.key_tile ? a.key_tile : static_cast<int>(d);
    if (d == 64) {
      if (tile == 64) sm90::launch<64, 2, 64, 4, Stats>(p, a.observers, stream);
      else sm90::launch<64, 2, 128, 3, Stats>(p, a.observers, stream);
    } else {
      if (tile == 64) sm90::launch<128, 2, 64, 4, Stats>(p, a.observers, stream);
      else sm90::launch<128, 2, 128, 3, Stats>(p, a.observers, stream);
    }
    return;
  }
  const int rows_per_item = a.rows_per_item ? a.rows_per_item : fused_attention_rows_per_item(nq);
  if (d == 64) {
    if (rows_per_item == 16) {
      const std::int64_t keys = max_len + n_new;
      const int tile = a.key_tile == 16 || a.key_tile == 32 ? a.key_tile : fused_attention_warp_key_tile(d, keys);
      // Rows that fit one tile (the host's bound) skip the tile loop: fewer registers, more CTAs per
      // SM (nine at 16 keys, five at 32: shared memory), one wave for VAR B=64's 3840 rows at 1x1.
      if (tile == 16 && keys <= 16) detail::fattn::launch<64, 1, 1, Stats, 16, 9, true>(p, a.observers, stream);
      else if (tile == 16) detail::fattn::launch<64, 1, 1, Stats, 16, 6>(p, a.observers, stream);
      else if (keys <= 32) detail::fattn::launch<64, 1, 1, Stats, 32, 5, true>(p, a.observers, stream);
      else detail::fattn::launch<64, 1, 1, Stats>(p, a.observers, stream);
    }
    else if (rows_per_item == 32) detail::fattn::launch<64, 1, 2, Stats>(p, a.observers, stream);
    else if (rows_per_item == 64) detail::fattn::launch<64, 4, 1, Stats>(p, a.observers, stream);
    else detail::fattn::launch<64, 4, 2, Stats>(p, a.observers, stream);
  } else {
    if (rows_per_item == 16) detail::fattn::launch<128, 1, 1, Stats>(p, a.observers, stream);
    else if (rows_per_item == 32) detail::fattn::launch<128, 1, 2, Stats>(p, a.observers, stream);
    else if (rows_per_item == 64) detail::fattn::launch<128, 4, 1, Stats>(p, a.observers, stream);
    else detail::fattn::launch<128, 4, 2, Stats>(p, a.observers, stream);
  }
}

}  // namespace varkv
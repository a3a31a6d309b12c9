#pragma once
//! \file
//! Fused attention of one scale step over a compacted KV cache, with optional per-key statistics.
//!
//! \par Overview
//! Queries [S, H, n_q, d] of the current scale attend to each (sequence, head) row's kept cache
//! slots [0, lengths[row]) followed by the scale's own keys [S, H, n_new, d]. The compacted storage
//! is read in place (no gather copy). bf16 in, fp32 accumulation on tensor cores (mma.sync
//! m16n8k16), online softmax; writes O in bf16 and the natural-log LSE in fp32.
//!
//! \par Work packing
//! A CTA has 4 warps. A work item is 16 x MT x G query rows of one (sequence, head) row (each warp
//! holds MT m16 tiles); the G warps of an item share its K/V tiles in shared memory. Small maps
//! (n_q <= 32) use G = 1, so one CTA serves four (sequence, head) rows; larger maps use G = 4, and
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
//!   the attention work items run exactly the NoStats code path.
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
#include "varkv/cache/device_layer_cache.cuh"
#include "varkv/core/cuda_check.cuh"
#include "varkv/core/error.hpp"
#include "varkv/core/tensor_view.hpp"

namespace varkv {

using bf16 = __nv_bfloat16;

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
  std::span<const std::int32_t> host_lengths{};
  //! Query rows per work item: 0 picks by n_q (fused_attention_rows_per_item); 16, 32, 64 or 128 force
  //! one configuration (tuning, benchmarks, tests of every path).
  int rows_per_item = 0;
};

namespace detail::fattn {

struct Params {
  const bf16* q; std::int64_t q_s[3];
  const bf16* ck; std::int64_t ck_s[3];
  const bf16* cv; std::int64_t cv_s[3];
  const std::int32_t* len;
  const bf16* nk; std::int64_t nk_s[3];
  const bf16* nv; std::int64_t nv_s[3];
  bf16* o; std::int64_t o_s[3];
  float* lse; std::int64_t lse_s[3];
  float* key_stat; std::int64_t ks_s[3];
  int S, H, nq, cap, n_new;
  int q_tiles;      // work items per (sequence, head) row
  int total_items;
  int obs_blocks;   // leading CTAs of the observer pass (listed observers), else 0
  float scale;      // softmax scale
  float scale_log2; // softmax scale * log2(e)
};

template <int D, int G, int MT>
struct Config {
  static constexpr int kWarps = 4;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kGroups = kWarps / G;            // work items per CTA
  static constexpr int kRows = 16 * MT * G;              // query rows per item (MT m16 tiles per warp)
  static constexpr int kBlockN = (G == 1 || (D == 128 && MT == 2)) ? 32 : 64;  // keys per tile
  static constexpr int kGroupElems = (kRows + 2 * kBlockN) * D;
  static constexpr int kSmemBytes = kGroups * kGroupElems * 2;
  static constexpr bool kQInRegisters = MT * (D / 16) * 4 <= 32;  // else re-read from shared memory
};

// Swizzled element offset of (row, 16-byte chunk): 8 consecutive rows at one chunk hit 8 distinct
// bank groups, so ldmatrix and cp.async are conflict-free.
template <int D>
__device__ __forceinline__ int swz(int row, int chunk) {
  return row * D + ((chunk ^ (row & 7)) << 3);
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int n = valid ? 16 : 0;  // 0: zero-fill, nothing read
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void ldsm_x4(unsigned (&r)[4], const void* p) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(s));
}
__device__ __forceinline__ void ldsm_x4_t(unsigned (&r)[4], const void* p) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(s));
}
__device__ __forceinline__ void mma16816(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
               "{%0,%1,%2,%3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ unsigned pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const unsigned*>(&v);
}

// Barrier over the G warps of one item: the whole CTA for G = 4, a named barrier otherwise.
template <int G>
__device__ __forceinline__ void group_sync(int group) {
  if constexpr (G == 4) {
    __syncthreads();
  } else if constexpr (G == 1) {
    __syncwarp();
  } else {
    asm volatile("bar.sync %0, %1;\n" ::"r"(group + 1), "n"(G * 32));
  }
}

// Sums one key column's statistic over the 8 row groups of an mma fragment (lanes differing in bits
// 2..4) and adds it to key_stat once per column. Key j < len is cache slot j; later keys are the new
// scale's, stored after the cache capacity (the reference's key index space).
__device__ __forceinline__ void add_key_stat_column(const Params& p, float x, int j, int nk, int len, int seq, int head,
                                                    int g) {
  x += __shfl_xor_sync(0xffffffffu, x, 4);
  x += __shfl_xor_sync(0xffffffffu, x, 8);
  x += __shfl_xor_sync(0xffffffffu, x, 16);
  if (g == 0 && j < nk) {
    const int idx = j < len ? j : p.cap + (j - len);
    atomicAdd(p.key_stat + seq * p.ks_s[0] + head * p.ks_s[1] + idx, x);
  }
}

// Listed observers: one CTA per (sequence, head) row; its 4 warps split the key tiles (warp w takes
// tiles w, w + 4, ...) for each chunk of 16 observers. Logit sum: one pass adding s per key.
// Probability mass: pass 1 recomputes the observers' exact LSE (QK^T and online max/sum only, no V;
// the warps' partial (max, sum) are merged in shared memory), pass 2 adds exp(s - lse) per key.
// Cost O(n_observers x n_k) per row, K read once or twice, and the attention work items stay
// exactly the NoStats ones.
template <int D, class Stats>
__device__ void observer_pass(const Params& p, const ObserverSet& obs, int row, unsigned char* smem) {
  constexpr int NO = 32, NT = NO / 8, DT = D / 8, KS = D / 16;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
  const int seq = row / p.H, head = row % p.H;
  const int len = p.len[row];
  if (len < 0 || len > p.cap) return;  // CTA-uniform
  const int nk = len + p.n_new, tiles = (nk + NO - 1) / NO;
  bf16* sQ = reinterpret_cast<bf16*>(smem);
  bf16* const sK0 = sQ + (16 + warp * 2 * NO) * D;  // warp-private double buffer: sK0, sK0 + NO * D
  __shared__ float s_m[4][16], s_l[4][16];
  const bf16* qb = p.q + seq * p.q_s[0] + head * p.q_s[1];
  const bf16* ckb = p.ck + seq * p.ck_s[0] + head * p.ck_s[1];
  const bf16* nkb = p.nk + seq * p.nk_s[0] + head * p.nk_s[1];
  auto issue_k = [&](int t, bf16* dst) {
    for (int i = lane; i < NO * DT; i += 32) {
      const int r = i / DT, c = i % DT, j = t * NO + r;
      const bf16* src = j < len ? ckb + j * p.ck_s[2] : nkb + (j - len) * p.nk_s[2];
      const bool ok = j < nk;
      cp_async16(dst + swz<D>(r, c), ok ? src + c * 8 : p.q, ok);
    }
    cp_commit();
  };
  // Runs body(t, tile) over this warp's tiles t = warp, warp + 4, ..., loading tile t + 4 while
  // tile t is computed (double buffer).
  auto sweep = [&](auto&& body) {
    if (warp < tiles) issue_k(warp, sK0);
    for (int it = 0, t = warp; t < tiles; ++it, t += 4) {
      const bool more = t + 4 < tiles;
      if (more) issue_k(t + 4, sK0 + ((it + 1) & 1) * NO * D);
      if (more) cp_wait<1>(); else cp_wait<0>();
      __syncwarp();
      body(t, sK0 + (it & 1) * NO * D);
      __syncwarp();  // done with this buffer before it is refilled
    }
  };
  unsigned qa[KS][4];
  auto qk = [&](float (&s)[NT][4], const bf16* sK) {
#pragma unroll
    for (int i = 0; i < NT; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < KS; ++kk)
#pragma unroll
      for (int np = 0; np < NT / 2; ++np) {
        unsigned b[4];
        ldsm_x4(b, sK + swz<D>(np * 16 + (lane & 7) + ((lane >> 4) << 3), 2 * kk + ((lane >> 3) & 1)));
        mma16816(s[2 * np], qa[kk], b[0], b[1]);
        mma16816(s[2 * np + 1], qa[kk], b[2], b[3]);
      }
  };
  for (int o0 = 0; o0 < obs.count; o0 += 16) {
    __syncthreads();  // the previous chunk's readers of sQ are done
    for (int i = threadIdx.x; i < 16 * DT; i += blockDim.x) {
      const int r = i / DT, c = i % DT, oi = o0 + r;
      const bool ok = oi < obs.count;
      cp_async16(sQ + swz<D>(r, c), ok ? qb + obs.index[oi] * p.q_s[2] + c * 8 : p.q, ok);
    }
    cp_commit();
    cp_wait<0>();
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < KS; ++kk) ldsm_x4(qa[kk], sQ + swz<D>(lane & 15, kk * 2 + (lane >> 4)));
    const bool valid[2] = {o0 + g < obs.count, o0 + g + 8 < obs.count};
    float lse2[2] = {0.f, 0.f};
    if constexpr (Stats::probabilities) {
      float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
      sweep([&](int t, const bf16* tile) {
        float s[NT][4];
        qk(s, tile);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          float mx = m[h];
#pragma unroll
          for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const bool ok = t * NO + nt * 8 + 2 * tq + e < nk;
              s[nt][2 * h + e] = ok ? s[nt][2 * h + e] * p.scale_log2 : -INFINITY;
              mx = fmaxf(mx, s[nt][2 * h + e]);
            }
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
          const float ref = mx == -INFINITY ? 0.f : mx;
          l[h] *= exp2f(m[h] - ref);
          m[h] = mx;
#pragma unroll
          for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 2; ++e) l[h] += exp2f(s[nt][2 * h + e] - ref);
        }
      });
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
        l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
        if (tq == 0) {
          s_m[warp][g + 8 * h] = m[h];
          s_l[warp][g + 8 * h] = l[h];
        }
      }
      __syncthreads();
#pragma unroll
      for (int h = 0; h < 2; ++h) {  // merge the warps' partial (max, sum) of row g + 8h
        float mx = -INFINITY;
        for (int w = 0; w < 4; ++w) mx = fmaxf(mx, s_m[w][g + 8 * h]);
        const float ref = mx == -INFINITY ? 0.f : mx;
        float sum = 0.f;
        for (int w = 0; w < 4; ++w) sum += s_l[w][g + 8 * h] * exp2f(s_m[w][g + 8 * h] - ref);
        lse2[h] = mx + __log2f(sum);
      }
    }
    sweep([&](int t, const bf16* tile) {
      float s[NT][4];
      qk(s, tile);
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float x;
          if constexpr (Stats::probabilities)
            x = (valid[0] ? exp2f(s[nt][e] * p.scale_log2 - lse2[0]) : 0.f) +
                (valid[1] ? exp2f(s[nt][2 + e] * p.scale_log2 - lse2[1]) : 0.f);
          else
            x = (valid[0] ? s[nt][e] * p.scale : 0.f) + (valid[1] ? s[nt][2 + e] * p.scale : 0.f);
          add_key_stat_column(p, x, t * NO + nt * 8 + 2 * tq + e, nk, len, seq, head, g);
        }
    });
  }
}

//! Shared memory of the observer CTAs: 16 query rows and two 32-key tiles per warp.
template <int D>
inline constexpr int kObserverSmemBytes = (16 + 4 * 2 * 32) * D * 2;

// kListed: the observers are a list, handled by the leading observer CTAs; the work items then run
// exactly the NoStats path. Otherwise (every query observes) the work items accumulate the statistic.
template <int D, int G, int MT, class Stats, bool kListed>
__global__ void __launch_bounds__(128) fused_attention_kernel(const Params p, const ObserverSet obs) {
  using C = Config<D, G, MT>;
  constexpr bool kItemLogits = Stats::logits && !kListed, kItemProbs = Stats::probabilities && !kListed;
  constexpr int N = C::kBlockN, NT = N / 8, DT = D / 8, KS = D / 16;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  if constexpr (Stats::enabled && kListed) {
    if (static_cast<int>(blockIdx.x) < p.obs_blocks) {  // first, so they overlap the attention items
      observer_pass<D, Stats>(p, obs, blockIdx.x, smem_raw);
      return;
    }
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int group = warp / G, wig = warp % G;  // warp in group
  const int gtid = wig * 32 + lane;            // thread in group
  const int item = (static_cast<int>(blockIdx.x) - p.obs_blocks) * C::kGroups + group;
  if (item >= p.total_items) return;  // whole group leaves together: no barrier is shared with it
  bf16* sQ = reinterpret_cast<bf16*>(smem_raw) + group * C::kGroupElems;
  bf16* sK = sQ + C::kRows * D;
  bf16* sV = sK + N * D;

  const int row = item / p.q_tiles, q0 = (item % p.q_tiles) * C::kRows;
  const int seq = row / p.H, head = row % p.H;
  const int len_raw = p.len[row];
  const bool bad_len = len_raw < 0 || len_raw > p.cap;
  const int len = bad_len ? 0 : len_raw;
  const int nk = len + p.n_new;
  const int tiles = (nk + N - 1) / N;

  const bf16* qb = p.q + seq * p.q_s[0] + head * p.q_s[1];
  const bf16* ckb = p.ck + seq * p.ck_s[0] + head * p.ck_s[1];
  const bf16* cvb = p.cv + seq * p.cv_s[0] + head * p.cv_s[1];
  const bf16* nkb = p.nk + seq * p.nk_s[0] + head * p.nk_s[1];
  const bf16* nvb = p.nv + seq * p.nv_s[0] + head * p.nv_s[1];

  // Loads key/value tile t (rows past nk are zero-filled: P is 0 there, and 0 * garbage could be NaN).
  auto load_kv = [&](bf16* dst, const bf16* cache_base, std::int64_t cache_stride, const bf16* new_base,
                     std::int64_t new_stride, int t) {
    for (int i = gtid; i < N * DT; i += 32 * G) {
      const int r = i / DT, c = i % DT, j = t * N + r;
      const bf16* src = j < len ? cache_base + j * cache_stride : new_base + (j - len) * new_stride;
      const bool ok = j < nk;
      cp_async16(dst + swz<D>(r, c), ok ? src + c * 8 : p.q, ok);
    }
  };
  for (int i = gtid; i < C::kRows * DT; i += 32 * G) {
    const int r = i / DT, c = i % DT, qi = q0 + r;
    const bool ok = qi < p.nq;
    cp_async16(sQ + swz<D>(r, c), ok ? qb + qi * p.q_s[2] + c * 8 : p.q, ok);
  }
  if (tiles > 0) load_kv(sK, ckb, p.ck_s[2], nkb, p.nk_s[2], 0);
  cp_commit();
  if (tiles > 0) load_kv(sV, cvb, p.cv_s[2], nvb, p.nv_s[2], 0);
  cp_commit();

  const int g = lane >> 2, tq = lane & 3;
  const int wrow0 = wig * 16 * MT;  // this warp's first row in the item
  float o[MT][DT][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int i = 0; i < DT; ++i) o[mt][i][0] = o[mt][i][1] = o[mt][i][2] = o[mt][i][3] = 0.f;
  float m[MT][2], l[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) m[mt][0] = m[mt][1] = -INFINITY, l[mt][0] = l[mt][1] = 0.f;
  unsigned qa[C::kQInRegisters ? MT : 1][C::kQInRegisters ? KS : 1][4];

  [[maybe_unused]] bool obs_row[MT][2] = {};
  [[maybe_unused]] bool warp_obs = false, group_obs = false;
  if constexpr (kItemLogits || kItemProbs) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = q0 + wrow0 + mt * 16 + g + 8 * h;
        obs_row[mt][h] = r < p.nq && obs.contains(r);
      }
    warp_obs = obs.any_in(q0 + wrow0, min(q0 + wrow0 + 16 * MT, p.nq));
    group_obs = obs.any_in(q0, min(q0 + C::kRows, p.nq));
  }
  // Adds per-column values of key tile t to key_stat, summed over the warp's rows.
  [[maybe_unused]] auto add_columns = [&](float (&v)[NT][2], int t) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        float x = v[nt][e];
        add_key_stat_column(p, x, t * N + nt * 8 + 2 * tq + e, nk, len, seq, head, g);
      }
  };
  // S = Q K^T for the warp's MT x 16 rows and the N keys of the tile in `kbuf`.
  auto qk = [&](float (&s)[MT][NT][4], const bf16* kbuf, bool load_q) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int i = 0; i < NT; ++i) s[mt][i][0] = s[mt][i][1] = s[mt][i][2] = s[mt][i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < KS; ++kk) {
      unsigned qf[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        if constexpr (C::kQInRegisters) {
          if (load_q) ldsm_x4(qa[mt][kk], sQ + swz<D>(wrow0 + mt * 16 + (lane & 15), kk * 2 + (lane >> 4)));
#pragma unroll
          for (int i = 0; i < 4; ++i) qf[mt][i] = qa[mt][kk][i];
        } else {
          ldsm_x4(qf[mt], sQ + swz<D>(wrow0 + mt * 16 + (lane & 15), kk * 2 + (lane >> 4)));
        }
      }
#pragma unroll
      for (int np = 0; np < NT / 2; ++np) {
        unsigned b[4];
        ldsm_x4(b, kbuf + swz<D>(np * 16 + (lane & 7) + ((lane >> 4) << 3), 2 * kk + ((lane >> 3) & 1)));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma16816(s[mt][2 * np], qf[mt], b[0], b[1]);
          mma16816(s[mt][2 * np + 1], qf[mt], b[2], b[3]);
        }
      }
    }
  };

  for (int t = 0; t < tiles; ++t) {
    cp_wait<1>();
    group_sync<G>(group);
    float s[MT][NT][4];
    qk(s, sK, t == 0);
    group_sync<G>(group);  // every warp is done with K tile t
    const bool more = t + 1 < tiles;
    if (more) load_kv(sK, ckb, p.ck_s[2], nkb, p.nk_s[2], t + 1);
    cp_commit();

    if constexpr (kItemLogits) {
      if (warp_obs) {
        float v[NT][2] = {};
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
          for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 2; ++e)
              v[nt][e] += (obs_row[mt][0] ? s[mt][nt][e] * p.scale : 0.f) +
                          (obs_row[mt][1] ? s[mt][nt][2 + e] * p.scale : 0.f);
        add_columns(v, t);
      }
    }

    // Online softmax in the log2 domain.
    if ((t + 1) * N > nk) {  // only the last tile has keys past nk
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e)
            if (t * N + nt * 8 + 2 * tq + (e & 1) >= nk) s[mt][nt][e] = -INFINITY;
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      float mx[2] = {m[mt][0], m[mt][1]};
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float x = s[mt][nt][e] * p.scale_log2;
          s[mt][nt][e] = x;
          mx[e >> 1] = fmaxf(mx[e >> 1], x);
        }
      float alpha[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
        mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
        const float ref = mx[h] == -INFINITY ? 0.f : mx[h];
        alpha[h] = exp2f(m[mt][h] - ref);  // exp2(-inf) = 0 on the first tile
        m[mt][h] = mx[h];
        mx[h] = ref;
        l[mt][h] *= alpha[h];
      }
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float pe = exp2f(s[mt][nt][e] - mx[e >> 1]);
          s[mt][nt][e] = pe;
          l[mt][e >> 1] += pe;
        }
#pragma unroll
      for (int dt = 0; dt < DT; ++dt) {
        o[mt][dt][0] *= alpha[0]; o[mt][dt][1] *= alpha[0];
        o[mt][dt][2] *= alpha[1]; o[mt][dt][3] *= alpha[1];
      }
    }

    if (more) cp_wait<1>(); else cp_wait<0>();
    group_sync<G>(group);  // V tile t is in shared memory
#pragma unroll
    for (int kk = 0; kk < N / 16; ++kk) {
      unsigned pa[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        pa[mt][0] = pack_bf16(s[mt][2 * kk][0], s[mt][2 * kk][1]);
        pa[mt][1] = pack_bf16(s[mt][2 * kk][2], s[mt][2 * kk][3]);
        pa[mt][2] = pack_bf16(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
        pa[mt][3] = pack_bf16(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
      }
#pragma unroll
      for (int dp = 0; dp < DT / 2; ++dp) {
        unsigned b[4];
        ldsm_x4_t(b, sV + swz<D>(kk * 16 + (lane & 15), 2 * dp + (lane >> 4)));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma16816(o[mt][2 * dp], pa[mt], b[0], b[1]);
          mma16816(o[mt][2 * dp + 1], pa[mt], b[2], b[3]);
        }
      }
    }
    group_sync<G>(group);  // every warp is done with V tile t
    if (more) load_kv(sV, cvb, p.cv_s[2], nvb, p.nv_s[2], t + 1);
    cp_commit();
  }
  cp_wait<0>();

  float lse2[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float lh = l[mt][h];
      lh += __shfl_xor_sync(0xffffffffu, lh, 1);
      lh += __shfl_xor_sync(0xffffffffu, lh, 2);
      l[mt][h] = lh;
      lse2[mt][h] = bad_len ? NAN : m[mt][h] + __log2f(lh);
    }

  // Epilogue: O / l in bf16, LSE in natural log.
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int qi = q0 + wrow0 + mt * 16 + g + 8 * h;
      if (qi >= p.nq) continue;
      const float inv = bad_len ? NAN : 1.f / l[mt][h];
      bf16* orow = p.o + seq * p.o_s[0] + head * p.o_s[1] + qi * p.o_s[2];
#pragma unroll
      for (int dt = 0; dt < DT; ++dt)
        *reinterpret_cast<__nv_bfloat162*>(orow + dt * 8 + 2 * tq) =
            __floats2bfloat162_rn(o[mt][dt][2 * h] * inv, o[mt][dt][2 * h + 1] * inv);
      if (tq == 0) p.lse[seq * p.lse_s[0] + head * p.lse_s[1] + qi * p.lse_s[2]] = lse2[mt][h] * 0.6931471805599453f;
    }

  if constexpr (kItemProbs) {
    // Every query observes (H2O): a second sweep over the keys (K only) by each item, with its rows'
    // exact LSE known; double-buffered in the K and V tiles (every warp passed the main loop's last
    // barrier). Listed observers are handled by the observer CTAs instead.
    if (!group_obs || bad_len) return;
    load_kv(sK, ckb, p.ck_s[2], nkb, p.nk_s[2], 0);
    cp_commit();
    for (int t = 0; t < tiles; ++t) {
      cp_wait<0>();
      group_sync<G>(group);  // tile t landed; every warp is done with tile t - 1
      bf16* cur = (t & 1) ? sV : sK;
      if (t + 1 < tiles) load_kv((t & 1) ? sK : sV, ckb, p.ck_s[2], nkb, p.nk_s[2], t + 1);
      cp_commit();
      if (!warp_obs) continue;
      float s[MT][NT][4];
      qk(s, cur, false);
      float v[NT][2] = {};
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int e = 0; e < 2; ++e)
            v[nt][e] += (obs_row[mt][0] ? exp2f(s[mt][nt][e] * p.scale_log2 - lse2[mt][0]) : 0.f) +
                        (obs_row[mt][1] ? exp2f(s[mt][nt][2 + e] * p.scale_log2 - lse2[mt][1]) : 0.f);
      add_columns(v, t);
    }
  }
}

template <class T, int R>
void fill_strides(std::int64_t (&dst)[3], const TensorView<T, R>& v) {
  for (int i = 0; i < 3 && i < R; ++i) dst[i] = v.stride(i);
}

template <class T, int R>
void check_rows(std::string_view name, const TensorView<T, R>& v, int align_elems) {
  expect_unit_inner_stride(name, v);
  if (v.empty()) return;
  require(reinterpret_cast<std::uintptr_t>(v.data()) % 16 == 0,
          "fused attention: tensor '{}' is not 16-byte aligned (address {})", name, static_cast<const void*>(v.data()));
  for (int i = 0; i < R - 1; ++i)
    require(v.stride(i) % align_elems == 0,
            "fused attention: tensor '{}' stride {} is {} elements; rows must start on 16-byte boundaries", name, i,
            v.stride(i));
}

template <int D, int G, int MT, class Stats, bool kListed>
void launch_kernel(Params p, const ObserverSet& obs, cudaStream_t stream) {
  using C = Config<D, G, MT>;
  auto kernel = fused_attention_kernel<D, G, MT, Stats, kListed>;
  constexpr int smem = kListed ? std::max(C::kSmemBytes, kObserverSmemBytes<D>) : C::kSmemBytes;
  // Raising the dynamic shared-memory limit is cheap but not free: once per instantiation.
  static const bool attr = [&] {
    VARKV_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    return true;
  }();
  (void)attr;
  p.q_tiles = (p.nq + C::kRows - 1) / C::kRows;
  p.total_items = p.S * p.H * p.q_tiles;
  p.obs_blocks = kListed ? p.S * p.H : 0;
  const int blocks = p.obs_blocks + (p.total_items + C::kGroups - 1) / C::kGroups;
  kernel<<<blocks, C::kThreads, smem, stream>>>(p, obs);
  VARKV_CUDA_CHECK_LAUNCH("fused_attention_kernel");
}

template <int D, int G, int MT, class Stats>
void launch(const Params& p, const ObserverSet& obs, cudaStream_t stream) {
  if constexpr (Stats::enabled) {
    if (!obs.all) return launch_kernel<D, G, MT, Stats, true>(p, obs, stream);
  }
  launch_kernel<D, G, MT, Stats, false>(p, obs, stream);
}

}  // namespace detail::fattn

//! Query rows per work item that `fused_attention` picks for n_q queries: 16 (one warp; a CTA packs
//! four (sequence, head) rows), 32 (one warp of 2 x 16 rows, four rows per CTA), 64 (four warps of
//! 16 rows) or 128 (four warps of 32 rows: K/V fragments reused twice, the fastest per row when the
//! padding of n_q to 128 wastes at most ~15% more rows than padding to 64).
inline int fused_attention_rows_per_item(std::int64_t n_q) {
  if (n_q <= 16) return 16;
  if (n_q <= 32) return 32;
  if (n_q <= 64) return 64;
  const std::int64_t pad64 = (n_q + 63) / 64 * 64, pad128 = (n_q + 127) / 128 * 128;
  return pad128 * 100 <= pad64 * 115 ? 128 : 64;
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
  if (!a.host_lengths.empty()) {
    require(static_cast<std::int64_t>(a.host_lengths.size()) == S * H,
            "fused attention: host_lengths has {} entries, expected S*H = {}", a.host_lengths.size(), S * H);
    for (std::size_t i = 0; i < a.host_lengths.size(); ++i) {
      require(a.host_lengths[i] >= 0 && a.host_lengths[i] <= cap,
              "fused attention: cache length of row {} (seq {}, head {}) is {}, outside 0..{} (capacity)", i,
              static_cast<std::int64_t>(i) / H, static_cast<std::int64_t>(i) % H, a.host_lengths[i], cap);
      require(a.host_lengths[i] + n_new > 0, "fused attention: row {} has no key to attend to", i);
    }
  }
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

  detail::fattn::Params p{};
  p.q = a.q.data(); detail::fattn::fill_strides(p.q_s, a.q);
  p.ck = a.cache.keys.data(); detail::fattn::fill_strides(p.ck_s, a.cache.keys);
  p.cv = a.cache.values.data(); detail::fattn::fill_strides(p.cv_s, a.cache.values);
  p.len = a.cache.lengths;
  p.nk = a.new_k.data(); detail::fattn::fill_strides(p.nk_s, a.new_k);
  p.nv = a.new_v.data(); detail::fattn::fill_strides(p.nv_s, a.new_v);
  p.o = a.out.data(); detail::fattn::fill_strides(p.o_s, a.out);
  p.lse = a.lse.data(); detail::fattn::fill_strides(p.lse_s, a.lse);
  p.S = static_cast<int>(S); p.H = static_cast<int>(H); p.nq = static_cast<int>(nq);
  p.cap = static_cast<int>(cap); p.n_new = static_cast<int>(n_new);
  p.scale = a.softmax_scale;
  p.scale_log2 = a.softmax_scale * 1.4426950408889634f;
  if constexpr (Stats::enabled) {
    p.key_stat = a.key_stat.data();
    detail::fattn::fill_strides(p.ks_s, a.key_stat);
    VARKV_CUDA_CHECK(cudaMemsetAsync(a.key_stat.data(), 0, a.key_stat.size() * sizeof(float), stream));
  }
  const int rows_per_item = a.rows_per_item ? a.rows_per_item : fused_attention_rows_per_item(nq);
  if (d == 64) {
    if (rows_per_item == 16) detail::fattn::launch<64, 1, 1, Stats>(p, a.observers, stream);
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

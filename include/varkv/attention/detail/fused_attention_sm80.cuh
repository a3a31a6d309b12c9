#pragma once
//! \file
//! The warp-level (mma.sync m16n8k16, sm_80+) fused attention kernel (detail): FA2-style, work
//! items of 16 x MT x G query rows packed into 4-warp CTAs, K/V tiles one stage ahead by cp.async.
//! Every statistic (listed observers in leading CTAs, every-query observers in the items) and every
//! map size. See varkv/attention/fused_attention.cuh for the public entry point.

#include <algorithm>

#include "varkv/attention/detail/fused_attention_common.cuh"
#include "varkv/core/cuda_check.cuh"

namespace varkv::detail::fattn {

// BN: keys per tile (0: by D, G, MT); MINB: CTAs per SM that __launch_bounds__ asks registers for
// (above 4, Q is re-read from shared memory instead of held in registers); ONE: every row's keys fit
// one tile (the host's bound), so no tile loop and no prefetch state: 55 registers at 16 keys, nine
// CTAs per SM. A row longer on the device than that bound gets NaN outputs (and no every-query
// statistic; listed observers' CTAs read the whole row).
template <int D, int G, int MT, int BN = 0, int MINB = 1, bool ONE = false>
struct Config {
  static constexpr int kWarps = 4;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kGroups = kWarps / G;            // work items per CTA
  static constexpr int kRows = 16 * MT * G;              // query rows per item (MT m16 tiles per warp)
  static constexpr int kBlockN = BN ? BN : (G == 1 || (D == 128 && MT == 2)) ? 32 : 64;
  static_assert(kBlockN % 16 == 0 && kBlockN >= 16, "key tiles of 16-key multiples (ldmatrix x4 pairs)");
  static constexpr int kGroupElems = (kRows + 2 * kBlockN) * D;
  static constexpr int kSmemBytes = kGroups * kGroupElems * 2;
  // Re-read from shared memory where registers are scarce (high-occupancy configurations).
  static constexpr bool kQInRegisters = MT * (D / 16) * 4 <= 32 && MINB <= 4;
};

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

// kListed: the observers are a list, handled by the leading observer CTAs; the work items then run
// exactly the NoStats path. Otherwise (every query observes) the work items accumulate the statistic.
template <int D, int G, int MT, int BN, int MINB, bool ONE, class Stats, bool kListed>
__global__ void __launch_bounds__(128, MINB) fused_attention_kernel(const Params p, const ObserverSet obs) {
  using C = Config<D, G, MT, BN, MINB, ONE>;
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
  const RowOperands ro(p, row);
  const int seq = ro.seq, head = ro.head, len = ro.len, nk = ro.nk;
  const bool bad_len = ro.bad_len || (ONE && nk > N);
  const int tiles = ONE ? 1 : (nk + N - 1) / N;

  const bf16 *qb = ro.q, *ckb = ro.ck, *cvb = ro.cv, *nkb = ro.nk_base, *nvb = ro.nv_base;

  // Copies: thread gtid takes 16-byte chunk cc of rows r0, r0 + RS, ... of a tile, advancing its source
  // offsets by additions (per-row index arithmetic and 64-bit multiplies cost ~30 instructions per
  // cp.async: a third of the ~920 instructions of a VAR 1x1 item).
  // Only in one-tile items without an every-query statistic, where the copies are most of the work:
  // elsewhere the unrolled form spilled (88 bytes with the statistic, +4 at six CTAs per SM).
  constexpr bool kLeanCopy = ONE && !kItemLogits && !kItemProbs;
  constexpr int RS = 32 * G / DT;
  static_assert(32 * G % DT == 0 && N % RS == 0 && C::kRows % RS == 0, "copy layout");
  // Loads key/value tile t (rows past nk are zero-filled: P is 0 there, and 0 * garbage could be NaN).
  auto load_kv = [&](bf16* dst, const bf16* cache_base, std::int64_t cache_stride, const bf16* new_base,
                     std::int64_t new_stride, int t) {
    if constexpr (kLeanCopy) {
      // Element offsets from each source's base (formed into a pointer only for a row it holds).
      const int cc = gtid % DT, r0 = gtid / DT, j0 = t * N + r0;
      std::int64_t oc = static_cast<std::int64_t>(j0) * cache_stride + cc * 8;
      std::int64_t on = static_cast<std::int64_t>(j0 - len) * new_stride + cc * 8;
#pragma unroll
      for (int i = 0; i < N / RS; ++i) {
        const int j = j0 + i * RS;
        const bool ok = j < nk;
        cp_async16(dst + swz<D>(r0 + i * RS, cc), ok ? (j < len ? cache_base + oc : new_base + on) : p.q, ok);
        oc += RS * cache_stride;
        on += RS * new_stride;
      }
    } else {
      for (int i = gtid; i < N * DT; i += 32 * G) {
        const int r = i / DT, c = i % DT, j = t * N + r;
        const bf16* src = j < len ? cache_base + j * cache_stride : new_base + (j - len) * new_stride;
        const bool ok = j < nk;
        cp_async16(dst + swz<D>(r, c), ok ? src + c * 8 : p.q, ok);
      }
    }
  };
  if constexpr (kLeanCopy) {
    // An offset, like the K/V copy: rows past n_q would walk a pointer past the tensor.
    const int cc = gtid % DT, r0 = gtid / DT;
    std::int64_t oq = static_cast<std::int64_t>(q0 + r0) * p.q_s[2] + cc * 8;
#pragma unroll
    for (int i = 0; i < C::kRows / RS; ++i) {
      const bool ok = q0 + r0 + i * RS < p.nq;
      cp_async16(sQ + swz<D>(r0 + i * RS, cc), ok ? qb + oq : p.q, ok);
      oq += RS * p.q_s[2];
    }
  } else {
    for (int i = gtid; i < C::kRows * DT; i += 32 * G) {
      const int r = i / DT, c = i % DT, qi = q0 + r;
      const bool ok = qi < p.nq;
      cp_async16(sQ + swz<D>(r, c), ok ? qb + qi * p.q_s[2] + c * 8 : p.q, ok);
    }
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
  // Adds, per key column of tile t, f(logit, mt, h) summed over this warp's observing rows (row half
  // h of m-tile mt); f turns a raw logit into the statistic's per-query term.
  [[maybe_unused]] auto add_observer_columns = [&](const float (&s)[MT][NT][4], int t, auto&& f) {
    float v[NT][2] = {};
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e)
          v[nt][e] += (obs_row[mt][0] ? f(s[mt][nt][e], mt, 0) : 0.f) + (obs_row[mt][1] ? f(s[mt][nt][2 + e], mt, 1) : 0.f);
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 2; ++e) add_key_stat_column(p, v[nt][e], t * N + nt * 8 + 2 * tq + e, nk, len, seq, head, g);
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
    const bool more = !ONE && t + 1 < tiles;
    if (more) load_kv(sK, ckb, p.ck_s[2], nkb, p.nk_s[2], t + 1);
    cp_commit();

    if constexpr (kItemLogits) {
      if (warp_obs && !bad_len) add_observer_columns(s, t, [&](float x, int, int) { return x * p.scale; });
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
      add_observer_columns(s, t, [&](float x, int mt, int h) { return exp2f(x * p.scale_log2 - lse2[mt][h]); });
    }
  }
}

template <int D, int G, int MT, int BN, int MINB, bool ONE, class Stats, bool kListed>
void launch_kernel(Params p, const ObserverSet& obs, cudaStream_t stream) {
  using C = Config<D, G, MT, BN, MINB, ONE>;
  constexpr auto kernel = fused_attention_kernel<D, G, MT, BN, MINB, ONE, Stats, kListed>;
  constexpr int smem = kListed ? std::max(C::kSmemBytes, kObserverSmemBytes<D>) : C::kSmemBytes;
  raise_dynamic_smem_once<kernel, smem>();
  p.q_tiles = (p.nq + C::kRows - 1) / C::kRows;
  p.total_items = p.S * p.H * p.q_tiles;
  p.obs_blocks = kListed ? p.S * p.H : 0;
  const int blocks = p.obs_blocks + (p.total_items + C::kGroups - 1) / C::kGroups;
  kernel<<<blocks, C::kThreads, smem, stream>>>(p, obs);
  VARKV_CUDA_CHECK_LAUNCH("fused_attention_kernel");
}

template <int D, int G, int MT, class Stats, int BN = 0, int MINB = 1, bool ONE = false>
void launch(const Params& p, const ObserverSet& obs, cudaStream_t stream) {
  if constexpr (Stats::enabled) {
    if (!obs.all) return launch_kernel<D, G, MT, BN, MINB, ONE, Stats, true>(p, obs, stream);
  }
  launch_kernel<D, G, MT, BN, MINB, ONE, Stats, false>(p, obs, stream);
}

}  // namespace varkv::detail::fattn

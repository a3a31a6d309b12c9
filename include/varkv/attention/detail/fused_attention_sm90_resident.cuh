#pragma once
//! \file
//! The resident-KV warpgroup kernel (wgmma, sm_90a) for short key ranges (detail).
//!
//! \par Overview
//! Same contract and per-warpgroup math (`WarpgroupRows`) as the streaming warpgroup kernel
//! (fused_attention_sm90.cuh), for rows whose keys (kept cache + the scale's own) fit in shared
//! memory: VAR's 10% steps hold at most ~330 keys (ScaleKV's last: 68 kept + 256). There, the streaming kernel's CTAs (one per 64 or
//! 128 query rows) each load their row's whole K/V again (three times per row at 13x13) and each
//! pays the load latency before its first MMA, so the short steps run at half the copy ceiling.
//! Here a CTA serves `item_q_tiles` 64-row query tiles of one (sequence, head) row: K and V land once
//! in KT resident 64-key tiles; each of the two warpgroups runs the query tiles w, w + 2, ... over
//! them, each warpgroup copying its next Q tile into its one buffer once the current tile is done (the
//! SM's other CTA covers that latency; a second buffer per warpgroup measured no faster and would
//! cost a key tile: six tiles, 384 keys, at two CTAs per SM).
//!
//! \par Statistics
//! Listed observers. Where a CTA holds all of its row's query tiles (VAR-d30 B=64: every step), it
//! computes the row's statistic at its end (resident_observer_stats): logits from the resident K
//! tiles, each observer's exact LSE from the row's own output, so K is not read twice and no LSE is
//! recomputed. Otherwise (few rows, query tiles split over CTAs) leading CTAs of the same launch run
//! the observer pass (observer_pass, 8 warps), one per (sequence, head) row. A device length that
//! overflows the resident tiles gives NaN outputs and no statistic. Every-query statistics stay on
//! the warp kernel.
//!
//! \par Synchronisation
//! One cp.async group per key tile: the first query tile of each warpgroup starts on key tile 0 as
//! soon as that lands (one CTA-wide barrier per key tile, once). Later query tiles need no CTA-wide
//! barrier: a warpgroup waits for its own Q (named barrier of its 128 threads) and reads the
//! resident K/V.

#include <algorithm>
#include <cstdint>

#include "varkv/attention/detail/fused_attention_common.cuh"
#include "varkv/attention/detail/fused_attention_sm90.cuh"
#include "varkv/core/cuda_check.cuh"

namespace varkv::detail::fattn::sm90 {

//! D: head dim; KT: resident 64-key tiles (a row's kept cache + n_new must be <= 64 KT).
template <int D, int KT>
struct ResidentConfig {
  static_assert(D == 64 || D == 128, "head dim 64 or 128");
  static_assert(KT >= 1 && KT <= 8, "1 to 8 resident key tiles");
  static constexpr int kThreads = 256;  // two consumer warpgroups
  static constexpr int kBN = 64;
  static constexpr int kKeys = KT * kBN;
  static constexpr int kTileBytes = kBN * D * 2;
  static constexpr int kQBytes = 64 * D * 2;  // one query tile buffer per warpgroup
  static constexpr int kSmemBytes = 2 * KT * kTileBytes + 2 * kQBytes + 1024;
  // Two CTAs per SM where shared memory allows (228 KB per SM, 1 KB reserved per CTA): one loads
  // while the other computes.
  static constexpr int kMinBlocks = 2 * (kSmemBytes + 1024) <= 228 * 1024 ? 2 : 1;
};

#if VARKV_WGMMA_DEVICE
// cp.async.wait_group takes an immediate: waits until at most min(n, N) groups are pending.
template <int N>
__device__ __forceinline__ void cp_wait_at_most(int n) {
  if constexpr (N == 0) {
    cp_wait<0>();
  } else {
    if (n >= N) cp_wait<N>();
    else cp_wait_at_most<N - 1>(n);
  }
}
// The 128 threads of warpgroup wg (named barrier wg + 1; 0 is __syncthreads).
__device__ __forceinline__ void warpgroup_barrier(int wg) {
  // Immediate barrier ids: a register id makes ptxas reserve all 16 barriers of the CTA.
  if (wg == 0) asm volatile("bar.sync 1, 128;\n" ::: "memory");
  else asm volatile("bar.sync 2, 128;\n" ::: "memory");
}
#endif

#if VARKV_WGMMA_DEVICE
// Listed observers of the CTA's own row, once every query tile of the row is done (obs_fused: the
// CTA holds all of them): the logits come from the resident K tiles (no second read of K from
// memory) and each observer's exact LSE from this CTA's own output (no recomputation). The 8 warps
// take 32-key slabs (half a 64-key tile: the same swizzled rows), 16 observers at a time in sQo.
template <int D, class Stats, class KBuf>
__device__ void resident_observer_stats(const Params& p, const ObserverSet& obs, const RowOperands& ro, KBuf k_buf,
                                        bf16* sQo) {
  // At head dim 64 a wgmma key tile's rows are swz<D> rows (one 128-byte swizzle block per row).
  static_assert(D == 64, "the resident K tiles read as observer_qk's layout at head dim 64");
  constexpr int NO = 32, NT = NO / 8, DT = D / 8, KS = D / 16;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tq = lane & 3;
  const int nk = ro.nk, slabs = (nk + NO - 1) / NO;
  for (int o0 = 0; o0 < obs.count; o0 += 16) {
    __syncthreads();  // every query tile's wgmma reads of sQo and LSE stores (first chunk), or the last chunk's reads
    for (int i = tid; i < 16 * DT; i += blockDim.x) {
      const int r = i / DT, c = i % DT, oi = o0 + r;
      const bool ok = oi < obs.count;
      cp_async16(sQo + swz<D>(r, c), ok ? ro.q + obs.index[oi] * p.q_s[2] + c * 8 : p.q, ok);
    }
    cp_commit();
    cp_wait<0>();
    __syncthreads();
    unsigned qa[KS][4];
#pragma unroll
    for (int kk = 0; kk < KS; ++kk) ldsm_x4(qa[kk], sQo + swz<D>(lane & 15, kk * 2 + (lane >> 4)));
    const bool valid[2] = {o0 + g < obs.count, o0 + g + 8 < obs.count};
    float lse2[2] = {0.f, 0.f};
    if constexpr (Stats::probabilities) {
#pragma unroll
      for (int h = 0; h < 2; ++h)
        if (valid[h])
          lse2[h] = p.lse[ro.seq * p.lse_s[0] + ro.head * p.lse_s[1] + obs.index[o0 + g + 8 * h] * p.lse_s[2]] *
                    1.4426950408889634f;
    }
    for (int sl = warp; sl < slabs; sl += blockDim.x / 32) {
      float s[NT][4];
      observer_qk<D, NO>(s, qa, k_buf(sl >> 1) + (sl & 1) * NO * D, lane);
      add_observer_columns<Stats, NO>(p, s, valid, lse2, sl * NO, nk, ro.len, ro.seq, ro.head, g, tq);
    }
  }
}
#endif

template <int D, int KT, class Stats>
__global__ void __launch_bounds__(256, (ResidentConfig<D, KT>::kMinBlocks))
    fused_attention_wgmma_resident_kernel(const Params p, const ObserverSet obs) {
#if VARKV_WGMMA_DEVICE
  using C = ResidentConfig<D, KT>;
  constexpr int BN = C::kBN;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  unsigned char* const smem = align_smem_1024(smem_raw);
  if (leading_observer_cta<D, Stats, 8>(p, obs, smem)) return;
  const int item = static_cast<int>(blockIdx.x) - p.obs_blocks;
  const int row = item / p.q_tiles, qt0 = (item % p.q_tiles) * p.item_q_tiles;
  const int qt1 = min(qt0 + p.item_q_tiles, (p.nq + 63) / 64);
  const RowOperands ro(p, row);
  const int len = ro.len, nk = ro.nk;
  const int tiles = (nk + BN - 1) / BN;
  // The host checked 64 KT against the longest of its host lengths (or the capacity); a device length
  // that disagrees gets NaN outputs, never a write past the resident tiles. Also a row without keys.
  if (tiles == 0 || tiles > KT) {
    write_nan_rows<D>(p, ro.seq, ro.head, qt0 * 64, (qt1 - qt0) * 64);
    return;
  }

  const int tid = threadIdx.x, wg = warpgroup_index(), w4 = (tid >> 5) & 3, lane = tid & 31, g = lane >> 2,
            tq = lane & 3;
  bf16* const sK = reinterpret_cast<bf16*>(smem);
  bf16* const sV = sK + KT * BN * D;
  bf16* const sQ = sV + KT * BN * D;  // [warpgroup][buffer] 64 x D tiles
  auto k_buf = [&](int t) { return sK + t * (BN * D); };
  auto v_buf = [&](int t) { return sV + t * (BN * D); };
  bf16* const q_buf = sQ + wg * (64 * D);

  // Tiles copied in order by running addresses (KeyTileCopy), K_t with V_t.
  KeyTileCopy<D, BN, C::kThreads> kcopy(ro.ck, p.ck_s[2], ro.nk_base, p.nk_s[2], len, tid);
  KeyTileCopy<D, BN, C::kThreads> vcopy(ro.cv, p.cv_s[2], ro.nv_base, p.nv_s[2], len, tid);
  const std::uint64_t dummy = reinterpret_cast<std::uintptr_t>(p.q);
  auto load_kv = [&](int t) {  // by all 256 threads
    KeyTileCopy<D, BN, C::kThreads>::next_pair(kcopy, vcopy, k_buf(t), v_buf(t), t, tid, p, len, nk, dummy);
  };
  // Query tile qt into this warpgroup's buffer (its 128 threads only); nothing past the item.
  auto load_q = [&](int qt) {
    if (qt < qt1) copy_query_rows<D, 64, 128>(q_buf, ro.q, p.q_s[2], qt * 64, p.nq, tid & 127, p.q);
  };

  // Groups, per thread: {own first Q tile, K_0, V_0}, then {K_t, V_t} for t = 1 .. tiles-1.
  const int first = qt0 + wg;
  load_q(first);
  load_kv(0);
  cp_commit();
  for (int t = 1; t < tiles; ++t) {
    load_kv(t);
    cp_commit();
  }

  // First pass: before key tile t, its group has landed (later key tiles may still be in flight) and
  // is visible to both warpgroups.
  auto first_pass_wait = [&](int t) {
    cp_wait_at_most<KT>(tiles - 1 - t);
    fence_proxy_async();
    __syncthreads();
  };
  auto resident = [](int) {};
  WarpgroupRows<D, BN> rows;
  const std::uint64_t q_desc0 = smem_desc(q_buf, 16, 1024);
  auto q_desc = [&](int kk) { return desc_plus(q_desc0, k_step<64>(kk)); };
  int j = 0;
  for (int qt = first; qt < qt1; qt += 2, ++j) {
    if (j == 0) {
      rows.attend(tiles, nk, p.scale_log2, tq, q_desc, k_buf, v_buf, first_pass_wait);
    } else {
      cp_wait<0>();  // this query tile's Q landed
      fence_proxy_async();
      warpgroup_barrier(wg);
      rows.attend(tiles, nk, p.scale_log2, tq, q_desc, k_buf, v_buf, resident);
    }
    rows.store(p, ro.seq, ro.head, qt * 64 + w4 * 16, ro.bad_len, g, tq);
    warpgroup_barrier(wg);  // every thread's wgmma on the Q buffer completed: refill it
    load_q(qt + 2);
    cp_commit();
  }
  if (j == 0) {  // no query tile for this warpgroup: it still meets the first pass's CTA barriers
    for (int t = 0; t < tiles; ++t) first_pass_wait(t);
  }
  cp_wait<0>();
  if constexpr (Stats::enabled && D == 64) {
    if (p.obs_fused && !ro.bad_len) resident_observer_stats<D, Stats>(p, obs, ro, k_buf, sQ);
  }
#else
  (void)p;
  (void)obs;
  __trap();  // not compiled for sm_90a: the host never launches this (wgmma_available)
#endif
}

//! 64-row query tiles per CTA for a row of n_q queries: all of them (K/V loaded once per row) unless
//! that leaves fewer than two CTAs per SM; then halved (down to two, one per warpgroup).
inline int resident_item_q_tiles(int rows, int nq, int sm_count) {
  const int row_tiles = (nq + 63) / 64;
  int per = row_tiles;
  while (per > 2 && static_cast<std::int64_t>(rows) * ((row_tiles + per - 1) / per) < 2LL * sm_count)
    per = (per + 1) / 2;
  return per;
}

template <int D, int KT, class Stats>
void launch_resident(Params p, const ObserverSet& obs, cudaStream_t stream) {
  using C = ResidentConfig<D, KT>;
  constexpr auto kernel = fused_attention_wgmma_resident_kernel<D, KT, Stats>;
  constexpr int smem = Stats::enabled ? std::max(C::kSmemBytes, kObserverSmemBytes<D, 8> + 1024) : C::kSmemBytes;
  raise_dynamic_smem_once<kernel, smem>();
  p.item_q_tiles = resident_item_q_tiles(p.S * p.H, p.nq, device_sm_count());
  p.q_tiles = ((p.nq + 63) / 64 + p.item_q_tiles - 1) / p.item_q_tiles;
  p.total_items = p.S * p.H * p.q_tiles;
  // A CTA that holds all of its row's query tiles computes the row's observer statistic itself;
  // otherwise leading observer CTAs do (the observers' LSE would be another CTA's).
  p.obs_fused = Stats::enabled && D == 64 && p.item_q_tiles >= (p.nq + 63) / 64;
  p.obs_blocks = Stats::enabled && !p.obs_fused ? p.S * p.H : 0;
  kernel<<<p.obs_blocks + p.total_items, C::kThreads, smem, stream>>>(p, obs);
  VARKV_CUDA_CHECK_LAUNCH("fused_attention_wgmma_resident_kernel");
}

}  // namespace varkv::detail::fattn::sm90

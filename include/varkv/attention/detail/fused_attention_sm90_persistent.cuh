#pragma once
//! \file
//! The persistent row-streaming warpgroup kernel (wgmma, sm_90a) for VAR's short rows (detail).
//!
//! \par Overview
//! Same contract and per-warpgroup math (`WarpgroupRows`) as the other wgmma kernels, for head dim
//! 64 and maps of 65..256 queries (VAR's 10x10, 13x13 and 16x16: two to four 64-row query tiles per
//! (sequence, head) row), any number of keys. One CTA per SM walks the rows blockIdx.x,
//! blockIdx.x + gridDim.x, ...; its four consumer warpgroups take the query tiles 0..3 of the row
//! and read the row's K/V once, tile by tile, from a ring that a producer warpgroup keeps filled across
//! row boundaries. The resident-KV kernel (two CTAs per SM, each loading a whole row before its
//! first MMA and storing after its last) leaves the copy engine idle while both of an SM's CTAs
//! compute; here the next row's Q and K/V are in flight while the current row is computed, with the
//! same four warpgroups per SM. Measured (VAR-d30 B=64, graph): the full cache at 13x13 / 16x16 287 /
//! 528 us against 357 / 583 on the streaming kernel; a tie with the resident-KV kernel on the 10%
//! steps (the consumers issue-bound at 112 registers), slower at 10x10 (two warpgroups idle) and with
//! one row per SM.
//!
//! \par Pipeline
//! Producer (warpgroup 4, `setmaxnreg` down to 24 registers, the consumers up to 112): for each
//! row, its query tiles into one of two Q slots (after the consumers released the row two back),
//! then K_t and V_t into ring stage n mod STAGES (n counts the CTA's key tiles over all its rows),
//! waiting only for a stage still being read. Each thread arrives through
//! `cp.async.mbarrier.arrive.noinc`, so `full` completes when the copies land. Consumer warps arrive on
//! `empty` (one arrival per warp, after its wgmma reading the buffer completed). A warpgroup without a
//! query tile in a row (13x13: three tiles) still waits for each of the row's stages and releases it,
//! so every barrier phase counts the same 16 warps.
//!
//! \par Statistics
//! None: `automatic` takes this kernel only without a statistic (with one it keeps the resident-KV
//! kernel where the keys fit, else the streaming one).

#include <algorithm>
#include <cstdint>

#include "varkv/attention/detail/fused_attention_common.cuh"
#include "varkv/attention/detail/fused_attention_sm90.cuh"
#include "varkv/attention/detail/fused_attention_sm90_specialized.cuh"
#include "varkv/core/cuda_check.cuh"

namespace varkv::detail::fattn::sm90 {

//! STAGES: (K, V) tile pairs of 64 keys in the ring.
template <int STAGES>
struct PersistentConfig {
  static constexpr int kD = 64, kBN = 64;
  static constexpr int kConsumers = 4;                      // warpgroups = query tiles per row
  static constexpr int kThreads = kConsumers * 128 + 128;   // + a producer warpgroup
  static constexpr int kMaxQueries = kConsumers * 64;
  static constexpr int kTileBytes = kBN * kD * 2;           // 8 KB: a K or V tile, or a Q tile
  static constexpr int kQBytes = 2 * kConsumers * kTileBytes;  // two slots of four query tiles
  static constexpr int kBarriers = 4 + 3 * STAGES;          // q_full[2], q_empty[2], k_full, v_full, empty
  static constexpr int kSmemBytes = kQBytes + 2 * STAGES * kTileBytes + kBarriers * 8 + 1024;
  static_assert(kSmemBytes <= 227 * 1024, "one CTA per SM");
  static_assert(STAGES == 2 || STAGES == 4 || STAGES == 8 || STAGES == 16, "a power-of-two ring");
  // Key tile a of the CTA's stream sits in stage a mod STAGES, in that stage's phase (a / STAGES) mod 2.
  static constexpr unsigned kShift = STAGES == 2 ? 1 : STAGES == 4 ? 2 : STAGES == 8 ? 3 : 4;
  __host__ __device__ static constexpr unsigned stage(unsigned a) { return a & (STAGES - 1u); }
  __host__ __device__ static constexpr unsigned phase(unsigned a) { return (a >> kShift) & 1u; }
  // 640 threads at one CTA per SM launch with 96 registers each (a warp's registers come in units of
  // 8 per thread; 20 warps share four 16K-register sub-partitions); setmaxnreg then moves the
  // producer's to the consumers. (A lone producer warp cannot take part in setmaxnreg, and 17 warps
  // launch with 96 anyway: 94 registers and 96 bytes of spills, twice as slow.)
  static constexpr int kProducerRegs = 24;
  static constexpr int kConsumerRegs = 112;
  static_assert(128 * kProducerRegs + kConsumers * 128 * kConsumerRegs <= kThreads * 96, "register budget");
};


template <int STAGES>
__global__ void __launch_bounds__(PersistentConfig<STAGES>::kThreads, 1)
    fused_attention_wgmma_persistent_kernel(const Params p) {
#if VARKV_WGMMA_DEVICE
  using C = PersistentConfig<STAGES>;
  constexpr int D = 64, BN = 64;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  unsigned char* const smem = align_smem_1024(smem_raw);
  bf16* const sQ = reinterpret_cast<bf16*>(smem);  // [slot][warpgroup] 64 x 64 tiles
  bf16* const sK = reinterpret_cast<bf16*>(smem + C::kQBytes);
  bf16* const sV = sK + STAGES * BN * D;
  std::uint64_t* const bars = reinterpret_cast<std::uint64_t*>(smem + C::kQBytes + 2 * STAGES * C::kTileBytes);
  std::uint64_t* const q_full = bars;
  std::uint64_t* const q_empty = bars + 2;
  std::uint64_t* const k_full = bars + 4;
  std::uint64_t* const v_full = k_full + STAGES;
  std::uint64_t* const kv_empty = v_full + STAGES;
  const int rows = p.S * p.H, q_tiles = (p.nq + 63) / 64;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  if (tid < 2) {
    mbar_init(q_full + tid, 128);  // the producer's threads, once their copies landed
    mbar_init(q_empty + tid, 16);  // every consumer warp
  }
  if (tid < STAGES) {
    mbar_init(k_full + tid, 128);
    mbar_init(v_full + tid, 128);
    mbar_init(kv_empty + tid, 16);
  }
  __syncthreads();

  if (warp >= 4 * C::kConsumers) {  // producer
    setmaxnreg_dec<C::kProducerRegs>();
    const int ptid = tid - 128 * C::kConsumers;
    const std::uint64_t dummy = reinterpret_cast<std::uintptr_t>(p.q);
    unsigned it = 0, n = 0;
    for (int row = blockIdx.x; row < rows; row += gridDim.x, ++it) {
      const RowOperands ro(p, row);
      const int slot = it & 1, tiles = (ro.nk + BN - 1) / BN;
      if (it >= 2) mbar_wait(q_empty + slot, ((it >> 1) - 1) & 1u);
      for (int w = 0; w < q_tiles; ++w)
        copy_query_rows<D, 64, 128>(sQ + (slot * C::kConsumers + w) * (64 * D), ro.q, p.q_s[2], w * 64, p.nq, ptid,
                                    p.q);
      cp_async_arrive_noinc(q_full + slot);
      KeyTileCopy<D, BN, 128> kcopy(ro.ck, p.ck_s[2], ro.nk_base, p.nk_s[2], ro.len, ptid);
      KeyTileCopy<D, BN, 128> vcopy(ro.cv, p.cv_s[2], ro.nv_base, p.nv_s[2], ro.len, ptid);
      for (int t = 0; t < tiles; ++t, ++n) {
        const unsigned st = C::stage(n);
        if (n >= STAGES) mbar_wait(kv_empty + st, (C::phase(n) ^ 1u));
        kcopy.next(sK + st * (BN * D), t, ptid, p.ck_s[2], p.nk_s[2], ro.len, ro.nk, dummy);
        cp_async_arrive_noinc(k_full + st);
        vcopy.next(sV + st * (BN * D), t, ptid, p.cv_s[2], p.nv_s[2], ro.len, ro.nk, dummy);
        cp_async_arrive_noinc(v_full + st);
      }
    }
    cp_wait_all();  // no copy outlives its thread
    return;
  }

  setmaxnreg_inc<C::kConsumerRegs>();
  const int wg = warpgroup_index(), w4 = warp & 3, g = lane >> 2, tq = lane & 3;
  // Unsigned tile counters and a power-of-two ring: stage and phase are a mask and a shift (with
  // signed % and / the issue-bound consumer loop ran 2-7% slower).
  struct Hooks {
    std::uint64_t *k_full, *v_full, *kv_empty;
    unsigned n;
    int tiles, lane;
    __device__ __forceinline__ void before_issue(int t) {
      const unsigned a = n + t, b = a - 1;
      if (t < tiles) mbar_wait(k_full + C::stage(a), C::phase(a));
      if (t > 0) mbar_wait(v_full + C::stage(b), C::phase(b));
      fence_proxy_async();  // the producer's cp.async writes before this thread's wgmma reads
    }
    __device__ __forceinline__ void after_issue(int) {}
    __device__ __forceinline__ void k_read(int) {}
    __device__ __forceinline__ void v_read(int t) {  // K_t was read before V_t: the stage is free
      __syncwarp();
      if (lane == 0) mbar_arrive(kv_empty + C::stage(n + t));
    }
  };
  WarpgroupRows<D, BN> acc;
  unsigned it = 0, n = 0;
  for (int row = blockIdx.x; row < rows; row += gridDim.x, ++it) {
    const RowOperands ro(p, row);
    const int slot = it & 1, tiles = (ro.nk + BN - 1) / BN;
    mbar_wait(q_full + slot, (it >> 1) & 1u);
    if (wg < q_tiles && tiles > 0) {
      fence_proxy_async();
      const std::uint64_t q_desc0 = smem_desc(sQ + (slot * C::kConsumers + wg) * (64 * D), 16, 1024);
      auto q_desc = [&](int kk) { return desc_plus(q_desc0, k_step<64>(kk)); };
      auto k_buf = [&](int t) { return sK + C::stage(n + t) * (BN * D); };
      auto v_buf = [&](int t) { return sV + C::stage(n + t) * (BN * D); };
      Hooks hooks{k_full, v_full, kv_empty, n, tiles, lane};
      acc.attend_hooked(tiles, ro.nk, p.scale_log2, tq, q_desc, k_buf, v_buf, hooks);
      __syncwarp();
      if (lane == 0) mbar_arrive(q_empty + slot);  // this warp's wgmma reads of Q are complete
      acc.store(p, ro.seq, ro.head, wg * 64 + w4 * 16, ro.bad_len, g, tq);
    } else {
      // No query tile here (or no key in the row): release the Q slot and each of the row's stages
      // once it is filled, so that the barrier phases stay aligned.
      __syncwarp();
      if (lane == 0) mbar_arrive(q_empty + slot);
      for (int t = 0; t < tiles; ++t) {
        mbar_wait(v_full + C::stage(n + t), C::phase(n + t));
        __syncwarp();
        if (lane == 0) mbar_arrive(kv_empty + C::stage(n + t));
      }
      if (wg < q_tiles) write_nan_rows<D>(p, ro.seq, ro.head, wg * 64, 64, tid & 127, 128);
    }
    n += tiles;
  }
#else
  (void)p;
  __trap();  // not compiled for sm_90a: the host never launches this (wgmma_available)
#endif
}

template <int STAGES>
void launch_persistent(Params p, cudaStream_t stream) {
  using C = PersistentConfig<STAGES>;
  constexpr auto kernel = fused_attention_wgmma_persistent_kernel<STAGES>;
  raise_dynamic_smem_once<kernel, C::kSmemBytes>();
  const int rows = p.S * p.H;
  const int grid = std::min(rows, device_sm_count());
  kernel<<<grid, C::kThreads, C::kSmemBytes, stream>>>(p);
  VARKV_CUDA_CHECK_LAUNCH("fused_attention_wgmma_persistent_kernel");
}

}  // namespace varkv::detail::fattn::sm90

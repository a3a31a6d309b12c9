#pragma once
//! \file
//! The warp-specialised warpgroup kernel (wgmma, sm_90a) for long key ranges (detail).
//!
//! \par Overview
//! Same contract and per-warpgroup math (`WarpgroupRows`) as the streaming warpgroup kernel
//! (fused_attention_sm90.cuh), arranged as FlashAttention-3 arranges it for long rows (Infinity's
//! last scales: 4096 queries over 10,521 keys at head dim 128). A CTA is three warpgroups: a producer
//! that only copies (Q, then K and V tiles into two rings of STAGES buffers) and gives most of its
//! registers away (`setmaxnreg`), and two consumers of 64 query rows each that only compute. In the
//! streaming kernel every thread copies and a CTA-wide barrier per tile keeps both warpgroups in
//! lockstep, so their softmaxes run at the same time and the tensor cores wait for both; here the
//! consumers take turns issuing their MMAs (ping-pong: one warpgroup's softmax runs under the other's
//! MMAs) and meet the producer only through per-buffer mbarriers.
//!
//! \par Pipeline
//! The producer copies with cp.async (not TMA: a tile may straddle the row's kept cache and the
//! scale's own keys, two tensors, at any key; keys past the row are zero-filled, which a TMA box
//! over the cache could not do past `len`), in the order the consumers need them: K_0, K_1, V_0, K_2,
//! V_1, ... Each producer thread arrives on an item's `full` barrier through
//! `cp.async.mbarrier.arrive.noinc` (the arrival fires when its copies land; the thread goes on to the
//! next item at once, blocking only on the `empty` barrier of a buffer still being read), so as many
//! tiles are in flight as the rings hold. Consumers wait for `full`, fence the generic-proxy writes
//! against their async-proxy (wgmma) reads, and arrive on a buffer's `empty` barrier once the wgmma
//! reading it has completed. The copies must be lean: with the per-row source choice on every
//! cp.async (~36 instructions each) the producer executed half of the kernel's instructions and the
//! consumers' largest stall was waiting for V (producer_copy_key_tile's single-pointer path fixed it).
//!
//! \par Scheduling
//! Persistent: at most one CTA per SM, each walking the work items (128-row query blocks) c, c + G,
//! ...; the key tiles of all its items form one stream through the rings, and Q has one buffer that
//! the consumers release after their block's last S = Q K^T, so the next block's Q and first K/V
//! tiles are copied while the current block's last P V and stores run, and a grid of a few hundred
//! blocks (Infinity-2B B=4 16x16: 256) runs as one wave. Named barriers 1 and 2 order the
//! consumers' MMA issue: warpgroup 1 issues step t, lets warpgroup 2 issue its step t, which lets
//! warpgroup 1 issue step t + 1, and so on (both run the same number of steps: the same row).
//!
//! \par Statistics
//! Listed observers: leading CTAs of the same launch run the observer pass (all 12 warps).
//! Every-query statistics stay on the warp kernel.

#include <algorithm>
#include <cstdint>

#include "varkv/attention/detail/fused_attention_common.cuh"
#include "varkv/attention/detail/fused_attention_sm90.cuh"
#include "varkv/core/cuda_check.cuh"

namespace varkv::detail::fattn::sm90 {

//! D: head dim; BN: keys per tile; STAGES: buffers in the K ring and in the V ring.
template <int D, int BN, int STAGES>
struct SpecializedConfig {
  static_assert(D == 64 || D == 128, "head dim 64 or 128");
  static_assert(BN == 64 || BN == 128, "key tile of 64 or 128");
  static_assert(STAGES >= 2, "a ring of at least two buffers");
  static constexpr int kThreads = 384;  // producer + two consumer warpgroups
  static constexpr int kRows = 128;
  static constexpr int kQBytes = kRows * D * 2;
  static constexpr int kTileBytes = BN * D * 2;
  static constexpr int kBarrierBytes = (4 * STAGES + 2) * 8;  // full/empty for each K and V buffer, and for Q
  // + 1024: the window is aligned up to 1024 bytes (the 128-byte swizzle is taken from address bits).
  static constexpr int kSmemBytes = kQBytes + 2 * STAGES * kTileBytes + kBarrierBytes + 1024;
  static_assert(kSmemBytes <= 227 * 1024, "fits one CTA per SM");
  // Registers after setmaxnreg: 128 x kProducerRegs + 256 x kConsumerRegs <= 384 x 168 (the launch's
  // allocation at one CTA of 384 threads per SM).
  static constexpr int kProducerRegs = 40;
  static constexpr int kConsumerRegs = 232;
  static_assert(128 * kProducerRegs + 256 * kConsumerRegs <= 384 * 168, "register budget");
};

#if VARKV_WGMMA_DEVICE
// The producer's copies: its own form, not KeyTileCopy. Key tile t of one row's K or V into dst
// (swizzled wgmma layout) by THREADS threads; a tile wholly inside the cache or wholly inside the new
// keys (all but at most two per row) walks one source pointer, one cp.async and one 64-bit add per row,
// the others choose the source per row; keys past nk zero-filled (`dummy`: any valid address, read by
// no zero-fill copy). Measured against KeyTileCopy (one walker per tile: two live ones spill at the
// producer's 40 registers) and copy_query_rows here: Infinity-2B / 8B B=4 last scale full 4993 / 8633
// us against 5096 / 8796 in graphs (the same call).
template <int D, int BN, int THREADS>
__device__ __forceinline__ void producer_copy_key_tile(bf16* dst, const bf16* cache_base,
                                                       std::int64_t cache_stride, const bf16* new_base,
                                                       std::int64_t new_stride, int t, int len, int nk, int tid,
                                                       const bf16* dummy) {
  constexpr int DT = D / 8, kRowStep = THREADS / DT, kPerThread = BN / kRowStep;
  static_assert(THREADS % DT == 0 && kRowStep % 8 == 0 && BN % kRowStep == 0, "copy layout");
  const int c = tid % DT, r0 = tid / DT;
  const int off = swz128(BN, r0, c);  // + i * kRowStep * 64 for the i-th row
  const int j0 = t * BN;
  const bool all_cache = j0 + BN <= len, all_new = j0 >= len && j0 + BN <= nk;
  if (all_cache || all_new) {  // uniform across the CTA
    const std::int64_t stride = all_cache ? cache_stride : new_stride;
    const bf16* src =
        (all_cache ? cache_base + (j0 + r0) * cache_stride : new_base + (j0 - len + r0) * new_stride) + c * 8;
    const unsigned s0 = static_cast<unsigned>(__cvta_generic_to_shared(dst + off));
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s0 + i * kRowStep * 128), "l"(src));
      src += kRowStep * stride;
    }
    return;
  }
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    const int j = j0 + r0 + i * kRowStep;
    const bool ok = j < nk;
    const bf16* src = j < len ? cache_base + j * cache_stride : new_base + (j - len) * new_stride;
    cp_async16(dst + off + i * kRowStep * 64, ok ? src + c * 8 : dummy, ok);
  }
}

// Query rows q0 .. q0 + rows - 1 of one row (stride q_stride) into dst, swizzled as a `rows`-row wgmma
// operand, by `threads` threads starting at tid; rows at or past nq are zero-filled.
template <int D>
__device__ __forceinline__ void producer_copy_query_rows(bf16* dst, int rows, const bf16* q_base,
                                                         std::int64_t q_stride, int q0, int nq, int tid, int threads,
                                                         const bf16* dummy) {
  constexpr int DT = D / 8;
  for (int i = tid; i < rows * DT; i += threads) {
    const int r = i / DT, c = i % DT, qi = q0 + r;
    const bool ok = qi < nq;
    cp_async16(dst + swz128(rows, r, c), ok ? q_base + qi * q_stride + c * 8 : dummy, ok);
  }
}

__device__ __forceinline__ void mbar_init(std::uint64_t* bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(std::uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_u32(bar)) : "memory");
}
__device__ __forceinline__ void mbar_wait(std::uint64_t* bar, unsigned parity) {
  // Labels inside { } are local to the block: every inlined copy may reuse them.
  asm volatile(
      "{\n.reg .pred done;\n"
      "WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT;\n}\n" ::"r"(smem_u32(bar)),
      "r"(parity)
      : "memory");
}
// Arrives on `bar` once all cp.async copies this thread issued so far have landed; the thread goes
// on at once (the barrier's count includes this arrival: `noinc`).
__device__ __forceinline__ void cp_async_arrive_noinc(std::uint64_t* bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(smem_u32(bar)) : "memory");
}
__device__ __forceinline__ void cp_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}
// Named barriers 1 and 2 (0 is __syncthreads), 256 threads: one consumer warpgroup syncs, the other
// arrives. Immediate ids (a register id makes ptxas reserve all 16).
__device__ __forceinline__ void turn_wait(int wg) {
  if (wg == 1) asm volatile("bar.sync 1, 256;\n" ::: "memory");
  else asm volatile("bar.sync 2, 256;\n" ::: "memory");
}
__device__ __forceinline__ void turn_pass(int wg) {  // to the other consumer
  if (wg == 1) asm volatile("bar.arrive 2, 256;\n" ::: "memory");
  else asm volatile("bar.arrive 1, 256;\n" ::: "memory");
}
#endif

template <int D, int BN, int STAGES, class Stats>
__global__ void __launch_bounds__(384, 1) fused_attention_wgmma_specialized_kernel(const Params p, const ObserverSet obs) {
#if VARKV_WGMMA_DEVICE
  using C = SpecializedConfig<D, BN, STAGES>;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  unsigned char* const smem = align_smem_1024(smem_raw);
  if (leading_observer_cta<D, Stats, 12>(p, obs, smem)) return;
  // Persistent: CTA c takes the work items (one 128-row query block of one row) c, c + G, ... (G
  // CTAs, at most one per SM): the next item's Q and first K/V tiles are copied while the consumers
  // finish the current one, and no second wave waits for a first (Infinity-2B B=4 16x16: 256 items).
  const int cta = static_cast<int>(blockIdx.x) - p.obs_blocks, ctas = static_cast<int>(gridDim.x) - p.obs_blocks;
  bf16* const sQ = reinterpret_cast<bf16*>(smem);
  bf16* const sK0 = reinterpret_cast<bf16*>(smem + C::kQBytes);
  bf16* const sV0 = sK0 + STAGES * BN * D;
  std::uint64_t* const full_k = reinterpret_cast<std::uint64_t*>(smem + C::kQBytes + 2 * STAGES * C::kTileBytes);
  std::uint64_t* const empty_k = full_k + STAGES;
  std::uint64_t* const full_v = empty_k + STAGES;
  std::uint64_t* const empty_v = full_v + STAGES;
  std::uint64_t* const q_full = empty_v + STAGES;
  std::uint64_t* const q_empty = q_full + 1;
  // Key tile a of the CTA's stream (over all its items) sits in buffer a mod STAGES, phase (a / STAGES) mod 2.
  auto k_buf_at = [&](unsigned a) { return sK0 + (a % STAGES) * (BN * D); };
  auto v_buf_at = [&](unsigned a) { return sV0 + (a % STAGES) * (BN * D); };

  const int tid = threadIdx.x, wg = warpgroup_index();
  if (tid < STAGES) {
    mbar_init(full_k + tid, 128);   // every producer thread, once its copies landed
    mbar_init(full_v + tid, 128);
    mbar_init(empty_k + tid, 256);  // every consumer thread, once its wgmma read the buffer
    mbar_init(empty_v + tid, 256);
  }
  if (tid == 0) {
    mbar_init(q_full, 128);
    mbar_init(q_empty, 256);  // every consumer thread, once its last S = Q K^T completed
  }
  __syncthreads();

  if (wg == 0) {  // producer
    setmaxnreg_dec<C::kProducerRegs>();
    const int ptid = tid;
    unsigned nbase = 0, qi = 0;  // key tiles and query blocks copied so far
    for (int item = cta; item < p.total_items; item += ctas) {
      const RowOperands ro(p, item / p.q_tiles);
      const int tiles = (ro.nk + BN - 1) / BN, q0 = (item % p.q_tiles) * C::kRows;
      if (tiles == 0) continue;  // NaN rows, written by the consumers; nothing to copy
      // Item n: K_0, then K_{(n+1)/2} (odd n) and V_{n/2-1} (even n), last V_{tiles-1}; the consumers
      // need K_t before V_{t-1}.
      auto item_of = [&](int n, bool& is_k) {
        if (n == 0) { is_k = true; return 0; }
        if (n == 2 * tiles - 1) { is_k = false; return tiles - 1; }
        is_k = (n & 1) != 0;
        return is_k ? (n + 1) / 2 : n / 2 - 1;
      };
      for (int n = 0; n < 2 * tiles; ++n) {
        bool is_k;
        const int t = item_of(n, is_k);
        const unsigned a = nbase + t;
        if (a >= STAGES) mbar_wait((is_k ? empty_k : empty_v) + a % STAGES, ((a / STAGES) - 1) & 1);
        if (n == 0) {  // with K_0, once the consumers' last Q K^T of the previous block completed
          if (qi > 0) mbar_wait(q_empty, (qi - 1) & 1);
          producer_copy_query_rows<D>(sQ, C::kRows, ro.q, p.q_s[2], q0, p.nq, ptid, 128, p.q);
          cp_async_arrive_noinc(q_full);
        }
        if (is_k)
          producer_copy_key_tile<D, BN, 128>(k_buf_at(a), ro.ck, p.ck_s[2], ro.nk_base, p.nk_s[2], t, ro.len, ro.nk,
                                             ptid, p.q);
        else
          producer_copy_key_tile<D, BN, 128>(v_buf_at(a), ro.cv, p.cv_s[2], ro.nv_base, p.nv_s[2], t, ro.len, ro.nk,
                                             ptid, p.q);
        cp_async_arrive_noinc((is_k ? full_k : full_v) + a % STAGES);
      }
      nbase += tiles;
      ++qi;
    }
    cp_wait_all();  // no copy outlives its thread
    return;
  }

  setmaxnreg_inc<C::kConsumerRegs>();
  const int ctid = tid - 128, cw = wg - 1, w4 = (ctid >> 5) & 3, lane = ctid & 31, g = lane >> 2, tq = lane & 3;
  const std::uint64_t q_desc0 = smem_desc(sQ + cw * 64 * 64, 16, 1024);
  auto q_desc = [&](int kk) { return desc_plus(q_desc0, k_step<C::kRows>(kk)); };
  // Turns: consumer 1 issues step t, consumer 2 its step t, and so on; consumer 2 passes after its
  // last step of every block too, and consumer 1 takes that last pass after its loop (every
  // arrival is matched).
  struct Hooks {
    std::uint64_t *full_k, *full_v, *empty_k, *empty_v, *q_empty;
    unsigned nbase;
    int tiles, wg;
    __device__ __forceinline__ void before_issue(int t) {
      const unsigned a = nbase + t, b = a - 1;
      if (t < tiles) mbar_wait(full_k + a % STAGES, (a / STAGES) & 1);
      if (t > 0) mbar_wait(full_v + b % STAGES, (b / STAGES) & 1);
      fence_proxy_async();  // the producer's cp.async writes (generic proxy) before this thread's wgmma reads
      turn_wait(wg);
    }
    __device__ __forceinline__ void after_issue(int) { turn_pass(wg); }
    __device__ __forceinline__ void k_read(int t) {
      mbar_arrive(empty_k + (nbase + t) % STAGES);
      if (t == tiles - 1) mbar_arrive(q_empty);  // the block's last read of Q
    }
    __device__ __forceinline__ void v_read(int t) { mbar_arrive(empty_v + (nbase + t) % STAGES); }
  };
  if (wg == 2) turn_pass(wg);  // the first consumer goes first
  unsigned nbase = 0, qi = 0;
  WarpgroupRows<D, BN> rows;
  for (int item = cta; item < p.total_items; item += ctas) {
    const RowOperands ro(p, item / p.q_tiles);
    const int tiles = (ro.nk + BN - 1) / BN, q0 = (item % p.q_tiles) * C::kRows;
    if (tiles == 0) {  // only without host lengths: a row without keys
      write_nan_rows<D>(p, ro.seq, ro.head, q0 + cw * 64, 64, ctid & 127, 128);
      continue;
    }
    mbar_wait(q_full, qi & 1);
    Hooks hooks{full_k, full_v, empty_k, empty_v, q_empty, nbase, tiles, wg};
    rows.attend_hooked(tiles, ro.nk, p.scale_log2, tq, q_desc, [&](int t) { return k_buf_at(nbase + t); },
                       [&](int t) { return v_buf_at(nbase + t); }, hooks);
    rows.store(p, ro.seq, ro.head, q0 + cw * 64 + w4 * 16, ro.bad_len, g, tq);
    nbase += tiles;
    ++qi;
  }
  if (wg == 1) turn_wait(wg);  // consumer 2's pass after its last step (or its first, with no block)
#else
  (void)p;
  (void)obs;
  __trap();  // not compiled for sm_90a: the host never launches this (wgmma_available)
#endif
}

template <int D, int BN, int STAGES, class Stats>
void launch_specialized(Params p, const ObserverSet& obs, cudaStream_t stream) {
  using C = SpecializedConfig<D, BN, STAGES>;
  constexpr int smem = Stats::enabled ? std::max(C::kSmemBytes, kObserverSmemBytes<D, 12> + 1024) : C::kSmemBytes;
  constexpr auto kernel = fused_attention_wgmma_specialized_kernel<D, BN, STAGES, Stats>;
  raise_dynamic_smem_once<kernel, smem>();
  p.q_tiles = (p.nq + C::kRows - 1) / C::kRows;
  p.total_items = p.S * p.H * p.q_tiles;
  p.obs_blocks = Stats::enabled ? p.S * p.H : 0;
  const int ctas = std::min(p.total_items, device_sm_count());
  kernel<<<p.obs_blocks + ctas, C::kThreads, smem, stream>>>(p, obs);
  VARKV_CUDA_CHECK_LAUNCH("fused_attention_wgmma_specialized_kernel");
}

}  // namespace varkv::detail::fattn::sm90

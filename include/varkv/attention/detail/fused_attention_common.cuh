#pragma once
//! \file
//! Pieces shared by the fused attention kernels (detail): launch parameters, swizzled shared-memory
//! addressing, cp.async / ldmatrix / mma.sync wrappers, the per-key statistic reduction and the
//! listed-observer pass that both kernels run in their leading CTAs.

#include <cmath>
#include <cstdint>
#include <string_view>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "varkv/attention/attention_stats.hpp"
#include "varkv/core/cuda_check.cuh"
#include "varkv/core/error.hpp"
#include "varkv/core/tensor_view.hpp"

namespace varkv {

using bf16 = __nv_bfloat16;

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
  int item_q_tiles; // 64-row query tiles per work item (resident-KV warpgroup kernel only)
  int total_items;
  int obs_blocks;   // leading CTAs of the observer pass (listed observers), else 0
  int obs_fused;    // resident-KV kernel: each CTA computes its row's listed-observer statistic itself
  float scale;      // softmax scale
  float scale_log2; // softmax scale * log2(e)
};
// Swizzled element offset of (row, 16-byte chunk): 8 consecutive rows at one chunk hit 8 distinct
// bank groups, so ldmatrix and cp.async are conflict-free.
template <int D>
__device__ __forceinline__ int swz(int row, int chunk) {
  return row * D + ((chunk ^ (row & 7)) << 3);
}

__device__ __forceinline__ unsigned smem_u32(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
// cp.async of 16 bytes to a shared byte address from a global address; valid false: zero-fill, nothing read.
__device__ __forceinline__ void cp_async16_at(unsigned smem, std::uint64_t gmem, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem), "l"(gmem), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  cp_async16_at(smem_u32(smem), reinterpret_cast<std::uintptr_t>(gmem), valid);
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

// One (sequence, head) row of a launch: its cache length (a length outside 0..cap counts as 0 and
// flags the row, whose outputs are then NaN), its key count and the bases of its Q, cached K/V and
// new K/V rows. Both kernels start from it.
struct RowOperands {
  int seq, head, len, nk;
  bool bad_len;
  const bf16 *q, *ck, *cv, *nk_base, *nv_base;
  __device__ __forceinline__ RowOperands(const Params& p, int row) {
    seq = row / p.H;
    head = row % p.H;
    const int len_raw = p.len[row];
    bad_len = len_raw < 0 || len_raw > p.cap;
    len = bad_len ? 0 : len_raw;
    nk = len + p.n_new;
    q = p.q + seq * p.q_s[0] + head * p.q_s[1];
    ck = p.ck + seq * p.ck_s[0] + head * p.ck_s[1];
    cv = p.cv + seq * p.cv_s[0] + head * p.cv_s[1];
    nk_base = p.nk + seq * p.nk_s[0] + head * p.nk_s[1];
    nv_base = p.nv + seq * p.nv_s[0] + head * p.nv_s[1];
  }
};

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

// S = Q K^T of 16 observer rows (A fragments qa) against NO keys stored swz<D> (rows of D elements,
// 16-byte chunks XOR-swizzled by row mod 8: also the layout of a 64-key wgmma tile at head dim 64).
template <int D, int NO>
__device__ __forceinline__ void observer_qk(float (&s)[NO / 8][4], const unsigned (&qa)[D / 16][4], const bf16* sK,
                                            int lane) {
#pragma unroll
  for (int i = 0; i < NO / 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk)
#pragma unroll
    for (int np = 0; np < NO / 16; ++np) {
      unsigned b[4];
      ldsm_x4(b, sK + swz<D>(np * 16 + (lane & 7) + ((lane >> 4) << 3), 2 * kk + ((lane >> 3) & 1)));
      mma16816(s[2 * np], qa[kk], b[0], b[1]);
      mma16816(s[2 * np + 1], qa[kk], b[2], b[3]);
    }
}

// Adds NO keys' statistic (keys j0 ..) over the valid ones of 16 observer rows (logits s as
// observer_qk leaves them; lse2: each row's LSE in the log2 domain, for the probability mass).
template <class Stats, int NO>
__device__ __forceinline__ void add_observer_columns(const Params& p, const float (&s)[NO / 8][4], const bool (&valid)[2],
                                                     const float (&lse2)[2], int j0, int nk, int len, int seq,
                                                     int head, int g, int tq) {
#pragma unroll
  for (int nt = 0; nt < NO / 8; ++nt)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      float x;
      if constexpr (Stats::probabilities)
        x = (valid[0] ? exp2f(s[nt][e] * p.scale_log2 - lse2[0]) : 0.f) +
            (valid[1] ? exp2f(s[nt][2 + e] * p.scale_log2 - lse2[1]) : 0.f);
      else
        x = (valid[0] ? s[nt][e] * p.scale : 0.f) + (valid[1] ? s[nt][2 + e] * p.scale : 0.f);
      add_key_stat_column(p, x, j0 + nt * 8 + 2 * tq + e, nk, len, seq, head, g);
    }
}

// Listed observers: one CTA per (sequence, head) row; its NW warps split the key tiles (warp w takes
// tiles w, w + NW, ...) for each chunk of 16 observers. Logit sum: one pass adding s per key.
// Probability mass: pass 1 recomputes the observers' exact LSE (QK^T and online max/sum only, no V;
// the warps' partial (max, sum) are merged in shared memory), pass 2 adds exp(s - lse) per key.
// Cost O(n_observers x n_k) per row, K read once or twice, and the attention work items stay
// exactly the NoStats ones.
//! Shared memory of the observer CTAs: 16 query rows and two 32-key tiles per warp, then the warps'
//! partial (max, sum) per observer (all dynamic: a static array would add to every CTA of the
//! kernel and can cost the launch a CTA per SM).
template <int D, int NW = 4>
inline constexpr int kObserverSmemBytes = (16 + NW * 2 * 32) * D * 2 + 2 * NW * 16 * 4;

template <int D, class Stats, int NW = 4>
__device__ void observer_pass(const Params& p, const ObserverSet& obs, int row, unsigned char* smem) {
  constexpr int NO = 32, NT = NO / 8, DT = D / 8, KS = D / 16;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
  const int seq = row / p.H, head = row % p.H;
  const int len = p.len[row];
  if (len < 0 || len > p.cap) return;  // CTA-uniform
  const int nk = len + p.n_new, tiles = (nk + NO - 1) / NO;
  bf16* sQ = reinterpret_cast<bf16*>(smem);
  bf16* const sK0 = sQ + (16 + warp * 2 * NO) * D;  // warp-private double buffer: sK0, sK0 + NO * D
  float (*s_m)[16] = reinterpret_cast<float (*)[16]>(smem + (16 + NW * 2 * NO) * D * 2);
  float (*s_l)[16] = s_m + NW;
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
  // Runs body(t, tile) over this warp's tiles t = warp, warp + NW, ..., loading tile t + NW while
  // tile t is computed (double buffer).
  auto sweep = [&](auto&& body) {
    if (warp < tiles) issue_k(warp, sK0);
    for (int it = 0, t = warp; t < tiles; ++it, t += NW) {
      const bool more = t + NW < tiles;
      if (more) issue_k(t + NW, sK0 + ((it + 1) & 1) * NO * D);
      if (more) cp_wait<1>(); else cp_wait<0>();
      __syncwarp();
      body(t, sK0 + (it & 1) * NO * D);
      __syncwarp();  // done with this buffer before it is refilled
    }
  };
  unsigned qa[KS][4];
  auto qk = [&](float (&s)[NT][4], const bf16* sK) { observer_qk<D, NO>(s, qa, sK, lane); };
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
        for (int w = 0; w < NW; ++w) mx = fmaxf(mx, s_m[w][g + 8 * h]);
        const float ref = mx == -INFINITY ? 0.f : mx;
        float sum = 0.f;
        for (int w = 0; w < NW; ++w) sum += s_l[w][g + 8 * h] * exp2f(s_m[w][g + 8 * h] - ref);
        lse2[h] = mx + __log2f(sum);
      }
    }
    sweep([&](int t, const bf16* tile) {
      float s[NT][4];
      qk(s, tile);
      add_observer_columns<Stats, NO>(p, s, valid, lse2, t * NO, nk, len, seq, head, g, tq);
    });
  }
}

//! Raises Kernel's dynamic shared-memory limit to Bytes, once per (kernel, size): the attribute call
//! is cheap but not free, and launchers run once per layer and scale step.
template <auto Kernel, int Bytes>
void raise_dynamic_smem_once() {
  static const bool done = [] {
    VARKV_CUDA_CHECK(cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Bytes));
    return true;
  }();
  (void)done;
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
}  // namespace detail::fattn
}  // namespace varkv

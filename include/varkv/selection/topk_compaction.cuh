#pragma once
//! \file
//! GPU top-k selection and in-place compaction of one layer's KV cache (one launch per layer step).
//!
//! \par Overview
//! One CTA per (sequence, head) row. Candidates are the row's cache slots [0, len) followed by the
//! scale's n_new keys; their scores are read in the key_stat index space (slot j at j, new key i at
//! cap + i), so the fused attention's statistic feeds it directly. Retained positions get a key
//! above every score. A 4-pass MSB radix select (8-bit digits, shared-memory histogram) finds the
//! budget-th largest 32-bit key T; then the candidates are walked in position order in chunks of
//! one per thread (128, or 512 for rows of 2048+ candidates): the ones above T, plus the first (budget - #above) equal to T (block scans, cub::BlockScan),
//! survive, so ties go to the lower position exactly like `select_survivors_reference`. Survivors'
//! K/V rows are staged in shared memory 128 at a time and written to their new slots: a survivor
//! never moves to a higher slot, so a batch only overwrites slots already read. New keys are copied
//! in after the kept cache slots; positions and lengths are rewritten; slots past the new length get
//! position -1. The cache afterwards holds exactly the survivors, in position order.
//!
//! \par Errors
//! A row with a negative budget, more survivors than the capacity, more retained tokens than its
//! budget, or a length outside 0..cap is left unchanged and reported through `status` (int32[3]:
//! code, row, value). With `verify` the launcher synchronises the stream and throws varkv::Error
//! naming the row; without it the caller reads `status` later (0 = fine).
//!
//! \par Snippet
//! \code
//! varkv::SelectionArgs<__nv_bfloat16> s{.cache = dev.view(), .scores = key_stat, .new_k = k, .new_v = v,
//!                                       .first_new_position = 424, .retained = keep,
//!                                       .budgets = budgets, .status = status};
//! varkv::select_and_compact(s, stream);
//! \endcode

#include <cstdint>
#include <string_view>

#include <cub/block/block_scan.cuh>
#include <cuda_runtime.h>

#include "varkv/cache/device_layer_cache.cuh"
#include "varkv/core/cuda_check.cuh"
#include "varkv/core/error.hpp"
#include "varkv/core/tensor_view.hpp"
#include "varkv/selection/retention_ranges.hpp"

namespace varkv {

template <class T>
struct SelectionArgs {
  DeviceLayerCacheView<T> cache;          //!< modified in place: keys, values, positions, lengths
  TensorView<const float, 3> scores;      //!< [S, H, cap + n_new], key_stat index space
  TensorView<const T, 4> new_k;           //!< [S, H, n_new, d]
  TensorView<const T, 4> new_v;           //!< [S, H, n_new, d]
  std::int32_t first_new_position = 0;    //!< position of new key 0 (the scale's begin)
  RetentionRanges retained{};             //!< always-kept position ranges
  const std::int32_t* budgets = nullptr;  //!< device [S * H]: survivors per row (>= 0)
  std::int32_t* status = nullptr;         //!< device int32[3] scratch: {code, row, value}
};

//! Error codes written to SelectionArgs::status.
enum class SelectionStatus : std::int32_t {
  ok = 0,
  negative_budget = 1,
  over_capacity = 2,
  retained_over_budget = 3,
  bad_length = 4,
};

namespace detail::select {

// A row is one CTA of 128 or 512 threads. Long rows get 512: at Infinity-2B B=4 a layer has only 128
// rows, so a row's radix passes and its chunk loop (n / threads chunks, each two block scans and a
// staged copy) are the critical path (10,521 candidates: 422 us at 128 threads, 138 us at 512).
// Short rows keep 128: VAR-d30 B=64 has 3840 rows of <= 680 candidates, where 512 threads mostly
// idle and fewer CTAs fit per SM (103 us at 128 threads, 145 us at 512).
constexpr int kStageRows = 128;  // survivors' K/V rows staged in shared memory at a time
inline int threads_for(std::int64_t candidates) { return candidates >= 2048 ? 512 : 128; }

struct Params {
  std::int64_t k_s[3], v_s[3], nk_s[3], nv_s[3], pos_s[3], sc_s[3];
  const float* scores;
  std::int32_t* lengths;
  std::int32_t* positions;
  const std::int32_t* budgets;
  std::int32_t* status;
  int H, cap, n_new, d, first_new_position;
  int row_chunks;  // 16-byte chunks per K (or V) row
};

__device__ inline void report(std::int32_t* status, SelectionStatus code, int row, int value) {
  if (atomicCAS(status, 0, static_cast<std::int32_t>(code)) == 0) {
    status[1] = row;
    status[2] = value;
  }
}

template <class T, int kThreads>
__global__ void __launch_bounds__(kThreads) select_compact_kernel(const Params p, T* keys, T* values, const T* new_k,
                                                                  const T* new_v, const RetentionRanges retained) {
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage scan_tmp;
  __shared__ unsigned hist[256];
  __shared__ unsigned s_prefix, s_rank;
  __shared__ int s_retained;
  __shared__ int s_src[kThreads], s_dst[kThreads], s_pos[kThreads];
  extern __shared__ __align__(16) unsigned char stage_raw[];  // kStageRows x (K row, V row)
  uint4* stage = reinterpret_cast<uint4*>(stage_raw);

  const int row = blockIdx.x, seq = row / p.H, head = row % p.H, tid = threadIdx.x;
  const int len = p.lengths[row];
  const int budget = p.budgets[row];
  if (len < 0 || len > p.cap) {
    if (tid == 0) report(p.status, SelectionStatus::bad_length, row, len);
    return;
  }
  const int n = len + p.n_new;
  if (budget < 0) {
    if (tid == 0) report(p.status, SelectionStatus::negative_budget, row, budget);
    return;
  }
  const int keep = min(budget, n);
  if (keep > p.cap) {
    if (tid == 0) report(p.status, SelectionStatus::over_capacity, row, keep);
    return;
  }
  const float* sc = p.scores + seq * p.sc_s[0] + head * p.sc_s[1];
  std::int32_t* pos = p.positions + seq * p.pos_s[0] + head * p.pos_s[1];
  auto position_of = [&](int c) { return c < len ? pos[c] : p.first_new_position + (c - len); };
  auto key_of = [&](int c) -> unsigned {
    if (retained.contains(position_of(c))) return kRetainedKey;
    return score_key(sc[c < len ? c : p.cap + (c - len)]);
  };

  // Threshold T (the keep-th largest key) and how many of the keys equal to T survive.
  unsigned threshold = 0;
  int ties = n;  // every candidate survives when keep == n (threshold 0 admits all)
  if (keep < n) {
    if (tid == 0) { s_prefix = 0; s_rank = static_cast<unsigned>(keep); s_retained = 0; }
    unsigned mask = 0;
    for (int pass = 0; pass < 4; ++pass) {
      const int shift = 24 - 8 * pass;
      for (int i = tid; i < 256; i += kThreads) hist[i] = 0;
      __syncthreads();
      const unsigned prefix = s_prefix;
      int my_retained = 0;
      for (int c = tid; c < n; c += kThreads) {
        const unsigned k = key_of(c);
        if (pass == 0) my_retained += k == kRetainedKey;
        if ((k & mask) == prefix) atomicAdd(&hist[(k >> shift) & 255u], 1u);
      }
      if (pass == 0 && my_retained) atomicAdd(&s_retained, my_retained);
      __syncthreads();
      if (tid < 32) {
        // Find the bin holding the rank-th largest key: lane L owns bins 255-8L down to 248-8L; a
        // warp scan of the lane totals (largest bins first) gives how many keys lie above each lane.
        const unsigned rank = s_rank;
        __syncwarp();  // every lane has read s_rank before one lane rewrites it
        unsigned c[8], sum = 0;
#pragma unroll
        for (int i = 0; i < 8; ++i) sum += (c[i] = hist[255 - 8 * tid - i]);
        unsigned incl = sum;
#pragma unroll
        for (int off = 1; off < 32; off <<= 1) {
          const unsigned v = __shfl_up_sync(0xffffffffu, incl, off);
          if (tid >= off) incl += v;
        }
        unsigned above = incl - sum;
        if (rank == 0 && tid == 0) s_prefix = prefix | (255u << shift);  // keep 0: T = max, nothing above it
        if (above < rank && rank <= incl) {  // exactly one lane
          int i = 0;
          while (above + c[i] < rank) above += c[i++];
          s_rank = rank - above;
          s_prefix = prefix | (static_cast<unsigned>(255 - 8 * tid - i) << shift);
        }
      }
      mask |= 255u << shift;
      __syncthreads();
    }
    if (s_retained > keep) {
      if (tid == 0) report(p.status, SelectionStatus::retained_over_budget, row, s_retained);
      return;
    }
    threshold = s_prefix;
    ties = static_cast<int>(s_rank);  // survivors among the keys equal to T, lowest positions first
  }

  // Compaction in position order, chunk by chunk.
  int tie_base = 0, out_base = 0;
  const int rc = p.row_chunks;
  for (int c0 = 0; c0 < n; c0 += kThreads) {
    const int c = c0 + tid;
    unsigned k = 0;
    if (c < n) k = keep < n ? key_of(c) : 1u;
    const int is_tie = c < n && keep < n && k == threshold;
    int tie_rank, tie_total;
    Scan(scan_tmp).ExclusiveSum(is_tie, tie_rank, tie_total);
    __syncthreads();
    const int sel = c < n && (keep == n || k > threshold || (is_tie && tie_base + tie_rank < ties));
    int dst, sel_total;
    Scan(scan_tmp).ExclusiveSum(sel, dst, sel_total);
    if (sel) {
      s_src[dst] = c;
      s_dst[dst] = out_base + dst;
      s_pos[dst] = position_of(c);
    }
    __syncthreads();
    // Stage the chunk's survivors kStageRows at a time: every read of a batch happens before its
    // writes, and a batch's destinations lie below the sources of every later survivor (survivor i
    // goes to slot out_base + i <= its source, and sources increase), so batches in order are safe.
    for (int b0 = 0; b0 < sel_total; b0 += kStageRows) {
      const int nb = min(kStageRows, sel_total - b0);
      for (int i = tid; i < nb * rc; i += kThreads) {
        const int s = i / rc, ch = i % rc, src = s_src[b0 + s];
        const T* kr = src < len ? keys + seq * p.k_s[0] + head * p.k_s[1] + src * p.k_s[2]
                                : new_k + seq * p.nk_s[0] + head * p.nk_s[1] + (src - len) * p.nk_s[2];
        const T* vr = src < len ? values + seq * p.v_s[0] + head * p.v_s[1] + src * p.v_s[2]
                                : new_v + seq * p.nv_s[0] + head * p.nv_s[1] + (src - len) * p.nv_s[2];
        stage[(2 * s) * rc + ch] = reinterpret_cast<const uint4*>(kr)[ch];
        stage[(2 * s + 1) * rc + ch] = reinterpret_cast<const uint4*>(vr)[ch];
      }
      __syncthreads();
      for (int i = tid; i < nb * rc; i += kThreads) {
        const int s = i / rc, ch = i % rc, d = s_dst[b0 + s];
        reinterpret_cast<uint4*>(keys + seq * p.k_s[0] + head * p.k_s[1] + d * p.k_s[2])[ch] = stage[(2 * s) * rc + ch];
        reinterpret_cast<uint4*>(values + seq * p.v_s[0] + head * p.v_s[1] + d * p.v_s[2])[ch] =
            stage[(2 * s + 1) * rc + ch];
      }
      __syncthreads();
    }
    // Positions: slot d < c0 + kThreads and every position of this chunk was read above.
    for (int s = tid; s < sel_total; s += kThreads) pos[s_dst[s]] = s_pos[s];
    tie_base += tie_total;
    out_base += sel_total;
    __syncthreads();
  }
  for (int s = out_base + tid; s < len; s += kThreads) pos[s] = -1;
  if (tid == 0) p.lengths[row] = out_base;
}

}  // namespace detail::select

//! Selects and compacts every (sequence, head) row of one layer's cache on `stream`. Validates
//! shapes, strides, alignment and the retention ranges on the host (throws varkv::Error naming the
//! argument); per-row problems (budgets live on the device) go to `status`, and with `verify` the
//! launcher waits for the stream and throws naming the row.
template <class T>
void select_and_compact(const SelectionArgs<T>& a, cudaStream_t stream = nullptr, bool verify = true) {
  const auto& c = a.cache;
  const std::int64_t S = c.keys.shape(0), H = c.keys.shape(1), cap = c.keys.shape(2), d = c.keys.shape(3);
  const std::int64_t n_new = a.new_k.shape(2);
  require(S > 0 && H > 0 && d > 0, "selection: cache has shape [{}, {}, {}, {}]", S, H, cap, d);
  expect_shape("cache.values", c.values, {S, H, cap, d});
  expect_shape("cache.positions", c.positions, {S, H, cap});
  expect_shape("new_k", a.new_k, {S, H, kAnyExtent, d});
  expect_shape("new_v", a.new_v, {S, H, n_new, d});
  expect_shape("scores", a.scores, {S, H, cap + n_new});
  require(a.budgets != nullptr, "selection: budgets is null (need S*H = {} device int32)", S * H);
  require(a.status != nullptr, "selection: status is null (need a device int32[3])");
  require(c.lengths != nullptr, "selection: cache.lengths is null");
  require(a.first_new_position >= 0, "selection: first_new_position {} is negative", a.first_new_position);
  require(cap + n_new < (std::int64_t{1} << 30), "selection: cap + n_new = {} too large", cap + n_new);
  require((d * static_cast<std::int64_t>(sizeof(T))) % 16 == 0,
          "selection: a key row is {} bytes; it must be a multiple of 16", d * sizeof(T));
  a.retained.validate();
  auto rows16 = [&](std::string_view name, const auto& v) {
    expect_unit_inner_stride(name, v);
    if (v.empty()) return;
    require(reinterpret_cast<std::uintptr_t>(v.data()) % 16 == 0, "selection: tensor '{}' is not 16-byte aligned", name);
    for (int i = 0; i < 3; ++i)
      require((v.stride(i) * static_cast<std::int64_t>(sizeof(T))) % 16 == 0,
              "selection: tensor '{}' stride {} ({} elements) does not keep rows 16-byte aligned", name, i, v.stride(i));
  };
  rows16("cache.keys", c.keys);
  rows16("cache.values", c.values);
  rows16("new_k", a.new_k);
  rows16("new_v", a.new_v);
  expect_unit_inner_stride("scores", a.scores);
  expect_unit_inner_stride("cache.positions", c.positions);

  detail::select::Params p{};
  for (int i = 0; i < 3; ++i) {
    p.k_s[i] = c.keys.stride(i);
    p.v_s[i] = c.values.stride(i);
    p.nk_s[i] = a.new_k.stride(i);
    p.nv_s[i] = a.new_v.stride(i);
    p.pos_s[i] = c.positions.stride(i);
    p.sc_s[i] = a.scores.stride(i);
  }
  p.scores = a.scores.data();
  p.lengths = c.lengths;
  p.positions = c.positions.data();
  p.budgets = a.budgets;
  p.status = a.status;
  p.H = static_cast<int>(H);
  p.cap = static_cast<int>(cap);
  p.n_new = static_cast<int>(n_new);
  p.d = static_cast<int>(d);
  p.first_new_position = a.first_new_position;
  p.row_chunks = static_cast<int>(d * sizeof(T) / 16);
  const int smem = detail::select::kStageRows * 2 * p.row_chunks * 16;
  const int threads = detail::select::threads_for(cap + n_new);
  auto kernel = threads == 512 ? detail::select::select_compact_kernel<T, 512> : detail::select::select_compact_kernel<T, 128>;
  require(smem <= 160 * 1024, "selection: head_dim {} needs {} bytes of staging; too large", d, smem);
  VARKV_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  VARKV_CUDA_CHECK(cudaMemsetAsync(a.status, 0, 3 * sizeof(std::int32_t), stream));
  kernel<<<static_cast<unsigned>(S * H), threads, smem, stream>>>(p, c.keys.data(), c.values.data(), a.new_k.data(),
                                                                   a.new_v.data(), a.retained);
  VARKV_CUDA_CHECK_LAUNCH("select_compact_kernel");
  if (!verify) return;
  std::int32_t st[3] = {};
  VARKV_CUDA_CHECK(cudaMemcpyAsync(st, a.status, sizeof st, cudaMemcpyDeviceToHost, stream));
  VARKV_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (st[0] == 0) return;
  const std::int64_t r = st[1];
  switch (static_cast<SelectionStatus>(st[0])) {
    case SelectionStatus::negative_budget:
      fail("selection: budget of row {} (sequence {}, head {}) is negative ({})", r, r / H, r % H, st[2]);
    case SelectionStatus::over_capacity:
      fail("selection: row {} (sequence {}, head {}) keeps {} tokens, more than the capacity {}", r, r / H, r % H,
           st[2], cap);
    case SelectionStatus::retained_over_budget:
      fail("selection: row {} (sequence {}, head {}) retains {} tokens, more than its budget", r, r / H, r % H, st[2]);
    case SelectionStatus::bad_length:
      fail("selection: row {} (sequence {}, head {}) has length {}, outside 0..{}", r, r / H, r % H, st[2], cap);
    default: fail("selection: unknown status {} for row {}", st[0], r);
  }
}

}  // namespace varkv

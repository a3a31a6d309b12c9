#pragma once
//! \file
//! The GPU KV cache type built from a `cache_policy`: the CPU `CompressedCache` protocol on bf16
//! device storage, with attention, scoring, selection and compaction as kernels.
//!
//! \par Overview
//! `DeviceCompressedCache<Policy>` holds one `DeviceLayerCache<bf16>` per layer (same layout as the
//! host `LayerKvStore`: ragged rows, slots in position order, -1 past a row's length). Per (step,
//! layer) the model calls
//! 1. `attend(step, l, q, k, v, scale, out, lse)`: one `fused_attention` launch over the kept cache +
//!    the step's own K/V. When the eviction policy asks (`statistics(step, l)`), the same launch
//!    accumulates the policy's statistic for its observers into a key_stat buffer the cache owns
//!    ([S, H, cap + n_new], the key_stat index space). A policy that declares
//!    `uses_statistics = false` only ever instantiates `fused_attention<NoStats>`.
//! 2. `commit(step, l, k, v)`: exactly what `CompressedCache::commit` does (same classification, budget,
//!    retention and CFG rules, see compressed_cache.hpp), on the device:
//!    - a scoring kernel applies the policy's device scorer (`make_scorer(step, layer, schedule)`) to
//!      every candidate of every (sequence, head) row, writing scores in the key_stat index space
//!      (key norms and H2O's accumulated statistic first where the policy declares them);
//!      `cfg_shared` sums the two CFG halves' scores;
//!    - the per-row budgets are computed on the host as the CPU cache does (classification ->
//!      drafters -> budget.capacity, min with the row's candidates, retained-over-budget rule);
//!    - `select_and_compact` keeps the retained ranges plus the best candidates in place, or, when no
//!      row drops anything this step, an append kernel copies the new K/V after the kept slots;
//!    - a counting kernel tallies each head's tokens per origin scale and the row lengths; one small
//!      download per commit fills the exact `KvLedger` and the host copy of the lengths.
//!    `commit(step, l, k, v, key_stat)` takes the statistic from the caller instead (tests hand it the
//!    CPU reference's, re-indexed to this cache's capacity).
//!
//! \par Memory
//! Each layer is allocated once with the capacity the policy can ever need: the maximum over steps
//! and heads of min(budget, prefix) (raised to the retained tokens where `retention_wins`), because
//! the compaction kernel selects from cache + new keys directly and never needs room for both. A
//! 10% uniform budget therefore allocates 10% of a full cache. Budgets that move between layers from
//! step to step (ScaleKV drafters) get each layer's largest; see `kv_bytes()`.
//!
//! \par Supported policies
//! Every eviction policy with a device scorer (`device_eviction_policy`: the library's eight and
//! the custom example `my::last_query`), every budget except the head-adaptive split (AdaKV: a clear
//! `varkv::Error` at construction), every classification and retention policy. H2O's accumulated
//! statistic lives per slot on the device and moves with the compaction (a remap kernel by position).
//!
//! \par Errors
//! Bad shapes, steps out of order, a missing statistic and retained tokens over a budget throw
//! `varkv::Error` naming the tensor / step / layer / row, before the cache is modified. A failure
//! after the device state started to change (a CUDA error) leaves the cache unusable: every later
//! call throws saying so.
//!
//! \par Snippet
//! \code
//! varkv::DeviceCompressedCache<varkv::presets::ScaleKV> cache(geo, sched, batch, {DType::bf16, DType::bf16},
//!                                                            varkv::presets::scalekv({0.1}));
//! for (int step = 0; step < sched.size(); ++step)
//!   for (int l = 0; l < geo.layers; ++l) {
//!     cache.attend(step, l, q, k, v, 1.0f, out, lse, stream);
//!     cache.commit(step, l, k, v, stream);
//!   }
//! cache.ledger().peak_bytes();
//! \endcode
#include <algorithm>
#include <cstdint>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

#include <cub/block/block_reduce.cuh>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "varkv/attention/fused_attention.cuh"
#include "varkv/cache/compressed_cache.hpp"
#include "varkv/cache/device_layer_cache.cuh"
#include "varkv/core/cuda_check.cuh"
#include "varkv/core/kv_ledger.hpp"
#include "varkv/policy/compose.hpp"
#include "varkv/selection/topk_compaction.cuh"

namespace varkv {

namespace detail::dcache {

constexpr int kThreads = 256;

// Pinned host memory: the per-commit budget upload and ledger download are small and on the
// critical path; pinned buffers make them real asynchronous DMA.
template <class T>
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  explicit PinnedBuffer(std::size_t n) : n_(n) {
    if (n_) VARKV_CUDA_CHECK(cudaMallocHost(&p_, n_ * sizeof(T)));
  }
  PinnedBuffer(PinnedBuffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  PinnedBuffer& operator=(PinnedBuffer&& o) noexcept {
    if (this != &o) {
      release();
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  ~PinnedBuffer() { release(); }
  T* data() const { return p_; }
  std::size_t size() const { return n_; }
  T& operator[](std::size_t i) const { return p_[i]; }

 private:
  void release() noexcept {
    if (p_) cudaFreeHost(p_);
    p_ = nullptr;
  }
  T* p_ = nullptr;
  std::size_t n_ = 0;
};

// Row r of a [rows, cap + n_new] buffer starts at r * (cap + n_new); of a [rows, cap] one at r * cap.
struct ScoreParams {
  const float* stat = nullptr;            // key_stat (null: no statistic)
  const std::int32_t* positions = nullptr;
  const std::int32_t* lengths = nullptr;
  const float* acc = nullptr;             // accumulated statistic per slot (uses_accumulated)
  const float* norms = nullptr;           // key norms, key_stat index space (uses_key_norm)
  float* scores = nullptr;                // out (null: no selection this step)
  float* next_acc = nullptr;              // out: acc + stat per candidate (uses_accumulated)
  std::int32_t* budgets = nullptr;        // in/out: raised to the retained count when `wins`
  std::int32_t* retained = nullptr;       // out: retained candidates per row (null: not needed)
  int H = 0, cap = 0, n_new = 0, first = 0;
  bool wins = false;
};

// One CTA per (sequence, head) row: the policy's scorer over every candidate.
template <class Scorer>
__global__ void __launch_bounds__(kThreads) score_kernel(const Scorer f, const ScoreParams p,
                                                         const RetentionRanges ranges) {
  using Reduce = cub::BlockReduce<int, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  const int row = blockIdx.x;
  const std::int64_t ks = std::int64_t{p.cap} + p.n_new;
  const int len = p.lengths[row];
  if (len < 0 || len > p.cap) return;  // CTA-uniform; the compaction reports the bad length
  CandidateRow r;
  r.stat = p.stat ? p.stat + row * ks : nullptr;
  r.positions = p.positions + std::int64_t{row} * p.cap;
  r.accumulated = p.acc ? p.acc + std::int64_t{row} * p.cap : nullptr;
  r.key_norm = p.norms ? p.norms + row * ks : nullptr;
  r.len = len;
  r.cap = p.cap;
  r.n_new = p.n_new;
  r.first_new_position = p.first;
  r.seq = row / p.H;
  r.head = row % p.H;
  const int n = len + p.n_new;
  int kept = 0;
  for (int c = threadIdx.x; c < n; c += kThreads) {
    const std::int64_t o = row * ks + r.index(c);
    if (p.scores) p.scores[o] = f(r, c);
    // What the row remembers (CompressedCache: acc + stat, new keys start at 0).
    if (p.next_acc) p.next_acc[o] = r.accumulated_at(c) + (r.stat ? r.stat[r.index(c)] : 0.0f);
    kept += ranges.contains(r.position(c)) ? 1 : 0;
  }
  const int total = Reduce(tmp).Sum(kept);
  if (threadIdx.x == 0) {
    if (p.retained) p.retained[row] = total;
    if (p.budgets && p.wins && total > p.budgets[row]) p.budgets[row] = total;
  }
}

// L2 norm of every candidate key, summed in fp64 in element order with rounded (never fused)
// operations: the same bits as CompressedCache's host loop.
// static: header-defined, non-template; every including translation unit gets its own copy.
static __global__ void __launch_bounds__(kThreads) key_norm_kernel(const bf16* keys, const bf16* new_k, std::int64_t nk_s0,
                                                            std::int64_t nk_s1, std::int64_t nk_s2,
                                                            const std::int32_t* lengths, float* norms, int H, int cap,
                                                            int n_new, int d) {
  const int row = blockIdx.x, seq = row / H, head = row % H;
  const int len = lengths[row];
  if (len < 0 || len > cap) return;
  const std::int64_t ks = std::int64_t{cap} + n_new;
  for (int c = threadIdx.x; c < len + n_new; c += kThreads) {
    const bf16* k = c < len ? keys + (std::int64_t{row} * cap + c) * d : new_k + seq * nk_s0 + head * nk_s1 + (c - len) * nk_s2;
    double q = 0.0;
    for (int e = 0; e < d; ++e) {
      const double x = static_cast<double>(__bfloat162float(k[e]));
      q = __dadd_rn(q, __dmul_rn(x, x));
    }
    norms[row * ks + (c < len ? c : cap + (c - len))] = static_cast<float>(sqrt(q));
  }
}

// CFG-shared selection: rows (s, h) and (s + images, h) both rank by the sum of their scores.
static __global__ void __launch_bounds__(kThreads) cfg_share_kernel(float* scores, const std::int32_t* lengths, int H,
                                                             int images, int cap, int n_new) {
  const int s = blockIdx.x / H, h = blockIdx.x % H;
  const std::int64_t ra = std::int64_t{s} * H + h, rb = std::int64_t{s + images} * H + h, ks = std::int64_t{cap} + n_new;
  const int len = lengths[ra];
  if (len < 0 || len > cap) return;
  for (int c = threadIdx.x; c < len + n_new; c += kThreads) {
    const std::int64_t i = c < len ? c : cap + (c - len);
    const float v = scores[ra * ks + i] + scores[rb * ks + i];
    scores[ra * ks + i] = v;
    scores[rb * ks + i] = v;
  }
}

struct AppendParams {
  std::int64_t nk_s[3], nv_s[3];
  int H, cap, n_new, d, first, chunks;  // chunks: 16-byte pieces per row
};

// Nothing is dropped this step: the new K/V go after each row's kept slots (no compaction pass).
static __global__ void __launch_bounds__(kThreads) append_kernel(bf16* keys, bf16* values, std::int32_t* positions,
                                                          std::int32_t* lengths, const bf16* new_k, const bf16* new_v,
                                                          const AppendParams p) {
  const int row = blockIdx.x, seq = row / p.H, head = row % p.H;
  const int len = lengths[row];
  if (len < 0 || len + p.n_new > p.cap) return;  // CTA-uniform; the host checked the lengths
  for (int i = threadIdx.x; i < p.n_new * p.chunks; i += kThreads) {
    const int t = i / p.chunks, ch = i % p.chunks;
    const std::int64_t dst = (std::int64_t{row} * p.cap + len + t) * p.d;
    reinterpret_cast<uint4*>(keys + dst)[ch] =
        reinterpret_cast<const uint4*>(new_k + seq * p.nk_s[0] + head * p.nk_s[1] + t * p.nk_s[2])[ch];
    reinterpret_cast<uint4*>(values + dst)[ch] =
        reinterpret_cast<const uint4*>(new_v + seq * p.nv_s[0] + head * p.nv_s[1] + t * p.nv_s[2])[ch];
  }
  for (int t = threadIdx.x; t < p.n_new; t += kThreads) positions[std::int64_t{row} * p.cap + len + t] = p.first + t;
  __syncthreads();  // every thread has read `len`
  if (threadIdx.x == 0) lengths[row] = len + p.n_new;
}

// H2O: after the compaction, slot j of a row holds the token at position pos[j]; its accumulated
// statistic is next_acc at that token's pre-commit candidate index (a new key: cap + offset; a kept
// slot: found by binary search in the pre-commit positions, which are increasing).
static __global__ void __launch_bounds__(kThreads) remap_accumulated_kernel(const std::int32_t* positions,
                                                                     const std::int32_t* lengths,
                                                                     const std::int32_t* old_positions,
                                                                     const std::int32_t* old_lengths,
                                                                     const float* next_acc, float* acc, int cap,
                                                                     int n_new, int first) {
  const int row = blockIdx.x;
  const int len = lengths[row], old_len = old_lengths[row];
  const std::int64_t ks = std::int64_t{cap} + n_new;
  const std::int32_t* op = old_positions + std::int64_t{row} * cap;
  for (int j = threadIdx.x; j < cap; j += kThreads) {
    float v = 0.0f;  // slots past the length: 0, as a fresh row
    if (j < len) {
      const std::int32_t pos = positions[std::int64_t{row} * cap + j];
      int src = -1;
      if (pos >= first) {
        src = cap + (pos - first);
      } else {
        int lo = 0, hi = old_len - 1;
        while (lo < hi) {
          const int mid = (lo + hi) / 2;
          if (op[mid] < pos) lo = mid + 1; else hi = mid;
        }
        if (old_len > 0 && op[lo] == pos) src = lo;
      }
      v = src >= 0 ? next_acc[row * ks + src] : NAN;  // NaN: a token that was no candidate (a bug)
    }
    acc[std::int64_t{row} * cap + j] = v;
  }
}

// Tokens per (head, origin scale) summed over sequences, and each row's length. counts has
// H x (scales + 1) entries; the last of each head counts positions outside the schedule (must be 0).
static __global__ void __launch_bounds__(kThreads) count_kernel(const std::int32_t* positions, const std::int32_t* lengths,
                                                         std::int32_t* out_lengths, std::int32_t* counts,
                                                         const ScaleTable table, int H, int cap) {
  __shared__ int hist[ScaleTable::kMaxScales + 1];
  const int row = blockIdx.x, head = row % H, bins = table.count + 1;
  for (int i = threadIdx.x; i < bins; i += kThreads) hist[i] = 0;
  __syncthreads();
  const int len = lengths[row];
  const int n = len < 0 ? 0 : (len > cap ? cap : len);
  // Slots are in position order, so a warp's 32 slots mostly share one scale: lanes with the same bin
  // add once (warp-aggregated), instead of 32 serialised shared atomics on one address. Every lane
  // runs the same number of iterations (the loop bound is CTA-uniform) for the full-mask match.
  for (int j0 = 0; j0 < n; j0 += kThreads) {
    const int j = j0 + static_cast<int>(threadIdx.x);
    int bin = -1;
    if (j < n) {
      const std::int32_t pos = positions[std::int64_t{row} * cap + j];
      bin = pos >= 0 && pos < table.total() ? table.scale_of(pos) : table.count;
    }
    const unsigned peers = __match_any_sync(0xffffffffu, bin);
    if (bin >= 0 && static_cast<int>(threadIdx.x & 31u) == __ffs(peers) - 1) atomicAdd(&hist[bin], __popc(peers));
  }
  __syncthreads();
  for (int i = threadIdx.x; i < bins; i += kThreads)
    if (hist[i]) atomicAdd(&counts[head * bins + i], hist[i]);
  if (threadIdx.x == 0) out_lengths[row] = len;
}

}  // namespace detail::dcache

template <class Policy>
class DeviceCompressedCache {
  using E = typename Policy::eviction_type;
  using Bud = typename Policy::budget_type;
  static_assert(device_eviction_policy<E>,
                "varkv::DeviceCompressedCache: the eviction policy has no device scorer (a nested trivially copyable "
                "`scorer` and `make_scorer(step, layer, schedule)`, see eviction_concept.hpp); it runs in the CPU "
                "CompressedCache only");
  static constexpr bool kKeepsAll = policy_traits<Policy>::keeps_all;
  static constexpr bool kKeyNorm = policy_traits<Policy>::key_norm;
  static constexpr bool kAccumulated = policy_traits<Policy>::accumulated;
  static constexpr bool kHeadSplit = policy_traits<Policy>::head_split;

 public:
  using policy_type = Policy;
  using element_type = bf16;
  //! Whether attention ever measures a statistic for this policy (false: only fused_attention<NoStats>).
  static constexpr bool uses_statistics = eviction_uses_statistics_v<E>;

  DeviceCompressedCache(const ModelGeometry& geometry, const ScaleSchedule& schedule, BatchShape batch,
                        KvDTypes accounted_as, Policy policy = {})
      : geometry_(geometry), schedule_(schedule), batch_(batch), ledger_(geometry, schedule, accounted_as),
        policy_(std::move(policy)), table_(schedule_.table()) {
    batch_.validate();
    if constexpr (kHeadSplit)
      fail("device compressed cache: budget '{}' (head-adaptive split over heads, preset AdaKV) is not supported on "
           "the GPU; use the CPU CompressedCache for it",
           Bud::name);
    require(!policy_.options.cfg_shared || batch_.cfg,
            "device compressed cache: cfg_shared selection needs a CFG batch (conditional + unconditional rows)");
    require(geometry_.head_dim % 8 == 0,
            "device compressed cache: head_dim {} must be a multiple of 8 (bf16 rows move in 16-byte pieces)",
            geometry_.head_dim);
    const int S = batch_.sequences(), H = geometry_.heads, d = geometry_.head_dim, L = geometry_.layers;
    const auto rows = static_cast<std::size_t>(S) * H;
    std::int64_t max_new = 0, max_cap = 0;
    for (int s = 0; s < schedule_.size(); ++s) max_new = std::max(max_new, schedule_.tokens(s));
    for (int l = 0; l < L; ++l) {
      const std::int64_t cap = needed_capacity(l);
      caps_.push_back(cap);
      max_cap = std::max(max_cap, cap);
      layers_.emplace_back(S, H, d, cap);
      lengths_.emplace_back(rows, 0);
      if constexpr (kAccumulated) {
        acc_.emplace_back(rows * static_cast<std::size_t>(cap));
        if (acc_.back().size()) VARKV_CUDA_CHECK(cudaMemset(acc_.back().data(), 0, acc_.back().bytes()));
      }
    }
    const std::size_t ks = rows * static_cast<std::size_t>(max_cap + max_new);
    if constexpr (uses_statistics) stat_ = DeviceBuffer<float>(ks);
    if constexpr (!kKeepsAll) {
      scores_ = DeviceBuffer<float>(ks);
      budgets_ = DeviceBuffer<std::int32_t>(rows);
      retained_ = DeviceBuffer<std::int32_t>(rows);
      host_budgets_ = detail::dcache::PinnedBuffer<std::int32_t>(rows);
      host_retained_ = detail::dcache::PinnedBuffer<std::int32_t>(rows);
    }
    if constexpr (kKeyNorm) norms_ = DeviceBuffer<float>(ks);
    if constexpr (kAccumulated) {
      next_acc_ = DeviceBuffer<float>(ks);
      old_positions_ = DeviceBuffer<std::int32_t>(rows * static_cast<std::size_t>(max_cap));
      old_lengths_ = DeviceBuffer<std::int32_t>(rows);
    }
    const std::size_t pack = 3 + rows + static_cast<std::size_t>(H) * (schedule_.size() + 1);
    pack_ = DeviceBuffer<std::int32_t>(pack);
    host_pack_ = detail::dcache::PinnedBuffer<std::int32_t>(pack);
    // The layers were initialised by cudaMemset on the legacy stream; a caller's non-blocking stream
    // does not wait for it, so finish here.
    VARKV_CUDA_CHECK(cudaDeviceSynchronize());
  }

  const ModelGeometry& geometry() const { return geometry_; }
  const ScaleSchedule& schedule() const { return schedule_; }
  BatchShape batch() const { return batch_; }
  const KvLedger& ledger() const { return ledger_; }
  const Policy& policy() const { return policy_; }
  //! Layer l's device storage (download_* for inspection, view() for kernels).
  const DeviceLayerCache<bf16>& layer(int l) const { return layers_[check_layer(l)]; }
  //! Slots allocated per (sequence, head) row of layer l: the most the policy can ever keep there.
  std::int64_t capacity(int l) const { return caps_[check_layer(l)]; }
  //! Host copy of layer l's row lengths (row = seq * heads + head), as of the last commit.
  std::span<const std::int32_t> lengths(int l) const { return lengths_[check_layer(l)]; }
  //! Bytes of K and V storage allocated over all layers (bf16).
  std::int64_t kv_bytes() const {
    std::int64_t slots = 0;
    for (auto c : caps_) slots += c;
    return slots * batch_.sequences() * geometry_.heads * geometry_.head_dim * 2 * 2;
  }
  //! Every device byte this cache holds: K/V, positions, lengths, accumulators and scratch.
  std::int64_t device_bytes() const {
    std::int64_t b = 0;
    for (const auto& lay : layers_) {
      const std::int64_t slots = std::int64_t{lay.sequences()} * lay.heads() * lay.capacity();
      b += slots * (2 * lay.head_dim() * 2 + 4) + std::int64_t{lay.sequences()} * lay.heads() * 4;
    }
    for (const auto& a : acc_) b += static_cast<std::int64_t>(a.bytes());
    for (const auto* s : {&stat_, &scores_, &norms_, &next_acc_})
      b += static_cast<std::int64_t>(s->bytes());
    for (const auto* s : {&budgets_, &retained_, &old_positions_, &old_lengths_, &pack_})
      b += static_cast<std::int64_t>(s->bytes());
    return b;
  }
  //! The statistic measured by the last `attend` ([S, H, cap + n_new] on the device), or an empty view
  //! when it measured none or a commit has consumed it.
  TensorView<const float, 3> key_stat() const {
    if (stat_step_ < 0) return {};
    return stat_view(stat_layer_, schedule_.tokens(stat_step_));
  }
  //! H2O's accumulated statistic of layer l per slot [S, H, cap] (empty for other policies).
  std::vector<float> download_accumulated(int l) const {
    check_layer(l);
    if constexpr (kAccumulated) return acc_[l].download();
    else return {};
  }

  //! What the attention of (step, layer) must measure for this policy (`.needed` false: nothing).
  StatRequest statistics(int step, int l) const {
    check_layer(l);
    require(step >= 0 && step < schedule_.size(), "device compressed cache: step {} outside schedule '{}'", step,
            schedule_.name());
    return policy_.eviction.request(step, l, schedule_);
  }

  //! Attention of step `step` in layer l: q, k, v [S, H, tokens(step), d] (device, bf16), out [S, H,
  //! tokens(step), d], lse [S, H, tokens(step)]. Measures the policy's statistic when it asks.
  void attend(int step, int l, TensorView<const bf16, 4> q, TensorView<const bf16, 4> k, TensorView<const bf16, 4> v,
              float softmax_scale, TensorView<bf16, 4> out, TensorView<float, 3> lse, cudaStream_t stream = nullptr,
              int rows_per_item = 0) {
    check_usable();
    const StatRequest req = statistics(step, l);
    require(last_step_[l] == step - 1,
            "device compressed cache: attend of step {} on layer {}, whose last committed step is {}; run the steps in "
            "order",
            step, l, last_step_[l]);
    const std::int64_t S = batch_.sequences(), H = geometry_.heads, d = geometry_.head_dim, n = schedule_.tokens(step);
    expect_shape("q (attend)", q, {S, H, n, d});
    expect_shape("k (attend)", k, {S, H, n, d});
    expect_shape("v (attend)", v, {S, H, n, d});
    FusedAttentionArgs a;
    a.q = q;
    a.cache = layers_[l].view();
    a.new_k = k;
    a.new_v = v;
    a.softmax_scale = softmax_scale;
    a.out = out;
    a.lse = lse;
    a.host_lengths = lengths_[l];
    a.rows_per_item = rows_per_item;
    stat_step_ = stat_layer_ = -1;
    if constexpr (uses_statistics) {
      if (req.needed) {
        a.observers = observer_set(req, n, step, l);
        a.key_stat = stat_view(l, n);
        if (req.statistic == KeyStatistic::logit_sum) fused_attention<ObserverLogitSum>(a, stream);
        else fused_attention<ObserverProbabilityMass>(a, stream);
        stat_step_ = step;
        stat_layer_ = l;
        return;
      }
    } else {
      require(!req.needed,
              "device compressed cache: eviction '{}' declares uses_statistics = false but asks for a statistic at "
              "step {}, layer {}",
              E::name, step, l);
    }
    fused_attention<NoStats>(a, stream);
  }

  //! Commits step `step`'s K/V ([S, H, tokens(step), d], device bf16) to layer l, using the statistic
  //! of the preceding `attend(step, l, ...)` when the policy needs one. Synchronises `stream` once
  //! (the ledger download), twice when retention ranges must be checked against the budgets first.
  void commit(int step, int l, TensorView<const bf16, 4> k, TensorView<const bf16, 4> v, cudaStream_t stream = nullptr) {
    check_usable();
    const StatRequest req = statistics(step, l);
    const float* ks = nullptr;
    if (req.needed) {
      require(stat_step_ == step && stat_layer_ == l,
              "device compressed cache: eviction '{}' needs key_stat at step {}, layer {}; call attend({}, {}, ...) "
              "first or pass key_stat to commit",
              E::name, step, l, step, l);
      ks = stat_.data();
    }
    commit_impl(step, l, k, v, ks, stream);
  }
  //! Same, with the statistic given: key_stat [S, H, capacity(l) + tokens(step)], contiguous, device.
  void commit(int step, int l, TensorView<const bf16, 4> k, TensorView<const bf16, 4> v,
              TensorView<const float, 3> key_stat, cudaStream_t stream = nullptr) {
    check_usable();
    (void)statistics(step, l);  // checks step and layer
    expect_shape("key_stat (commit)", key_stat,
                 {batch_.sequences(), geometry_.heads, caps_[l] + schedule_.tokens(step)});
    require(key_stat.is_contiguous() && key_stat.data() != nullptr,
            "device compressed cache: key_stat (commit) must be a contiguous, non-null device tensor [S, H, cap + n_new]");
    commit_impl(step, l, k, v, key_stat.data(), stream);
  }

 private:
  int check_layer(int l) const {
    require(l >= 0 && l < geometry_.layers, "device compressed cache: layer {} outside 0..{}", l, geometry_.layers - 1);
    return l;
  }
  void check_usable() const {
    require(broken_step_ < 0,
            "device compressed cache: unusable after a failed commit (step {}, layer {}); its device state is undefined",
            broken_step_, broken_layer_);
  }

  BudgetContext budget_context(int step, int l) const {
    return varkv::budget_context(policy_, step, l, schedule_, geometry_);
  }

  // Tokens of [0, prefix) inside the union of the ranges.
  static std::int64_t retained_in_prefix(const RetentionRanges& r, std::int64_t prefix) {
    std::vector<std::pair<std::int64_t, std::int64_t>> iv;
    for (int i = 0; i < r.count; ++i) {
      const std::int64_t b = std::max<std::int64_t>(0, r.begin[i]), e = std::min<std::int64_t>(prefix, r.end[i]);
      if (e > b) iv.emplace_back(b, e);
    }
    std::sort(iv.begin(), iv.end());
    std::int64_t n = 0, reach = 0;
    for (const auto& [b, e] : iv) {
      const std::int64_t from = std::max(b, reach);
      if (e > from) n += e - from;
      reach = std::max(reach, e);
    }
    return n;
  }

  // The most tokens a row of layer l can ever hold: after step s a row keeps min(budget, candidates)
  // (or its retained tokens when retention wins), and its candidates never exceed the prefix.
  std::int64_t needed_capacity(int l) const {
    if constexpr (kKeepsAll) {
      return schedule_.total();
    } else {
      std::int64_t cap = 0;
      for (int step = 0; step < schedule_.size(); ++step) {
        BudgetContext bc = budget_context(step, l);
        const std::int64_t prefix = bc.prefix();
        const std::int64_t retained = policy_.retention.retention_wins()
                                          ? retained_in_prefix(policy_.retention.ranges(step, schedule_), prefix)
                                          : 0;
        for (int h = 0; h < geometry_.heads; ++h) {
          bc.head = h;
          const std::int64_t b = policy_.budget.capacity(bc);
          require(b >= 0, "device compressed cache: budget {} for step {}, layer {}, head {} is negative", b, step, l, h);
          cap = std::max(cap, std::min(prefix, std::max(b, retained)));
        }
      }
      return cap;
    }
  }

  TensorView<float, 3> stat_view(int l, std::int64_t n_new) const {
    return make_view<3>("key_stat", stat_.data(), {batch_.sequences(), geometry_.heads, caps_[l] + n_new},
                        static_cast<std::int64_t>(stat_.size()));
  }

  ObserverSet observer_set(const StatRequest& req, std::int64_t n_q, int step, int l) const {
    bool all = static_cast<std::int64_t>(req.observers.size()) == n_q;
    for (std::size_t i = 0; all && i < req.observers.size(); ++i) all = req.observers[i] == static_cast<std::int32_t>(i);
    if (all) return ObserverSet::every_query();
    require(req.observers.size() <= static_cast<std::size_t>(ObserverSet::kMaxListed),
            "device compressed cache: eviction '{}' asks for {} observers at step {}, layer {}; the fused attention "
            "takes every query or at most {} listed ones",
            E::name, req.observers.size(), step, l, ObserverSet::kMaxListed);
    return ObserverSet::listed(req.observers);
  }

  template <class T>
  static void check_rows16(std::string_view name, const TensorView<T, 4>& t) {
    expect_unit_inner_stride(name, t);
    if (t.empty()) return;
    require(reinterpret_cast<std::uintptr_t>(t.data()) % 16 == 0, "device compressed cache: tensor '{}' is not 16-byte aligned",
            name);
    for (int i = 0; i < 3; ++i)
      require((t.stride(i) * static_cast<std::int64_t>(sizeof(T))) % 16 == 0,
              "device compressed cache: tensor '{}' stride {} ({} elements) does not keep rows 16-byte aligned", name, i,
              t.stride(i));
  }

  void launch_append(const DeviceLayerCacheView<bf16>& view, TensorView<const bf16, 4> k, TensorView<const bf16, 4> v,
                     std::int32_t first, std::int32_t n_new, std::int32_t cap, cudaStream_t stream) {
    const std::int64_t rows = std::int64_t{batch_.sequences()} * geometry_.heads;
    detail::dcache::AppendParams p{};
    for (int i = 0; i < 3; ++i) {
      p.nk_s[i] = k.stride(i);
      p.nv_s[i] = v.stride(i);
    }
    p.H = geometry_.heads;
    p.cap = cap;
    p.n_new = n_new;
    p.d = geometry_.head_dim;
    p.first = first;
    p.chunks = geometry_.head_dim * 2 / 16;
    if (n_new == 0) return;
    detail::dcache::append_kernel<<<static_cast<unsigned>(rows), detail::dcache::kThreads, 0, stream>>>(
        view.keys.data(), view.values.data(), view.positions.data(), view.lengths, k.data(), v.data(), p);
    VARKV_CUDA_CHECK_LAUNCH("device_compressed_cache append_kernel");
  }

  void commit_impl(int step, int l, TensorView<const bf16, 4> k, TensorView<const bf16, 4> v, const float* ks,
                   cudaStream_t stream) {
    const int S = batch_.sequences(), H = geometry_.heads, d = geometry_.head_dim;
    const auto n_new = static_cast<std::int32_t>(schedule_.tokens(step));
    const auto first = static_cast<std::int32_t>(schedule_.begin(step));
    const auto cap = static_cast<std::int32_t>(caps_[l]);
    const std::int64_t rows = std::int64_t{S} * H;
    expect_shape("k (commit)", k, {S, H, n_new, d});
    expect_shape("v (commit)", v, {S, H, n_new, d});
    check_rows16("k (commit)", k);
    check_rows16("v (commit)", v);
    require(last_step_[l] == step - 1, "device compressed cache: layer {} got step {} after step {}; commit steps in order",
            l, step, last_step_[l]);
    const auto& lens = lengths_[l];
    const DeviceLayerCacheView<bf16> view = layers_[l].view();
    bool select = false;

    if constexpr (kKeepsAll) {
      for (std::int64_t r = 0; r < rows; ++r)
        require(lens[r] + n_new <= cap, "device compressed cache: row {} of layer {} ({} + {} tokens) overflows capacity {}",
                r, l, lens[r], n_new, cap);
      mark_broken(step, l);
      launch_append(view, k, v, first, n_new, cap, stream);
    } else {
      // Everything that can refuse the step runs before the device state changes.
      const RetentionRanges ranges = policy_.retention.ranges(step, schedule_);
      ranges.validate();
      const bool wins = policy_.retention.retention_wins();
      BudgetContext bc = budget_context(step, l);
      std::vector<std::int64_t> per_head(static_cast<std::size_t>(H));
      for (int h = 0; h < H; ++h) {
        bc.head = h;
        per_head[h] = policy_.budget.capacity(bc);
        require(per_head[h] >= 0, "device compressed cache: budget {} for step {}, layer {}, head {} is negative",
                per_head[h], step, l, h);
      }
      for (std::int64_t r = 0; r < rows; ++r) {
        const std::int64_t n = std::int64_t{lens[r]} + n_new;
        const auto b = static_cast<std::int32_t>(std::min<std::int64_t>(per_head[r % H], n));
        host_budgets_[r] = b;
        select = select || b < n;
      }
      if (policy_.options.cfg_shared) {
        const int images = S / 2;
        for (int s = 0; s < images; ++s)
          for (int h = 0; h < H; ++h)
            require(lens[std::int64_t{s} * H + h] == lens[std::int64_t{s + images} * H + h],
                    "device compressed cache: CFG rows of image {} (head {}) hold different tokens; cfg_shared needs a "
                    "cache that was always shared",
                    s, h);
      }
      const bool check_retained = select && ranges.count > 0 && !wins;
      if (select) {
        VARKV_CUDA_CHECK(cudaMemcpyAsync(budgets_.data(), host_budgets_.data(), rows * sizeof(std::int32_t),
                                         cudaMemcpyHostToDevice, stream));
        if constexpr (kKeyNorm) {
          detail::dcache::key_norm_kernel<<<static_cast<unsigned>(rows), detail::dcache::kThreads, 0, stream>>>(
              view.keys.data(), k.data(), k.stride(0), k.stride(1), k.stride(2), view.lengths, norms_.data(), H, cap,
              n_new, d);
          VARKV_CUDA_CHECK_LAUNCH("device_compressed_cache key_norm_kernel");
        }
      }
      if (select || kAccumulated) {
        detail::dcache::ScoreParams p;
        p.stat = ks;
        p.positions = view.positions.data();
        p.lengths = view.lengths;
        if constexpr (kAccumulated) {
          p.acc = acc_[l].data();
          p.next_acc = next_acc_.data();
        }
        if constexpr (kKeyNorm) p.norms = norms_.data();
        p.scores = select ? scores_.data() : nullptr;
        p.budgets = select ? budgets_.data() : nullptr;
        p.retained = check_retained ? retained_.data() : nullptr;
        p.H = H;
        p.cap = cap;
        p.n_new = n_new;
        p.first = first;
        p.wins = wins;
        const auto f = policy_.eviction.make_scorer(step, l, schedule_);
        detail::dcache::score_kernel<<<static_cast<unsigned>(rows), detail::dcache::kThreads, 0, stream>>>(f, p, ranges);
        VARKV_CUDA_CHECK_LAUNCH("device_compressed_cache score_kernel");
        if (select && policy_.options.cfg_shared) {
          detail::dcache::cfg_share_kernel<<<static_cast<unsigned>(S / 2 * H), detail::dcache::kThreads, 0, stream>>>(
              scores_.data(), view.lengths, H, S / 2, cap, n_new);
          VARKV_CUDA_CHECK_LAUNCH("device_compressed_cache cfg_share_kernel");
        }
      }
      if (check_retained) {
        // The CPU cache refuses a row whose retained tokens exceed its budget before touching anything.
        VARKV_CUDA_CHECK(cudaMemcpyAsync(host_retained_.data(), retained_.data(), rows * sizeof(std::int32_t),
                                         cudaMemcpyDeviceToHost, stream));
        VARKV_CUDA_CHECK(cudaStreamSynchronize(stream));
        for (std::int64_t r = 0; r < rows; ++r)
          require(host_retained_[r] <= host_budgets_[r],
                  "device compressed cache: step {}, layer {}, seq {}, head {}: {} retained tokens exceed the budget of "
                  "{} (set retention wins=1 to keep them anyway)",
                  step, l, r / H, r % H, host_retained_[r], host_budgets_[r]);
      }
      if (!select)
        for (std::int64_t r = 0; r < rows; ++r)
          require(lens[r] + n_new <= cap, "device compressed cache: row {} of layer {} ({} + {} tokens) overflows capacity {}",
                  r, l, lens[r], n_new, cap);
      mark_broken(step, l);
      if constexpr (kAccumulated) {
        if (rows * cap > 0)
          VARKV_CUDA_CHECK(cudaMemcpyAsync(old_positions_.data(), view.positions.data(), rows * cap * sizeof(std::int32_t),
                                           cudaMemcpyDeviceToDevice, stream));
        VARKV_CUDA_CHECK(cudaMemcpyAsync(old_lengths_.data(), view.lengths, rows * sizeof(std::int32_t),
                                         cudaMemcpyDeviceToDevice, stream));
      }
      if (select) {
        SelectionArgs<bf16> sa;
        sa.cache = view;
        sa.scores = make_view<3>("scores", static_cast<const float*>(scores_.data()), {S, H, std::int64_t{cap} + n_new},
                                 static_cast<std::int64_t>(scores_.size()));
        sa.new_k = k;
        sa.new_v = v;
        sa.first_new_position = first;
        sa.retained = ranges;
        sa.budgets = budgets_.data();
        sa.status = pack_.data();  // the ledger download below brings the status back with the counts
        select_and_compact(sa, stream, /*verify=*/false);
      } else {
        launch_append(view, k, v, first, n_new, cap, stream);
      }
      if constexpr (kAccumulated) {
        detail::dcache::remap_accumulated_kernel<<<static_cast<unsigned>(rows), detail::dcache::kThreads, 0, stream>>>(
            view.positions.data(), view.lengths, old_positions_.data(), old_lengths_.data(), next_acc_.data(),
            acc_[l].data(), cap, n_new, first);
        VARKV_CUDA_CHECK_LAUNCH("device_compressed_cache remap_accumulated_kernel");
      }
    }
    finish(step, l, view, select, stream);
    stat_step_ = stat_layer_ = -1;  // consumed
    broken_step_ = broken_layer_ = -1;
  }

  // Counts, one download, ledger and host lengths; reports a compaction error (status) by row.
  void finish(int step, int l, const DeviceLayerCacheView<bf16>& view, bool selected, cudaStream_t stream) {
    const int H = geometry_.heads, scales = schedule_.size(), bins = scales + 1;
    const std::int64_t rows = std::int64_t{batch_.sequences()} * H;
    const auto cap = static_cast<int>(caps_[l]);
    std::int32_t* status = pack_.data();
    std::int32_t* lens = status + 3;
    std::int32_t* counts = lens + rows;
    if (!selected) VARKV_CUDA_CHECK(cudaMemsetAsync(status, 0, 3 * sizeof(std::int32_t), stream));
    VARKV_CUDA_CHECK(cudaMemsetAsync(counts, 0, std::size_t(H) * bins * sizeof(std::int32_t), stream));
    detail::dcache::count_kernel<<<static_cast<unsigned>(rows), detail::dcache::kThreads, 0, stream>>>(
        view.positions.data(), view.lengths, lens, counts, table_, H, cap);
    VARKV_CUDA_CHECK_LAUNCH("device_compressed_cache count_kernel");
    VARKV_CUDA_CHECK(cudaMemcpyAsync(host_pack_.data(), pack_.data(), host_pack_.size() * sizeof(std::int32_t),
                                     cudaMemcpyDeviceToHost, stream));
    VARKV_CUDA_CHECK(cudaStreamSynchronize(stream));
    const std::int32_t* hs = host_pack_.data();
    if (hs[0] != 0) {
      const std::int64_t r = hs[1];
      fail("device compressed cache: step {}, layer {}: compaction of row {} (seq {}, head {}) failed with status {} "
           "(value {})",
           step, l, r, r / H, r % H, hs[0], hs[2]);
    }
    auto& host_lens = lengths_[l];
    for (std::int64_t r = 0; r < rows; ++r) {
      require(hs[3 + r] >= 0 && hs[3 + r] <= cap, "device compressed cache: row {} of layer {} has length {} after step {}",
              r, l, hs[3 + r], step);
      host_lens[r] = hs[3 + r];
    }
    const std::int32_t* c = hs + 3 + rows;
    for (int h = 0; h < H; ++h) {
      require(c[h * bins + scales] == 0, "device compressed cache: layer {} head {} holds {} tokens with positions outside "
              "the schedule after step {}", l, h, c[h * bins + scales], step);
      for (int o = 0; o < scales; ++o) {
        require(o <= step || c[h * bins + o] == 0, "KV ledger: layer {} holds tokens of scale {} after step {}", l, o, step);
        if (o <= step) ledger_.set_tokens(step, l, h, o, c[h * bins + o]);
      }
    }
    last_step_[l] = step;
  }

  void mark_broken(int step, int l) {
    broken_step_ = step;
    broken_layer_ = l;
  }

  ModelGeometry geometry_;
  ScaleSchedule schedule_;
  BatchShape batch_;
  KvLedger ledger_;
  Policy policy_;
  ScaleTable table_;
  std::vector<std::int64_t> caps_;
  std::vector<DeviceLayerCache<bf16>> layers_;
  std::vector<std::vector<std::int32_t>> lengths_;  // host copy per layer [S * H]
  std::vector<DeviceBuffer<float>> acc_;            // per layer [S * H * cap] (uses_accumulated only)
  DeviceBuffer<float> stat_, scores_, norms_, next_acc_;  // [S * H * (max cap + max n_new)] scratch
  DeviceBuffer<std::int32_t> budgets_, retained_, old_positions_, old_lengths_;
  DeviceBuffer<std::int32_t> pack_;  // status[3] | lengths[S * H] | counts[H * (scales + 1)]
  detail::dcache::PinnedBuffer<std::int32_t> host_budgets_, host_retained_, host_pack_;
  std::vector<int> last_step_ = std::vector<int>(static_cast<std::size_t>(geometry_.layers), -1);
  int stat_step_ = -1, stat_layer_ = -1;      // which (step, layer) stat_ holds
  int broken_step_ = -1, broken_layer_ = -1;  // set while the device state is being changed
};

}  // namespace varkv

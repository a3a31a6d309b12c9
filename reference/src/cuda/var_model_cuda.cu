// The reference VAR transformer on the GPU (bf16, fp32 accumulation) and its generation loop; see
// reference/include/varkv_reference/cuda/var_model_cuda.cuh for what runs where and why.
#include "varkv_reference/cuda/var_model_cuda.cuh"
#include "varkv_reference/cuda/vqvae_cuda.cuh"

#include <algorithm>
#include <array>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>

#include <cub/block/block_radix_sort.cuh>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <curand_kernel.h>
#include <fmt/format.h>

#include "varkv/core/cuda_check.cuh"
#include "varkv/core/error.hpp"
#include "varkv_reference/cuda/cache_backend.cuh"

#include "cuda_support.cuh"

namespace varkv::ref {

namespace {

using bf16 = __nv_bfloat16;
using detail::Stream;

constexpr int kThreads = 256;
constexpr int kLnPerThread = 16;  // LayerNorm rows of up to 256 x 16 = 4096 channels
constexpr int kSortItems = 16;    // sampling: one CTA sorts up to 256 x 16 = 4096 logits
constexpr int kMaxSampleVocab = kThreads * kSortItems;

unsigned grid_for(std::int64_t n, int threads = kThreads) {
  return static_cast<unsigned>(std::min<std::int64_t>((n + threads - 1) / threads, 65535LL * 32));
}

// ---------------------------------------------------------------------------------------------
// Kernels

__device__ __forceinline__ float gelu_tanh(float v) {
  const float c = 0.7978845608028654f;  // sqrt(2 / pi)
  return 0.5f * v * (1.0f + tanhf(c * (v + 0.044715f * v * v * v)));
}

__global__ void f32_to_bf16_kernel(const float* in, bf16* out, std::int64_t n) {
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < n; i += std::int64_t{gridDim.x} * blockDim.x)
    out[i] = __float2bfloat16(in[i]);
}

// v = SiLU(in) as two bf16 terms, v ~ hi + lo (16 significant bits).
__global__ void silu_split_kernel(const float* in, bf16* hi, bf16* lo, std::int64_t n) {
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < n; i += std::int64_t{gridDim.x} * blockDim.x) {
    const float v = in[i] / (1.0f + expf(-in[i]));
    const bf16 h = __float2bfloat16(v);
    hi[i] = h;
    lo[i] = __float2bfloat16(v - __bfloat162float(h));
  }
}

// One CTA per row of x [rows, C] (row = sequence * n + token): when y is given, x += y * gamma first
// (the previous sub-layer's gated residual, written back); then h = LN(x) * (1 + scale) + shift in
// bf16. gamma / scale / shift point at the sequence-0 chunk of the AdaLN parameters; a sequence's
// chunk is `pstride` floats further. With h_lo, the output is two bf16 terms: h + h_lo (the head's
// input, whose rounding would otherwise dominate the logits' error).
__global__ void __launch_bounds__(kThreads) residual_ln_kernel(float* x, const float* y, const float* gamma,
                                                               const float* scale, const float* shift,
                                                               std::int64_t pstride, bf16* h, bf16* h_lo, int n, int C,
                                                               float eps) {
  using Reduce = cub::BlockReduce<float, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ float s_value;
  const std::int64_t row = blockIdx.x;
  const std::int64_t po = (row / n) * pstride;
  float* xr = x + row * C;
  const float* yr = y ? y + row * C : nullptr;
  float v[kLnPerThread];
  float sum = 0.0f;
#pragma unroll
  for (int k = 0; k < kLnPerThread; ++k) {
    const int c = static_cast<int>(threadIdx.x) + k * kThreads;
    v[k] = 0.0f;
    if (c < C) {
      float val = xr[c];
      if (yr) {
        val = __fadd_rn(val, __fmul_rn(yr[c], gamma[po + c]));  // x += y * gamma, as the CPU (no FMA)
        xr[c] = val;
      }
      v[k] = val;
      sum += val;
    }
  }
  const float total = Reduce(tmp).Sum(sum);
  if (threadIdx.x == 0) s_value = total / static_cast<float>(C);
  __syncthreads();
  const float mean = s_value;
  float sq = 0.0f;
#pragma unroll
  for (int k = 0; k < kLnPerThread; ++k) {
    const int c = static_cast<int>(threadIdx.x) + k * kThreads;
    if (c < C) sq += (v[k] - mean) * (v[k] - mean);
  }
  __syncthreads();  // every thread has read s_value; tmp is free again
  const float total_sq = Reduce(tmp).Sum(sq);
  if (threadIdx.x == 0) s_value = total_sq / static_cast<float>(C);
  __syncthreads();
  const float inv = 1.0f / sqrtf(s_value + eps);
#pragma unroll
  for (int k = 0; k < kLnPerThread; ++k) {
    const int c = static_cast<int>(threadIdx.x) + k * kThreads;
    if (c < C) {
      const float out = (v[k] - mean) * inv * (scale[po + c] + 1.0f) + shift[po + c];
      const bf16 hi = __float2bfloat16(out);
      h[row * C + c] = hi;
      if (h_lo) h_lo[row * C + c] = __float2bfloat16(out - __bfloat162float(hi));
    }
  }
}

// One warp per (row, head) of qkv [rows, 3C] (fp32, bias included): q and k divided by
// max(|.|, 1e-12) over the head's d = 32 E channels, q times the head's scale; q, k, v written as
// [S, H, n, d] bf16 (row = s * n + t).
template <int E>
__global__ void __launch_bounds__(kThreads) qk_norm_kernel(const float* qkv, const float* q_scale, bf16* q, bf16* k,
                                                           bf16* v, std::int64_t rows, int n, int H, int C) {
  constexpr int d = 32 * E;
  const std::int64_t w = (blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x & 31u);
  if (w >= rows * H) return;  // warp-uniform
  const std::int64_t row = w / H;
  const int head = static_cast<int>(w % H);
  const std::int64_t seq = row / n, t = row % n;
  const float* src = qkv + row * 3 * C + std::int64_t{head} * d;
  float qv[E], kv[E], vv[E];
  float sq = 0.0f, sk = 0.0f;
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const int c = lane + 32 * e;
    qv[e] = src[c];
    kv[e] = src[C + c];
    vv[e] = src[2 * C + c];
    sq += qv[e] * qv[e];
    sk += kv[e] * kv[e];
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    sq += __shfl_xor_sync(0xffffffffu, sq, off);
    sk += __shfl_xor_sync(0xffffffffu, sk, off);
  }
  const float inv_q = 1.0f / fmaxf(sqrtf(sq), 1e-12f);
  const float inv_k = 1.0f / fmaxf(sqrtf(sk), 1e-12f);
  const float qs = q_scale[head];
  const std::int64_t dst = ((seq * H + head) * n + t) * d;
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const int c = lane + 32 * e;
    q[dst + c] = __float2bfloat16(qv[e] * inv_q * qs);
    k[dst + c] = __float2bfloat16(kv[e] * inv_k);
    v[dst + c] = __float2bfloat16(vv[e]);
  }
}

// The next scale's token map of all 2B sequences: x[s, t] = word_embed(in)[s mod B, t] + bias +
// lvl_pos[begin + t] (the CPU's embed_scale_input, duplicated for the unconditional half).
__global__ void embed_next_kernel(const float* emb, const float* bias, const float* lvl_pos, float* x, int B, int n,
                                  int C, std::int64_t begin) {
  const std::int64_t total = 2 * std::int64_t{B} * n * C;
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < total; i += std::int64_t{gridDim.x} * blockDim.x) {
    const std::int64_t c = i % C, t = (i / C) % n, s = i / (std::int64_t{n} * C);
    x[i] = (emb[((s % B) * n + t) * C + c] + bias[c]) + lvl_pos[(begin + t) * C + c];
  }
}

// Records scale `begin..begin+n`'s choice into the [B, L] token / gap history; under teacher forcing
// the forced tokens replace the chosen ones in the step buffer too (the quantizer reads it next).
__global__ void record_scale_kernel(std::int32_t* step_tokens, const float* step_gaps, const std::int32_t* forced,
                                    std::int32_t* tokens, float* gaps, int B, int n, std::int64_t L, std::int64_t begin) {
  const std::int64_t total = std::int64_t{B} * n;
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < total; i += std::int64_t{gridDim.x} * blockDim.x) {
    const std::int64_t dst = (i / n) * L + begin + i % n;
    if (forced) step_tokens[i] = forced[dst];
    tokens[dst] = step_tokens[i];
    gaps[dst] = step_gaps[i];
  }
}

// Fallback epilogue: out[m, j] = act(in[m, j] + bias[j]) (in and out may alias when Out is float).
template <class Out, bool kGelu>
__global__ void bias_act_kernel(const float* in, const float* bias, Out* out, std::int64_t M, int N) {
  const std::int64_t total = M * N;
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < total; i += std::int64_t{gridDim.x} * blockDim.x) {
    float v = in[i] + bias[i % N];
    if constexpr (kGelu) v = gelu_tanh(v);
    if constexpr (std::is_same_v<Out, float>) out[i] = v;
    else out[i] = __float2bfloat16(v);
  }
}

__global__ void gelu_bf16_kernel(const float* in, bf16* out, std::int64_t n) {
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < n; i += std::int64_t{gridDim.x} * blockDim.x)
    out[i] = __float2bfloat16(gelu_tanh(in[i]));
}

// gelu_tanh(in) as two bf16 terms hi + lo (CudaPrecision::split_bf16).
__global__ void gelu_split_kernel(const float* in, bf16* hi, bf16* lo, std::int64_t n) {
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < n; i += std::int64_t{gridDim.x} * blockDim.x) {
    const float v = gelu_tanh(in[i]);
    const bf16 h = __float2bfloat16(v);
    hi[i] = h;
    lo[i] = __float2bfloat16(v - __bfloat162float(h));
  }
}

// CFG guidance of one element as the CPU computes it: (1 + t) * cond - t * uncond, each product
// rounded (no FMA contraction).
__device__ __forceinline__ float guide(float cond, float uncond, float a, float bt) {
  return __fsub_rn(__fmul_rn(a, cond), __fmul_rn(bt, uncond));
}

struct Top2 {
  float v1;  // largest
  int i1;    // its lowest index
  float v2;  // largest of the rest (== v1 when the maximum repeats)
};
struct Top2Merge {
  __device__ Top2 operator()(const Top2& a, const Top2& b) const {
    const bool a_wins = a.v1 > b.v1 || (a.v1 == b.v1 && a.i1 < b.i1);
    const Top2& w = a_wins ? a : b;
    const Top2& l = a_wins ? b : a;
    return {w.v1, w.i1, fmaxf(fmaxf(w.v2, l.v1), l.v2)};
  }
};
struct MinInt {
  __device__ int operator()(int a, int b) const { return a < b ? a : b; }
};
struct MaxInt {
  __device__ int operator()(int a, int b) const { return a > b ? a : b; }
};

// Greedy: one CTA per guided row (b, i) of logits [2B, n, V]: argmax (ties to the lowest index) and
// the top-1 minus top-2 gap.
__global__ void __launch_bounds__(kThreads) greedy_kernel(const float* logits, int B, int n, int V, float a, float bt,
                                                          std::int32_t* tokens, float* gaps) {
  using Reduce = cub::BlockReduce<Top2, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  const std::int64_t row = blockIdx.x, b = row / n, i = row % n;
  const float* cond = logits + (b * n + i) * V;
  const float* unc = logits + ((B + b) * n + i) * V;
  Top2 t{-INFINITY, INT_MAX, -INFINITY};
  for (int j = static_cast<int>(threadIdx.x); j < V; j += kThreads) {
    const float g = guide(cond[j], unc[j], a, bt);
    if (g > t.v1) {
      t.v2 = t.v1;
      t.v1 = g;
      t.i1 = j;
    } else if (g > t.v2) {
      t.v2 = g;
    }
  }
  const Top2 r = Reduce(tmp).Reduce(t, Top2Merge{});
  if (threadIdx.x == 0) {
    tokens[row] = r.i1 == INT_MAX ? 0 : r.i1;
    gaps[row] = V < 2 ? 0.0f : r.v1 - r.v2;
  }
}

// Top-k / top-p sampling: one CTA per guided row sorts the V <= 4096 logits (descending, stable) and
// applies the CPU rule: keep values >= the k-th largest (top_k in 1..V-1), then drop every element
// but the largest whose ascending cumulative softmax (its suffix sum in descending order) is
// <= 1 - top_p, then draw u ~ U[0, total kept mass) with Philox (subsequence b L + first + i) and
// take the first kept element (descending order) whose inclusive kept mass exceeds u.
__global__ void __launch_bounds__(kThreads) sample_kernel(const float* logits, int B, int n, int V, float a, float bt,
                                                          int top_k, float top_p, unsigned long long seed,
                                                          std::int64_t first, std::int64_t L, std::int32_t* tokens,
                                                          float* gaps) {
  using Sort = cub::BlockRadixSort<float, kThreads, kSortItems, int>;
  using Scan = cub::BlockScan<float, kThreads>;
  using ReduceI = cub::BlockReduce<int, kThreads>;
  __shared__ union {
    typename Sort::TempStorage sort;
    typename Scan::TempStorage scan;
    typename ReduceI::TempStorage reduce;
  } tmp;
  __shared__ float s_top, s_second, s_kth, s_u;
  __shared__ int s_pick;
  const std::int64_t row = blockIdx.x, b = row / n, i = row % n;
  const float* cond = logits + (b * n + i) * V;
  const float* unc = logits + ((B + b) * n + i) * V;
  const int tid = static_cast<int>(threadIdx.x);
  float key[kSortItems];
  int idx[kSortItems];
#pragma unroll
  for (int k = 0; k < kSortItems; ++k) {
    // Loaded in reverse index order: the stable descending sort then puts the HIGHER index first among
    // equal values, which is the CPU's order (ascending stable sort, read from the end), so top-p drops
    // the same member of a tie as the CPU does.
    const int j = V - 1 - (tid * kSortItems + k);
    if (j >= 0) {
      const float g = guide(cond[j], unc[j], a, bt);
      key[k] = isnan(g) ? -INFINITY : g;
      idx[k] = j;
    } else {
      key[k] = -INFINITY;
      idx[k] = -1;
    }
  }
  Sort(tmp.sort).SortDescending(key, idx);  // blocked: thread t holds sorted positions 16 t .. 16 t + 15
  __syncthreads();
  const bool use_k = top_k > 0 && top_k < V;
  if (tid == 0) {
    s_top = key[0];
    s_second = key[1];
  }
#pragma unroll
  for (int k = 0; k < kSortItems; ++k)
    if (use_k && tid * kSortItems + k == top_k - 1) s_kth = key[k];
  __syncthreads();
  const float m = s_top;
  float p[kSortItems];
#pragma unroll
  for (int k = 0; k < kSortItems; ++k) {
    const bool keep = idx[k] >= 0 && key[k] > -INFINITY && (!use_k || key[k] >= s_kth);
    p[k] = keep ? expf(key[k] - m) : 0.0f;
  }
  float incl[kSortItems];
  float total = 0.0f;
  if (top_p > 0.0f) {
    Scan(tmp.scan).InclusiveSum(p, incl, total);
    __syncthreads();
    const float limit = 1.0f - top_p;
#pragma unroll
    for (int k = 0; k < kSortItems; ++k) {
      const int pos = tid * kSortItems + k;
      const float suffix = (total - incl[k] + p[k]) / total;  // ascending cumulative softmax at this element
      if (pos >= 1 && suffix <= limit) p[k] = 0.0f;
    }
  }
  Scan(tmp.scan).InclusiveSum(p, incl, total);
  __syncthreads();
  if (tid == 0) {
    curandStatePhilox4_32_10_t state;
    curand_init(seed, static_cast<unsigned long long>(b * L + first + i), 0ULL, &state);
    const double u01 = 1.0 - curand_uniform_double(&state);  // [0, 1)
    s_u = static_cast<float>(u01 * static_cast<double>(total));
  }
  __syncthreads();
  const float u = s_u;
  int cand = INT_MAX, last = -1;
#pragma unroll
  for (int k = 0; k < kSortItems; ++k) {
    const int pos = tid * kSortItems + k;
    if (p[k] > 0.0f) {
      last = pos;
      if (cand == INT_MAX && incl[k] > u) cand = pos;
    }
  }
  const int first_cand = ReduceI(tmp.reduce).Reduce(cand, MinInt{});
  __syncthreads();
  const int last_kept = ReduceI(tmp.reduce).Reduce(last, MaxInt{});
  if (tid == 0) s_pick = first_cand != INT_MAX ? first_cand : (last_kept >= 0 ? last_kept : 0);  // u rounded up
  __syncthreads();
  const int pick = s_pick;
#pragma unroll
  for (int k = 0; k < kSortItems; ++k)
    if (tid * kSortItems + k == pick) tokens[row] = idx[k] >= 0 ? idx[k] : 0;
  if (tid == 0) gaps[row] = V < 2 ? 0.0f : s_top - s_second;
}

// ---------------------------------------------------------------------------------------------
// GEMMs: y [M, N] = x [M, K] W^T (+ bias, + GELU) with W [N, K] row-major (the official layout). In
// cuBLAS's column-major terms: D [N, M] = op_T(W as [K, N]) x (x as [K, M]).

enum class Epilogue { bias, gelu_bias };

class Gemm {
 public:
  Gemm() {
    VARKV_BLAS_CHECK(cublasCreate(&blas_));
    VARKV_BLAS_CHECK(cublasLtCreate(&lt_));
    workspace_ = DeviceBuffer<unsigned char>(kWorkspaceBytes);
  }
  ~Gemm() {
    for (auto& [key, plan] : plans_) plan.release();
    if (lt_) cublasLtDestroy(lt_);
    if (blas_) cublasDestroy(blas_);
  }
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  void set_stream(cudaStream_t s) {
    stream_ = s;
    VARKV_BLAS_CHECK(cublasSetStream(blas_, s));
  }

  //! y = epi(x W^T + bias); x, W bf16; y and bias of type `out` (CUDA_R_32F or CUDA_R_16BF). When
  //! cuBLASLt has no algorithm for the shape: cublasGemmEx into fp32 + own epilogue with bias_f32.
  void linear(const bf16* x, std::int64_t M, const bf16* W, int N, int K, const void* bias, const float* bias_f32,
              void* y, cudaDataType_t out, Epilogue epi) {
    if (M == 0) return;
    Plan& plan = plan_for(M, N, K, out, epi, bias);
    if (plan.ok) {
      VARKV_BLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
      const float alpha = 1.0f, beta = 0.0f;
      VARKV_BLAS_CHECK(cublasLtMatmul(lt_, plan.desc, &alpha, W, plan.a, x, plan.b, &beta, y, plan.c, y, plan.c,
                                      &plan.algo, workspace_.data(), kWorkspaceBytes, stream_));
      return;
    }
    ++fallbacks_;
    const std::int64_t total = M * N;
    float* acc = out == CUDA_R_32F ? static_cast<float*>(y) : scratch(static_cast<std::size_t>(total));
    const float alpha = 1.0f, beta = 0.0f;
    VARKV_BLAS_CHECK(cublasGemmEx(blas_, CUBLAS_OP_T, CUBLAS_OP_N, N, static_cast<int>(M), K, &alpha, W, CUDA_R_16BF, K,
                                  x, CUDA_R_16BF, K, &beta, acc, CUDA_R_32F, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    const bool gelu = epi == Epilogue::gelu_bias;
    if (out == CUDA_R_32F) {
      if (gelu) bias_act_kernel<float, true><<<grid_for(total), kThreads, 0, stream_>>>(acc, bias_f32, static_cast<float*>(y), M, N);
      else bias_act_kernel<float, false><<<grid_for(total), kThreads, 0, stream_>>>(acc, bias_f32, static_cast<float*>(y), M, N);
    } else {
      if (gelu) bias_act_kernel<bf16, true><<<grid_for(total), kThreads, 0, stream_>>>(acc, bias_f32, static_cast<bf16*>(y), M, N);
      else bias_act_kernel<bf16, false><<<grid_for(total), kThreads, 0, stream_>>>(acc, bias_f32, static_cast<bf16*>(y), M, N);
    }
    VARKV_CUDA_CHECK_LAUNCH("bias_act_kernel");
  }

  //! y = bf16(gelu_tanh(x W^T + bias)) without cuBLASLt's GELU: fp32 + bias into a scratch buffer,
  //! then the own gelu_tanh kernel.
  void linear_gelu_unfused(const bf16* x, std::int64_t M, const bf16* W, int N, int K, const float* bias, bf16* y) {
    if (M == 0) return;
    const std::int64_t total = M * N;
    float* acc = scratch(static_cast<std::size_t>(total));
    linear(x, M, W, N, K, bias, bias, acc, CUDA_R_32F, Epilogue::bias);
    gelu_bf16_kernel<<<grid_for(total), kThreads, 0, stream_>>>(acc, y, total);
    VARKV_CUDA_CHECK_LAUNCH("gelu_bf16_kernel");
  }

  //! y [M, N] += x [M, K] W^T (x, W bf16; y fp32): the low term of a split (hi + lo) input.
  void accumulate(const bf16* x, std::int64_t M, const bf16* W, int N, int K, float* y) {
    if (M == 0) return;
    const float alpha = 1.0f, beta = 1.0f;
    VARKV_BLAS_CHECK(cublasGemmEx(blas_, CUBLAS_OP_T, CUBLAS_OP_N, N, static_cast<int>(M), K, &alpha, W, CUDA_R_16BF, K,
                                  x, CUDA_R_16BF, K, &beta, y, CUDA_R_32F, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }

  //! y [M, N] = x [M, K] W^T in fp32 (no TF32), no bias.
  void linear_f32(const float* x, std::int64_t M, const float* W, int N, int K, float* y) {
    if (M == 0) return;
    const float alpha = 1.0f, beta = 0.0f;
    VARKV_BLAS_CHECK(cublasGemmEx(blas_, CUBLAS_OP_T, CUBLAS_OP_N, N, static_cast<int>(M), K, &alpha, W, CUDA_R_32F, K,
                                  x, CUDA_R_32F, K, &beta, y, CUDA_R_32F, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }

  //! Whether cuBLASLt has an algorithm for this configuration (else `linear` falls back).
  bool lt_available(std::int64_t M, int N, int K, cudaDataType_t out, Epilogue epi, const void* bias) {
    return plan_for(M, N, K, out, epi, bias).ok;
  }
  std::int64_t fallbacks() const { return fallbacks_; }

 private:
  static constexpr std::size_t kWorkspaceBytes = std::size_t{32} << 20;

  struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
    bool ok = false;
    void release() {
      if (desc) cublasLtMatmulDescDestroy(desc);
      if (a) cublasLtMatrixLayoutDestroy(a);
      if (b) cublasLtMatrixLayoutDestroy(b);
      if (c) cublasLtMatrixLayoutDestroy(c);
      desc = nullptr;
      a = b = c = nullptr;
    }
  };
  using Key = std::tuple<std::int64_t, int, int, int, int>;

  Plan& plan_for(std::int64_t M, int N, int K, cudaDataType_t out, Epilogue epi, const void* bias) {
    const Key key{M, N, K, static_cast<int>(out), static_cast<int>(epi)};
    auto it = plans_.find(key);
    if (it != plans_.end()) return it->second;
    Plan p;
    VARKV_BLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    VARKV_BLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    VARKV_BLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    const cublasLtEpilogue_t e = epi == Epilogue::bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_GELU_BIAS;
    VARKV_BLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &e, sizeof e));
    VARKV_BLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
    VARKV_BLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16BF, static_cast<std::uint64_t>(K), static_cast<std::uint64_t>(N), K));
    VARKV_BLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16BF, static_cast<std::uint64_t>(K), static_cast<std::uint64_t>(M), K));
    VARKV_BLAS_CHECK(cublasLtMatrixLayoutCreate(&p.c, out, static_cast<std::uint64_t>(N), static_cast<std::uint64_t>(M), N));
    cublasLtMatmulPreference_t pref = nullptr;
    VARKV_BLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const std::uint64_t ws = kWorkspaceBytes;
    VARKV_BLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    cublasLtMatmulHeuristicResult_t result{};
    int returned = 0;
    const cublasStatus_t st =
        cublasLtMatmulAlgoGetHeuristic(lt_, p.desc, p.a, p.b, p.c, p.c, pref, 1, &result, &returned);
    cublasLtMatmulPreferenceDestroy(pref);
    if (st == CUBLAS_STATUS_SUCCESS && returned > 0 && result.state == CUBLAS_STATUS_SUCCESS) {
      p.algo = result.algo;
      p.ok = true;
    }
    return plans_.emplace(key, p).first->second;
  }

  float* scratch(std::size_t n) {
    if (scratch_.size() < n) scratch_ = DeviceBuffer<float>(n);
    return scratch_.data();
  }

  cublasHandle_t blas_ = nullptr;
  cublasLtHandle_t lt_ = nullptr;
  cudaStream_t stream_ = nullptr;
  DeviceBuffer<unsigned char> workspace_;
  DeviceBuffer<float> scratch_;
  std::map<Key, Plan> plans_;
  std::int64_t fallbacks_ = 0;
};

struct DevLinear {
  int in = 0, out = 0;
  DeviceBuffer<bf16> w;    // [out, in]
  DeviceBuffer<float> b;   // [out] fp32
  DeviceBuffer<bf16> b16;  // [out] bf16 (fc1's GELU_BIAS epilogue only)
};

struct DevBlock {
  DevLinear qkv, proj, fc1, fc2;
};

template <class T>
void upload_async(T* dst, const T* src, std::size_t n, cudaStream_t s) {
  if (n) VARKV_CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(T), cudaMemcpyHostToDevice, s));
}
template <class T>
void download_async(T* dst, const T* src, std::size_t n, cudaStream_t s) {
  if (n) VARKV_CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(T), cudaMemcpyDeviceToHost, s));
}

double gelu_tanh_host(double v) { return 0.5 * v * (1.0 + std::tanh(0.7978845608028654 * (v + 0.044715 * v * v * v))); }
double gelu_erf_host(double v) { return 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0))); }

void launch_choose(const float* logits, int B, int n, int V, double t, int top_k, double top_p, std::uint64_t seed,
                   std::int64_t first, std::int64_t L, std::int32_t* tokens, float* gaps, cudaStream_t s) {
  const float a = static_cast<float>(1.0 + t), bt = static_cast<float>(t);
  const auto rows = static_cast<unsigned>(std::int64_t{B} * n);
  if (rows == 0) return;
  if (top_k == 1) {
    greedy_kernel<<<rows, kThreads, 0, s>>>(logits, B, n, V, a, bt, tokens, gaps);
    VARKV_CUDA_CHECK_LAUNCH("greedy_kernel");
  } else {
    require(V <= kMaxSampleVocab, "GPU sampling: vocab {} exceeds {} (one CTA sorts a row); use --top-k 1 (greedy)", V,
            kMaxSampleVocab);
    sample_kernel<<<rows, kThreads, 0, s>>>(logits, B, n, V, a, bt, top_k, static_cast<float>(top_p), seed, first, L,
                                            tokens, gaps);
    VARKV_CUDA_CHECK_LAUNCH("sample_kernel");
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Availability

bool cuda_device_available(std::string* why) {
  int devices = 0;
  const cudaError_t st = cudaGetDeviceCount(&devices);
  if (st != cudaSuccess || devices == 0) {
    if (why) *why = st != cudaSuccess ? std::string(cudaGetErrorString(st)) : std::string("0 devices");
    cudaGetLastError();  // clear the sticky-free error state
    return false;
  }
  // The kernels are built for one architecture (VARKV_CUDA_GENCODE); a device that cannot run them
  // has no image for this kernel.
  cudaFuncAttributes attr{};
  const cudaError_t fa = cudaFuncGetAttributes(&attr, greedy_kernel);
  if (fa != cudaSuccess) {
    if (why) {
      cudaDeviceProp prop{};
      cudaGetDeviceProperties(&prop, 0);
      *why = std::string(cudaGetErrorString(fa)) + " on " + prop.name + " (sm_" + std::to_string(prop.major) +
             std::to_string(prop.minor) + "); the kernels were built for VARKV_CUDA_GENCODE";
    }
    cudaGetLastError();
    return false;
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// VarModelCuda

struct VarModelCuda::Impl {
  const VarModel* host = nullptr;
  VarConfig cfg;
  Gemm gemm;
  std::vector<DevBlock> blocks;
  DevLinear ada;   // [(6 depth + 2) C, C]: blocks' ada_lin, then head_nm.ada_lin
  DevLinear head;  // [vocab, C]
  DeviceBuffer<float> word_w, word_b;  // [C, Cvae], [C] fp32
  DeviceBuffer<float> lvl_pos;         // [L, C]
  DeviceBuffer<float> q_scale;         // [depth, H]
  bool gelu_epilogue = false;
  std::string gelu_note;
  std::int64_t bytes = 0;
};

namespace {

// Converts a host fp32 [rows, in] weight into dst (bf16) through a device staging buffer.
void upload_bf16(const std::vector<float>& host, bf16* dst, DeviceBuffer<float>& staging) {
  if (staging.size() < host.size()) staging = DeviceBuffer<float>(host.size());
  VARKV_CUDA_CHECK(cudaMemcpy(staging.data(), host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice));
  f32_to_bf16_kernel<<<grid_for(static_cast<std::int64_t>(host.size())), kThreads>>>(staging.data(), dst,
                                                                                     static_cast<std::int64_t>(host.size()));
  VARKV_CUDA_CHECK_LAUNCH("f32_to_bf16_kernel");
  VARKV_CUDA_CHECK(cudaDeviceSynchronize());  // the staging buffer is reused by the next upload
}

DevLinear upload_linear(const Linear& l, DeviceBuffer<float>& staging, bool bias_bf16 = false) {
  DevLinear d;
  d.in = l.in;
  d.out = l.out;
  d.w = DeviceBuffer<bf16>(static_cast<std::size_t>(l.out) * l.in);
  upload_bf16(l.weight(), d.w.data(), staging);
  const auto b = l.bias_values();
  d.b = DeviceBuffer<float>(std::vector<float>(b.begin(), b.end()));
  if (bias_bf16) {
    d.b16 = DeviceBuffer<bf16>(static_cast<std::size_t>(l.out));
    upload_bf16(std::vector<float>(b.begin(), b.end()), d.b16.data(), staging);
  }
  return d;
}

std::int64_t linear_bytes(const DevLinear& l) {
  return static_cast<std::int64_t>(l.w.bytes() + l.b.bytes() + l.b16.bytes());
}

// Runs cuBLASLt's GELU_BIAS epilogue on 16 known points (x = I, W = diag(points)) and compares with
// gelu_tanh and gelu_erf; true when it is the tanh form within 3e-5.
bool probe_gelu_epilogue(Gemm& gemm, std::string& note) {
  constexpr int n = 16;
  const float points[n] = {-4.0f, -3.0f, -2.5f, -2.0f, -1.5f, -1.0f, -0.5f, -0.25f,
                           0.25f, 0.5f,  0.75f, 1.0f,  1.5f,  2.0f,  3.0f,  4.0f};
  std::vector<float> x(n * n, 0.0f), w(n * n, 0.0f);
  for (int i = 0; i < n; ++i) {
    x[i * n + i] = 1.0f;
    w[i * n + i] = points[i];
  }
  DeviceBuffer<float> staging;
  DeviceBuffer<bf16> dx(n * n), dw(n * n);
  upload_bf16(x, dx.data(), staging);
  upload_bf16(w, dw.data(), staging);
  DeviceBuffer<float> bias(std::vector<float>(n, 0.0f)), y(n * n);
  gemm.set_stream(nullptr);
  if (!gemm.lt_available(n, n, n, CUDA_R_32F, Epilogue::gelu_bias, bias.data())) {
    note = "own gelu_tanh kernel (cuBLASLt offers no GELU_BIAS algorithm here)";
    return false;
  }
  gemm.linear(dx.data(), n, dw.data(), n, n, bias.data(), bias.data(), y.data(), CUDA_R_32F, Epilogue::gelu_bias);
  VARKV_CUDA_CHECK(cudaDeviceSynchronize());
  const auto got = y.download();
  double dev_tanh = 0, dev_erf = 0;
  for (int m = 0; m < n; ++m)
    for (int j = 0; j < n; ++j) {
      const double v = got[static_cast<std::size_t>(m) * n + j];
      const double in = m == j ? points[j] : 0.0;
      dev_tanh = std::max(dev_tanh, std::abs(v - gelu_tanh_host(in)));
      dev_erf = std::max(dev_erf, std::abs(v - gelu_erf_host(in)));
    }
  const bool ok = dev_tanh <= 3e-5 && dev_tanh < dev_erf;
  note = fmt::format("{} (probe: max |cuBLASLt - gelu_tanh| {:.1e}, max |cuBLASLt - gelu_erf| {:.1e})",
                     ok ? "cublasLt GELU_BIAS epilogue" : "own gelu_tanh kernel", dev_tanh, dev_erf);
  return ok;
}

}  // namespace

VarModelCuda::VarModelCuda(const VarModel& model) {
  // Everything that can refuse the model runs before any device work.
  const VarConfig& config = model.config();
  config.validate();
  const int C = config.width, D = config.depth, H = config.heads, d = config.head_dim();
  require(d == 64 || d == 128, "VarModelCuda: head_dim {} (width {} / {} heads) is not supported; the fused attention "
          "takes 64 or 128", d, C, H);
  require(C <= kThreads * kLnPerThread, "VarModelCuda: width {} exceeds {} (LayerNorm kernel)", C,
          kThreads * kLnPerThread);
  std::string why;
  require(cuda_device_available(&why), "VarModelCuda: no usable CUDA device ({})", why);
  impl_ = std::make_unique<Impl>();
  Impl& m = *impl_;
  m.host = &model;
  m.cfg = config;

  DeviceBuffer<float> staging;
  for (int l = 0; l < D; ++l) {
    const VarBlock& b = model.block(l);
    DevBlock blk;
    blk.qkv = upload_linear(b.mat_qkv, staging);
    blk.proj = upload_linear(b.proj, staging);
    blk.fc1 = upload_linear(b.fc1, staging, /*bias_bf16=*/true);
    blk.fc2 = upload_linear(b.fc2, staging);
    m.bytes += linear_bytes(blk.qkv) + linear_bytes(blk.proj) + linear_bytes(blk.fc1) + linear_bytes(blk.fc2);
    m.blocks.push_back(std::move(blk));
  }
  // AdaLN of every block and of the head in one matrix: rows [6C l, 6C (l + 1)) = block l,
  // rows [6C D, 6C D + 2C) = head.
  const std::int64_t ada_rows = 6LL * C * D + 2LL * C;
  m.ada.in = C;
  m.ada.out = static_cast<int>(ada_rows);
  m.ada.w = DeviceBuffer<bf16>(static_cast<std::size_t>(ada_rows) * C);
  std::vector<float> ada_bias;
  ada_bias.reserve(static_cast<std::size_t>(ada_rows));
  for (int l = 0; l <= D; ++l) {
    const Linear& lin = l < D ? model.block(l).ada_lin : model.head_ada();
    require(lin.in == C && lin.out == (l < D ? 6 * C : 2 * C), "VarModelCuda: ada_lin of {} has shape [{}, {}]",
            l < D ? "block " + std::to_string(l) : std::string("the head"), lin.out, lin.in);
    upload_bf16(lin.weight(), m.ada.w.data() + 6LL * C * l * C, staging);
    const auto b = lin.bias_values();
    ada_bias.insert(ada_bias.end(), b.begin(), b.end());
  }
  m.ada.b = DeviceBuffer<float>(ada_bias);
  m.bytes += linear_bytes(m.ada);
  m.head = upload_linear(model.head(), staging);
  m.bytes += linear_bytes(m.head);
  const Linear& we = model.word_embed();
  m.word_w = DeviceBuffer<float>(we.weight());
  const auto wb = we.bias_values();
  m.word_b = DeviceBuffer<float>(std::vector<float>(wb.begin(), wb.end()));
  m.lvl_pos = DeviceBuffer<float>(model.level_position());
  std::vector<float> qs;
  for (int l = 0; l < D; ++l) {
    const auto& s = model.block(l).q_scale;
    require(static_cast<int>(s.size()) == H, "VarModelCuda: block {} has {} q scales for {} heads", l, s.size(), H);
    qs.insert(qs.end(), s.begin(), s.end());
  }
  m.q_scale = DeviceBuffer<float>(qs);
  m.bytes += static_cast<std::int64_t>(m.word_w.bytes() + m.word_b.bytes() + m.lvl_pos.bytes() + m.q_scale.bytes());
  VARKV_CUDA_CHECK(cudaDeviceSynchronize());
  m.gelu_epilogue = probe_gelu_epilogue(m.gemm, m.gelu_note);
}

VarModelCuda::~VarModelCuda() = default;
VarModelCuda::VarModelCuda(VarModelCuda&&) noexcept = default;
VarModelCuda& VarModelCuda::operator=(VarModelCuda&&) noexcept = default;

const VarModel& VarModelCuda::host() const { return *impl_->host; }
const VarConfig& VarModelCuda::config() const { return impl_->cfg; }
std::int64_t VarModelCuda::weight_bytes() const { return impl_->bytes; }
std::string VarModelCuda::gelu_path() const { return impl_->gelu_note; }
std::int64_t VarModelCuda::gemm_fallbacks() const { return impl_->gemm.fallbacks(); }

// ---------------------------------------------------------------------------------------------
// One scale step

namespace {

// Activations of one generation, sized for the largest scale.
// Scratch of one generation. qkv (fp32, qkv GEMM -> q/k norm), a (bf16, fc1 -> fc2), logits (fp32,
// head -> token choice) and emb (fp32, word embedding -> next input) are never alive at the same
// time: they share one buffer; y (fp32 proj / fc2 output -> the next LayerNorm) is alive with a only
// and sits behind it in the same buffer (a + y = qkv in size for VAR's MLP ratio 4). h_lo
// (LayerNorm -> the GEMM that reads it) and o (attention -> proj) alternate and share the o buffer. This keeps VAR-d30 at 1024 images (x2 CFG) inside an 80 GB
// GPU beside a 10% cache.
struct Workspace {
  Workspace(const VarConfig& cfg, int B, bool split) {
    const int N = 2 * B, C = cfg.width, D = cfg.depth, H = cfg.heads;
    const std::int64_t n_max = std::int64_t{cfg.patch_nums.back()} * cfg.patch_nums.back();
    const auto rows = static_cast<std::size_t>(N * n_max);
    const std::size_t qkv_bytes = rows * 3 * C * sizeof(float);
    const std::size_t a_bytes = rows * static_cast<std::size_t>(cfg.hidden()) * sizeof(bf16);
    const std::size_t logits_bytes = rows * static_cast<std::size_t>(cfg.vocab) * sizeof(float);
    const std::size_t emb_bytes = static_cast<std::size_t>(B * n_max) * C * sizeof(float);
    const std::size_t y_offset = (a_bytes + 255) / 256 * 256, y_bytes = rows * C * sizeof(float);
    shared = DeviceBuffer<float>(
        (std::max({qkv_bytes, y_offset + y_bytes, logits_bytes, emb_bytes}) + sizeof(float) - 1) / sizeof(float));
    qkv = shared.data();
    logits = shared.data();
    emb = shared.data();
    a = reinterpret_cast<bf16*>(shared.data());
    y = shared.data() + y_offset / sizeof(float);
    x = DeviceBuffer<float>(rows * C);
    lse = DeviceBuffer<float>(static_cast<std::size_t>(N) * H * n_max);
    params = DeviceBuffer<float>(static_cast<std::size_t>(N) * (6LL * D + 2) * C);
    cond = DeviceBuffer<float>(static_cast<std::size_t>(N) * C);
    in = DeviceBuffer<float>(static_cast<std::size_t>(B * n_max) * cfg.Cvae);
    h = DeviceBuffer<bf16>(rows * C);
    act_lo = DeviceBuffer<bf16>(static_cast<std::size_t>(N) * C);
    q = DeviceBuffer<bf16>(rows * C);
    k = DeviceBuffer<bf16>(rows * C);
    v = DeviceBuffer<bf16>(rows * C);
    o = DeviceBuffer<bf16>(rows * C);
    h_lo = o.data();
    if (split) {
      a_lo = DeviceBuffer<bf16>(rows * static_cast<std::size_t>(cfg.hidden()));
      f = DeviceBuffer<float>(rows * static_cast<std::size_t>(cfg.hidden()));
    }
    act = DeviceBuffer<bf16>(static_cast<std::size_t>(N) * C);
    const std::int64_t L = cfg.total_tokens();
    tokens = DeviceBuffer<std::int32_t>(static_cast<std::size_t>(B * L));
    gaps = DeviceBuffer<float>(static_cast<std::size_t>(B * L));
    step_tokens = DeviceBuffer<std::int32_t>(static_cast<std::size_t>(B * n_max));
    step_gaps = DeviceBuffer<float>(static_cast<std::size_t>(B * n_max));
    const int P = cfg.patch_nums.back();
    f_hat = DeviceBuffer<float>(static_cast<std::size_t>(B) * cfg.Cvae * P * P);
  }
  DeviceBuffer<float> shared;  // qkv | a, y | logits | emb
  float* qkv = nullptr;
  float* y = nullptr;
  float* logits = nullptr;
  float* emb = nullptr;
  bf16* a = nullptr;
  bf16* h_lo = nullptr;  // = o
  DeviceBuffer<float> x, lse, params, cond, in, f, f_hat;
  DeviceBuffer<bf16> h, q, k, v, o, a_lo, act, act_lo;
  DeviceBuffer<std::int32_t> tokens, step_tokens;  // [B, L] (every scale's choice, downloaded at the end), [B, n_max]
  DeviceBuffer<float> gaps, step_gaps;              // same
  DeviceBuffer<std::int32_t> forced;                // [B, L] under teacher forcing
};

enum Chunk { kGamma1 = 0, kGamma2, kScale1, kScale2, kShift1, kShift2 };

void launch_ln(float* x, const float* y, const float* gamma, const float* scale, const float* shift, std::int64_t pstride,
               bf16* h, std::int64_t rows, int n, int C, float eps, cudaStream_t s, bf16* h_lo = nullptr) {
  if (rows == 0) return;
  residual_ln_kernel<<<static_cast<unsigned>(rows), kThreads, 0, s>>>(x, y, gamma, scale, shift, pstride, h, h_lo, n, C,
                                                                      eps);
  VARKV_CUDA_CHECK_LAUNCH("residual_ln_kernel");
}

// The blocks and the head of scale si on w.x (fp32 [N n, C]); logits [N n, V] into w.logits.
// split: every GEMM input this code produces (LayerNorm and GELU outputs) goes in as hi + lo bf16
// terms (CudaPrecision::split_bf16); otherwise only the head's.
void run_scale(VarModelCuda::Impl& m, Workspace& w, CudaCacheBackend& cache, int si, int N, bool split, cudaStream_t s) {
  const VarConfig& cfg = m.cfg;
  const int C = cfg.width, H = cfg.heads, d = cfg.head_dim(), D = cfg.depth, hid = cfg.hidden();
  const int n = cfg.patch_nums[si] * cfg.patch_nums[si];
  const std::int64_t rows = std::int64_t{N} * n;
  const std::int64_t ps = (6LL * D + 2) * C;
  const float eps = static_cast<float>(cfg.norm_eps);
  const float* P = w.params.data();
  // Chunk c of block l's AdaLN parameters (l == D: the head's scale (0) and shift (1)).
  const auto chunk = [&](int l, int c) { return P + 6LL * C * l + std::int64_t{c} * C; };
  Gemm& g = m.gemm;

  const std::array<std::int64_t, 4> shape{N, H, n, d};
  const std::int64_t cap = rows * C;
  const auto q = make_view<4>("q", static_cast<const bf16*>(w.q.data()), shape, cap);
  const auto k = make_view<4>("k", static_cast<const bf16*>(w.k.data()), shape, cap);
  const auto v = make_view<4>("v", static_cast<const bf16*>(w.v.data()), shape, cap);
  // O straight into [N, n, C] (row-major tokens): the layout the proj GEMM reads.
  const auto o = make_view<4>("attention out", w.o.data(), shape, {std::int64_t{n} * C, d, C, 1}, cap);
  const auto lse = make_view<3>("lse", w.lse.data(), {N, H, n}, static_cast<std::int64_t>(w.lse.size()));

  bf16* h_lo = split ? w.h_lo : nullptr;
  launch_ln(w.x.data(), nullptr, nullptr, chunk(0, kScale1), chunk(0, kShift1), ps, w.h.data(), rows, n, C, eps, s, h_lo);
  for (int l = 0; l < D; ++l) {
    const DevBlock& b = m.blocks[static_cast<std::size_t>(l)];
    g.linear(w.h.data(), rows, b.qkv.w.data(), 3 * C, C, b.qkv.b.data(), b.qkv.b.data(), w.qkv, CUDA_R_32F,
             Epilogue::bias);
    if (split) g.accumulate(h_lo, rows, b.qkv.w.data(), 3 * C, C, w.qkv);
    const std::int64_t warps = rows * H;
    const unsigned blocks = static_cast<unsigned>((warps * 32 + kThreads - 1) / kThreads);
    if (d == 64)
      qk_norm_kernel<2><<<blocks, kThreads, 0, s>>>(w.qkv, m.q_scale.data() + std::int64_t{l} * H, w.q.data(),
                                                    w.k.data(), w.v.data(), rows, n, H, C);
    else
      qk_norm_kernel<4><<<blocks, kThreads, 0, s>>>(w.qkv, m.q_scale.data() + std::int64_t{l} * H, w.q.data(),
                                                    w.k.data(), w.v.data(), rows, n, H, C);
    VARKV_CUDA_CHECK_LAUNCH("qk_norm_kernel");
    cache.attend_commit(si, l, q, k, v, o, lse, s);
    g.linear(w.o.data(), rows, b.proj.w.data(), C, C, b.proj.b.data(), b.proj.b.data(), w.y, CUDA_R_32F,
             Epilogue::bias);
    launch_ln(w.x.data(), w.y, chunk(l, kGamma1), chunk(l, kScale2), chunk(l, kShift2), ps, w.h.data(), rows, n,
              C, eps, s, h_lo);
    if (split) {
      // fc1 in fp32 (hi + lo), gelu_tanh, split again for fc2.
      const std::int64_t total = rows * hid;
      g.linear(w.h.data(), rows, b.fc1.w.data(), hid, C, b.fc1.b.data(), b.fc1.b.data(), w.f.data(), CUDA_R_32F,
               Epilogue::bias);
      g.accumulate(h_lo, rows, b.fc1.w.data(), hid, C, w.f.data());
      gelu_split_kernel<<<grid_for(total), kThreads, 0, s>>>(w.f.data(), w.a, w.a_lo.data(), total);
      VARKV_CUDA_CHECK_LAUNCH("gelu_split_kernel");
    } else if (m.gelu_epilogue) {
      g.linear(w.h.data(), rows, b.fc1.w.data(), hid, C, b.fc1.b16.data(), b.fc1.b.data(), w.a, CUDA_R_16BF,
               Epilogue::gelu_bias);
    } else {
      g.linear_gelu_unfused(w.h.data(), rows, b.fc1.w.data(), hid, C, b.fc1.b.data(), w.a);
    }
    g.linear(w.a, rows, b.fc2.w.data(), C, hid, b.fc2.b.data(), b.fc2.b.data(), w.y, CUDA_R_32F,
             Epilogue::bias);
    if (split) g.accumulate(w.a_lo.data(), rows, b.fc2.w.data(), C, hid, w.y);
    const bool last = l + 1 == D;
    launch_ln(w.x.data(), w.y, chunk(l, kGamma2), last ? chunk(D, 0) : chunk(l + 1, kScale1),
              last ? chunk(D, 1) : chunk(l + 1, kShift1), ps, w.h.data(), rows, n, C, eps, s,
              last ? w.h_lo : h_lo);
  }
  // The head reads its input as hi + lo (two GEMMs; ~0.3% of VAR-d30's FLOPs): see the file comment.
  g.linear(w.h.data(), rows, m.head.w.data(), cfg.vocab, C, m.head.b.data(), m.head.b.data(), w.logits,
           CUDA_R_32F, Epilogue::bias);
  g.accumulate(w.h_lo, rows, m.head.w.data(), cfg.vocab, C, w.logits);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Generation

namespace {

// Device memory in use by the whole process (weights, context, caches): total - free.
std::int64_t device_bytes_in_use() {
  std::size_t free = 0, total = 0;
  VARKV_CUDA_CHECK(cudaMemGetInfo(&free, &total));
  return static_cast<std::int64_t>(total - free);
}

bool is_out_of_memory(const varkv::Error& e) {
  const std::string_view what = e.what();
  return what.find("out of memory") != std::string_view::npos || what.find("cudaErrorMemoryAllocation") != std::string_view::npos;
}

void check_forced(const VarConfig& cfg, int B, const CudaGenerationOptions& options) {
  const std::int64_t L = cfg.total_tokens();
  require(static_cast<std::int64_t>(options.forced_tokens.size()) == std::int64_t{B} * L,
          "GPU generation: forced_tokens has {} values, expected [{}, {}] (images x tokens)", options.forced_tokens.size(),
          B, L);
  for (std::size_t i = 0; i < options.forced_tokens.size(); ++i)
    require(options.forced_tokens[i] >= 0 && options.forced_tokens[i] < cfg.vocab,
            "GPU generation: forced_tokens[{}] = {} is outside 0..{}", i, options.forced_tokens[i], cfg.vocab - 1);
}

}  // namespace

CudaGenerationResult generate_cuda(const VarModelCuda& model, const VqVae& vae, const GenerationRequest& req,
                                   const CudaGenerationOptions& options, const ProgressFn& progress) {
  const VqVaeCuda vae_cuda(vae);
  return generate_cuda(model, vae_cuda, req, options, progress);
}

CudaGenerationResult generate_cuda(const VarModelCuda& model, const VqVaeCuda& vae_cuda, const GenerationRequest& req,
                                   const CudaGenerationOptions& options, const ProgressFn& progress) {
  using clock = std::chrono::steady_clock;
  VarModelCuda::Impl& m = model.impl();
  const VarModel& var = *m.host;
  const VqVae& vae = vae_cuda.host();
  detail::validate_request(var, vae, req);
  const VarConfig& cfg = m.cfg;
  const int B = static_cast<int>(req.labels.size()), N = 2 * B, S = cfg.scales(), V = cfg.vocab, C = cfg.width;
  const std::int64_t L = cfg.total_tokens();
  const int P = cfg.patch_nums.back();
  const bool forced = !options.forced_tokens.empty();
  if (forced) {
    check_forced(cfg, B, options);
  } else {
    require(req.top_k == 1 || V <= kMaxSampleVocab,
            "GPU generation: sampling (top_k {}) supports vocab <= {}, the model has {}; use top_k 1 (greedy)",
            req.top_k, kMaxSampleVocab, V);
  }
  const std::int64_t bytes_at_entry = device_bytes_in_use();
  auto cache = make_cuda_cache(options.policy, cfg.geometry(), cfg.schedule(), BatchShape{B, true});

  Stream stream;
  m.gemm.set_stream(stream);
  const bool split = options.precision == CudaPrecision::split_bf16;
  auto workspace = std::make_unique<Workspace>(cfg, B, split);
  Workspace& w = *workspace;
  if (forced) {
    w.forced = DeviceBuffer<std::int32_t>(options.forced_tokens.size());
    upload_async(w.forced.data(), options.forced_tokens.data(), options.forced_tokens.size(), stream);
  }
  VARKV_CUDA_CHECK(cudaMemsetAsync(w.f_hat.data(), 0, w.f_hat.bytes(), stream));

  CudaGenerationResult out;
  GenerationResult& r = out.result;
  r.images = B;
  out.device_peak_bytes = device_bytes_in_use();

  // Conditioning: class embeddings (null class for CFG), SiLU, one GEMM for all AdaLN parameters.
  std::vector<int> labels(req.labels);
  for (int b = 0; b < B; ++b) labels.push_back(cfg.num_classes);
  const auto cond = var.class_embedding(labels);
  upload_async(w.cond.data(), cond.data(), cond.size(), stream);
  silu_split_kernel<<<grid_for(static_cast<std::int64_t>(cond.size())), kThreads, 0, stream>>>(
      w.cond.data(), w.act.data(), w.act_lo.data(), static_cast<std::int64_t>(cond.size()));
  VARKV_CUDA_CHECK_LAUNCH("silu_split_kernel");
  m.gemm.linear(w.act.data(), N, m.ada.w.data(), m.ada.out, C, m.ada.b.data(), m.ada.b.data(), w.params.data(),
                CUDA_R_32F, Epilogue::bias);
  m.gemm.accumulate(w.act_lo.data(), N, m.ada.w.data(), m.ada.out, C, w.params.data());
  const auto first = var.first_token_map(cond, N);
  upload_async(w.x.data(), first.data(), first.size(), stream);

  std::int64_t begin = 0;
  for (int si = 0; si < S; ++si) {
    const auto t0 = clock::now();
    const int pn = cfg.patch_nums[si], n = pn * pn;
    run_scale(m, w, *cache, si, N, split, stream);
    if (options.keep_logits) {
      std::vector<float> lg(static_cast<std::size_t>(N) * n * V);
      download_async(lg.data(), w.logits, lg.size(), stream);
      out.logits.push_back(std::move(lg));
    }
    // As Python evaluates it: ratio = si / (S - 1), then t = cfg * ratio.
    const double ratio = S > 1 ? static_cast<double>(si) / (S - 1) : 0.0;
    const double t = req.cfg * ratio;
    launch_choose(w.logits, B, n, V, t, forced ? 1 : req.top_k, req.top_p, req.seed, begin, L, w.step_tokens.data(),
                  w.step_gaps.data(), stream);
    record_scale_kernel<<<grid_for(std::int64_t{B} * n), kThreads, 0, stream>>>(
        w.step_tokens.data(), w.step_gaps.data(), forced ? w.forced.data() : nullptr, w.tokens.data(), w.gaps.data(), B,
        n, L, begin);
    VARKV_CUDA_CHECK_LAUNCH("record_scale_kernel");

    // The quantizer's f_hat update and the next scale's input, on the device.
    const bool last = si + 1 == S;
    vae_cuda.next_autoregressive_input(si, w.f_hat.data(), B, w.step_tokens.data(), last ? nullptr : w.in.data(),
                                       static_cast<void*>(stream));
    if (!last) {
      const int pn1 = cfg.patch_nums[si + 1], n1 = pn1 * pn1;
      m.gemm.linear_f32(w.in.data(), std::int64_t{B} * n1, m.word_w.data(), C, cfg.Cvae, w.emb);
      const std::int64_t total = 2LL * B * n1 * C;
      embed_next_kernel<<<grid_for(total), kThreads, 0, stream>>>(w.emb, m.word_b.data(), m.lvl_pos.data(),
                                                                  w.x.data(), B, n1, C, begin + n);
      VARKV_CUDA_CHECK_LAUNCH("embed_next_kernel");
    }
    // One synchronisation per scale: the time per scale is wall time of finished device work.
    VARKV_CUDA_CHECK(cudaStreamSynchronize(stream));
    out.device_peak_bytes = std::max(out.device_peak_bytes, device_bytes_in_use());
    begin += n;
    const double sec = std::chrono::duration<double>(clock::now() - t0).count();
    r.scale_seconds.push_back(sec);
    if (progress) progress({si, S, pn, sec, cache->ledger().bytes(si)});
  }
  m.gemm.set_stream(nullptr);
  out.ledger.emplace(cache->ledger());
  out.cache = cache->name();
  out.kv_allocated_bytes = cache->kv_bytes();

  // Tokens, gaps and f_hat come down once.
  r.tokens.resize(static_cast<std::size_t>(B * L));
  std::vector<float> gaps(static_cast<std::size_t>(B * L));
  r.f_hat.resize(static_cast<std::size_t>(B) * cfg.Cvae * P * P);
  download_async(r.tokens.data(), w.tokens.data(), r.tokens.size(), stream);
  download_async(gaps.data(), w.gaps.data(), gaps.size(), stream);
  download_async(r.f_hat.data(), w.f_hat.data(), r.f_hat.size(), stream);
  VARKV_CUDA_CHECK(cudaStreamSynchronize(stream));
  begin = 0;
  for (int si = 0; si < S; ++si) {
    const int n = cfg.patch_nums[si] * cfg.patch_nums[si];
    float gap = std::numeric_limits<float>::infinity();
    for (int b = 0; b < B; ++b)
      for (int i = 0; i < n; ++i) gap = std::min(gap, gaps[static_cast<std::size_t>(b) * L + begin + i]);
    r.min_gap_per_scale.push_back(gap);
    begin += n;
  }

  if (req.decode) {
    // As the official code, the cache (and here the transformer's scratch) goes before the decoder.
    const auto t0 = clock::now();
    DeviceBuffer<float> f_hat = std::move(w.f_hat);
    workspace.reset();
    cache.reset();
    const int side = 16 * P;
    DeviceBuffer<float> images(static_cast<std::size_t>(B) * 3 * side * side);
    vae_cuda.decode(f_hat.data(), B, images.data(), static_cast<void*>(stream));
    VARKV_CUDA_CHECK(cudaStreamSynchronize(stream));
    out.device_peak_bytes = std::max(out.device_peak_bytes, device_bytes_in_use());
    vae_cuda.release_decode_scratch();
    r.decode_seconds = std::chrono::duration<double>(clock::now() - t0).count();
    r.image_side = side;
    if (options.download_pixels) {
      r.pixels.resize(images.size());
      download_async(r.pixels.data(), images.data(), images.size(), stream);
      VARKV_CUDA_CHECK(cudaStreamSynchronize(stream));
    }
  }
  out.device_generation_bytes = out.device_peak_bytes - bytes_at_entry;
  return out;
}

CudaFitProbe probe_cuda_generation(const VarModelCuda& model, int B, const CudaGenerationOptions& options) {
  require(B > 0, "GPU generation probe: batch {} must be positive", B);
  const VarConfig& cfg = model.config();
  check_cuda_policy(options.policy);
  CudaFitProbe p;
  const std::int64_t before = device_bytes_in_use();
  try {
    auto cache = make_cuda_cache(options.policy, cfg.geometry(), cfg.schedule(), BatchShape{B, true});
    Workspace w(cfg, B, options.precision == CudaPrecision::split_bf16);
    // Headroom for cuBLAS workspaces and the quantizer's scratch. The decoder runs after the cache
    // and the scratch are released (its output, B x 0.8 MB at 256 px, and chunk scratch fit then).
    constexpr std::size_t kHeadroom = std::size_t{1} << 30;
    DeviceBuffer<char> headroom(kHeadroom);
    p.bytes = device_bytes_in_use() - before;
    p.kv_bytes = cache->kv_bytes();
    p.fits = true;
  } catch (const varkv::Error& e) {
    if (!is_out_of_memory(e)) throw;
    cudaGetLastError();  // an allocation failure is not sticky; clear it for the next call
    p.fits = false;
    p.why = e.what();
  }
  return p;
}

CudaTokenChoice choose_tokens_cuda(std::span<const float> logits, int B, int n, int V, double t, int top_k,
                                   double top_p, std::uint64_t seed, std::int64_t first_position,
                                   std::int64_t positions) {
  require(B > 0 && n > 0 && V > 0, "GPU token choice: B {}, n {} and V {} must be positive", B, n, V);
  require(static_cast<std::int64_t>(logits.size()) == 2LL * B * n * V,
          "GPU token choice: logits hold {} values, expected [2 x {}, {}, {}]", logits.size(), B, n, V);
  require(top_k >= 0, "GPU token choice: top_k must be >= 0, got {}", top_k);
  require(top_p >= 0.0 && top_p <= 1.0, "GPU token choice: top_p must be in [0, 1], got {}", top_p);
  require(first_position >= 0 && first_position + n <= positions,
          "GPU token choice: positions [{}, {}) outside the sequence of {}", first_position, first_position + n, positions);
  std::string why;
  require(cuda_device_available(&why), "GPU token choice: no usable CUDA device ({})", why);
  Stream stream;
  DeviceBuffer<float> d_logits(logits.size()), d_gaps(static_cast<std::size_t>(B) * n);
  DeviceBuffer<std::int32_t> d_tokens(static_cast<std::size_t>(B) * n);
  upload_async(d_logits.data(), logits.data(), logits.size(), stream);
  launch_choose(d_logits.data(), B, n, V, t, top_k, top_p, seed, first_position, positions, d_tokens.data(),
                d_gaps.data(), stream);
  CudaTokenChoice c;
  c.tokens.resize(d_tokens.size());
  c.gaps.resize(d_gaps.size());
  download_async(c.tokens.data(), d_tokens.data(), c.tokens.size(), stream);
  download_async(c.gaps.data(), d_gaps.data(), c.gaps.size(), stream);
  VARKV_CUDA_CHECK(cudaStreamSynchronize(stream));
  return c;
}

}  // namespace varkv::ref

// The VQ-VAE on the GPU: the quantizer's per-scale f_hat update and the decoder; see
// reference/include/varkv_reference/cuda/vqvae_cuda.cuh for the contract and the precision modes.
//
// Layouts are the host path's: activations NCHW fp32 [images, C, H, W]. A convolution is
// out[b] (C_out x HW) = W (C_out x K) col[b] (K x HW) with K = C_in k k, one cuBLAS strided-batched
// GEMM over the images of a chunk (the weights broadcast, stride 0); a 3x3 conv first writes col with
// an im2col kernel (zero padding, optionally reading a nearest-x2 upsampled input on the fly), a 1x1
// conv reads its input directly (fp32) or a bf16 copy of it. In cuBLAS's column-major terms a
// row-major [R, Cc] matrix is a Cc x R matrix with leading dimension Cc, so the GEMM is
// C (HW x C_out) = A (HW x K, lda HW) B (K x C_out, ldb K), written straight into NCHW.
#include "varkv_reference/cuda/vqvae_cuda.cuh"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <cub/block/block_reduce.cuh>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "varkv/core/cuda_check.cuh"
#include "varkv/core/error.hpp"
#include "varkv_reference/cuda/var_model_cuda.cuh"  // cuda_device_available
#include "varkv_reference/interpolate.hpp"

#include "cuda_support.cuh"

namespace varkv::ref {

namespace {

using bf16 = __nv_bfloat16;
using detail::Stream;

constexpr int kThreads = 256;
constexpr int kGnThreads = 512;                         // GroupNorm: one CTA per (image, group)
constexpr int kPhiCo = 8;                               // phi conv: output channels per thread
constexpr std::int64_t kColBudgetBytes = std::int64_t{2} << 30;  // im2col scratch bound (max_chunk = 0)
constexpr std::int64_t kReserveBytes = std::int64_t{512} << 20;  // left free for cuBLAS and the caller

unsigned blocks_for(std::int64_t n, int threads = kThreads) {
  const std::int64_t b = (n + threads - 1) / threads;
  require(b <= 0x7fffffffLL, "VqVaeCuda: launch of {} threads exceeds the grid limit", n);
  return static_cast<unsigned>(std::max<std::int64_t>(b, 1));
}

// ---------------------------------------------------------------------------------------------
// Quantizer kernels. Every product and sum that the host path rounds separately is rounded
// separately here too (__fmul_rn / __fadd_rn keep nvcc from contracting them into FMAs); the phi
// conv accumulates with FMAs in the host kernel's order (bias, then input channel, kernel row,
// kernel column), as its AVX2 + FMA path does.

// h [B, C, n] = embedding[tokens [B, n]] (channel-major per image). A token outside [0, vocab) gives
// NaN (the device path does not check tokens; NaN makes such a bug visible instead of reading
// out of bounds).
__global__ void gather_kernel(const std::int32_t* __restrict__ tokens, const float* __restrict__ emb,
                              float* __restrict__ h, std::int64_t B, int n, int C, int vocab) {
  const std::int64_t t = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x;
  if (t >= B * n * C) return;
  const int c = static_cast<int>(t % C);
  const std::int64_t bi = t / C;  // b * n + i
  const int i = static_cast<int>(bi % n);
  const std::int64_t b = bi / n;
  const std::int32_t tok = tokens[bi];
  const float v = tok >= 0 && tok < vocab ? emb[std::int64_t{tok} * C + c] : __int_as_float(0x7fc00000);
  h[(b * C + c) * n + i] = v;
}

// up [planes, P, P] = bicubic(h [planes, pn, pn]); taps [P] serve both axes (square maps).
// The taps are the host's bicubic_taps (reference/src/interpolate.cpp), not a device re-derivation,
// so that the device resampling reproduces the host's bit for bit.
__global__ void bicubic_kernel(const float* __restrict__ h, float* __restrict__ up,
                               const BicubicTaps* __restrict__ taps, std::int64_t planes, int pn, int P) {
  const std::int64_t t = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x;
  if (t >= planes * P * P) return;
  const int x = static_cast<int>(t % P);
  const int y = static_cast<int>((t / P) % P);
  const std::int64_t plane = t / (std::int64_t{P} * P);
  const BicubicTaps a = taps[y], b = taps[x];
  const float* src = h + plane * pn * pn;
  float rows[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const float* r = src + a.index[k] * pn;
    rows[k] = __fadd_rn(__fadd_rn(__fadd_rn(__fmul_rn(r[b.index[0]], b.coef[0]), __fmul_rn(r[b.index[1]], b.coef[1])),
                                  __fmul_rn(r[b.index[2]], b.coef[2])),
                        __fmul_rn(r[b.index[3]], b.coef[3]));
  }
  up[t] = __fadd_rn(__fadd_rn(__fadd_rn(__fmul_rn(rows[0], a.coef[0]), __fmul_rn(rows[1], a.coef[1])),
                              __fmul_rn(rows[2], a.coef[2])),
                    __fmul_rn(rows[3], a.coef[3]));
}

// f_hat += (1 - r) up + r conv3x3(up), up and f_hat [B, C, P, P]. Thread = (image, pixel) x 8 output
// channels (blockIdx.y picks the 8): each input value is loaded once for 8 FMAs; the weights
// w [tiles][C][9][8] (zero past C) are the same for the whole warp (broadcast loads).
__global__ void __launch_bounds__(kThreads) phi_kernel(const float* __restrict__ up, float* __restrict__ f_hat,
                                                       const float* __restrict__ w, const float* __restrict__ bias,
                                                       std::int64_t B, int C, int P, float r, float one_minus_r) {
  const std::int64_t t = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x;
  const int PP = P * P;
  if (t >= B * PP) return;
  const int tile = static_cast<int>(blockIdx.y);
  const int p = static_cast<int>(t % PP), y = p / P, x = p % P;
  const std::int64_t b = t / PP;
  const float* in = up + b * C * PP;
  const float* wt = w + std::int64_t{tile} * C * 9 * kPhiCo;
  float acc[kPhiCo];
#pragma unroll
  for (int j = 0; j < kPhiCo; ++j) acc[j] = bias[tile * kPhiCo + j];
  for (int ci = 0; ci < C; ++ci) {
    const float* plane = in + std::int64_t{ci} * PP;
#pragma unroll
    for (int kh = 0; kh < 3; ++kh) {
      const int iy = y + kh - 1;
#pragma unroll
      for (int kw = 0; kw < 3; ++kw) {
        const int ix = x + kw - 1;
        // Zero outside, as the host's zero-padded copy: fma(w, 0, acc) == acc.
        const float v = iy >= 0 && iy < P && ix >= 0 && ix < P ? plane[iy * P + ix] : 0.0f;
        const float4* wv = reinterpret_cast<const float4*>(wt + ((std::int64_t{ci} * 9) + kh * 3 + kw) * kPhiCo);
        const float4 w0 = wv[0], w1 = wv[1];
        acc[0] = fmaf(w0.x, v, acc[0]);
        acc[1] = fmaf(w0.y, v, acc[1]);
        acc[2] = fmaf(w0.z, v, acc[2]);
        acc[3] = fmaf(w0.w, v, acc[3]);
        acc[4] = fmaf(w1.x, v, acc[4]);
        acc[5] = fmaf(w1.y, v, acc[5]);
        acc[6] = fmaf(w1.z, v, acc[6]);
        acc[7] = fmaf(w1.w, v, acc[7]);
      }
    }
  }
#pragma unroll
  for (int j = 0; j < kPhiCo; ++j) {
    const int co = tile * kPhiCo + j;
    if (co >= C) break;
    const std::int64_t i = (b * C + co) * PP + p;
    const float ph = __fadd_rn(__fmul_rn(up[i], one_minus_r), __fmul_rn(acc[j], r));
    f_hat[i] = __fadd_rn(f_hat[i], ph);
  }
}

// f_hat += up (phi = identity).
__global__ void add_kernel(float* __restrict__ f_hat, const float* __restrict__ up, std::int64_t n) {
  const std::int64_t t = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x;
  if (t < n) f_hat[t] = __fadd_rn(f_hat[t], up[t]);
}

// next [B, m, C] (token-major) = area_down(f_hat [B, C, P, P]) to pn1 x pn1, m = pn1^2: adaptive
// average pooling, cells [floor(i P / pn1), ceil((i + 1) P / pn1)), summed row by row and divided by
// the cell height then width, as the host.
__global__ void area_kernel(const float* __restrict__ f_hat, float* __restrict__ next, std::int64_t B, int C, int P,
                            int pn1) {
  const std::int64_t t = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x;
  const int m = pn1 * pn1;
  if (t >= B * m * C) return;
  const int c = static_cast<int>(t % C);
  const int i = static_cast<int>((t / C) % m);
  const std::int64_t b = t / (std::int64_t{C} * m);
  const int y = i / pn1, x = i % pn1;
  const int y0 = y * P / pn1, y1 = ((y + 1) * P + pn1 - 1) / pn1;
  const int x0 = x * P / pn1, x1 = ((x + 1) * P + pn1 - 1) / pn1;
  const float* src = f_hat + (b * C + c) * P * P;
  float sum = 0.0f;
  for (int iy = y0; iy < y1; ++iy)
    for (int ix = x0; ix < x1; ++ix) sum = __fadd_rn(sum, src[iy * P + ix]);
  next[t] = __fdiv_rn(__fdiv_rn(sum, static_cast<float>(y1 - y0)), static_cast<float>(x1 - x0));
}

// ---------------------------------------------------------------------------------------------
// Decoder kernels

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(bf16 v) { return __bfloat162float(v); }
template <class T>
__device__ __forceinline__ T from_float(float v) {
  if constexpr (std::is_same_v<T, float>) return v;
  else return __float2bfloat16(v);
}
__device__ __forceinline__ void store4(float* p, float4 v) { *reinterpret_cast<float4*>(p) = v; }
__device__ __forceinline__ void store4(bf16* p, float4 v) {
  __nv_bfloat162* q = reinterpret_cast<__nv_bfloat162*>(p);
  q[0] = __floats2bfloat162_rn(v.x, v.y);
  q[1] = __floats2bfloat162_rn(v.z, v.w);
}

// col [n, K, H W] (K = Cin k k, row kk = ci k k + kh k + kw, the weight layout) from in
// [n, Cin, Hs, Ws]: col[b][kk][y W + x] = in at (y + kh - k/2, x + kw - k/2), zero outside. With up2
// the input is the nearest x2 upsampling of in (Hs = H / 2): pixel (iy, ix) reads (iy / 2, ix / 2).
// Grid: x = n K rows, y = pixel tiles.
template <class Tin, class Tout>
__global__ void __launch_bounds__(kThreads) im2col_kernel(const Tin* __restrict__ in, Tout* __restrict__ col, int Cin,
                                                          int H, int W, int k, int up2) {
  const int HW = H * W;
  const int p = static_cast<int>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (p >= HW) return;
  const std::int64_t row = blockIdx.x;
  const int kk2 = k * k, K = Cin * kk2;
  const std::int64_t b = row / K;
  const int kk = static_cast<int>(row % K);
  const int ci = kk / kk2, tap = kk % kk2, kh = tap / k, kw = tap % k;
  const int y = p / W, x = p % W;
  const int iy = y + kh - k / 2, ix = x + kw - k / 2;
  float v = 0.0f;
  if (iy >= 0 && iy < H && ix >= 0 && ix < W) {
    const int Ws = W >> up2, Hs = H >> up2;
    v = to_float(in[((b * Cin + ci) * Hs + (iy >> up2)) * Ws + (ix >> up2)]);
  }
  col[row * HW + p] = from_float<Tout>(v);
}

__device__ __forceinline__ void store8(float* p, const float (&v)[8]) {
  store4(p, make_float4(v[0], v[1], v[2], v[3]));
  store4(p + 4, make_float4(v[4], v[5], v[6], v[7]));
}
__device__ __forceinline__ void store8(bf16* p, const float (&v)[8]) {
  uint4 u;
  __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&u);
  for (int j = 0; j < 4; ++j) h[j] = __floats2bfloat162_rn(v[2 * j], v[2 * j + 1]);
  *reinterpret_cast<uint4*>(p) = u;
}

// The same col, 8 consecutive pixels of one image row per thread (W % 8 == 0: every decoder level
// at 128 px and up). The one-element kernel above spends its time in per-element 64-bit index
// divisions (262 GB/s measured on an H100 at 256 px); here the division runs once per 8 outputs and
// each thread writes one 16-byte (bf16) or two 16-byte (fp32) stores.
template <class Tin, class Tout>
__global__ void __launch_bounds__(kThreads) im2col8_kernel(const Tin* __restrict__ in, Tout* __restrict__ col, int Cin,
                                                           int H, int W, int k, int up2) {
  const int HW = H * W;
  const int p0 = (static_cast<int>(blockIdx.y) * blockDim.x + threadIdx.x) * 8;
  if (p0 >= HW) return;
  const std::int64_t row = blockIdx.x;
  const int kk2 = k * k, K = Cin * kk2;
  const std::int64_t b = row / K;
  const int kk = static_cast<int>(row - b * K);
  const int ci = kk / kk2, tap = kk - ci * kk2, kh = tap / k, kw = tap - kh * k;
  const int y = p0 / W, x0 = p0 - y * W;
  const int iy = y + kh - k / 2;
  const bool row_ok = iy >= 0 && iy < H;
  const int Ws = W >> up2, Hs = H >> up2;
  const Tin* src = in + ((b * Cin + ci) * Hs + (row_ok ? iy >> up2 : 0)) * static_cast<std::int64_t>(Ws);
  float v[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const int ix = x0 + j + kw - k / 2;
    v[j] = row_ok && ix >= 0 && ix < W ? to_float(src[ix >> up2]) : 0.0f;
  }
  store8(col + row * HW + p0, v);
}

// y = GroupNorm(32)(x) (+ SiLU), one CTA per (image, group) of x [n, C, HW]. Statistics in double,
// one pass over values shifted by the group's first element (no cancellation in practice: the shift
// is within a few standard deviations of the mean), biased variance, eps 1e-6; then per channel
// scale = rstd gamma and shift = beta - mean rstd gamma in double, y = x scale + shift in fp32 as
// the host computes it.
template <class Tout>
__global__ void __launch_bounds__(kGnThreads) groupnorm_kernel(const float* __restrict__ x, Tout* __restrict__ y,
                                                               const float* __restrict__ gamma,
                                                               const float* __restrict__ beta, int C, int HW, int silu,
                                                               float eps) {
  using Reduce = cub::BlockReduce<double, kGnThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ double s_mean, s_rstd;
  constexpr int kGroups = VqVae::kGroupNormGroups;
  const int cpg = C / kGroups;
  const std::int64_t b = blockIdx.x / kGroups;
  const int g = static_cast<int>(blockIdx.x % kGroups);
  const std::int64_t n = std::int64_t{cpg} * HW;
  const std::int64_t base = (b * C + std::int64_t{g} * cpg) * HW;
  const float* xg = x + base;
  const bool vec = HW % 4 == 0;  // then base % 4 == 0 too: 16-byte aligned float4 (x is scratch)
  const double shift = xg[0];
  double s = 0.0, ss = 0.0;
  if (vec) {
    const float4* x4 = reinterpret_cast<const float4*>(xg);
    for (std::int64_t i = threadIdx.x; i < n / 4; i += kGnThreads) {
      const float4 v = x4[i];
      const double d0 = v.x - shift, d1 = v.y - shift, d2 = v.z - shift, d3 = v.w - shift;
      s += (d0 + d1) + (d2 + d3);
      ss += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
    }
  } else {
    for (std::int64_t i = threadIdx.x; i < n; i += kGnThreads) {
      const double d = xg[i] - shift;
      s += d;
      ss += d * d;
    }
  }
  const double sum = Reduce(tmp).Sum(s);
  __syncthreads();
  const double sum_sq = Reduce(tmp).Sum(ss);
  if (threadIdx.x == 0) {
    const double dn = static_cast<double>(n);
    const double m1 = sum / dn;
    s_mean = shift + m1;
    s_rstd = 1.0 / sqrt(fmax(sum_sq / dn - m1 * m1, 0.0) + static_cast<double>(eps));
  }
  __syncthreads();
  const double mean = s_mean, rstd = s_rstd;
  for (int cc = 0; cc < cpg; ++cc) {
    const int c = g * cpg + cc;
    const double gm = gamma[c];
    const float scale = __double2float_rn(__dmul_rn(rstd, gm));
    const float sh = __double2float_rn(__dsub_rn(static_cast<double>(beta[c]), __dmul_rn(__dmul_rn(mean, rstd), gm)));
    const float* xc = xg + std::int64_t{cc} * HW;
    Tout* yc = y + base + std::int64_t{cc} * HW;
    const auto f = [&](float v) {
      v = __fadd_rn(__fmul_rn(v, scale), sh);
      return silu ? v / (1.0f + expf(-v)) : v;
    };
    if (vec) {
      for (int i = threadIdx.x; i < HW / 4; i += kGnThreads) {
        float4 v = reinterpret_cast<const float4*>(xc)[i];
        v = make_float4(f(v.x), f(v.y), f(v.z), f(v.w));
        store4(yc + 4 * i, v);
      }
    } else {
      for (int i = threadIdx.x; i < HW; i += kGnThreads) yc[i] = from_float<Tout>(f(xc[i]));
    }
  }
}

// out [n, C, HW] += bias[c] per plane (one CTA per plane). kFinish: the decoder's last step too,
// (clamp(v, -1, 1) + 1) / 2 with NaN kept (std::clamp's behaviour; fminf / fmaxf would hide it).
template <bool kFinish>
__global__ void __launch_bounds__(kThreads) bias_kernel(float* __restrict__ out, const float* __restrict__ bias, int C,
                                                        int HW, int vec) {
  const std::int64_t plane = blockIdx.x;
  const float bv = bias[plane % C];
  float* o = out + plane * HW;
  const auto f = [bv](float v) {
    v = v + bv;
    if constexpr (kFinish) {
      v = v < -1.0f ? -1.0f : (v > 1.0f ? 1.0f : v);
      v = __fmul_rn(__fadd_rn(v, 1.0f), 0.5f);
    }
    return v;
  };
  if (vec) {
    float4* o4 = reinterpret_cast<float4*>(o);
    for (int i = threadIdx.x; i < HW / 4; i += kThreads) {
      const float4 v = o4[i];
      o4[i] = make_float4(f(v.x), f(v.y), f(v.z), f(v.w));
    }
  } else {
    for (int i = threadIdx.x; i < HW; i += kThreads) o[i] = f(o[i]);
  }
}

// Row softmax in place, one warp per row of s [rows, len] (the scale is already in the logits):
// max, exp(v - max) with the sum in double (as the host), then times 1 / sum.
__global__ void __launch_bounds__(kThreads) softmax_kernel(float* __restrict__ s, std::int64_t rows, int len) {
  const std::int64_t row = (blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x & 31u);
  if (row >= rows) return;  // warp-uniform
  float* r = s + row * len;
  float mx = -INFINITY;
  for (int j = lane; j < len; j += 32) mx = fmaxf(mx, r[j]);
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
  double sum = 0.0;
  for (int j = lane; j < len; j += 32) {
    const float e = expf(r[j] - mx);
    r[j] = e;
    sum += e;
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  const float inv = static_cast<float>(1.0 / sum);
  for (int j = lane; j < len; j += 32) r[j] *= inv;
}

// ---------------------------------------------------------------------------------------------
// Device weights

struct DevConv {
  int cin = 0, cout = 0, k = 0;
  DeviceBuffer<float> w;   // [cout, cin k k] fp32 (fp32 / tf32 precision)
  DeviceBuffer<bf16> w16;  // the same in bf16 (bf16 precision)
  DeviceBuffer<float> b;   // [cout]
  std::int64_t bytes() const { return static_cast<std::int64_t>(w.bytes() + w16.bytes() + b.bytes()); }
};

struct DevNorm {
  int C = 0;
  DeviceBuffer<float> gamma, beta;
  std::int64_t bytes() const { return static_cast<std::int64_t>(gamma.bytes() + beta.bytes()); }
};

struct DevRes {
  DevNorm norm1, norm2;
  DevConv conv1, conv2;
  std::optional<DevConv> nin;
};

struct DevAttn {
  DevNorm norm;
  DevConv qkv, proj;
};

struct DevLevel {
  std::vector<DevRes> blocks;
  std::vector<DevAttn> attn;
  std::optional<DevConv> up;
};

// Per-image element counts of the decoder's scratch buffers (the largest tensor of each role).
struct DecoderSizes {
  std::int64_t act = 0;   // any activation, qkv included (x, h, s fp32; a in the GEMM input type)
  std::int64_t col = 0;   // im2col / bf16 copy of a conv input
  std::int64_t attn = 0;  // attention probabilities HW x HW
  std::int64_t out = 0;   // one image: 3 x 16P x 16P
};

}  // namespace

// ---------------------------------------------------------------------------------------------

struct VqVaeCuda::Impl {
  const VqVae* host = nullptr;
  DecoderPrecision precision = DecoderPrecision::bf16;
  int S = 0, P = 0, C = 0, vocab = 0;
  std::vector<int> patch_nums;
  std::vector<int> phi_of_scale;  // phi_index(si)
  bool has_phi = false;
  float r = 0.0f, one_minus_r = 1.0f;
  int phi_tiles = 0;
  std::int64_t phi_stride = 0;           // floats per packed phi conv
  DeviceBuffer<float> embedding;         // [vocab, C]
  DeviceBuffer<float> phi_w, phi_b;      // [K][tiles][C][9][8], [K][tiles][8]
  DeviceBuffer<BicubicTaps> taps;        // [S - 1][P]: bicubic pn -> P per scale
  DeviceBuffer<float> q_small, q_up;     // quantizer scratch: [B, C, pn^2], [B, C, P, P]

  DevConv post_quant, conv_in, conv_out;
  DevRes mid1, mid2;
  DevAttn mid_attn;
  std::vector<DevLevel> levels;  // forward order
  DevNorm norm_out;
  DecoderSizes sizes;

  // Decoder scratch for `capacity` images.
  int capacity = 0;
  DeviceBuffer<float> x, h, s, attn, a32, col32;
  DeviceBuffer<bf16> a16, col16;

  cublasHandle_t blas = nullptr;
  std::int64_t bytes = 0;

  Impl() = default;
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  ~Impl() {
    if (blas) cublasDestroy(blas);
  }

  bool bf16_mode() const { return precision == DecoderPrecision::bf16; }
  std::int64_t image_scratch_bytes() const {
    const std::int64_t t = bf16_mode() ? 2 : 4;
    return 3 * sizes.act * 4 + sizes.act * t + sizes.col * t + sizes.attn * 4;
  }
  std::int64_t decoder_scratch_bytes() const {
    return static_cast<std::int64_t>(x.bytes() + h.bytes() + s.bytes() + attn.bytes() + a32.bytes() + col32.bytes() +
                                     a16.bytes() + col16.bytes());
  }
  std::int64_t scratch_bytes() const {
    return decoder_scratch_bytes() + static_cast<std::int64_t>(q_small.bytes() + q_up.bytes());
  }
};

namespace {

using Impl = VqVaeCuda::Impl;

DevConv upload_conv(const Conv2d& c, bool bf16_weights, std::int64_t& bytes) {
  DevConv d;
  d.cin = c.in_channels();
  d.cout = c.out_channels();
  d.k = c.kernel();
  d.b = DeviceBuffer<float>(c.bias());
  if (bf16_weights) {
    std::vector<bf16> w16(c.weight().size());
    for (std::size_t i = 0; i < w16.size(); ++i) w16[i] = __float2bfloat16(c.weight()[i]);
    d.w16 = DeviceBuffer<bf16>(w16);
  } else {
    d.w = DeviceBuffer<float>(c.weight());
  }
  bytes += d.bytes();
  return d;
}

DevNorm upload_norm(const VqVae::GroupNormView& v, std::int64_t& bytes) {
  DevNorm d;
  d.C = static_cast<int>(v.gamma.size());
  d.gamma = DeviceBuffer<float>(std::vector<float>(v.gamma.begin(), v.gamma.end()));
  d.beta = DeviceBuffer<float>(std::vector<float>(v.beta.begin(), v.beta.end()));
  bytes += d.bytes();
  return d;
}

DevRes upload_res(const VqVae::ResnetBlockView& v, bool bf16_weights, std::int64_t& bytes) {
  DevRes d;
  d.norm1 = upload_norm(v.norm1, bytes);
  d.norm2 = upload_norm(v.norm2, bytes);
  d.conv1 = upload_conv(*v.conv1, bf16_weights, bytes);
  d.conv2 = upload_conv(*v.conv2, bf16_weights, bytes);
  if (v.nin_shortcut) d.nin = upload_conv(*v.nin_shortcut, bf16_weights, bytes);
  return d;
}

DevAttn upload_attn(const VqVae::AttnBlockView& v, bool bf16_weights, std::int64_t& bytes) {
  DevAttn d;
  d.norm = upload_norm(v.norm, bytes);
  d.qkv = upload_conv(*v.qkv, bf16_weights, bytes);
  d.proj = upload_conv(*v.proj_out, bf16_weights, bytes);
  return d;
}

// The decoder's tensor sizes per image, walking the same sequence as DecoderRun::run.
DecoderSizes plan_sizes(const Impl& m) {
  DecoderSizes z;
  const auto conv = [&](const DevConv& c, std::int64_t hw_out) {
    z.act = std::max(z.act, std::int64_t{c.cout} * hw_out);
    z.col = std::max(z.col, std::int64_t{c.cin} * c.k * c.k * hw_out);
  };
  const auto res = [&](const DevRes& r, std::int64_t hw) {
    conv(r.conv1, hw);
    conv(r.conv2, hw);
    if (r.nin) conv(*r.nin, hw);
  };
  const auto attn = [&](const DevAttn& a, std::int64_t hw) {
    conv(a.qkv, hw);
    conv(a.proj, hw);
    z.attn = std::max(z.attn, hw * hw);
  };
  std::int64_t side = m.P;
  conv(m.post_quant, side * side);
  conv(m.conv_in, side * side);
  res(m.mid1, side * side);
  attn(m.mid_attn, side * side);
  res(m.mid2, side * side);
  for (const DevLevel& L : m.levels) {
    for (std::size_t i = 0; i < L.blocks.size(); ++i) {
      res(L.blocks[i], side * side);
      if (!L.attn.empty()) attn(L.attn[i], side * side);
    }
    if (L.up) {
      side *= 2;
      conv(*L.up, side * side);
    }
  }
  conv(m.conv_out, side * side);
  z.out = std::int64_t{m.conv_out.cout} * side * side;
  return z;
}

// Strided-batched GEMM, fp32 output: C = alpha op(A) op(B) + beta C per batch (column-major).
void gemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float alpha, const void* A,
          cudaDataType_t at, int lda, long long sa, const void* B, cudaDataType_t bt, int ldb, long long sb, float beta,
          float* C, int ldc, long long sc, int batch, cublasComputeType_t compute) {
  VARKV_BLAS_CHECK(cublasGemmStridedBatchedEx(h, ta, tb, m, n, k, &alpha, A, at, lda, sa, B, bt, ldb, sb, &beta, C,
                                              CUDA_R_32F, ldc, sc, batch, compute, CUBLAS_GEMM_DEFAULT));
}

// One chunk of n images through post_quant_conv and the decoder. T is the GEMM input type: float
// (fp32 / tf32 precision) or bf16. Buffers: x the residual stream, h and s fp32 temporaries (conv1
// output, shortcut output / qkv, attention output), a the GroupNorm output (type T), col the im2col.
template <class T>
class DecoderRun {
 public:
  DecoderRun(Impl& m, cudaStream_t stream, int n)
      : m_(m), s_(stream), n_(n), x_(m.x.data()), h_(m.h.data()), t_(m.s.data()), attn_(m.attn.data()) {
    if constexpr (std::is_same_v<T, bf16>) {
      a_ = m.a16.data();
      col_ = m.col16.data();
    } else {
      a_ = m.a32.data();
      col_ = m.col32.data();
    }
    compute_ = m.precision == DecoderPrecision::tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    // Attention GEMMs read fp32 q, k, v and probabilities in every mode (< 1% of the FLOPs); tf32
    // lets them round like the convs.
    attn_compute_ = compute_;
  }

  //! f_hat [n, Cvae, P, P] -> images [n, 3, 16P, 16P] in [0, 1].
  void run(const float* f_hat, float* images) {
    int H = m_.P, W = m_.P;
    conv(m_.post_quant, f_hat, x_, H, W, false, false);
    conv(m_.conv_in, x_, x_, H, W, false, false);
    resblock(m_.mid1, H, W);
    attention(m_.mid_attn, H, W);
    resblock(m_.mid2, H, W);
    for (const DevLevel& L : m_.levels) {
      for (std::size_t i = 0; i < L.blocks.size(); ++i) {
        resblock(L.blocks[i], H, W);
        if (!L.attn.empty()) attention(L.attn[i], H, W);
      }
      if (L.up) {
        H *= 2;
        W *= 2;
        conv(*L.up, x_, x_, H, W, true, false);
      }
    }
    norm(m_.norm_out, x_, a_, H, W, true);
    conv(m_.conv_out, static_cast<const T*>(a_), images, H, W, false, false, /*finish=*/true);
  }

 private:
  // out [n, cout, H, W] (+)= conv(in [n, cin, H >> up2, W >> up2]) + bias (then the final clamp and
  // scaling with `finish`). `in` may be `out` only when the input is copied to col first (3x3).
  template <class Tin>
  void conv(const DevConv& c, const Tin* in, float* out, int H, int W, bool up2, bool accumulate, bool finish = false) {
    const int HW = H * W, K = c.cin * c.k * c.k;
    const void* A = in;
    const bool direct = c.k == 1 && !up2 && std::is_same_v<Tin, T>;
    if (direct) {
      require(static_cast<const void*>(in) != static_cast<const void*>(out),
              "VqVaeCuda: internal error: a 1x1 conv reading its input directly cannot write it in place");
    } else {
      const dim3 rows(static_cast<unsigned>(std::int64_t{n_} * K));
      if (W % 8 == 0) {
        im2col8_kernel<Tin, T><<<dim3(rows.x, blocks_for(HW / 8)), kThreads, 0, s_>>>(in, col_, c.cin, H, W, c.k,
                                                                                      up2 ? 1 : 0);
        VARKV_CUDA_CHECK_LAUNCH("im2col8_kernel");
      } else {
        im2col_kernel<Tin, T><<<dim3(rows.x, blocks_for(HW)), kThreads, 0, s_>>>(in, col_, c.cin, H, W, c.k,
                                                                                 up2 ? 1 : 0);
        VARKV_CUDA_CHECK_LAUNCH("im2col_kernel");
      }
      A = col_;
    }
    constexpr cudaDataType_t type = std::is_same_v<T, bf16> ? CUDA_R_16BF : CUDA_R_32F;
    const void* Wt = nullptr;
    if constexpr (std::is_same_v<T, bf16>) Wt = c.w16.data();
    else Wt = c.w.data();
    gemm(m_.blas, CUBLAS_OP_N, CUBLAS_OP_N, HW, c.cout, K, 1.0f, A, type, HW, static_cast<long long>(K) * HW, Wt, type,
         K, 0, accumulate ? 1.0f : 0.0f, out, HW, static_cast<long long>(c.cout) * HW, n_, compute_);
    const int vec = HW % 4 == 0 && reinterpret_cast<std::uintptr_t>(out) % 16 == 0 ? 1 : 0;
    const unsigned planes = static_cast<unsigned>(std::int64_t{n_} * c.cout);
    if (finish) bias_kernel<true><<<planes, kThreads, 0, s_>>>(out, c.b.data(), c.cout, HW, vec);
    else bias_kernel<false><<<planes, kThreads, 0, s_>>>(out, c.b.data(), c.cout, HW, vec);
    VARKV_CUDA_CHECK_LAUNCH("bias_kernel");
  }

  void norm(const DevNorm& g, const float* in, T* out, int H, int W, bool silu) {
    groupnorm_kernel<T><<<static_cast<unsigned>(std::int64_t{n_} * VqVae::kGroupNormGroups), kGnThreads, 0, s_>>>(
        in, out, g.gamma.data(), g.beta.data(), g.C, H * W, silu ? 1 : 0, VqVae::kGroupNormEps);
    VARKV_CUDA_CHECK_LAUNCH("groupnorm_kernel");
  }

  // x = x + conv2(SiLU(norm2(conv1(SiLU(norm1(x)))))) (+ nin_shortcut(x) instead of x): the second
  // conv accumulates into the residual (GEMM beta = 1).
  void resblock(const DevRes& r, int H, int W) {
    norm(r.norm1, x_, a_, H, W, true);
    conv(r.conv1, static_cast<const T*>(a_), h_, H, W, false, false);
    norm(r.norm2, h_, a_, H, W, true);
    if (r.nin) {
      conv(*r.nin, static_cast<const float*>(x_), t_, H, W, false, false);
      conv(r.conv2, static_cast<const T*>(a_), t_, H, W, false, true);
      std::swap(x_, t_);
    } else {
      conv(r.conv2, static_cast<const T*>(a_), x_, H, W, false, true);
    }
  }

  // x = x + proj_out(v softmax(q^T k / sqrt(C))^T) with [q; k; v] = qkv(norm(x)), per image.
  void attention(const DevAttn& at, int H, int W) {
    const int C = at.norm.C, HW = H * W;
    norm(at.norm, x_, a_, H, W, false);
    conv(at.qkv, static_cast<const T*>(a_), t_, H, W, false, false);  // [n, 3C, HW]
    const float* q = t_;
    const float* k = t_ + std::int64_t{C} * HW;
    const float* v = t_ + 2 * std::int64_t{C} * HW;
    const long long sqkv = 3LL * C * HW, sp = static_cast<long long>(HW) * HW;
    const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(C)));
    // logits, stored so that the row of query i is contiguous: attn[i HW + j] = scale k_j . q_i
    // (column-major HW x HW: (j, i) = sum_c k[c][j] q[c][i] = A (k: HW x C) B^T (q: HW x C)).
    gemm(m_.blas, CUBLAS_OP_N, CUBLAS_OP_T, HW, HW, C, scale, k, CUDA_R_32F, HW, sqkv, q, CUDA_R_32F, HW, sqkv, 0.0f,
         attn_, HW, sp, n_, attn_compute_);
    const std::int64_t rows = std::int64_t{n_} * HW;
    softmax_kernel<<<blocks_for(rows * 32), kThreads, 0, s_>>>(attn_, rows, HW);
    VARKV_CUDA_CHECK_LAUNCH("softmax_kernel");
    // o[c][i] = sum_j P(i, j) v[c][j]: column-major o (HW x C) = P (stored transposed: op T) v (HW x C).
    gemm(m_.blas, CUBLAS_OP_T, CUBLAS_OP_N, HW, C, HW, 1.0f, attn_, CUDA_R_32F, HW, sp, v, CUDA_R_32F, HW, sqkv, 0.0f,
         h_, HW, static_cast<long long>(C) * HW, n_, attn_compute_);
    conv(at.proj, static_cast<const float*>(h_), x_, H, W, false, true);
  }

  Impl& m_;
  cudaStream_t s_;
  int n_;
  float* x_;
  float* h_;
  float* t_;
  float* attn_;
  T* a_ = nullptr;
  T* col_ = nullptr;
  cublasComputeType_t compute_ = CUBLAS_COMPUTE_32F, attn_compute_ = CUBLAS_COMPUTE_32F;
};

// Frees and reallocates `buf` to `count` elements when smaller. The caller synchronised the device
// (the old buffer may still be in use by earlier work on any stream).
template <class T>
void grow(DeviceBuffer<T>& buf, std::int64_t count) {
  if (static_cast<std::int64_t>(buf.size()) < count) {
    buf = DeviceBuffer<T>();
    buf = DeviceBuffer<T>(static_cast<std::size_t>(count));
  }
}

void ensure_decode_scratch(Impl& m, int images) {
  if (images <= m.capacity) return;
  VARKV_CUDA_CHECK(cudaDeviceSynchronize());
  m.capacity = 0;  // until every buffer holds `images`
  const std::int64_t n = images;
  try {
    grow(m.x, n * m.sizes.act);
    grow(m.h, n * m.sizes.act);
    grow(m.s, n * m.sizes.act);
    grow(m.attn, std::max<std::int64_t>(n * m.sizes.attn, 1));
    if (m.bf16_mode()) {
      grow(m.a16, n * m.sizes.act);
      grow(m.col16, n * m.sizes.col);
    } else {
      grow(m.a32, n * m.sizes.act);
      grow(m.col32, n * m.sizes.col);
    }
  } catch (const Error&) {
    cudaGetLastError();  // a failed cudaMalloc must not resurface at the next launch check
    throw;
  }
  m.capacity = images;
}

int choose_chunk(const Impl& m, int B, int max_chunk) {
  if (max_chunk > 0) return std::min(B, max_chunk);
  const std::int64_t col_bytes = m.sizes.col * (m.bf16_mode() ? 2 : 4);
  const std::int64_t by_col = std::max<std::int64_t>(1, kColBudgetBytes / std::max<std::int64_t>(col_bytes, 1));
  std::size_t free_b = 0, total_b = 0;
  VARKV_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  // The decoder's current scratch is reusable: count it as available.
  const std::int64_t avail = static_cast<std::int64_t>(free_b) + m.decoder_scratch_bytes() - kReserveBytes;
  const std::int64_t by_mem = std::max<std::int64_t>(1, avail / std::max<std::int64_t>(m.image_scratch_bytes(), 1));
  return static_cast<int>(std::min<std::int64_t>({B, by_col, by_mem}));
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// VqVaeCuda

VqVaeCuda::VqVaeCuda(const VqVae& vae, DecoderPrecision precision) {
  const VqVaeConfig& cfg = vae.config();
  require(precision == DecoderPrecision::fp32 || precision == DecoderPrecision::tf32 ||
              precision == DecoderPrecision::bf16,
          "VqVaeCuda: unknown decoder precision {}", static_cast<int>(precision));
  std::string why;
  require(cuda_device_available(&why), "VqVaeCuda: no usable CUDA device ({})", why);
  impl_ = std::make_unique<Impl>();
  Impl& m = *impl_;
  m.host = &vae;
  m.precision = precision;
  m.patch_nums = cfg.patch_nums;
  m.S = static_cast<int>(cfg.patch_nums.size());
  m.P = cfg.patch_nums.back();
  m.C = cfg.Cvae;
  m.vocab = cfg.vocab;
  const bool bf16_weights = precision == DecoderPrecision::bf16;

  // Quantizer: codebook, phi convs packed for phi_kernel, bicubic taps of every scale but the last.
  m.embedding = DeviceBuffer<float>(std::vector<float>(vae.embedding().begin(), vae.embedding().end()));
  m.bytes += static_cast<std::int64_t>(m.embedding.bytes());
  for (int si = 0; si < m.S; ++si) m.phi_of_scale.push_back(vae.phi_index(si));
  const auto phis = vae.phi_convs();
  m.has_phi = !phis.empty();
  m.r = vae.quant_resi_ratio();
  m.one_minus_r = 1.0f - m.r;  // as the host rounds it
  if (m.has_phi) {
    const int C = m.C, tiles = (C + kPhiCo - 1) / kPhiCo;
    m.phi_tiles = tiles;
    m.phi_stride = std::int64_t{tiles} * C * 9 * kPhiCo;
    std::vector<float> w(static_cast<std::size_t>(m.phi_stride) * phis.size(), 0.0f);
    std::vector<float> b(static_cast<std::size_t>(tiles) * kPhiCo * phis.size(), 0.0f);
    for (std::size_t q = 0; q < phis.size(); ++q) {
      const Conv2d& conv = phis[q];
      require(conv.in_channels() == C && conv.out_channels() == C && conv.kernel() == 3,
              "VqVaeCuda: phi conv {} is {} -> {} channels, kernel {}; expected {} -> {}, 3x3", q, conv.in_channels(),
              conv.out_channels(), conv.kernel(), C, C);
      for (int co = 0; co < C; ++co) {
        b[q * tiles * kPhiCo + co] = conv.bias()[co];
        for (int ci = 0; ci < C; ++ci)
          for (int tap = 0; tap < 9; ++tap)
            w[q * m.phi_stride + ((static_cast<std::size_t>(co / kPhiCo) * C + ci) * 9 + tap) * kPhiCo + co % kPhiCo] =
                conv.weight()[(static_cast<std::size_t>(co) * C + ci) * 9 + tap];
      }
    }
    m.phi_w = DeviceBuffer<float>(w);
    m.phi_b = DeviceBuffer<float>(b);
    m.bytes += static_cast<std::int64_t>(m.phi_w.bytes() + m.phi_b.bytes());
  }
  std::vector<BicubicTaps> taps;
  for (int si = 0; si + 1 < m.S; ++si)
    for (int y = 0; y < m.P; ++y) taps.push_back(bicubic_taps(y, cfg.patch_nums[si], m.P));
  m.taps = DeviceBuffer<BicubicTaps>(taps);
  m.bytes += static_cast<std::int64_t>(m.taps.bytes());

  // Decoder, in forward order.
  m.post_quant = upload_conv(vae.post_quant_conv(), bf16_weights, m.bytes);
  const VqVae::DecoderView d = vae.decoder_view();
  m.conv_in = upload_conv(*d.conv_in, bf16_weights, m.bytes);
  m.mid1 = upload_res(d.mid_block_1, bf16_weights, m.bytes);
  m.mid_attn = upload_attn(d.mid_attn_1, bf16_weights, m.bytes);
  m.mid2 = upload_res(d.mid_block_2, bf16_weights, m.bytes);
  for (const auto& lv : d.up) {
    DevLevel L;
    for (const auto& b : lv.blocks) L.blocks.push_back(upload_res(b, bf16_weights, m.bytes));
    for (const auto& a : lv.attn) L.attn.push_back(upload_attn(a, bf16_weights, m.bytes));
    if (lv.upsample) L.up = upload_conv(*lv.upsample, bf16_weights, m.bytes);
    m.levels.push_back(std::move(L));
  }
  m.norm_out = upload_norm(d.norm_out, m.bytes);
  m.conv_out = upload_conv(*d.conv_out, bf16_weights, m.bytes);
  m.sizes = plan_sizes(m);

  VARKV_BLAS_CHECK(cublasCreate(&m.blas));
  // No TF32 unless the GEMM asks for it (CUBLAS_COMPUTE_32F_FAST_TF32 in tf32 precision).
  VARKV_BLAS_CHECK(cublasSetMathMode(m.blas, CUBLAS_DEFAULT_MATH));
}

VqVaeCuda::~VqVaeCuda() = default;
VqVaeCuda::VqVaeCuda(VqVaeCuda&&) noexcept = default;
VqVaeCuda& VqVaeCuda::operator=(VqVaeCuda&&) noexcept = default;

const VqVae& VqVaeCuda::host() const { return *impl_->host; }
DecoderPrecision VqVaeCuda::precision() const { return impl_->precision; }
std::int64_t VqVaeCuda::weight_bytes() const { return impl_->bytes; }
std::int64_t VqVaeCuda::scratch_bytes() const { return impl_->scratch_bytes(); }
void VqVaeCuda::release_decode_scratch() const {
  Impl& m = *impl_;
  VARKV_CUDA_CHECK(cudaDeviceSynchronize());
  m.capacity = 0;
  m.x = {};
  m.h = {};
  m.s = {};
  m.attn = {};
  m.a32 = {};
  m.col32 = {};
  m.a16 = {};
  m.col16 = {};
}

int VqVaeCuda::decode_chunk(int B, int max_chunk) const {
  require(B > 0, "VqVaeCuda::decode_chunk: batch B = {} must be positive", B);
  require(max_chunk >= 0, "VqVaeCuda::decode_chunk: max_chunk = {} must be >= 0 (0 = from free memory)", max_chunk);
  return choose_chunk(*impl_, B, max_chunk);
}

void VqVaeCuda::next_autoregressive_input(int si, float* f_hat, int B, const std::int32_t* tokens, float* next,
                                          void* stream) const {
  Impl& m = *impl_;
  require(si >= 0 && si < m.S, "VqVaeCuda::next_autoregressive_input: scale index si = {} out of range [0, {})", si,
          m.S);
  require(B > 0, "VqVaeCuda::next_autoregressive_input: batch B = {} must be positive", B);
  require(f_hat != nullptr, "VqVaeCuda::next_autoregressive_input: f_hat is null");
  require(tokens != nullptr, "VqVaeCuda::next_autoregressive_input: tokens is null");
  const bool last = si == m.S - 1;
  require(last || next != nullptr, "VqVaeCuda::next_autoregressive_input: next is null at scale {} (only the last "
          "scale, {}, has no next input)", si, m.S - 1);
  const auto s = static_cast<cudaStream_t>(stream);
  const int P = m.P, C = m.C, pn = m.patch_nums[si], n = pn * pn;
  const std::int64_t full = std::int64_t{B} * C * P * P;

  if (static_cast<std::int64_t>(m.q_up.size()) < full ||
      (!last && static_cast<std::int64_t>(m.q_small.size()) < std::int64_t{B} * C * n)) {
    VARKV_CUDA_CHECK(cudaDeviceSynchronize());
    const int pn_max = m.S >= 2 ? m.patch_nums[m.S - 2] : 1;  // the largest map that gets upsampled
    try {
      grow(m.q_up, full);
      grow(m.q_small, std::int64_t{B} * C * pn_max * pn_max);
    } catch (const Error&) {
      cudaGetLastError();  // a failed cudaMalloc must not resurface at the next launch check
      throw;
    }
  }
  float* up = m.q_up.data();
  if (last) {  // pn == P: no resampling
    gather_kernel<<<blocks_for(std::int64_t{B} * n * C), kThreads, 0, s>>>(tokens, m.embedding.data(), up, B, n, C,
                                                                            m.vocab);
    VARKV_CUDA_CHECK_LAUNCH("gather_kernel");
  } else {
    gather_kernel<<<blocks_for(std::int64_t{B} * n * C), kThreads, 0, s>>>(tokens, m.embedding.data(),
                                                                            m.q_small.data(), B, n, C, m.vocab);
    VARKV_CUDA_CHECK_LAUNCH("gather_kernel");
    bicubic_kernel<<<blocks_for(full), kThreads, 0, s>>>(m.q_small.data(), up, m.taps.data() + std::int64_t{si} * P,
                                                         std::int64_t{B} * C, pn, P);
    VARKV_CUDA_CHECK_LAUNCH("bicubic_kernel");
  }
  if (m.has_phi) {
    const int q = m.phi_of_scale[static_cast<std::size_t>(si)];
    const dim3 grid(blocks_for(std::int64_t{B} * P * P), static_cast<unsigned>(m.phi_tiles));
    phi_kernel<<<grid, kThreads, 0, s>>>(up, f_hat, m.phi_w.data() + q * m.phi_stride,
                                         m.phi_b.data() + std::int64_t{q} * m.phi_tiles * kPhiCo, B, C, P, m.r,
                                         m.one_minus_r);
    VARKV_CUDA_CHECK_LAUNCH("phi_kernel");
  } else {
    add_kernel<<<blocks_for(full), kThreads, 0, s>>>(f_hat, up, full);
    VARKV_CUDA_CHECK_LAUNCH("add_kernel");
  }
  if (!last) {
    const int pn1 = m.patch_nums[si + 1];
    area_kernel<<<blocks_for(std::int64_t{B} * pn1 * pn1 * C), kThreads, 0, s>>>(f_hat, next, B, C, P, pn1);
    VARKV_CUDA_CHECK_LAUNCH("area_kernel");
  }
}

void VqVaeCuda::decode(const float* f_hat, int B, float* images, void* stream, int max_chunk) const {
  Impl& m = *impl_;
  require(B > 0, "VqVaeCuda::decode: batch B = {} must be positive", B);
  require(f_hat != nullptr, "VqVaeCuda::decode: f_hat is null");
  require(images != nullptr, "VqVaeCuda::decode: images is null");
  require(max_chunk >= 0, "VqVaeCuda::decode: max_chunk = {} must be >= 0 (0 = from free memory)", max_chunk);
  const int chunk = choose_chunk(m, B, max_chunk);
  ensure_decode_scratch(m, chunk);
  const auto s = static_cast<cudaStream_t>(stream);
  VARKV_BLAS_CHECK(cublasSetStream(m.blas, s));
  const std::int64_t in_stride = std::int64_t{m.C} * m.P * m.P;
  for (int b0 = 0; b0 < B; b0 += chunk) {
    const int n = std::min(chunk, B - b0);
    const float* in = f_hat + b0 * in_stride;
    float* out = images + b0 * m.sizes.out;
    if (m.bf16_mode()) DecoderRun<bf16>(m, s, n).run(in, out);
    else DecoderRun<float>(m, s, n).run(in, out);
  }
}

std::vector<float> VqVaeCuda::next_autoregressive_input(int si, std::vector<float>& f_hat, int B,
                                                        std::span<const std::int32_t> tokens) const {
  const Impl& m = *impl_;
  require(si >= 0 && si < m.S, "VqVaeCuda::next_autoregressive_input: scale index si = {} out of range [0, {})", si,
          m.S);
  require(B > 0, "VqVaeCuda::next_autoregressive_input: batch B = {} must be positive", B);
  const int P = m.P, C = m.C, pn = m.patch_nums[si];
  const std::int64_t n = std::int64_t{pn} * pn;
  require(f_hat.size() == static_cast<std::size_t>(B) * C * P * P,
          "VqVaeCuda::next_autoregressive_input: f_hat holds {} floats, expected [{}, {}, {}, {}]", f_hat.size(), B, C,
          P, P);
  require(tokens.size() == static_cast<std::size_t>(B * n),
          "VqVaeCuda::next_autoregressive_input: scale {} tokens hold {} values, expected [{}, {}]", si, tokens.size(),
          B, n);
  for (std::size_t i = 0; i < tokens.size(); ++i)
    require(tokens[i] >= 0 && tokens[i] < m.vocab,
            "VqVaeCuda::next_autoregressive_input: token {} at image {}, scale {}, position {} is outside [0, {})",
            tokens[i], static_cast<std::int64_t>(i) / n, si, static_cast<std::int64_t>(i) % n, m.vocab);
  const bool last = si == m.S - 1;
  const int pn1 = last ? 0 : m.patch_nums[si + 1];
  Stream s;
  DeviceBuffer<float> d_f(f_hat.size()), d_next(static_cast<std::size_t>(B) * pn1 * pn1 * C);
  DeviceBuffer<std::int32_t> d_t(tokens.size());
  VARKV_CUDA_CHECK(cudaMemcpyAsync(d_f.data(), f_hat.data(), d_f.bytes(), cudaMemcpyHostToDevice, s));
  VARKV_CUDA_CHECK(cudaMemcpyAsync(d_t.data(), tokens.data(), d_t.bytes(), cudaMemcpyHostToDevice, s));
  next_autoregressive_input(si, d_f.data(), B, d_t.data(), last ? nullptr : d_next.data(), static_cast<cudaStream_t>(s));
  std::vector<float> next(d_next.size());
  VARKV_CUDA_CHECK(cudaMemcpyAsync(f_hat.data(), d_f.data(), d_f.bytes(), cudaMemcpyDeviceToHost, s));
  if (!next.empty())
    VARKV_CUDA_CHECK(cudaMemcpyAsync(next.data(), d_next.data(), d_next.bytes(), cudaMemcpyDeviceToHost, s));
  VARKV_CUDA_CHECK(cudaStreamSynchronize(s));
  return next;
}

std::vector<float> VqVaeCuda::decode(std::span<const float> f_hat, int B) const {
  const Impl& m = *impl_;
  require(B > 0, "VqVaeCuda::decode: batch B = {} must be positive", B);
  require(f_hat.size() == static_cast<std::size_t>(B) * m.C * m.P * m.P,
          "VqVaeCuda::decode: f_hat holds {} floats, expected [{}, {}, {}, {}]", f_hat.size(), B, m.C, m.P, m.P);
  Stream s;
  DeviceBuffer<float> d_f(f_hat.size()), d_img(static_cast<std::size_t>(B) * m.sizes.out);
  VARKV_CUDA_CHECK(cudaMemcpyAsync(d_f.data(), f_hat.data(), d_f.bytes(), cudaMemcpyHostToDevice, s));
  decode(d_f.data(), B, d_img.data(), static_cast<cudaStream_t>(s));
  std::vector<float> images(d_img.size());
  VARKV_CUDA_CHECK(cudaMemcpyAsync(images.data(), d_img.data(), d_img.bytes(), cudaMemcpyDeviceToHost, s));
  VARKV_CUDA_CHECK(cudaStreamSynchronize(s));
  return images;
}

}  // namespace varkv::ref

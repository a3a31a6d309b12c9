#pragma once
//! \file
//! The warpgroup-level (wgmma, sm_90a) fused attention kernel (detail).
//!
//! \par Overview
//! Same contract as the warp-level kernel (fused_attention_sm80.cuh): queries of one (sequence, head)
//! row attend to its kept cache slots [0, len) and then the scale's own keys, the compacted storage
//! read in place. A CTA is WG consumer warpgroups, each owning 64 query rows; S = Q K^T runs as
//! `wgmma.m64nBNk16` with both operands in shared memory, O += P V as `wgmma.m64nDk16` with P taken
//! from registers (the S accumulators, exponentiated and packed to bf16: no round trip through
//! shared memory).
//!
//! \par Pipeline
//! K and V tiles of BN keys stream through two rings of STAGES buffers by cp.async (16-byte chunks
//! written straight into the 128-byte-swizzled canonical wgmma layout, so no TMA descriptor is needed
//! for the ragged, two-source key range). In iteration t the warpgroup issues S_t = Q K_t^T and
//! O += P_{t-1} V_{t-1} back to back, waits for S_t only, and runs the online softmax of tile t
//! (FlashAttention-3's intra-warpgroup order; ptxas moves the wait for P V ahead of the softmax's
//! exponentials, and holding it back measured no faster: the SM's other warpgroups' MMAs run under
//! this one's softmax).
//! Since V_t is needed one iteration after K_t, iteration t loads K_{t+STAGES-1} and V_{t+STAGES-2}:
//! both arrive STAGES - 1 iterations before their use, from the same shared memory as a ring of
//! (K, V) pairs that would give K one iteration less. A row's last tile runs only as wide as its keys
//! (`wgmma.m64n{16,32,48}k16` of a 64-key tile, n{32,64,96} of a 128-key one, and as many P V
//! k-steps): VAR-d30's 10% steps end 3, 9 and 42 keys into a tile at 13x13, 8x8 and 16x16.
//!
//! \par Statistics
//! `NoStats`, or a listed-observer statistic: the observer pass runs in leading CTAs of the same
//! launch (observer_pass, all 4 * WG warps). Every-query observers (H2O) stay on the warp-level
//! kernel, whose items accumulate the statistic themselves.
//!
//! \par Availability
//! The body exists only when the translation unit is compiled for sm_90a (`wgmma` is not part of
//! plain sm_90); `wgmma_available()` tells the host whether the binary loaded for the current device
//! has it, without launching anything (capture-safe).

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "varkv/attention/detail/fused_attention_common.cuh"
#include "varkv/core/cuda_check.cuh"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define VARKV_WGMMA_DEVICE 1
#else
#define VARKV_WGMMA_DEVICE 0
#endif

namespace varkv::detail::fattn::sm90 {

//! D: head dim (64, 128); WG: consumer warpgroups (64 query rows each); BN: keys per tile (64, 128);
//! STAGES: depth of the K ring and of the V ring (>= 3: V_{t-1} and K_t are read while later tiles load);
//! ALIGNED: the launcher found dynamic shared memory 1024-byte aligned on this device
//! (dynamic_smem_1024_aligned), so no alignment slack is allocated.
template <int D, int WG, int BN, int STAGES, bool ALIGNED = false>
struct Config {
  static_assert(D == 64 || D == 128, "head dim 64 or 128");
  static_assert(WG == 1 || WG == 2, "one or two consumer warpgroups");
  static_assert(BN == 64 || BN == 128, "key tile of 64 or 128");
  static_assert(STAGES >= 3, "the rings hold V of tile t-1, K of tile t and tiles in flight");
  static constexpr int kThreads = 128 * WG;
  static constexpr int kRows = 64 * WG;
  static constexpr int kQBytes = kRows * D * 2;
  static constexpr int kTileBytes = BN * D * 2;
  static constexpr int kStageBytes = 2 * kTileBytes;  // one K and one V buffer
  // + 1024 unless ALIGNED: the dynamic window is aligned up to 1024 bytes in the kernel (the swizzle
  // pattern of a wgmma operand is taken from address bits 4..9). Without the slack, <64, 1, 64, 3>
  // fits four CTAs per SM (4 x (56 + 1 reserved) KB = 228 KB) instead of three.
  static constexpr int kSmemBytes = kQBytes + STAGES * kStageBytes + (ALIGNED ? 0 : 1024);
  // Several CTAs per SM where registers allow it (128 per thread at 2 x 256 or 4 x 128 threads).
  static constexpr int kMinBlocks = D == 64 && BN == 64 ? 4 / WG : (WG == 1 ? 2 : 1);
};

// Element offset of (row r, 16-byte chunk c) in a tile of `rows` rows stored as D/64 blocks of 64
// columns (128-byte rows), chunks XOR-swizzled by r mod 8: wgmma's canonical 128-byte-swizzle layout,
// K-major for Q and K, MN-major (read transposed) for V.
__device__ __forceinline__ int swz128(int rows, int r, int c) {
  return (c >> 3) * rows * 64 + r * 64 + (((c & 7) ^ (r & 7)) << 3);
}

// Shared-memory matrix descriptor, 128-byte swizzle. K-major: sbo = 1024 (next 8 rows), lbo unused
// (1). MN-major: sbo = 1024 (next 8 rows along K), lbo = stride between 64-column blocks along N.
__device__ __forceinline__ std::uint64_t smem_desc(const void* p, std::uint32_t lbo_bytes, std::uint32_t sbo_bytes) {
  const auto a = static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
  return std::uint64_t{(a & 0x3FFFFu) >> 4} | (std::uint64_t{(lbo_bytes & 0x3FFFFu) >> 4} << 16) |
         (std::uint64_t{(sbo_bytes & 0x3FFFFu) >> 4} << 32) | (std::uint64_t{1} << 62);
}

#if VARKV_WGMMA_DEVICE
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// cp.async writes through the generic proxy, wgmma reads through the async proxy.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// Keeps the compiler from moving reads of wgmma accumulators above the wait that completes them.
template <int N>
__device__ __forceinline__ void fence_regs(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}

__device__ __forceinline__ void wgmma_ss_n64(float (&d)[32], std::uint64_t a, std::uint64_t b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(a), "l"(b), "r"(accumulate));
}
__device__ __forceinline__ void wgmma_ss_n128(float (&d)[64], std::uint64_t a, std::uint64_t b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(a), "l"(b), "r"(accumulate));
}
__device__ __forceinline__ void wgmma_rs_n64(float (&d)[32], const unsigned (&a)[4], std::uint64_t b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(accumulate));
}
__device__ __forceinline__ void wgmma_rs_n128(float (&d)[64], const unsigned (&a)[4], std::uint64_t b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(accumulate));
}

__device__ __forceinline__ void wgmma_ss_n16(float* d, std::uint64_t a, std::uint64_t b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %10, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7}, %8, %9, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
      : "l"(a), "l"(b), "r"(accumulate));
}
__device__ __forceinline__ void wgmma_ss_n32(float* d, std::uint64_t a, std::uint64_t b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, %16, %17, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
      : "l"(a), "l"(b), "r"(accumulate));
}
__device__ __forceinline__ void wgmma_ss_n48(float* d, std::uint64_t a, std::uint64_t b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %26, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n48k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23}, %24, %25, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23])
      : "l"(a), "l"(b), "r"(accumulate));
}
__device__ __forceinline__ void wgmma_ss_n96(float* d, std::uint64_t a, std::uint64_t b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %50, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n96k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47}, %48, %49, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47])
      : "l"(a), "l"(b), "r"(accumulate));
}
// S = Q K^T over the first N keys of a tile (N/2 accumulators from d): the last, partial tile of a
// row, at the widths wgmma_ss does not cover.
template <int N>
__device__ __forceinline__ void wgmma_ss_narrow(float* d, std::uint64_t a, std::uint64_t b, int accumulate) {
  static_assert(N == 16 || N == 32 || N == 48 || N == 96, "a narrow tile of 16, 32, 48 or 96 keys");
  if constexpr (N == 16) wgmma_ss_n16(d, a, b, accumulate);
  else if constexpr (N == 32) wgmma_ss_n32(d, a, b, accumulate);
  else if constexpr (N == 48) wgmma_ss_n48(d, a, b, accumulate);
  else wgmma_ss_n96(d, a, b, accumulate);
}
template <int N>
__device__ __forceinline__ void wgmma_ss(float (&d)[N / 2], std::uint64_t a, std::uint64_t b, int accumulate) {
  if constexpr (N == 64) wgmma_ss_n64(d, a, b, accumulate);
  else wgmma_ss_n128(d, a, b, accumulate);
}
template <int N>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 2], const unsigned (&a)[4], std::uint64_t b, int accumulate) {
  if constexpr (N == 64) wgmma_rs_n64(d, a, b, accumulate);
  else wgmma_rs_n128(d, a, b, accumulate);
}
#endif  // VARKV_WGMMA_DEVICE

#if VARKV_WGMMA_DEVICE
// This thread's warpgroup index, broadcast from lane 0 so that the compiler knows it is warp-uniform:
// shared-memory addresses and wgmma descriptors derived from it then live in uniform registers
// (without it every wgmma's descriptors went through R2UR moves: 168 in the resident kernel).
__device__ __forceinline__ int warpgroup_index() {
  return __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x) >> 7, 0);
}

__device__ __forceinline__ float ex2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Descriptors are built once per tile and advanced per k-step by adding the step's offset in 16-byte
// units to the address field (bits 0..13; shared addresses stay below 2^18 bytes, so no carry reaches
// the stride fields): two integer ops per wgmma instead of a conversion, mask and shifts each.
// K tile (BN keys, swizzled, K-major), k-step kk: 16 head-dim columns = 32 bytes inside the 128-byte
// row, blocks of 64 columns BN rows apart.
template <int BN>
__device__ __forceinline__ std::uint64_t k_step(int kk) {
  return static_cast<std::uint64_t>(((kk >> 2) * BN * 64 + (kk & 3) * 16) >> 3);
}
// A descriptor advanced by a k-step: the offset stays inside the 14-bit address field (no carry
// into the upper word), so a 32-bit add on the low word is enough (a 64-bit add is two ops per wgmma).
__device__ __forceinline__ std::uint64_t desc_plus(std::uint64_t d, std::uint64_t off) {
  const unsigned lo = static_cast<unsigned>(d) + static_cast<unsigned>(off);
  return (d & 0xFFFFFFFF00000000ull) | lo;
}
// V tile (read transposed, MN-major), k-step kk: 16 keys = 16 rows of 128 bytes.
__device__ __forceinline__ std::uint64_t v_step(int kk) { return static_cast<std::uint64_t>(kk * 16 * 64 >> 3); }

//! One warpgroup's 64 query rows of one (sequence, head) row on their way through the row's key
//! tiles: the O accumulators, the online-softmax state and P packed as the A operand of O += P V
//! (S lives only inside a step, sized by that tile's width). Every warpgroup kernel runs it; they
//! differ only in where the tiles come from (`before_tile` / the hooks wait for or issue their copies).
//!
//! Accumulator element i of S: key column 8 (i / 4) + 2 tq + (i & 1), row g + 8 ((i >> 1) & 1) of
//! the warp's 16 (g = lane / 4, tq = lane % 4).
template <int D, int BN>
struct WarpgroupRows {
  float o[D / 2];
  unsigned pa[BN / 16][4];
  float m[2], l[2];

  //! Runs all `tiles` key tiles (nk keys; columns past nk are masked). q_desc(kk): the Q operand's
  //! descriptor for k-step kk (build it once and add k_step); k_buf(t), v_buf(t): tile t in shared
  //! memory; before_tile(t) runs before tile t's S is issued (and before V_{t-1} is read).
  template <class QDesc, class KBuf, class VBuf, class BeforeTile>
  __device__ __forceinline__ void attend(int tiles, int nk, float scale_log2, int tq, QDesc q_desc, KBuf k_buf,
                                         VBuf v_buf, BeforeTile before_tile) {
    struct Hooks {
      int tiles;
      BeforeTile f;
      __device__ __forceinline__ void before_issue(int t) {
        if (t < tiles) f(t);
      }
      __device__ __forceinline__ void after_issue(int) {}
      __device__ __forceinline__ void k_read(int) {}
      __device__ __forceinline__ void v_read(int) {}
    } hooks{tiles, before_tile};
    attend_hooked(tiles, nk, scale_log2, tq, q_desc, k_buf, v_buf, hooks);
  }

  //! As attend, with every point a pipeline may need to act on: before_issue(t) before the MMAs of
  //! step t are issued (S_t and P_{t-1} V_{t-1}; step `tiles` issues only the last P V), after_issue(t)
  //! once they are, k_read(t) once K_t's buffer is no longer read, v_read(t) once V_t's is not.
  template <class QDesc, class KBuf, class VBuf, class Hooks>
  __device__ __forceinline__ void attend_hooked(int tiles, int nk, float scale_log2, int tq, QDesc q_desc, KBuf k_buf,
                                                VBuf v_buf, Hooks& hooks) {
#pragma unroll
    for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
    m[0] = m[1] = -INFINITY;
    l[0] = l[1] = 0.f;
    // The last tile runs only as wide as its keys, rounded up to kTailStep (VAR-d30 10%: 13x13's 195
    // keys are three tiles and 16 keys, not four tiles; 8x8's 73 one tile and 16 keys). Each width
    // has its own straight-line copy of the last step, from its wgmma fence to its last wait: a
    // branch between a wgmma and its wait makes ptxas serialise every wgmma of the kernel.
    const int wc = tail_width_class(tiles, nk);
    if (tiles == 1) {
      with_tail_width(wc, [&](auto w) {
        constexpr int W = decltype(w)::value;
        first_step<W>(nk, scale_log2, tq, q_desc, k_buf, hooks);
        last_pv<W>(tiles, v_buf, hooks);
      });
      return;
    }
    first_step<BN>(nk, scale_log2, tq, q_desc, k_buf, hooks);
    for (int t = 1; t + 1 < tiles; ++t) step<BN>(t, nk, scale_log2, tq, q_desc, k_buf, v_buf, hooks);
    with_tail_width(wc, [&](auto w) {
      constexpr int W = decltype(w)::value;
      step<W>(tiles - 1, nk, scale_log2, tq, q_desc, k_buf, v_buf, hooks);
      last_pv<W>(tiles, v_buf, hooks);
    });
  }

 private:
  // Tile 0 (W keys wide): S_0, its softmax, P_0.
  template <int W, class QDesc, class KBuf, class Hooks>
  __device__ __forceinline__ void first_step(int nk, float scale_log2, int tq, QDesc q_desc, KBuf k_buf, Hooks& hooks) {
    float s[W / 2];
    hooks.before_issue(0);
    wgmma_fence();
    issue_qk<W>(s, q_desc, k_buf(0));
    wgmma_commit();
    hooks.after_issue(0);
    wgmma_wait<0>();
    fence_regs(s);
    hooks.k_read(0);
    float alpha[2];
    softmax<W>(s, 0, nk, scale_log2, tq, alpha);
    pack_p<W>(s);
  }
  // Tile t (W keys wide), issued with P_{t-1} V_{t-1}. The source waits for P V after the softmax,
  // but ptxas schedules that wait before the softmax's first exponential (every warpgroup kernel's
  // SASS: scripts/dev/sass_hot_loops.py). Holding it after them (a never-taken shared store before
  // the wait does) measured no faster: the SM's other warpgroups keep the tensor cores busy
  // (bench/RESULTS.md, 2026-11-25).
  template <int W, class QDesc, class KBuf, class VBuf, class Hooks>
  __device__ __forceinline__ void step(int t, int nk, float scale_log2, int tq, QDesc q_desc, KBuf k_buf, VBuf v_buf,
                                       Hooks& hooks) {
    float s[W / 2];
    hooks.before_issue(t);
    wgmma_fence();
    issue_qk<W>(s, q_desc, k_buf(t));
    wgmma_commit();
    issue_pv<BN>(v_buf(t - 1));
    wgmma_commit();
    hooks.after_issue(t);
    wgmma_wait<1>();  // S_t done
    fence_regs(s);
    hooks.k_read(t);
    float alpha[2];
    softmax<W>(s, t, nk, scale_log2, tq, alpha);
    wgmma_wait<0>();
    fence_regs(o);
    hooks.v_read(t - 1);
#pragma unroll
    for (int i = 0; i < D / 2; ++i) o[i] *= alpha[(i >> 1) & 1];
    pack_p<W>(s);
  }
  // The last P V (W keys of tile tiles - 1).
  template <int W, class VBuf, class Hooks>
  __device__ __forceinline__ void last_pv(int tiles, VBuf v_buf, Hooks& hooks) {
    hooks.before_issue(tiles);
    wgmma_fence();
    issue_pv<W>(v_buf(tiles - 1));
    wgmma_commit();
    hooks.after_issue(tiles);
    wgmma_wait<0>();
    fence_regs(o);
    hooks.v_read(tiles - 1);
  }

 public:
  //! O / l in bf16 and the LSE in natural log for query rows row0 + g and row0 + g + 8 (row0: the
  //! warp's first of 16); rows at or past n_q are skipped.
  __device__ __forceinline__ void store(const Params& p, int seq, int head, int row0, bool bad_len, int g, int tq) {
    // Opaque here, so the compiler cannot hoist the 64-bit row offsets out of a kernel's query-tile
    // loop: live across attend they were spilled (the resident kernel's stores then waited on local
    // loads); recomputing them costs four IMADs per store.
    asm volatile("" : "+r"(seq), "+r"(head));
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float lh = l[h];
      lh += __shfl_xor_sync(0xffffffffu, lh, 1);
      lh += __shfl_xor_sync(0xffffffffu, lh, 2);
      const int qi = row0 + g + 8 * h;
      if (qi >= p.nq) continue;
      const float inv = bad_len ? NAN : 1.f / lh;
      bf16* orow = p.o + seq * p.o_s[0] + head * p.o_s[1] + qi * p.o_s[2];
#pragma unroll
      for (int c = 0; c < D / 8; ++c)
        *reinterpret_cast<__nv_bfloat162*>(orow + c * 8 + 2 * tq) =
            __floats2bfloat162_rn(o[4 * c + 2 * h] * inv, o[4 * c + 2 * h + 1] * inv);
      if (tq == 0)
        p.lse[seq * p.lse_s[0] + head * p.lse_s[1] + qi * p.lse_s[2]] =
            bad_len ? NAN : (m[h] + __log2f(lh)) * 0.6931471805599453f;
    }
  }

 private:
  // Widths of a row's last tile: BN / 4 steps (a multiple of 16, so P V's k-steps stay whole).
  static constexpr int kTailStep = BN / 4;
  // 0..3: the last tile's keys (nk - (tiles - 1) BN) round up to (class + 1) kTailStep.
  __device__ __forceinline__ static int tail_width_class(int tiles, int nk) {
    const int c = (nk - (tiles - 1) * BN + kTailStep - 1) / kTailStep - 1;
    return c < 0 ? 0 : (c > 3 ? 3 : c);
  }
  template <class F>
  __device__ __forceinline__ static void with_tail_width(int wc, F&& f) {
    switch (wc) {
      case 0: f(std::integral_constant<int, kTailStep>{}); break;
      case 1: f(std::integral_constant<int, 2 * kTailStep>{}); break;
      case 2: f(std::integral_constant<int, 3 * kTailStep>{}); break;
      default: f(std::integral_constant<int, BN>{}); break;
    }
  }
  // S over the tile's first W keys.
  template <int W, class QDesc>
  __device__ __forceinline__ static void issue_qk(float (&s)[W / 2], QDesc q_desc, const bf16* kt) {
    const std::uint64_t kd = smem_desc(kt, 16, 1024);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      if constexpr (W == 64 || W == 128) wgmma_ss<W>(s, q_desc(kk), desc_plus(kd, k_step<BN>(kk)), kk > 0);
      else wgmma_ss_narrow<W>(s, q_desc(kk), desc_plus(kd, k_step<BN>(kk)), kk > 0);
    }
  }
  template <int W>
  __device__ __forceinline__ void issue_pv(const bf16* vt) {
    const std::uint64_t vd = smem_desc(vt, BN * 128, 1024);
#pragma unroll
    for (int kk = 0; kk < W / 16; ++kk) wgmma_rs<D>(o, pa[kk], desc_plus(vd, v_step(kk)), 1);
  }
  // Online softmax of tile t in the log2 domain, in place (s becomes exp2(scale_log2 s - m)); alpha:
  // the factor the running O must be scaled by. At head dim 64 a tile's exponentials cost as much
  // issue bandwidth as its MMAs, so each element takes one FMNMX, one FFMA and one MUFU.EX2: the max
  // is taken on the raw logits (scale_log2 > 0), the scale folded into the FFMA, and ex2.approx.ftz
  // used directly (exp2f adds denormal handling; a flushed exp2 below 2^-126 is 0 in the sum anyway).
  // W: the tile's width.
  template <int W>
  __device__ __forceinline__ void softmax(float (&s)[W / 2], int t, int nk, float scale_log2, int tq, float (&alpha)[2]) {
    if (t * BN + W > nk) {  // only the last tile has keys past nk
#pragma unroll
      for (int i = 0; i < W / 2; ++i)
        if (t * BN + (i >> 2) * 8 + 2 * tq + (i & 1) >= nk) s[i] = -INFINITY;
    }
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int i = 0; i < W / 2; ++i) mx[(i >> 1) & 1] = fmaxf(mx[(i >> 1) & 1], s[i]);
    float neg_ref[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
      const float mn = fmaxf(m[h], mx[h] * scale_log2);
      const float ref = mn == -INFINITY ? 0.f : mn;
      alpha[h] = ex2_approx(m[h] - ref);  // ex2(-inf) = 0 on the first tile
      m[h] = mn;
      neg_ref[h] = -ref;
    }
    float sum[2] = {0.f, 0.f};
#pragma unroll
    for (int i = 0; i < W / 2; ++i) {
      const float pe = ex2_approx(fmaf(s[i], scale_log2, neg_ref[(i >> 1) & 1]));
      s[i] = pe;
      sum[(i >> 1) & 1] += pe;
    }
    l[0] = l[0] * alpha[0] + sum[0];
    l[1] = l[1] * alpha[1] + sum[1];
  }
  // P (bf16) as the A operand of O += P V: k-step kk covers key columns 16 kk .. 16 kk + 15.
  template <int W>
  __device__ __forceinline__ void pack_p(const float (&s)[W / 2]) {
#pragma unroll
    for (int kk = 0; kk < W / 16; ++kk) {
      pa[kk][0] = pack_bf16(s[8 * kk + 0], s[8 * kk + 1]);
      pa[kk][1] = pack_bf16(s[8 * kk + 2], s[8 * kk + 3]);
      pa[kk][2] = pack_bf16(s[8 * kk + 4], s[8 * kk + 5]);
      pa[kk][3] = pack_bf16(s[8 * kk + 6], s[8 * kk + 7]);
    }
  }
};
#endif  // VARKV_WGMMA_DEVICE

// One thread's walk through a row's K or V tiles (BN keys each) as THREADS threads copy them, tile
// after tile in order, into the swizzled wgmma layout. The thread copies 16-byte chunk c of rows r0,
// r0 + kRowStep, ... of every tile, so its shared offset is fixed and its two candidate sources (key j
// is kept-cache slot j below len, else the scale's new key j - len) advance by a constant: a cp.async
// costs two compares, a select and two adds. (Computing the source per chunk cost ~30 integer and
// branch instructions per cp.async: 27% of the resident kernel's instructions at VAR-d30 B=64 16x16
// 10%, Nsight Compute.) The warp-specialised kernel's producer keeps its own copy
// (fused_attention_sm90_specialized.cuh).
// Keys past nk are zero-filled: P is 0 there, and 0 * garbage could be NaN. The new operand's
// address runs in unsigned arithmetic from len rows before its first row; it is used only from there.
template <int D, int BN, int THREADS>
struct KeyTileCopy {
  static constexpr int kChunks = D / 8, kRowStep = THREADS / kChunks, kPerThread = BN / kRowStep;
  static_assert(THREADS % kChunks == 0 && kRowStep % 8 == 0 && BN % kRowStep == 0, "copy layout");
  std::uint64_t cache, fresh;  // global byte addresses of this thread's next row in either source

  __device__ __forceinline__ KeyTileCopy(const bf16* cache_row0, std::int64_t cache_stride, const bf16* new_row0,
                                         std::int64_t new_stride, int len, int tid) {
    const int c = tid % kChunks, r0 = tid / kChunks;
    cache = reinterpret_cast<std::uintptr_t>(cache_row0 + c * 8) +
            static_cast<std::uint64_t>(static_cast<std::int64_t>(r0) * 2 * cache_stride);
    fresh = reinterpret_cast<std::uintptr_t>(new_row0 + c * 8) +
            static_cast<std::uint64_t>(static_cast<std::int64_t>(r0 - len) * 2 * new_stride);
  }
  //! Copies tile t, the row's next one, into `tile` (tid, strides and len as for the constructor; nk:
  //! the row's keys; `dummy`: any valid global address, read by no zero-fill copy).
  __device__ __forceinline__ void next(bf16* tile, int t, int tid, std::int64_t cache_stride, std::int64_t new_stride,
                                       int len, int nk, std::uint64_t dummy) {
    const unsigned s = smem_u32(tile) + tile_offset(tid);
    int j = t * BN + tid / kChunks;
#pragma unroll
    for (int i = 0; i < kPerThread; ++i, j += kRowStep) {
      const bool in_cache = j < len, ok = j < nk;
      cp_async16_at(s + i * kRowStep * 128, ok ? (in_cache ? cache : fresh) : dummy, ok);
      cache += static_cast<std::uint64_t>(kRowStep * 2 * cache_stride);
      fresh += static_cast<std::uint64_t>(kRowStep * 2 * new_stride);
    }
  }
  //! K and V tile t together (walkers k and v of the same row): one key index and one pair of
  //! compares for both. (Measured against two next() calls in the resident kernel: VAR-d16 B=64
  //! 16x16 10% 144.5 -> 140.6 us in graphs; a one-source fast path for whole-cache or whole-new tiles
  //! made it slower again, 143.7.)
  __device__ __forceinline__ static void next_pair(KeyTileCopy& k, KeyTileCopy& v, bf16* k_tile, bf16* v_tile, int t,
                                                   int tid, const Params& p, int len, int nk, std::uint64_t dummy) {
    const unsigned off = tile_offset(tid), sk = smem_u32(k_tile) + off, sv = smem_u32(v_tile) + off;
    int j = t * BN + tid / kChunks;
#pragma unroll
    for (int i = 0; i < kPerThread; ++i, j += kRowStep) {
      const bool in_cache = j < len, ok = j < nk;
      cp_async16_at(sk + i * kRowStep * 128, ok ? (in_cache ? k.cache : k.fresh) : dummy, ok);
      cp_async16_at(sv + i * kRowStep * 128, ok ? (in_cache ? v.cache : v.fresh) : dummy, ok);
      k.cache += static_cast<std::uint64_t>(kRowStep * 2 * p.ck_s[2]);
      k.fresh += static_cast<std::uint64_t>(kRowStep * 2 * p.nk_s[2]);
      v.cache += static_cast<std::uint64_t>(kRowStep * 2 * p.cv_s[2]);
      v.fresh += static_cast<std::uint64_t>(kRowStep * 2 * p.nv_s[2]);
    }
  }

 private:
  // Byte offset of this thread's (row, chunk) inside a tile.
  __device__ __forceinline__ static unsigned tile_offset(int tid) {
    return 2u * static_cast<unsigned>(swz128(BN, tid / kChunks, tid % kChunks));
  }
};

// Query rows q0 .. q0 + ROWS - 1 of one row (stride q_stride) into dst, swizzled as a ROWS-row wgmma
// operand, by THREADS threads (tid from 0); rows at or past nq are zero-filled. As KeyTileCopy: one
// chunk per thread at fixed rows, one running address.
template <int D, int ROWS, int THREADS>
__device__ __forceinline__ void copy_query_rows(bf16* dst, const bf16* q_base, std::int64_t q_stride, int q0, int nq,
                                                int tid, const bf16* dummy) {
  constexpr int kChunks = D / 8, kRowStep = THREADS / kChunks;
  static_assert(THREADS % kChunks == 0 && kRowStep % 8 == 0 && ROWS % kRowStep == 0, "copy layout");
  const int c = tid % kChunks, r = tid / kChunks;
  const unsigned s = smem_u32(dst) + 2u * static_cast<unsigned>(swz128(ROWS, r, c));
  std::uint64_t a = reinterpret_cast<std::uintptr_t>(q_base + c * 8) +
                    static_cast<std::uint64_t>(static_cast<std::int64_t>(q0 + r) * 2 * q_stride);
  const std::uint64_t none = reinterpret_cast<std::uintptr_t>(dummy);
  // By fours: 16 copies unrolled whole (128 rows at head dim 128) hoist 16 addresses into registers.
#pragma unroll 4
  for (int i = 0; i < ROWS / kRowStep; ++i) {
    const bool ok = q0 + r + i * kRowStep < nq;
    cp_async16_at(s + i * kRowStep * 128, ok ? a : none, ok);
    a += static_cast<std::uint64_t>(kRowStep * 2 * q_stride);
  }
}

// A row without keys (only reachable without host lengths): NaN outputs for query rows
// q0 .. q0 + rows - 1, like a bad length, by `threads` threads from tid (default: the whole CTA).
template <int D>
__device__ __forceinline__ void write_nan_rows(const Params& p, int seq, int head, int q0, int rows,
                                               int tid = threadIdx.x, int threads = blockDim.x) {
  for (int i = tid; i < rows; i += threads) {
    const int qi = q0 + i;
    if (qi >= p.nq) continue;
    bf16* orow = p.o + seq * p.o_s[0] + head * p.o_s[1] + qi * p.o_s[2];
    for (int c = 0; c < D; ++c) orow[c] = __float2bfloat16(NAN);
    p.lse[seq * p.lse_s[0] + head * p.lse_s[1] + qi * p.lse_s[2]] = NAN;
  }
}

// The dynamic shared-memory window aligned up to 1024 bytes: the 128-byte swizzle of a wgmma
// operand is taken from address bits 4..9 (every wgmma kernel's size reserves the 1024 bytes).
__device__ __forceinline__ unsigned char* align_smem_1024(unsigned char* raw) {
  return reinterpret_cast<unsigned char*>((reinterpret_cast<std::uintptr_t>(raw) + 1023) & ~std::uintptr_t{1023});
}

// Listed observers: the launch's leading p.obs_blocks CTAs run the observer pass (NW warps), first
// so that they overlap the attention items. True for those CTAs (they do nothing else).
template <int D, class Stats, int NW>
__device__ __forceinline__ bool leading_observer_cta(const Params& p, const ObserverSet& obs, unsigned char* smem) {
  if constexpr (Stats::enabled) {
    if (static_cast<int>(blockIdx.x) < p.obs_blocks) {
      observer_pass<D, Stats, NW>(p, obs, blockIdx.x, smem);
      return true;
    }
  }
  return false;
}

template <int D, int WG, int BN, int STAGES, class Stats, bool ALIGNED = false>
__global__ void __launch_bounds__(128 * WG, (Config<D, WG, BN, STAGES, ALIGNED>::kMinBlocks))
    fused_attention_wgmma_kernel(const Params p, const ObserverSet obs) {
#if VARKV_WGMMA_DEVICE
  using C = Config<D, WG, BN, STAGES, ALIGNED>;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  unsigned char* const smem = align_smem_1024(smem_raw);
  if (leading_observer_cta<D, Stats, 4 * WG>(p, obs, smem)) return;  // their size keeps the slack
  const int item = static_cast<int>(blockIdx.x) - p.obs_blocks;
  const int row = item / p.q_tiles, q0 = (item % p.q_tiles) * C::kRows;
  const RowOperands ro(p, row);
  if constexpr (ALIGNED) {
    // The host measured the window aligned on this device (the test DynamicSharedMemoryIsAligned
    // holds it to that); were it not, the tiles would overrun the allocation: NaN rows instead.
    if (smem != smem_raw) {
      write_nan_rows<D>(p, ro.seq, ro.head, q0, C::kRows);
      return;
    }
  }
  const int len = ro.len, nk = ro.nk;
  const int tiles = (nk + BN - 1) / BN;

  const int tid = threadIdx.x, wg = warpgroup_index(), w4 = (tid >> 5) & 3, lane = tid & 31, g = lane >> 2,
            tq = lane & 3;
  const bf16 *qb = ro.q, *ckb = ro.ck, *cvb = ro.cv, *nkb = ro.nk_base, *nvb = ro.nv_base;

  bf16* sQ = reinterpret_cast<bf16*>(smem);
  bf16* const sK0 = reinterpret_cast<bf16*>(smem + C::kQBytes);
  bf16* const sV0 = sK0 + STAGES * BN * D;
  auto k_buf = [&](int t) { return sK0 + (t % STAGES) * (BN * D); };
  auto v_buf = [&](int t) { return sV0 + (t % STAGES) * (BN * D); };

  KeyTileCopy<D, BN, C::kThreads> kcopy(ckb, p.ck_s[2], nkb, p.nk_s[2], len, tid);
  KeyTileCopy<D, BN, C::kThreads> vcopy(cvb, p.cv_s[2], nvb, p.nv_s[2], len, tid);
  const std::uint64_t dummy = reinterpret_cast<std::uintptr_t>(p.q);
  auto load_k = [&](int t) {  // t = 0, 1, ... in order
    if (t < tiles) kcopy.next(k_buf(t), t, tid, p.ck_s[2], p.nk_s[2], len, nk, dummy);
  };
  auto load_v = [&](int t) {
    if (t < tiles) vcopy.next(v_buf(t), t, tid, p.cv_s[2], p.nv_s[2], len, nk, dummy);
  };

  if (tiles == 0) {
    write_nan_rows<D>(p, ro.seq, ro.head, q0, C::kRows);
    return;
  }

  copy_query_rows<D, C::kRows, C::kThreads>(sQ, qb, p.q_s[2], q0, p.nq, tid, p.q);
  // Prologue group: Q, K_0 .. K_{STAGES-2}, V_0 .. V_{STAGES-3}; then STAGES-3 empty groups, so that
  // from iteration 1 on "the group of iteration t - STAGES + 1" is always STAGES-2 groups back.
#pragma unroll
  for (int t = 0; t < STAGES - 1; ++t) load_k(t);
#pragma unroll
  for (int t = 0; t < STAGES - 2; ++t) load_v(t);
  cp_commit();
#pragma unroll
  for (int t = 0; t < STAGES - 3; ++t) cp_commit();

  // This warpgroup's Q rows, k-step kk of 16 head-dim columns (32 bytes inside a 128-byte row).
  const std::uint64_t q_desc0 = smem_desc(sQ + wg * 64 * 64, 16, 1024);
  auto q_desc = [&](int kk) { return desc_plus(q_desc0, k_step<C::kRows>(kk)); };  // Q: K-major like a K tile
  // Before tile t: K_t and V_{t-1} landed (later groups may still be loading) and are visible to
  // every warpgroup, all of which are done with K_{t-1} and V_{t-2}; then refill those buffers.
  auto before_tile = [&](int t) {
    if (t == 0) cp_wait<STAGES - 3>();
    else cp_wait<STAGES - 2>();
    fence_proxy_async();
    __syncthreads();
    load_k(t + STAGES - 1);
    load_v(t + STAGES - 2);
    cp_commit();
  };
  WarpgroupRows<D, BN> rows;
  rows.attend(tiles, nk, p.scale_log2, tq, q_desc, k_buf, v_buf, before_tile);
  cp_wait<0>();  // empty groups of tiles past the end: nothing may be in flight at exit
  rows.store(p, ro.seq, ro.head, q0 + wg * 64 + w4 * 16, ro.bad_len, g, tq);
#else
  (void)p;
  (void)obs;
  __trap();  // not compiled for sm_90a: the host never launches this (wgmma_available)
#endif
}

// Its static shared-memory size tells the host which binary the device loaded: 1024 bytes only
// where the translation unit was compiled for sm_90a (4 otherwise); every element is touched so that
// no compiler can shrink the array.
template <int Unused = 0>  // a template: defined in every translation unit that includes this header
__global__ void wgmma_probe_kernel(int* out) {
  constexpr int kInts = VARKV_WGMMA_DEVICE ? 256 : 1;
  __shared__ volatile int marker[kInts];
  marker[threadIdx.x % kInts] = 1;
  if (out) *out = marker[(threadIdx.x + 1) % kInts];
}

//! What the host found out about the warpgroup kernel on the current device.
struct WgmmaProbe {
  bool available = false;
  int cc_major = 0, cc_minor = 0;
  cudaError_t attributes_error = cudaSuccess;  //!< of cudaFuncGetAttributes on the probe kernel
  std::size_t probe_static_smem = 0;           //!< 1024 where the loaded binary has sm_90a code
  int binary_version = 0;
  int kernel_registers = 0;  //!< of one warpgroup-kernel instantiation: > 64 where its body exists
};

inline WgmmaProbe probe_wgmma() {
  WgmmaProbe r;
  int dev = 0;
  VARKV_CUDA_CHECK(cudaGetDevice(&dev));
  VARKV_CUDA_CHECK(cudaDeviceGetAttribute(&r.cc_major, cudaDevAttrComputeCapabilityMajor, dev));
  VARKV_CUDA_CHECK(cudaDeviceGetAttribute(&r.cc_minor, cudaDevAttrComputeCapabilityMinor, dev));
  cudaFuncAttributes fa{};
  r.attributes_error = cudaFuncGetAttributes(&fa, wgmma_probe_kernel<>);
  if (r.attributes_error != cudaSuccess) {
    (void)cudaGetLastError();
  } else {
    r.probe_static_smem = fa.sharedSizeBytes;
    r.binary_version = fa.binaryVersion;
  }
  // Second witness: without sm_90a code the kernel body is a trap and needs a handful of registers.
  cudaFuncAttributes ka{};
  if (cudaFuncGetAttributes(&ka, fused_attention_wgmma_kernel<64, 2, 64, 4, NoStats>) == cudaSuccess)
    r.kernel_registers = ka.numRegs;
  else
    (void)cudaGetLastError();
  r.available = r.cc_major == 9 && r.cc_minor == 0 &&
                ((r.attributes_error == cudaSuccess && r.probe_static_smem >= 1024) || r.kernel_registers > 64);
  return r;
}

//! True when the current device is sm_90 and the binary loaded for it has the wgmma kernel (its
//! translation unit was compiled for sm_90a). No launch, no synchronisation: safe inside a capture.
//! Cached per device.
inline bool wgmma_available() {
  int dev = 0;
  VARKV_CUDA_CHECK(cudaGetDevice(&dev));
  static std::atomic<int> known[64];  // 0 unknown, 1 no, 2 yes
  if (dev >= 0 && dev < 64) {
    if (const int k = known[dev].load(std::memory_order_relaxed)) return k == 2;
  }
  const bool ok = probe_wgmma().available;
  if (dev >= 0 && dev < 64) known[dev].store(ok ? 2 : 1, std::memory_order_relaxed);
  return ok;
}

// Writes the shared-window address at which dynamic shared memory starts for a kernel without static
// shared memory (as the wgmma kernels are).
template <int Unused = 0>
__global__ void dynamic_smem_base_kernel(unsigned* out) {
  extern __shared__ __align__(16) unsigned char dyn[];
  if (threadIdx.x == 0) *out = static_cast<unsigned>(__cvta_generic_to_shared(dyn));
}

//! Where dynamic shared memory starts in the shared window of a kernel without static shared memory
//! on the current device (one one-thread launch on `stream`, then a synchronisation). -1 where the
//! launch is not allowed now (the stream is capturing).
inline long long measure_dynamic_smem_base(cudaStream_t stream) {
  cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
  VARKV_CUDA_CHECK(cudaStreamIsCapturing(stream, &cs));
  if (cs != cudaStreamCaptureStatusNone) return -1;
  // Relaxed for this thread: another thread's global-mode capture would otherwise forbid (and be
  // invalidated by) the allocation and the synchronisation below.
  cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
  VARKV_CUDA_CHECK(cudaThreadExchangeStreamCaptureMode(&mode));
  unsigned* d = nullptr;
  unsigned h = 0;
  cudaError_t e = cudaMalloc(&d, sizeof(unsigned));
  if (e == cudaSuccess) {
    dynamic_smem_base_kernel<><<<1, 32, 1024, stream>>>(d);
    e = cudaGetLastError();
    if (e == cudaSuccess) e = cudaMemcpyAsync(&h, d, sizeof(unsigned), cudaMemcpyDeviceToHost, stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(stream);
    const cudaError_t f = cudaFree(d);
    if (e == cudaSuccess) e = f;
  }
  VARKV_CUDA_CHECK(cudaThreadExchangeStreamCaptureMode(&mode));
  VARKV_CUDA_CHECK(e);
  return h;
}

//! True when dynamic shared memory starts 1024-byte aligned on the current device (measured once per
//! device, on the first call whose stream is not capturing; false until then, which only costs the
//! unpadded layouts: the wgmma kernel keeps its alignment slack).
inline bool dynamic_smem_1024_aligned(cudaStream_t stream) {
  int dev = 0;
  VARKV_CUDA_CHECK(cudaGetDevice(&dev));
  static std::atomic<int> known[64];  // 0 unknown, 1 no, 2 yes
  if (dev < 0 || dev >= 64) return false;
  if (const int k = known[dev].load(std::memory_order_relaxed)) return k == 2;
  const long long base = measure_dynamic_smem_base(stream);
  if (base < 0) return false;
  known[dev].store(base % 1024 == 0 ? 2 : 1, std::memory_order_relaxed);
  return base % 1024 == 0;
}

//! SMs of the current device (cached per device; the persistent grid's size).
inline int device_sm_count() {
  int dev = 0;
  VARKV_CUDA_CHECK(cudaGetDevice(&dev));
  static std::atomic<int> known[64];
  if (dev >= 0 && dev < 64) {
    if (const int k = known[dev].load(std::memory_order_relaxed)) return k;
  }
  int sms = 0;
  VARKV_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  if (dev >= 0 && dev < 64) known[dev].store(sms, std::memory_order_relaxed);
  return sms;
}

// Launches a warpgroup kernel whose CTAs each take `rows` query rows of one (sequence, head) row,
// after S*H leading observer CTAs where the statistic needs them.
template <auto Kernel, int SmemBytes, class Stats>
void launch_row_tiles(Params p, const ObserverSet& obs, int rows, int threads, const char* name, cudaStream_t stream) {
  raise_dynamic_smem_once<Kernel, SmemBytes>();
  p.q_tiles = (p.nq + rows - 1) / rows;
  p.total_items = p.S * p.H * p.q_tiles;
  p.obs_blocks = Stats::enabled ? p.S * p.H : 0;
  Kernel<<<p.obs_blocks + p.total_items, threads, SmemBytes, stream>>>(p, obs);
  VARKV_CUDA_CHECK_LAUNCH(name);
}

template <int D, int WG, int BN, int STAGES, class Stats, bool ALIGNED = false>
void launch(Params p, const ObserverSet& obs, cudaStream_t stream) {
  using C = Config<D, WG, BN, STAGES, ALIGNED>;
  constexpr int smem = Stats::enabled ? std::max(C::kSmemBytes, kObserverSmemBytes<D, 4 * WG> + 1024) : C::kSmemBytes;
  launch_row_tiles<fused_attention_wgmma_kernel<D, WG, BN, STAGES, Stats, ALIGNED>, smem, Stats>(
      p, obs, C::kRows, C::kThreads, "fused_attention_wgmma_kernel", stream);
}

}  // namespace varkv::detail::fattn::sm90

// The GPU VQ-VAE (reference/include/varkv_reference/cuda/vqvae_cuda.cuh) against the fp32 host VqVae.
// Fresh random inputs (seed printed; VARKV_TEST_SEED replays). Every device output is poisoned with
// NaN (0xFF bytes) before each run: an element a kernel fails to write gives an infinite error.
//
// Bounds (each stated again at its test; errors are printed):
// - Quantizer (every scale in sequence, f_hat and the next scale's input): max |gpu - cpu| <=
//   1e-5 (1 + max |cpu|). Why: the device repeats the host's fp32 operations (bicubic taps computed
//   by the same host code, products and sums rounded one by one, the phi conv's FMAs in the host
//   AVX2 kernel's order), so the results are expected bit for bit (printed; a host port of the
//   kernels' index math was bit-identical to the host VqVae on 5 configurations); a host without
//   AVX2 + FMA (or another compiler contraction) changes the conv's rounding by a few ulps per scale.
// - Decoder vs the host decode, random tiny VQ-VAEs and random N(0, 1) f_hat, pixels in [0, 1]
//   (pixel std ~0.16): fp32 max 1e-4; tf32 max 3e-2, mean 2e-3; bf16 max 0.15, mean 8e-3. Why: a
//   host emulation of this file's algorithm (same im2col / GEMM / GroupNorm / attention data flow,
//   GEMM inputs rounded like the device) over 10 random decoders of both shapes gave fp32 <= 2.2e-5
//   (summation order only; cuBLAS's blocked sums are closer still), tf32 <= 7.6e-3 / 4.5e-4 with
//   round-to-nearest and <= 1.2e-2 / 6.6e-4 with truncation to the 10-bit mantissa (cuBLAS does not
//   document which), bf16 <= 8.3e-2 / 3.6e-3 (random fp32 weights and every GEMM input rounded to
//   8 bits, ~45 GEMMs deep); the bounds leave about 2x. A layout or indexing error is O(0.1) in the
//   mean. Measured values are printed.
// - Chunking: equal chunk sizes give equal bits (images decoded 2 at a time within one call equal
//   separate calls of 2, and repeated calls are equal); chunk 1 vs chunk B (another cuBLAS kernel
//   may run for another batch count) within 1e-5 in fp32, bit equality printed.
// - Golden (official VAR VQ-VAE, random bf16 weights, ch = 32, 256 px; VARKV_GOLDEN_DIR/var_d4_256 or
//   the VARKV_GOLDEN_DIR environment variable; skipped with a message when absent, a failure under
//   CI=true): decode(gen_f_hat) vs gen_image max abs: fp32 <= 1e-3 (the host decoder's bound in
//   tests/cpu/vqvae_test.cpp; the host emulation gives 3.3e-6), tf32 <= 1e-2 (the requirement:
//   "image within 1e-2"; emulation 2.0e-3 rounding, 3.7e-3 truncating), bf16 <= 3e-2 (emulation
//   1.7e-2; the golden weights are bf16 already, only activations round); the quantizer path from
//   gen_tokens rebuilds gen_f_hat within 1e-3 (the host test's bound) and the host f_hat within
//   1e-5 (1 + max |cpu|).
// - Bad arguments: varkv::Error naming the argument.
#include <gtest/gtest.h>

#ifdef VARKV_GOLDEN_DIR

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <cuda_runtime.h>
#include <nlohmann/json.hpp>

#include <varkv/core/cuda_check.cuh>
#include <varkv/core/error.hpp>
#include <varkv_reference/cuda/vqvae_cuda.cuh>
#include <varkv_reference/safetensors.hpp>
#include <varkv_reference/var_model.hpp>
#include <varkv_reference/vqvae.hpp>

#include "../support/golden_dir.hpp"
#include "../support/random.hpp"
#include "../support/tiny_vae.hpp"

using namespace varkv;
using namespace varkv::ref;

namespace {

namespace fs = std::filesystem;

const std::vector<int> kVar256 = {1, 2, 3, 4, 5, 6, 8, 10, 13, 16};

std::uint64_t test_seed() {
  static const std::uint64_t seed = [] {
    const std::uint64_t s = varkv::testing::fresh_seed();
    std::printf("[vqvae_cuda_test] seed %llu (%s)\n", static_cast<unsigned long long>(s),
                varkv::testing::seed_note(s).c_str());
    return s;
  }();
  return seed;
}

const char* name(DecoderPrecision p) {
  switch (p) {
    case DecoderPrecision::fp32: return "fp32";
    case DecoderPrecision::tf32: return "tf32";
    case DecoderPrecision::bf16: return "bf16";
  }
  return "?";
}

// got vs ref: max and mean |difference| (infinite when any is NaN), max |ref|, and bit equality.
struct Diff {
  double max_abs = 0, mean_abs = 0, max_ref = 0;
  bool identical = true;
};

Diff diff(const float* got, const float* ref, std::size_t n) {
  Diff d;
  double sum = 0;
  for (std::size_t i = 0; i < n; ++i) {
    if (std::memcmp(&got[i], &ref[i], sizeof(float)) != 0) d.identical = false;
    const double e = std::abs(static_cast<double>(got[i]) - ref[i]);
    if (std::isnan(e)) {
      d.max_abs = INFINITY;
    } else {
      d.max_abs = std::max(d.max_abs, e);
      sum += e;
    }
    d.max_ref = std::max(d.max_ref, std::abs(static_cast<double>(ref[i])));
  }
  d.mean_abs = std::isinf(d.max_abs) ? INFINITY : sum / static_cast<double>(std::max<std::size_t>(n, 1));
  return d;
}
Diff diff(const std::vector<float>& got, const std::vector<float>& ref) {
  EXPECT_EQ(got.size(), ref.size());
  return diff(got.data(), ref.data(), std::min(got.size(), ref.size()));
}

template <class F>
void expect_error(F&& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "expected varkv::Error containing '" << needle << "'";
  } catch (const varkv::Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << "message: " << e.what();
  }
}

std::vector<std::int32_t> random_tokens(std::size_t n, int vocab, std::mt19937_64& rng) {
  std::uniform_int_distribution<std::int32_t> u(0, vocab - 1);
  std::vector<std::int32_t> t(n);
  for (auto& x : t) x = u(rng);
  return t;
}

// Decodes on the device API with the output poisoned first; returns the images.
std::vector<float> gpu_decode(const VqVaeCuda& gpu, const std::vector<float>& f_hat, int B, int max_chunk) {
  const int P = gpu.host().config().patch_nums.back();
  DeviceBuffer<float> d_f(f_hat);
  DeviceBuffer<float> d_img(static_cast<std::size_t>(B) * 3 * 16 * P * 16 * P);
  d_img.poison();
  gpu.decode(d_f.data(), B, d_img.data(), nullptr, max_chunk);
  VARKV_CUDA_CHECK(cudaDeviceSynchronize());
  return d_img.download();
}

// ---- golden data ----------------------------------------------------------------------------

struct Golden {
  std::optional<VqVae> vae;
  std::optional<SafetensorsFile> file;
};

const Golden* golden(std::string* why) {
  static std::string reason;
  static const std::optional<Golden> g = []() -> std::optional<Golden> {
    const auto found =
        varkv::testing::golden_d4_dir("data", {"meta.json", "vae.safetensors", "golden.safetensors"}, reason);
    if (!found) return std::nullopt;
    const fs::path& dir = *found;
    std::ifstream in(dir / "meta.json");
    const auto meta = nlohmann::json::parse(in);
    VqVaeConfig cfg;
    cfg.vocab = meta.at("vocab").get<int>();
    cfg.Cvae = meta.at("Cvae").get<int>();
    cfg.ch = meta.at("vae_ch").get<int>();
    cfg.patch_nums = meta.at("patch_nums").get<std::vector<int>>();
    Golden out;
    out.vae.emplace(VqVae::load(SafetensorsFile::open((dir / "vae.safetensors").string()), cfg));
    out.file.emplace(SafetensorsFile::open((dir / "golden.safetensors").string()));
    return out;
  }();
  if (why) *why = reason;
  return g ? &*g : nullptr;
}

#define REQUIRE_GOLDEN(g)          \
  std::string why_;                \
  const Golden* g = golden(&why_); \
  if (!g) VARKV_GOLDEN_MISSING(why_)

// ---- quantizer ------------------------------------------------------------------------------

// Every scale in sequence on B images: the device f_hat (in place) and next input against the host
// VqVae's, bound 1e-5 (1 + max |cpu|) (see the file comment).
void check_quantizer(const VqVaeConfig& cfg, int B, std::mt19937_64& rng, const std::string& label) {
  SCOPED_TRACE(label);
  const VqVae vae = VqVae::random(cfg, rng());
  const VqVaeCuda gpu(vae, DecoderPrecision::fp32);
  const int S = static_cast<int>(cfg.patch_nums.size()), P = cfg.patch_nums.back(), C = cfg.Cvae;
  std::vector<float> f_ref(static_cast<std::size_t>(B) * C * P * P, 0.0f);
  DeviceBuffer<float> d_f(f_ref);
  double worst_f = 0, worst_next = 0;
  bool bitwise = true;
  for (int si = 0; si < S; ++si) {
    const int pn = cfg.patch_nums[si];
    const auto tokens = random_tokens(static_cast<std::size_t>(B) * pn * pn, cfg.vocab, rng);
    const auto next_ref = vae.next_autoregressive_input(si, f_ref, B, tokens);
    DeviceBuffer<std::int32_t> d_tok(tokens);
    const bool last = si == S - 1;
    const int pn1 = last ? 0 : cfg.patch_nums[si + 1];
    DeviceBuffer<float> d_next(static_cast<std::size_t>(B) * pn1 * pn1 * C);
    d_next.poison();
    gpu.next_autoregressive_input(si, d_f.data(), B, d_tok.data(), last ? nullptr : d_next.data(), nullptr);
    VARKV_CUDA_CHECK(cudaDeviceSynchronize());
    const auto f_got = d_f.download();
    const Diff df = diff(f_got, f_ref);
    EXPECT_LE(df.max_abs, 1e-5 * (1 + df.max_ref)) << "f_hat after scale " << si;
    worst_f = std::max(worst_f, df.max_abs / (1 + df.max_ref));
    bitwise = bitwise && df.identical;
    if (!last) {
      const auto next_got = d_next.download();
      ASSERT_EQ(next_got.size(), next_ref.size());
      const Diff dn = diff(next_got, next_ref);
      EXPECT_LE(dn.max_abs, 1e-5 * (1 + dn.max_ref)) << "next input after scale " << si;
      worst_next = std::max(worst_next, dn.max_abs / (1 + dn.max_ref));
      bitwise = bitwise && dn.identical;
    }
  }
  std::printf("[ quantizer] %s: B %d, worst max|err| / (1 + max|cpu|): f_hat %.3g, next %.3g; bit-identical: %s\n",
              label.c_str(), B, worst_f, worst_next, bitwise ? "yes" : "no");
}

TEST(VqVaeCuda, QuantizerMatchesHostEveryScale) {
  std::mt19937_64 rng(test_seed() ^ 0x9a17ULL);
  VqVaeConfig base;  // official quantizer: vocab 4096, Cvae 32, quant_resi 0.5, share_quant_resi 4
  base.ch = 32;      // the decoder is not used here; the smallest one keeps VqVae::random fast
  base.patch_nums = kVar256;
  check_quantizer(base, 4, rng, "official (K = 4)");
  for (const int K : {0, 1, 6}) {
    VqVaeConfig c = base;
    c.share_quant_resi = K;
    check_quantizer(c, 3, rng, "share_quant_resi " + std::to_string(K));
  }
  VqVaeConfig identity = base;
  identity.quant_resi = 0.0;
  check_quantizer(identity, 3, rng, "quant_resi 0 (phi = identity)");
  VqVaeConfig negative = base;
  negative.quant_resi = -0.3;
  check_quantizer(negative, 3, rng, "quant_resi -0.3");
  // Cvae not a multiple of the kernel's 8 output channels, an odd last patch number, small vocab.
  VqVaeConfig odd;
  odd.vocab = 37;
  odd.Cvae = 12;
  odd.ch = 32;
  odd.patch_nums = {1, 2, 3, 5};
  check_quantizer(odd, 5, rng, "Cvae 12, patch_nums 1 2 3 5");
}

// B = 1024 on the device (one launch per kernel and scale, no per-image work), checked against the
// host on 4 of the images (images are independent), same bound.
TEST(VqVaeCuda, QuantizerAtBatch1024MatchesHostOnSampledImages) {
  std::mt19937_64 rng(test_seed() ^ 0xb1024ULL);
  VqVaeConfig cfg;
  cfg.ch = 32;
  cfg.patch_nums = kVar256;
  const VqVae vae = VqVae::random(cfg, rng());
  const VqVaeCuda gpu(vae);
  const int B = 1024, S = 10, P = 16, C = cfg.Cvae;
  const std::size_t img = static_cast<std::size_t>(C) * P * P;
  const int picked[] = {0, 1, 517, B - 1};
  const int Bs = 4;
  std::vector<float> f_ref(Bs * img, 0.0f);
  DeviceBuffer<float> d_f(std::vector<float>(B * img, 0.0f));
  double device_seconds = 0;
  for (int si = 0; si < S; ++si) {
    const int pn = cfg.patch_nums[si], n = pn * pn;
    const auto tokens = random_tokens(static_cast<std::size_t>(B) * n, cfg.vocab, rng);
    std::vector<std::int32_t> sub;
    for (int b : picked) sub.insert(sub.end(), tokens.begin() + b * n, tokens.begin() + (b + 1) * n);
    const auto next_ref = vae.next_autoregressive_input(si, f_ref, Bs, sub);
    const bool last = si == S - 1;
    const int m = last ? 0 : cfg.patch_nums[si + 1] * cfg.patch_nums[si + 1];
    DeviceBuffer<std::int32_t> d_tok(tokens);
    DeviceBuffer<float> d_next(static_cast<std::size_t>(B) * m * C);
    d_next.poison();
    VARKV_CUDA_CHECK(cudaDeviceSynchronize());
    const auto t0 = std::chrono::steady_clock::now();
    gpu.next_autoregressive_input(si, d_f.data(), B, d_tok.data(), last ? nullptr : d_next.data(), nullptr);
    VARKV_CUDA_CHECK(cudaDeviceSynchronize());
    device_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const auto f_got = d_f.download();
    const auto next_got = d_next.download();
    for (int k = 0; k < Bs; ++k) {
      const int b = picked[k];
      const Diff df = diff(f_got.data() + b * img, f_ref.data() + k * img, img);
      EXPECT_LE(df.max_abs, 1e-5 * (1 + df.max_ref)) << "f_hat of image " << b << " after scale " << si;
      if (!last) {
        const std::size_t row = static_cast<std::size_t>(m) * C;
        const Diff dn = diff(next_got.data() + b * row, next_ref.data() + k * row, row);
        EXPECT_LE(dn.max_abs, 1e-5 * (1 + dn.max_ref)) << "next input of image " << b << " after scale " << si;
      }
    }
    if (!last) {  // every image's next input was written
      for (std::size_t i = 0; i < next_got.size(); ++i) ASSERT_FALSE(std::isnan(next_got[i])) << "next[" << i << "]";
    }
  }
  std::printf("[ quantizer] B = 1024, 10 scales: %.2f ms on the device in total (first call allocates scratch)\n",
              device_seconds * 1e3);
}

// A random VQ-VAE as small as the checks of tokens, arguments and object lifetime allow (vocab 16;
// ch 32, the least that GroupNorm(32) takes), so that those tests cost next to nothing.
VqVae small_vae(int Cvae, std::vector<int> patch_nums, std::uint64_t seed) {
  VqVaeConfig cfg;
  cfg.vocab = 16;
  cfg.Cvae = Cvae;
  cfg.ch = 32;
  cfg.patch_nums = std::move(patch_nums);
  return VqVae::random(cfg, seed);
}

// A token outside the vocabulary is not checked on the device path: it turns its image's f_hat
// into NaN (never an out-of-bounds read); the other images are unaffected.
TEST(VqVaeCuda, OutOfRangeDeviceTokenGivesNaNForItsImageOnly) {
  const VqVae vae = small_vae(8, {1, 2, 4}, 5);
  const VqVaeCuda gpu(vae);
  const int B = 2, P = 4, C = 8;
  DeviceBuffer<float> d_f(std::vector<float>(static_cast<std::size_t>(B) * C * P * P, 0.0f));
  DeviceBuffer<std::int32_t> d_tok(std::vector<std::int32_t>{3, 16});  // image 1 holds token 16 = vocab
  DeviceBuffer<float> d_next(static_cast<std::size_t>(B) * 4 * C);
  gpu.next_autoregressive_input(0, d_f.data(), B, d_tok.data(), d_next.data(), nullptr);
  const auto f = d_f.download();
  for (int i = 0; i < C * P * P; ++i) ASSERT_FALSE(std::isnan(f[i])) << i;
  for (int i = C * P * P; i < B * C * P * P; ++i) ASSERT_TRUE(std::isnan(f[i])) << i;
}

// ---- decoder --------------------------------------------------------------------------------

struct DecoderCase {
  std::string label;
  VqVaeConfig cfg;
  int B;
};

std::vector<DecoderCase> decoder_cases() {
  std::vector<DecoderCase> cases;
  // ch 32 (GroupNorm of 1 channel per group at levels 0-1), Cvae 16, P = 5: 80 px images; attention
  // over 25 positions, and 5 x 5 planes take the kernels' scalar (not float4) paths.
  VqVaeConfig a = varkv::testing::tiny_vae_config(VarConfig::from_depth(1, {1, 2, 3, 5}));
  a.vocab = 64;
  a.Cvae = 16;
  cases.push_back({"ch 32, Cvae 16, 80 px", a, 3});
  // ch 64 (2 channels per group), Cvae 32, P = 8: 128 px.
  VqVaeConfig b = a;
  b.Cvae = 32;
  b.ch = 64;
  b.patch_nums = {1, 2, 4, 8};
  cases.push_back({"ch 64, Cvae 32, 128 px", b, 2});
  return cases;
}

TEST(VqVaeCuda, DecoderMatchesHostInEachPrecision) {
  std::mt19937_64 rng(test_seed() ^ 0xdec0deULL);
  for (const DecoderCase& c : decoder_cases()) {
    SCOPED_TRACE(c.label);
    const VqVae vae = VqVae::random(c.cfg, rng());
    const int P = c.cfg.patch_nums.back();
    const auto f_hat = varkv::testing::random_normal(static_cast<std::size_t>(c.B) * c.cfg.Cvae * P * P, rng);
    const auto ref = vae.decode(f_hat, c.B);
    for (const auto precision : {DecoderPrecision::fp32, DecoderPrecision::tf32, DecoderPrecision::bf16}) {
      SCOPED_TRACE(name(precision));
      const VqVaeCuda gpu(vae, precision);
      EXPECT_EQ(gpu.precision(), precision);
      EXPECT_EQ(&gpu.host(), &vae);
      EXPECT_GT(gpu.weight_bytes(), 0);
      // Bounds: see the file comment.
      const auto check = [&](const Diff& d) {
        switch (precision) {
          case DecoderPrecision::fp32:
            EXPECT_LE(d.max_abs, 1e-4);
            break;
          case DecoderPrecision::tf32:
            EXPECT_LE(d.max_abs, 3e-2);
            EXPECT_LE(d.mean_abs, 2e-3);
            break;
          case DecoderPrecision::bf16:
            EXPECT_LE(d.max_abs, 0.15);
            EXPECT_LE(d.mean_abs, 8e-3);
            break;
        }
      };
      const auto got = gpu_decode(gpu, f_hat, c.B, 0);
      const Diff d = diff(got, ref);
      std::printf("[ decoder  ] %s, %s: max |gpu - cpu| %.3g, mean %.3g (pixels in [0, 1])\n", c.label.c_str(),
                  name(precision), d.max_abs, d.mean_abs);
      check(d);
      for (float v : got) ASSERT_TRUE(v >= 0.0f && v <= 1.0f) << v;
      // The host-tensor convenience (its own stream and buffers), same bounds.
      const auto host_api = gpu.decode(f_hat, c.B);
      SCOPED_TRACE("host-tensor decode");
      check(diff(host_api, ref));
    }
  }
}

TEST(VqVaeCuda, ChunkedDecodeIsConsistent) {
  std::mt19937_64 rng(test_seed() ^ 0xc4a7ULL);
  const DecoderCase c = decoder_cases().front();
  const VqVae vae = VqVae::random(c.cfg, rng());
  const int B = 5, P = c.cfg.patch_nums.back();
  const std::size_t in_img = static_cast<std::size_t>(c.cfg.Cvae) * P * P;
  const std::size_t out_img = static_cast<std::size_t>(3) * 16 * P * 16 * P;
  const auto f_hat = varkv::testing::random_normal(B * in_img, rng);
  for (const auto precision : {DecoderPrecision::fp32, DecoderPrecision::tf32, DecoderPrecision::bf16}) {
    SCOPED_TRACE(name(precision));
    const VqVaeCuda gpu(vae, precision);
    EXPECT_EQ(gpu.decode_chunk(B, 0), B);  // a tiny decoder fits at once
    EXPECT_EQ(gpu.decode_chunk(B, 2), 2);
    EXPECT_EQ(gpu.decode_chunk(B, 9), B);
    const auto whole = gpu_decode(gpu, f_hat, B, 0);
    EXPECT_TRUE(diff(gpu_decode(gpu, f_hat, B, 0), whole).identical) << "repeated call";
    EXPECT_GT(gpu.scratch_bytes(), 0);
    // Chunks of 2 (2, 2, 1) within one call == separate calls of 2 and 1 images: same GEMM batches.
    const auto by2 = gpu_decode(gpu, f_hat, B, 2);
    std::vector<float> pieces;
    for (int b0 = 0; b0 < B; b0 += 2) {
      const int n = std::min(2, B - b0);
      const std::vector<float> part(f_hat.begin() + b0 * in_img, f_hat.begin() + (b0 + n) * in_img);
      const auto img = gpu_decode(gpu, part, n, 2);
      pieces.insert(pieces.end(), img.begin(), img.end());
    }
    ASSERT_EQ(pieces.size(), B * out_img);
    EXPECT_TRUE(diff(by2, pieces).identical) << "chunks of 2 in one call vs separate calls";
    const auto by1 = gpu_decode(gpu, f_hat, B, 1);
    const Diff d = diff(by1, whole);
    std::printf("[ chunking ] %s: chunk 1 vs chunk %d: max |diff| %.3g, bit-identical: %s; chunk 2 vs %d: %.3g\n",
                name(precision), B, d.max_abs, d.identical ? "yes" : "no", B, diff(by2, whole).max_abs);
    if (precision == DecoderPrecision::fp32) {
      // cuBLAS picks another kernel for another batch count: another summation order in every conv,
      // so the fp32 decoder's own bound against the host (1e-4) applies (H100: 1.3e-5 measured).
      EXPECT_LE(d.max_abs, 1e-4);
    } else {  // another kernel may round differently; still within the precision's own bound
      EXPECT_LE(d.max_abs, precision == DecoderPrecision::tf32 ? 3e-2 : 0.15);
    }
  }
}

// ---- golden ---------------------------------------------------------------------------------

TEST(VqVaeCudaGolden, DecodeMatchesOfficialImage) {
  REQUIRE_GOLDEN(g);
  const VqVae& vae = *g->vae;
  const int P = vae.config().patch_nums.back(), C = vae.config().Cvae;
  const auto fshape = g->file->shape("gen_f_hat");
  const int B = static_cast<int>(fshape.at(0));
  const std::int64_t expect_f[] = {B, C, P, P};
  const HostTensor f_hat = g->file->load("gen_f_hat", expect_f);
  const std::int64_t expect_img[] = {B, 3, 16 * P, 16 * P};
  const HostTensor ref = g->file->load("gen_image", expect_img);
  const auto cpu = vae.decode(f_hat.data, B);
  for (const auto precision : {DecoderPrecision::fp32, DecoderPrecision::tf32, DecoderPrecision::bf16}) {
    const VqVaeCuda gpu(vae, precision);
    const auto got = gpu_decode(gpu, f_hat.data, B, 0);
    const Diff official = diff(got, ref.data), host = diff(got, cpu);
    std::printf("[ golden   ] decode(gen_f_hat) %s vs gen_image: max abs %.3g, mean %.3g; vs host decode: max %.3g, "
                "mean %.3g\n",
                name(precision), official.max_abs, official.mean_abs, host.max_abs, host.mean_abs);
    RecordProperty(std::string("max_abs_error_") + name(precision), std::to_string(official.max_abs));
    // Bounds: see the file comment.
    const double bound = precision == DecoderPrecision::fp32 ? 1e-3 : precision == DecoderPrecision::tf32 ? 1e-2 : 3e-2;
    EXPECT_LE(official.max_abs, bound) << name(precision);
  }
}

TEST(VqVaeCudaGolden, QuantizerPathRebuildsOfficialFHat) {
  REQUIRE_GOLDEN(g);
  const VqVae& vae = *g->vae;
  const auto& pn = vae.config().patch_nums;
  const int S = static_cast<int>(pn.size()), P = pn.back(), C = vae.config().Cvae;
  const auto tokens = g->file->load_int("gen_tokens");
  const int B = static_cast<int>(g->file->shape("gen_tokens").at(0));
  const std::int64_t L = vae.total_tokens();
  ASSERT_EQ(tokens.size(), static_cast<std::size_t>(B * L));
  const VqVaeCuda gpu(vae);
  std::vector<float> f_cpu(static_cast<std::size_t>(B) * C * P * P, 0.0f);
  DeviceBuffer<float> d_f(f_cpu);
  std::int64_t begin = 0;
  double worst_next = 0;
  for (int si = 0; si < S; ++si) {
    const std::int64_t n = std::int64_t{pn[si]} * pn[si];
    std::vector<std::int32_t> t(static_cast<std::size_t>(B * n));
    for (int b = 0; b < B; ++b)
      for (std::int64_t i = 0; i < n; ++i) t[b * n + i] = static_cast<std::int32_t>(tokens[b * L + begin + i]);
    begin += n;
    const auto next_cpu = vae.next_autoregressive_input(si, f_cpu, B, t);
    const bool last = si == S - 1;
    DeviceBuffer<std::int32_t> d_t(t);
    DeviceBuffer<float> d_next(next_cpu.size());
    d_next.poison();
    gpu.next_autoregressive_input(si, d_f.data(), B, d_t.data(), last ? nullptr : d_next.data(), nullptr);
    if (!last) {
      const Diff dn = diff(d_next.download(), next_cpu);
      EXPECT_LE(dn.max_abs, 1e-5 * (1 + dn.max_ref)) << "scale " << si;
      worst_next = std::max(worst_next, dn.max_abs);
    }
  }
  const auto f_gpu = d_f.download();
  const std::int64_t fshape[] = {B, C, P, P};
  const HostTensor ref = g->file->load("gen_f_hat", fshape);
  const Diff official = diff(f_gpu, ref.data), host = diff(f_gpu, f_cpu);
  std::printf("[ golden   ] device quantizer from gen_tokens: f_hat vs gen_f_hat max abs %.3g; vs host f_hat %.3g "
              "(bit-identical: %s); next inputs vs host: %.3g\n",
              official.max_abs, host.max_abs, host.identical ? "yes" : "no", worst_next);
  EXPECT_LT(official.max_abs, 1e-3);
  EXPECT_LE(host.max_abs, 1e-5 * (1 + host.max_ref));
}

// ---- bad arguments --------------------------------------------------------------------------

TEST(VqVaeCuda, BadArgumentsAreClearErrors) {
  const VqVae vae = small_vae(4, {1, 2, 4}, 3);
  const VqVaeCuda gpu(vae);
  const int B = 2, C = 4, P = 4;
  DeviceBuffer<float> f(static_cast<std::size_t>(B) * C * P * P), next(static_cast<std::size_t>(B) * 4 * C),
      img(static_cast<std::size_t>(B) * 3 * 64 * 64);
  DeviceBuffer<std::int32_t> tok(std::vector<std::int32_t>(static_cast<std::size_t>(B) * 16, 1));
  VARKV_CUDA_CHECK(cudaMemset(f.data(), 0, f.bytes()));
  expect_error([&] { gpu.next_autoregressive_input(-1, f.data(), B, tok.data(), next.data(), nullptr); },
               "si = -1 out of range [0, 3)");
  expect_error([&] { gpu.next_autoregressive_input(3, f.data(), B, tok.data(), next.data(), nullptr); },
               "si = 3 out of range [0, 3)");
  expect_error([&] { gpu.next_autoregressive_input(0, f.data(), 0, tok.data(), next.data(), nullptr); },
               "batch B = 0 must be positive");
  expect_error([&] { gpu.next_autoregressive_input(0, nullptr, B, tok.data(), next.data(), nullptr); },
               "f_hat is null");
  expect_error([&] { gpu.next_autoregressive_input(0, f.data(), B, nullptr, next.data(), nullptr); },
               "tokens is null");
  expect_error([&] { gpu.next_autoregressive_input(0, f.data(), B, tok.data(), nullptr, nullptr); },
               "next is null at scale 0");
  EXPECT_NO_THROW(gpu.next_autoregressive_input(2, f.data(), B, tok.data(), nullptr, nullptr));  // last scale
  expect_error([&] { gpu.decode(f.data(), 0, img.data(), nullptr); }, "batch B = 0 must be positive");
  expect_error([&] { gpu.decode(nullptr, B, img.data(), nullptr); }, "f_hat is null");
  expect_error([&] { gpu.decode(f.data(), B, nullptr, nullptr); }, "images is null");
  expect_error([&] { gpu.decode(f.data(), B, img.data(), nullptr, -1); }, "max_chunk = -1");
  expect_error([&] { gpu.decode_chunk(-3); }, "batch B = -3");
  // Host-tensor conveniences: the host VqVae's checks.
  std::vector<float> host_f(static_cast<std::size_t>(B) * C * P * P, 0.0f), short_f(5);
  const std::vector<std::int32_t> ok_tokens = {0, 15};
  expect_error([&] { gpu.next_autoregressive_input(0, short_f, B, ok_tokens); }, "f_hat holds 5 floats");
  expect_error([&] { gpu.next_autoregressive_input(0, host_f, B, std::vector<std::int32_t>{1, 2, 3}); },
               "tokens hold 3 values, expected [2, 1]");
  expect_error([&] { gpu.next_autoregressive_input(0, host_f, B, std::vector<std::int32_t>{0, 16}); },
               "token 16 at image 1");
  expect_error([&] { gpu.next_autoregressive_input(7, host_f, B, ok_tokens); }, "si = 7 out of range");
  expect_error([&] { gpu.decode(short_f, 1); }, "f_hat holds 5 floats");
  expect_error([&] { gpu.decode(host_f, 0); }, "batch B = 0");
  // Still usable after the refusals, and the host conveniences equal the host VqVae here too.
  std::vector<float> f_cpu = host_f;
  const auto next_cpu = vae.next_autoregressive_input(0, f_cpu, B, ok_tokens);
  const auto next_gpu = gpu.next_autoregressive_input(0, host_f, B, ok_tokens);
  EXPECT_LE(diff(next_gpu, next_cpu).max_abs, 1e-5 * (1 + diff(next_gpu, next_cpu).max_ref));
  EXPECT_LE(diff(host_f, f_cpu).max_abs, 1e-5 * (1 + diff(host_f, f_cpu).max_ref));
  EXPECT_TRUE(gpu.next_autoregressive_input(2, host_f, B, std::vector<std::int32_t>(B * 16, 3)).empty());
}

TEST(VqVaeCuda, MovedObjectKeepsWorking) {
  const VqVae vae = small_vae(8, {1, 2}, 9);
  std::mt19937_64 rng(test_seed() ^ 0x30eULL);
  const auto f_hat = varkv::testing::random_normal(8 * 2 * 2, rng);
  VqVaeCuda a(vae, DecoderPrecision::fp32);
  const auto before = a.decode(f_hat, 1);
  // Same weights, same arithmetic (1e-5: each host-tensor call runs on a fresh stream, and cuBLAS
  // promises equal bits only for one stream).
  VqVaeCuda b(std::move(a));
  EXPECT_LE(diff(b.decode(f_hat, 1), before).max_abs, 1e-5);
  VqVaeCuda c(vae, DecoderPrecision::bf16);
  c = std::move(b);
  EXPECT_EQ(c.precision(), DecoderPrecision::fp32);
  EXPECT_LE(diff(c.decode(f_hat, 1), before).max_abs, 1e-5);
}

}  // namespace

#else  // built without the reference model's CUDA backend

TEST(VqVaeCuda, NotBuilt) { GTEST_SKIP() << "varkv_reference_cuda is not part of this build"; }

#endif

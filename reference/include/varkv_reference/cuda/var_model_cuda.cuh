#pragma once
//! \file
//! The reference VAR transformer on the GPU in bf16 (fp32 accumulation), and the official
//! `autoregressive_infer_cfg` loop around it: the CUDA backend of `varkv::ref::VarModel`.
//!
//! \par Overview
//! `VarModelCuda` binds to a host `VarModel` (same object, different backend: it keeps a reference,
//! so the VarModel must outlive it) and uploads its weights once: every Linear as bf16 [out, in]
//! (official layout), biases in fp32, AdaLN's ada_lin of all blocks and the head concatenated into one
//! [(6 depth + 2) C, C] matrix (one GEMM conditions a whole batch), word_embed and the level/position
//! table in fp32. One scale step of 2B sequences (B images under CFG) runs per block
//! - fused residual + LayerNorm (eps from the config, no affine, fp32 statistics) + AdaLN modulation
//!   (x += gamma * y of the previous sub-layer, then h = LN(x) (1 + scale) + shift in bf16); the
//!   residual stream x stays fp32;
//! - cuBLASLt GEMMs (bf16 x bf16, fp32 accumulation) with the bias in the epilogue; fc1 uses
//!   `CUBLASLT_EPILOGUE_GELU_BIAS` only when a probe at construction finds cuBLASLt's GELU equal to
//!   the tanh form (within 3e-5 on 16 points where the erf form differs by up to 4e-4: the docs do not
//!   state the formula); otherwise fc1 writes fp32 + bias and an own kernel applies gelu_tanh
//!   (`gelu_path()` says which). A GEMM shape cuBLASLt finds no algorithm for falls back to
//!   cublasGemmEx + an own bias/GELU kernel;
//! - fused q/k L2 normalisation (F.normalize, eps 1e-12) per head with the per-head q scale
//!   exp(min(scale_mul, ln 100)), writing q, k, v [2B, H, n, d] in bf16;
//! - attention through `varkv::DeviceCompressedCache<Policy>` (`attend` = the fused attention kernel
//!   over the kept cache + the step's own K/V, softmax scale 1; `commit` = the policy's scoring and
//!   compaction), so every preset of include/varkv/policy/presets.hpp but AdaKV runs (`full` keeps
//!   everything). The cache's KvLedger accounts K and V as bf16;
//! - the head: fused residual + LN + head AdaLN, then the vocab GEMM (fp32 logits).
//!
//! \par Precision
//! Weights are bf16 (checkpoints stored in bf16, like the golden model, are exact); GEMMs accumulate
//! in fp32; the residual stream, LayerNorm statistics, AdaLN parameters and logits stay fp32. Two GEMM
//! inputs are always read as two bf16 terms hi + lo (16 significant bits, a second GEMM into the same
//! fp32 output): SiLU(class embedding) of the conditioning and the head's input. A host simulation of
//! the golden VAR-d4 with each bf16 rounding alone put them first (rms logit error 7e-3 for the head
//! input, 4e-3 for the conditioning, 1.7e-3 for each of the other GEMM inputs); both GEMMs are tiny
//! (the head is ~0.3% of VAR-d30's FLOPs). `CudaPrecision::split_bf16` reads every GEMM input this
//! code produces (LayerNorm and GELU outputs) that way, at about twice the GEMM work; what remains is
//! the attention's own bf16 (q, k, v, probabilities, O). Measured on the golden VAR-d4 (H100): raw
//! logits within 1.4e-3 (bf16) / 9.5e-4 (split_bf16) of max |logit| on the CPU run's inputs; greedy
//! free-running tokens equal to the fp32 CPU's on 83% / 91% for one label set (the model's top-2 gaps
//! go down to 1e-4, and one early flip changes every later scale's input; a host simulation of the
//! same roundings gives 85-92% / up to 99.9% over other labels, and 99.7% / 99.9% argmax agreement
//! on the CPU run's own inputs).
//!
//! \par Generation
//! `generate_cuda` follows reference/include/varkv_reference/generate.hpp step for step: class
//! embedding (null class for the second half), conditioning, scale 0's token map, then per scale the
//! blocks, the head, CFG guidance l = (1 + t) cond - t uncond with t = cfg si / (S - 1) (fp32, no FMA
//! contraction, as the CPU), and token choice on the GPU: greedy (top_k == 1: argmax, ties to the
//! lowest index) or top-k then top-p filtering exactly as the CPU rule (keep logits >= the k-th
//! largest; drop the ascending prefix whose cumulative softmax is <= 1 - top_p, never the largest)
//! and a draw from the rest. The generator is Philox4x32-10 (curand), one subsequence per (image,
//! position), seeded with `seed`: deterministic for a seed, but sampled tokens can NOT equal the CPU
//! path's std::mt19937_64 draws (nor torch's); greedy decoding can. Sampling needs vocab <= 4096 (one
//! CTA sorts a row); greedy has no limit.
//!
//! \par Quantizer, decoder and memory
//! The quantizer step (embedding lookup, bicubic upsampling, phi convs, f_hat update, area
//! downsampling) and the VQ-VAE decoder run on the device through `VqVaeCuda` (vqvae_cuda.cuh); the
//! chosen tokens stay on the device and come down once, with f_hat, at the end. Only class
//! embedding rows and scale 0's token map (a few KB) are built on the host. The scratch of one
//! generation shares one buffer between the qkv projection (fp32), the MLP's hidden activations and
//! its output, the logits and the word embedding (never alive together): VAR-d30 needs ~27 MB per
//! image of scratch beside its cache. As the official code, the cache and this scratch are released
//! before the decoder runs; the decoder's chunk scratch is released after it.
//! `probe_cuda_generation` allocates a generation's cache and scratch without running it: the
//! largest batch that fits is found with it.
//!
//! \par Errors
//! Every bad argument (labels, cfg, top-k/p, forced tokens, policy, head_dim, vocab for sampling)
//! throws `varkv::Error` naming it before any device work; every CUDA / cuBLAS call is checked.
//! `cuda_device_available()` says whether a GPU can be used at all (no throw).
//!
//! \par Snippet
//! \code
//! auto var = varkv::ref::VarModel::load(file, varkv::ref::VarConfig::from_depth(16, patch_nums));
//! varkv::ref::VarModelCuda gpu(var);                       // uploads bf16 weights
//! auto r = varkv::ref::generate_cuda(gpu, vae, {.labels = {3, 207}, .cfg = 1.5, .top_k = 1},
//!                                    {.policy = "scalekv:budget=0.1"});
//! r.result.tokens;  r.ledger->peak_bytes();
//! \endcode
//!
//! This header is plain C++ (no CUDA syntax): tools compiled by the host compiler include it and
//! link `varkv_reference_cuda`.

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "varkv/core/kv_ledger.hpp"
#include "varkv_reference/generate.hpp"
#include "varkv_reference/cuda/vqvae_cuda.cuh"
#include "varkv_reference/var_model.hpp"
#include "varkv_reference/vqvae.hpp"

namespace varkv::ref {

//! True when a CUDA device can be used; otherwise false and, when `why` is given, the reason.
bool cuda_device_available(std::string* why = nullptr);

//! Throws varkv::Error unless `spec` (registry text, e.g. "snapkv:budget=0.1") names a policy the GPU
//! cache runs (unknown presets, bad parameters and AdaKV's head-adaptive split are refused). No GPU
//! needed.
void check_cuda_policy(std::string_view spec);

//! Device weights of a host VarModel (see the file comment). Move-only.
class VarModelCuda {
 public:
  //! Uploads the weights of `model` to the current CUDA device. `model` must outlive this object.
  //! Throws varkv::Error when no device is usable or head_dim is not 64 or 128 (the fused attention's).
  explicit VarModelCuda(const VarModel& model);
  ~VarModelCuda();
  VarModelCuda(VarModelCuda&&) noexcept;
  VarModelCuda& operator=(VarModelCuda&&) noexcept;
  VarModelCuda(const VarModelCuda&) = delete;
  VarModelCuda& operator=(const VarModelCuda&) = delete;

  const VarModel& host() const;
  const VarConfig& config() const;
  //! Device bytes of the uploaded weights.
  std::int64_t weight_bytes() const;
  //! How fc1's GELU runs: "cublasLt GELU_BIAS epilogue (...)" or "own gelu_tanh kernel (...)".
  std::string gelu_path() const;
  //! GEMM calls so far that found no cuBLASLt algorithm and ran cublasGemmEx + an own epilogue.
  std::int64_t gemm_fallbacks() const;

  struct Impl;
  Impl& impl() const { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

//! What the GEMMs read (see the file comment, "Precision").
enum class CudaPrecision {
  bf16,        //!< bf16 GEMM inputs (the conditioning and the head: hi + lo)
  split_bf16,  //!< every GEMM input this code produces as hi + lo bf16 terms: ~2x GEMM work
};

struct CudaGenerationOptions {
  std::string policy = "full";  //!< registry spec of the device cache
  CudaPrecision precision = CudaPrecision::bf16;
  //! Teacher forcing: when non-empty, [B, L] tokens used instead of the chosen ones (the logits, gaps
  //! and cache still come from the model); each must be in 0..vocab-1.
  std::vector<std::int32_t> forced_tokens;
  bool keep_logits = false;  //!< download each scale's raw (unguided) logits [2B, n, vocab]
  bool download_pixels = true;  //!< with req.decode: bring the images to the host (else decode only)
};

struct CudaGenerationResult {
  GenerationResult result;  //!< tokens, f_hat, pixels (host decode), seconds and top-2 gaps per scale
  std::optional<KvLedger> ledger;  //!< the device cache's ledger (K/V accounted as bf16)
  std::string cache;               //!< e.g. "DeviceCompressedCache<full>"
  std::int64_t kv_allocated_bytes = 0;  //!< K/V storage the device cache allocated
  std::vector<std::vector<float>> logits;  //!< keep_logits: per scale [2B, n, vocab] fp32
  //! Device memory in use by the whole process at the generation's peak (cudaMemGetInfo after each
  //! scale and after the decode: weights, CUDA context, cache, scratch), and its growth during the call.
  std::int64_t device_peak_bytes = 0;
  std::int64_t device_generation_bytes = 0;
};

//! The official autoregressive_infer_cfg on the GPU (see the file comment); `req` as for the CPU
//! `generate` (greedy when top_k == 1).
CudaGenerationResult generate_cuda(const VarModelCuda& var, const VqVaeCuda& vae, const GenerationRequest& req,
                                   const CudaGenerationOptions& options = {}, const ProgressFn& progress = {});
//! Same, uploading `vae` for this call (a `VqVaeCuda` with the default decoder precision).
CudaGenerationResult generate_cuda(const VarModelCuda& var, const VqVae& vae, const GenerationRequest& req,
                                   const CudaGenerationOptions& options = {}, const ProgressFn& progress = {});

//! Whether a generation of B images with `options` (policy, precision) fits on the device now: the
//! cache, the transformer's scratch and 1 GiB of headroom (cuBLAS workspaces, quantizer scratch)
//! are allocated and released again. The decoder runs after the cache and scratch are released. An allocation
//! failure gives fits = false and its message; other errors throw.
struct CudaFitProbe {
  bool fits = false;
  std::int64_t bytes = 0;     //!< device bytes the allocations took (when they fit)
  std::int64_t kv_bytes = 0;  //!< of which the K/V storage of the cache
  std::string why;            //!< the allocation error when they do not fit
};
CudaFitProbe probe_cuda_generation(const VarModelCuda& var, int B, const CudaGenerationOptions& options = {});

//! The GPU token choice on host logits (test hook of the kernel `generate_cuda` uses): logits
//! [2B, n, V] (conditional rows first), guidance t; `first_position` is the scale's first token position
//! and `positions` the sequence length L (they pick each row's Philox subsequence b L + first + i).
//! Returns tokens [B, n] and top-1 minus top-2 gaps [B, n] of the guided rows.
struct CudaTokenChoice {
  std::vector<std::int32_t> tokens;
  std::vector<float> gaps;
};
CudaTokenChoice choose_tokens_cuda(std::span<const float> logits, int B, int n, int V, double t, int top_k, double top_p,
                                   std::uint64_t seed, std::int64_t first_position, std::int64_t positions);

}  // namespace varkv::ref

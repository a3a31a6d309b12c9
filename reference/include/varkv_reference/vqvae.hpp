#pragma once
//! \file
//! The VQ-VAE half of VAR (FoundationVision/VAR `models/vqvae.py`, `quant.py`, `basic_vae.py`) on
//! the host in fp32: the multi-scale residual quantizer's token -> feature path and the decoder.
//!
//! \par Overview
//! VAR never runs the encoder at generation time; what it needs from the VQ-VAE is
//! - the quantizer's accumulation of f_hat [B, Cvae, P, P] (P = last patch number) from the tokens
//!   of each scale: embedding lookup, bicubic upsampling to P x P (none at the last scale), the
//!   partially shared residual conv phi chosen by si / (S - 1), and area downsampling of f_hat to the
//!   next scale's token map, which becomes the transformer's next input
//!   (`get_next_autoregressive_input`, `idxBl_to_var_input`);
//! - the decoder: post_quant_conv, conv_in, mid (res, attn, res), five up levels with ch_mult
//!   (1, 1, 2, 2, 4) of 3 res blocks each (attention after each at the lowest resolution, nearest x2 +
//!   conv between levels), GroupNorm(32, eps 1e-6) + SiLU, conv_out, then clamp(-1, 1) and (x + 1) / 2.
//!
//! phi_k(x) = (1 - r) x + r conv3x3_k(x), r = |quant_resi|; with share_quant_resi = K >= 2 (the
//! official 4) the k-th of K convs is the one whose tick of linspace(1/(3K), 1 - 1/(3K), K) (K = 4) or
//! linspace(1/(2K), 1 - 1/(2K), K) (other K) is nearest to si / (S - 1), first on ties. K = 1 (one
//! shared phi, `quantize.quant_resi.qresi.*`) and K = 0 (one per scale, `quantize.quant_resi.N.*`)
//! are supported as in the official code; |quant_resi| <= 1e-6 means phi = identity.
//!
//! \par Snippet
//! \code
//! auto file = varkv::ref::SafetensorsFile::open("vae.safetensors");
//! auto vae = varkv::ref::VqVae::load(file, {.ch = 160, .patch_nums = {1, 2, 3, 4, 5, 6, 8, 10, 13, 16}});
//! std::vector<float> f_hat(B * 32 * 16 * 16, 0.0f);
//! for (int si = 0; si < 10; ++si) {
//!   auto next = vae.next_autoregressive_input(si, f_hat, B, tokens_of_scale[si]);  // [B, pn_next^2, 32]
//!   ...
//! }
//! std::vector<float> images = vae.decode(f_hat, B);  // [B, 3, 256, 256] in [0, 1]
//! \endcode

#include <cmath>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "varkv_reference/conv2d.hpp"
#include "varkv_reference/safetensors.hpp"

namespace varkv::ref {

struct VqVaeConfig {
  int vocab = 4096;
  int Cvae = 32;
  int ch = 160;               //!< decoder base channels; ch_mult (1, 1, 2, 2, 4) is fixed
  std::vector<int> patch_nums;  //!< token map side per scale, increasing; the last is P
  double quant_resi = 0.5;
  int share_quant_resi = 4;
};

class VqVae {
 public:
  //! Official names: quantize.embedding.weight, quantize.quant_resi.qresi_ls.{0..K-1}.weight/bias,
  //! post_quant_conv.*, decoder.*; the encoder, quant_conv and buffers (quantize.ema_vocab_hit_SV)
  //! are accepted and ignored. Missing / mis-shaped tensor -> varkv::Error naming it.
  static VqVae load(const SafetensorsFile& f, VqVaeConfig cfg);
  //! Deterministic random weights (std::mt19937_64 seeded with `seed`): PyTorch's default init
  //! (conv weight and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)), GroupNorm 1 / 0, embedding N(0, 1)).
  static VqVae random(VqVaeConfig cfg, std::uint64_t seed);

  const VqVaeConfig& config() const { return cfg_; }

  //! Official `VectorQuantizer2.get_next_autoregressive_input`, in place on `f_hat` [B, Cvae, P, P]:
  //! tokens [B, pn * pn] of scale `si` (pn = patch_nums[si]) add phi(bicubic_up(embedding(tokens)))
  //! (no upsampling at the last scale). Returns area_down(f_hat) to the next scale as
  //! [B, pn_next * pn_next, Cvae] (token-major), or an empty vector at the last scale.
  std::vector<float> next_autoregressive_input(int si, std::vector<float>& f_hat, int B,
                                               std::span<const std::int32_t> tokens) const;
  //! Official `idxBl_to_var_input`: tokens of all scales [B, L] -> [B, L - pn0^2, Cvae].
  std::vector<float> idxBl_to_var_input(std::span<const std::int64_t> tokens, int B) const;
  //! f_hat [B, Cvae, P, P] -> images [B, 3, 16P, 16P] in [0, 1].
  std::vector<float> decode(std::span<const float> f_hat, int B) const;

  //! Index of the phi conv used at scale si (PhiPartiallyShared's argmin over ticks).
  int phi_index(int si) const;
  //! FLOPs (2 x multiply-adds) of decoding one image: every conv (post_quant_conv included) and the
  //! attention blocks' two products; what a decoder benchmark states its TFLOP/s against.
  double decoder_flops() const;
  //! Total number of tokens L = sum of pn^2.
  std::int64_t total_tokens() const;

  struct Decoder;  // layers, defined in vqvae.cpp

  // ---- Read-only views of the weights, for other backends (the GPU one, cuda/vqvae_cuda.cuh).
  // They point into this object: valid while it lives and is neither assigned to nor moved from.

  //! GroupNorm(32, eps 1e-6) of the decoder: biased variance, statistics over (C / 32 channels) x H x W.
  static constexpr int kGroupNormGroups = 32;
  static constexpr float kGroupNormEps = 1e-6f;

  //! The codebook [vocab, Cvae], row-major.
  std::span<const float> embedding() const { return embedding_; }
  //! The phi convs (Cvae -> Cvae, 3x3) in checkpoint order; `phi_index(si)` picks one. Empty when
  //! |quant_resi| <= 1e-6 (phi = identity).
  std::span<const Conv2d> phi_convs() const { return phis_; }
  //! r of phi(x) = (1 - r) x + r conv(x), as the host path rounds it: float(|quant_resi|).
  float quant_resi_ratio() const { return static_cast<float>(std::abs(cfg_.quant_resi)); }
  const Conv2d& post_quant_conv() const { return post_quant_conv_; }

  struct GroupNormView {
    std::span<const float> gamma, beta;  //!< [C] each
  };
  //! h = conv1(SiLU(norm1(x))); h = conv2(SiLU(norm2(h))); out = h + (nin_shortcut ? nin_shortcut(x) : x).
  struct ResnetBlockView {
    GroupNormView norm1, norm2;
    const Conv2d* conv1 = nullptr;         //!< 3x3, in -> out
    const Conv2d* conv2 = nullptr;         //!< 3x3, out -> out
    const Conv2d* nin_shortcut = nullptr;  //!< 1x1, in -> out; null when in == out
  };
  //! Single head over the H W positions: qkv = qkv(norm(x)) (no SiLU) as [q; k; v] channels,
  //! h = softmax(q^T k / sqrt(C)) applied to v, out = x + proj_out(h).
  struct AttnBlockView {
    GroupNormView norm;
    const Conv2d* qkv = nullptr;       //!< 1x1, C -> 3C
    const Conv2d* proj_out = nullptr;  //!< 1x1, C -> C
  };
  //! One up level: blocks[i], then attn[i] when attn is not empty; then nearest x2 + upsample.
  struct DecoderLevelView {
    int level = 0;  //!< official index (decoder.up.<level>)
    std::vector<ResnetBlockView> blocks;
    std::vector<AttnBlockView> attn;  //!< empty, or one per block
    const Conv2d* upsample = nullptr;  //!< 3x3 after nearest x2; null at level 0
  };
  //! The decoder in forward order: conv_in, mid (block_1, attn_1, block_2), up levels (official
  //! level 4 first), SiLU(norm_out), conv_out; `decode` then clamps to [-1, 1] and maps to [0, 1].
  struct DecoderView {
    const Conv2d* conv_in = nullptr;
    ResnetBlockView mid_block_1;
    AttnBlockView mid_attn_1;
    ResnetBlockView mid_block_2;
    std::vector<DecoderLevelView> up;
    GroupNormView norm_out;
    const Conv2d* conv_out = nullptr;
  };
  DecoderView decoder_view() const;

  VqVae(const VqVae&);  // deep copy
  VqVae& operator=(const VqVae&);
  VqVae(VqVae&&) noexcept;
  VqVae& operator=(VqVae&&) noexcept;
  ~VqVae();

 private:
  VqVae();
  template <class Token>
  void add_scale(int si, std::vector<float>& f_hat, int B, std::span<const Token> tokens, std::int64_t row_stride,
                 std::int64_t row_offset) const;
  std::vector<float> phi(int si, std::span<const float> x, int B) const;

  VqVaeConfig cfg_;
  std::vector<float> embedding_;  // [vocab, Cvae]
  std::vector<Conv2d> phis_;      // empty when |quant_resi| <= 1e-6
  Conv2d post_quant_conv_;
  std::unique_ptr<Decoder> decoder_;
};

}  // namespace varkv::ref

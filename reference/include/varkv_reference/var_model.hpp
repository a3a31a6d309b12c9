#pragma once
//! \file
//! The VAR transformer (FoundationVision/VAR `models/var.py`, `basic_var.py`) on the host in fp32:
//! configuration, weights (official names) and the forward pieces that a generation loop or a
//! teacher-forcing pass assembles.
//!
//! \par Overview
//! Width C, H heads of C / H, depth blocks, MLP ratio 4, LayerNorm eps 1e-6 without affine. Each
//! block is AdaLNSelfAttn: ada_lin = SiLU -> Linear(C, 6C) on the class embedding, chunks in the
//! official order (gamma1, gamma2, scale1, scale2, shift1, shift2);
//! x += gamma1 * proj(attn(LN(x) * (1 + scale1) + shift1)), x += gamma2 * fc2(gelu_tanh(fc1(LN(x) * (1 +
//! scale2) + shift2))). Attention (attn_l2_norm): qkv = mat_qkv(x) + (q_bias, 0, v_bias); q and k
//! L2-normalised per head, q times exp(min(scale_mul_1H11, ln 100)), softmax scale 1. The head is
//! AdaLNBeforeHead (SiLU -> Linear(C, 2C) -> scale, shift) then Linear(C, vocab).
//!
//! The attention itself is not done here: `block_forward` hands the step's q/k/v ([N, H, n, d],
//! already normalised and scaled) to an `AttentionFn`, so a generation loop can route it through a
//! varkv cache and the teacher-forcing pass through the block-causal mask of the schedule.
//!
//! Linear weights are packed in panels of 8 output columns so that the fp32 GEMM's register tile
//! (4 rows x 8 columns, GCC/Clang vector extensions, no -ffast-math needed) streams contiguous
//! memory; every output element accumulates over k in ascending order.
//!
//! \par Snippet
//! \code
//! auto file = varkv::ref::SafetensorsFile::open("var.safetensors");
//! auto var = varkv::ref::VarModel::load(file, varkv::ref::VarConfig::from_depth(16, patch_nums));
//! auto logits = varkv::ref::teacher_forcing_logits(var, labels, var_input);  // [B, L, V]
//! \endcode

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "varkv/core/model_geometry.hpp"
#include "varkv/core/scale_schedule.hpp"
#include "varkv/core/tensor_view.hpp"
#include "varkv_reference/safetensors.hpp"

namespace varkv::ref {

struct VarConfig {
  int depth = 4;
  int width = 256;  //!< C
  int heads = 4;
  int num_classes = 1000;  //!< class num_classes is the null class of CFG
  int vocab = 4096;
  int Cvae = 32;
  std::vector<int> patch_nums;  //!< token map sides, increasing
  int mlp_ratio = 4;
  double norm_eps = 1e-6;

  //! The official geometry rule: C = 64 depth, depth heads of 64.
  static VarConfig from_depth(int depth, std::vector<int> patch_nums);

  int head_dim() const { return width / heads; }
  int hidden() const { return width * mlp_ratio; }
  int scales() const { return static_cast<int>(patch_nums.size()); }
  int first_l() const { return patch_nums.at(0) * patch_nums.at(0); }
  std::int64_t total_tokens() const;
  ScaleSchedule schedule() const;
  ModelGeometry geometry() const;
  //! Throws varkv::Error naming the bad field.
  void validate() const;
};

//! y = x W^T + b. W (official [out, in]) is stored packed in panels of 8 output columns,
//! panel p = [in][8] holding W[8p .. 8p+7, :]^T (zero-padded past `out`), so the GEMM micro-kernel
//! streams one contiguous panel per 8 columns.
struct Linear {
  int in = 0, out = 0;
  std::vector<float> panels;  //!< [ceil(out / 8)][in][8]
  std::vector<float> bias;    //!< [ceil(out / 8) * 8], zero-padded (zeros when the layer has no bias)

  //! From an official row-major weight [out, in] and bias [out] (empty: none).
  static Linear from_weight(std::span<const float> weight, int out, int in, std::span<const float> bias);
  //! The weight unpacked to the official row-major [out, in] layout (for device uploads).
  std::vector<float> weight() const {
    std::vector<float> w(static_cast<std::size_t>(out) * static_cast<std::size_t>(in));
    for (int o = 0; o < out; ++o)
      for (int i = 0; i < in; ++i)
        w[static_cast<std::size_t>(o) * in + i] = panels[(static_cast<std::size_t>(o / 8) * in + i) * 8 + o % 8];
    return w;
  }
  //! The bias [out] without the panel padding (zeros when the layer has none).
  std::span<const float> bias_values() const { return std::span<const float>(bias).first(static_cast<std::size_t>(out)); }
};

//! y [M, out] = x [M, in] W^T + b (fp32, OpenMP over row and column tiles).
void linear_forward(const Linear& lin, std::span<const float> x, std::int64_t M, std::span<float> y);

struct VarBlock {
  Linear ada_lin;  //!< C -> 6C (applied to SiLU(cond))
  Linear mat_qkv;  //!< C -> 3C, bias (q_bias, zero_k_bias, v_bias)
  std::vector<float> q_scale;  //!< [H] exp(min(scale_mul_1H11, ln 100))
  Linear proj;     //!< C -> C
  Linear fc1;      //!< C -> hidden
  Linear fc2;      //!< hidden -> C
};

//! Per-sequence AdaLN parameters: for each block 6C values (gamma1, gamma2, scale1, scale2, shift1,
//! shift2), and 2C for the head (scale, shift).
struct Conditioning {
  int sequences = 0;
  std::vector<std::vector<float>> blocks;  //!< [depth][sequences * 6C]
  std::vector<float> head;                 //!< [sequences * 2C]
};

//! One attention call of a block: q, k, v [N, H, n, d] (contiguous) of the step's tokens; write out
//! [N, H, n, d]. `layer` is the block index.
struct AttentionStep {
  int layer = 0;
  TensorView<const float, 4> q, k, v;
  TensorView<float, 4> out;
};
using AttentionFn = std::function<void(const AttentionStep&)>;

class VarModel {
 public:
  //! Official parameter names; buffers lvl_1L (checked against the schedule when present),
  //! attn_bias_for_masking and zero_k_bias are accepted. Missing or mis-shaped tensor -> varkv::Error
  //! naming file, tensor, expected and found shape.
  static VarModel load(const SafetensorsFile& f, VarConfig cfg);
  //! Deterministic random weights (each tensor keyed by a draw of std::mt19937_64 seeded with `seed`,
  //! its values drawn in parallel chunks whose engines are keyed by the chunk: the same for any
  //! thread count) following the official
  //! `init_weights(init_adaln=0.5, init_adaln_gamma=1e-5, init_head=0.02, init_std=-1)` roughly:
  //! Linear weights trunc_normal(std = sqrt(1 / 3C)), biases 0; embeddings, pos_start, pos_1LC,
  //! lvl_embed trunc_normal(std sqrt(1 / 3C)); head weight x 0.02; proj / fc2 weights divided by
  //! sqrt(2 depth); ada_lin weights x 0.5 except the gamma chunks x 1e-5; q/v biases 0;
  //! scale_mul = ln 4. The trunc normal is truncated at +-2 (absolute, as torch's default).
  static VarModel random(VarConfig cfg, std::uint64_t seed);

  const VarConfig& config() const { return cfg_; }
  const VarBlock& block(int l) const { return blocks_.at(static_cast<std::size_t>(l)); }

  //! class_emb rows of `labels` (each in 0..num_classes, num_classes = null class): [N, C].
  std::vector<float> class_embedding(std::span<const int> labels) const;
  //! AdaLN parameters of every block and the head from class embeddings cond [N, C].
  Conditioning condition(std::span<const float> cond, int N) const;
  //! Scale 0's token map: sos (= cond) + pos_start + lvl_pos[0 .. first_l): [N, first_l, C].
  std::vector<float> first_token_map(std::span<const float> cond, int N) const;
  //! Scale si >= 1's token map from the quantizer's input [N, pn^2, Cvae]: word_embed + lvl_pos.
  std::vector<float> embed_scale_input(int si, std::span<const float> var_input, int N) const;
  //! x [N, n, C] in place through block l; attention through `attend`.
  void block_forward(int l, std::span<float> x, int N, int n, const Conditioning& c, const AttentionFn& attend) const;
  //! head(head_nm(x)) for x [N, n, C]: logits [N, n, vocab].
  std::vector<float> logits(std::span<const float> x, int N, int n, const Conditioning& c) const;

  //! lvl_embed[scale of t] + pos_1LC[t], t = 0..L-1: [L, C].
  const std::vector<float>& level_position() const { return lvl_pos_; }
  //! The remaining weights, read-only, for a device backend's upload (reference/src/cuda).
  const Linear& word_embed() const { return word_embed_; }
  const Linear& head_ada() const { return head_ada_; }
  const Linear& head() const { return head_; }

 private:
  VarConfig cfg_;
  std::vector<float> class_emb_;  // [num_classes + 1, C]
  std::vector<float> pos_start_;  // [first_l, C]
  std::vector<float> lvl_pos_;    // [L, C]
  Linear word_embed_;             // Cvae -> C
  std::vector<VarBlock> blocks_;
  Linear head_ada_;  // C -> 2C
  Linear head_;      // C -> vocab
};

//! Official `VAR.forward(labels, var_input)` with class dropout off: the whole L sequence through
//! every block under `attn_bias_for_masking` (a query of scale i sees the keys of scales <= i),
//! derived from the schedule and realised per scale with varkv::reference_attention (cache = the
//! prefix of earlier scales, new = the scale's own tokens). labels [B], var_input [B, L - first_l,
//! Cvae] -> logits [B, L, vocab].
std::vector<float> teacher_forcing_logits(const VarModel& model, std::span<const int> labels,
                                          std::span<const float> var_input);

}  // namespace varkv::ref

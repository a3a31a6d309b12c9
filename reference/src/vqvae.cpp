#include "varkv_reference/vqvae.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <optional>
#include <random>
#include <string>

#include <fmt/format.h>

#include <varkv/core/error.hpp>

#include "varkv_reference/interpolate.hpp"

namespace varkv::ref {

namespace {

constexpr int kChMult[] = {1, 1, 2, 2, 4};
constexpr int kLevels = 5;
constexpr int kBlocksPerLevel = 3;  // num_res_blocks + 1 in the decoder
constexpr int kGroups = 32;
constexpr float kGroupNormEps = 1e-6f;

// Where parameters come from: a checkpoint (with shape checks) or a seeded generator.
struct ParamSource {
  std::function<std::vector<float>(const std::string&, std::vector<std::int64_t>, double fan_in)> conv_param;
  std::function<std::vector<float>(const std::string&, std::int64_t C, bool is_weight)> norm_param;

  Conv2d conv(const std::string& prefix, int cin, int cout, int k) const {
    const double fan_in = static_cast<double>(cin) * k * k;
    auto w = conv_param(prefix + ".weight", {cout, cin, k, k}, fan_in);
    auto b = conv_param(prefix + ".bias", {cout}, fan_in);
    return Conv2d(cin, cout, k, std::move(w), std::move(b));
  }
};

struct GroupNorm {
  int C = 0;
  std::vector<float> gamma, beta;

  static GroupNorm make(const ParamSource& src, const std::string& prefix, int C) {
    require(C % kGroups == 0, "VQ-VAE: GroupNorm '{}' has {} channels, not a multiple of {}", prefix, C, kGroups);
    return {C, src.norm_param(prefix + ".weight", C, true), src.norm_param(prefix + ".bias", C, false)};
  }

  // x [B, C, HW] -> GroupNorm(32, eps 1e-6) (+ SiLU)
  std::vector<float> forward(std::span<const float> x, int B, std::int64_t hw, bool silu) const {
    std::vector<float> y(x.size());
    const int cpg = C / kGroups;
    const std::int64_t n = static_cast<std::int64_t>(cpg) * hw;
#pragma omp parallel for schedule(static)
    for (int bg = 0; bg < B * kGroups; ++bg) {
      const int b = bg / kGroups, g = bg % kGroups;
      const std::size_t base = (static_cast<std::size_t>(b) * C + static_cast<std::size_t>(g) * cpg) * hw;
      // Two passes in double with 8 independent partial sums (vectorisable, short dependency chains).
      const float* xg = x.data() + base;
      double part[8] = {};
      std::int64_t i = 0;
      for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; ++j) part[j] += xg[i + j];
      for (; i < n; ++i) part[0] += xg[i];
      double sum = 0;
      for (double p : part) sum += p;
      const double mean = sum / static_cast<double>(n);
      double sq_part[8] = {};
      for (i = 0; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; ++j) {
          const double d = xg[i + j] - mean;
          sq_part[j] += d * d;
        }
      for (; i < n; ++i) sq_part[0] += (xg[i] - mean) * (xg[i] - mean);
      double sq = 0;
      for (double p : sq_part) sq += p;
      const double rstd = 1.0 / std::sqrt(sq / static_cast<double>(n) + kGroupNormEps);  // biased variance
      for (int cc = 0; cc < cpg; ++cc) {
        const int c = g * cpg + cc;
        const float scale = static_cast<float>(rstd * gamma[c]);
        const float shift = static_cast<float>(beta[c] - mean * rstd * gamma[c]);
        const std::size_t off = base + static_cast<std::size_t>(cc) * hw;
        for (std::int64_t i = 0; i < hw; ++i) {
          float v = x[off + i] * scale + shift;
          if (silu) v = v / (1.0f + std::exp(-v));
          y[off + i] = v;
        }
      }
    }
    return y;
  }
};

struct ResnetBlock {
  GroupNorm norm1, norm2;
  Conv2d conv1, conv2;
  std::optional<Conv2d> nin_shortcut;

  static ResnetBlock make(const ParamSource& src, const std::string& p, int cin, int cout) {
    ResnetBlock r;
    r.norm1 = GroupNorm::make(src, p + ".norm1", cin);
    r.conv1 = src.conv(p + ".conv1", cin, cout, 3);
    r.norm2 = GroupNorm::make(src, p + ".norm2", cout);
    r.conv2 = src.conv(p + ".conv2", cout, cout, 3);
    if (cin != cout) r.nin_shortcut = src.conv(p + ".nin_shortcut", cin, cout, 1);
    return r;
  }

  std::vector<float> forward(const std::vector<float>& x, int B, int H, int W) const {
    const std::int64_t hw = static_cast<std::int64_t>(H) * W;
    std::vector<float> h = conv1.forward(norm1.forward(x, B, hw, true), B, H, W);
    h = conv2.forward(norm2.forward(h, B, hw, true), B, H, W);
    if (nin_shortcut) {
      const std::vector<float> s = nin_shortcut->forward(x, B, H, W);
      for (std::size_t i = 0; i < h.size(); ++i) h[i] += s[i];
    } else {
      for (std::size_t i = 0; i < h.size(); ++i) h[i] += x[i];
    }
    return h;
  }
};

// Single-head self-attention over the H*W positions, 1x1 convs for qkv and the projection.
struct AttnBlock {
  int C = 0;
  GroupNorm norm;
  Conv2d qkv, proj_out;

  static AttnBlock make(const ParamSource& src, const std::string& p, int C) {
    AttnBlock a;
    a.C = C;
    a.norm = GroupNorm::make(src, p + ".norm", C);
    a.qkv = src.conv(p + ".qkv", C, 3 * C, 1);
    a.proj_out = src.conv(p + ".proj_out", C, C, 1);
    return a;
  }

  std::vector<float> forward(const std::vector<float>& x, int B, int H, int W) const {
    const std::int64_t n = static_cast<std::int64_t>(H) * W;
    const std::vector<float> qkv_out = qkv.forward(norm.forward(x, B, n, false), B, H, W);  // [B, 3, C, n]
    std::vector<float> h(x.size());
    const float w_ratio = static_cast<float>(1.0 / std::sqrt(static_cast<double>(C)));
    for (int b = 0; b < B; ++b) {
      const float* q = qkv_out.data() + static_cast<std::size_t>(b) * 3 * C * n;
      const float* k = q + static_cast<std::size_t>(C) * n;
      const float* v = k + static_cast<std::size_t>(C) * n;
      // Position-major copies so the inner products run over contiguous channels.
      std::vector<float> qt(static_cast<std::size_t>(n) * C), kt(qt.size()), vt(qt.size());
      for (int c = 0; c < C; ++c)
        for (std::int64_t i = 0; i < n; ++i) {
          qt[i * C + c] = q[c * n + i];
          kt[i * C + c] = k[c * n + i];
          vt[i * C + c] = v[c * n + i];
        }
      float* hb = h.data() + static_cast<std::size_t>(b) * C * n;
#pragma omp parallel
      {
        std::vector<float> logits(n), acc(C);
#pragma omp for schedule(static)
        for (std::int64_t i = 0; i < n; ++i) {
          const float* qi = qt.data() + i * C;
          float mx = -INFINITY;
          for (std::int64_t j = 0; j < n; ++j) {
            const float* kj = kt.data() + j * C;
            float s = 0.0f;
            for (int c = 0; c < C; ++c) s += qi[c] * kj[c];
            logits[j] = s * w_ratio;
            mx = std::max(mx, logits[j]);
          }
          double denom = 0.0;
          for (std::int64_t j = 0; j < n; ++j) {
            logits[j] = std::exp(logits[j] - mx);
            denom += logits[j];
          }
          std::fill(acc.begin(), acc.end(), 0.0f);
          for (std::int64_t j = 0; j < n; ++j) {
            const float p = logits[j];
            const float* vj = vt.data() + j * C;
            for (int c = 0; c < C; ++c) acc[c] += p * vj[c];
          }
          const float inv = static_cast<float>(1.0 / denom);
          for (int c = 0; c < C; ++c) hb[c * n + i] = acc[c] * inv;
        }
      }
    }
    std::vector<float> out = proj_out.forward(h, B, H, W);
    for (std::size_t i = 0; i < out.size(); ++i) out[i] += x[i];
    return out;
  }
};

}  // namespace

struct VqVae::Decoder {
  struct Level {
    std::vector<ResnetBlock> blocks;
    std::vector<AttnBlock> attn;
    std::optional<Conv2d> upsample;
  };
  Conv2d conv_in;
  ResnetBlock mid_block_1, mid_block_2;
  AttnBlock mid_attn_1;
  Level up[kLevels];
  GroupNorm norm_out;
  Conv2d conv_out;

  static std::unique_ptr<Decoder> make(const ParamSource& src, int ch, int z) {
    auto d = std::make_unique<Decoder>();
    int block_in = ch * kChMult[kLevels - 1];
    d->conv_in = src.conv("decoder.conv_in", z, block_in, 3);
    d->mid_block_1 = ResnetBlock::make(src, "decoder.mid.block_1", block_in, block_in);
    d->mid_attn_1 = AttnBlock::make(src, "decoder.mid.attn_1", block_in);
    d->mid_block_2 = ResnetBlock::make(src, "decoder.mid.block_2", block_in, block_in);
    for (int level = kLevels - 1; level >= 0; --level) {
      const int block_out = ch * kChMult[level];
      const std::string p = fmt::format("decoder.up.{}", level);
      Level& L = d->up[level];
      for (int i = 0; i < kBlocksPerLevel; ++i) {
        L.blocks.push_back(ResnetBlock::make(src, fmt::format("{}.block.{}", p, i), block_in, block_out));
        block_in = block_out;
        if (level == kLevels - 1) L.attn.push_back(AttnBlock::make(src, fmt::format("{}.attn.{}", p, i), block_in));
      }
      if (level != 0) L.upsample = src.conv(p + ".upsample.conv", block_in, block_in, 3);
    }
    d->norm_out = GroupNorm::make(src, "decoder.norm_out", block_in);
    d->conv_out = src.conv("decoder.conv_out", block_in, 3, 3);
    return d;
  }

  std::vector<float> forward(std::vector<float> h, int B, int H, int W) const {
    h = conv_in.forward(h, B, H, W);
    h = mid_block_2.forward(mid_attn_1.forward(mid_block_1.forward(h, B, H, W), B, H, W), B, H, W);
    for (int level = kLevels - 1; level >= 0; --level) {
      const Level& L = up[level];
      for (std::size_t i = 0; i < L.blocks.size(); ++i) {
        h = L.blocks[i].forward(h, B, H, W);
        if (!L.attn.empty()) h = L.attn[i].forward(h, B, H, W);
      }
      if (L.upsample) {
        const int C = L.upsample->in_channels();
        std::vector<float> up2(h.size() * 4);
        upsample_nearest2x(h, static_cast<std::int64_t>(B) * C, H, W, up2);
        H *= 2;
        W *= 2;
        h = L.upsample->forward(up2, B, H, W);
      }
    }
    h = norm_out.forward(h, B, static_cast<std::int64_t>(H) * W, true);
    return conv_out.forward(h, B, H, W);
  }
};

VqVae::VqVae() = default;
VqVae::VqVae(const VqVae& o)
    : cfg_(o.cfg_),
      embedding_(o.embedding_),
      phis_(o.phis_),
      post_quant_conv_(o.post_quant_conv_),
      decoder_(o.decoder_ ? std::make_unique<Decoder>(*o.decoder_) : nullptr) {}
VqVae& VqVae::operator=(const VqVae& o) {
  if (this != &o) *this = VqVae(o);
  return *this;
}
VqVae::VqVae(VqVae&&) noexcept = default;
VqVae& VqVae::operator=(VqVae&&) noexcept = default;
VqVae::~VqVae() = default;

namespace {

void validate(const VqVaeConfig& c) {
  require(c.vocab > 0 && c.Cvae > 0, "VQ-VAE config: vocab {} and Cvae {} must be positive", c.vocab, c.Cvae);
  require(c.ch > 0 && c.ch % kGroups == 0, "VQ-VAE config: ch {} must be a positive multiple of {} (GroupNorm groups)",
          c.ch, kGroups);
  require(c.patch_nums.size() >= 2, "VQ-VAE config: need at least 2 scales, got {}", c.patch_nums.size());
  for (std::size_t i = 0; i < c.patch_nums.size(); ++i)
    require(c.patch_nums[i] > 0 && (i == 0 || c.patch_nums[i] > c.patch_nums[i - 1]),
            "VQ-VAE config: patch_nums must be positive and increasing (scale {} has {})", i, c.patch_nums[i]);
  require(c.share_quant_resi >= 0, "VQ-VAE config: share_quant_resi {} must be >= 0", c.share_quant_resi);
}

// How many phi convs the official quantizer builds, and their checkpoint prefixes.
int phi_count(const VqVaeConfig& c) {
  if (std::abs(c.quant_resi) <= 1e-6) return 0;
  if (c.share_quant_resi == 0) return static_cast<int>(c.patch_nums.size());
  if (c.share_quant_resi == 1) return 1;
  return c.share_quant_resi;
}
std::string phi_prefix(const VqVaeConfig& c, int i) {
  if (c.share_quant_resi == 0) return fmt::format("quantize.quant_resi.{}", i);
  if (c.share_quant_resi == 1) return "quantize.quant_resi.qresi";
  return fmt::format("quantize.quant_resi.qresi_ls.{}", i);
}

// Builds every part in the official module order (which fixes the random draws of random()).
template <class Build>
void build_common(const ParamSource& src, std::vector<float>& embedding, std::vector<Conv2d>& phis,
                  Conv2d& post_quant_conv, std::unique_ptr<VqVae::Decoder>& decoder, const VqVaeConfig& cfg,
                  Build&& embedding_source) {
  embedding = embedding_source();
  for (int i = 0; i < phi_count(cfg); ++i) phis.push_back(src.conv(phi_prefix(cfg, i), cfg.Cvae, cfg.Cvae, 3));
  post_quant_conv = src.conv("post_quant_conv", cfg.Cvae, cfg.Cvae, 3);
  decoder = VqVae::Decoder::make(src, cfg.ch, cfg.Cvae);
}

}  // namespace

VqVae VqVae::load(const SafetensorsFile& f, VqVaeConfig cfg) {
  validate(cfg);
  VqVae v;
  v.cfg_ = std::move(cfg);
  ParamSource src;
  src.conv_param = [&f](const std::string& name, std::vector<std::int64_t> shape, double) {
    return f.load(name, shape).data;
  };
  src.norm_param = [&f](const std::string& name, std::int64_t C, bool) {
    const std::int64_t shape[] = {C};
    return f.load(name, shape).data;
  };
  const std::int64_t eshape[] = {v.cfg_.vocab, v.cfg_.Cvae};
  build_common(src, v.embedding_, v.phis_, v.post_quant_conv_, v.decoder_, v.cfg_,
               [&] { return f.load("quantize.embedding.weight", eshape).data; });
  return v;
}

VqVae VqVae::random(VqVaeConfig cfg, std::uint64_t seed) {
  validate(cfg);
  VqVae v;
  v.cfg_ = std::move(cfg);
  auto rng = std::make_shared<std::mt19937_64>(seed);
  ParamSource src;
  src.conv_param = [rng](const std::string&, std::vector<std::int64_t> shape, double fan_in) {
    std::int64_t n = 1;
    for (auto d : shape) n *= d;
    const double bound = 1.0 / std::sqrt(fan_in);
    std::uniform_real_distribution<double> u(-bound, bound);
    std::vector<float> w(n);
    for (auto& x : w) x = static_cast<float>(u(*rng));
    return w;
  };
  src.norm_param = [](const std::string&, std::int64_t C, bool is_weight) {
    return std::vector<float>(C, is_weight ? 1.0f : 0.0f);
  };
  build_common(src, v.embedding_, v.phis_, v.post_quant_conv_, v.decoder_, v.cfg_, [&] {
    std::normal_distribution<double> nd(0.0, 1.0);
    std::vector<float> e(static_cast<std::size_t>(v.cfg_.vocab) * v.cfg_.Cvae);
    for (auto& x : e) x = static_cast<float>(nd(*rng));
    return e;
  });
  return v;
}

double VqVae::decoder_flops() const {
  const int P = cfg_.patch_nums.back();
  double flops = 0;
  const auto conv = [&](const Conv2d& c, double hw) {
    flops += 2.0 * c.in_channels() * c.kernel() * c.kernel() * c.out_channels() * hw;
  };
  const auto res = [&](const ResnetBlockView& r, double hw) {
    conv(*r.conv1, hw);
    conv(*r.conv2, hw);
    if (r.nin_shortcut) conv(*r.nin_shortcut, hw);
  };
  const auto attn = [&](const AttnBlockView& a, double hw) {
    conv(*a.qkv, hw);
    conv(*a.proj_out, hw);
    flops += 4.0 * hw * hw * a.proj_out->in_channels();  // q k^T and p v
  };
  const DecoderView d = decoder_view();
  double hw = static_cast<double>(P) * P;
  conv(post_quant_conv(), hw);
  conv(*d.conv_in, hw);
  res(d.mid_block_1, hw);
  attn(d.mid_attn_1, hw);
  res(d.mid_block_2, hw);
  for (const auto& level : d.up) {
    for (std::size_t i = 0; i < level.blocks.size(); ++i) {
      res(level.blocks[i], hw);
      if (!level.attn.empty()) attn(level.attn[i], hw);
    }
    if (level.upsample) {
      hw *= 4;
      conv(*level.upsample, hw);
    }
  }
  conv(*d.conv_out, hw);
  return flops;
}

int VqVae::phi_index(int si) const {
  const int S = static_cast<int>(cfg_.patch_nums.size());
  require(si >= 0 && si < S, "VQ-VAE: scale index {} out of range [0, {})", si, S);
  const int K = static_cast<int>(phis_.size());
  if (K <= 1) return 0;
  // numpy: linspace(start, stop, K) = i * ((stop - start) / (K - 1)) + start, last = stop exactly;
  // evaluated in the same double operations (no fused multiply-add) so that ties fall the same way.
  const double start = K == 4 ? 1.0 / 3.0 / K : 1.0 / 2.0 / K;
  const double stop = 1.0 - start;
  const double step = (stop - start) / (K - 1);
  const double at = static_cast<double>(si) / static_cast<double>(S - 1);
  int best = 0;
  double best_dist = 0;
  for (int i = 0; i < K; ++i) {
    volatile double prod = i * step;
    const double tick = i == K - 1 ? stop : prod + start;
    const double dist = std::abs(tick - at);
    if (i == 0 || dist < best_dist) {
      best = i;
      best_dist = dist;
    }
  }
  return best;
}

std::int64_t VqVae::total_tokens() const {
  std::int64_t L = 0;
  for (int pn : cfg_.patch_nums) L += static_cast<std::int64_t>(pn) * pn;
  return L;
}

std::vector<float> VqVae::phi(int si, std::span<const float> x, int B) const {
  std::vector<float> out(x.begin(), x.end());
  if (phis_.empty()) return out;
  const int P = cfg_.patch_nums.back();
  const std::vector<float> conv = phis_[phi_index(si)].forward(x, B, P, P);
  const float r = static_cast<float>(std::abs(cfg_.quant_resi));
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = out[i] * (1.0f - r) + conv[i] * r;
  return out;
}

// f_hat += phi(up(embedding(tokens of scale si))). Token (b, i) is tokens[b * row_stride + row_offset + i].
template <class Token>
void VqVae::add_scale(int si, std::vector<float>& f_hat, int B, std::span<const Token> tokens, std::int64_t row_stride,
                      std::int64_t row_offset) const {
  const int S = static_cast<int>(cfg_.patch_nums.size());
  const int P = cfg_.patch_nums.back(), pn = cfg_.patch_nums[si], C = cfg_.Cvae;
  const std::int64_t n = static_cast<std::int64_t>(pn) * pn;
  std::vector<float> h(static_cast<std::size_t>(B) * C * n);  // [B, C, pn, pn]
  for (int b = 0; b < B; ++b)
    for (std::int64_t i = 0; i < n; ++i) {
      const std::int64_t tok = static_cast<std::int64_t>(tokens[b * row_stride + row_offset + i]);
      require(tok >= 0 && tok < cfg_.vocab, "VQ-VAE: token {} at image {}, scale {}, position {} is outside [0, {})",
              tok, b, si, i, cfg_.vocab);
      const float* e = embedding_.data() + tok * C;
      for (int c = 0; c < C; ++c) h[(static_cast<std::size_t>(b) * C + c) * n + i] = e[c];
    }
  std::vector<float> up;
  if (si != S - 1) {
    up.resize(static_cast<std::size_t>(B) * C * P * P);
    resize_bicubic(h, static_cast<std::int64_t>(B) * C, pn, pn, up, P, P);
  } else {
    up = std::move(h);  // pn == P at the last scale
  }
  const std::vector<float> ph = phi(si, up, B);
  for (std::size_t i = 0; i < f_hat.size(); ++i) f_hat[i] += ph[i];
}

std::vector<float> VqVae::next_autoregressive_input(int si, std::vector<float>& f_hat, int B,
                                                    std::span<const std::int32_t> tokens) const {
  const int S = static_cast<int>(cfg_.patch_nums.size());
  require(si >= 0 && si < S, "VQ-VAE: scale index {} out of range [0, {})", si, S);
  require(B > 0, "VQ-VAE: batch {} must be positive", B);
  const int P = cfg_.patch_nums.back(), pn = cfg_.patch_nums[si], C = cfg_.Cvae;
  const std::size_t fsize = static_cast<std::size_t>(B) * C * P * P;
  require(f_hat.size() == fsize, "VQ-VAE: f_hat holds {} floats, expected [{}, {}, {}, {}]", f_hat.size(), B, C, P, P);
  const std::int64_t n = static_cast<std::int64_t>(pn) * pn;
  require(tokens.size() == static_cast<std::size_t>(B * n), "VQ-VAE: scale {} tokens hold {} values, expected [{}, {}]",
          si, tokens.size(), B, n);
  add_scale(si, f_hat, B, tokens, n, 0);
  if (si == S - 1) return {};
  const int pn_next = cfg_.patch_nums[si + 1];
  const std::int64_t m = static_cast<std::int64_t>(pn_next) * pn_next;
  std::vector<float> down(static_cast<std::size_t>(B) * C * m);
  resize_area(f_hat, static_cast<std::int64_t>(B) * C, P, P, down, pn_next, pn_next);
  std::vector<float> out(down.size());  // [B, C, m] -> [B, m, C]
  for (int b = 0; b < B; ++b)
    for (int c = 0; c < C; ++c)
      for (std::int64_t i = 0; i < m; ++i)
        out[(static_cast<std::size_t>(b) * m + i) * C + c] = down[(static_cast<std::size_t>(b) * C + c) * m + i];
  return out;
}

std::vector<float> VqVae::idxBl_to_var_input(std::span<const std::int64_t> tokens, int B) const {
  require(B > 0, "VQ-VAE: batch {} must be positive", B);
  const int S = static_cast<int>(cfg_.patch_nums.size());
  const int P = cfg_.patch_nums.back(), C = cfg_.Cvae;
  const std::int64_t L = total_tokens();
  require(tokens.size() == static_cast<std::size_t>(B * L), "VQ-VAE: tokens hold {} values, expected [{}, {}]",
          tokens.size(), B, L);
  const std::int64_t first = static_cast<std::int64_t>(cfg_.patch_nums[0]) * cfg_.patch_nums[0];
  const std::int64_t rows = L - first;
  std::vector<float> out(static_cast<std::size_t>(B) * rows * C);
  std::vector<float> f_hat(static_cast<std::size_t>(B) * C * P * P, 0.0f);
  std::int64_t begin = 0;  // first token of scale si
  std::int64_t out_row = 0;
  for (int si = 0; si < S - 1; ++si) {
    const std::int64_t n = static_cast<std::int64_t>(cfg_.patch_nums[si]) * cfg_.patch_nums[si];
    add_scale(si, f_hat, B, tokens, L, begin);
    const int pn_next = cfg_.patch_nums[si + 1];
    const std::int64_t m = static_cast<std::int64_t>(pn_next) * pn_next;
    std::vector<float> down(static_cast<std::size_t>(B) * C * m);
    resize_area(f_hat, static_cast<std::int64_t>(B) * C, P, P, down, pn_next, pn_next);
    for (int b = 0; b < B; ++b)
      for (int c = 0; c < C; ++c)
        for (std::int64_t i = 0; i < m; ++i)
          out[(static_cast<std::size_t>(b) * rows + out_row + i) * C + c] =
              down[(static_cast<std::size_t>(b) * C + c) * m + i];
    begin += n;
    out_row += m;
  }
  return out;
}

namespace {

VqVae::GroupNormView view_of(const GroupNorm& n) { return {n.gamma, n.beta}; }

VqVae::ResnetBlockView view_of(const ResnetBlock& r) {
  return {view_of(r.norm1), view_of(r.norm2), &r.conv1, &r.conv2, r.nin_shortcut ? &*r.nin_shortcut : nullptr};
}

VqVae::AttnBlockView view_of(const AttnBlock& a) { return {view_of(a.norm), &a.qkv, &a.proj_out}; }

}  // namespace

VqVae::DecoderView VqVae::decoder_view() const {
  static_assert(kGroupNormGroups == kGroups && kGroupNormEps == ::varkv::ref::kGroupNormEps);
  const Decoder& d = *decoder_;
  DecoderView v;
  v.conv_in = &d.conv_in;
  v.mid_block_1 = view_of(d.mid_block_1);
  v.mid_attn_1 = view_of(d.mid_attn_1);
  v.mid_block_2 = view_of(d.mid_block_2);
  for (int level = kLevels - 1; level >= 0; --level) {  // forward order, as Decoder::forward
    const Decoder::Level& L = d.up[level];
    DecoderLevelView lv;
    lv.level = level;
    for (const auto& b : L.blocks) lv.blocks.push_back(view_of(b));
    for (const auto& a : L.attn) lv.attn.push_back(view_of(a));
    lv.upsample = L.upsample ? &*L.upsample : nullptr;
    v.up.push_back(std::move(lv));
  }
  v.norm_out = view_of(d.norm_out);
  v.conv_out = &d.conv_out;
  return v;
}

std::vector<float> VqVae::decode(std::span<const float> f_hat, int B) const {
  require(B > 0, "VQ-VAE: batch {} must be positive", B);
  const int P = cfg_.patch_nums.back(), C = cfg_.Cvae;
  require(f_hat.size() == static_cast<std::size_t>(B) * C * P * P,
          "VQ-VAE: f_hat holds {} floats, expected [{}, {}, {}, {}]", f_hat.size(), B, C, P, P);
  std::vector<float> img = decoder_->forward(post_quant_conv_.forward(f_hat, B, P, P), B, P, P);
  for (auto& x : img) x = (std::clamp(x, -1.0f, 1.0f) + 1.0f) * 0.5f;
  return img;
}

}  // namespace varkv::ref

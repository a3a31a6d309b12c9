#include "varkv_reference/var_model.hpp"

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>
#include <cmath>
#include <random>
#include <string>

#include "varkv/attention/reference_attention.hpp"
#include "varkv/core/error.hpp"

namespace varkv::ref {

// ---------------------------------------------------------------------------------------------
// Config

VarConfig VarConfig::from_depth(int depth, std::vector<int> patch_nums) {
  require(depth > 0 && depth <= 64, "VAR depth must be in 1..64, got {}", depth);
  VarConfig c;
  c.depth = depth;
  c.width = 64 * depth;
  c.heads = depth;
  c.patch_nums = std::move(patch_nums);
  return c;
}

std::int64_t VarConfig::total_tokens() const {
  std::int64_t L = 0;
  for (int pn : patch_nums) L += std::int64_t{pn} * pn;
  return L;
}

ScaleSchedule VarConfig::schedule() const { return ScaleSchedule::squares("var", patch_nums); }

ModelGeometry VarConfig::geometry() const { return {"var-d" + std::to_string(depth), depth, heads, head_dim()}; }

void VarConfig::validate() const {
  require(depth > 0, "VAR config: depth must be positive, got {}", depth);
  require(width > 0 && heads > 0 && width % heads == 0,
          "VAR config: width {} must be a positive multiple of heads {}", width, heads);
  require(num_classes > 0, "VAR config: num_classes must be positive, got {}", num_classes);
  require(vocab > 0 && Cvae > 0, "VAR config: vocab ({}) and Cvae ({}) must be positive", vocab, Cvae);
  require(mlp_ratio > 0, "VAR config: mlp_ratio must be positive, got {}", mlp_ratio);
  require(!patch_nums.empty(), "VAR config: patch_nums is empty");
  for (std::size_t i = 0; i < patch_nums.size(); ++i)
    require(patch_nums[i] > 0 && (i == 0 || patch_nums[i] > patch_nums[i - 1]),
            "VAR config: patch_nums must be positive and increasing (entry {} is {})", i, patch_nums[i]);
}

// ---------------------------------------------------------------------------------------------
// fp32 GEMM: y = x W^T + b over packed panels. A 4 x 8 register tile accumulates over k in
// order; tiles of rows x panels are spread over OpenMP threads.

namespace {

// Unaligned, aliasing-safe 8-float vector: plain loads/stores (no memcpy calls, which sanitizers
// would intercept on every k).
typedef float v8f __attribute__((vector_size(32), aligned(4), may_alias));

// acc[r] (8 columns) = bias + sum_k x[r, k] * panel[k, :], k ascending. Not instrumented by
// AddressSanitizer (half of a sanitized golden run was its checks here): linear_forward checks the
// buffer sizes before any tile runs, and every tile stays inside them.
template <int MR>
__attribute__((no_sanitize_address)) void micro_tile(const float* x, std::int64_t K, const float* panel, const float* bias, float* y, std::int64_t ldy,
                       int nr) {
  v8f acc[MR];
  for (int r = 0; r < MR; ++r) acc[r] = *reinterpret_cast<const v8f*>(bias);
  for (std::int64_t k = 0; k < K; ++k) {
    const v8f w = *reinterpret_cast<const v8f*>(panel + k * 8);
    for (int r = 0; r < MR; ++r) acc[r] += x[r * K + k] * w;
  }
  for (int r = 0; r < MR; ++r) {
    if (nr == 8) {
      *reinterpret_cast<v8f*>(y + r * ldy) = acc[r];
    } else {
      for (int j = 0; j < nr; ++j) y[r * ldy + j] = acc[r][j];
    }
  }
}

float silu(float v) { return v / (1.0f + std::exp(-v)); }

float gelu_tanh(float v) {
  const float c = 0.7978845608028654f;  // sqrt(2 / pi)
  return 0.5f * v * (1.0f + std::tanh(c * (v + 0.044715f * v * v * v)));
}

// Rows of x [rows, C]: LN (no affine, eps) then * (1 + scale) + shift, scale/shift per sequence.
void modulated_layer_norm(std::span<const float> x, int N, int n, int C, double eps, const float* params,
                          std::int64_t param_stride, int scale_chunk, int shift_chunk, std::span<float> out) {
#pragma omp parallel for schedule(static)
  for (std::int64_t row = 0; row < std::int64_t{N} * n; ++row) {
    const float* xr = x.data() + row * C;
    float* o = out.data() + row * C;
    const float* p = params + (row / n) * param_stride;
    const float* scale = p + std::int64_t{scale_chunk} * C;
    const float* shift = p + std::int64_t{shift_chunk} * C;
    double mean = 0;
    for (int c = 0; c < C; ++c) mean += xr[c];
    mean /= C;
    double var = 0;
    for (int c = 0; c < C; ++c) var += (xr[c] - mean) * (xr[c] - mean);
    var /= C;
    const double inv = 1.0 / std::sqrt(var + eps);
    for (int c = 0; c < C; ++c) {
      const float normed = static_cast<float>((xr[c] - mean) * inv);
      o[c] = normed * (scale[c] + 1.0f) + shift[c];
    }
  }
}

// Truncated normal N(0, std) restricted to [-2, 2] (torch.nn.init.trunc_normal_ defaults a=-2, b=2).
float trunc_normal(std::mt19937_64& rng, double stddev) {
  std::normal_distribution<double> d(0.0, stddev);
  for (;;) {
    const double v = d(rng);
    if (v >= -2.0 && v <= 2.0) return static_cast<float>(v);
  }
}

// Counter-based draws so that a multi-billion-parameter model initialises in parallel and the
// values do not depend on the thread count: element i of a tensor keyed `key` comes from chunk
// i / kChunk's own engine, seeded by splitmix64(key + chunk).
std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

std::vector<float> trunc_normal_tensor(std::uint64_t key, std::size_t n, double stddev, double mul) {
  constexpr std::size_t kChunk = std::size_t{1} << 16;
  std::vector<float> v(n);
  const auto chunks = static_cast<std::int64_t>((n + kChunk - 1) / kChunk);
#pragma omp parallel for schedule(static)
  for (std::int64_t c = 0; c < chunks; ++c) {
    std::mt19937_64 rng(splitmix64(key + static_cast<std::uint64_t>(c)));
    const std::size_t end = std::min(n, (static_cast<std::size_t>(c) + 1) * kChunk);
    for (std::size_t i = static_cast<std::size_t>(c) * kChunk; i < end; ++i)
      v[i] = static_cast<float>(trunc_normal(rng, stddev) * mul);
  }
  return v;
}

Linear make_linear(const std::vector<float>& w, int out, int in, std::vector<float> bias) {
  return Linear::from_weight(w, out, in, bias);
}

}  // namespace

Linear Linear::from_weight(std::span<const float> weight, int out, int in, std::span<const float> bias) {
  require(out > 0 && in > 0, "linear: sizes out {} and in {} must be positive", out, in);
  require(weight.size() == static_cast<std::size_t>(out) * in, "linear: weight has {} values, expected [{}, {}]",
          weight.size(), out, in);
  require(bias.empty() || bias.size() == static_cast<std::size_t>(out), "linear: bias has {} values, expected {}",
          bias.size(), out);
  Linear l;
  l.in = in;
  l.out = out;
  const std::size_t np = (static_cast<std::size_t>(out) + 7) / 8;
  l.panels.assign(np * in * 8, 0.0f);
  for (int o = 0; o < out; ++o)
    for (int i = 0; i < in; ++i) l.panels[(o / 8 * std::size_t(in) + i) * 8 + o % 8] = weight[std::size_t(o) * in + i];
  l.bias.assign(np * 8, 0.0f);
  std::copy(bias.begin(), bias.end(), l.bias.begin());
  return l;
}

void linear_forward(const Linear& lin, std::span<const float> x, std::int64_t M, std::span<float> y) {
  const std::int64_t K = lin.in, N = lin.out;
  require(static_cast<std::int64_t>(x.size()) >= M * K && static_cast<std::int64_t>(y.size()) >= M * N,
          "linear: buffers hold {} / {} values, need {} x {} in and {} x {} out", x.size(), y.size(), M, K, M, N);
  // Tiles of 64 rows x 8 panels (64 columns) over the threads; a panel stays in cache across the
  // row micro-blocks of a tile.
  constexpr std::int64_t MB = 64, PB = 8;
  const std::int64_t np = (N + 7) / 8, mt = (M + MB - 1) / MB, pt = (np + PB - 1) / PB;
#pragma omp parallel for collapse(2) schedule(static)
  for (std::int64_t tp = 0; tp < pt; ++tp)
    for (std::int64_t tm = 0; tm < mt; ++tm) {
      const std::int64_t m_end = std::min(M, (tm + 1) * MB), p_end = std::min(np, (tp + 1) * PB);
      for (std::int64_t p = tp * PB; p < p_end; ++p) {
        const int nr = static_cast<int>(std::min<std::int64_t>(8, N - p * 8));
        const float* panel = lin.panels.data() + p * K * 8;
        const float* bias = lin.bias.data() + p * 8;
        std::int64_t m = tm * MB;
        for (; m + 4 <= m_end; m += 4) micro_tile<4>(x.data() + m * K, K, panel, bias, y.data() + m * N + p * 8, N, nr);
        for (; m < m_end; ++m) micro_tile<1>(x.data() + m * K, K, panel, bias, y.data() + m * N + p * 8, N, nr);
      }
    }
}

// ---------------------------------------------------------------------------------------------
// Loading

VarModel VarModel::load(const SafetensorsFile& f, VarConfig cfg) {
  cfg.validate();
  VarModel m;
  m.cfg_ = cfg;
  const std::int64_t C = cfg.width, H = cfg.heads, L = cfg.total_tokens(), S = cfg.scales();
  const std::int64_t hid = cfg.hidden(), first_l = cfg.first_l();
  auto load = [&](const std::string& name, std::initializer_list<std::int64_t> shape) {
    const std::vector<std::int64_t> s(shape);
    return f.load(name, s).data;
  };
  auto linear = [&](const std::string& prefix, std::int64_t out, std::int64_t in, bool bias) {
    auto w = load(prefix + ".weight", {out, in});
    std::vector<float> b = bias ? load(prefix + ".bias", {out}) : std::vector<float>{};
    return make_linear(w, static_cast<int>(out), static_cast<int>(in), std::move(b));
  };

  m.class_emb_ = load("class_emb.weight", {cfg.num_classes + 1, C});
  m.pos_start_ = load("pos_start", {1, first_l, C});
  const auto pos = load("pos_1LC", {1, L, C});
  const auto lvl = load("lvl_embed.weight", {S, C});
  m.word_embed_ = linear("word_embed", C, cfg.Cvae, true);
  m.head_ada_ = linear("head_nm.ada_lin.1", 2 * C, C, true);
  m.head_ = linear("head", cfg.vocab, C, true);

  // The lvl_1L buffer, when present, must be the scale index of every position of this schedule.
  const ScaleSchedule sched = cfg.schedule();
  if (f.contains("lvl_1L")) {
    const std::int64_t shape[] = {1, L};
    const auto lvl_1L = f.load_int("lvl_1L", shape);
    for (std::int64_t t = 0; t < L; ++t)
      require(lvl_1L[t] == sched.scale_of(t),
              "{}: buffer 'lvl_1L' says position {} is in scale {}, but patch_nums put it in scale {}", f.path(), t,
              lvl_1L[t], sched.scale_of(t));
  }
  if (f.contains("attn_bias_for_masking")) {
    const std::int64_t shape[] = {1, 1, L, L};
    const auto got = f.shape("attn_bias_for_masking");
    require(std::equal(got.begin(), got.end(), std::begin(shape), std::end(shape)),
            "{}: tensor 'attn_bias_for_masking': expected shape {}, found {}", f.path(), format_shape(shape),
            format_shape(got));
  }
  m.lvl_pos_.resize(static_cast<std::size_t>(L * C));
  for (std::int64_t t = 0; t < L; ++t)
    for (std::int64_t c = 0; c < C; ++c)
      m.lvl_pos_[t * C + c] = lvl[sched.scale_of(t) * C + c] + pos[t * C + c];

  const float max_scale_mul = std::log(100.0f);
  for (int b = 0; b < cfg.depth; ++b) {
    const std::string p = "blocks." + std::to_string(b) + ".";
    VarBlock blk;
    blk.ada_lin = linear(p + "ada_lin.1", 6 * C, C, true);
    const auto qkv_w = load(p + "attn.mat_qkv.weight", {3 * C, C});
    const auto q_bias = load(p + "attn.q_bias", {C});
    const auto v_bias = load(p + "attn.v_bias", {C});
    std::vector<float> k_bias(static_cast<std::size_t>(C), 0.0f);
    if (f.contains(p + "attn.zero_k_bias")) k_bias = load(p + "attn.zero_k_bias", {C});
    std::vector<float> qkv_b;
    qkv_b.insert(qkv_b.end(), q_bias.begin(), q_bias.end());
    qkv_b.insert(qkv_b.end(), k_bias.begin(), k_bias.end());
    qkv_b.insert(qkv_b.end(), v_bias.begin(), v_bias.end());
    blk.mat_qkv = make_linear(qkv_w, static_cast<int>(3 * C), static_cast<int>(C), std::move(qkv_b));
    const auto sm = load(p + "attn.scale_mul_1H11", {1, H, 1, 1});
    for (std::int64_t h = 0; h < H; ++h) blk.q_scale.push_back(std::exp(std::min(sm[h], max_scale_mul)));
    blk.proj = linear(p + "attn.proj", C, C, true);
    blk.fc1 = linear(p + "ffn.fc1", hid, C, true);
    blk.fc2 = linear(p + "ffn.fc2", C, hid, true);
    m.blocks_.push_back(std::move(blk));
  }
  require(!f.contains("blocks." + std::to_string(cfg.depth) + ".ada_lin.1.weight"),
          "{}: holds more than {} blocks (found 'blocks.{}.*'); the configured depth is wrong", f.path(), cfg.depth,
          cfg.depth);
  return m;
}

VarModel VarModel::random(VarConfig cfg, std::uint64_t seed) {
  cfg.validate();
  std::mt19937_64 rng(seed);
  VarModel m;
  m.cfg_ = cfg;
  const int C = cfg.width, L = static_cast<int>(cfg.total_tokens()), S = cfg.scales();
  const double std_ = std::sqrt(1.0 / C / 3.0);
  auto fill = [&](std::size_t n, double s, double mul = 1.0) { return trunc_normal_tensor(rng(), n, s, mul); };
  auto linear = [&](int out, int in, bool bias, double mul = 1.0) {
    auto w = fill(static_cast<std::size_t>(out) * in, std_, mul);
    return make_linear(w, out, in, bias ? std::vector<float>(static_cast<std::size_t>(out), 0.0f) : std::vector<float>{});
  };
  m.class_emb_ = fill(static_cast<std::size_t>(cfg.num_classes + 1) * C, std_);
  m.pos_start_ = fill(static_cast<std::size_t>(cfg.first_l()) * C, std_);
  const auto pos = fill(static_cast<std::size_t>(L) * C, std_);
  const auto lvl = fill(static_cast<std::size_t>(S) * C, std_);
  const ScaleSchedule sched = cfg.schedule();
  m.lvl_pos_.resize(static_cast<std::size_t>(L) * C);
  for (int t = 0; t < L; ++t)
    for (int c = 0; c < C; ++c) m.lvl_pos_[std::size_t(t) * C + c] = lvl[sched.scale_of(t) * C + c] + pos[std::size_t(t) * C + c];
  m.word_embed_ = linear(C, cfg.Cvae, true);
  const double depth_div = 1.0 / std::sqrt(2.0 * cfg.depth);
  for (int b = 0; b < cfg.depth; ++b) {
    VarBlock blk;
    auto ada_w = fill(static_cast<std::size_t>(6) * C * C, std_);
    for (std::size_t i = 0; i < ada_w.size(); ++i) ada_w[i] *= i < std::size_t(2) * C * C ? 1e-5f : 0.5f;
    blk.ada_lin = make_linear(ada_w, 6 * C, C, std::vector<float>(std::size_t(6) * C, 0.0f));
    blk.mat_qkv = linear(3 * C, C, true);  // q, k, v biases all zero at init
    blk.q_scale.assign(static_cast<std::size_t>(cfg.heads), 4.0f);  // exp(ln 4)
    blk.proj = linear(C, C, true, depth_div);
    blk.fc1 = linear(cfg.hidden(), C, true);
    blk.fc2 = linear(C, cfg.hidden(), true, depth_div);
    m.blocks_.push_back(std::move(blk));
  }
  m.head_ada_ = linear(2 * C, C, true, 0.5);
  m.head_ = linear(cfg.vocab, C, true, 0.02);
  return m;
}

// ---------------------------------------------------------------------------------------------
// Forward pieces

std::vector<float> VarModel::class_embedding(std::span<const int> labels) const {
  const int C = cfg_.width;
  std::vector<float> out(labels.size() * C);
  for (std::size_t i = 0; i < labels.size(); ++i) {
    require(labels[i] >= 0 && labels[i] <= cfg_.num_classes, "VAR: class label {} is outside 0..{} ({} = null class)",
            labels[i], cfg_.num_classes, cfg_.num_classes);
    std::copy_n(class_emb_.begin() + std::int64_t{labels[i]} * C, C, out.begin() + i * C);
  }
  return out;
}

Conditioning VarModel::condition(std::span<const float> cond, int N) const {
  const int C = cfg_.width;
  require(static_cast<std::int64_t>(cond.size()) == std::int64_t{N} * C, "VAR: conditioning has {} values, expected {} x {}",
          cond.size(), N, C);
  std::vector<float> act(cond.begin(), cond.end());
  for (auto& v : act) v = silu(v);
  Conditioning c;
  c.sequences = N;
  for (const auto& blk : blocks_) {
    std::vector<float> p(static_cast<std::size_t>(N) * 6 * C);
    linear_forward(blk.ada_lin, act, N, p);
    c.blocks.push_back(std::move(p));
  }
  c.head.resize(static_cast<std::size_t>(N) * 2 * C);
  linear_forward(head_ada_, act, N, c.head);
  return c;
}

std::vector<float> VarModel::first_token_map(std::span<const float> cond, int N) const {
  const int C = cfg_.width, fl = cfg_.first_l();
  std::vector<float> x(static_cast<std::size_t>(N) * fl * C);
  for (int s = 0; s < N; ++s)
    for (int t = 0; t < fl; ++t)
      for (int c = 0; c < C; ++c)
        x[(std::size_t(s) * fl + t) * C + c] = cond[std::size_t(s) * C + c] + pos_start_[std::size_t(t) * C + c] +
                                               lvl_pos_[std::size_t(t) * C + c];
  return x;
}

std::vector<float> VarModel::embed_scale_input(int si, std::span<const float> var_input, int N) const {
  require(si >= 1 && si < cfg_.scales(), "VAR: scale {} has no quantizer input (1..{})", si, cfg_.scales() - 1);
  const int C = cfg_.width, pn = cfg_.patch_nums[si], n = pn * pn;
  require(static_cast<std::int64_t>(var_input.size()) == std::int64_t{N} * n * cfg_.Cvae,
          "VAR: input of scale {} has {} values, expected [{}, {}, {}]", si, var_input.size(), N, n, cfg_.Cvae);
  std::vector<float> x(static_cast<std::size_t>(N) * n * C);
  linear_forward(word_embed_, var_input, std::int64_t{N} * n, x);
  std::int64_t begin = 0;
  for (int s = 0; s < si; ++s) begin += std::int64_t{cfg_.patch_nums[s]} * cfg_.patch_nums[s];
  for (int s = 0; s < N; ++s)
    for (int t = 0; t < n; ++t)
      for (int c = 0; c < C; ++c) x[(std::size_t(s) * n + t) * C + c] += lvl_pos_[(begin + t) * C + c];
  return x;
}

void VarModel::block_forward(int l, std::span<float> x, int N, int n, const Conditioning& cond,
                             const AttentionFn& attend) const {
  const VarBlock& blk = block(l);
  const int C = cfg_.width, H = cfg_.heads, d = cfg_.head_dim(), hid = cfg_.hidden();
  const std::int64_t rows = std::int64_t{N} * n;
  require(static_cast<std::int64_t>(x.size()) == rows * C, "VAR block {}: x has {} values, expected [{}, {}, {}]", l,
          x.size(), N, n, C);
  require(cond.sequences == N, "VAR block {}: conditioning is for {} sequences, x has {}", l, cond.sequences, N);
  const float* ada = cond.blocks.at(static_cast<std::size_t>(l)).data();
  enum { kGamma1 = 0, kGamma2, kScale1, kScale2, kShift1, kShift2 };
  const std::int64_t ps = 6 * std::int64_t{C};

  std::vector<float> h(static_cast<std::size_t>(rows * C));
  modulated_layer_norm(x, N, n, C, cfg_.norm_eps, ada, ps, kScale1, kShift1, h);
  std::vector<float> qkv(static_cast<std::size_t>(rows * 3 * C));
  linear_forward(blk.mat_qkv, h, rows, qkv);

  // [N, n, 3, H, d] -> q, k, v [N, H, n, d]; F.normalize (x / max(|x|, 1e-12)) of q and k per head.
  const std::size_t nqkv = static_cast<std::size_t>(rows) * C;
  std::vector<float> q(nqkv), k(nqkv), v(nqkv), o(nqkv);
#pragma omp parallel for schedule(static)
  for (std::int64_t row = 0; row < rows; ++row) {
    const std::int64_t s = row / n, t = row % n;
    for (int hh = 0; hh < H; ++hh) {
      const float* src = qkv.data() + row * 3 * C + std::int64_t{hh} * d;
      const std::int64_t dst = ((s * H + hh) * n + t) * d;
      double nq = 0, nk = 0;
      for (int c = 0; c < d; ++c) {
        nq += double(src[c]) * src[c];
        nk += double(src[C + c]) * src[C + c];
      }
      const float inv_q = 1.0f / std::max(static_cast<float>(std::sqrt(nq)), 1e-12f);
      const float inv_k = 1.0f / std::max(static_cast<float>(std::sqrt(nk)), 1e-12f);
      for (int c = 0; c < d; ++c) {
        q[dst + c] = src[c] * inv_q * blk.q_scale[hh];
        k[dst + c] = src[C + c] * inv_k;
        v[dst + c] = src[2 * C + c];
      }
    }
  }
  const std::array<std::int64_t, 4> shape{N, H, n, d};
  std::fill(o.begin(), o.end(), std::numeric_limits<float>::quiet_NaN());
  AttentionStep step{l, make_view<4>("q", static_cast<const float*>(q.data()), shape),
                     make_view<4>("k", static_cast<const float*>(k.data()), shape),
                     make_view<4>("v", static_cast<const float*>(v.data()), shape), make_view<4>("out", o.data(), shape)};
  attend(step);

  // [N, H, n, d] -> [N, n, C], proj, x += gamma1 * attn.
  for (std::int64_t row = 0; row < rows; ++row) {
    const std::int64_t s = row / n, t = row % n;
    for (int hh = 0; hh < H; ++hh)
      std::copy_n(o.data() + ((s * H + hh) * n + t) * d, d, h.data() + row * C + std::int64_t{hh} * d);
  }
  std::vector<float> y(static_cast<std::size_t>(rows * C));
  linear_forward(blk.proj, h, rows, y);
  for (std::int64_t row = 0; row < rows; ++row) {
    const float* g = ada + (row / n) * ps + kGamma1 * C;
    for (int c = 0; c < C; ++c) x[row * C + c] += y[row * C + c] * g[c];
  }

  // FFN.
  modulated_layer_norm(x, N, n, C, cfg_.norm_eps, ada, ps, kScale2, kShift2, h);
  std::vector<float> a(static_cast<std::size_t>(rows) * hid);
  linear_forward(blk.fc1, h, rows, a);
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < static_cast<std::int64_t>(a.size()); ++i) a[i] = gelu_tanh(a[i]);
  linear_forward(blk.fc2, a, rows, y);
  for (std::int64_t row = 0; row < rows; ++row) {
    const float* g = ada + (row / n) * ps + kGamma2 * C;
    for (int c = 0; c < C; ++c) x[row * C + c] += y[row * C + c] * g[c];
  }
}

std::vector<float> VarModel::logits(std::span<const float> x, int N, int n, const Conditioning& c) const {
  const int C = cfg_.width;
  const std::int64_t rows = std::int64_t{N} * n;
  require(static_cast<std::int64_t>(x.size()) == rows * C, "VAR head: x has {} values, expected [{}, {}, {}]", x.size(), N,
          n, C);
  std::vector<float> h(static_cast<std::size_t>(rows * C));
  modulated_layer_norm(x, N, n, C, cfg_.norm_eps, c.head.data(), 2 * std::int64_t{C}, 0, 1, h);
  std::vector<float> out(static_cast<std::size_t>(rows) * cfg_.vocab);
  linear_forward(head_, h, rows, out);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Teacher forcing

std::vector<float> teacher_forcing_logits(const VarModel& model, std::span<const int> labels,
                                          std::span<const float> var_input) {
  const VarConfig& cfg = model.config();
  const int B = static_cast<int>(labels.size()), C = cfg.width, fl = cfg.first_l();
  const std::int64_t L = cfg.total_tokens();
  require(B > 0, "teacher forcing: no labels");
  require(static_cast<std::int64_t>(var_input.size()) == std::int64_t{B} * (L - fl) * cfg.Cvae,
          "teacher forcing: var_input has {} values, expected [{}, {}, {}]", var_input.size(), B, L - fl, cfg.Cvae);
  const auto cond = model.class_embedding(labels);
  const Conditioning c = model.condition(cond, B);

  // x = cat(sos + pos_start, word_embed(var_input)) + lvl_embed + pos_1LC.
  std::vector<float> x(static_cast<std::size_t>(B * L * C));
  const auto first = model.first_token_map(cond, B);
  const ScaleSchedule sched = cfg.schedule();
  for (int b = 0; b < B; ++b) std::copy_n(first.begin() + std::int64_t{b} * fl * C, fl * C, x.begin() + b * L * C);
  for (int si = 1; si < cfg.scales(); ++si) {
    const std::int64_t n = sched.tokens(si), begin = sched.begin(si);
    std::vector<float> in(static_cast<std::size_t>(B * n * cfg.Cvae));
    for (int b = 0; b < B; ++b)
      std::copy_n(var_input.begin() + (b * (L - fl) + begin - fl) * cfg.Cvae, n * cfg.Cvae, in.begin() + b * n * cfg.Cvae);
    const auto e = model.embed_scale_input(si, in, B);
    for (int b = 0; b < B; ++b) std::copy_n(e.begin() + b * n * C, n * C, x.begin() + (b * L + begin) * C);
  }

  // attn_bias_for_masking: query of scale i sees keys of scales <= i, i.e. the prefix [0, end(i)).
  // Per scale: cache = keys [0, begin(i)), new = keys [begin(i), end(i)).
  const AttentionFn masked = [&](const AttentionStep& st) {
    std::vector<float> lse(static_cast<std::size_t>(B) * cfg.heads * L);
    const std::int64_t H = cfg.heads, d = cfg.head_dim();
    for (int si = 0; si < cfg.scales(); ++si) {
      const std::int64_t b0 = sched.begin(si), n = sched.tokens(si);
      auto sub = [&](auto view, std::int64_t first, std::int64_t count) {
        using V = decltype(view);
        return V(view.data() + first * d, {B, H, count, d}, {H * L * d, L * d, d, 1});
      };
      ReferenceAttentionArgs a;
      a.q = sub(st.q, b0, n);
      a.cache_k = sub(st.k, 0, b0);
      a.cache_v = sub(st.v, 0, b0);
      a.new_k = sub(st.k, b0, n);
      a.new_v = sub(st.v, b0, n);
      a.softmax_scale = 1.0;
      a.out = sub(st.out, b0, n);
      a.lse = TensorView<float, 3>(lse.data() + b0, {B, H, n}, {H * L, L, 1});
      reference_attention(a);
    }
  };
  for (int l = 0; l < cfg.depth; ++l) model.block_forward(l, x, B, static_cast<int>(L), c, masked);
  return model.logits(x, B, static_cast<int>(L), c);
}

}  // namespace varkv::ref

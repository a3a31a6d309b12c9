// The VAR transformer against a plain double-precision transcription of the official forward
// (explicit L x L block-causal mask), the cached generation loop against teacher forcing, the
// statistics seam of the generation loop, the sampler and the weight loader's errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <varkv/cache/full_cache.hpp>
#include <varkv/core/error.hpp>
#include <varkv_reference/generate.hpp>
#include <varkv_reference/safetensors.hpp>
#include <varkv_reference/var_model.hpp>
#include <varkv_reference/vqvae.hpp>

#include "../support/random.hpp"
#include "../support/tiny_vae.hpp"

using namespace varkv::ref;
using varkv::testing::fresh_seed;
using varkv::testing::random_normal;
using varkv::testing::seed_note;

namespace {

// ---- a tiny VAR with random weights, written as an in-memory safetensors file ----

struct Tensor {
  std::vector<std::int64_t> shape;
  std::vector<float> data;
};
using Weights = std::map<std::string, Tensor>;

VarConfig tiny_config() {
  VarConfig c;
  c.depth = 2;
  c.width = 32;
  c.heads = 2;
  c.num_classes = 10;
  c.vocab = 64;
  c.Cvae = 4;
  c.patch_nums = {1, 2, 3};
  return c;
}

Weights random_weights(const VarConfig& c, std::mt19937_64& rng) {
  const std::int64_t C = c.width, L = c.total_tokens(), hid = c.hidden();
  Weights w;
  auto add = [&](const std::string& name, std::vector<std::int64_t> shape, float stddev) {
    std::int64_t n = 1;
    for (auto s : shape) n *= s;
    w[name] = {shape, random_normal(static_cast<std::size_t>(n), rng, stddev)};
  };
  const float ws = 1.0f / std::sqrt(static_cast<float>(C));
  add("class_emb.weight", {c.num_classes + 1, C}, 0.5f);
  add("pos_start", {1, c.first_l(), C}, 0.3f);
  add("pos_1LC", {1, L, C}, 0.3f);
  add("lvl_embed.weight", {c.scales(), C}, 0.3f);
  add("word_embed.weight", {C, c.Cvae}, 0.5f);
  add("word_embed.bias", {C}, 0.1f);
  for (int b = 0; b < c.depth; ++b) {
    const std::string p = "blocks." + std::to_string(b) + ".";
    add(p + "ada_lin.1.weight", {6 * C, C}, 0.3f * ws);
    add(p + "ada_lin.1.bias", {6 * C}, 0.2f);
    add(p + "attn.mat_qkv.weight", {3 * C, C}, ws);
    add(p + "attn.q_bias", {C}, 0.1f);
    add(p + "attn.v_bias", {C}, 0.1f);
    w[p + "attn.zero_k_bias"] = {{C}, std::vector<float>(static_cast<std::size_t>(C), 0.0f)};
    // Head 0 above the clamp ln 100 (exercises min(scale_mul, ln 100)), head 1 near ln 4.
    w[p + "attn.scale_mul_1H11"] = {{1, c.heads, 1, 1}, {5.0f, std::log(4.0f) + 0.1f * b}};
    add(p + "attn.proj.weight", {C, C}, ws);
    add(p + "attn.proj.bias", {C}, 0.1f);
    add(p + "ffn.fc1.weight", {hid, C}, ws);
    add(p + "ffn.fc1.bias", {hid}, 0.1f);
    add(p + "ffn.fc2.weight", {C, hid}, 1.0f / std::sqrt(static_cast<float>(hid)));
    add(p + "ffn.fc2.bias", {C}, 0.1f);
  }
  add("head_nm.ada_lin.1.weight", {2 * C, C}, 0.3f * ws);
  add("head_nm.ada_lin.1.bias", {2 * C}, 0.2f);
  add("head.weight", {c.vocab, C}, ws);
  add("head.bias", {c.vocab}, 0.1f);
  return w;
}

SafetensorsFile to_file(const Weights& w, const std::string& label = "tiny-var.safetensors") {
  nlohmann::json header = nlohmann::json::object();
  std::size_t offset = 0;
  for (const auto& [name, t] : w) {
    header[name] = {{"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.data.size() * 4}}};
    offset += t.data.size() * 4;
  }
  const std::string h = header.dump();
  std::vector<std::byte> bytes(8 + h.size() + offset);
  const std::uint64_t n = h.size();
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<std::byte>((n >> (8 * i)) & 0xff);
  std::memcpy(bytes.data() + 8, h.data(), h.size());
  std::size_t at = 8 + h.size();
  for (const auto& [name, t] : w) {
    std::memcpy(bytes.data() + at, t.data.data(), t.data.size() * 4);
    at += t.data.size() * 4;
  }
  return SafetensorsFile::from_bytes(label, std::move(bytes));
}

// ---- the official forward, transcribed plainly in double ----

std::vector<double> naive_forward(const VarConfig& c, const Weights& w, const std::vector<int>& labels,
                                  const std::vector<float>& var_input) {
  const int C = c.width, H = c.heads, d = c.head_dim(), hid = c.hidden(), V = c.vocab, fl = c.first_l();
  const int L = static_cast<int>(c.total_tokens()), B = static_cast<int>(labels.size());
  std::vector<int> lvl;
  for (int s = 0; s < c.scales(); ++s)
    for (int i = 0; i < c.patch_nums[s] * c.patch_nums[s]; ++i) lvl.push_back(s);
  auto W = [&](const std::string& n) -> const std::vector<float>& { return w.at(n).data; };
  auto lin = [&](const std::string& p, const std::vector<double>& x, int out, int in, bool bias) {
    std::vector<double> y(out);
    for (int o = 0; o < out; ++o) {
      double s = bias ? W(p + ".bias")[o] : 0.0;
      for (int i = 0; i < in; ++i) s += double(W(p + ".weight")[std::size_t(o) * in + i]) * x[i];
      y[o] = s;
    }
    return y;
  };
  auto ln = [&](const std::vector<double>& x) {
    double m = 0, v = 0;
    for (double e : x) m += e;
    m /= x.size();
    for (double e : x) v += (e - m) * (e - m);
    v /= x.size();
    std::vector<double> y(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) y[i] = (x[i] - m) / std::sqrt(v + c.norm_eps);
    return y;
  };
  std::vector<double> logits(std::size_t(B) * L * V);
  for (int b = 0; b < B; ++b) {
    std::vector<double> cond(C), act(C);
    for (int i = 0; i < C; ++i) {
      cond[i] = W("class_emb.weight")[std::size_t(labels[b]) * C + i];
      act[i] = cond[i] / (1 + std::exp(-cond[i]));
    }
    std::vector<std::vector<double>> x(L, std::vector<double>(C));
    for (int t = 0; t < L; ++t) {
      std::vector<double> e(C);
      if (t < fl) {
        for (int i = 0; i < C; ++i) e[i] = cond[i] + W("pos_start")[std::size_t(t) * C + i];
      } else {
        std::vector<double> in(c.Cvae);
        for (int i = 0; i < c.Cvae; ++i) in[i] = var_input[(std::size_t(b) * (L - fl) + t - fl) * c.Cvae + i];
        e = lin("word_embed", in, C, c.Cvae, true);
      }
      for (int i = 0; i < C; ++i)
        x[t][i] = e[i] + W("lvl_embed.weight")[std::size_t(lvl[t]) * C + i] + W("pos_1LC")[std::size_t(t) * C + i];
    }
    for (int blk = 0; blk < c.depth; ++blk) {
      const std::string p = "blocks." + std::to_string(blk) + ".";
      const auto ada = lin(p + "ada_lin.1", act, 6 * C, C, true);
      auto chunk = [&](int k, int i) { return ada[std::size_t(k) * C + i]; };  // gamma1 gamma2 scale1 scale2 shift1 shift2
      std::vector<std::vector<double>> q(L), k(L), v(L);
      for (int t = 0; t < L; ++t) {
        auto h = ln(x[t]);
        for (int i = 0; i < C; ++i) h[i] = h[i] * (1 + chunk(2, i)) + chunk(4, i);
        auto qkv = lin(p + "attn.mat_qkv", h, 3 * C, C, false);
        for (int i = 0; i < C; ++i) {
          qkv[i] += W(p + "attn.q_bias")[i];
          qkv[2 * C + i] += W(p + "attn.v_bias")[i];
        }
        q[t].assign(qkv.begin(), qkv.begin() + C);
        k[t].assign(qkv.begin() + C, qkv.begin() + 2 * C);
        v[t].assign(qkv.begin() + 2 * C, qkv.end());
        for (int hh = 0; hh < H; ++hh) {
          double nq = 0, nk = 0;
          for (int j = 0; j < d; ++j) {
            nq += q[t][hh * d + j] * q[t][hh * d + j];
            nk += k[t][hh * d + j] * k[t][hh * d + j];
          }
          const double sm = std::exp(std::min<double>(W(p + "attn.scale_mul_1H11")[hh], std::log(100.0)));
          for (int j = 0; j < d; ++j) {
            q[t][hh * d + j] = q[t][hh * d + j] / std::sqrt(nq) * sm;
            k[t][hh * d + j] /= std::sqrt(nk);
          }
        }
      }
      std::vector<std::vector<double>> xn = x;
      for (int t = 0; t < L; ++t) {
        std::vector<double> o(C, 0.0);
        for (int hh = 0; hh < H; ++hh) {
          std::vector<double> s(L, -INFINITY);
          double m = -INFINITY;
          for (int u = 0; u < L; ++u) {
            if (lvl[u] > lvl[t]) continue;  // attn_bias_for_masking: -inf where key scale > query scale
            double dot = 0;
            for (int j = 0; j < d; ++j) dot += q[t][hh * d + j] * k[u][hh * d + j];
            s[u] = dot;
            m = std::max(m, dot);
          }
          double z = 0;
          for (int u = 0; u < L; ++u) z += std::isinf(s[u]) ? 0.0 : std::exp(s[u] - m);
          for (int u = 0; u < L; ++u)
            if (!std::isinf(s[u]))
              for (int j = 0; j < d; ++j) o[hh * d + j] += std::exp(s[u] - m) / z * v[u][hh * d + j];
        }
        const auto pr = lin(p + "attn.proj", o, C, C, true);
        for (int i = 0; i < C; ++i) xn[t][i] += pr[i] * chunk(0, i);
        auto h = ln(xn[t]);
        for (int i = 0; i < C; ++i) h[i] = h[i] * (1 + chunk(3, i)) + chunk(5, i);
        auto a = lin(p + "ffn.fc1", h, hid, C, true);
        for (auto& e : a) e = 0.5 * e * (1 + std::tanh(std::sqrt(2 / M_PI) * (e + 0.044715 * e * e * e)));
        const auto f = lin(p + "ffn.fc2", a, C, hid, true);
        for (int i = 0; i < C; ++i) xn[t][i] += f[i] * chunk(1, i);
      }
      x = xn;
    }
    const auto ada = lin("head_nm.ada_lin.1", act, 2 * C, C, true);
    for (int t = 0; t < L; ++t) {
      auto h = ln(x[t]);
      for (int i = 0; i < C; ++i) h[i] = h[i] * (1 + ada[i]) + ada[C + i];
      const auto lg = lin("head", h, V, C, true);
      std::copy(lg.begin(), lg.end(), logits.begin() + (std::size_t(b) * L + t) * V);
    }
  }
  return logits;
}

using varkv::testing::tiny_vae_config;

// ---- tests ----

TEST(VarModel, LinearMatchesPlainReference) {
  const auto seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  for (const auto& [M, K, N, bias] : {std::tuple{7, 13, 19, true}, std::tuple{64, 40, 24, false}, std::tuple{1, 256, 8, true},
                                     std::tuple{130, 33, 72, true}}) {
    const auto w = random_normal(std::size_t(N) * K, rng);
    const auto b = bias ? random_normal(N, rng) : std::vector<float>{};
    const auto x = random_normal(std::size_t(M) * K, rng);
    const Linear lin = Linear::from_weight(w, N, K, b);
    std::vector<float> y(std::size_t(M) * N, std::numeric_limits<float>::quiet_NaN());
    linear_forward(lin, x, M, y);
    for (int m = 0; m < M; ++m)
      for (int n = 0; n < N; ++n) {
        double s = bias ? b[n] : 0.0, mag = std::abs(s);
        for (int k = 0; k < K; ++k) {
          s += double(x[std::size_t(m) * K + k]) * w[std::size_t(n) * K + k];
          mag += std::abs(double(x[std::size_t(m) * K + k]) * w[std::size_t(n) * K + k]);
        }
        // fp32 accumulation of K + 1 terms: |error| <= (K + 1) eps sum|terms| (bound stated loosely).
        ASSERT_NEAR(y[std::size_t(m) * N + n], s, (K + 1) * 1.2e-7 * mag + 1e-30) << M << "x" << K << "x" << N;
      }
  }
}

TEST(VarModel, TeacherForcingMatchesPlainTranscriptionOfOfficialForward) {
  const auto seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  const VarConfig c = tiny_config();
  const Weights w = random_weights(c, rng);
  const VarModel var = VarModel::load(to_file(w), c);
  const std::vector<int> labels{3, 10, 7};  // 10 = null class
  const auto input = random_normal(labels.size() * (c.total_tokens() - c.first_l()) * c.Cvae, rng);
  const auto ours = teacher_forcing_logits(var, labels, input);
  const auto ref = naive_forward(c, w, labels, input);
  ASSERT_EQ(ours.size(), ref.size());
  double err = 0, mag = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    ASSERT_TRUE(std::isfinite(ours[i])) << i;
    err = std::max(err, std::abs(ours[i] - ref[i]));
    mag = std::max(mag, std::abs(ref[i]));
  }
  // fp32 forward vs fp64: relative to the largest logit, 1e-4.
  EXPECT_LE(err, 1e-4 * mag) << "max abs error " << err << " (max |logit| " << mag << ")";
}

TEST(VarModel, CachedGenerationEqualsTeacherForcingOfItsOwnTokens) {
  const auto seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  const VarConfig c = tiny_config();
  const VarModel var = VarModel::load(to_file(random_weights(c, rng)), c);
  const VqVae vae = VqVae::random(tiny_vae_config(c), seed);
  const std::vector<int> labels{3, 7};
  const int B = 2;
  varkv::FullCache<float> cache(c.geometry(), c.schedule(), {B, true}, {varkv::DType::fp32, varkv::DType::fp32});
  GenerationRequest req{.labels = labels, .cfg = 2.0, .top_k = 1, .top_p = 0.0, .seed = 1, .decode = false};
  const auto r = generate(var, vae, cache, req);

  // Teacher forcing of [cond; uncond] with the generated tokens, guided as the loop guides.
  const std::int64_t L = c.total_tokens(), V = c.vocab;
  std::vector<std::int64_t> tok(r.tokens.begin(), r.tokens.end());
  auto in = vae.idxBl_to_var_input(tok, B);
  std::vector<float> in2(in);
  in2.insert(in2.end(), in.begin(), in.end());
  const auto logits = teacher_forcing_logits(var, std::vector<int>{3, 7, c.num_classes, c.num_classes}, in2);
  const auto sched = c.schedule();
  int checked = 0;
  for (int s = 0; s < c.scales(); ++s) {
    const double t = 2.0 * s / (c.scales() - 1);
    for (int b = 0; b < B; ++b)
      for (std::int64_t p = sched.begin(s); p < sched.end(s); ++p) {
        std::vector<float> two(logits.begin() + (b * L + p) * V, logits.begin() + (b * L + p + 1) * V);
        two.insert(two.end(), logits.begin() + ((b + B) * L + p) * V, logits.begin() + ((b + B) * L + p + 1) * V);
        const auto g = guide_logits(two, 1, V, t);
        if (top2_gap(g) < 1e-3f) continue;  // fp32 order of operations may flip a near tie
        ++checked;
        EXPECT_EQ(r.tokens[b * L + p], std::max_element(g.begin(), g.end()) - g.begin()) << "scale " << s << " pos " << p;
      }
  }
  EXPECT_GE(checked, static_cast<int>(B * L * 9 / 10)) << "too many near ties to compare";
  EXPECT_EQ(cache.ledger().tokens(c.scales() - 1, 0), L * 2 * B * c.heads);
}

// A cache that asks for the attention's key statistic: the loop's seam for compressing policies.
struct ObservingFullCache {
  varkv::FullCache<float> inner;
  varkv::ScaleSchedule sched;
  int calls = 0;
  double worst_mass_error = 0;
  const varkv::LayerKvStore<float>& layer(int l) const { return inner.layer(l); }
  const varkv::KvLedger& ledger() const { return inner.ledger(); }
  void commit(int step, int l, varkv::TensorView<const float, 4> k, varkv::TensorView<const float, 4> v) {
    inner.commit(step, l, k, v);
  }
  varkv::StatRequest statistics(int step, int) const {
    varkv::StatRequest r;
    r.needed = true;
    for (std::int32_t i = 0; i < sched.tokens(step); ++i) r.observers.push_back(i);
    r.statistic = varkv::KeyStatistic::probability_mass;
    return r;
  }
  void commit(int step, int l, varkv::TensorView<const float, 4> k, varkv::TensorView<const float, 4> v,
              varkv::TensorView<const float, 3> stat) {
    ++calls;
    // Every observer's probabilities sum to 1: per row, the statistic sums to the observer count.
    for (std::int64_t s = 0; s < stat.shape(0); ++s)
      for (std::int64_t h = 0; h < stat.shape(1); ++h) {
        double sum = 0;
        for (std::int64_t j = 0; j < stat.shape(2); ++j) sum += stat(s, h, j);
        worst_mass_error = std::max(worst_mass_error, std::abs(sum - double(sched.tokens(step))));
      }
    inner.commit(step, l, k, v);
  }
};
static_assert(ObservingCache<ObservingFullCache>);
static_assert(GenerationCache<varkv::FullCache<float>> && !ObservingCache<varkv::FullCache<float>>);

TEST(VarModel, ObservingCacheGetsKeyStatisticsAndSameTokens) {
  const auto seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  const VarConfig c = tiny_config();
  const VarModel var = VarModel::load(to_file(random_weights(c, rng)), c);
  const VqVae vae = VqVae::random(tiny_vae_config(c), seed + 1);
  GenerationRequest req{.labels = {1, 2}, .cfg = 1.5, .top_k = 5, .top_p = 0.9, .seed = seed, .decode = false};
  const varkv::KvDTypes fp32{varkv::DType::fp32, varkv::DType::fp32};
  varkv::FullCache<float> plain(c.geometry(), c.schedule(), {2, true}, fp32);
  ObservingFullCache obs{varkv::FullCache<float>(c.geometry(), c.schedule(), {2, true}, fp32), c.schedule()};
  const auto a = generate(var, vae, plain, req);
  const auto b = generate(var, vae, obs, req);
  EXPECT_EQ(obs.calls, c.depth * c.scales());
  EXPECT_LE(obs.worst_mass_error, 1e-4);
  EXPECT_EQ(a.tokens, b.tokens);  // same seed, same sampling: the seam changes nothing
}

TEST(VarModel, SamplerFollowsOfficialFilters) {
  const auto seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  // Greedy: first maximum.
  std::vector<float> row{0.5f, 2.0f, -1.0f, 2.0f};
  EXPECT_EQ(sample_token(row, 1, 0.0, rng), 1);
  // top-k 3 of 6: only the three largest are ever drawn; each of them is.
  std::set<int> seen;
  for (int i = 0; i < 600; ++i) {
    std::vector<float> r{0.1f, 3.0f, 2.9f, -5.0f, 2.8f, 0.0f};
    seen.insert(sample_token(r, 3, 0.0, rng));
  }
  EXPECT_EQ(seen, (std::set<int>{1, 2, 4}));
  // top-p 0.7 with probabilities 0.5, 0.3, 0.15, 0.05: ascending cumsum 0.05, 0.2 <= 0.3 are removed.
  seen.clear();
  for (int i = 0; i < 600; ++i) {
    std::vector<float> r{std::log(0.15f), std::log(0.5f), std::log(0.05f), std::log(0.3f)};
    seen.insert(sample_token(r, 0, 0.7, rng));
  }
  EXPECT_EQ(seen, (std::set<int>{1, 3}));
  // Same seed, same draws.
  std::mt19937_64 r1(seed), r2(seed);
  for (int i = 0; i < 50; ++i) {
    std::vector<float> x = random_normal(100, rng), y = x;
    EXPECT_EQ(sample_token(x, 0, 0.0, r1), sample_token(y, 0, 0.0, r2));
  }
  // CFG: (1 + t) cond - t uncond.
  const std::vector<float> two{1.0f, 2.0f, 0.5f, -1.0f};
  const auto g = guide_logits(two, 1, 2, 0.5);
  EXPECT_FLOAT_EQ(g[0], 1.5f * 1.0f - 0.5f * 0.5f);
  EXPECT_FLOAT_EQ(g[1], 1.5f * 2.0f + 0.5f * 1.0f);
}

TEST(VarModel, LoaderNamesMissingAndMisshapedTensors) {
  std::mt19937_64 rng(fresh_seed());
  const VarConfig c = tiny_config();
  Weights w = random_weights(c, rng);
  Weights missing = w;
  missing.erase("blocks.1.ffn.fc2.weight");
  try {
    (void)VarModel::load(to_file(missing), c);
    FAIL() << "expected varkv::Error";
  } catch (const varkv::Error& e) {
    EXPECT_NE(std::string(e.what()).find("blocks.1.ffn.fc2.weight"), std::string::npos) << e.what();
  }
  Weights bad = w;
  bad["head.weight"] = {{c.vocab, c.width + 1}, std::vector<float>(std::size_t(c.vocab) * (c.width + 1), 0.0f)};
  try {
    (void)VarModel::load(to_file(bad), c);
    FAIL() << "expected varkv::Error";
  } catch (const varkv::Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("head.weight"), std::string::npos) << m;
    EXPECT_NE(m.find("[64, 32]"), std::string::npos) << m;
    EXPECT_NE(m.find("[64, 33]"), std::string::npos) << m;
  }
  // A deeper checkpoint than configured is reported, not silently truncated.
  VarConfig shallow = c;
  shallow.depth = 1;
  EXPECT_THROW((void)VarModel::load(to_file(w), shallow), varkv::Error);
}

TEST(VarModel, RandomInitIsDeterministicAndFinite) {
  const VarConfig c = tiny_config();
  const VarModel a = VarModel::random(c, 5), b = VarModel::random(c, 5);
  const std::vector<int> labels{4};
  const auto in = std::vector<float>(std::size_t(c.total_tokens() - c.first_l()) * c.Cvae, 0.25f);
  const auto la = teacher_forcing_logits(a, labels, in), lb = teacher_forcing_logits(b, labels, in);
  EXPECT_EQ(la, lb);
  for (float v : la) ASSERT_TRUE(std::isfinite(v));
}

}  // namespace

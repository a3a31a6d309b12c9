#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <varkv/core/error.hpp>
#include <varkv_reference/conv2d.hpp>
#include <varkv_reference/interpolate.hpp>
#include <varkv_reference/safetensors.hpp>
#include <varkv_reference/vqvae.hpp>

#include "../support/golden_dir.hpp"
#include "../support/random.hpp"

using namespace varkv::ref;
using varkv::testing::fresh_seed;
using varkv::testing::random_normal;
using varkv::testing::seed_note;

namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// ---- independent plain references (double precision, formulas written out) ----

// Keys' cubic convolution kernel with PyTorch's A = -0.75.
double keys(double x) {
  const double A = -0.75;
  x = std::abs(x);
  if (x <= 1) return (A + 2) * x * x * x - (A + 3) * x * x + 1;
  if (x < 2) return A * x * x * x - 5 * A * x * x + 8 * A * x - 4 * A;
  return 0;
}

// 1-D bicubic resampling matrix: row o holds the weights of the input samples (border-clamped).
std::vector<double> bicubic_matrix(int in, int out) {
  std::vector<double> m(static_cast<std::size_t>(out) * in, 0.0);
  for (int o = 0; o < out; ++o) {
    const double src = (o + 0.5) * in / out - 0.5;
    const int base = static_cast<int>(std::floor(src));
    for (int k = -1; k <= 2; ++k) {
      const int idx = std::clamp(base + k, 0, in - 1);
      m[o * in + idx] += keys(src - (base + k));
    }
  }
  return m;
}

std::vector<double> naive_bicubic(const std::vector<float>& x, int planes, int ih, int iw, int oh, int ow) {
  const auto my = bicubic_matrix(ih, oh), mx = bicubic_matrix(iw, ow);
  std::vector<double> out(static_cast<std::size_t>(planes) * oh * ow, 0.0);
  for (int p = 0; p < planes; ++p)
    for (int y = 0; y < oh; ++y)
      for (int xo = 0; xo < ow; ++xo) {
        double s = 0;
        for (int i = 0; i < ih; ++i)
          for (int j = 0; j < iw; ++j) s += my[y * ih + i] * mx[xo * iw + j] * x[(p * ih + i) * iw + j];
        out[(p * oh + y) * ow + xo] = s;
      }
  return out;
}

std::vector<double> naive_area(const std::vector<float>& x, int planes, int ih, int iw, int oh, int ow) {
  std::vector<double> out(static_cast<std::size_t>(planes) * oh * ow);
  for (int p = 0; p < planes; ++p)
    for (int y = 0; y < oh; ++y)
      for (int xo = 0; xo < ow; ++xo) {
        // Cell boundaries as exact rationals: [floor(y*ih/oh), ceil((y+1)*ih/oh)).
        const int y0 = y * ih / oh, y1 = ((y + 1) * ih + oh - 1) / oh;
        const int x0 = xo * iw / ow, x1 = ((xo + 1) * iw + ow - 1) / ow;
        double s = 0;
        for (int i = y0; i < y1; ++i)
          for (int j = x0; j < x1; ++j) s += x[(p * ih + i) * iw + j];
        out[(p * oh + y) * ow + xo] = s / ((y1 - y0) * (x1 - x0));
      }
  return out;
}

std::vector<double> naive_conv(const std::vector<float>& x, const std::vector<float>& w, const std::vector<float>& b,
                               int B, int cin, int cout, int k, int H, int W) {
  std::vector<double> out(static_cast<std::size_t>(B) * cout * H * W);
  const int pad = k / 2;
  for (int n = 0; n < B; ++n)
    for (int co = 0; co < cout; ++co)
      for (int y = 0; y < H; ++y)
        for (int xo = 0; xo < W; ++xo) {
          double s = b[co];
          for (int ci = 0; ci < cin; ++ci)
            for (int kh = 0; kh < k; ++kh)
              for (int kw = 0; kw < k; ++kw) {
                const int iy = y + kh - pad, ix = xo + kw - pad;
                if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                s += static_cast<double>(w[((co * cin + ci) * k + kh) * k + kw]) * x[((n * cin + ci) * H + iy) * W + ix];
              }
          out[((n * cout + co) * H + y) * W + xo] = s;
        }
  return out;
}

template <class A, class B>
double max_abs_diff(const A& a, const B& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (std::size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    const double d = std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i]));
    if (std::isnan(d)) return std::numeric_limits<double>::infinity();
    m = std::max(m, d);
  }
  return m;
}

// ---- golden data of the official implementation ----

struct Golden {
  std::string dir;
  nlohmann::json meta;
  std::unique_ptr<SafetensorsFile> vae_file, golden;
  std::unique_ptr<VqVae> vae;
};

const Golden* golden() {
  static const std::unique_ptr<Golden> g = []() -> std::unique_ptr<Golden> {
    const std::string dir = std::string(VARKV_GOLDEN_DIR) + "/var_d4_256";
    if (!std::filesystem::exists(dir + "/meta.json")) return nullptr;
    auto g = std::make_unique<Golden>();
    g->dir = dir;
    g->meta = nlohmann::json::parse(std::ifstream(dir + "/meta.json"));
    g->vae_file = std::make_unique<SafetensorsFile>(SafetensorsFile::open(dir + "/vae.safetensors"));
    g->golden = std::make_unique<SafetensorsFile>(SafetensorsFile::open(dir + "/golden.safetensors"));
    VqVaeConfig cfg;
    cfg.vocab = g->meta.at("vocab").get<int>();
    cfg.Cvae = g->meta.at("Cvae").get<int>();
    cfg.ch = g->meta.at("vae_ch").get<int>();
    cfg.patch_nums = g->meta.at("patch_nums").get<std::vector<int>>();
    g->vae = std::make_unique<VqVae>(VqVae::load(*g->vae_file, cfg));
    return g;
  }();
  return g.get();
}

using varkv::testing::on_ci;

#define VARKV_REQUIRE_GOLDEN(g)                                                                             \
  const Golden* g = golden();                                                                               \
  if (!g) {                                                                                                 \
    if (on_ci()) FAIL() << "golden data missing under " VARKV_GOLDEN_DIR "/var_d4_256 (CI=true)";          \
    GTEST_SKIP() << "golden data not found under " VARKV_GOLDEN_DIR "/var_d4_256: skipping the comparison " \
                    "with the official implementation";                                                     \
  }

}  // namespace

// ---------------- resampling ----------------

TEST(Interpolate, BicubicHandComputedRamp) {
  // [[0, 1], [0, 1]] -> 4x4: every row is out(x) = sum_k W(src - k) * in[clamp(k)] with
  // src = (x + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25 and Keys' kernel W (A = -0.75):
  // x=0: W(1.25) = -0.10546875; x=1: W(0.75) + W(1.75) = 0.26171875 - 0.03515625 = 0.2265625;
  // x=2, x=3 by symmetry 1 - 0.2265625 and 1 + 0.10546875.
  const std::vector<float> in = {0, 1, 0, 1};
  std::vector<float> out(16, kNaN);
  resize_bicubic(in, 1, 2, 2, out, 4, 4);
  const float row[4] = {-0.10546875f, 0.2265625f, 0.7734375f, 1.10546875f};
  for (int y = 0; y < 4; ++y)
    for (int x = 0; x < 4; ++x) EXPECT_NEAR(out[y * 4 + x], row[x], 1e-7) << y << "," << x;
}

TEST(Interpolate, BicubicMatchesPlainReferenceOnRandomPlanes) {
  const std::uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  // Every VAR upsampling (patch n -> 16) plus odd and downscaling shapes.
  const int shapes[][4] = {{1, 1, 16, 16}, {2, 2, 16, 16}, {3, 3, 16, 16}, {5, 5, 16, 16}, {13, 13, 16, 16},
                           {10, 10, 32, 32}, {3, 7, 11, 5}, {9, 6, 4, 4}, {2, 3, 2, 3}};
  for (const auto& s : shapes) {
    const int planes = 3;
    const auto x = random_normal(static_cast<std::size_t>(planes) * s[0] * s[1], rng);
    std::vector<float> out(static_cast<std::size_t>(planes) * s[2] * s[3], kNaN);
    resize_bicubic(x, planes, s[0], s[1], out, s[2], s[3]);
    const auto ref = naive_bicubic(x, planes, s[0], s[1], s[2], s[3]);
    // Both sides sum 16 fp32 products in a different order; Keys' kernel (A = -0.75) has
    // sum |w| <= 1.16 per axis, so each output carries at most ~16 roundings of terms bounded
    // by 1.35 * max|x|: 32 ulps of max|x| covers it with margin.
    float peak = 0;
    for (float v : x) peak = std::max(peak, std::abs(v));
    const double bound = 32.0 * std::numeric_limits<float>::epsilon() * peak;
    EXPECT_LT(max_abs_diff(out, ref), bound) << s[0] << "x" << s[1] << " -> " << s[2] << "x" << s[3];
  }
}

TEST(Interpolate, AreaHandComputedAndRandom) {
  // 5x5 ramp (value 5i + j) -> 2x2: cells [0, 3) and [2, 5) per axis, averages at their centres.
  std::vector<float> in(25);
  for (int i = 0; i < 25; ++i) in[i] = static_cast<float>(i);
  std::vector<float> out(4, kNaN);
  resize_area(in, 1, 5, 5, out, 2, 2);
  EXPECT_FLOAT_EQ(out[0], 6.0f);
  EXPECT_FLOAT_EQ(out[1], 8.0f);
  EXPECT_FLOAT_EQ(out[2], 16.0f);
  EXPECT_FLOAT_EQ(out[3], 18.0f);

  const std::uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  const int shapes[][4] = {{16, 16, 1, 1}, {16, 16, 2, 2}, {16, 16, 3, 3}, {16, 16, 13, 13}, {16, 16, 16, 16},
                           {7, 5, 3, 2}, {4, 4, 6, 5}};
  for (const auto& s : shapes) {
    const auto x = random_normal(static_cast<std::size_t>(2) * s[0] * s[1], rng);
    std::vector<float> o(static_cast<std::size_t>(2) * s[2] * s[3], kNaN);
    resize_area(x, 2, s[0], s[1], o, s[2], s[3]);
    // A cell mean of up to 256 fp32 values summed in another order: the rounding of the running
    // sum grows with sqrt(terms) in practice and with terms at worst; 64 ulps of max|x| bounds the
    // cells here (up to 256 terms) with room for the worst case seen in practice.
    float peak = 0;
    for (float v : x) peak = std::max(peak, std::abs(v));
    const double bound = 64.0 * std::numeric_limits<float>::epsilon() * peak;
    EXPECT_LT(max_abs_diff(o, naive_area(x, 2, s[0], s[1], s[2], s[3])), bound) << s[0] << "->" << s[2];
  }
  std::vector<float> wrong(3);
  EXPECT_THROW(resize_area(in, 1, 5, 5, wrong, 2, 2), varkv::Error);
}

TEST(Interpolate, NearestUpsample2x) {
  const std::vector<float> in = {1, 2, 3, 4, 5, 6};  // 2 planes of 1x3
  std::vector<float> out(24, kNaN);
  upsample_nearest2x(in, 2, 1, 3, out);
  const std::vector<float> expect = {1, 1, 2, 2, 3, 3, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 4, 4, 5, 5, 6, 6};
  EXPECT_EQ(out, expect);
}

// ---------------- convolution ----------------

TEST(Conv2d, MatchesPlainReferenceOnRandomInputs) {
  const std::uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  // (B, cin, cout, k, H, W): odd channel counts (tile tails), widths that are not multiples of 16.
  const int cases[][6] = {{2, 5, 6, 3, 7, 19}, {1, 32, 32, 3, 16, 16}, {2, 8, 3, 3, 9, 33}, {1, 7, 9, 1, 5, 21},
                          {1, 3, 4, 5, 6, 17}};
  for (const auto& c : cases) {
    const int B = c[0], cin = c[1], cout = c[2], k = c[3], H = c[4], W = c[5];
    const auto x = random_normal(static_cast<std::size_t>(B) * cin * H * W, rng);
    const auto w = random_normal(static_cast<std::size_t>(cout) * cin * k * k, rng, 0.2f);
    const auto b = random_normal(cout, rng);
    const Conv2d conv(cin, cout, k, w, b);
    std::vector<float> out(static_cast<std::size_t>(B) * cout * H * W, kNaN);
    conv.forward(x, out, B, H, W);
    const auto ref = naive_conv(x, w, b, B, cin, cout, k, H, W);
    // fp32 sums of cin * k * k terms of size ~0.2 * |x|: 1e-4 absolute is ~100x their rounding.
    EXPECT_LT(max_abs_diff(out, ref), 1e-4) << "B=" << B << " cin=" << cin << " cout=" << cout << " k=" << k;
  }
  EXPECT_THROW(Conv2d(3, 4, 3, std::vector<float>(10), {}), varkv::Error);
  const Conv2d conv(2, 2, 3, std::vector<float>(36), {});
  std::vector<float> bad(5), out(8);
  EXPECT_THROW(conv.forward(bad, out, 1, 2, 2), varkv::Error);
}

// ---------------- quantizer ----------------

TEST(VqVae, PhiIndexFollowsPartiallySharedTicks) {
  // np.argmin(|linspace(1/12, 11/12, 4) - si/(S-1)|) evaluated with numpy's own operations; at S = 10,
  // si = 2 the two nearest ticks are equidistant in exact arithmetic and rounding picks tick 1.
  VqVaeConfig cfg;
  cfg.ch = 32;
  cfg.vocab = 8;
  cfg.Cvae = 4;
  cfg.patch_nums = {1, 2, 3, 4, 5, 6, 8, 10, 13, 16};
  const auto v10 = VqVae::random(cfg, 1);
  const int expect10[] = {0, 0, 1, 1, 1, 2, 2, 3, 3, 3};
  for (int si = 0; si < 10; ++si) EXPECT_EQ(v10.phi_index(si), expect10[si]) << si;
  cfg.patch_nums = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13};
  const auto v13 = VqVae::random(cfg, 1);
  const int expect13[] = {0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3};
  for (int si = 0; si < 13; ++si) EXPECT_EQ(v13.phi_index(si), expect13[si]) << si;
  EXPECT_EQ(v10.total_tokens(), 680);
  EXPECT_THROW(v10.phi_index(10), varkv::Error);
}

TEST(VqVae, RejectsBadConfigsTokensAndSizes) {
  VqVaeConfig cfg;
  cfg.ch = 32;
  cfg.vocab = 16;
  cfg.Cvae = 4;
  cfg.patch_nums = {1, 2, 4};
  const auto v = VqVae::random(cfg, 3);
  std::vector<float> f_hat(2 * 4 * 4 * 4, 0.0f);
  const std::vector<std::int32_t> bad_token = {0, 16};
  EXPECT_THROW(v.next_autoregressive_input(0, f_hat, 2, bad_token), varkv::Error);
  const std::vector<std::int32_t> ok = {0, 15};
  std::vector<float> small(10);
  EXPECT_THROW(v.next_autoregressive_input(0, small, 2, ok), varkv::Error);
  EXPECT_THROW(v.next_autoregressive_input(3, f_hat, 2, ok), varkv::Error);
  EXPECT_THROW(v.decode(small, 1), varkv::Error);
  EXPECT_THROW(v.idxBl_to_var_input(std::vector<std::int64_t>(20), 2), varkv::Error);
  auto bad = cfg;
  bad.patch_nums = {2, 2};
  EXPECT_THROW(VqVae::random(bad, 1), varkv::Error);
  bad = cfg;
  bad.ch = 48;
  EXPECT_THROW(VqVae::random(bad, 1), varkv::Error);
}

TEST(VqVae, DecoderFlopsFollowTheArchitecture) {
  // Written out from the architecture (ch_mult 1 1 2 2 4 reversed, 3 res blocks per level,
  // attention at the lowest resolution, nearest x2 + 3x3 conv between levels; post_quant_conv 3x3
  // as the official quant_conv_ks = 3), independently of
  // the layer walk in vqvae.cpp.
  const auto conv = [](double ci, double co, double k, double hw) { return 2 * ci * co * k * k * hw; };
  const auto res = [&](double ci, double co, double hw) {
    return conv(ci, co, 3, hw) + conv(co, co, 3, hw) + (ci != co ? conv(ci, co, 1, hw) : 0.0);
  };
  const auto attn = [&](double c, double hw) { return conv(c, 3 * c, 1, hw) + conv(c, c, 1, hw) + 4 * hw * hw * c; };
  for (const int ch : {32, 64}) {
    VqVaeConfig cfg;
    cfg.ch = ch;
    cfg.Cvae = 16;
    cfg.vocab = 64;
    cfg.patch_nums = {1, 2, 3};
    const VqVae vae = VqVae::random(cfg, 5);
    double hw = 9, expect = conv(16, 16, 3, hw) + conv(16, 4 * ch, 3, hw);  // post_quant_conv is 3x3
    expect += 2 * res(4 * ch, 4 * ch, hw) + attn(4 * ch, hw);
    const double chs[] = {4.0 * ch, 2.0 * ch, 2.0 * ch, 1.0 * ch, 1.0 * ch};
    double cin = 4.0 * ch;
    for (int level = 0; level < 5; ++level) {
      for (int b = 0; b < 3; ++b) {
        expect += res(cin, chs[level], hw) + (level == 0 ? attn(chs[level], hw) : 0.0);
        cin = chs[level];
      }
      if (level < 4) {
        hw *= 4;
        expect += conv(chs[level], chs[level], 3, hw);
      }
    }
    expect += conv(ch, 3, 3, hw);
    EXPECT_DOUBLE_EQ(vae.decoder_flops(), expect) << "ch " << ch;
  }
  // The official 256-px VQ-VAE (ch 160, Cvae 32, P = 16): 393.7 GFLOP per image by the same formula.
}

TEST(VqVae, RandomInitIsDeterministicAndConsistent) {
  VqVaeConfig cfg;
  cfg.ch = 32;
  cfg.vocab = 64;
  cfg.Cvae = 8;
  cfg.patch_nums = {1, 2, 3};
  const int S = 3, P = 3, L = 14, C = 8;
  const auto a = VqVae::random(cfg, 11), b = VqVae::random(cfg, 11), c = VqVae::random(cfg, 12);
  const std::uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  const int B = 2;
  ASSERT_EQ(a.total_tokens(), L);
  std::vector<std::int64_t> tokens(B * L);
  for (auto& t : tokens) t = static_cast<std::int64_t>(rng() % 64);
  const auto tf = a.idxBl_to_var_input(tokens, B);
  ASSERT_EQ(tf.size(), static_cast<std::size_t>(B * (L - 1) * C));
  // The autoregressive path rebuilds exactly the same inputs scale by scale.
  std::vector<float> f_hat(B * C * P * P, 0.0f);
  std::int64_t begin = 0, row = 0;
  for (int si = 0; si < S; ++si) {
    const int pn = cfg.patch_nums[si];
    std::vector<std::int32_t> t(B * pn * pn);
    for (int bb = 0; bb < B; ++bb)
      for (int i = 0; i < pn * pn; ++i) t[bb * pn * pn + i] = static_cast<std::int32_t>(tokens[bb * L + begin + i]);
    const auto next = a.next_autoregressive_input(si, f_hat, B, t);
    if (si == S - 1) {
      EXPECT_TRUE(next.empty());
      break;
    }
    const int m = cfg.patch_nums[si + 1] * cfg.patch_nums[si + 1];
    ASSERT_EQ(next.size(), static_cast<std::size_t>(B * m * C));
    for (int bb = 0; bb < B; ++bb)
      for (int i = 0; i < m * C; ++i) ASSERT_EQ(next[bb * m * C + i], tf[(bb * (L - 1) + row) * C + i]);
    begin += pn * pn;
    row += m;
  }
  const auto img_a = a.decode(f_hat, B), img_b = b.decode(f_hat, B), img_c = c.decode(f_hat, B);
  ASSERT_EQ(img_a.size(), static_cast<std::size_t>(B * 3 * 16 * P * 16 * P));
  EXPECT_EQ(img_a, img_b);
  EXPECT_NE(img_a, img_c);
  VqVae copy = c;
  copy = a;  // deep copy: same weights, independent of `a`
  EXPECT_EQ(copy.decode(f_hat, B), img_a);
  for (float x : img_a) ASSERT_TRUE(x >= 0.0f && x <= 1.0f);
}

// ---------------- against the official implementation ----------------

TEST(VqVaeGolden, TeacherForcingInputMatchesOfficial) {
  VARKV_REQUIRE_GOLDEN(g);
  const auto tokens = g->golden->load_int("tf_tokens");
  const auto shape = g->golden->shape("tf_tokens");
  const int B = static_cast<int>(shape.at(0));
  const std::int64_t expect_shape[] = {B, shape.at(1) - 1, g->vae->config().Cvae};
  const HostTensor ref = g->golden->load("tf_var_input", expect_shape);
  const auto got = g->vae->idxBl_to_var_input(tokens, B);
  const double err = max_abs_diff(got, ref.data);
  std::printf("[ golden   ] idxBl_to_var_input(tf_tokens) vs tf_var_input: max abs error %.3g\n", err);
  RecordProperty("max_abs_error", std::to_string(err));
  EXPECT_LT(err, 1e-5);
}

TEST(VqVaeGolden, AutoregressiveQuantizerPathMatchesOfficialFHat) {
  VARKV_REQUIRE_GOLDEN(g);
  const VqVae& vae = *g->vae;
  const auto& pn = vae.config().patch_nums;
  const int S = static_cast<int>(pn.size()), P = pn.back(), C = vae.config().Cvae;
  const auto tokens = g->golden->load_int("gen_tokens");
  const int B = static_cast<int>(g->golden->shape("gen_tokens").at(0));
  const std::int64_t L = vae.total_tokens();
  ASSERT_EQ(tokens.size(), static_cast<std::size_t>(B * L));
  const auto tf = vae.idxBl_to_var_input(tokens, B);
  const std::int64_t rows = L - pn[0] * pn[0];

  std::vector<float> f_hat(static_cast<std::size_t>(B) * C * P * P, 0.0f);
  std::int64_t begin = 0, row = 0;
  double consistency = 0;
  for (int si = 0; si < S; ++si) {
    const std::int64_t n = static_cast<std::int64_t>(pn[si]) * pn[si];
    std::vector<std::int32_t> t(B * n);
    for (int b = 0; b < B; ++b)
      for (std::int64_t i = 0; i < n; ++i) t[b * n + i] = static_cast<std::int32_t>(tokens[b * L + begin + i]);
    const auto next = vae.next_autoregressive_input(si, f_hat, B, t);
    begin += n;
    if (si == S - 1) {
      EXPECT_TRUE(next.empty());
      break;
    }
    const std::int64_t m = static_cast<std::int64_t>(pn[si + 1]) * pn[si + 1];
    ASSERT_EQ(next.size(), static_cast<std::size_t>(B * m * C));
    for (int b = 0; b < B; ++b)
      for (std::int64_t i = 0; i < m * C; ++i)
        consistency = std::max(consistency, std::abs(static_cast<double>(next[b * m * C + i]) -
                                                     tf[(b * rows + row) * C + i]));
    row += m;
  }
  const std::int64_t fshape[] = {B, C, P, P};
  const HostTensor ref = g->golden->load("gen_f_hat", fshape);
  const double err = max_abs_diff(f_hat, ref.data);
  std::printf("[ golden   ] f_hat from gen_tokens vs gen_f_hat: max abs error %.3g; next inputs vs "
              "idxBl_to_var_input: %.3g\n", err, consistency);
  RecordProperty("max_abs_error", std::to_string(err));
  EXPECT_LT(err, 1e-3);
  EXPECT_LE(consistency, 1e-6);  // same arithmetic on both paths
}

TEST(VqVaeGolden, DecodeMatchesOfficialImage) {
  VARKV_REQUIRE_GOLDEN(g);
  const VqVae& vae = *g->vae;
  const int P = vae.config().patch_nums.back(), C = vae.config().Cvae;
  const auto fshape = g->golden->shape("gen_f_hat");
  const int B = static_cast<int>(fshape.at(0));
  const std::int64_t expect_f[] = {B, C, P, P};
  const HostTensor f_hat = g->golden->load("gen_f_hat", expect_f);
  const std::int64_t expect_img[] = {B, 3, 16 * P, 16 * P};
  const HostTensor ref = g->golden->load("gen_image", expect_img);  // F32 or F16
  const auto t0 = std::chrono::steady_clock::now();
  const auto img = vae.decode(f_hat.data, B);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double err = max_abs_diff(img, ref.data);
  std::printf("[ golden   ] decode(gen_f_hat) vs gen_image (%s): max abs error %.3g, %.2f s for %d images\n",
              g->golden->dtype("gen_image").c_str(), err, secs, B);
  RecordProperty("max_abs_error", std::to_string(err));
  EXPECT_LT(err, 1e-3);
}

TEST(VqVaeGolden, MissingOrMisShapedWeightsAreNamed) {
  VARKV_REQUIRE_GOLDEN(g);
  VqVaeConfig cfg = g->vae->config();
  cfg.ch = 64;  // the file holds ch = 32 weights
  try {
    VqVae::load(*g->vae_file, cfg);
    FAIL() << "no error";
  } catch (const varkv::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("vae.safetensors: tensor '"), std::string::npos) << msg;
    EXPECT_NE(msg.find("expected shape ["), std::string::npos) << msg;
  }
  cfg = g->vae->config();
  cfg.share_quant_resi = 6;  // asks for qresi_ls.4
  try {
    VqVae::load(*g->vae_file, cfg);
    FAIL() << "no error";
  } catch (const varkv::Error& e) {
    EXPECT_NE(std::string(e.what()).find("tensor 'quantize.quant_resi.qresi_ls.4.weight' is missing"),
              std::string::npos)
        << e.what();
  }
}

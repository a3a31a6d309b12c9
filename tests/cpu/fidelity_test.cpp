// Fidelity measures of varkv-generate --compare (reference/include/varkv_reference/fidelity.hpp):
// PSNR on hand-computed cases, token agreement per scale on hand-built token arrays, and the
// comparison grid read back pixel by pixel.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <vector>

#include <varkv/core/error.hpp>
#include <varkv_reference/fidelity.hpp>
#include <varkv_reference/image_io.hpp>

#include "../support/stb_image_reader.hpp"

#include "../support/random.hpp"

using namespace varkv::ref;
using varkv::testing::fresh_seed;
using varkv::testing::seed_note;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// Values on a 2^-10 grid in [0, 1 - 2^-4]: adding 2^-4 (or 2^-1) to them is exact in float, so the
// MSE of a constant offset c is exactly c^2.
std::vector<float> grid_values(std::size_t n, std::mt19937_64& rng) {
  std::uniform_int_distribution<int> d(0, 960);
  std::vector<float> v(n);
  for (auto& x : v) x = static_cast<float>(d(rng)) / 1024.0f;
  return v;
}

TEST(Fidelity, PsnrOfIdenticalDataIsInfinite) {
  const auto seed = fresh_seed();
  std::mt19937_64 rng(seed);
  const auto a = varkv::testing::random_normal(1 + rng() % 5000, rng);
  const std::vector<float> b = a;
  EXPECT_EQ(psnr(a, b, 1.0), kInf) << seed_note(seed);
  EXPECT_EQ(psnr(a, b, 7.5), kInf) << seed_note(seed);
  EXPECT_EQ(mean_squared_error(a, b), 0.0) << seed_note(seed);
  EXPECT_EQ(format_psnr(psnr(a, b, 1.0)), "inf");
}

TEST(Fidelity, PsnrOfConstantOffsetIsKnown) {
  const auto seed = fresh_seed();
  std::mt19937_64 rng(seed);
  const auto ref = grid_values(64 + rng() % 4096, rng);
  std::vector<float> test = ref;
  for (auto& x : test) x += 1.0f / 16;  // MSE = 2^-8
  EXPECT_DOUBLE_EQ(mean_squared_error(ref, test), 1.0 / 256) << seed_note(seed);
  // 10 log10(1 / 2^-8) = 80 log10(2) = 24.0823996531185 dB.
  EXPECT_NEAR(psnr(ref, test, 1.0), 24.0823996531185, 1e-9) << seed_note(seed);
  // Peak 2, offset -1/2: 10 log10(4 / 0.25) = 10 log10(16) = 12.0411998265592 dB.
  for (std::size_t i = 0; i < ref.size(); ++i) test[i] = ref[i] - 0.5f;
  EXPECT_NEAR(psnr(ref, test, 2.0), 12.0411998265592, 1e-9) << seed_note(seed);
  // Offset 0.1 (not exact in float): 20 dB up to float rounding of the inputs.
  for (std::size_t i = 0; i < ref.size(); ++i) test[i] = ref[i] + 0.1f;
  EXPECT_NEAR(psnr(ref, test, 1.0), 20.0, 1e-4) << seed_note(seed);
  EXPECT_EQ(format_psnr(24.0823996531185), "24.08");
  EXPECT_EQ(format_psnr(24.0823996531185, 3), "24.082");
}

// Half of the values off by c: MSE = c^2 / 2, so PSNR rises by 10 log10(2) = 3.0103 dB over the
// whole-offset case.
TEST(Fidelity, PsnrOfHalfOffsetGainsThreeDecibels) {
  const auto seed = fresh_seed();
  std::mt19937_64 rng(seed);
  const std::size_t n = 2 * (32 + rng() % 2000);
  const auto ref = grid_values(n, rng);
  std::vector<float> test = ref;
  std::vector<std::size_t> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  std::shuffle(idx.begin(), idx.end(), rng);
  for (std::size_t i = 0; i < n / 2; ++i) test[idx[i]] += 1.0f / 16;
  EXPECT_NEAR(psnr(ref, test, 1.0), 24.0823996531185 + 3.0102999566398, 1e-9) << seed_note(seed);
}

TEST(Fidelity, PsnrPerImageSplitsTheBatch) {
  const auto seed = fresh_seed();
  std::mt19937_64 rng(seed);
  const int images = 3;
  const std::size_t each = 3 * (4 + rng() % 30) * (4 + rng() % 30);
  const auto ref = grid_values(images * each, rng);
  std::vector<float> test = ref;
  for (std::size_t i = each; i < 2 * each; ++i) test[i] += 1.0f / 16;      // image 1: offset 2^-4
  for (std::size_t i = 2 * each; i < 3 * each; ++i) test[i] -= 1.0f / 2;  // image 2: offset 2^-1
  const auto per = psnr_per_image(ref, test, images, 1.0);
  ASSERT_EQ(per.size(), 3u);
  EXPECT_EQ(per[0], kInf) << seed_note(seed);
  EXPECT_NEAR(per[1], 24.0823996531185, 1e-9) << seed_note(seed);
  EXPECT_NEAR(per[2], 6.0205999132796, 1e-9) << seed_note(seed);  // 10 log10(4)
  // Pooled: MSE = (0 + 1/256 + 1/4) / 3.
  EXPECT_NEAR(psnr(ref, test, 1.0), 10 * std::log10(3.0 / (1.0 / 256 + 0.25)), 1e-9) << seed_note(seed);
}

TEST(Fidelity, BadPsnrArgumentsThrow) {
  const std::vector<float> a{0.f, 1.f, 2.f}, b{0.f, 1.f}, empty;
  EXPECT_THROW(psnr(a, b, 1.0), varkv::Error);
  EXPECT_THROW(psnr(empty, empty, 1.0), varkv::Error);
  EXPECT_THROW(psnr(a, a, 0.0), varkv::Error);
  EXPECT_THROW(psnr(a, a, std::numeric_limits<double>::infinity()), varkv::Error);
  EXPECT_THROW(psnr_per_image(a, a, 2, 1.0), varkv::Error);  // 3 values do not split into 2 images
  EXPECT_THROW(value_range(empty), varkv::Error);
  EXPECT_DOUBLE_EQ(value_range(std::vector<float>{-1.5f, 3.f, 0.25f}), 4.5);
}

// Two images, schedule 1, 2, 3 (L = 14): scale 0 equal; scale 1 one token of image 0 differs
// (7 of 8 equal); scale 2 every token of image 1 and `k` random tokens of image 0 differ.
TEST(Fidelity, TokenAgreementPerScaleOnHandBuiltTokens) {
  const auto seed = fresh_seed();
  std::mt19937_64 rng(seed);
  const std::vector<int> patch_nums{1, 2, 3};
  const int B = 2, L = 14;
  std::uniform_int_distribution<std::int32_t> tok(0, 4095);
  std::vector<std::int32_t> ref(B * L);
  for (auto& t : ref) t = tok(rng);
  std::vector<std::int32_t> test = ref;
  const auto flip = [&](int b, int i) { test[b * L + i] = (ref[b * L + i] + 1 + tok(rng) % 4095) % 4096; };
  flip(0, 1 + static_cast<int>(rng() % 4));  // one token of scale 1 (positions 1..4)
  const int k = static_cast<int>(rng() % 10);  // 0..9 tokens of image 0's scale 2 (positions 5..13)
  std::vector<int> pos(9);
  std::iota(pos.begin(), pos.end(), 5);
  std::shuffle(pos.begin(), pos.end(), rng);
  for (int i = 0; i < k; ++i) flip(0, pos[i]);
  for (int i = 5; i < 14; ++i) flip(1, i);

  const TokenAgreement a = token_agreement(ref, test, B, patch_nums);
  ASSERT_EQ(a.per_scale.size(), 3u);
  EXPECT_EQ(a.tokens_per_scale, (std::vector<std::int64_t>{2, 8, 18}));
  EXPECT_EQ(a.same_per_scale, (std::vector<std::int64_t>{2, 7, 9 - k})) << seed_note(seed);
  EXPECT_DOUBLE_EQ(a.per_scale[0], 1.0);
  EXPECT_DOUBLE_EQ(a.per_scale[1], 7.0 / 8);
  EXPECT_DOUBLE_EQ(a.per_scale[2], (9.0 - k) / 18) << seed_note(seed);
  EXPECT_DOUBLE_EQ(a.overall, (2.0 + 7 + 9 - k) / 28) << seed_note(seed);
  EXPECT_EQ(a.first_differing_scale, 1);

  const TokenAgreement same = token_agreement(ref, ref, B, patch_nums);
  EXPECT_EQ(same.per_scale, (std::vector<double>{1.0, 1.0, 1.0}));
  EXPECT_EQ(same.overall, 1.0);
  EXPECT_EQ(same.first_differing_scale, -1);

  // Only the last scale differs (image 1's last token).
  std::vector<std::int32_t> last = ref;
  last[B * L - 1] = (last[B * L - 1] + 1) % 4096;
  const TokenAgreement l = token_agreement(ref, last, B, patch_nums);
  EXPECT_EQ(l.first_differing_scale, 2);
  EXPECT_DOUBLE_EQ(l.per_scale[2], 17.0 / 18);

  EXPECT_THROW(token_agreement(ref, std::span<const std::int32_t>(test).first(27), B, patch_nums), varkv::Error);
  EXPECT_THROW(token_agreement(ref, test, 3, patch_nums), varkv::Error);  // 28 tokens are not 3 x 14
}

TEST(Fidelity, CompareGenerationsBundlesTokensAndPsnr) {
  const auto seed = fresh_seed();
  std::mt19937_64 rng(seed);
  const std::vector<int> patch_nums{1, 2};
  GenerationResult a, b;
  a.images = b.images = 2;
  a.tokens = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  b.tokens = {1, 2, 3, 4, 5, 6, 7, 8, 0, 10};  // image 1, scale 1: 3 of 4 equal
  a.f_hat = grid_values(2 * 8, rng);
  a.f_hat[0] = 0.0f;
  a.f_hat[1] = 0.5f;  // range = max - min >= 0.5
  b.f_hat = a.f_hat;
  for (auto& x : b.f_hat) x += 1.0f / 16;
  a.pixels = grid_values(2 * 3 * 4 * 4, rng);
  b.pixels = a.pixels;
  a.image_side = b.image_side = 4;

  const auto f = compare_generations(a, b, patch_nums);
  EXPECT_EQ(f.tokens.first_differing_scale, 1);
  EXPECT_DOUBLE_EQ(f.tokens.per_scale[1], 7.0 / 8);
  EXPECT_EQ(f.image_psnr, kInf);
  EXPECT_EQ(f.image_psnr_per_image, (std::vector<double>{kInf, kInf}));
  const double range = value_range(a.f_hat);
  EXPECT_DOUBLE_EQ(f.f_hat_peak, range) << seed_note(seed);
  EXPECT_NEAR(f.f_hat_psnr, 10 * std::log10(range * range * 256), 1e-9) << seed_note(seed);
  ASSERT_EQ(f.f_hat_psnr_per_image.size(), 2u);
  EXPECT_NEAR(f.f_hat_psnr_per_image[1], f.f_hat_psnr, 1e-9) << seed_note(seed);

  b.images = 3;
  EXPECT_THROW(compare_generations(a, b, patch_nums), varkv::Error);
}

// compare.png layout: read the grid back; every tile equals its run's image as image_io writes it,
// padding is black, and with labels a band above the columns holds white text and nothing else.
TEST(Fidelity, ComparisonGridHasOneColumnPerRunAndOneRowPerImage) {
  const auto seed = fresh_seed();
  std::mt19937_64 rng(seed);
  const int B = 1 + static_cast<int>(rng() % 3), H = 3 + static_cast<int>(rng() % 6), W = 40 + static_cast<int>(rng() % 30);
  const int runs_n = 1 + static_cast<int>(rng() % 4), pad = 2;
  std::uniform_real_distribution<float> u(-0.1f, 1.1f);  // beyond [0, 1]: clamped as image_io does
  std::vector<std::vector<float>> runs(runs_n, std::vector<float>(static_cast<std::size_t>(B) * 3 * H * W));
  for (auto& r : runs)
    for (auto& x : r) x = u(rng);
  std::vector<std::span<const float>> cols(runs.begin(), runs.end());
  std::vector<std::string> labels;
  for (int c = 0; c < runs_n; ++c) labels.push_back(c == 0 ? "full" : "snapkv:budget=0." + std::to_string(c));
  const auto path = std::filesystem::temp_directory_path() / ("varkv-fidelity-grid-" + std::to_string(rng()) + ".png");

  for (const bool with_labels : {false, true}) {
    const auto g = write_comparison_grid_png(path.string(), cols, B, H, W,
                                             with_labels ? std::span<const std::string>(labels) : std::span<const std::string>(),
                                             pad);
    int gw = 0, gh = 0, ch = 0;
    unsigned char* img = stbi_load(path.string().c_str(), &gw, &gh, &ch, 3);
    ASSERT_NE(img, nullptr) << stbi_failure_reason();
    EXPECT_EQ(g.header, with_labels ? kLabelHeight : 0);
    EXPECT_EQ(gw, runs_n * (W + pad) + pad) << seed_note(seed);
    EXPECT_EQ(gh, g.header + B * (H + pad) + pad) << seed_note(seed);
    EXPECT_EQ(gw, g.width);
    EXPECT_EQ(gh, g.height);
    std::vector<bool> covered(static_cast<std::size_t>(gw) * gh, false);
    for (int c = 0; c < runs_n; ++c)
      for (int b = 0; b < B; ++b) {
        const auto rgb = to_rgb8(runs[c], B, H, W, b);
        const int x0 = pad + c * (W + pad), y0 = g.header + pad + b * (H + pad);
        EXPECT_EQ(x0, g.tile_x(c));
        EXPECT_EQ(y0, g.tile_y(b));
        for (int y = 0; y < H; ++y)
          for (int x = 0; x < W; ++x) {
            covered[static_cast<std::size_t>(y0 + y) * gw + x0 + x] = true;
            for (int k = 0; k < 3; ++k)
              ASSERT_EQ(img[((y0 + y) * gw + x0 + x) * 3 + k], rgb[(y * W + x) * 3 + k])
                  << "run " << c << " image " << b << " at " << x << "," << y << " " << seed_note(seed);
          }
      }
    std::vector<int> white_per_column(runs_n, 0);
    for (int p = 0; p < gw * gh; ++p) {
      if (covered[p]) continue;
      const int r = img[p * 3], gr = img[p * 3 + 1], bl = img[p * 3 + 2];
      const int x = p % gw, y = p / gw;
      if (y < g.header && r == 255 && gr == 255 && bl == 255) {  // label text: inside a column's width
        const int c = (x - pad) / (W + pad);
        ASSERT_GE(x, pad);
        ASSERT_LT(x - g.tile_x(c), W) << "label pixel outside its column at " << x << "," << y;
        ++white_per_column[c];
        continue;
      }
      ASSERT_EQ(r | gr | bl, 0) << "background pixel " << x << "," << y << " is not black";
    }
    for (int c = 0; c < runs_n; ++c) {
      if (with_labels) EXPECT_GT(white_per_column[c], 20) << "column " << c << " has no label";
      else EXPECT_EQ(white_per_column[c], 0);
    }
    stbi_image_free(img);
  }
  std::filesystem::remove(path);

  std::vector<float> short_run(5);
  std::vector<std::span<const float>> bad{std::span<const float>(short_run)};
  EXPECT_THROW(write_comparison_grid_png(path.string(), bad, B, H, W), varkv::Error);
  EXPECT_THROW(write_comparison_grid_png(path.string(), {}, B, H, W), varkv::Error);
  labels.push_back("one too many");
  EXPECT_THROW(write_comparison_grid_png(path.string(), cols, B, H, W, labels), varkv::Error) << "more labels than runs";
}

}  // namespace

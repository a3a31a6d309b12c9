#include "varkv_reference/fidelity.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include <fmt/format.h>

#include "varkv/core/error.hpp"
#include "varkv_reference/image_io.hpp"



namespace varkv::ref {

double mean_squared_error(std::span<const float> reference, std::span<const float> test) {
  require(!reference.empty(), "mean squared error: empty input");
  require(reference.size() == test.size(), "mean squared error: reference has {} values, test {}", reference.size(),
          test.size());
  double sum = 0;
  for (std::size_t i = 0; i < reference.size(); ++i) {
    const double d = static_cast<double>(reference[i]) - static_cast<double>(test[i]);
    sum += d * d;
  }
  return sum / static_cast<double>(reference.size());
}

double psnr(std::span<const float> reference, std::span<const float> test, double peak) {
  require(std::isfinite(peak) && peak > 0, "PSNR: peak {} must be finite and > 0", peak);
  const double mse = mean_squared_error(reference, test);
  if (mse == 0) return std::numeric_limits<double>::infinity();
  return 10.0 * std::log10(peak * peak / mse);
}

std::vector<double> psnr_per_image(std::span<const float> reference, std::span<const float> test, int images,
                                   double peak) {
  require(images > 0, "PSNR per image: {} images", images);
  require(reference.size() == test.size(), "PSNR per image: reference has {} values, test {}", reference.size(),
          test.size());
  require(!reference.empty() && reference.size() % static_cast<std::size_t>(images) == 0,
          "PSNR per image: {} values do not split into {} equal images", reference.size(), images);
  const std::size_t each = reference.size() / static_cast<std::size_t>(images);
  std::vector<double> out;
  for (int b = 0; b < images; ++b)
    out.push_back(psnr(reference.subspan(b * each, each), test.subspan(b * each, each), peak));
  return out;
}

double value_range(std::span<const float> values) {
  require(!values.empty(), "value range: empty input");
  const auto [lo, hi] = std::minmax_element(values.begin(), values.end());
  return static_cast<double>(*hi) - static_cast<double>(*lo);
}

std::string format_psnr(double db, int decimals) {
  if (std::isinf(db) && db > 0) return "inf";
  return fmt::format("{:.{}f}", db, decimals);
}

TokenAgreement token_agreement(std::span<const std::int32_t> reference, std::span<const std::int32_t> test, int images,
                               std::span<const int> patch_nums) {
  require(images > 0, "token agreement: {} images", images);
  require(!patch_nums.empty(), "token agreement: empty scale schedule");
  std::int64_t L = 0;
  for (int pn : patch_nums) {
    require(pn > 0, "token agreement: scale side {} must be positive", pn);
    L += std::int64_t{pn} * pn;
  }
  const auto expected = static_cast<std::size_t>(L * images);
  require(reference.size() == expected, "token agreement: reference has {} tokens, expected {} images x {}",
          reference.size(), images, L);
  require(test.size() == expected, "token agreement: test has {} tokens, expected {} images x {}", test.size(), images,
          L);
  TokenAgreement a;
  std::int64_t same_all = 0, begin = 0;
  for (std::size_t s = 0; s < patch_nums.size(); ++s) {
    const std::int64_t n = std::int64_t{patch_nums[s]} * patch_nums[s];
    std::int64_t same = 0;
    for (int b = 0; b < images; ++b)
      for (std::int64_t i = 0; i < n; ++i) {
        const auto k = static_cast<std::size_t>(b * L + begin + i);
        same += reference[k] == test[k];
      }
    a.same_per_scale.push_back(same);
    a.tokens_per_scale.push_back(n * images);
    a.per_scale.push_back(static_cast<double>(same) / static_cast<double>(n * images));
    if (same != n * images && a.first_differing_scale < 0) a.first_differing_scale = static_cast<int>(s);
    same_all += same;
    begin += n;
  }
  a.overall = static_cast<double>(same_all) / static_cast<double>(L * images);
  return a;
}

GenerationFidelity compare_generations(const GenerationResult& reference, const GenerationResult& test,
                                       std::span<const int> patch_nums) {
  require(reference.images == test.images, "fidelity: reference has {} images, test {}", reference.images, test.images);
  GenerationFidelity f;
  f.tokens = token_agreement(reference.tokens, test.tokens, reference.images, patch_nums);
  if (!reference.pixels.empty() && !test.pixels.empty()) {
    f.image_psnr = psnr(reference.pixels, test.pixels, 1.0);
    f.image_psnr_per_image = psnr_per_image(reference.pixels, test.pixels, reference.images, 1.0);
  } else {
    f.image_psnr = std::numeric_limits<double>::quiet_NaN();
  }
  const double range = value_range(reference.f_hat);
  // A constant reference (range 0) has no scale of its own; fall back to 1 so PSNR stays defined.
  f.f_hat_peak = range > 0 ? range : 1.0;
  f.f_hat_psnr = psnr(reference.f_hat, test.f_hat, f.f_hat_peak);
  f.f_hat_psnr_per_image = psnr_per_image(reference.f_hat, test.f_hat, reference.images, f.f_hat_peak);
  return f;
}

namespace {

// Renders `text` in white into a [3, gh, gw] float image at (x, y), scaled by `scale`, clipped to
// [x, x + max_w).
void draw_label(std::vector<float>& image, std::int64_t gw, std::int64_t gh, std::int64_t x, std::int64_t y,
                std::int64_t max_w, int scale, const std::string& text) {
  for (const PixelRect& r : text_rects(text, scale))
    for (auto py = y + r.y0; py < y + r.y1; ++py)
      for (auto px = x + r.x0; px < x + r.x1; ++px)
        if (px >= x && px < x + max_w && px >= 0 && px < gw && py >= 0 && py < gh)
          for (int c = 0; c < 3; ++c) image[static_cast<std::size_t>((c * gh + py) * gw + px)] = 1.0f;
}

int label_width(const std::string& text) { return text_width(text); }

}  // namespace

ComparisonGridLayout comparison_grid_layout(int runs, int B, int H, int W, int padding, bool labels) {
  require(runs > 0, "comparison grid: no runs");
  require(B > 0 && H > 0 && W > 0, "comparison grid: batch {}, height {}, width {} must be positive", B, H, W);
  require(padding >= 0, "comparison grid: padding {} is negative", padding);
  ComparisonGridLayout g;
  g.padding = padding;
  g.tile_w = W;
  g.tile_h = H;
  g.header = labels ? kLabelHeight : 0;
  const std::int64_t gw = std::int64_t{runs} * (W + padding) + padding;
  const std::int64_t gh = g.header + std::int64_t{B} * (H + padding) + padding;
  require(gw <= (1 << 16) && gh <= (1 << 16), "comparison grid: {} x {} pixels is too large for one PNG", gw, gh);
  g.width = static_cast<int>(gw);
  g.height = static_cast<int>(gh);
  return g;
}

ComparisonGridLayout write_comparison_grid_png(const std::string& path, std::span<const std::span<const float>> runs,
                                               int B, int H, int W, std::span<const std::string> labels, int padding) {
  require(!runs.empty(), "comparison grid '{}': no runs", path);
  require(labels.empty() || labels.size() == runs.size(), "comparison grid '{}': {} labels for {} runs", path,
          labels.size(), runs.size());
  const ComparisonGridLayout g = comparison_grid_layout(static_cast<int>(runs.size()), B, H, W, padding, !labels.empty());
  const std::size_t plane = static_cast<std::size_t>(H) * W;
  for (std::size_t c = 0; c < runs.size(); ++c)
    require(runs[c].size() == static_cast<std::size_t>(B) * 3 * plane,
            "comparison grid '{}': run {} has {} pixel values, expected [{}, 3, {}, {}]", path, c, runs[c].size(), B, H, W);
  const std::int64_t gw = g.width, gh = g.height;
  // One [1, 3, gh, gw] image in the decoder's [0, 1] range (black background), written by image_io.
  std::vector<float> grid(static_cast<std::size_t>(3 * gw * gh), 0.0f);
  for (std::size_t c = 0; c < runs.size(); ++c) {
    const std::int64_t x0 = g.tile_x(static_cast<int>(c));
    if (!labels.empty()) {
      // Twice the font's size where the label fits the column, else its own size, clipped.
      const int scale = 2 * label_width(labels[c]) <= W ? 2 : 1;
      draw_label(grid, gw, gh, x0, (kLabelHeight - 12 * scale) / 2 + 1, W, scale, labels[c]);
    }
    for (int b = 0; b < B; ++b) {
      const std::int64_t y0 = g.tile_y(b);
      for (int ch = 0; ch < 3; ++ch)
        for (int y = 0; y < H; ++y) {
          const float* src = runs[c].data() + (std::size_t(b) * 3 + ch) * plane + std::size_t(y) * W;
          std::copy_n(src, W, grid.begin() + static_cast<std::ptrdiff_t>((ch * gh + y0 + y) * gw + x0));
        }
    }
  }
  write_png(path, grid, 1, g.height, g.width, 0);
  return g;
}

}  // namespace varkv::ref

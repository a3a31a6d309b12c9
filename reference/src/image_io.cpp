#include "varkv_reference/image_io.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "varkv/core/error.hpp"

#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wpedantic"
#pragma GCC diagnostic ignored "-Wunused-function"
#endif
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#include <stb/stb_image_write.h>
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wpedantic"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wconversion"
#endif
#include <stb/stb_easy_font.h>
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

namespace varkv::ref {
namespace {
void check(std::span<const float> pixels, int B, int H, int W) {
  require(B > 0 && H > 0 && W > 0, "image: batch {}, height {}, width {} must be positive", B, H, W);
  require(pixels.size() == static_cast<std::size_t>(B) * 3 * H * W, "image: {} pixel values, expected [{}, 3, {}, {}]",
          pixels.size(), B, H, W);
}
std::uint8_t to_byte(float v) {
  const float s = v * 255.0f + 0.5f;
  if (!(s > 0.0f)) return 0;  // NaN -> 0
  return static_cast<std::uint8_t>(std::min(s, 255.0f));
}
void write(const std::string& path, int w, int h, const std::vector<std::uint8_t>& rgb) {
  require(stbi_write_png(path.c_str(), w, h, 3, rgb.data(), w * 3) != 0, "cannot write PNG '{}'", path);
}
}  // namespace

std::vector<std::uint8_t> to_rgb8(std::span<const float> pixels, int B, int H, int W, int b) {
  check(pixels, B, H, W);
  require(b >= 0 && b < B, "image: index {} outside 0..{}", b, B - 1);
  std::vector<std::uint8_t> rgb(static_cast<std::size_t>(H) * W * 3);
  const std::size_t plane = static_cast<std::size_t>(H) * W;
  for (int c = 0; c < 3; ++c)
    for (std::size_t i = 0; i < plane; ++i) rgb[i * 3 + c] = to_byte(pixels[(std::size_t(b) * 3 + c) * plane + i]);
  return rgb;
}

void write_png(const std::string& path, std::span<const float> pixels, int B, int H, int W, int b) {
  write(path, W, H, to_rgb8(pixels, B, H, W, b));
}

void write_grid_png(const std::string& path, std::span<const float> pixels, int B, int H, int W, int padding) {
  check(pixels, B, H, W);
  require(padding >= 0, "image grid: padding {} is negative", padding);
  const int cols = static_cast<int>(std::ceil(std::sqrt(static_cast<double>(B))));
  const int rows = (B + cols - 1) / cols;
  const int gw = cols * (W + padding) + padding, gh = rows * (H + padding) + padding;
  std::vector<std::uint8_t> grid(static_cast<std::size_t>(gw) * gh * 3, 0);
  for (int b = 0; b < B; ++b) {
    const auto rgb = to_rgb8(pixels, B, H, W, b);
    const int x0 = padding + (b % cols) * (W + padding), y0 = padding + (b / cols) * (H + padding);
    for (int y = 0; y < H; ++y)
      std::copy_n(rgb.begin() + static_cast<std::ptrdiff_t>(y) * W * 3, W * 3,
                  grid.begin() + (static_cast<std::ptrdiff_t>(y0 + y) * gw + x0) * 3);
  }
  write(path, gw, gh, grid);
}

std::vector<PixelRect> text_rects(const std::string& text, int scale) {
  std::vector<char> buf(text.begin(), text.end());
  buf.push_back('\0');
  // stb_easy_font emits 4 vertices of 16 bytes (x, y, z floats + colour) per axis-aligned quad.
  std::vector<char> quads(270 * (text.size() + 1) * 4 * 16);
  const int n = stb_easy_font_print(0, 0, buf.data(), nullptr, quads.data(), static_cast<int>(quads.size()));
  std::vector<PixelRect> rects;
  rects.reserve(static_cast<std::size_t>(n));
  for (int q = 0; q < n; ++q) {
    float xs[4], ys[4];
    for (int v = 0; v < 4; ++v) {
      const char* p = quads.data() + (static_cast<std::size_t>(q) * 4 + v) * 16;
      std::memcpy(&xs[v], p, 4);
      std::memcpy(&ys[v], p + 4, 4);
    }
    rects.push_back({static_cast<int>(std::lround(*std::min_element(xs, xs + 4) * scale)),
                     static_cast<int>(std::lround(*std::min_element(ys, ys + 4) * scale)),
                     static_cast<int>(std::lround(*std::max_element(xs, xs + 4) * scale)),
                     static_cast<int>(std::lround(*std::max_element(ys, ys + 4) * scale))});
  }
  return rects;
}

int text_width(const std::string& text, int scale) {
  std::vector<char> buf(text.begin(), text.end());
  buf.push_back('\0');
  return stb_easy_font_width(buf.data()) * scale;
}

}  // namespace varkv::ref

#pragma once
//! \file
//! Writing generated images as PNG (stb_image_write): one file per image and a grid of all.
//!
//! \par Overview
//! Pixels come as the VQ-VAE decoder leaves them, [B, 3, H, W] fp32 in [0, 1]; they become 8-bit
//! RGB as torchvision's `save_image` does it: clamp(x * 255 + 0.5, 0, 255), truncated.
//!
//! \par Snippet
//! \code
//! varkv::ref::write_png("out/image_000.png", pixels, B, H, W, 0);
//! varkv::ref::write_grid_png("out/grid.png", pixels, B, H, W);
//! \endcode

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace varkv::ref {

//! Image b of pixels [B, 3, H, W] as interleaved 8-bit RGB [H, W, 3].
std::vector<std::uint8_t> to_rgb8(std::span<const float> pixels, int B, int H, int W, int b);
//! Writes image b as an RGB PNG; throws varkv::Error naming the path when it cannot.
void write_png(const std::string& path, std::span<const float> pixels, int B, int H, int W, int b);
//! Writes all images in a grid of ceil(sqrt(B)) columns with `padding` black pixels around each.
void write_grid_png(const std::string& path, std::span<const float> pixels, int B, int H, int W, int padding = 2);

//! A filled pixel rectangle [x0, x1) x [y0, y1).
struct PixelRect { int x0, y0, x1, y1; };
//! The rectangles that draw `text` with a small bitmap font (stb_easy_font, ~6 x 12 px per character at
//! scale 1), magnified by `scale`, with the text's top-left corner at (0, 0). Labels of plots and grids.
std::vector<PixelRect> text_rects(const std::string& text, int scale = 1);
//! Width in pixels of `text` drawn by `text_rects` at `scale`.
int text_width(const std::string& text, int scale = 1);

}  // namespace varkv::ref

#pragma once
//! \file
//! Fidelity of a compressed-cache generation against the full-cache one: PSNR of the decoded images
//! and of f_hat, token agreement per scale, and a PNG grid with one column per run.
//!
//! \par Overview
//! - `psnr(reference, test, peak)` = 10 log10(peak^2 / MSE) in dB, accumulated in double; +inf when
//!   the two are identical (MSE 0). Images use peak 1 (decoder pixels lie in [0, 1]); f_hat, whose
//!   values are unbounded, uses the reference's range max - min over the whole batch
//!   (`value_range`), as scikit-image's `data_range` does.
//! - `token_agreement` compares token arrays [B, L] (L = sum of side^2 over the schedule) scale by
//!   scale: the fraction of identical tokens at each scale over all images. After the first scale
//!   where tokens differ, the later scales see different inputs, so agreement there measures how far
//!   the generation drifted, not a per-scale error of the cache alone.
//! - `compare_generations` bundles both for two `GenerationResult`s of the same request.
//! - `write_comparison_grid_png` lays out runs as columns (e.g. full cache first, then each policy)
//!   and images as rows, with an optional label above each column.
//!
//! \par Snippet
//! \code
//! auto f = varkv::ref::compare_generations(full_run, snapkv_run, var.config().patch_nums);
//! f.tokens.per_scale[3];   // fraction of scale 3's tokens equal to the full-cache run's
//! f.image_psnr;            // dB over all images (+inf: identical)
//! \endcode

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "varkv_reference/generate.hpp"

namespace varkv::ref {

//! Mean squared difference, in double; throws varkv::Error when the sizes differ or are zero.
double mean_squared_error(std::span<const float> reference, std::span<const float> test);
//! 10 log10(peak^2 / MSE) in dB; +inf when identical. `peak` must be finite and > 0.
double psnr(std::span<const float> reference, std::span<const float> test, double peak);
//! PSNR of each of `images` equally sized consecutive blocks (one per image).
std::vector<double> psnr_per_image(std::span<const float> reference, std::span<const float> test, int images,
                                   double peak);
//! max - min of the values (0 for a constant input); throws on an empty input.
double value_range(std::span<const float> values);
//! "inf" for +inf, else the value with `decimals` decimals (e.g. "31.25").
std::string format_psnr(double db, int decimals = 2);

struct TokenAgreement {
  std::vector<std::int64_t> same_per_scale;    //!< identical tokens at each scale, over all images
  std::vector<std::int64_t> tokens_per_scale;  //!< images x side^2
  std::vector<double> per_scale;               //!< same / tokens at each scale
  double overall = 1.0;                        //!< identical tokens / all tokens
  int first_differing_scale = -1;              //!< first scale where any token differs; -1: none
};

//! Token agreement of `test` with `reference`, both [images, L], scale by scale of `patch_nums`
//! (square token maps).
TokenAgreement token_agreement(std::span<const std::int32_t> reference, std::span<const std::int32_t> test, int images,
                               std::span<const int> patch_nums);

struct GenerationFidelity {
  TokenAgreement tokens;
  double image_psnr = 0;                  //!< over all images (pooled MSE), peak 1
  std::vector<double> image_psnr_per_image;
  double f_hat_psnr = 0;                  //!< over all images, peak = range of the reference's f_hat
  std::vector<double> f_hat_psnr_per_image;
  double f_hat_peak = 0;                  //!< the peak used for f_hat
};

//! Everything above for two runs of the same request (same images, schedule and decoder). Image PSNR
//! needs both runs decoded; without pixels it is NaN.
GenerationFidelity compare_generations(const GenerationResult& reference, const GenerationResult& test,
                                       std::span<const int> patch_nums);

//! Where the tiles of a comparison grid lie: a header band of `header` pixels (the labels) on top,
//! then row b, column c at (tile_x(c), tile_y(b)), `padding` black pixels around every tile.
struct ComparisonGridLayout {
  int width = 0, height = 0, header = 0, padding = 0, tile_w = 0, tile_h = 0;
  int tile_x(int column) const { return padding + column * (tile_w + padding); }
  int tile_y(int row) const { return header + padding + row * (tile_h + padding); }
};
//! Height of the label band (room for the 2x font and a gap).
inline constexpr int kLabelHeight = 30;
//! The layout of `runs` columns of B images of H x W, with or without a label band.
ComparisonGridLayout comparison_grid_layout(int runs, int B, int H, int W, int padding, bool labels);

//! Writes a PNG grid: column c holds run c's images ([B, 3, H, W] in [0, 1] each, converted as
//! image_io does), row b image b. `labels` (none, or one per run) are drawn in white above the
//! columns (stb_easy_font, doubled where the label fits the column width, else clipped to it).
ComparisonGridLayout write_comparison_grid_png(const std::string& path, std::span<const std::span<const float>> runs,
                                               int B, int H, int W, std::span<const std::string> labels = {},
                                               int padding = 2);

}  // namespace varkv::ref

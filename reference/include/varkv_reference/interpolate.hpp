#pragma once
//! \file
//! PyTorch's `F.interpolate` resampling modes used by the VAR quantizer and decoder, bit-faithful in
//! formula and evaluation order to PyTorch's fp32 kernels.
//!
//! \par Overview
//! All functions work on `planes` independent row-major [h, w] planes (a [B, C, h, w] tensor is
//! B * C planes):
//! - `resize_bicubic`: mode='bicubic', align_corners=False, A = -0.75; source coordinate
//!   scale * (dst + 0.5) - 0.5 with scale = in / out (no clamping of the coordinate), the four taps'
//!   indices clamped to the border; rows first, then columns, in fp32 like PyTorch.
//! - `resize_area`: mode='area' == adaptive_avg_pool2d: output cell i averages input
//!   [floor(i * in / out), ceil((i + 1) * in / out)).
//! - `upsample_nearest2x`: mode='nearest', scale_factor=2: out[y][x] = in[y / 2][x / 2].
//!
//! \par Snippet
//! \code
//! std::vector<float> up(B * C * 16 * 16);
//! varkv::ref::resize_bicubic(h, B * C, 3, 3, up, 16, 16);  // 3x3 token map -> 16x16
//! \endcode

#include <cstdint>
#include <span>

namespace varkv::ref {

//! PyTorch bicubic (align_corners=False, A=-0.75). Throws varkv::Error on mismatched sizes.
void resize_bicubic(std::span<const float> in, std::int64_t planes, int in_h, int in_w, std::span<float> out, int out_h,
                    int out_w);

//! PyTorch area resampling (adaptive average pooling). Throws varkv::Error on mismatched sizes.
void resize_area(std::span<const float> in, std::int64_t planes, int in_h, int in_w, std::span<float> out, int out_h,
                 int out_w);

//! PyTorch nearest upsampling by 2: in [planes, h, w] -> out [planes, 2h, 2w].
void upsample_nearest2x(std::span<const float> in, std::int64_t planes, int h, int w, std::span<float> out);

//! One output coordinate's four bicubic taps along one axis: source indices clamped to [0, in_size)
//! and their Keys (A = -0.75) weights `coef`, in fp32 exactly as `resize_bicubic` computes them.
//! Public so that a device resampler can take its taps from this code and so match
//! `resize_bicubic` bit for bit instead of re-deriving the arithmetic.
struct BicubicTaps {
  int index[4];
  float coef[4];
};

//! The taps of output coordinate `dst` when resizing `in_size` samples to `out_size` (both > 0).
BicubicTaps bicubic_taps(int dst, int in_size, int out_size);

}  // namespace varkv::ref

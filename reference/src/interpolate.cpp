#include "varkv_reference/interpolate.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include <varkv/core/error.hpp>

namespace varkv::ref {

namespace {

void check_sizes(const char* what, std::size_t in_size, std::size_t out_size, std::int64_t planes, int in_h, int in_w,
                 int out_h, int out_w) {
  require(planes >= 0 && in_h > 0 && in_w > 0 && out_h > 0 && out_w > 0,
          "{}: invalid sizes: {} planes, {}x{} -> {}x{}", what, planes, in_h, in_w, out_h, out_w);
  require(in_size == static_cast<std::size_t>(planes) * in_h * in_w, "{}: input holds {} floats, expected {} x {} x {}",
          what, in_size, planes, in_h, in_w);
  require(out_size == static_cast<std::size_t>(planes) * out_h * out_w,
          "{}: output holds {} floats, expected {} x {} x {}", what, out_size, planes, out_h, out_w);
}

// PyTorch's cubic convolution kernels (Keys, A = -0.75): |x| <= 1 and 1 < |x| < 2.
constexpr float kCubicA = -0.75f;
float cubic1(float x) { return ((kCubicA + 2) * x - (kCubicA + 3)) * x * x + 1; }
float cubic2(float x) { return ((kCubicA * x - 5 * kCubicA) * x + 8 * kCubicA) * x - 4 * kCubicA; }

}  // namespace

// One output coordinate's taps, as PyTorch's kernel computes them in fp32.
BicubicTaps bicubic_taps(int dst, int in_size, int out_size) {
  const float scale = static_cast<float>(in_size) / static_cast<float>(out_size);
  const float real = scale * (static_cast<float>(dst) + 0.5f) - 0.5f;
  const float fl = std::floor(real);
  const int i0 = static_cast<int>(fl);
  const float t = real - fl;
  BicubicTaps tap;
  tap.coef[0] = cubic2(t + 1.0f);
  tap.coef[1] = cubic1(t);
  const float u = 1.0f - t;
  tap.coef[2] = cubic1(u);
  tap.coef[3] = cubic2(u + 1.0f);
  for (int k = 0; k < 4; ++k) tap.index[k] = std::clamp(i0 - 1 + k, 0, in_size - 1);
  return tap;
}

void resize_bicubic(std::span<const float> in, std::int64_t planes, int in_h, int in_w, std::span<float> out, int out_h,
                    int out_w) {
  check_sizes("resize_bicubic", in.size(), out.size(), planes, in_h, in_w, out_h, out_w);
  if (in_h == out_h && in_w == out_w) {  // PyTorch copies in this case
    std::copy(in.begin(), in.end(), out.begin());
    return;
  }
  std::vector<BicubicTaps> ty(out_h), tx(out_w);
  for (int y = 0; y < out_h; ++y) ty[y] = bicubic_taps(y, in_h, out_h);
  for (int x = 0; x < out_w; ++x) tx[x] = bicubic_taps(x, in_w, out_w);
#pragma omp parallel for schedule(static) if (planes * out_h * out_w > 65536)
  for (std::int64_t p = 0; p < planes; ++p) {
    const float* src = in.data() + p * in_h * in_w;
    float* dst = out.data() + p * out_h * out_w;
    for (int y = 0; y < out_h; ++y) {
      const BicubicTaps& a = ty[y];
      for (int x = 0; x < out_w; ++x) {
        const BicubicTaps& b = tx[x];
        float rows[4];
        for (int k = 0; k < 4; ++k) {
          const float* r = src + a.index[k] * in_w;
          rows[k] = r[b.index[0]] * b.coef[0] + r[b.index[1]] * b.coef[1] + r[b.index[2]] * b.coef[2] +
                    r[b.index[3]] * b.coef[3];
        }
        dst[y * out_w + x] = rows[0] * a.coef[0] + rows[1] * a.coef[1] + rows[2] * a.coef[2] + rows[3] * a.coef[3];
      }
    }
  }
}

void resize_area(std::span<const float> in, std::int64_t planes, int in_h, int in_w, std::span<float> out, int out_h,
                 int out_w) {
  check_sizes("resize_area", in.size(), out.size(), planes, in_h, in_w, out_h, out_w);
  const auto start = [](int i, int in_size, int out_size) {
    return static_cast<int>((static_cast<std::int64_t>(i) * in_size) / out_size);
  };
  const auto end = [](int i, int in_size, int out_size) {
    return static_cast<int>(((static_cast<std::int64_t>(i) + 1) * in_size + out_size - 1) / out_size);
  };
#pragma omp parallel for schedule(static) if (planes * out_h * out_w > 65536)
  for (std::int64_t p = 0; p < planes; ++p) {
    const float* src = in.data() + p * in_h * in_w;
    float* dst = out.data() + p * out_h * out_w;
    for (int y = 0; y < out_h; ++y) {
      const int y0 = start(y, in_h, out_h), y1 = end(y, in_h, out_h);
      for (int x = 0; x < out_w; ++x) {
        const int x0 = start(x, in_w, out_w), x1 = end(x, in_w, out_w);
        float sum = 0.0f;
        for (int iy = y0; iy < y1; ++iy)
          for (int ix = x0; ix < x1; ++ix) sum += src[iy * in_w + ix];
        dst[y * out_w + x] = sum / static_cast<float>(y1 - y0) / static_cast<float>(x1 - x0);
      }
    }
  }
}

void upsample_nearest2x(std::span<const float> in, std::int64_t planes, int h, int w, std::span<float> out) {
  check_sizes("upsample_nearest2x", in.size(), out.size(), planes, h, w, 2 * h, 2 * w);
#pragma omp parallel for schedule(static) if (planes * h * w > 65536)
  for (std::int64_t p = 0; p < planes; ++p) {
    const float* src = in.data() + p * h * w;
    float* dst = out.data() + p * 4 * h * w;
    for (int y = 0; y < 2 * h; ++y) {
      const float* r = src + (y / 2) * w;
      float* o = dst + y * 2 * w;
      for (int x = 0; x < w; ++x) o[2 * x] = o[2 * x + 1] = r[x];
    }
  }
}

}  // namespace varkv::ref

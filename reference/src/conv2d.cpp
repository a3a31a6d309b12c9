#include "varkv_reference/conv2d.hpp"

#include <algorithm>
#include <cstring>

#include <varkv/core/error.hpp>

#include "varkv_reference/safetensors.hpp"

namespace varkv::ref {

namespace {

constexpr int kCoTile = 4;  // output channels per register tile
constexpr int kXTile = 16;  // output pixels per register tile (two 8-float vectors)

typedef float Vec8 __attribute__((vector_size(32)));

struct RowArgs {
  const float* in;      // padded input of one image [cin][Hp][Wp]
  const float* wpack;   // this channel tile's packed weights [cin][k][k][kCoTile]
  const float* bias;    // kCoTile biases (zero past out)
  float* out;           // output of one image, first channel of the tile, row y: out + c * plane
  std::int64_t plane;   // H * W
  std::int64_t in_plane;  // Hp * Wp
  int cin, k, Wp, W, valid;  // valid = output channels of this tile that exist
};

// By reference: returning an 8-float vector by value from a non-AVX function changes the ABI (-Wpsabi).
[[gnu::always_inline]] inline void load8(Vec8& v, const float* p) { std::memcpy(&v, p, sizeof v); }

// One output row (all W pixels) of one 4-channel tile. `in` already points at the top-left tap of
// the row (row y of the padded input is output row y's first kernel row).
// Accumulates one tile of kXTile pixels starting at x0 for the 4 output channels of the tile.
[[gnu::always_inline]] inline void conv_tile(const RowArgs& a, int x0, Vec8 (&acc)[kCoTile][2]) {
  const int k = a.k;
  for (int t = 0; t < kCoTile; ++t) acc[t][0] = acc[t][1] = Vec8{} + a.bias[t];
  for (int ci = 0; ci < a.cin; ++ci) {
    const float* base = a.in + ci * a.in_plane + x0;
    const float* w = a.wpack + ci * k * k * kCoTile;
    for (int kh = 0; kh < k; ++kh) {
      const float* r = base + kh * a.Wp;
      for (int kw = 0; kw < k; ++kw, w += kCoTile) {
        Vec8 i0, i1;
        load8(i0, r + kw);
        load8(i1, r + kw + 8);
        for (int t = 0; t < kCoTile; ++t) {
          acc[t][0] += w[t] * i0;
          acc[t][1] += w[t] * i1;
        }
      }
    }
  }
}

// One output row (all W pixels) of one 4-channel tile. `in` already points at the top-left tap of
// the row (row y of the padded input is output row y's first kernel row).
[[gnu::always_inline]] inline void conv_row_impl(const RowArgs& a) {
  int x0 = 0;
  Vec8 acc[kCoTile][2];
  for (; x0 + kXTile <= a.W; x0 += kXTile) {
    conv_tile(a, x0, acc);
    for (int t = 0; t < a.valid; ++t) {
      std::memcpy(a.out + t * a.plane + x0, &acc[t][0], sizeof(Vec8));
      std::memcpy(a.out + t * a.plane + x0 + 8, &acc[t][1], sizeof(Vec8));
    }
  }
  if (x0 < a.W) {
    // Tail of fewer than kXTile pixels: compute a full tile (the padded input carries kXTile floats
    // of slack past its end, so the reads stay inside it) and store only the valid lanes.
    conv_tile(a, x0, acc);
    float lanes[kXTile];
    for (int t = 0; t < a.valid; ++t) {
      std::memcpy(lanes, &acc[t][0], sizeof(Vec8));
      std::memcpy(lanes + 8, &acc[t][1], sizeof(Vec8));
      std::copy_n(lanes, a.W - x0, a.out + t * a.plane + x0);
    }
  }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
[[gnu::target("avx2,fma")]] void conv_row_avx2(const RowArgs& a) { conv_row_impl(a); }
#define VARKV_HAVE_AVX2_PATH 1
#endif
void conv_row_generic(const RowArgs& a) { conv_row_impl(a); }

using RowFn = void (*)(const RowArgs&);
RowFn pick_row_fn() {
#ifdef VARKV_HAVE_AVX2_PATH
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return conv_row_avx2;
#endif
  return conv_row_generic;
}

}  // namespace

Conv2d::Conv2d(int in_channels, int out_channels, int kernel, std::vector<float> weight, std::vector<float> bias)
    : in_(in_channels), out_(out_channels), k_(kernel), weight_(std::move(weight)), bias_(std::move(bias)) {
  require(in_ > 0 && out_ > 0 && k_ > 0 && k_ % 2 == 1, "Conv2d: invalid geometry in={} out={} kernel={}", in_, out_,
          k_);
  const std::size_t wn = static_cast<std::size_t>(out_) * in_ * k_ * k_;
  require(weight_.size() == wn, "Conv2d: weight holds {} floats, expected [{}, {}, {}, {}]", weight_.size(), out_, in_,
          k_, k_);
  if (bias_.empty()) bias_.assign(out_, 0.0f);
  require(bias_.size() == static_cast<std::size_t>(out_), "Conv2d: bias holds {} floats, expected [{}]", bias_.size(),
          out_);
  const int tiles = (out_ + kCoTile - 1) / kCoTile;
  const int kk = k_ * k_;
  packed_.assign(static_cast<std::size_t>(tiles) * in_ * kk * kCoTile, 0.0f);
  for (int co = 0; co < out_; ++co)
    for (int ci = 0; ci < in_; ++ci)
      for (int tap = 0; tap < kk; ++tap)
        packed_[((static_cast<std::size_t>(co / kCoTile) * in_ + ci) * kk + tap) * kCoTile + co % kCoTile] =
            weight_[(static_cast<std::size_t>(co) * in_ + ci) * kk + tap];
}

Conv2d Conv2d::load(const SafetensorsFile& f, const std::string& prefix, int in_channels, int out_channels,
                    int kernel) {
  const std::int64_t wshape[] = {out_channels, in_channels, kernel, kernel};
  const std::int64_t bshape[] = {out_channels};
  return Conv2d(in_channels, out_channels, kernel, f.load(prefix + ".weight", wshape).data,
                f.load(prefix + ".bias", bshape).data);
}

void Conv2d::forward(std::span<const float> in, std::span<float> out, int B, int H, int W) const {
  require(B >= 0 && H > 0 && W > 0, "Conv2d: invalid input size B={} H={} W={}", B, H, W);
  const std::int64_t plane = static_cast<std::int64_t>(H) * W;
  require(in.size() == static_cast<std::size_t>(B * in_ * plane), "Conv2d: input holds {} floats, expected [{}, {}, {}, {}]",
          in.size(), B, in_, H, W);
  require(out.size() == static_cast<std::size_t>(B * out_ * plane),
          "Conv2d: output holds {} floats, expected [{}, {}, {}, {}]", out.size(), B, out_, H, W);
  static const RowFn row_fn = pick_row_fn();
  const int pad = k_ / 2;
  const int Hp = H + 2 * pad, Wp = W + 2 * pad;
  const int tiles = (out_ + kCoTile - 1) / kCoTile;
  // Zero border of `pad` pixels, plus kXTile floats of slack for the tail tile's full-width reads.
  std::vector<float> padded(static_cast<std::size_t>(in_) * Hp * Wp + kXTile, 0.0f);
  std::vector<float> bias_tiles(static_cast<std::size_t>(tiles) * kCoTile, 0.0f);
  std::copy(bias_.begin(), bias_.end(), bias_tiles.begin());
  for (int b = 0; b < B; ++b) {
    const float* src = in.data() + static_cast<std::size_t>(b) * in_ * plane;
#pragma omp parallel for schedule(static) if (in_ * plane > 32768)
    for (int ci = 0; ci < in_; ++ci)
      for (int y = 0; y < H; ++y)
        std::copy_n(src + ci * plane + y * W, W, padded.data() + (static_cast<std::size_t>(ci) * Hp + y + pad) * Wp + pad);
    src = padded.data();
    float* dst = out.data() + static_cast<std::size_t>(b) * out_ * plane;
    const std::int64_t items = static_cast<std::int64_t>(H) * tiles;
    // Row-major over (y, tile): the few input rows of one y stay in cache across all channel tiles.
#pragma omp parallel for schedule(static) if (items * in_ * k_ * k_ * W > 200000)
    for (std::int64_t item = 0; item < items; ++item) {
      const int y = static_cast<int>(item / tiles), tile = static_cast<int>(item % tiles);
      RowArgs a;
      a.in = src + static_cast<std::size_t>(y) * Wp;
      a.wpack = packed_.data() + static_cast<std::size_t>(tile) * in_ * k_ * k_ * kCoTile;
      a.bias = bias_tiles.data() + tile * kCoTile;
      a.out = dst + static_cast<std::size_t>(tile) * kCoTile * plane + static_cast<std::size_t>(y) * W;
      a.plane = plane;
      a.in_plane = static_cast<std::int64_t>(Hp) * Wp;
      a.cin = in_;
      a.k = k_;
      a.Wp = Wp;
      a.W = W;
      a.valid = std::min(kCoTile, out_ - tile * kCoTile);
      row_fn(a);
    }
  }
}

std::vector<float> Conv2d::forward(std::span<const float> in, int B, int H, int W) const {
  std::vector<float> out(static_cast<std::size_t>(B) * out_ * H * W);
  forward(in, out, B, H, W);
  return out;
}

}  // namespace varkv::ref

#pragma once
//! \file
//! fp32 2-D convolution (stride 1, zero padding kernel / 2, odd square kernels), PyTorch
//! `nn.Conv2d` semantics and weight layout [out, in, k, k].
//!
//! \par Overview
//! The VQ-VAE decoder spends nearly all its time here. Weights are repacked once into tiles of four
//! output channels; each output row tile of 4 channels x 16 pixels is accumulated in registers
//! (GCC/Clang vector extensions; an AVX2+FMA copy is chosen at run time where the CPU has it) over
//! every input channel and kernel tap of a zero-padded copy of the input. OpenMP spreads
//! (row, channel tile) pairs over threads. Accumulation is fp32, in a different order than
//! PyTorch's (cuDNN) kernels: results agree to fp32 rounding, not bit for bit.
//!
//! \par Snippet
//! \code
//! varkv::ref::Conv2d conv(32, 64, 3, weight, bias);      // weight [64, 32, 3, 3], bias [64]
//! std::vector<float> y = conv.forward(x, B, H, W);       // x [B, 32, H, W] -> y [B, 64, H, W]
//! \endcode

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace varkv::ref {

class SafetensorsFile;

class Conv2d {
 public:
  Conv2d() = default;
  //! weight [out, in, k, k] (PyTorch layout), bias [out] (empty = no bias). Throws varkv::Error on bad sizes.
  Conv2d(int in_channels, int out_channels, int kernel, std::vector<float> weight, std::vector<float> bias);
  //! Loads `<prefix>.weight` [out, in, k, k] and `<prefix>.bias` [out] with shape checks.
  static Conv2d load(const SafetensorsFile& f, const std::string& prefix, int in_channels, int out_channels, int kernel);

  int in_channels() const { return in_; }
  int out_channels() const { return out_; }
  int kernel() const { return k_; }
  const std::vector<float>& weight() const { return weight_; }
  const std::vector<float>& bias() const { return bias_; }

  //! in [B, in, H, W] -> out [B, out, H, W]. Throws varkv::Error on mismatched sizes.
  void forward(std::span<const float> in, std::span<float> out, int B, int H, int W) const;
  std::vector<float> forward(std::span<const float> in, int B, int H, int W) const;

 private:
  int in_ = 0, out_ = 0, k_ = 0;
  std::vector<float> weight_, bias_;
  std::vector<float> packed_;  // [out tiles][in][k][k][4], zero past `out`
};

}  // namespace varkv::ref

#pragma once
//! \file 1-D max pooling along token (candidate) order: stride 1, same padding, odd kernel.
#include <algorithm>
#include <span>
#include <vector>
#include "varkv/core/error.hpp"
namespace varkv::eviction {
inline std::vector<float> max_pool_1d(std::span<const float> x, int kernel) {
  require(kernel >= 1 && kernel % 2 == 1, "max pool: kernel {} must be odd and >= 1", kernel);
  const int n = static_cast<int>(x.size()), r = kernel / 2;
  std::vector<float> y(x.size());
  for (int i = 0; i < n; ++i) {
    float m = x[i];
    for (int j = std::max(0, i - r); j <= std::min(n - 1, i + r); ++j) m = std::max(m, x[j]);
    y[i] = m;
  }
  return y;
}
}  // namespace varkv::eviction

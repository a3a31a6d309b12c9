#pragma once
// Error measures shared by the tests that compare a kernel with its CPU reference.
#include <algorithm>
#include <cmath>
#include <vector>

namespace varkv::testing {

//! ||got - ref||_F / ||ref||_F in double; +inf when any difference is NaN (an unwritten, poisoned output).
inline double rel_fro(const std::vector<float>& got, const std::vector<float>& ref) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    const double e = static_cast<double>(got[i]) - ref[i];
    num += e * e;
    den += static_cast<double>(ref[i]) * ref[i];
  }
  return std::isnan(num) ? INFINITY : std::sqrt(num / std::max(den, 1e-30));
}

}  // namespace varkv::testing

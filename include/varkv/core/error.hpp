#pragma once
//! \file
//! The one exception type of varkv and the helper that formats its message.
//!
//! Why: every bad input (a tensor's shape, a budget, a file) must end in one clear sentence that
//! names the problem; callers catch a single type.

#include <stdexcept>
#include <string>
#include <utility>

#include <fmt/format.h>

namespace varkv {

//! Thrown for every invalid argument, shape, budget or file that varkv detects.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

//! Throws varkv::Error with an fmt-formatted message.
template <class... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

//! Throws varkv::Error with the formatted message unless `condition` holds.
template <class... Args>
void require(bool condition, fmt::format_string<Args...> format, Args&&... args) {
  if (!condition) fail(format, std::forward<Args>(args)...);
}

}  // namespace varkv

#pragma once
// Where the golden data lives and what its absence means: one copy of the policy that the
// golden-data tests share (skip with a message when the data is missing, fail under CI=true, where
// it must be present), so that their behaviour cannot drift apart.
#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <initializer_list>
#include <optional>
#include <string>

namespace varkv::testing {

//! True under CI (the environment variable CI equals "true"), where missing golden data fails.
inline bool on_ci() {
  const char* ci = std::getenv("CI");
  return ci && std::string(ci) == "true";
}

#ifdef VARKV_GOLDEN_DIR
//! The golden data's root: the VARKV_GOLDEN_DIR environment variable, else the build's
//! VARKV_GOLDEN_DIR definition (the environment lets a run use data elsewhere without a rebuild).
inline std::string golden_root() {
  if (const char* env = std::getenv("VARKV_GOLDEN_DIR")) return env;
  return VARKV_GOLDEN_DIR;
}

//! golden_root()/var_d4_256 when it holds every one of `files`; otherwise nullopt, and `why` names
//! the golden `what` that is missing, where, and how to point the tests at it.
inline std::optional<std::filesystem::path> golden_d4_dir(const std::string& what,
                                                          std::initializer_list<const char*> files, std::string& why) {
  const std::filesystem::path dir = std::filesystem::path(golden_root()) / "var_d4_256";
  if (std::all_of(files.begin(), files.end(), [&](const char* f) { return std::filesystem::exists(dir / f); }))
    return dir;
  std::string list;
  for (const char* f : files) list += (list.empty() ? "" : ", ") + std::string(f);
  why = "no golden " + what + " (" + list + ") in " + dir.string() +
        "; set -DVARKV_GOLDEN_DIR=... or the VARKV_GOLDEN_DIR environment variable";
  return std::nullopt;
}
#endif

}  // namespace varkv::testing

//! Ends the running test for missing golden data (`why` says what is missing): a failure under CI,
//! a skip elsewhere. A macro because FAIL and GTEST_SKIP return from the test body.
#define VARKV_GOLDEN_MISSING(why)                      \
  do {                                                 \
    if (::varkv::testing::on_ci()) FAIL() << (why);    \
    GTEST_SKIP() << (why);                             \
  } while (0)

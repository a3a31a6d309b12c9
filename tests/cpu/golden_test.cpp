// Equality with the official VAR implementation on every golden directory under VARKV_GOLDEN_DIR
// (teacher forcing, greedy CFG generation, f_hat and decoded image; bounds in golden_check.hpp).
// No golden data: skipped with a message, except on CI (env CI == "true"), where that fails.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <varkv_reference/golden_check.hpp>

namespace {

std::vector<std::string> golden_dirs() {
  std::vector<std::string> dirs;
  const std::filesystem::path root(VARKV_GOLDEN_DIR);
  std::error_code ec;
  if (!std::filesystem::is_directory(root, ec)) return dirs;
  for (const auto& e : std::filesystem::directory_iterator(root, ec))
    if (e.is_directory() && std::filesystem::exists(e.path() / "meta.json")) dirs.push_back(e.path().string());
  std::sort(dirs.begin(), dirs.end());
  return dirs;
}

bool on_ci() {
  const char* ci = std::getenv("CI");
  return ci && std::string(ci) == "true";
}

TEST(Golden, EveryDirectoryMatchesTheOfficialImplementation) {
  const auto dirs = golden_dirs();
  if (dirs.empty()) {
    const std::string msg = "no golden data (no */meta.json) under " + std::string(VARKV_GOLDEN_DIR) +
                            "; set -DVARKV_GOLDEN_DIR=... to the folder of ../shared/golden";
    if (on_ci()) FAIL() << msg;
    GTEST_SKIP() << msg;
  }
  for (const auto& dir : dirs) {
    SCOPED_TRACE(dir);
    const auto report = varkv::ref::check_golden_dir(dir);
    std::cout << dir << " (" << report.seconds << " s)\n";
    ASSERT_FALSE(report.checks.empty());
    for (const auto& c : report.checks) {
      std::cout << "  " << varkv::ref::format_check(c) << "\n";
      EXPECT_TRUE(c.pass) << varkv::ref::format_check(c);
    }
  }
}

TEST(Golden, BadDirectoryIsAClearError) {
  const std::string dir = (std::filesystem::temp_directory_path() / "varkv-no-such-golden-dir").string();
  try {
    (void)varkv::ref::check_golden_dir(dir);
    FAIL() << "expected varkv::Error";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("meta.json"), std::string::npos) << e.what();
  }
}

}  // namespace

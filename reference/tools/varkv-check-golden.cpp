// varkv-check-golden DIR...: checks the reference VAR model against golden data of the official
// implementation (see varkv_reference/golden_check.hpp). Exit 0: every check passed; 1: a check
// failed; 2: bad arguments or bad input files.
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "varkv_reference/golden_check.hpp"

int main(int argc, char** argv) {
  CLI::App app{"Checks the reference VAR model (teacher forcing, greedy CFG generation, VQ-VAE decode) against "
               "golden data of the official FoundationVision/VAR implementation."};
  std::vector<std::string> dirs;
  app.add_option("DIR", dirs, "golden directories (meta.json, var/vae/golden.safetensors)")->required();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    fmt::print(stderr, "varkv-check-golden: error: {}\n", e.what());
    return 2;
  }
  bool all = true;
  for (const auto& dir : dirs) {
    try {
      const auto report = varkv::ref::check_golden_dir(dir);
      fmt::print("{}\n", dir);
      for (const auto& c : report.checks) fmt::print("  {}\n", varkv::ref::format_check(c));
      fmt::print("  {} ({:.1f} s)\n", report.passed() ? "ALL PASS" : "FAILED", report.seconds);
      all = all && report.passed();
    } catch (const std::exception& e) {
      fmt::print(stderr, "varkv-check-golden: error: {}\n", e.what());
      return 2;
    }
  }
  return all ? 0 : 1;
}

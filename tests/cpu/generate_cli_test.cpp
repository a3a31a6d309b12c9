// The command-line tools as a user runs them: varkv-generate writes PNGs and a valid report, and
// every bad argument or file ends in one "varkv-generate: error: ..." line and a non-zero exit.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include <nlohmann/json.hpp>

#include "../support/random.hpp"

#if defined(VARKV_GENERATE_EXE)

namespace {

namespace fs = std::filesystem;

struct ToolRun {
  int code = -1;
  std::string err;
};

fs::path fresh_dir(const std::string& tag) {
  std::mt19937_64 rng(varkv::testing::fresh_seed());
  const fs::path p = fs::temp_directory_path() / ("varkv-cli-" + tag + "-" + std::to_string(rng()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

// Runs the command with stderr captured to a file.
ToolRun run_tool(const std::string& args, const fs::path& dir) {
  const fs::path err = dir / "stderr.txt";
  const std::string cmd = std::string(VARKV_GENERATE_EXE) + " " + args + " 2> \"" + err.string() + "\" > /dev/null";
  ToolRun r;
  const int status = std::system(cmd.c_str());
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream f(err);
  r.err.assign(std::istreambuf_iterator<char>(f), {});
  return r;
}

// A one-line error: exactly one line that starts with the tool's prefix.
void expect_one_line_error(const ToolRun& r, const std::string& needle) {
  EXPECT_NE(r.code, 0);
  EXPECT_EQ(r.err.rfind("varkv-generate: error: ", 0), 0u) << r.err;
  ASSERT_FALSE(r.err.empty());
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_NE(r.err.find(needle), std::string::npos) << "expected '" << needle << "' in: " << r.err;
}

bool is_png(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::array<unsigned char, 8> sig{};
  f.read(reinterpret_cast<char*>(sig.data()), 8);
  const std::array<unsigned char, 8> png{0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  return f.good() && sig == png;
}

// Default settings (random-init VAR-d4, classes 207 and 360, cfg 4, top-k 900, top-p 0.95), with a
// smaller VQ-VAE decoder and a 6-scale schedule to keep the test short under sanitizers.
TEST(GenerateCli, DefaultRunWritesImagesAndReport) {
  const fs::path dir = fresh_dir("default");
  const ToolRun r = run_tool("--vae-ch 32 --patch-nums 1,2,3,4,6,8 --out \"" + (dir / "out").string() + "\"", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("scale  6/6"), std::string::npos) << "progress per scale expected on stderr: " << r.err;
  for (const char* f : {"image_000.png", "image_001.png", "grid.png"}) EXPECT_TRUE(is_png(dir / "out" / f)) << f;
  std::ifstream jf(dir / "out" / "report.json");
  const auto j = nlohmann::json::parse(jf);  // throws (test fails) on invalid JSON
  EXPECT_EQ(j.at("settings").at("policy"), "full");
  EXPECT_EQ(j.at("settings").at("batch"), 2);
  ASSERT_EQ(j.at("scales").size(), 6u);
  const auto& per = j.at("kv").at("bytes_per_scale_and_layer");
  ASSERT_EQ(per.size(), 6u);
  // Full cache, fp32 K and V, 4 sequences, 4 heads of 64: after step s every layer holds
  // end(s) tokens x 4 x 4 x 64 x 8 bytes.
  const int ends[] = {1, 5, 14, 30, 66, 130};
  std::int64_t peak = 0;
  for (int s = 0; s < 6; ++s) {
    ASSERT_EQ(per[s].size(), 4u);
    for (const auto& b : per[s]) EXPECT_EQ(b.get<std::int64_t>(), std::int64_t{ends[s]} * 4 * 4 * 64 * 8);
    EXPECT_GE(j.at("scales")[s].at("seconds").get<double>(), 0.0);
    peak = std::max(peak, j.at("scales")[s].at("kv_bytes").get<std::int64_t>());
  }
  EXPECT_EQ(j.at("kv").at("peak_bytes").get<std::int64_t>(), peak);
  EXPECT_EQ(peak, std::int64_t{130} * 4 * 4 * 4 * 64 * 8);
  fs::remove_all(dir);
}

TEST(GenerateCli, HelpExitsZero) {
  const fs::path dir = fresh_dir("help");
  const ToolRun r = run_tool("--help", dir);
  EXPECT_EQ(r.code, 0);
  fs::remove_all(dir);
}

TEST(GenerateCli, BadWeightsPathIsOneLineError) {
  const fs::path dir = fresh_dir("badpath");
  const std::string missing = (dir / "missing.safetensors").string();
  expect_one_line_error(run_tool("--var \"" + missing + "\" --vae \"" + missing + "\" --out \"" + dir.string() + "\"", dir),
                        "missing.safetensors");
  // A file that is not safetensors.
  const fs::path junk = dir / "junk.safetensors";
  std::ofstream(junk) << "not a safetensors file";
  expect_one_line_error(run_tool("--var \"" + junk.string() + "\" --vae \"" + junk.string() + "\" --out \"" + dir.string() + "\"", dir),
                        "junk.safetensors");
  fs::remove_all(dir);
}

TEST(GenerateCli, BadPolicyIsOneLineError) {
  const fs::path dir = fresh_dir("policy");
  expect_one_line_error(run_tool("--policy nosuch --out \"" + dir.string() + "\"", dir), "unknown policy 'nosuch'");
  expect_one_line_error(run_tool("--policy full:budget=0.1 --out \"" + dir.string() + "\"", dir), "takes no parameters");
  expect_one_line_error(run_tool("--policy full:budget --out \"" + dir.string() + "\"", dir), "not key=value");
  expect_one_line_error(run_tool("--budget 0.5 --out \"" + dir.string() + "\"", dir), "--budget");
  expect_one_line_error(run_tool("--device cuda --out \"" + dir.string() + "\"", dir), "--device cuda");
  fs::remove_all(dir);
}

TEST(GenerateCli, BadNumbersAreOneLineErrors) {
  const fs::path dir = fresh_dir("numbers");
  const std::string out = " --out \"" + dir.string() + "\"";
  expect_one_line_error(run_tool("--cfg abc" + out, dir), "--cfg");
  expect_one_line_error(run_tool("--cfg -1" + out, dir), "--cfg");
  expect_one_line_error(run_tool("--top-k -3" + out, dir), "--top-k");
  expect_one_line_error(run_tool("--top-p 1.5" + out, dir), "--top-p");
  expect_one_line_error(run_tool("--batch -2" + out, dir), "--batch");
  expect_one_line_error(run_tool("--depth 0" + out, dir), "depth");
  expect_one_line_error(run_tool("--classes 3,x" + out, dir), "--classes");
  expect_one_line_error(run_tool("--classes 1000" + out, dir), "class 1000");
  expect_one_line_error(run_tool("--patch-nums 1,3,2" + out, dir), "patch_nums");
  fs::remove_all(dir);
}

// varkv-check-golden on a directory that is not golden data: exit 2 and one error line naming it.
TEST(CheckGoldenCli, BadDirectoryIsOneLineErrorAndExitTwo) {
  const fs::path dir = fresh_dir("golden");
  const fs::path err = dir / "stderr.txt";
  const std::string cmd = std::string(VARKV_CHECK_GOLDEN_EXE) + " \"" + (dir / "nothing").string() + "\" 2> \"" +
                          err.string() + "\" > /dev/null";
  const int status = std::system(cmd.c_str());
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 2);
  std::ifstream f(err);
  const std::string text(std::istreambuf_iterator<char>(f), {});
  EXPECT_EQ(text.rfind("varkv-check-golden: error: ", 0), 0u) << text;
  EXPECT_NE(text.find("meta.json"), std::string::npos) << text;
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 1) << text;
  fs::remove_all(dir);
}

}  // namespace

#endif  // VARKV_GENERATE_EXE

// The command-line tools as a user runs them: varkv-generate writes PNGs and a valid report for any
// policy preset, --compare writes compare.json / compare.png and a table, and every bad argument or
// file ends in one "varkv-generate: error: ..." line and a non-zero exit.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <utility>
#include <fstream>
#include <random>
#include <string>
#include <string_view>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <varkv/policy/registry.hpp>

#include "../support/random.hpp"

#if defined(VARKV_GENERATE_EXE)

namespace {

namespace fs = std::filesystem;

struct ToolRun {
  int code = -1;
  std::string err;
  std::string out;  // stdout
};

fs::path fresh_dir(const std::string& tag) {
  std::mt19937_64 rng(varkv::testing::fresh_seed());
  const fs::path p = fs::temp_directory_path() / ("varkv-cli-" + tag + "-" + std::to_string(rng()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

// Runs the command with stderr and stdout captured to files.
ToolRun run_tool(const std::string& args, const fs::path& dir) {
  const fs::path err = dir / "stderr.txt", out = dir / "stdout.txt";
  const std::string cmd = std::string(VARKV_GENERATE_EXE) + " " + args + " 2> \"" + err.string() + "\" > \"" +
                          out.string() + "\"";
  ToolRun r;
  const int status = std::system(cmd.c_str());
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream f(err), o(out);
  r.err.assign(std::istreambuf_iterator<char>(f), {});
  r.out.assign(std::istreambuf_iterator<char>(o), {});
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

// Width and height from a PNG's IHDR chunk (big-endian at bytes 16..23).
std::pair<std::uint32_t, std::uint32_t> png_size(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::array<unsigned char, 24> h{};
  f.read(reinterpret_cast<char*>(h.data()), 24);
  const auto be = [&](int i) {
    return (std::uint32_t{h[i]} << 24) | (std::uint32_t{h[i + 1]} << 16) | (std::uint32_t{h[i + 2]} << 8) | h[i + 3];
  };
  return {be(16), be(20)};
}

nlohmann::json read_json(const fs::path& p) {
  std::ifstream f(p);
  return nlohmann::json::parse(f);  // throws (test fails) on a missing file or invalid JSON
}

// Tokens cached after each step of the 1,2,3,4 schedule (L = 30).
constexpr std::int64_t kEnds4[] = {1, 5, 14, 30};
// Bytes one layer holds per token kept in each of its rows: 4 sequences (2 images x CFG) x 4 heads,
// head_dim 64, 8 bytes (fp32 K + fp32 V) per element.
constexpr std::int64_t kLayerBytesPerRowToken = 4 * 4 * 64 * 8;

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
  // Every preset of the registry is listed, and --compare is documented.
  std::string_view names = varkv::policy_names;
  while (!names.empty()) {
    const auto sp = names.find(' ');
    const std::string name(names.substr(0, sp));
    EXPECT_NE(r.out.find(name), std::string::npos) << name << " missing from --help:\n" << r.out;
    names = sp == std::string_view::npos ? std::string_view() : names.substr(sp + 1);
  }
  EXPECT_NE(r.out.find("--compare"), std::string::npos) << r.out;
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

// A compressing preset (chosen at random, with a random budget) on the 4-scale schedule: the report
// names the spec, and every layer holds min(end(s), ceil(budget x 30)) tokens per row after step s, exactly
// as the uniform budget's arithmetic says, below the full cache's 30 at the peak.
TEST(GenerateCli, CompressingPolicyReportHasLedgerBytes) {
  const auto seed = varkv::testing::fresh_seed();
  std::mt19937_64 rng(seed);
  const char* presets[] = {"snapkv", "streamingllm", "h2o", "scalekv"};
  const std::string preset = presets[rng() % 4];
  const int k = 1 + static_cast<int>(rng() % 19);  // budget k / 20 in 0.05 .. 0.95
  const std::string budget = fmt::format("{}", k / 20.0);
  const std::int64_t cap = (std::int64_t{k} * 30 + 19) / 20;  // ceil(k / 20 x 30)
  // Half of the runs give the budget with --budget, the other half inside the spec.
  const bool shorthand = rng() % 2 == 0;
  const std::string spec = preset + ":budget=" + budget;
  const fs::path dir = fresh_dir("policy-run");
  const ToolRun r = run_tool((shorthand ? "--policy " + preset + " --budget " + budget : "--policy " + spec) +
                                 " --vae-ch 32 --patch-nums 1,2,3,4 --out \"" + (dir / "out").string() + "\"",
                             dir);
  ASSERT_EQ(r.code, 0) << r.err << varkv::testing::seed_note(seed);
  for (const char* f : {"image_000.png", "image_001.png", "grid.png"}) EXPECT_TRUE(is_png(dir / "out" / f)) << f;
  const auto j = read_json(dir / "out" / "report.json");
  EXPECT_EQ(j.at("settings").at("policy"), spec) << varkv::testing::seed_note(seed);
  EXPECT_EQ(j.at("settings").at("policy_preset"), preset);
  EXPECT_DOUBLE_EQ(j.at("settings").at("budget").get<double>(), k / 20.0);
  EXPECT_EQ(j.at("kv").at("cache"), "CompressedCache");
  const auto& per = j.at("kv").at("bytes_per_scale_and_layer");
  ASSERT_EQ(per.size(), 4u);
  for (int s = 0; s < 4; ++s) {
    const std::int64_t held = std::min(kEnds4[s], cap) * kLayerBytesPerRowToken;
    ASSERT_EQ(per[s].size(), 4u);
    for (const auto& b : per[s]) EXPECT_EQ(b.get<std::int64_t>(), held) << "step " << s << " " << varkv::testing::seed_note(seed);
    EXPECT_EQ(j.at("kv").at("bytes_per_scale")[s].get<std::int64_t>(), 4 * held);
    EXPECT_EQ(j.at("scales")[s].at("kv_bytes").get<std::int64_t>(), 4 * held);
  }
  const std::int64_t full_peak = 30 * 4 * kLayerBytesPerRowToken;
  EXPECT_EQ(j.at("kv").at("full_cache_peak_bytes").get<std::int64_t>(), full_peak);
  EXPECT_EQ(j.at("kv").at("peak_bytes").get<std::int64_t>(), cap * 4 * kLayerBytesPerRowToken);
  EXPECT_LT(j.at("kv").at("peak_bytes").get<std::int64_t>(), full_peak);
  EXPECT_DOUBLE_EQ(j.at("kv").at("fraction_of_full_peak").get<double>(), static_cast<double>(cap) / 30);
  fs::remove_all(dir);
}

// --compare on the default (sampled) settings: the full cache runs first, then `full` (the full preset
// through CompressedCache) and StreamingLLM. With the same seed, `full` must reproduce the reference
// exactly (agreement 1 at every scale, PSNR "inf"); StreamingLLM holds less, as its budget says.
TEST(GenerateCli, CompareWritesJsonGridAndTable) {
  const fs::path dir = fresh_dir("compare");
  const fs::path out = dir / "out";
  const ToolRun r = run_tool("--vae-ch 32 --patch-nums 1,2,3,4 --compare 'full;streamingllm:budget=0.3' --out \"" +
                                 out.string() + "\"",
                             dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("[3/3 streamingllm:budget=0.3] scale  4/4"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(out / "report.json"));
  EXPECT_FALSE(fs::exists(out / "image_000.png"));
  ASSERT_TRUE(is_png(out / "compare.png"));
  // Three columns and two rows of 64-px tiles (16 x the last side 4), 2-px padding, a 30-px label band.
  EXPECT_EQ(png_size(out / "compare.png"), (std::pair<std::uint32_t, std::uint32_t>{3 * 66 + 2, 30 + 2 * 66 + 2}));

  const auto j = read_json(out / "compare.json");
  EXPECT_EQ(j.at("deterministic"), false);
  EXPECT_EQ(j.at("grid_columns"), (nlohmann::json{"full cache (reference)", "full", "streamingllm:budget=0.3"}));
  EXPECT_EQ(j.at("grid_rows").size(), 2u);
  const std::int64_t full_peak = 30 * 4 * kLayerBytesPerRowToken;
  EXPECT_EQ(j.at("reference").at("kv").at("cache"), "FullCache");
  EXPECT_EQ(j.at("reference").at("kv").at("peak_bytes").get<std::int64_t>(), full_peak);
  const auto& pol = j.at("policies");
  ASSERT_EQ(pol.size(), 2u);

  const auto& full = pol[0];
  EXPECT_EQ(full.at("policy"), "full");
  EXPECT_EQ(full.at("kv").at("cache"), "CompressedCache");
  EXPECT_EQ(full.at("kv").at("peak_bytes").get<std::int64_t>(), full_peak);
  EXPECT_EQ(full.at("tokens").at("agreement").get<double>(), 1.0);
  EXPECT_EQ(full.at("tokens").at("agreement_per_scale"), (nlohmann::json{1.0, 1.0, 1.0, 1.0}));
  EXPECT_EQ(full.at("tokens").at("tokens_per_scale"), (nlohmann::json{2, 8, 18, 32}));
  EXPECT_TRUE(full.at("tokens").at("first_differing_scale").is_null());
  EXPECT_EQ(full.at("psnr").at("image"), "inf");
  EXPECT_EQ(full.at("psnr").at("f_hat"), "inf");
  EXPECT_EQ(full.at("psnr").at("image_per_image"), (nlohmann::json{"inf", "inf"}));

  const auto& sl = pol[1];
  EXPECT_EQ(sl.at("policy"), "streamingllm:budget=0.3");
  const std::int64_t cap = 9;  // ceil(0.3 x 30)
  EXPECT_EQ(sl.at("kv").at("peak_bytes").get<std::int64_t>(), cap * 4 * kLayerBytesPerRowToken);
  EXPECT_LT(sl.at("kv").at("peak_bytes").get<std::int64_t>(), full_peak);
  EXPECT_DOUBLE_EQ(sl.at("kv").at("fraction_of_full_peak").get<double>(), 0.3);
  for (int s = 0; s < 4; ++s)
    EXPECT_EQ(sl.at("kv").at("bytes_per_scale")[s].get<std::int64_t>(), std::min(kEnds4[s], cap) * 4 * kLayerBytesPerRowToken);
  // Nothing is evicted before the cache exceeds 9 tokens (after step 2), so scales 0..2 see the same
  // cache as the reference and, with the same seed, sample the same tokens.
  for (int s = 0; s < 3; ++s) EXPECT_EQ(sl.at("tokens").at("agreement_per_scale")[s].get<double>(), 1.0) << s;
  EXPECT_EQ(sl.at("seconds").at("per_scale").size(), 4u);
  EXPECT_GE(sl.at("seconds").at("total").get<double>(), sl.at("seconds").at("scales").get<double>());

  // The table: a header and one row per run, in run order, on stdout.
  const auto line_of = [&](const std::string& needle) { return r.out.find("\n" + needle); };
  EXPECT_EQ(r.out.rfind("policy", 0), 0u) << r.out;
  EXPECT_NE(r.out.find("peak KV"), std::string::npos) << r.out;
  const auto a = line_of("full (reference)"), b = line_of("full   "), c = line_of("streamingllm:budget=0.3 ");
  ASSERT_NE(a, std::string::npos) << r.out;
  ASSERT_NE(b, std::string::npos) << r.out;
  ASSERT_NE(c, std::string::npos) << r.out;
  EXPECT_LT(a, b);
  EXPECT_LT(b, c);
  EXPECT_NE(r.out.find("30.0%"), std::string::npos) << r.out;  // StreamingLLM's share of the full peak
  EXPECT_NE(r.out.find("sampling divergence"), std::string::npos) << r.out;
  fs::remove_all(dir);
}

// Golden weights of the official code (trained-like scales, unlike the near-zero AdaLN gammas of
// --random-init, whose greedy tokens ignore the cache): a 5% StreamingLLM cache must change tokens,
// but only once the cache exceeds its 34 tokens (after step 4), and give finite PSNRs.
TEST(GenerateCli, CompareOnGoldenWeightsShowsDivergence) {
  const fs::path golden = fs::path(VARKV_GOLDEN_DIR) / "var_d4_256";
  if (!fs::exists(golden / "var.safetensors")) GTEST_SKIP() << "no golden data at " << golden;
  const fs::path dir = fresh_dir("compare-golden");
  const ToolRun r = run_tool("--quiet --var \"" + (golden / "var.safetensors").string() + "\" --vae \"" +
                                 (golden / "vae.safetensors").string() +
                                 "\" --vae-ch 32 --top-k 1 --cfg 1.5 --classes 3 --compare streamingllm:budget=0.05 "
                                 "--out \"" + (dir / "out").string() + "\"",
                             dir);
  ASSERT_EQ(r.code, 0) << r.err;
  const auto j = read_json(dir / "out" / "compare.json");
  EXPECT_EQ(j.at("deterministic"), true);
  const auto& p = j.at("policies").at(0);
  const auto& per = p.at("tokens").at("agreement_per_scale");
  ASSERT_EQ(per.size(), 10u);
  for (int s = 0; s < 5; ++s) EXPECT_EQ(per[s].get<double>(), 1.0) << "scale " << s;
  EXPECT_LT(p.at("tokens").at("agreement").get<double>(), 1.0);
  EXPECT_GE(p.at("tokens").at("first_differing_scale").get<int>(), 5);
  ASSERT_TRUE(p.at("psnr").at("image").is_number()) << p.at("psnr");
  ASSERT_TRUE(p.at("psnr").at("f_hat").is_number()) << p.at("psnr");
  EXPECT_GT(p.at("psnr").at("image").get<double>(), 0.0);
  EXPECT_EQ(p.at("kv").at("peak_bytes").get<std::int64_t>(), 34 * 2 * 4 * 4 * 64 * 8);  // 1 image x CFG
  fs::remove_all(dir);
}

TEST(GenerateCli, BadPolicyIsOneLineError) {
  const fs::path dir = fresh_dir("policy");
  const std::string out = " --out \"" + dir.string() + "\"";
  expect_one_line_error(run_tool("--policy nosuch" + out, dir), "unknown preset 'nosuch'");
  expect_one_line_error(run_tool("--policy full:budget=0.1" + out, dir), "'budget'");
  expect_one_line_error(run_tool("--policy full:budget" + out, dir), "not key=value");
  expect_one_line_error(run_tool("--policy snapkv:foo=1" + out, dir), "unknown parameter 'foo'");
  expect_one_line_error(run_tool("--policy snapkv:budget=abc" + out, dir), "abc");
  expect_one_line_error(run_tool("--policy snapkv:budget=2" + out, dir), "budget=2");
  expect_one_line_error(run_tool("--budget 0.5" + out, dir), "--budget");
  expect_one_line_error(run_tool("--budget 1.5 --policy h2o" + out, dir), "--budget 1.5");
  expect_one_line_error(run_tool("--policy snapkv:budget=0.1 --budget 0.2" + out, dir), "both set a budget");
  // Fails everywhere: without CUDA at build time, without a GPU, and on a GPU (AdaKV is CPU only).
  expect_one_line_error(run_tool("--device cuda --policy adakv" + out, dir), "--device cuda");
  expect_one_line_error(run_tool("--device tpu" + out, dir), "--device 'tpu'");
  fs::remove_all(dir);
}

TEST(GenerateCli, BadCompareIsOneLineError) {
  const fs::path dir = fresh_dir("compare-bad");
  const std::string out = " --out \"" + dir.string() + "\"";
  expect_one_line_error(run_tool("--compare 'full;;snapkv'" + out, dir), "item 2 is empty");
  expect_one_line_error(run_tool("--compare 'h2o;'" + out, dir), "item 2 is empty");
  expect_one_line_error(run_tool("--compare 'full;nosuch'" + out, dir), "item 2 ('nosuch')");
  expect_one_line_error(run_tool("--compare 'snapkv:window'" + out, dir), "not key=value");
  expect_one_line_error(run_tool("--compare 'h2o:budget=0.1;snapkv:kernel=4'" + out, dir), "kernel");
  expect_one_line_error(run_tool("--compare 'h2o;h2o'" + out, dir), "listed twice");
  expect_one_line_error(run_tool("--compare h2o:budget=0.1 --compare ' h2o:budget=0.1 '" + out, dir), "listed twice");
  expect_one_line_error(run_tool("--compare full --policy snapkv" + out, dir), "--policy and --compare");
  expect_one_line_error(run_tool("--compare 'full;h2o:budget=0.2' --budget 0.1" + out, dir), "--budget 0.1");
  expect_one_line_error(run_tool("--compare h2o extra" + out, dir), "extra");
  EXPECT_FALSE(fs::exists(dir / "compare.json"));
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

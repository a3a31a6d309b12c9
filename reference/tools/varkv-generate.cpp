// varkv-generate: class-conditional image generation with the reference VAR model through a varkv
// KV cache; writes one PNG per image, a grid PNG and report.json (settings, time per scale, KV bytes
// per layer and scale from the cache's KvLedger, peak KV bytes).
//
// Weights: --var/--vae (official safetensors names), or random initialisation (--random-init, the
// default when no weights are given) of VAR-d{--depth} (default 4: C = 256, 4 heads; a 256-px
// generation of 2 images takes seconds on 2 cores) with a VQ-VAE of --vae-ch base channels.
// Sampling follows the official autoregressive_infer_cfg; the generator is std::mt19937_64 seeded with
// --seed (not torch's: sampled tokens differ from the official code's, greedy --top-k 1 does not).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "varkv/cache/full_cache.hpp"
#include "varkv/core/error.hpp"
#include "varkv_reference/generate.hpp"
#include "varkv_reference/image_io.hpp"
#include "varkv_reference/safetensors.hpp"
#include "varkv_reference/var_model.hpp"
#include "varkv_reference/vqvae.hpp"

namespace {

using varkv::fail;
using varkv::require;

// --policy NAME[:key=value,...]. Only "full" exists until the policy framework lands; the grammar is
// the one compressing policies will use (e.g. scalekv:budget=0.1,window=16).
struct PolicySpec {
  std::string name;
  std::map<std::string, std::string> params;
};

PolicySpec parse_policy(const std::string& text) {
  PolicySpec p;
  const auto colon = text.find(':');
  p.name = text.substr(0, colon);
  require(!p.name.empty(), "--policy '{}': empty policy name (expected NAME[:key=value,...])", text);
  if (colon != std::string::npos) {
    std::string rest = text.substr(colon + 1);
    std::size_t start = 0;
    while (start <= rest.size()) {
      const auto comma = rest.find(',', start);
      const std::string item = rest.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
      const auto eq = item.find('=');
      require(eq != std::string::npos && eq > 0 && eq + 1 < item.size(),
              "--policy '{}': parameter '{}' is not key=value", text, item);
      require(p.params.emplace(item.substr(0, eq), item.substr(eq + 1)).second, "--policy '{}': parameter '{}' given twice",
              text, item.substr(0, eq));
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
  }
  require(p.name == "full", "unknown policy '{}' (known: full; compressing policies are not available yet)", p.name);
  require(p.params.empty(), "policy 'full' keeps every token and takes no parameters (got '{}')",
          p.params.begin()->first);
  return p;
}

std::vector<int> parse_int_list(const std::string& what, const std::string& text) {
  std::vector<int> out;
  std::size_t start = 0;
  while (start <= text.size()) {
    const auto comma = text.find(',', start);
    const std::string item = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    std::size_t used = 0;
    int v = 0;
    try {
      v = std::stoi(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    require(!item.empty() && used == item.size(), "{} '{}': '{}' is not an integer", what, text, item);
    out.push_back(v);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

struct Options {
  std::string var_path, vae_path;
  bool random_init = false;
  int depth = 4;
  int vae_ch = 160;
  std::string patch_nums = "1,2,3,4,5,6,8,10,13,16";
  std::string classes = "207,360";
  int batch = 0;  // 0: one image per class
  std::uint64_t seed = 0;
  std::uint64_t init_seed = 0;
  double cfg = 4.0;
  int top_k = 900;
  double top_p = 0.95;
  std::string policy = "full";
  std::optional<double> budget;
  std::string out = "varkv-out";
  std::string device = "cpu";
  bool quiet = false;
};

int run(const Options& o) {
  using clock = std::chrono::steady_clock;
  const auto t_start = clock::now();
  require(o.device == "cpu" || o.device == "cuda", "--device '{}': expected cpu or cuda", o.device);
  require(o.device == "cpu", "--device cuda: the GPU path is not available in varkv-generate yet; use --device cpu");
  const PolicySpec policy = parse_policy(o.policy);
  if (o.budget) {
    require(std::isfinite(*o.budget) && *o.budget > 0 && *o.budget <= 1, "--budget {}: expected a fraction in (0, 1]",
            *o.budget);
    require(*o.budget == 1.0, "--budget {}: policy 'full' keeps every token (budget 1); budgets apply to compressing policies",
            *o.budget);
  }
  require(std::isfinite(o.cfg) && o.cfg >= 0, "--cfg {}: expected a finite value >= 0", o.cfg);
  require(o.top_k >= 0, "--top-k {}: expected >= 0 (0: off, 1: greedy)", o.top_k);
  require(o.top_p >= 0 && o.top_p <= 1, "--top-p {}: expected a value in [0, 1] (0: off)", o.top_p);
  require(o.batch >= 0 && o.batch <= 256, "--batch {}: expected 1..256", o.batch);
  require(o.vae_path.empty() == o.var_path.empty(), "--var and --vae go together (or neither, for --random-init)");
  const bool random = o.var_path.empty();
  require(!(o.random_init && !random), "--random-init cannot be combined with --var/--vae");

  const auto patch_nums = parse_int_list("--patch-nums", o.patch_nums);
  auto classes = parse_int_list("--classes", o.classes);
  for (int c : classes)
    require(c >= 0 && c < 1000, "--classes: class {} is outside 0..999 (ImageNet)", c);
  const int B = o.batch > 0 ? o.batch : static_cast<int>(classes.size());
  std::vector<int> labels;
  for (int b = 0; b < B; ++b) labels.push_back(classes[static_cast<std::size_t>(b) % classes.size()]);

  varkv::ref::VarConfig vc = varkv::ref::VarConfig::from_depth(o.depth, patch_nums);
  varkv::ref::VqVaeConfig qc;
  qc.ch = o.vae_ch;
  qc.patch_nums = patch_nums;
  require(o.vae_ch > 0 && o.vae_ch % 32 == 0, "--vae-ch {}: expected a positive multiple of 32 (GroupNorm(32))", o.vae_ch);
  vc.validate();

  std::optional<varkv::ref::VarModel> var;
  std::optional<varkv::ref::VqVae> vae;
  if (random) {
    var.emplace(varkv::ref::VarModel::random(vc, o.init_seed));
    vae.emplace(varkv::ref::VqVae::random(qc, o.init_seed + 1));
  } else {
    var.emplace(varkv::ref::VarModel::load(varkv::ref::SafetensorsFile::open(o.var_path), vc));
    vae.emplace(varkv::ref::VqVae::load(varkv::ref::SafetensorsFile::open(o.vae_path), qc));
  }

  std::filesystem::create_directories(o.out);
  require(std::filesystem::is_directory(o.out), "--out '{}' is not a directory", o.out);

  // The CPU path keeps K and V in fp32; the ledger accounts them as such.
  const varkv::KvDTypes kv_types{varkv::DType::fp32, varkv::DType::fp32};
  varkv::FullCache<float> cache(vc.geometry(), vc.schedule(), varkv::BatchShape{B, true}, kv_types);
  varkv::ref::GenerationRequest req;
  req.labels = labels;
  req.cfg = o.cfg;
  req.top_k = o.top_k;
  req.top_p = o.top_p;
  req.seed = o.seed;
  const auto progress = [&](const varkv::ref::ScaleProgress& p) {
    if (!o.quiet)
      fmt::print(stderr, "varkv-generate: scale {:>2}/{} ({:>2}x{:<2})  {:7.3f} s  KV {}\n", p.step + 1, p.scales, p.side,
                 p.side, p.seconds, varkv::format_bytes(p.kv_bytes));
  };
  const auto result = varkv::ref::generate(*var, *vae, cache, req, progress);
  if (!o.quiet) fmt::print(stderr, "varkv-generate: decode {:.3f} s\n", result.decode_seconds);

  const int side = result.image_side;
  nlohmann::json images = nlohmann::json::array();
  for (int b = 0; b < B; ++b) {
    const std::string name = fmt::format("image_{:03d}.png", b);
    varkv::ref::write_png((std::filesystem::path(o.out) / name).string(), result.pixels, B, side, side, b);
    images.push_back({{"file", name}, {"class", labels[b]}});
  }
  varkv::ref::write_grid_png((std::filesystem::path(o.out) / "grid.png").string(), result.pixels, B, side, side);

  const varkv::KvLedger& ledger = cache.ledger();
  nlohmann::json scales = nlohmann::json::array();
  nlohmann::json per_layer = nlohmann::json::array();
  for (int s = 0; s < vc.scales(); ++s) {
    nlohmann::json layers = nlohmann::json::array();
    for (int l = 0; l < vc.depth; ++l) layers.push_back(ledger.bytes(s, l));
    per_layer.push_back(layers);
    scales.push_back({{"step", s},
                      {"side", patch_nums[s]},
                      {"tokens", std::int64_t{patch_nums[s]} * patch_nums[s]},
                      {"seconds", result.scale_seconds[s]},
                      {"kv_bytes", ledger.bytes(s)},
                      {"min_top2_gap", result.min_gap_per_scale[s]}});
  }
  const double total = std::chrono::duration<double>(clock::now() - t_start).count();
  nlohmann::json report = {
      {"tool", "varkv-generate"},
      {"settings",
       {{"weights", random ? nlohmann::json("random-init") : nlohmann::json({{"var", o.var_path}, {"vae", o.vae_path}})},
        {"init_seed", o.init_seed},
        {"depth", vc.depth},
        {"width", vc.width},
        {"heads", vc.heads},
        {"vae_ch", qc.ch},
        {"patch_nums", patch_nums},
        {"classes", labels},
        {"batch", B},
        {"seed", o.seed},
        {"rng", "std::mt19937_64"},
        {"cfg", o.cfg},
        {"top_k", o.top_k},
        {"top_p", o.top_p},
        {"policy", policy.name},
        {"budget", o.budget ? *o.budget : 1.0},
        {"device", o.device}}},
      {"images", images},
      {"grid", "grid.png"},
      {"scales", scales},
      {"decode_seconds", result.decode_seconds},
      {"total_seconds", total},
      {"kv",
       {{"key_dtype", varkv::dtype_name(kv_types.key)},
        {"value_dtype", varkv::dtype_name(kv_types.value)},
        {"sequences", 2 * B},
        {"bytes_per_scale_and_layer", per_layer},
        {"peak_bytes", ledger.peak_bytes()}}}};
  const std::string report_path = (std::filesystem::path(o.out) / "report.json").string();
  std::ofstream f(report_path);
  f << report.dump(2) << "\n";
  require(f.good(), "cannot write '{}'", report_path);
  if (!o.quiet)
    fmt::print(stderr, "varkv-generate: wrote {} images, grid.png and report.json to {} (peak KV {}, {:.2f} s)\n", B, o.out,
               varkv::format_bytes(ledger.peak_bytes()), total);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Class-conditional image generation with the reference VAR model (official architecture and "
               "autoregressive_infer_cfg) through a varkv KV cache."};
  Options o;
  app.add_option("--var", o.var_path, "VAR transformer weights (safetensors, official names)");
  app.add_option("--vae", o.vae_path, "VQ-VAE weights (safetensors, official names)");
  app.add_flag("--random-init", o.random_init, "random weights (the default when --var/--vae are not given)");
  app.add_option("--depth", o.depth, "VAR depth d (width 64d, d heads)")->capture_default_str();
  app.add_option("--vae-ch", o.vae_ch, "VQ-VAE decoder base channels (official: 160)")->capture_default_str();
  app.add_option("--patch-nums", o.patch_nums, "scale schedule: token map sides")->capture_default_str();
  app.add_option("--classes", o.classes, "ImageNet classes, comma-separated (cycled over --batch)")->capture_default_str();
  app.add_option("--batch", o.batch, "images to generate (default: one per class)");
  app.add_option("--seed", o.seed, "sampling seed (std::mt19937_64)")->capture_default_str();
  app.add_option("--init-seed", o.init_seed, "seed of the random weights")->capture_default_str();
  app.add_option("--cfg", o.cfg, "classifier-free guidance ratio")->capture_default_str();
  app.add_option("--top-k", o.top_k, "top-k filter (0: off, 1: greedy)")->capture_default_str();
  app.add_option("--top-p", o.top_p, "top-p filter (0: off)")->capture_default_str();
  app.add_option("--policy", o.policy, "KV cache policy NAME[:key=value,...] (available: full)")->capture_default_str();
  app.add_option("--budget", o.budget, "KV budget as a fraction of the full cache (compressing policies)");
  app.add_option("--out", o.out, "output folder")->capture_default_str();
  app.add_option("--device", o.device, "cpu (cuda: not yet)")->capture_default_str();
  app.add_flag("--quiet", o.quiet, "no progress on stderr");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    fmt::print(stderr, "varkv-generate: error: {}\n", e.what());
    return 2;
  }
  try {
    return run(o);
  } catch (const std::exception& e) {
    std::string msg = e.what();
    for (auto& c : msg)
      if (c == '\n') c = ' ';
    fmt::print(stderr, "varkv-generate: error: {}\n", msg);
    return 1;
  }
}

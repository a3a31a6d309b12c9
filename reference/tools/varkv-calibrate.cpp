// varkv-calibrate: measures, with the reference VAR model, the per-layer and per-scale statistics that
// the layer-classification policies use (ScaleKV's attention selectivity index, AMS-KV's inter-scale
// K/V similarity), classifies the layers (drafters per scale, cache-demanding layers) and writes
// DIR/profile.json (read by varkv::classification::load_profile) and DIR/profile.png; the tables go
// to stdout, progress to stderr. Definitions and the profile format: varkv_reference/calibration.hpp.
//
// Weights: --var/--vae (official safetensors names), or random initialisation (the default) of
// VAR-d{--depth} with a VQ-VAE of --vae-ch base channels, as varkv-generate. Each --seeds entry is one
// generation of all --classes as one CFG batch; the VQ-VAE decoder does not run.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "varkv/core/error.hpp"
#include "varkv_reference/calibration.hpp"
#include "varkv_reference/tool_main.hpp"
#include "varkv_reference/safetensors.hpp"
#include "varkv_reference/var_model.hpp"
#include "varkv_reference/vqvae.hpp"

namespace {

using varkv::require;

// Comma-separated integers; `parse` converts one item (throws std::exception when it cannot).
template <class T, class Parse>
std::vector<T> parse_list(const std::string& what, const std::string& text, Parse parse) {
  std::vector<T> out;
  std::size_t start = 0;
  while (start <= text.size()) {
    const auto comma = text.find(',', start);
    const std::string item = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    std::size_t used = 0;
    T v{};
    try {
      v = parse(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    require(!item.empty() && used == item.size(), "{} '{}': '{}' is not {}", what, text, item,
            std::is_signed_v<T> ? "an integer" : "a non-negative integer");
    out.push_back(v);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

std::vector<int> parse_ints(const std::string& what, const std::string& text) {
  return parse_list<int>(what, text, [](const std::string& s, std::size_t* used) { return std::stoi(s, used); });
}

std::vector<std::uint64_t> parse_seeds(const std::string& what, const std::string& text) {
  return parse_list<std::uint64_t>(what, text, [](const std::string& s, std::size_t* used) -> std::uint64_t {
    if (!s.empty() && (s[0] == '-' || s[0] == '+')) return *used = 0, 0;  // stoull accepts "-1"
    return std::stoull(s, used);
  });
}

struct Options {
  std::string var_path, vae_path;
  bool random_init = false;
  int depth = 4;
  int vae_ch = 160;
  std::string patch_nums = "1,2,3,4,5,6,8,10,13,16";
  std::uint64_t init_seed = 0;
  std::string classes = "207,360";
  std::string seeds = "0";
  double cfg = 4.0;
  int top_k = 900;
  double top_p = 0.95;
  std::optional<int> drafters;
  double demanding = 0.25;
  int similarity_from = 2;
  std::string out = "varkv-calibration";
  bool quiet = false;
};

int run(const Options& o) {
  require(std::isfinite(o.cfg) && o.cfg >= 0, "--cfg {}: expected a finite value >= 0", o.cfg);
  require(o.top_k >= 0, "--top-k {}: expected >= 0 (0: off, 1: greedy)", o.top_k);
  require(o.top_p >= 0 && o.top_p <= 1, "--top-p {}: expected a value in [0, 1] (0: off)", o.top_p);
  require(o.vae_path.empty() == o.var_path.empty(), "--var and --vae go together (or neither, for --random-init)");
  const bool random = o.var_path.empty();
  require(!(o.random_init && !random), "--random-init cannot be combined with --var/--vae");
  require(!o.drafters || *o.drafters >= 1, "--drafters {}: expected at least 1 layer per scale", o.drafters.value_or(0));

  const auto patch_nums = parse_ints("--patch-nums", o.patch_nums);
  const auto classes = parse_ints("--classes", o.classes);
  for (int c : classes) require(c >= 0 && c < 1000, "--classes: class {} is outside 0..999 (ImageNet)", c);
  require(classes.size() <= 256, "--classes: {} classes in one batch; at most 256", classes.size());
  const auto seeds = parse_seeds("--seeds", o.seeds);

  varkv::ref::VarConfig vc = varkv::ref::VarConfig::from_depth(o.depth, patch_nums);
  require(o.vae_ch > 0 && o.vae_ch % 32 == 0, "--vae-ch {}: expected a positive multiple of 32 (GroupNorm(32))", o.vae_ch);
  varkv::ref::VqVaeConfig qc;
  qc.ch = o.vae_ch;
  qc.patch_nums = patch_nums;
  vc.validate();

  varkv::ref::CalibrationRequest req;
  req.classes = classes;
  req.seeds = seeds;
  req.cfg = o.cfg;
  req.top_k = o.top_k;
  req.top_p = o.top_p;
  req.rules.drafters_per_scale = o.drafters.value_or(0);
  req.rules.demanding_fraction = o.demanding;
  req.rules.similarity_from = o.similarity_from;
  req.rules.validate(vc.depth, vc.scales());  // before loading weights: a bad rule fails fast

  std::optional<varkv::ref::VarModel> var;
  std::optional<varkv::ref::VqVae> vae;
  if (random) {
    var.emplace(varkv::ref::VarModel::random(vc, o.init_seed));
    vae.emplace(varkv::ref::VqVae::random(qc, o.init_seed + 1));
  } else {
    var.emplace(varkv::ref::VarModel::load(varkv::ref::SafetensorsFile::open(o.var_path), vc));
    vae.emplace(varkv::ref::VqVae::load(varkv::ref::SafetensorsFile::open(o.vae_path), qc));
  }

  std::error_code ec;
  std::filesystem::create_directories(o.out, ec);
  require(std::filesystem::is_directory(o.out), "--out '{}' is not a directory (and cannot be created)", o.out);

  const auto progress = [&](const varkv::ref::CalibrationProgress& p) {
    if (!o.quiet)
      fmt::print(stderr, "varkv-calibrate: run {}/{} (seed {})  scale {:>2}/{} ({:>2}x{:<2})  {:7.3f} s\n", p.run + 1,
                 p.runs, p.seed, p.scale.step + 1, p.scale.scales, p.scale.side, p.scale.side, p.scale.seconds);
  };
  varkv::ref::CalibrationProfile profile = varkv::ref::calibrate(*var, *vae, req, progress);
  profile.model.var_path = o.var_path;
  profile.model.vae_path = o.vae_path;
  profile.model.init_seed = o.init_seed;

  const std::string json_path = (std::filesystem::path(o.out) / "profile.json").string();
  const std::string png_path = (std::filesystem::path(o.out) / "profile.png").string();
  varkv::ref::write_profile_json(json_path, profile);
  varkv::ref::write_profile_png(png_path, profile);

  fmt::print("varkv-calibrate: VAR-d{} ({} layers x {} scales, {}), {} classes x {} seeds, {:.2f} s\n\n", vc.depth,
             vc.depth, vc.scales(), random ? "random-init" : o.var_path, classes.size(), seeds.size(), profile.seconds);
  fmt::print("{}", varkv::ref::format_profile_table(profile));
  std::fflush(stdout);
  if (!o.quiet) fmt::print(stderr, "varkv-calibrate: wrote {} and {}\n", json_path, png_path);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Calibrates varkv's layer-classification policies: runs the reference VAR model, measures per layer "
               "and scale ScaleKV's attention selectivity index and AMS-KV's inter-scale K/V similarity, and writes "
               "DIR/profile.json (drafters per scale, cache-demanding layers, the statistics) and DIR/profile.png."};
  Options o;
  app.add_option("--var", o.var_path, "VAR transformer weights (safetensors, official names)");
  app.add_option("--vae", o.vae_path, "VQ-VAE weights (safetensors, official names)");
  app.add_flag("--random-init", o.random_init, "random weights (the default when --var/--vae are not given)");
  app.add_option("--depth", o.depth, "VAR depth d (width 64d, d heads)")->capture_default_str();
  app.add_option("--vae-ch", o.vae_ch, "VQ-VAE base channels (official: 160)")->capture_default_str();
  app.add_option("--patch-nums", o.patch_nums, "scale schedule: token map sides")->capture_default_str();
  app.add_option("--init-seed", o.init_seed, "seed of the random weights")->capture_default_str();
  app.add_option("--classes", o.classes, "ImageNet classes, comma-separated (one image each, one batch)")
      ->capture_default_str();
  app.add_option("--seeds", o.seeds, "sampling seeds, comma-separated: one generation run each")->capture_default_str();
  app.add_option("--cfg", o.cfg, "classifier-free guidance ratio")->capture_default_str();
  app.add_option("--top-k", o.top_k, "top-k filter (0: off, 1: greedy)")->capture_default_str();
  app.add_option("--top-p", o.top_p, "top-p filter (0: off)")->capture_default_str();
  app.add_option("--drafters", o.drafters,
                 "ScaleKV: drafter layers per scale (the lowest ASI) [default: max(1, round(depth / 8))]");
  app.add_option("--demanding", o.demanding,
                 "AMS-KV: fraction of the layers (lowest similarity) that are cache-demanding, at least 1 layer")
      ->capture_default_str();
  app.add_option("--similarity-from", o.similarity_from,
                 "AMS-KV: a layer's similarity is the mean over the scales >= this index")
      ->capture_default_str();
  app.add_option("--out", o.out, "output folder (profile.json, profile.png)")->capture_default_str();
  app.add_flag("--quiet", o.quiet, "no progress on stderr");
  return varkv::ref::tool_main("varkv-calibrate", app, argc, argv, [&] { return run(o); });
}

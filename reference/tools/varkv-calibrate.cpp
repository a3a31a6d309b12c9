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
#include "varkv_reference/tool_model.hpp"
#include "varkv_reference/safetensors.hpp"
#include "varkv_reference/var_model.hpp"
#include "varkv_reference/vqvae.hpp"

namespace {

using varkv::require;

struct Options {
  varkv::ref::ModelOptions model;
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
  const varkv::ref::ModelSpec spec = varkv::ref::model_spec(o.model);
  const bool random = spec.random;
  require(!o.drafters || *o.drafters >= 1, "--drafters {}: expected at least 1 layer per scale", o.drafters.value_or(0));

  const auto classes = varkv::ref::parse_ints("--classes", o.classes);
  for (int c : classes) require(c >= 0 && c < 1000, "--classes: class {} is outside 0..999 (ImageNet)", c);
  require(classes.size() <= 256, "--classes: {} classes in one batch; at most 256", classes.size());
  const auto seeds = varkv::ref::parse_seeds("--seeds", o.seeds);

  const varkv::ref::VarConfig& vc = spec.vc;

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

  varkv::ref::LoadedModels models = varkv::ref::load_models(spec, o.model);
  auto& var = models.var;
  auto& vae = models.vae;

  std::error_code ec;
  std::filesystem::create_directories(o.out, ec);
  require(std::filesystem::is_directory(o.out), "--out '{}' is not a directory (and cannot be created)", o.out);

  const auto progress = [&](const varkv::ref::CalibrationProgress& p) {
    if (!o.quiet)
      fmt::print(stderr, "varkv-calibrate: run {}/{} (seed {})  scale {:>2}/{} ({:>2}x{:<2})  {:7.3f} s\n", p.run + 1,
                 p.runs, p.seed, p.scale.step + 1, p.scale.scales, p.scale.side, p.scale.side, p.scale.seconds);
  };
  varkv::ref::CalibrationProfile profile = varkv::ref::calibrate(*var, *vae, req, progress);
  profile.model.var_path = o.model.var_path;
  profile.model.vae_path = o.model.vae_path;
  profile.model.init_seed = o.model.init_seed;

  const std::string json_path = (std::filesystem::path(o.out) / "profile.json").string();
  const std::string png_path = (std::filesystem::path(o.out) / "profile.png").string();
  varkv::ref::write_profile_json(json_path, profile);
  varkv::ref::write_profile_png(png_path, profile);

  fmt::print("varkv-calibrate: VAR-d{} ({} layers x {} scales, {}), {} classes x {} seeds, {:.2f} s\n\n", vc.depth,
             vc.depth, vc.scales(), random ? "random-init" : o.model.var_path, classes.size(), seeds.size(), profile.seconds);
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
  varkv::ref::add_model_options(app, o.model);
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

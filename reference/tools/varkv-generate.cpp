// varkv-generate: class-conditional image generation with the reference VAR model through a varkv
// KV cache; writes one PNG per image, a grid PNG and report.json (settings, policy, time per scale,
// KV bytes per layer and scale from the cache's KvLedger, peak KV bytes).
//
// --policy SPEC picks the cache: any preset of varkv's policy registry ("full", "snapkv:budget=0.1",
// ...). --compare SPEC[;SPEC...] runs the same labels and seed through the full cache first and then
// through each listed policy, and reports per policy its KV bytes, token agreement per scale and PSNR
// (image, f_hat) against the full-cache run, and time: a table on stdout, compare.json and
// compare.png (one column per run, one row per image).
//
// Weights: --var/--vae (official safetensors names), or random initialisation (--random-init, the
// default when no weights are given) of VAR-d{--depth} (default 4: C = 256, 4 heads; a 256-px
// generation of 2 images takes seconds on 2 cores) with a VQ-VAE of --vae-ch base channels.
// Sampling follows the official autoregressive_infer_cfg; the generator is std::mt19937_64 seeded with
// --seed (not torch's: sampled tokens differ from the official code's, greedy --top-k 1 does not).
//
// --device cuda runs the same model object on the GPU (varkv_reference_cuda, see
// reference/include/varkv_reference/cuda/var_model_cuda.cuh): bf16 transformer with cuBLASLt GEMMs,
// the device KV cache of the policy (DeviceCompressedCache; every preset but adakv) and GPU token
// choice (Philox generator: sampled tokens differ from the CPU path's, greedy ones need not), the
// quantizer step and the VQ-VAE decoder on the GPU too. The ledger then accounts K/V as bf16.
// Without a GPU, or in a build without CUDA, --device cuda is a one-line error.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "varkv/cache/compressed_cache.hpp"
#include "varkv/cache/full_cache.hpp"
#include "varkv/core/error.hpp"
#include "varkv/policy/registry.hpp"
#include "varkv_reference/fidelity.hpp"
#include "varkv_reference/generate.hpp"
#include "varkv_reference/tool_main.hpp"
#include "varkv_reference/tool_model.hpp"
#include "varkv_reference/image_io.hpp"
#include "varkv_reference/safetensors.hpp"
#include "varkv_reference/var_model.hpp"
#include "varkv_reference/vqvae.hpp"
#ifdef VARKV_GENERATE_CUDA
#include "varkv_reference/cuda/var_model_cuda.cuh"
#endif

namespace {

using varkv::fail;
using varkv::require;
using json = nlohmann::json;

std::string trim(std::string_view s) {
  const auto b = s.find_first_not_of(" \t");
  if (b == std::string_view::npos) return {};
  const auto e = s.find_last_not_of(" \t");
  return std::string(s.substr(b, e - b + 1));
}

struct Options {
  varkv::ref::ModelOptions model;
  std::string classes = "207,360";
  int batch = 0;  // 0: one image per class
  std::uint64_t seed = 0;
  double cfg = 4.0;
  int top_k = 900;
  double top_p = 0.95;
  std::string policy = "full";
  bool policy_given = false;
  std::optional<double> budget;
  std::vector<std::string> compare;  // as given: each may hold several specs separated by ';'
  std::string out = "varkv-out";
  std::string device = "cpu";
  bool quiet = false;
};

// Everything a run needs that does not depend on the cache policy.
struct Setup {
  varkv::ref::VarConfig vc;
  varkv::ref::VqVaeConfig qc;
  std::optional<varkv::ref::VarModel> var;
  std::optional<varkv::ref::VqVae> vae;
  std::vector<int> patch_nums;
  std::vector<int> labels;
  int B = 0;
  bool random = true;
  // The CPU path keeps K and V in fp32; the ledger accounts them as such (--device cuda: bf16).
  varkv::KvDTypes kv_types{varkv::DType::fp32, varkv::DType::fp32};
  varkv::ref::GenerationRequest request;
  bool cuda = false;  // --device cuda
#ifdef VARKV_GENERATE_CUDA
  std::shared_ptr<varkv::ref::VarModelCuda> gpu;  // bound to *var (Setup is never moved after load_models)
  std::shared_ptr<varkv::ref::VqVaeCuda> gpu_vae;  // bound to *vae; uploaded once for every --compare run
#endif
};

// What one generation left behind, independent of its cache type.
struct RunOutcome {
  std::string spec;   // the policy spec as run
  std::string cache;  // "FullCache" or "CompressedCache"
  varkv::ref::GenerationResult result;
  std::optional<varkv::KvLedger> ledger;
  double seconds = 0;  // wall time of the generation including decoding
};

// "full" -> "full"; "snapkv:budget=0.1" -> "snapkv".
std::string preset_of(const std::string& spec) { return varkv::parse_policy_spec(spec).name; }

// "snapkv" -> "snapkv:budget=F"; "snapkv:window=8" -> "snapkv:window=8,budget=F".
std::string with_budget(const std::string& spec, double budget) {
  const char* sep = spec.find(':') == std::string::npos ? ":" : (spec.back() == ':' ? "" : ",");
  return fmt::format("{}{}budget={}", spec, sep, budget);
}

bool sets_budget(const varkv::PolicySpec& p) { return p.params.contains("budget") || p.params.contains("tokens"); }

// --budget F with --policy: budget=F is added to the spec. Where the spec sets budget= or tokens= itself,
// or is the full preset, --budget would have no effect: an error.
std::string apply_budget(const std::string& spec, const std::optional<double>& budget) {
  if (!budget) return spec;
  const varkv::PolicySpec p = varkv::parse_policy_spec(spec);
  require(p.name != "full", "--budget {}: policy 'full' keeps every token; pick a compressing preset with --policy "
          "(e.g. snapkv) or use --compare", *budget);
  require(!sets_budget(p), "--budget {} and --policy '{}' both set a budget; give it once", *budget, spec);
  return with_budget(spec, *budget);
}

// One stderr line per scale (nothing with --quiet); the CPU and GPU paths print the same.
varkv::ref::ProgressFn progress_printer(const std::string& tag, bool quiet) {
  return [tag, quiet](const varkv::ref::ScaleProgress& p) {
    if (!quiet)
      fmt::print(stderr, "varkv-generate: {}scale {:>2}/{} ({:>2}x{:<2})  {:7.3f} s  KV {}\n", tag, p.step + 1, p.scales,
                 p.side, p.side, p.seconds, varkv::format_bytes(p.kv_bytes));
  };
}

template <class Cache>
RunOutcome generate_through(const Setup& s, Cache& cache, const std::string& spec, const std::string& cache_name,
                            const std::string& tag, bool quiet) {
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  const auto progress = progress_printer(tag, quiet);
  RunOutcome r;
  r.spec = spec;
  r.cache = cache_name;
  r.result = varkv::ref::generate(*s.var, *s.vae, cache, s.request, progress);
  r.seconds = std::chrono::duration<double>(clock::now() - t0).count();
  r.ledger.emplace(cache.ledger());
  if (!quiet) fmt::print(stderr, "varkv-generate: {}decode {:.3f} s\n", tag, r.result.decode_seconds);
  return r;
}

#ifdef VARKV_GENERATE_CUDA
// --device cuda: the same request on the GPU backend, through DeviceCompressedCache<policy>.
RunOutcome run_policy_cuda(const Setup& s, const std::string& spec, const std::string& tag, bool quiet) {
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  const auto progress = progress_printer(tag, quiet);
  varkv::ref::CudaGenerationOptions options;
  options.policy = spec;
  auto g = varkv::ref::generate_cuda(*s.gpu, *s.gpu_vae, s.request, options, progress);
  RunOutcome r;
  r.spec = spec;
  r.cache = g.cache;
  r.result = std::move(g.result);
  r.seconds = std::chrono::duration<double>(clock::now() - t0).count();
  r.ledger.emplace(*g.ledger);
  if (!quiet)
    fmt::print(stderr, "varkv-generate: {}decode {:.3f} s (GPU), device memory at peak {:.2f} GB\n", tag,
               r.result.decode_seconds, g.device_peak_bytes / 1e9);
  return r;
}
#endif

// --device cuda: the policy must run on the device cache (errors name the device).
void validate_policy_cuda(const std::string& spec) {
#ifdef VARKV_GENERATE_CUDA
  try {
    varkv::ref::check_cuda_policy(spec);
  } catch (const varkv::Error& e) {
    fail("--device cuda: {}", e.what());
  }
#else
  (void)spec;
#endif
}

// Runs the generation through the cache the spec names. `full_as_full_cache`: the full preset runs
// on varkv::FullCache (the plain baseline) instead of CompressedCache<presets::Full>.
RunOutcome run_policy(const Setup& s, const std::string& spec, bool full_as_full_cache, const std::string& tag,
                      bool quiet) {
#ifdef VARKV_GENERATE_CUDA
  if (s.cuda) return run_policy_cuda(s, spec, tag, quiet);
#endif
  const varkv::BatchShape batch{s.B, true};
  return varkv::with_policy(spec, [&](auto policy) -> RunOutcome {
    using Policy = decltype(policy);
    if constexpr (std::is_same_v<Policy, varkv::presets::Full>) {
      if (full_as_full_cache) {
        varkv::FullCache<float> cache(s.vc.geometry(), s.vc.schedule(), batch, s.kv_types);
        return generate_through(s, cache, spec, "FullCache", tag, quiet);
      }
    }
    varkv::CompressedCache<float, Policy> cache(s.vc.geometry(), s.vc.schedule(), batch, s.kv_types, policy);
    return generate_through(s, cache, spec, "CompressedCache", tag, quiet);
  });
}

// Builds the policy and its cache once, so that a bad spec fails before any generation runs.
void validate_policy(const Setup& s, const std::string& spec) {
  if (s.cuda) validate_policy_cuda(spec);
  varkv::with_policy(spec, [&](auto policy) {
    varkv::CompressedCache<float, decltype(policy)> cache(s.vc.geometry(), s.vc.schedule(), varkv::BatchShape{s.B, true},
                                                          s.kv_types, policy);
  });
}

// The specs of --compare: every occurrence split at ';', items trimmed; empty or repeated items fail.
// --budget F adds budget=F to the items without budget= or tokens= of their own (never to full).
std::vector<std::string> compare_specs(const Options& o) {
  std::vector<std::string> specs;
  std::set<std::string> seen;
  bool budget_used = false;
  for (const std::string& arg : o.compare) {
    std::size_t start = 0, index = 0;
    while (true) {
      const auto semi = arg.find(';', start);
      const std::string item = trim(std::string_view(arg).substr(start, semi == std::string::npos ? std::string::npos : semi - start));
      ++index;
      require(!item.empty(), "--compare '{}': item {} is empty (expected SPEC[;SPEC...], e.g. 'snapkv:budget=0.1;h2o')",
              arg, index);
      std::string spec = item;
      const varkv::PolicySpec parsed = varkv::parse_policy_spec(item);
      if (o.budget && parsed.name != "full" && !sets_budget(parsed)) {
        spec = with_budget(item, *o.budget);
        budget_used = true;
      }
      require(seen.insert(spec).second, "--compare: policy '{}' is listed twice", spec);
      specs.push_back(spec);
      if (semi == std::string::npos) break;
      start = semi + 1;
    }
  }
  require(!o.budget || budget_used, "--budget {}: no --compare item takes it (each is full or sets budget=/tokens= "
          "itself)", o.budget.value_or(0.0));
  return specs;
}

Setup make_setup(const Options& o) {
  Setup s;
  require(o.cfg >= 0 && std::isfinite(o.cfg), "--cfg {}: expected a finite value >= 0", o.cfg);
  require(o.top_k >= 0, "--top-k {}: expected >= 0 (0: off, 1: greedy)", o.top_k);
  require(o.top_p >= 0 && o.top_p <= 1, "--top-p {}: expected a value in [0, 1] (0: off)", o.top_p);
  require(o.batch >= 0 && o.batch <= 256, "--batch {}: expected 1..256", o.batch);
  const varkv::ref::ModelSpec spec = varkv::ref::model_spec(o.model);
  s.random = spec.random;
  s.patch_nums = spec.patch_nums;
  s.vc = spec.vc;
  s.qc = spec.qc;
  const auto classes = varkv::ref::parse_ints("--classes", o.classes);
  for (int c : classes) require(c >= 0 && c < 1000, "--classes: class {} is outside 0..999 (ImageNet)", c);
  s.B = o.batch > 0 ? o.batch : static_cast<int>(classes.size());
  for (int b = 0; b < s.B; ++b) s.labels.push_back(classes[static_cast<std::size_t>(b) % classes.size()]);

  s.request.labels = s.labels;
  s.request.cfg = o.cfg;
  s.request.top_k = o.top_k;
  s.request.top_p = o.top_p;
  s.request.seed = o.seed;
  s.cuda = o.device == "cuda";
  if (s.cuda) s.kv_types = {varkv::DType::bf16, varkv::DType::bf16};  // the device cache stores bf16
  return s;
}

void load_models(Setup& s, const Options& o) {
  auto models = varkv::ref::load_models({s.vc, s.qc, s.patch_nums, s.random}, o.model);
  s.var = std::move(models.var);
  s.vae = std::move(models.vae);
#ifdef VARKV_GENERATE_CUDA
  if (s.cuda) {
    s.gpu = std::make_shared<varkv::ref::VarModelCuda>(*s.var);
    s.gpu_vae = std::make_shared<varkv::ref::VqVaeCuda>(*s.vae);
  }
#endif
}

json settings_json(const Setup& s, const Options& o) {
  return {{"weights", s.random ? json("random-init") : json({{"var", o.model.var_path}, {"vae", o.model.vae_path}})},
          {"init_seed", o.model.init_seed},
          {"depth", s.vc.depth},
          {"width", s.vc.width},
          {"heads", s.vc.heads},
          {"vae_ch", s.qc.ch},
          {"patch_nums", s.patch_nums},
          {"classes", s.labels},
          {"batch", s.B},
          {"seed", o.seed},
          {"rng", s.cuda ? "Philox4x32-10 (curand)" : "std::mt19937_64"},
          {"cfg", o.cfg},
          {"top_k", o.top_k},
          {"top_p", o.top_p},
          {"device", o.device}};
}

// What an uncompressed cache would hold, for the fractions.
std::int64_t full_peak_bytes(const Setup& s) {
  return varkv::KvLedger::full(s.vc.geometry(), s.vc.schedule(), varkv::BatchShape{s.B, true}, s.kv_types).peak_bytes();
}

json kv_json(const Setup& s, const RunOutcome& r, std::int64_t full_peak) {
  const varkv::KvLedger& ledger = *r.ledger;
  json per_scale = json::array(), per_layer = json::array();
  for (int step = 0; step < s.vc.scales(); ++step) {
    json layers = json::array();
    for (int l = 0; l < s.vc.depth; ++l) layers.push_back(ledger.bytes(step, l));
    per_layer.push_back(layers);
    per_scale.push_back(ledger.bytes(step));
  }
  return {{"cache", r.cache},
          {"key_dtype", varkv::dtype_name(s.kv_types.key)},
          {"value_dtype", varkv::dtype_name(s.kv_types.value)},
          {"sequences", 2 * s.B},
          {"bytes_per_scale", per_scale},
          {"bytes_per_scale_and_layer", per_layer},
          {"peak_bytes", ledger.peak_bytes()},
          {"full_cache_peak_bytes", full_peak},
          {"fraction_of_full_peak", static_cast<double>(ledger.peak_bytes()) / static_cast<double>(full_peak)}};
}

// A PSNR for JSON: a number, or the string "inf" for identical data (JSON has no infinity).
json psnr_json(double db) {
  if (std::isinf(db) && db > 0) return "inf";
  if (std::isnan(db)) return nullptr;
  return db;
}
json psnr_list_json(const std::vector<double>& v) {
  json a = json::array();
  for (double x : v) a.push_back(psnr_json(x));
  return a;
}

void write_json(const std::filesystem::path& path, const json& j) {
  std::ofstream f(path);
  f << j.dump(2) << "\n";
  require(f.good(), "cannot write '{}'", path.string());
}

std::string percent(double fraction) { return fmt::format("{:.1f}%", 100.0 * fraction); }

// ---- the normal mode: one policy -------------------------------------------------------------

int run_single(const Options& o) {
  using clock = std::chrono::steady_clock;
  const auto t_start = clock::now();
  Setup s = make_setup(o);
  const std::string spec = apply_budget(o.policy, o.budget);
  validate_policy(s, spec);
  load_models(s, o);
  std::filesystem::create_directories(o.out);
  require(std::filesystem::is_directory(o.out), "--out '{}' is not a directory", o.out);

  const RunOutcome run = run_policy(s, spec, true, "", o.quiet);
  const auto& result = run.result;
  const int side = result.image_side, B = s.B;
  json images = json::array();
  for (int b = 0; b < B; ++b) {
    const std::string name = fmt::format("image_{:03d}.png", b);
    varkv::ref::write_png((std::filesystem::path(o.out) / name).string(), result.pixels, B, side, side, b);
    images.push_back({{"file", name}, {"class", s.labels[static_cast<std::size_t>(b)]}});
  }
  varkv::ref::write_grid_png((std::filesystem::path(o.out) / "grid.png").string(), result.pixels, B, side, side);

  const varkv::KvLedger& ledger = *run.ledger;
  json scales = json::array();
  for (int step = 0; step < s.vc.scales(); ++step)
    scales.push_back({{"step", step},
                      {"side", s.patch_nums[static_cast<std::size_t>(step)]},
                      {"tokens", std::int64_t{s.patch_nums[static_cast<std::size_t>(step)]} * s.patch_nums[static_cast<std::size_t>(step)]},
                      {"seconds", result.scale_seconds[static_cast<std::size_t>(step)]},
                      {"kv_bytes", ledger.bytes(step)},
                      {"min_top2_gap", result.min_gap_per_scale[static_cast<std::size_t>(step)]}});
  const varkv::PolicySpec parsed = varkv::parse_policy_spec(spec);
  json budget = nullptr;  // null: the preset's own default
  if (parsed.name == "full") budget = 1.0;
  if (const auto it = parsed.params.find("budget"); it != parsed.params.end()) budget = std::stod(it->second);
  json settings = settings_json(s, o);
  settings["policy"] = spec;
  settings["policy_preset"] = parsed.name;
  settings["budget"] = budget;
  const double total = std::chrono::duration<double>(clock::now() - t_start).count();
  const json report = {{"tool", "varkv-generate"},
                       {"settings", settings},
                       {"images", images},
                       {"grid", "grid.png"},
                       {"scales", scales},
                       {"decode_seconds", result.decode_seconds},
                       {"total_seconds", total},
                       {"kv", kv_json(s, run, full_peak_bytes(s))}};
  write_json(std::filesystem::path(o.out) / "report.json", report);
  if (!o.quiet)
    fmt::print(stderr, "varkv-generate: wrote {} images, grid.png and report.json to {} (policy {}, peak KV {}, {:.2f} s)\n",
               B, o.out, spec, varkv::format_bytes(ledger.peak_bytes()), total);
  return 0;
}

// ---- --compare: the full cache, then each policy ---------------------------------------------

double scale_seconds(const varkv::ref::GenerationResult& r) {
  double t = 0;
  for (double x : r.scale_seconds) t += x;
  return t;
}

struct CompareRow {
  const RunOutcome* run = nullptr;
  std::optional<varkv::ref::GenerationFidelity> fidelity;  // empty for the reference itself
};

void print_compare_table(const Setup& s, const Options& o, const std::vector<CompareRow>& rows, std::int64_t full_peak) {
  std::size_t w = std::string_view("policy").size();
  const auto name = [](const CompareRow& r) { return r.fidelity ? r.run->spec : r.run->spec + " (reference)"; };
  for (const auto& r : rows) w = std::max(w, name(r).size());
  fmt::print("{:<{}}  {:>10}  {:>7}  {:>10}  {:>10}  {:>11}  {:>10}  {:>8}\n", "policy", w, "peak KV", "of full",
             "image PSNR", "f_hat PSNR", "same tokens", "first diff", "scales s");
  for (const auto& r : rows) {
    const std::int64_t peak = r.run->ledger->peak_bytes();
    std::string ipsnr = "-", fpsnr = "-", same = "-", first = "-";
    if (r.fidelity) {
      ipsnr = varkv::ref::format_psnr(r.fidelity->image_psnr) + (std::isinf(r.fidelity->image_psnr) ? "" : " dB");
      fpsnr = varkv::ref::format_psnr(r.fidelity->f_hat_psnr) + (std::isinf(r.fidelity->f_hat_psnr) ? "" : " dB");
      same = fmt::format("{:.2f}%", 100.0 * r.fidelity->tokens.overall);
      const int d = r.fidelity->tokens.first_differing_scale;
      first = d < 0 ? "none" : fmt::format("scale {}", d + 1);
    }
    fmt::print("{:<{}}  {:>10}  {:>7}  {:>10}  {:>10}  {:>11}  {:>10}  {:>8}\n", name(r), w,
               varkv::format_bytes(peak), percent(static_cast<double>(peak) / static_cast<double>(full_peak)), ipsnr,
               fpsnr, same, first, fmt::format("{:.2f}", scale_seconds(r.run->result)));
  }
  fmt::print("\ntoken agreement with the full cache per scale (%)\n{:<{}}", "policy", w);
  for (int pn : s.patch_nums) fmt::print("  {:>5}", fmt::format("{}x{}", pn, pn));
  fmt::print("\n");
  for (const auto& r : rows) {
    if (!r.fidelity) continue;
    fmt::print("{:<{}}", name(r), w);
    for (double a : r.fidelity->tokens.per_scale) fmt::print("  {:>5.1f}", 100.0 * a);
    fmt::print("\n");
  }
  fmt::print("\nPSNR against the full-cache run (images: peak 1; f_hat: peak = its range); scales s: time of the scale "
             "steps\n(transformer, sampling, quantizer; decoding not included); scale numbers count from 1; after the "
             "first\ndiffering scale the inputs differ, so later agreement shows drift, not a cache error alone.\n");
  if (o.top_k != 1)
    fmt::print("Sampled (--top-k {}): every run uses --seed {}, so agreement also reflects sampling divergence; "
               "--top-k 1 is deterministic.\n",
               o.top_k, o.seed);
}

json run_json(const Setup& s, const RunOutcome& r, std::int64_t full_peak) {
  return {{"policy", r.spec},
          {"preset", preset_of(r.spec)},
          {"kv", kv_json(s, r, full_peak)},
          {"seconds",
           {{"total", r.seconds},
            {"scales", scale_seconds(r.result)},
            {"per_scale", r.result.scale_seconds},
            {"decode", r.result.decode_seconds}}},
          {"min_top2_gap_per_scale", r.result.min_gap_per_scale}};
}

int run_compare(const Options& o) {
  require(!o.policy_given, "--policy and --compare cannot be combined: --compare runs the full cache first, then each "
          "listed policy");
  Setup s = make_setup(o);
  const std::vector<std::string> specs = compare_specs(o);
  for (std::size_t i = 0; i < specs.size(); ++i) {
    try {
      validate_policy(s, specs[i]);
    } catch (const varkv::Error& e) {
      fail("--compare item {} ('{}'): {}", i + 1, specs[i], e.what());
    }
  }
  load_models(s, o);
  std::filesystem::create_directories(o.out);
  require(std::filesystem::is_directory(o.out), "--out '{}' is not a directory", o.out);

  const std::size_t total_runs = specs.size() + 1;
  std::vector<RunOutcome> runs;
  runs.reserve(total_runs);
  runs.push_back(run_policy(s, "full", true, fmt::format("[1/{} full cache] ", total_runs), o.quiet));
  for (std::size_t i = 0; i < specs.size(); ++i) {
    try {
      runs.push_back(run_policy(s, specs[i], false, fmt::format("[{}/{} {}] ", i + 2, total_runs, specs[i]), o.quiet));
    } catch (const varkv::Error& e) {
      fail("--compare item {} ('{}'): {}", i + 1, specs[i], e.what());
    }
  }

  const std::int64_t full_peak = full_peak_bytes(s);
  std::vector<CompareRow> rows;
  rows.push_back({&runs[0], std::nullopt});
  for (std::size_t i = 1; i < runs.size(); ++i)
    rows.push_back({&runs[i], varkv::ref::compare_generations(runs[0].result, runs[i].result, s.patch_nums)});

  const int side = runs[0].result.image_side;
  std::vector<std::span<const float>> columns;
  for (const auto& r : runs) columns.emplace_back(r.result.pixels);
  std::vector<std::string> labels{"full cache"};
  for (const auto& spec : specs) labels.push_back(spec);
  varkv::ref::write_comparison_grid_png((std::filesystem::path(o.out) / "compare.png").string(), columns, s.B, side, side,
                                        labels);

  json policies = json::array();
  json grid_columns = json::array({"full cache (reference)"});
  for (std::size_t i = 1; i < rows.size(); ++i) {
    const auto& f = *rows[i].fidelity;
    json j = run_json(s, *rows[i].run, full_peak);
    j["tokens"] = {{"agreement_per_scale", f.tokens.per_scale},
                   {"same_per_scale", f.tokens.same_per_scale},
                   {"tokens_per_scale", f.tokens.tokens_per_scale},
                   {"agreement", f.tokens.overall},
                   {"first_differing_scale", f.tokens.first_differing_scale < 0 ? json(nullptr)
                                                                                 : json(f.tokens.first_differing_scale)}};
    j["psnr"] = {{"image", psnr_json(f.image_psnr)},
                 {"image_per_image", psnr_list_json(f.image_psnr_per_image)},
                 {"f_hat", psnr_json(f.f_hat_psnr)},
                 {"f_hat_per_image", psnr_list_json(f.f_hat_psnr_per_image)},
                 {"f_hat_peak", f.f_hat_peak}};
    policies.push_back(j);
    grid_columns.push_back(rows[i].run->spec);
  }
  json grid_rows = json::array();
  for (int b = 0; b < s.B; ++b) grid_rows.push_back({{"image", b}, {"class", s.labels[static_cast<std::size_t>(b)]}});
  const json report = {
      {"tool", "varkv-generate"},
      {"mode", "compare"},
      {"settings", settings_json(s, o)},
      {"deterministic", o.top_k == 1},
      {"notes",
       {"Every run uses the same labels and --seed; with sampling (--top-k != 1) token agreement also reflects sampling "
        "divergence, greedy --top-k 1 is deterministic.",
        "Token agreement per scale is the fraction of identical tokens over all images; after the first differing scale "
        "the inputs differ.",
        "PSNR in dB against the full-cache run: images with peak 1 (pixels in [0, 1]), f_hat with peak = the range (max - "
        "min) of the reference f_hat; \"inf\" means identical."}},
      {"grid", "compare.png"},
      {"grid_columns", grid_columns},
      {"grid_rows", grid_rows},
      {"reference", run_json(s, runs[0], full_peak)},
      {"policies", policies}};
  write_json(std::filesystem::path(o.out) / "compare.json", report);
  print_compare_table(s, o, rows, full_peak);
  if (!o.quiet)
    fmt::print(stderr, "varkv-generate: wrote compare.json and compare.png ({} runs x {} images) to {}\n", total_runs, s.B,
               o.out);
  return 0;
}

// --device cuda needs a CUDA build and a usable GPU; both refusals are one line naming the option.
void check_device(const Options& o) {
  require(o.device == "cpu" || o.device == "cuda", "--device '{}': expected cpu or cuda", o.device);
  if (o.device != "cuda") return;
#ifdef VARKV_GENERATE_CUDA
  std::string why;
  require(varkv::ref::cuda_device_available(&why), "--device cuda: no usable CUDA device ({}); use --device cpu", why);
#else
  fail("--device cuda: this varkv-generate was built without CUDA (nvcc was not found at configure time); use "
       "--device cpu");
#endif
}

int run(const Options& o) {
  check_device(o);
  if (o.budget)
    require(std::isfinite(*o.budget) && *o.budget > 0 && *o.budget <= 1, "--budget {}: expected a fraction in (0, 1]",
            *o.budget);
  return o.compare.empty() ? run_single(o) : run_compare(o);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Class-conditional image generation with the reference VAR model (official architecture and "
               "autoregressive_infer_cfg) through a varkv KV cache."};
  Options o;
  const std::string presets(varkv::policy_names);
  varkv::ref::add_model_options(app, o.model);
  app.add_option("--classes", o.classes, "ImageNet classes, comma-separated (cycled over --batch)")->capture_default_str();
  app.add_option("--batch", o.batch, "images to generate (default: one per class)");
  app.add_option("--seed", o.seed, "sampling seed (std::mt19937_64; the same for every --compare run)")
      ->capture_default_str();
  app.add_option("--cfg", o.cfg, "classifier-free guidance ratio")->capture_default_str();
  app.add_option("--top-k", o.top_k, "top-k filter (0: off, 1: greedy, deterministic)")->capture_default_str();
  app.add_option("--top-p", o.top_p, "top-p filter (0: off)")->capture_default_str();
  app.add_option("--policy", o.policy,
                 "KV cache policy PRESET[:key=value,...], e.g. snapkv:budget=0.1,window=16 (presets: " + presets + ")")
      ->capture_default_str();
  app.add_option("--budget", o.budget,
                 "shorthand for budget=F (fraction of the full cache): added to --policy (an error where it is full "
                 "or sets budget=/tokens=) and to each --compare item other than full without its own budget");
  app.add_option("--compare", o.compare,
                 "SPEC[;SPEC...] (repeatable): run the full cache, then each policy, on the same labels and seed; "
                 "prints a table and writes compare.json and compare.png (instead of the per-image PNGs)")
      ->allow_extra_args(false);
  app.add_option("--out", o.out, "output folder")->capture_default_str();
  app.add_option("--device", o.device,
                 "cpu or cuda (GPU: bf16 transformer, device KV cache, quantizer and decoder; "
                 "Philox sampling)")
      ->capture_default_str();
  app.add_flag("--quiet", o.quiet, "no progress on stderr");
  return varkv::ref::tool_main("varkv-generate", app, argc, argv, [&] { return run(o); },
                               [&](const CLI::App& a) { o.policy_given = a.count("--policy") > 0; });
}

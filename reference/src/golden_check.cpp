#include "varkv_reference/golden_check.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "varkv/cache/full_cache.hpp"
#include "varkv/core/error.hpp"
#include "varkv_reference/generate.hpp"
#include "varkv_reference/safetensors.hpp"
#include "varkv_reference/var_model.hpp"
#include "varkv_reference/vqvae.hpp"

namespace varkv::ref {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

template <class T>
T field(const json& meta, const std::string& path, const char* key) {
  require(meta.contains(key), "{}: missing field '{}'", path, key);
  try {
    return meta.at(key).get<T>();
  } catch (const json::exception& e) {
    fail("{}: field '{}' has the wrong type ({})", path, key, e.what());
  }
}

double max_abs_diff(std::span<const float> a, std::span<const float> b) {
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double d = std::abs(double(a[i]) - double(b[i]));
    if (!(d <= m)) m = std::isnan(d) ? INFINITY : d;
  }
  return m;
}

GoldenCheck make_check(std::string name, std::string measure, double measured, double bound, bool higher_is_better,
                       std::string detail) {
  GoldenCheck c{std::move(name), std::move(measure), measured, bound, higher_is_better, false, std::move(detail)};
  c.pass = higher_is_better ? measured >= bound : measured <= bound;
  return c;
}

}  // namespace

std::string format_check(const GoldenCheck& c) {
  return fmt::format("{}  {:<30} {} {:.3e} (bound {} {:.1e}){}{}", c.pass ? "PASS" : "FAIL", c.name, c.measure,
                     c.measured, c.higher_is_better ? ">=" : "<=",
                     c.bound, c.detail.empty() ? "" : "  ", c.detail);
}

GoldenReport check_golden_dir(const std::string& dir) {
  const auto t_start = std::chrono::steady_clock::now();
  GoldenReport report;
  report.dir = dir;
  const std::string meta_path = (fs::path(dir) / "meta.json").string();
  std::ifstream in(meta_path);
  require(in.good(), "{}: cannot open (is '{}' a golden directory?)", meta_path, dir);
  json meta;
  try {
    meta = json::parse(in);
  } catch (const json::exception& e) {
    fail("{}: invalid JSON ({})", meta_path, e.what());
  }

  VarConfig vc;
  vc.depth = field<int>(meta, meta_path, "depth");
  vc.width = field<int>(meta, meta_path, "width");
  vc.heads = field<int>(meta, meta_path, "heads");
  vc.num_classes = field<int>(meta, meta_path, "num_classes");
  vc.vocab = field<int>(meta, meta_path, "vocab");
  vc.Cvae = field<int>(meta, meta_path, "Cvae");
  vc.patch_nums = field<std::vector<int>>(meta, meta_path, "patch_nums");
  vc.validate();
  VqVaeConfig qc;
  qc.vocab = vc.vocab;
  qc.Cvae = vc.Cvae;
  qc.ch = field<int>(meta, meta_path, "vae_ch");
  qc.patch_nums = vc.patch_nums;
  const auto labels = field<std::vector<int>>(meta, meta_path, "labels");
  const double cfg = field<double>(meta, meta_path, "cfg");
  const int top_k = field<int>(meta, meta_path, "top_k");
  const double top_p = field<double>(meta, meta_path, "top_p");
  const auto seed = field<std::uint64_t>(meta, meta_path, "seed");
  const auto gaps = field<std::vector<double>>(meta, meta_path, "gen_min_gap_per_scale");
  require(top_k == 1, "{}: golden generation used top_k = {}; only greedy golden data (top_k = 1) can be checked "
                      "(torch's sampling generator is not reproduced)", meta_path, top_k);
  require(static_cast<int>(gaps.size()) == vc.scales(), "{}: gen_min_gap_per_scale has {} entries, patch_nums {}",
          meta_path, gaps.size(), vc.scales());

  const auto var_file = SafetensorsFile::open((fs::path(dir) / "var.safetensors").string());
  const auto vae_file = SafetensorsFile::open((fs::path(dir) / "vae.safetensors").string());
  const auto gold = SafetensorsFile::open((fs::path(dir) / "golden.safetensors").string());
  const VarModel var = VarModel::load(var_file, vc);
  const VqVae vae = VqVae::load(vae_file, qc);
  const std::int64_t L = vc.total_tokens(), V = vc.vocab, fl = vc.first_l();
  const int P = vc.patch_nums.back();

  // ---- teacher forcing ----
  {
    const auto tf_labels64 = gold.load_int("tf_labels");
    require(gold.shape("tf_labels").size() == 1 && !tf_labels64.empty(), "{}: tf_labels must be a non-empty vector",
            gold.path());
    const std::int64_t B = static_cast<std::int64_t>(tf_labels64.size());
    const std::vector<int> tf_labels(tf_labels64.begin(), tf_labels64.end());
    const std::int64_t tok_shape[] = {B, L};
    const auto tf_tokens = gold.load_int("tf_tokens", tok_shape);
    const std::int64_t in_shape[] = {B, L - fl, vc.Cvae};
    const auto gold_input = gold.load("tf_var_input", in_shape);
    const auto ours_input = vae.idxBl_to_var_input(tf_tokens, static_cast<int>(B));
    require(ours_input.size() == gold_input.data.size(), "tf_var_input: our quantizer returned {} values, golden {}",
            ours_input.size(), gold_input.data.size());
    report.checks.push_back(make_check("tf_var_input", "max abs error", max_abs_diff(ours_input, gold_input.data), 1e-5, false,
                                       "idxBl_to_var_input(tf_tokens)"));

    const auto t0 = std::chrono::steady_clock::now();
    const auto logits = teacher_forcing_logits(var, tf_labels, ours_input);
    const double tf_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const auto rows_pos = gold.load_int("tf_rows_pos");
    if (meta.contains("tf_rows_pos")) {
      const auto meta_pos = field<std::vector<std::int64_t>>(meta, meta_path, "tf_rows_pos");
      require(meta_pos == rows_pos, "{}: tf_rows_pos differs from golden.safetensors' tf_rows_pos", meta_path);
    }
    const std::int64_t P_rows = static_cast<std::int64_t>(rows_pos.size());
    const std::int64_t rows_shape[] = {B, P_rows, V};
    const auto rows = gold.load("tf_rows", rows_shape);
    double worst = 0;
    std::string worst_at;
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t p = 0; p < P_rows; ++p) {
        const std::int64_t pos = rows_pos[p];
        require(pos >= 0 && pos < L, "{}: tf_rows_pos[{}] = {} outside 0..{}", gold.path(), p, pos, L - 1);
        std::span<const float> g(rows.data.data() + (b * P_rows + p) * V, static_cast<std::size_t>(V));
        std::span<const float> o(logits.data() + (b * L + pos) * V, static_cast<std::size_t>(V));
        double gmax = 0;
        for (float v : g) gmax = std::max(gmax, double(std::abs(v)));
        const double rel = max_abs_diff(o, g) / std::max(gmax, 1e-30);
        if (!(rel <= worst)) {
          worst = std::isnan(rel) ? INFINITY : rel;
          worst_at = fmt::format("worst: sequence {}, position {}", b, pos);
        }
      }
    report.checks.push_back(make_check("tf_rows", "max rel error", worst, 1e-4, false,
                                       fmt::format("max|d| / max|golden| per row, {} rows; {}", B * P_rows, worst_at)));

    const auto lse_gold = gold.load("tf_lse", tok_shape);
    const auto argmax_gold = gold.load_int("tf_argmax", tok_shape);
    double lse_err = 0;
    std::int64_t equal = 0;
    for (std::int64_t r = 0; r < B * L; ++r) {
      const float* row = logits.data() + r * V;
      const auto mx = std::max_element(row, row + V);
      double s = 0;
      for (std::int64_t j = 0; j < V; ++j) s += std::exp(double(row[j]) - double(*mx));
      const double lse = double(*mx) + std::log(s);
      const double d = std::abs(lse - lse_gold.data[r]);
      if (!(d <= lse_err)) lse_err = std::isnan(d) ? INFINITY : d;
      equal += (mx - row) == argmax_gold[r];
    }
    report.checks.push_back(make_check("tf_lse", "max abs error", lse_err, 1e-4, false, fmt::format("{} positions; forward {:.2f} s", B * L, tf_seconds)));
    report.checks.push_back(make_check("tf_argmax", "agreement", double(equal) / double(B * L), 0.999, true,
                                       fmt::format("{} of {} equal", equal, B * L)));
  }

  // ---- greedy generation with CFG ----
  {
    const std::int64_t B = static_cast<std::int64_t>(labels.size());
    require(B > 0, "{}: 'labels' is empty", meta_path);
    const auto gen_labels = gold.load_int("gen_labels");
    require(gen_labels.size() == labels.size() && std::equal(labels.begin(), labels.end(), gen_labels.begin()),
            "{}: gen_labels differ from meta.json's labels", gold.path());
    const std::int64_t tok_shape[] = {B, L};
    const auto gold_tokens = gold.load_int("gen_tokens", tok_shape);
    const std::int64_t fhat_shape[] = {B, vc.Cvae, P, P};
    const auto gold_fhat = gold.load("gen_f_hat", fhat_shape);
    const std::int64_t img_shape[] = {B, 3, 16 * P, 16 * P};
    const auto gold_image = gold.load("gen_image", img_shape);

    FullCache<float> cache(vc.geometry(), vc.schedule(), BatchShape{static_cast<int>(B), true},
                           KvDTypes{DType::fp32, DType::fp32});
    GenerationRequest req;
    req.labels = labels;
    req.cfg = cfg;
    req.top_k = top_k;
    req.top_p = top_p;
    req.seed = seed;
    req.decode = false;  // decoded below, only for the images that need it
    const auto t0 = std::chrono::steady_clock::now();
    GenerationResult r = generate(var, vae, cache, req);
    const double gen_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    const ScaleSchedule sched = vc.schedule();
    std::vector<bool> image_agrees(static_cast<std::size_t>(B), true);
    std::int64_t equal = 0;
    int confident_end = 0;  // leading scales with gap > 1e-3
    while (confident_end < vc.scales() && gaps[confident_end] > 1e-3) ++confident_end;
    std::int64_t confident_mismatch = 0;
    std::string per_scale;
    for (int s = 0; s < vc.scales(); ++s) {
      std::int64_t mism = 0;
      for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t t = sched.begin(s); t < sched.end(s); ++t)
          if (r.tokens[b * L + t] != gold_tokens[b * L + t]) {
            ++mism;
            image_agrees[b] = false;
          }
      equal += sched.tokens(s) * B - mism;
      if (s < confident_end) confident_mismatch += mism;
      per_scale += fmt::format("{}{}", s ? "," : "", mism);
    }
    report.checks.push_back(make_check(
        "gen_tokens_confident", "differing tokens", double(confident_mismatch), 0, false,
        fmt::format("differing tokens on scales 0..{} (gap > 1e-3); per scale: {}", confident_end - 1, per_scale)));
    report.checks.push_back(make_check("gen_tokens_overall", "agreement", double(equal) / double(B * L), 0.99, true,
                                       fmt::format("{} of {} equal; generation {:.2f} s", equal, B * L, gen_seconds)));

    // f_hat from the golden tokens, for every image.
    std::vector<float> f_rebuilt(static_cast<std::size_t>(B) * vc.Cvae * P * P, 0.0f);
    for (int s = 0; s < vc.scales(); ++s) {
      const std::int64_t n = sched.tokens(s);
      std::vector<std::int32_t> t(static_cast<std::size_t>(B * n));
      for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t i = 0; i < n; ++i) t[b * n + i] = static_cast<std::int32_t>(gold_tokens[b * L + sched.begin(s) + i]);
      vae.next_autoregressive_input(s, f_rebuilt, static_cast<int>(B), t);
    }
    report.checks.push_back(make_check("gen_f_hat_from_golden_tokens", "max abs error", max_abs_diff(f_rebuilt, gold_fhat.data), 1e-3,
                                       false, "quantizer accumulation of the golden gen_tokens"));

    // Per image: generated where tokens agree, rebuilt-from-golden-tokens otherwise.
    const std::int64_t fper = std::int64_t{vc.Cvae} * P * P, iper = 3 * std::int64_t{16 * P} * (16 * P);
    std::vector<float> f_compare(f_rebuilt.size());
    int generated = 0;
    for (std::int64_t b = 0; b < B; ++b) {
      const auto& src = image_agrees[b] ? r.f_hat : f_rebuilt;
      std::copy_n(src.begin() + b * fper, fper, f_compare.begin() + b * fper);
      generated += image_agrees[b];
    }
    const std::string how = fmt::format("{} of {} images as generated, the rest from golden tokens", generated, B);
    report.checks.push_back(make_check("gen_f_hat", "max abs error", max_abs_diff(f_compare, gold_fhat.data), 1e-3, false, how));
    const auto t1 = std::chrono::steady_clock::now();
    const auto image = vae.decode(f_compare, static_cast<int>(B));
    const double dec_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
    require(static_cast<std::int64_t>(image.size()) == B * iper, "decode returned {} values, expected {}", image.size(),
            B * iper);
    report.checks.push_back(make_check("gen_image", "max abs error", max_abs_diff(image, gold_image.data), 1e-3, false,
                                       fmt::format("{}; decode {:.2f} s", how, dec_seconds)));
  }
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  return report;
}

}  // namespace varkv::ref

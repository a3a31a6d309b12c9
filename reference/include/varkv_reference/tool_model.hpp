#pragma once
//! \file
//! The model half of the reference tools' command lines (varkv-generate, varkv-calibrate): the
//! weight / random-init / shape options, their checks, and loading the VAR + VQ-VAE pair they name.
//! One place, so that every tool accepts and refuses the same things with the same messages.
//!
//! \par Snippet
//! \code
//! varkv::ref::ModelOptions m;
//! varkv::ref::add_model_options(app, m);
//! ... parse ...
//! const auto spec = varkv::ref::model_spec(m);   // throws varkv::Error naming the bad option
//! auto models = varkv::ref::load_models(spec, m);
//! \endcode
#include <cstdint>
#include <exception>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include <CLI/CLI.hpp>

#include "varkv/core/error.hpp"
#include "varkv_reference/safetensors.hpp"
#include "varkv_reference/var_model.hpp"
#include "varkv_reference/vqvae.hpp"

namespace varkv::ref {

//! Comma-separated integers; `parse` converts one item (throws std::exception when it cannot).
//! A bad item is a varkv::Error "<what> '<text>': '<item>' is not an integer".
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

inline std::vector<int> parse_ints(const std::string& what, const std::string& text) {
  return parse_list<int>(what, text, [](const std::string& s, std::size_t* used) { return std::stoi(s, used); });
}

inline std::vector<std::uint64_t> parse_seeds(const std::string& what, const std::string& text) {
  return parse_list<std::uint64_t>(what, text, [](const std::string& s, std::size_t* used) -> std::uint64_t {
    if (!s.empty() && (s[0] == '-' || s[0] == '+')) return *used = 0, 0;  // stoull accepts "-1"
    return std::stoull(s, used);
  });
}

struct ModelOptions {
  std::string var_path, vae_path;
  bool random_init = false;
  int depth = 4;
  int vae_ch = 160;
  std::string patch_nums = "1,2,3,4,5,6,8,10,13,16";
  std::uint64_t init_seed = 0;
};

//! --var, --vae, --random-init, --depth, --vae-ch, --patch-nums, --init-seed.
inline void add_model_options(CLI::App& app, ModelOptions& m) {
  app.add_option("--var", m.var_path, "VAR transformer weights (safetensors, official names)");
  app.add_option("--vae", m.vae_path, "VQ-VAE weights (safetensors, official names)");
  app.add_flag("--random-init", m.random_init, "random weights (the default when --var/--vae are not given)");
  app.add_option("--depth", m.depth, "VAR depth d (width 64d, d heads)")->capture_default_str();
  app.add_option("--vae-ch", m.vae_ch, "VQ-VAE decoder base channels (official: 160)")->capture_default_str();
  app.add_option("--patch-nums", m.patch_nums, "scale schedule: token map sides")->capture_default_str();
  app.add_option("--init-seed", m.init_seed, "seed of the random weights")->capture_default_str();
}

//! The checked configurations the options name (nothing loaded yet: a bad option fails fast).
struct ModelSpec {
  VarConfig vc;
  VqVaeConfig qc;
  std::vector<int> patch_nums;
  bool random = true;  //!< random weights (no --var/--vae)
};

inline ModelSpec model_spec(const ModelOptions& m) {
  require(m.vae_path.empty() == m.var_path.empty(), "--var and --vae go together (or neither, for --random-init)");
  ModelSpec s;
  s.random = m.var_path.empty();
  require(!(m.random_init && !s.random), "--random-init cannot be combined with --var/--vae");
  s.patch_nums = parse_ints("--patch-nums", m.patch_nums);
  s.vc = VarConfig::from_depth(m.depth, s.patch_nums);
  require(m.vae_ch > 0 && m.vae_ch % 32 == 0, "--vae-ch {}: expected a positive multiple of 32 (GroupNorm(32))", m.vae_ch);
  s.qc.ch = m.vae_ch;
  s.qc.patch_nums = s.patch_nums;
  s.vc.validate();
  return s;
}

struct LoadedModels {
  std::optional<VarModel> var;
  std::optional<VqVae> vae;
};

//! Random weights (VAR seeded with --init-seed, the VQ-VAE with --init-seed + 1) or the two files.
inline LoadedModels load_models(const ModelSpec& s, const ModelOptions& m) {
  LoadedModels out;
  if (s.random) {
    out.var.emplace(VarModel::random(s.vc, m.init_seed));
    out.vae.emplace(VqVae::random(s.qc, m.init_seed + 1));
  } else {
    out.var.emplace(VarModel::load(SafetensorsFile::open(m.var_path), s.vc));
    out.vae.emplace(VqVae::load(SafetensorsFile::open(m.vae_path), s.qc));
  }
  return out;
}

}  // namespace varkv::ref

#pragma once
//! \file
//! Host registry: "preset:key=value,key=value" -> a policy object of the preset's type, handed to a callable.
//!
//! \par Overview
//! | preset | parameters (defaults) |
//! |---|---|
//! | full | none |
//! | scalekv | budget (0.1), tokens, profile (none: every layer the average), drafter (1.0), floor (16), base (0), grid (4), kernel (5), stat (mass / logit) |
//! | amskv | condensed (2), local (1), demanding_local (-1: all), profile (none: no demanding layer) |
//! | streamingllm | budget, tokens, sinks (4) |
//! | h2o | budget, tokens |
//! | snapkv | budget, tokens, window (0: whole current map), kernel (7) |
//! | pyramidkv | budget, ratio (0.5) |
//! | adakv | budget, tokens, floor (0.2), window, kernel |
//! | keynorm, random | budget, tokens (random: seed) |
//! `budget` is the fraction of the full cache per row (0.1); `tokens` (if given) an absolute per-row
//! budget. Every compressing preset takes `cfg=separate|shared` (default separate). `profile=PATH`
//! reads a varkv-calibrate profile, so this header needs nlohmann-json (the policy headers do not).
//! Unknown names, keys or unparsable values throw varkv::Error naming the preset and the parameter.
//!
//! \par Snippet
//! \code
//! varkv::with_policy("scalekv:budget=0.1", [&](auto policy) {
//!   varkv::CompressedCache<float, decltype(policy)> cache(geo, sched, batch, dtypes, policy);
//! });
//! \endcode
#include <charconv>
#include <map>
#include <string>
#include <string_view>

#include "varkv/policy/classification/profile_json.hpp"
#include "varkv/policy/presets.hpp"

namespace varkv {

struct PolicySpec {
  std::string name;
  std::map<std::string, std::string, std::less<>> params;
};

inline PolicySpec parse_policy_spec(std::string_view spec) {
  PolicySpec out;
  const auto colon = spec.find(':');
  out.name = std::string(spec.substr(0, colon));
  require(!out.name.empty(), "policy '{}': empty preset name", spec);
  if (colon == std::string_view::npos) return out;
  std::string_view rest = spec.substr(colon + 1);
  while (!rest.empty()) {
    const auto comma = rest.find(',');
    const std::string_view item = rest.substr(0, comma);
    const auto eq = item.find('=');
    require(eq != std::string_view::npos && eq > 0 && eq + 1 < item.size(),
            "policy '{}': parameter '{}' is not key=value", spec, item);
    require(out.params.emplace(std::string(item.substr(0, eq)), std::string(item.substr(eq + 1))).second,
            "policy '{}': parameter '{}' given twice", spec, item.substr(0, eq));
    if (comma == std::string_view::npos) break;
    rest = rest.substr(comma + 1);
  }
  return out;
}

namespace detail {
class ParamReader {
 public:
  ParamReader(const PolicySpec& s, std::string_view allowed) : spec_(s) {
    for (const auto& [k, v] : s.params) {
      bool ok = false;
      std::string_view a = allowed;
      while (!a.empty()) {
        const auto sp = a.find(' ');
        if (a.substr(0, sp) == k) ok = true;
        if (sp == std::string_view::npos) break;
        a = a.substr(sp + 1);
      }
      require(!allowed.empty(), "policy '{}': takes no parameters (got '{}')", s.name, k);
      require(ok, "policy '{}': unknown parameter '{}' (allowed: {})", s.name, k, allowed);
    }
  }
  double real(std::string_view key, double fallback) const {
    const auto it = spec_.params.find(key);
    if (it == spec_.params.end()) return fallback;
    std::size_t used = 0;
    double x = 0;
    try { x = std::stod(it->second, &used); } catch (...) { used = 0; }
    require(used == it->second.size() && !it->second.empty(), "policy '{}': parameter {}='{}' is not a number",
            spec_.name, key, it->second);
    return x;
  }
  std::int64_t integer(std::string_view key, std::int64_t fallback) const {
    const auto it = spec_.params.find(key);
    if (it == spec_.params.end()) return fallback;
    std::int64_t x = 0;
    const auto& s = it->second;
    const auto r = std::from_chars(s.data(), s.data() + s.size(), x);
    require(r.ec == std::errc{} && r.ptr == s.data() + s.size(), "policy '{}': parameter {}='{}' is not an integer",
            spec_.name, key, s);
    return x;
  }
  std::string text(std::string_view key) const {
    const auto it = spec_.params.find(key);
    return it == spec_.params.end() ? std::string() : it->second;
  }
  std::int64_t kernel(std::int64_t fallback) const {
    const auto k = integer("kernel", fallback);
    require(k >= 1 && k % 2 == 1, "policy '{}': kernel={} must be odd and >= 1", spec_.name, k);
    return k;
  }
  std::int32_t window() const {
    const auto w = integer("window", 0);
    require(w >= 0, "policy '{}': window={} is negative (0: the whole current map)", spec_.name, w);
    return static_cast<std::int32_t>(w);
  }
  bool cfg_shared() const {
    const std::string v = text("cfg");
    require(v.empty() || v == "separate" || v == "shared", "policy '{}': cfg='{}' (expected separate or shared)",
            spec_.name, v);
    return v == "shared";
  }
  KeyStatistic statistic() const {
    const std::string v = text("stat");
    require(v.empty() || v == "mass" || v == "logit", "policy '{}': stat='{}' (expected mass or logit)", spec_.name, v);
    return v == "logit" ? KeyStatistic::logit_sum : KeyStatistic::probability_mass;
  }
  //! `profile=PATH` (a varkv-calibrate profile); absent: no table (every layer uniform).
  classification::profile profile(classification::ProfileSource source) const {
    const std::string path = text("profile");
    return path.empty() ? classification::profile{} : classification::load_profile(path, source);
  }
  presets::budget_params budget() const {
    const double f = real("budget", 0.1);
    require(f >= 0.0 && f <= 1.0, "policy '{}': budget={} outside [0, 1]", spec_.name, f);
    const std::int64_t t = integer("tokens", -1);
    require(t >= -1, "policy '{}': tokens={} is negative", spec_.name, t);
    return {f, t};
  }

 private:
  const PolicySpec& spec_;
};
}  // namespace detail

//! Names accepted by `with_policy`, space separated.
inline constexpr std::string_view policy_names =
    "full scalekv amskv streamingllm h2o snapkv pyramidkv adakv keynorm random";

template <class F>
decltype(auto) with_policy(std::string_view spec_text, F&& f) {
  const PolicySpec spec = parse_policy_spec(spec_text);
  const std::string& n = spec.name;
  using detail::ParamReader;
  // Every compressing preset also takes cfg=separate|shared (PolicyOptions::cfg_shared).
  auto finish = [&](const ParamReader& r, auto policy) -> decltype(auto) {
    policy.options.cfg_shared = r.cfg_shared();
    return f(std::move(policy));
  };
  if (n == "full") { ParamReader r(spec, ""); return f(presets::Full{}); }
  if (n == "scalekv") {
    ParamReader r(spec, "budget tokens profile drafter floor base grid kernel stat cfg");
    budget::drafter_refiner::params_type split;
    split.drafter = r.real("drafter", split.drafter);
    split.floor = r.integer("floor", split.floor);
    split.base = r.integer("base", split.base);
    require(split.drafter > 0.0 && split.drafter <= 1.0, "policy 'scalekv': drafter={} outside (0, 1]", split.drafter);
    require(split.floor >= 0 && split.base >= 0, "policy 'scalekv': floor={} and base={} must be >= 0", split.floor,
            split.base);
    eviction::scalekv::params_type window;
    window.grid = static_cast<std::int32_t>(r.integer("grid", window.grid));
    window.kernel = static_cast<std::int32_t>(r.kernel(window.kernel));
    require(window.grid >= 1 && window.grid <= 64, "policy 'scalekv': grid={} outside 1..64", window.grid);
    window.statistic = r.statistic();
    return finish(r, presets::scalekv(r.budget(), r.profile(classification::ProfileSource::scalekv), split, window));
  }
  if (n == "amskv") {
    ParamReader r(spec, "condensed local demanding_local profile cfg");
    budget::scale_window::params_type w;
    w.condensed = static_cast<std::int32_t>(r.integer("condensed", w.condensed));
    w.local = static_cast<std::int32_t>(r.integer("local", w.local));
    w.demanding_local = static_cast<std::int32_t>(r.integer("demanding_local", w.demanding_local));
    require(w.condensed >= 0 && w.local >= 0 && w.demanding_local >= -1,
            "policy 'amskv': condensed={} and local={} must be >= 0, demanding_local={} >= -1", w.condensed, w.local,
            w.demanding_local);
    return finish(r, presets::amskv(w, r.profile(classification::ProfileSource::amskv)));
  }
  if (n == "streamingllm") {
    ParamReader r(spec, "budget tokens sinks cfg");
    const auto sinks = r.integer("sinks", 4);
    require(sinks >= 0, "policy 'streamingllm': sinks={} is negative", sinks);
    return finish(r, presets::streaming_llm(r.budget(), static_cast<std::int32_t>(sinks)));
  }
  if (n == "h2o") { ParamReader r(spec, "budget tokens cfg"); return finish(r, presets::h2o(r.budget())); }
  if (n == "snapkv") {
    ParamReader r(spec, "budget tokens window kernel cfg");
    return finish(r, presets::snapkv(r.budget(), r.window(), r.kernel(7)));
  }
  if (n == "pyramidkv") {
    ParamReader r(spec, "budget ratio cfg");
    const double ratio = r.real("ratio", 0.5);
    require(ratio > 0.0 && ratio <= 1.0, "policy 'pyramidkv': ratio={} outside (0, 1]", ratio);
    return finish(r, presets::pyramidkv(r.budget().budget, ratio));
  }
  if (n == "adakv") {
    ParamReader r(spec, "budget tokens floor window kernel cfg");
    const double floor_share = r.real("floor", 0.2);
    require(floor_share >= 0.0 && floor_share <= 1.0, "policy 'adakv': floor={} outside [0, 1]", floor_share);
    return finish(r, presets::adakv(r.budget(), floor_share, r.window(), r.kernel(7)));
  }
  if (n == "keynorm") {
    ParamReader r(spec, "budget tokens cfg");
    const auto b = r.budget();
    return finish(r, presets::KeyNorm(eviction::key_norm{}, budget::uniform{{b.budget, b.tokens}}));
  }
  if (n == "random") {
    ParamReader r(spec, "budget tokens seed cfg");
    const auto b = r.budget();
    return finish(r, presets::Random(eviction::random{{static_cast<std::uint64_t>(r.integer("seed", 0))}},
                                     budget::uniform{{b.budget, b.tokens}}));
  }
  fail("policy '{}': unknown preset '{}' (known: {})", spec_text, n, policy_names);
}

}  // namespace varkv

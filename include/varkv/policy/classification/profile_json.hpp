#pragma once
//! \file
//! Reads a calibration profile (`varkv-calibrate`'s JSON, format in profile.hpp) into a
//! `classification::profile`. Needs nlohmann-json (header-only); the rest of varkv does not.
//!
//! \par Errors
//! A missing file, invalid JSON, a missing table or a table of the wrong shape throws `varkv::Error`
//! naming the file and the entry.
#include <fstream>
#include <iterator>
#include <string_view>
#include <nlohmann/json.hpp>
#include <string>

#include "varkv/policy/classification/profile.hpp"

namespace varkv::classification {

//! Largest layer or scale count a profile may declare (VAR: <= 13 scales, models: <= 100 layers).
inline constexpr int kMaxProfileExtent = 4096;

//! Reads `source`'s table from a parsed profile; `origin` names it in errors (a path).
inline profile profile_from_json(const nlohmann::json& j, ProfileSource source, const std::string& origin) {
  profile p;
  try {
    require(j.is_object(), "classification profile '{}': expected a JSON object", origin);
    p.layers = j.at("layers").get<int>();
    p.scales = j.at("scales").get<int>();
    require(p.layers > 0 && p.scales > 0, "classification profile '{}': layers ({}) and scales ({}) must be positive",
            origin, p.layers, p.scales);
    require(p.layers <= kMaxProfileExtent && p.scales <= kMaxProfileExtent,
            "classification profile '{}': layers ({}) and scales ({}) must be at most {}", origin, p.layers, p.scales,
            kMaxProfileExtent);
    if (source == ProfileSource::scalekv) {
      require(j.contains("drafter"), "classification profile '{}': no 'drafter' table (ScaleKV)", origin);
      const auto& d = j.at("drafter");
      require(d.is_array() && static_cast<int>(d.size()) == p.layers,
              "classification profile '{}': 'drafter' needs {} rows (layers)", origin, p.layers);
      for (int l = 0; l < p.layers; ++l) {
        require(d[l].is_array() && static_cast<int>(d[l].size()) == p.scales,
                "classification profile '{}': drafter[{}] needs {} entries (scales)", origin, l, p.scales);
        for (int s = 0; s < p.scales; ++s) p.drafter.push_back(d[l][s].get<bool>() ? 1 : 0);
      }
    } else {
      require(j.contains("demanding"), "classification profile '{}': no 'demanding' table (AMS-KV)", origin);
      const auto& d = j.at("demanding");
      require(d.is_array() && static_cast<int>(d.size()) == p.layers,
              "classification profile '{}': 'demanding' needs {} entries (layers)", origin, p.layers);
      for (int l = 0; l < p.layers; ++l)
        for (int s = 0; s < p.scales; ++s) p.drafter.push_back(d[l].get<bool>() ? 1 : 0);
    }
  } catch (const nlohmann::json::exception& e) {
    fail("classification profile '{}': {}", origin, e.what());
  }
  return p;
}

//! Parses profile text (a file's contents); `origin` names it in errors. Anything that is not a
//! profile throws varkv::Error (this is what the fuzzer in tests/fuzz checks).
inline profile profile_from_text(std::string_view text, ProfileSource source, const std::string& origin) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text.begin(), text.end());
  } catch (const std::exception& e) {
    fail("classification profile '{}': invalid JSON: {}", origin, e.what());
  }
  return profile_from_json(j, source, origin);
}

inline profile load_profile(const std::string& path, ProfileSource source = ProfileSource::scalekv) {
  std::ifstream in(path, std::ios::binary);
  require(in.good(), "classification profile '{}': cannot open file", path);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return profile_from_text(text, source, path);
}

}  // namespace varkv::classification

#pragma once
//! \file
//! Exact KV byte accounting per step, layer, head and origin scale.
//!
//! \par Overview
//! A `KvLedger` counts the tokens a cache holds after each scale step, split by layer, head and the
//! scale each token came from, summed over the batch's sequences. Bytes follow exactly from the
//! counts: tokens x head_dim x (bytes of a key element + bytes of a value element). Caches fill it
//! as they run; `KvLedger::full` gives what an uncompressed cache holds, for comparison.
//!
//! \par Snippet
//! \code
//! auto l = varkv::KvLedger::full(varkv::geometries::var_d30(), varkv::schedules::var_256(),
//!                                {.images = 1, .cfg = true}, varkv::KvDTypes::uniform(varkv::DType::bf16));
//! l.bytes(9);   // 313'344'000: 30 layers x 680 tokens x 1920 x (2 + 2) bytes x 2 sequences
//! \endcode

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "varkv/core/dtype.hpp"
#include "varkv/core/error.hpp"
#include "varkv/core/model_geometry.hpp"
#include "varkv/core/scale_schedule.hpp"

namespace varkv {

class KvLedger {
 public:
  KvLedger(const ModelGeometry& geometry, const ScaleSchedule& schedule, KvDTypes dtypes)
      : geometry_(geometry), schedule_(schedule), dtypes_(dtypes) {
    geometry_.validate();
    const auto s = static_cast<std::size_t>(schedule_.size());
    counts_.assign(s * geometry_.layers * geometry_.heads * s, 0);
  }

  //! What an uncompressed cache holds: after step s, every layer and head keeps scales 0..s whole.
  static KvLedger full(const ModelGeometry& geometry, const ScaleSchedule& schedule, BatchShape batch,
                       KvDTypes dtypes) {
    batch.validate();
    KvLedger l(geometry, schedule, dtypes);
    for (int step = 0; step < schedule.size(); ++step)
      for (int layer = 0; layer < geometry.layers; ++layer)
        for (int head = 0; head < geometry.heads; ++head)
          for (int origin = 0; origin <= step; ++origin)
            l.set_tokens(step, layer, head, origin, schedule.tokens(origin) * batch.sequences());
    return l;
  }

  const ModelGeometry& geometry() const { return geometry_; }
  const ScaleSchedule& schedule() const { return schedule_; }
  KvDTypes dtypes() const { return dtypes_; }
  int steps() const { return schedule_.size(); }

  //! Bytes one token of one head costs: its key and its value.
  std::int64_t bytes_per_token_head() const {
    return std::int64_t{geometry_.head_dim} * dtypes_.bytes_per_element_pair();
  }

  //! Records the tokens (summed over sequences) that `layer`'s `head` holds from scale `origin`
  //! after step `step`.
  void set_tokens(int step, int layer, int head, int origin, std::int64_t tokens) {
    require(tokens >= 0, "KV ledger: negative token count {} (step {}, layer {}, head {}, origin scale {})",
            tokens, step, layer, head, origin);
    require(origin <= step, "KV ledger: step {} cannot hold tokens of the later scale {}", step, origin);
    counts_[index(step, layer, head, origin)] = tokens;
  }

  std::int64_t tokens(int step, int layer, int head, int origin) const {
    return counts_[index(step, layer, head, origin)];
  }
  std::int64_t tokens(int step, int layer, int head) const {
    std::int64_t t = 0;
    for (int o = 0; o <= step; ++o) t += tokens(step, layer, head, o);
    return t;
  }
  std::int64_t tokens(int step, int layer) const {
    std::int64_t t = 0;
    for (int h = 0; h < geometry_.heads; ++h) t += tokens(step, layer, h);
    return t;
  }
  std::int64_t tokens(int step) const {
    std::int64_t t = 0;
    for (int l = 0; l < geometry_.layers; ++l) t += tokens(step, l);
    return t;
  }

  std::int64_t bytes(int step, int layer, int head, int origin) const {
    return tokens(step, layer, head, origin) * bytes_per_token_head();
  }
  std::int64_t bytes(int step, int layer, int head) const { return tokens(step, layer, head) * bytes_per_token_head(); }
  std::int64_t bytes(int step, int layer) const { return tokens(step, layer) * bytes_per_token_head(); }
  //! All layers after step `step`.
  std::int64_t bytes(int step) const { return tokens(step) * bytes_per_token_head(); }
  //! Bytes of `layer` after `step` that came from scale `origin`, over all heads.
  std::int64_t bytes_from_scale(int step, int layer, int origin) const {
    std::int64_t t = 0;
    for (int h = 0; h < geometry_.heads; ++h) t += tokens(step, layer, h, origin);
    return t * bytes_per_token_head();
  }
  //! Largest total over the steps: what a cache must be able to hold.
  std::int64_t peak_bytes() const {
    std::int64_t p = 0;
    for (int s = 0; s < steps(); ++s) p = std::max(p, bytes(s));
    return p;
  }

 private:
  std::size_t index(int step, int layer, int head, int origin) const {
    require(step >= 0 && step < steps(), "KV ledger: step {} outside 0..{}", step, steps() - 1);
    require(layer >= 0 && layer < geometry_.layers, "KV ledger: layer {} outside 0..{}", layer, geometry_.layers - 1);
    require(head >= 0 && head < geometry_.heads, "KV ledger: head {} outside 0..{}", head, geometry_.heads - 1);
    require(origin >= 0 && origin < steps(), "KV ledger: origin scale {} outside 0..{}", origin, steps() - 1);
    const std::size_t s = static_cast<std::size_t>(steps());
    return ((static_cast<std::size_t>(step) * geometry_.layers + layer) * geometry_.heads + head) * s + origin;
  }

  ModelGeometry geometry_;
  ScaleSchedule schedule_;
  KvDTypes dtypes_;
  std::vector<std::int64_t> counts_;  // [step][layer][head][origin]
};

//! Human-readable byte count ("313.34 MB"), decimal units as GPU vendors quote memory.
inline std::string format_bytes(std::int64_t b) {
  if (b < 1000) return fmt::format("{} B", b);
  if (b < 1000'000) return fmt::format("{:.2f} kB", b / 1e3);
  if (b < 1000'000'000) return fmt::format("{:.2f} MB", b / 1e6);
  return fmt::format("{:.2f} GB", b / 1e9);
}

//! Table of bytes per layer (rows) after each step (columns), with totals; exact integers.
inline std::string format_ledger_table(const KvLedger& l) {
  std::string out = fmt::format("KV bytes held after each scale step ({} K / {} V, head_dim {}, {} heads)\n",
                                dtype_name(l.dtypes().key), dtype_name(l.dtypes().value), l.geometry().head_dim,
                                l.geometry().heads);
  out += fmt::format("{:>6}", "layer");
  for (int s = 0; s < l.steps(); ++s) {
    const Scale sc = l.schedule().scale(s);
    out += fmt::format(" {:>12}", fmt::format("{}x{}", sc.h, sc.w));
  }
  out += "\n";
  for (int layer = 0; layer < l.geometry().layers; ++layer) {
    out += fmt::format("{:>6}", layer);
    for (int s = 0; s < l.steps(); ++s) out += fmt::format(" {:>12}", l.bytes(s, layer));
    out += "\n";
  }
  out += fmt::format("{:>6}", "total");
  for (int s = 0; s < l.steps(); ++s) out += fmt::format(" {:>12}", l.bytes(s));
  out += fmt::format("\npeak: {} bytes ({})\n", l.peak_bytes(), format_bytes(l.peak_bytes()));
  return out;
}

}  // namespace varkv

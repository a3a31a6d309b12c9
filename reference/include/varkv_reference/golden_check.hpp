#pragma once
//! \file
//! Equality checks of the reference model against golden data of the official implementation.
//!
//! \par Overview
//! A golden directory holds `meta.json` (geometry, schedule, labels, cfg, top_k, seed, tf_rows_pos,
//! gen_min_gap_per_scale), `var.safetensors`, `vae.safetensors` and `golden.safetensors`
//! (/work/shared/golden/README.md). Everything comes from the directory: other depths and schedules
//! need no code change. The checks, all in fp32:
//! - `tf_var_input`: `VqVae::idxBl_to_var_input(tf_tokens)` vs the golden, max abs error <= 1e-5;
//! - `tf_rows`: teacher-forcing logits rows at tf_rows_pos (input = OUR var_input), relative error
//!   max|ours - golden| / max|golden| per row, worst row <= 1e-4;
//! - `tf_lse`: log-sum-exp of every position, max abs error <= 1e-4;
//! - `tf_argmax`: fraction of positions with equal argmax >= 0.999;
//! - `gen_tokens_confident`: greedy CFG generation; tokens must be identical on every scale of the
//!   leading run of scales whose gen_min_gap_per_scale > 1e-3 (past a scale with a smaller gap, fp32
//!   rounding may legitimately flip a token and everything after it may differ);
//! - `gen_tokens_overall`: fraction of identical tokens >= 0.99;
//! - `gen_f_hat`, `gen_image`: max abs error <= 1e-3 "where tokens agree", defined per image: an image
//!   whose generated tokens all equal the golden ones is compared as generated; an image with any
//!   differing token is compared after rebuilding f_hat from the GOLDEN tokens with our quantizer
//!   (and decoding it), so every image is checked;
//! - `gen_f_hat_from_golden_tokens`: f_hat rebuilt from the golden tokens for every image, <= 1e-3.
//! Golden generation must be greedy (top_k = 1): torch's sampling generator is not reproduced.
//!
//! \par Snippet
//! \code
//! auto report = varkv::ref::check_golden_dir("/work/shared/golden/var_d4_256");
//! for (const auto& c : report.checks) fmt::print("{}\n", varkv::ref::format_check(c));
//! return report.passed() ? 0 : 1;
//! \endcode

#include <string>
#include <vector>

namespace varkv::ref {

struct GoldenCheck {
  std::string name;
  std::string measure;  //!< what `measured` is: "max abs error", "max rel error", "differing tokens", "agreement"
  double measured = 0;
  double bound = 0;
  bool higher_is_better = false;  //!< agreement fractions: measured >= bound passes
  bool pass = false;
  std::string detail;
};

struct GoldenReport {
  std::string dir;
  std::vector<GoldenCheck> checks;
  double seconds = 0;
  bool passed() const {
    if (checks.empty()) return false;
    for (const auto& c : checks)
      if (!c.pass) return false;
    return true;
  }
};

//! Runs every check on one golden directory. Missing or malformed files or meta -> varkv::Error.
GoldenReport check_golden_dir(const std::string& dir);

//! "PASS  tf_rows  max rel error 7.1e-07 (bound <= 1.0e-04)  detail".
std::string format_check(const GoldenCheck& c);

}  // namespace varkv::ref

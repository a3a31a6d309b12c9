#pragma once
// The smallest VQ-VAE that fits a tiny test VAR configuration (GroupNorm(32) needs ch = 32).
#include <varkv_reference/var_model.hpp>
#include <varkv_reference/vqvae.hpp>

namespace varkv::testing {

inline ref::VqVaeConfig tiny_vae_config(const ref::VarConfig& c) {
  ref::VqVaeConfig q;
  q.vocab = c.vocab;
  q.Cvae = c.Cvae;
  q.ch = 32;
  q.patch_nums = c.patch_nums;
  return q;
}

}  // namespace varkv::testing

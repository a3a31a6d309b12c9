// The presets inside a real generation: the golden model of the official implementation
// (../shared/golden/var_d4_256, greedy CFG) through the Full, ScaleKV and AMS-KV presets.
// No golden data: skipped with a message, except on CI (CI=true), where that fails.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "varkv/cache/compressed_cache.hpp"
#include "varkv/policy/presets.hpp"
#include "varkv_reference/generate.hpp"
#include "varkv_reference/safetensors.hpp"

namespace {
using namespace varkv;
namespace fs = std::filesystem;

struct GoldenModel {
  ref::VarModel var;
  ref::VqVae vae;
};

// The d4 golden model, or nullptr (test skipped / failed on CI).
const GoldenModel* golden_model() {
  static const GoldenModel* model = [] () -> const GoldenModel* {
    const fs::path dir = fs::path(VARKV_GOLDEN_DIR) / "var_d4_256";
    if (!fs::exists(dir / "var.safetensors") || !fs::exists(dir / "vae.safetensors")) return nullptr;
    const std::vector<int> patch_nums{1, 2, 3, 4, 5, 6, 8, 10, 13, 16};
    ref::VqVaeConfig qc;
    qc.ch = 32;
    qc.patch_nums = patch_nums;
    const auto vc = ref::VarConfig::from_depth(4, patch_nums);
    return new GoldenModel{ref::VarModel::load(ref::SafetensorsFile::open((dir / "var.safetensors").string()), vc),
                           ref::VqVae::load(ref::SafetensorsFile::open((dir / "vae.safetensors").string()), qc)};
  }();
  return model;
}

#define REQUIRE_GOLDEN_MODEL()                                                                                  \
  const GoldenModel* gm = golden_model();                                                                       \
  if (!gm) {                                                                                                    \
    const std::string msg = "no golden model under " + std::string(VARKV_GOLDEN_DIR) + "/var_d4_256";          \
    const char* ci = std::getenv("CI");                                                                         \
    if (ci && std::string(ci) == "true") FAIL() << msg;                                                         \
    GTEST_SKIP() << msg;                                                                                        \
  }

const ref::GenerationRequest kRequest{.labels = {3, 207}, .cfg = 1.5, .top_k = 1, .top_p = 0.0, .seed = 7, .decode = false};
const KvDTypes kFp32{DType::fp32, DType::fp32};

// Scales of the generation whose tokens equal the full cache's, counted from the first.
int leading_equal_scales(const ref::GenerationResult& a, const ref::GenerationResult& b, const ScaleSchedule& s) {
  const std::int64_t L = s.total();
  for (int si = 0; si < s.size(); ++si)
    for (int img = 0; img < a.images; ++img)
      for (std::int64_t i = s.begin(si); i < s.begin(si) + s.tokens(si); ++i)
        if (a.tokens[img * L + i] != b.tokens[img * L + i]) return si;
  return s.size();
}

TEST(PolicyGolden, FullPresetReproducesTheFullCacheGenerationExactly) {
  REQUIRE_GOLDEN_MODEL();
  const auto& c = gm->var.config();
  FullCache<float> full(c.geometry(), c.schedule(), {2, true}, kFp32);
  CompressedCache<float, presets::Full> preset(c.geometry(), c.schedule(), {2, true}, kFp32);
  const auto a = ref::generate(gm->var, gm->vae, full, kRequest);
  const auto b = ref::generate(gm->var, gm->vae, preset, kRequest);
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_EQ(a.f_hat, b.f_hat);  // bit for bit
  for (int s = 0; s < c.scales(); ++s)
    for (int l = 0; l < c.depth; ++l) EXPECT_EQ(full.ledger().bytes(s, l), preset.ledger().bytes(s, l));
}

TEST(PolicyGolden, ScaleKVAndAMSKVFollowTheirProfilesInsideAGeneration) {
  REQUIRE_GOLDEN_MODEL();
  const auto& c = gm->var.config();
  const auto sched = c.schedule();
  FullCache<float> full(c.geometry(), sched, {2, true}, kFp32);
  const auto ref_run = ref::generate(gm->var, gm->vae, full, kRequest);

  // A known profile: blocks 0 and 3 are drafters at every scale (ScaleKV); block 2 is cache-demanding (AMS-KV).
  classification::profile sk;
  sk.layers = 4;
  sk.scales = 10;
  for (int l = 0; l < 4; ++l)
    for (int s = 0; s < 10; ++s) sk.drafter.push_back(l == 0 || l == 3);
  classification::profile am = sk;
  for (int l = 0; l < 4; ++l)
    for (int s = 0; s < 10; ++s) am.drafter[l * 10 + s] = l == 2;

  CompressedCache<float, presets::ScaleKV> scalekv(c.geometry(), sched, {2, true}, kFp32,
                                                   presets::scalekv({0.1, -1}, sk));
  const auto s_run = ref::generate(gm->var, gm->vae, scalekv, kRequest);
  // A = 68 tokens per row: the cache is untouched up to step 4 (55 tokens), so scales 0..5 see the
  // full cache and must give the same tokens.
  EXPECT_GE(leading_equal_scales(ref_run, s_run, sched), 6);
  const budget::drafter_refiner split{{0.1, -1, 1.0, 16, 0}};
  const ModelGeometry geo = c.geometry();
  for (int step = 0; step < 10; ++step)
    for (int l = 0; l < 4; ++l) {
      BudgetContext bc{step, l, 0, &sched, &geo, sk.classify(step, l), 2};
      const std::int64_t rows = 4 * c.heads;
      EXPECT_EQ(scalekv.ledger().tokens(step, l), rows * std::min(split.capacity(bc), bc.prefix()))
          << "step " << step << " layer " << l;
    }
  // At 10% the whole cache holds at most 10% of the full one (same total as a uniform budget).
  EXPECT_LE(scalekv.ledger().tokens(9), full.ledger().tokens(9) / 10 + 4 * 4 * c.heads);

  CompressedCache<float, presets::AMSKV> amskv(c.geometry(), sched, {2, true}, kFp32, presets::amskv({2, 1, -1}, am));
  const auto a_run = ref::generate(gm->var, gm->vae, amskv, kRequest);
  // Condensed 2 + local 1: the cache first loses a scale after step 3, so scales 0..3 are exact.
  EXPECT_GE(leading_equal_scales(ref_run, a_run, sched), 4);
  for (int l = 0; l < 4; ++l) {
    const std::int64_t expect = l == 2 ? 680 : 1 + 4 + 256;  // scales 0, 1 and the last one
    EXPECT_EQ(amskv.ledger().tokens(9, l), 4 * c.heads * expect) << "layer " << l;
  }
}

}  // namespace

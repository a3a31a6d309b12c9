#include <gtest/gtest.h>

#include <varkv/core/kv_ledger.hpp>

using namespace varkv;

TEST(KvLedger, VarD30At256HandComputed) {
  // 30 layers x 680 tokens x 1920 channels x 2 (K, V) x 2 bytes, per sequence; CFG doubles it.
  const auto l = KvLedger::full(geometries::var_d30(), schedules::var_256(), {1, false}, KvDTypes::uniform(DType::bf16));
  EXPECT_EQ(l.bytes(9), 30LL * 680 * 1920 * 2 * 2);
  EXPECT_EQ(l.bytes(9), 156'672'000);
  EXPECT_EQ(l.peak_bytes(), l.bytes(9));
  const auto cfg = KvLedger::full(geometries::var_d30(), schedules::var_256(), {1, true}, KvDTypes::uniform(DType::bf16));
  EXPECT_EQ(cfg.bytes(9), 313'344'000);
}

TEST(KvLedger, OfficialAutocastLayoutIs470MBPerImage) {
  // fp32 K (normalised in fp32 under autocast) + bf16 V, two CFG sequences: 470,016,000 bytes.
  const auto l = KvLedger::full(geometries::var_d30(), schedules::var_256(), {1, true}, {DType::fp32, DType::bf16});
  EXPECT_EQ(l.peak_bytes(), 470'016'000);
}

TEST(KvLedger, PerLayerScaleHeadAndOrigin) {
  const auto g = geometries::var_d16();
  const auto s = schedules::var_256();
  const auto l = KvLedger::full(g, s, {2, true}, KvDTypes::uniform(DType::fp16));
  // After step 3 (4x4 map) a layer holds 1+4+9+16 = 30 tokens per sequence and head.
  EXPECT_EQ(l.tokens(3, 5, 7), 30 * 4);
  EXPECT_EQ(l.bytes(3, 5, 7), 30LL * 4 * 64 * 2 * 2);
  EXPECT_EQ(l.bytes(3, 5), 30LL * 4 * 64 * 2 * 2 * 16);
  EXPECT_EQ(l.bytes_from_scale(3, 5, 2), 9LL * 4 * 16 * 64 * 4);
  EXPECT_EQ(l.tokens(3, 5, 7, 4 - 1), 16 * 4);
  EXPECT_EQ(l.bytes(0), 1LL * 4 * 16 * 16 * 64 * 4);
  // Infinity-2B at 1024 px, bf16, one image with CFG: 32 x 10521 x 2048 x 4 bytes x 2.
  const auto inf = KvLedger::full(geometries::infinity_2b(), schedules::infinity_1024(), {1, true},
                                  KvDTypes::uniform(DType::bf16));
  EXPECT_EQ(inf.peak_bytes(), 32LL * 10521 * 2048 * 4 * 2);
}

TEST(KvLedger, RejectsImpossibleEntries) {
  KvLedger l(geometries::var_depth(2), schedules::var_256(), KvDTypes::uniform(DType::bf16));
  EXPECT_THROW(l.set_tokens(1, 0, 0, 2, 5), Error);   // a later scale
  EXPECT_THROW(l.set_tokens(1, 0, 0, 0, -1), Error);  // negative
  EXPECT_THROW(l.set_tokens(1, 2, 0, 0, 1), Error);   // layer out of range
  l.set_tokens(4, 1, 1, 2, 7);
  EXPECT_EQ(l.bytes(4), 7 * 64 * 4);
}

TEST(KvLedger, TableListsEveryLayerAndTheExactPeak) {
  const auto l = KvLedger::full(geometries::var_depth(2), schedules::var_256(), {1, true}, KvDTypes::uniform(DType::bf16));
  const std::string t = format_ledger_table(l);
  EXPECT_NE(t.find("16x16"), std::string::npos);
  EXPECT_NE(t.find(fmt::format("peak: {} bytes", 2LL * 680 * 128 * 4 * 2)), std::string::npos);
  EXPECT_EQ(format_bytes(313'344'000), "313.34 MB");
}

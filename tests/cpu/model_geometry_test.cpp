#include <gtest/gtest.h>

#include <varkv/core/model_geometry.hpp>

using namespace varkv;

TEST(ModelGeometry, VarDepthRule) {
  for (int d : {16, 20, 24, 30}) {
    const auto g = geometries::var_depth(d);
    EXPECT_EQ(g.layers, d);
    EXPECT_EQ(g.heads, d);
    EXPECT_EQ(g.head_dim, 64);
    EXPECT_EQ(g.width(), 64 * d);
  }
  EXPECT_EQ(geometries::var_d30().width(), 1920);
  EXPECT_EQ(geometries::by_name("var-d24").layers, 24);
}

TEST(ModelGeometry, Infinity) {
  const auto g2 = geometries::infinity_2b();
  EXPECT_EQ(g2.layers, 32);
  EXPECT_EQ(g2.width(), 2048);
  EXPECT_EQ(g2.heads, 16);
  EXPECT_EQ(g2.head_dim, 128);
  const auto g8 = geometries::infinity_8b();
  EXPECT_EQ(g8.layers, 40);
  EXPECT_EQ(g8.width(), 3584);
  EXPECT_EQ(g8.head_dim, 128);
}

TEST(ModelGeometry, BatchShapeDoublesUnderCfg) {
  EXPECT_EQ((BatchShape{4, true}).sequences(), 8);
  EXPECT_EQ((BatchShape{4, false}).sequences(), 4);
  EXPECT_THROW((BatchShape{0, true}).validate(), Error);
}

TEST(ModelGeometry, BadNamesAreErrors) {
  EXPECT_THROW(geometries::by_name("var-dx"), Error);
  EXPECT_THROW(geometries::by_name("llama"), Error);
  EXPECT_THROW(geometries::var_depth(0), Error);
  EXPECT_THROW((ModelGeometry{"z", 2, 0, 64}).validate(), Error);
}

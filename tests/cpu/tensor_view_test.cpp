#include <gtest/gtest.h>

#include <vector>

#include <varkv/core/tensor_view.hpp>

using namespace varkv;

TEST(TensorView, ContiguousIndexing) {
  std::vector<float> buf(2 * 3 * 4);
  for (std::size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<float>(i);
  auto v = make_view<3>("x", buf.data(), {2, 3, 4}, static_cast<std::int64_t>(buf.size()));
  EXPECT_TRUE(v.is_contiguous());
  EXPECT_EQ(v.size(), 24);
  EXPECT_EQ(v(1, 2, 3), 23.0f);
  EXPECT_EQ(v(1, 0, 2), 14.0f);
  TensorView<const float, 3> c = v;
  EXPECT_EQ(c(0, 1, 1), 5.0f);
}

TEST(TensorView, StridedView) {
  std::vector<int> buf(40);
  for (int i = 0; i < 40; ++i) buf[i] = i;
  // Every second row of a 4x10 matrix, first 5 columns.
  auto v = make_view<2>("rows", buf.data(), {2, 5}, {20, 1}, 40);
  EXPECT_FALSE(v.is_contiguous());
  EXPECT_EQ(v(1, 4), 24);
}

TEST(TensorView, ErrorsNameTensorAndShapes) {
  std::vector<float> buf(10);
  try {
    make_view<2>("cache_k", buf.data(), {3, 4}, 10);
    FAIL();
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "tensor 'cache_k': shape [3, 4] with strides [4, 1] needs 12 elements but its buffer holds 10");
  }
  try {
    make_view<2>("q", buf.data(), {-1, 4});
    FAIL();
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "tensor 'q': extent 0 of shape [-1, 4] is negative");
  }
  try {
    make_view<1, float>("v", nullptr, {3});
    FAIL();
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "tensor 'v': null data for non-empty shape [3]");
  }
  auto q = make_view<4>("q", buf.data(), {1, 1, 2, 5}, 10);
  try {
    expect_shape("q", q, {1, 1, kAnyExtent, 64});
    FAIL();
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "tensor 'q': expected shape [1, 1, *, 64], got [1, 1, 2, 5]");
  }
  EXPECT_NO_THROW(expect_shape("q", q, {1, 1, kAnyExtent, 5}));
  auto empty = make_view<2, float>("e", nullptr, {0, 5});
  EXPECT_TRUE(empty.empty());
  auto bad_inner = make_view<2>("k", buf.data(), {2, 2}, {1, 2}, 10);
  EXPECT_THROW(expect_unit_inner_stride("k", bad_inner), Error);
}

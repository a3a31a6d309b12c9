#include <gtest/gtest.h>

#include <varkv/core/scale_schedule.hpp>

using namespace varkv;

TEST(ScaleSchedule, NamedSchedulesHaveThePublishedLengths) {
  EXPECT_EQ(schedules::var_256().total(), 680);
  EXPECT_EQ(schedules::var_256().size(), 10);
  EXPECT_EQ(schedules::var_512().total(), 2240);
  EXPECT_EQ(schedules::var_512().size(), 10);
  EXPECT_EQ(schedules::infinity_1024().total(), 10521);
  EXPECT_EQ(schedules::infinity_1024().size(), 13);
}

TEST(ScaleSchedule, OffsetsArePrefixSums) {
  const auto s = schedules::var_256();
  const int expected_begin[] = {0, 1, 5, 14, 30, 55, 91, 155, 255, 424};
  for (int i = 0; i < s.size(); ++i) {
    EXPECT_EQ(s.begin(i), expected_begin[i]) << "scale " << i;
    EXPECT_EQ(s.end(i) - s.begin(i), s.tokens(i));
  }
  EXPECT_EQ(s.end(9), 680);
  EXPECT_EQ(s.tokens(9), 256);
  EXPECT_EQ(s.scale(8), (Scale{13, 13}));
}

TEST(ScaleSchedule, ScaleOfEveryPositionMatchesTheTable) {
  for (const auto& s : {schedules::var_256(), schedules::var_512(), schedules::infinity_1024()}) {
    const ScaleTable t = s.table();
    ASSERT_EQ(t.count, s.size());
    ASSERT_EQ(t.total(), s.total());
    for (std::int64_t p = 0; p < s.total(); ++p) {
      const int sc = s.scale_of(p);
      ASSERT_GE(p, s.begin(sc));
      ASSERT_LT(p, s.end(sc));
      ASSERT_EQ(t.scale_of(static_cast<int>(p)), sc) << s.name() << " position " << p;
    }
  }
}

TEST(ScaleSchedule, RectangularScalesAndByName) {
  ScaleSchedule s("rect", {{1, 2}, {3, 5}});
  EXPECT_EQ(s.total(), 17);
  EXPECT_EQ(s.scale_of(2), 1);
  EXPECT_EQ(schedules::by_name("var-512").total(), 2240);
}

TEST(ScaleSchedule, BadInputNamesTheProblem) {
  try {
    ScaleSchedule("broken", {{1, 1}, {0, 4}});
    FAIL() << "a 0x4 scale was accepted";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "scale schedule 'broken': scale 1 is 0x4; both sides must be positive");
  }
  EXPECT_THROW(ScaleSchedule("empty", {}), Error);
  EXPECT_THROW(schedules::var_256().scale_of(680), Error);
  EXPECT_THROW(schedules::var_256().begin(10), Error);
  try {
    schedules::by_name("var-1024");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unknown scale schedule 'var-1024'"), std::string::npos);
  }
}

#include "pgfly/core/retry_delay.hpp"

#include <gtest/gtest.h>

#include <ctime>

#include "pgfly/core/fly_outcome.hpp"

namespace pgfly {
namespace {

TEST(RetryDelaySeconds, GrowsExponentiallyUpToTheCapWithFullJitter) {
	EXPECT_DOUBLE_EQ(RetryDelaySeconds(1, 1.0, 300.0, std::nullopt, 0.999999), 0.999999);
	EXPECT_DOUBLE_EQ(RetryDelaySeconds(4, 1.0, 300.0, std::nullopt, 0.5), 4.0);
	EXPECT_DOUBLE_EQ(RetryDelaySeconds(30, 1.0, 300.0, std::nullopt, 0.5), 150.0);
	EXPECT_DOUBLE_EQ(RetryDelaySeconds(1000, 1.0, 300.0, std::nullopt, 1.0), 300.0);
	EXPECT_DOUBLE_EQ(RetryDelaySeconds(3, 1.0, 300.0, std::nullopt, 0.0), 0.0);
}

TEST(RetryDelaySeconds, HonoursRetryAfter) {
	EXPECT_DOUBLE_EQ(RetryDelaySeconds(1, 1.0, 300.0, 2.0, 0.1), 2.0);
	EXPECT_DOUBLE_EQ(RetryDelaySeconds(10, 1.0, 300.0, 2.0, 0.5), 150.0);
	EXPECT_DOUBLE_EQ(RetryDelaySeconds(1, 1.0, 300.0, 200.0, 0.5), 200.0);
}

TEST(RetryDelaySeconds, CapsRetryAfterAtTheMaximumDelay) {
	EXPECT_DOUBLE_EQ(RetryDelaySeconds(1, 1.0, 300.0, 900.0, 0.5), 300.0);
	// 999999999 s (the longest delay-seconds accepted) or a far-future HTTP date.
	EXPECT_DOUBLE_EQ(RetryDelaySeconds(1, 1.0, 300.0, 999999999.0, 0.5), 300.0);
	EXPECT_DOUBLE_EQ(RetryDelaySeconds(2, 1.0, 60.0, 4.0e9, 0.0), 60.0);
}

TEST(RetryAfterHoldSeconds, HoldsForRetryAfterUpToTheCap) {
	EXPECT_DOUBLE_EQ(RetryAfterHoldSeconds(std::nullopt, 300.0), 1.0);
	EXPECT_DOUBLE_EQ(RetryAfterHoldSeconds(3.0, 300.0), 3.0);
	EXPECT_DOUBLE_EQ(RetryAfterHoldSeconds(0.0, 300.0), 0.0);
	EXPECT_DOUBLE_EQ(RetryAfterHoldSeconds(999999999.0, 300.0), 300.0);
	EXPECT_DOUBLE_EQ(RetryAfterHoldSeconds(-5.0, 300.0), 0.0);
	EXPECT_DOUBLE_EQ(RetryAfterHoldSeconds(std::nullopt, 0.5), 0.5);
}

TEST(RetryAfterHoldSeconds, AFarFutureHttpDateIsCapped) {
	const std::time_t now = 1700000000;
	const auto parsed = fly::ParseRetryAfter("Fri, 31 Dec 9999 23:59:59 GMT", now);
	ASSERT_TRUE(parsed.has_value());
	EXPECT_GT(*parsed, 1.0e9);
	EXPECT_DOUBLE_EQ(RetryAfterHoldSeconds(parsed, 300.0), 300.0);
	EXPECT_DOUBLE_EQ(RetryDelaySeconds(1, 1.0, 300.0, parsed, 0.0), 300.0);
}

} // namespace
} // namespace pgfly

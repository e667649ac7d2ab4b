#include "pgfly/core/circuit_breaker.hpp"

#include <gtest/gtest.h>

#include <algorithm>

namespace pgfly {
namespace {

CircuitBreaker
Breaker() {
	return CircuitBreaker(CircuitBreakerSettings{3, 5.0, 40.0});
}

TEST(CircuitBreaker, StaysClosedBelowTheThreshold) {
	CircuitBreaker breaker = Breaker();
	breaker.OnTransientFailure(0);
	breaker.OnTransientFailure(0);
	EXPECT_EQ(breaker.state(0), CircuitBreaker::State::kClosed);
	breaker.OnAnswer();
	breaker.OnTransientFailure(0);
	breaker.OnTransientFailure(0);
	EXPECT_TRUE(breaker.AllowRequest(0));
}

TEST(CircuitBreaker, SendableAtIsTheEndOfThePauseThenNothingWhileTheProbeIsOut) {
	CircuitBreaker breaker = Breaker();
	EXPECT_EQ(breaker.SendableAt(1), 1.0);
	for (int i = 0; i < 3; i++) {
		breaker.OnTransientFailure(10);
	}
	EXPECT_EQ(breaker.SendableAt(12), 15.0);
	EXPECT_EQ(breaker.SendableAt(15), 15.0);
	breaker.MarkSent(15);
	EXPECT_FALSE(breaker.SendableAt(16).has_value());
	breaker.OnAnswer();
	EXPECT_EQ(breaker.SendableAt(16), 16.0);
}

TEST(CircuitBreaker, OpensAfterARunOfFailuresThenProbesOnce) {
	CircuitBreaker breaker = Breaker();
	for (int i = 0; i < 3; i++) {
		breaker.OnTransientFailure(10);
	}
	EXPECT_EQ(breaker.state(10), CircuitBreaker::State::kOpen);
	EXPECT_FALSE(breaker.AllowRequest(14.9));
	EXPECT_EQ(breaker.state(15), CircuitBreaker::State::kHalfOpen);
	EXPECT_TRUE(breaker.AllowRequest(15));
	EXPECT_FALSE(breaker.AllowRequest(15)); // one probe at a time
	breaker.OnAnswer();
	EXPECT_EQ(breaker.state(15), CircuitBreaker::State::kClosed);
	EXPECT_TRUE(breaker.AllowRequest(15));
}

TEST(CircuitBreaker, AFailedProbeDoublesThePauseUpToTheCap) {
	CircuitBreaker breaker = Breaker();
	for (int i = 0; i < 3; i++) {
		breaker.OnTransientFailure(0);
	}
	double now = 0;
	double expected_pause = 5;
	for (int round = 0; round < 6; round++) {
		now = breaker.reopen_at();
		ASSERT_TRUE(breaker.AllowRequest(now));
		breaker.OnTransientFailure(now);
		expected_pause = std::min(40.0, expected_pause * 2);
		EXPECT_DOUBLE_EQ(breaker.reopen_at() - now, expected_pause) << round;
		EXPECT_EQ(breaker.state(now), CircuitBreaker::State::kOpen);
	}
}

TEST(CircuitBreaker, NamesItsStates) {
	EXPECT_STREQ(CircuitBreakerStateName(CircuitBreaker::State::kClosed), "closed");
	EXPECT_STREQ(CircuitBreakerStateName(CircuitBreaker::State::kOpen), "open");
	EXPECT_STREQ(CircuitBreakerStateName(CircuitBreaker::State::kHalfOpen), "half-open");
}

} // namespace
} // namespace pgfly

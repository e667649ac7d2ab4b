#include "pgfly/core/wake_schedule.hpp"

#include <gtest/gtest.h>

#include <limits>

namespace pgfly {
namespace {

TEST(WakeSchedule, SleepsTheLongestWithoutDeadlines) {
	WakeSchedule wake(100, 10);
	wake.At(std::nullopt);
	EXPECT_EQ(wake.SleepMs(), 10000);
}

TEST(WakeSchedule, WakesAtTheEarliestFutureDeadline) {
	WakeSchedule wake(100, 10);
	wake.At(105.0);
	wake.At(101.5);
	wake.At(200.0);
	EXPECT_EQ(wake.SleepMs(), 1500);
	wake.At(100.0004);
	EXPECT_EQ(wake.SleepMs(), 10); // the floor
}

TEST(WakeSchedule, WorkInProgressMeansNoSleep) {
	// A drift pass in progress: its next batch runs at the next pass of the loop, without the floor's pause.
	WakeSchedule wake(100, 10);
	wake.At(105.0);
	wake.Now();
	EXPECT_EQ(wake.SleepMs(), 0);
}

TEST(WakeSchedule, APastDeadlineNeverMeansABusyLoop) {
	WakeSchedule wake(100, 10);
	wake.At(0.0);
	wake.At(99.0);
	wake.At(-std::numeric_limits<double>::infinity());
	wake.At(std::numeric_limits<double>::quiet_NaN());
	EXPECT_EQ(wake.SleepMs(), 10);
	EXPECT_GT(wake.SleepMs(), 0);
}

TEST(WakeSchedule, ADeadlineHeldBackWaitsForWhatHoldsItBack) {
	// A request due long ago while the breaker is open until 104: it goes at 104, not now.
	WakeSchedule wake(100, 10);
	wake.At(90.0, 104.0);
	EXPECT_EQ(wake.SleepMs(), 4000);
	wake.At(103.0, 100.0);
	EXPECT_EQ(wake.SleepMs(), 3000);
}

TEST(WakeSchedule, ALongestBelowTheFloorStillSleeps) {
	WakeSchedule wake(100, 0);
	EXPECT_EQ(wake.SleepMs(), 10);
}

} // namespace
} // namespace pgfly

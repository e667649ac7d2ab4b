// When the worker's loop wakes next: the earliest moment at which something it waits for can change. Commits
// (its latch) and Fly's answers (the client's sockets) wake it on their own; this covers everything timed.
// Times are seconds on a monotonic clock, passed in so that tests control them.
#pragma once

#include <optional>

namespace pgfly {

class WakeSchedule {
public:
	// Shortest sleep. A deadline already past means "wake now", but the pass that just ran either did what was
	// due or is held back by something with a deadline of its own; the floor keeps a stale deadline from turning
	// the loop into a busy loop.
	static constexpr double kFloorSeconds = 0.01;

	// `longest_seconds` caps the sleep (fly.poll_interval): the safety net for work that arrives unannounced.
	WakeSchedule(double now, double longest_seconds);

	// Something can change at `at` (nothing: no deadline).
	void At(std::optional<double> at);
	// Something can change at `at`, but not before `not_before` (when what holds it back lets it go).
	void At(double at, double not_before);

	// Something is ready now and the loop makes progress on it at every pass (a drift pass in progress): no
	// sleep at all, not even the floor. Never for a deadline that may already have passed.
	void
	Now() {
		now_ready_ = true;
	}

	double
	wake_at() const {
		return wake_at_;
	}
	// Until the earliest deadline, in whole milliseconds rounded up, never less than the floor; 0 after Now().
	long SleepMs() const;

private:
	double now_;
	double wake_at_;
	bool now_ready_ = false;
};

} // namespace pgfly

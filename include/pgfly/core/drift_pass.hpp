// The worker's drift pass, walked one batch per pass of the worker's loop so that Fly's answers, wake-ups and
// other work are served in between: which walk it is in (the subscription table, then the users pg_fly keeps an
// app for), the last user id each batch reached, how large the next batch is, when the next batch or pass is due,
// and how often the batch at the cursor has failed. Times are seconds on a monotonic clock, passed in so that
// tests control them.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace pgfly {

class DriftPass {
public:
	enum class Phase { kIdle, kTable, kMissing };

	// One batch should take about this long; the batch size follows what the last one took.
	static constexpr double kTargetBatchSeconds = 0.05;
	static constexpr int kMinBatchSize = 100;
	static constexpr int kFirstBatchSize = 1000;
	static constexpr int kMaxBatchSize = 5000;
	// A failed batch is tried again after 1 s, then 2 s, ...; the kMaxFailures-th failure in a row ends the pass.
	static constexpr double kFirstRetrySeconds = 1;
	static constexpr int kMaxFailures = 3;

	// What the next batch reads.
	struct Batch {
		Phase phase = Phase::kTable;
		// After this user id (nothing: from the start).
		std::optional<std::string> after;
		int size = kFirstBatchSize;
		// The table attached now is not the one the pass walked: the pass starts over with it.
		bool restart = false;
	};

	// fly.drift_check_interval (0 or less: off), at start and after SIGHUP. A changed interval restarts a pass in
	// progress (or ends it, when off); the next pass is due an interval after the last one ended (at once at the
	// worker's start).
	void Configure(double interval_seconds);

	bool
	InProgress() const {
		return phase_ != Phase::kIdle;
	}
	// Whether there is something to do now: the next batch of the pass in progress, or a new pass.
	bool Due(double now) const;
	// When that is: the next batch while a pass is in progress, else the next pass (nothing: passes are off).
	std::optional<double> NextDue() const;

	void Start();
	// The next batch of the pass in progress, given the table attached now (its identity: any text that changes
	// when another table or other columns are attached).
	Batch Next(const std::string &source) const;
	// After `batch` committed: the last user id it read (nothing: its walk is done), how many users it queued and
	// how long it took. The next batch is due no sooner than `seconds` after `now`, so that a pass whose batches
	// are slow (full reads of a large table) takes at most about half of the worker's time. Returns whether the
	// pass ended with it.
	bool Advance(const Batch &batch, const std::string &source, const std::optional<std::string> &last_user,
	             int64_t queued, double seconds, double now);
	// The next batch failed: the cursor stays, and the same batch is tried again after a delay. Returns that delay,
	// or nothing when this was the kMaxFailures-th failure in a row and the pass ended (End).
	std::optional<double> Fail(double now);
	// Ends the pass in progress (it failed, or there is nothing to compare): the next is due an interval later.
	void End(double now);

	Phase
	phase() const {
		return phase_;
	}
	// Users queued by the pass in progress (or the last one, once it ended).
	int64_t
	queued() const {
		return queued_;
	}
	// Failures in a row of the batch at the cursor.
	int
	failures() const {
		return failures_;
	}

private:
	double interval_ = 0;
	bool configured_ = false;
	// When the last pass ended (nothing: none has yet).
	std::optional<double> last_end_;
	Phase phase_ = Phase::kIdle;
	std::optional<std::string> source_;
	std::optional<std::string> after_;
	int batch_size_ = kFirstBatchSize;
	int64_t queued_ = 0;
	// When the pass in progress may run its next batch.
	double next_batch_ = 0;
	int failures_ = 0;
};

} // namespace pgfly

#include "pgfly/core/drift_pass.hpp"

#include <algorithm>
#include <cmath>

#include "pgfly/core/cpp_only.hpp"

namespace pgfly {

void
DriftPass::Configure(double interval_seconds) {
	const double interval = std::isnan(interval_seconds) ? 0 : std::max(0.0, interval_seconds);
	const bool changed = configured_ && interval != interval_;
	interval_ = interval;
	configured_ = true;
	if (!changed || !InProgress()) {
		return;
	}
	failures_ = 0;
	if (interval_ <= 0) {
		phase_ = Phase::kIdle; // turned off: a pass in progress ends here, not counted as run
		return;
	}
	// Started again from the beginning, under the new setting (when its next batch is due, as before).
	phase_ = Phase::kTable;
	after_.reset();
	source_.reset();
}

bool
DriftPass::Due(double now) const {
	const std::optional<double> due = NextDue();
	return due && now >= *due;
}

std::optional<double>
DriftPass::NextDue() const {
	if (InProgress()) {
		return next_batch_;
	}
	if (interval_ <= 0) {
		return std::nullopt;
	}
	return last_end_ ? *last_end_ + interval_ : 0.0;
}

void
DriftPass::Start() {
	phase_ = Phase::kTable;
	after_.reset();
	source_.reset();
	queued_ = 0;
	failures_ = 0;
	next_batch_ = 0; // the first batch at once
	batch_size_ = std::clamp(batch_size_, kMinBatchSize, kMaxBatchSize);
}

DriftPass::Batch
DriftPass::Next(const std::string &source) const {
	Batch batch;
	batch.size = batch_size_;
	batch.restart = source_ != source;
	batch.phase = batch.restart ? Phase::kTable : phase_;
	if (!batch.restart) {
		batch.after = after_;
	}
	return batch;
}

bool
DriftPass::Advance(const Batch &batch, const std::string &source, const std::optional<std::string> &last_user,
                   int64_t queued, double seconds, double now) {
	if (!InProgress()) {
		return false; // ended meanwhile (SIGHUP turned passes off)
	}
	source_ = source;
	queued_ += queued;
	failures_ = 0;
	// As long a pause as the batch took (NaN or negative: none).
	next_batch_ = now + (seconds > 0 ? seconds : 0.0);
	// Towards kTargetBatchSeconds, at most doubling or halving at a time.
	const double ratio = kTargetBatchSeconds / std::max(seconds, 1e-3);
	const double scaled = batch.size * std::clamp(ratio, 0.5, 2.0);
	batch_size_ =
		static_cast<int>(std::clamp(scaled, static_cast<double>(kMinBatchSize), static_cast<double>(kMaxBatchSize)));
	if (last_user) {
		phase_ = batch.phase;
		after_ = last_user;
		return false;
	}
	if (batch.phase == Phase::kTable) {
		phase_ = Phase::kMissing;
		after_.reset();
		return false;
	}
	End(now);
	return true;
}

std::optional<double>
DriftPass::Fail(double now) {
	if (!InProgress()) {
		return std::nullopt;
	}
	failures_++;
	if (failures_ >= kMaxFailures) {
		End(now);
		return std::nullopt;
	}
	// The phase and `after` stay: the same batch again, 1 s, 2 s, ... later.
	const double delay = std::ldexp(kFirstRetrySeconds, failures_ - 1);
	next_batch_ = now + delay;
	return delay;
}

void
DriftPass::End(double now) {
	failures_ = 0;
	phase_ = Phase::kIdle;
	after_.reset();
	source_.reset();
	last_end_ = now;
}

} // namespace pgfly

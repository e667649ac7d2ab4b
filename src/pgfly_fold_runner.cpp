// The runner's fold step: moves the subscription trigger's tier-change log (fly.tier_intents) into the reconcile
// queue. A commit that logged a policy change wakes an idle worker, which folds and claims at once; a busy worker
// (every slot taken, or Fly's rate limits holding it back) folds at most every kFoldIntervalSeconds, so that a
// running operation learns of a newer intent within that time, and the application's commits cost it nothing
// more. A fold is one short transaction; its rows are deleted in it, so a crash leaves them to the next fold.
#include "pgfly/pgfly_job_runner.hpp"

#include <algorithm>
#include <cmath>

#include "pgfly/pg/sql_values.hpp"
#include "pgfly/pg/transaction.hpp"
#include "pgfly/pgfly_guc.hpp"
#include "pgfly/pgfly_intent_log.hpp"
#include "pgfly/pgfly_shmem.hpp"

namespace pgfly {

namespace {

constexpr double kFoldIntervalSeconds = 0.2;
// An idle worker folds a change that asked for a prompt start at once, but not more often than this: a stream of
// such commits is folded in batches, not one fold per commit.
constexpr double kUrgentFoldGapSeconds = 0.01;
// Users one round of folding user by user looks at, at most.
constexpr int64_t kFoldBatchRows = 5000;
// A user whose fold waited on a lock is left out of folds for this long, twice as long each time it fails again
// (an operator's transaction left open), up to the maximum.
constexpr double kFoldHeldSeconds = 2.0;
constexpr double kFoldHeldMaxSeconds = 60.0;
// One round of folding user by user returns to the loop after this long; the next pass goes on.
constexpr double kFoldRoundSeconds = 0.5;
// How long a fold waits for a row lock before it falls back to one user at a time.
constexpr const char *kFoldLockTimeout = "100ms";

void
LimitLockWait(pg::SpiConnection &spi) {
	spi.Query("SELECT pg_catalog.set_config('lock_timeout', $1, true)", {std::string(kFoldLockTimeout)});
}

} // namespace

void
JobRunner::FoldStep(double now) {
	const uint64_t urgent = pg_atomic_read_u64(&shared_->urgent_commits);
	const uint64_t commits = pg_atomic_read_u64(&shared_->work_commits);
	if (!extension_present_) {
		// Commits in other databases count too: nothing to fold here, and nothing to wait for.
		commits_folded_ = commits;
		urgent_folded_ = urgent;
		fold_more_ = false;
		return;
	}
	// A worker that could start work folds a change that asked for a prompt start at once (the wake-up was for
	// it); anything else, and everything while the worker is busy, within kFoldIntervalSeconds.
	const bool due = fold_more_ || now >= next_periodic_fold_ ||
	                 (urgent != urgent_folded_ && WaitsForWork() && now >= next_urgent_fold_) ||
	                 (commits != commits_folded_ && now >= next_fold_);
	if (!due) {
		return;
	}
	// Read before the fold's snapshot: a commit counted later is folded next time.
	pg_memory_barrier();
	std::vector<std::string> skip;
	for (auto held = fold_held_.begin(); held != fold_held_.end();) {
		if (held->second.until > now) {
			skip.push_back(held->first);
		} else if (held->second.until + kFoldHeldMaxSeconds < now) {
			held = fold_held_.erase(held); // folded since, by someone: its next failure starts afresh
			continue;
		}
		++held;
	}
	FoldResult result;
	bool more = false;
	try {
		InTransaction("pg_fly: folding tier changes", [&](pg::SpiConnection &spi) {
			LimitLockWait(spi);
			result = FoldIntents(spi, skip);
		});
	} catch (const std::exception &e) {
		Log(std::string("folding tier changes failed, folding user by user: ") + e.what());
		more = FoldUserByUser(skip);
	}
	commits_folded_ = commits;
	urgent_folded_ = urgent;
	next_fold_ = now + kFoldIntervalSeconds;
	next_urgent_fold_ = Now() + kUrgentFoldGapSeconds;
	next_periodic_fold_ = now + settings::poll_interval_ms / 1000.0;
	fold_more_ = more;
}

long
JobRunner::UrgentFoldInMs() const {
	return std::max(0L, static_cast<long>(std::ceil((next_urgent_fold_ - Now()) * 1000.0)));
}

long
JobRunner::FoldInMs() const {
	return std::max(0L, static_cast<long>(std::ceil((next_fold_ - Now()) * 1000.0)));
}

bool
JobRunner::FoldDue() const {
	return extension_present_ && pg_atomic_read_u64(&shared_->work_commits) != commits_folded_;
}

// Folds the users of the next batch one at a time, each in a transaction of its own, for at most
// kFoldRoundSeconds; a user whose fold fails is left out for a while. Returns whether users are left for the next
// pass.
bool
JobRunner::FoldUserByUser(const std::vector<std::string> &skip) {
	const double started = Now();
	std::vector<std::string> users;
	try {
		InTransaction("pg_fly: folding tier changes", [&](pg::SpiConnection &spi) {
			for (const auto &row : spi.Query("SELECT b.user_id FROM (SELECT i.user_id, i.seq FROM fly.tier_intents i "
			                                 "WHERE NOT (i.user_id OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.uuid[])) "
			                                 "ORDER BY i.seq LIMIT $2::pg_catalog.int8) b GROUP BY b.user_id "
			                                 "ORDER BY pg_catalog.min(b.seq)",
			                                 {pg::UuidArray(skip), std::to_string(kFoldBatchRows)}, true)) {
				users.push_back(row.at(0).value_or(""));
			}
		});
	} catch (const std::exception &e) {
		Log(std::string("folding tier changes failed: ") + e.what());
		return false;
	}
	for (size_t i = 0; i < users.size(); ++i) {
		if (Now() - started > kFoldRoundSeconds) {
			return true;
		}
		const std::string &user = users[i];
		try {
			InTransaction("pg_fly: folding tier changes", [&](pg::SpiConnection &spi) {
				LimitLockWait(spi);
				FoldIntents(spi, {}, user);
			});
			fold_held_.erase(user);
		} catch (const std::exception &) {
			auto found = fold_held_.find(user);
			const double hold =
				found == fold_held_.end() ? kFoldHeldSeconds : std::min(found->second.hold * 2, kFoldHeldMaxSeconds);
			fold_held_[user] = FoldHeld{Now() + hold, hold};
		}
	}
	return false;
}

} // namespace pgfly

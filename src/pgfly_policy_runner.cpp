// The runner's policy step: queues the work fly.tier_policies changes ask for (users waiting for a tier that has a
// policy now, the live apps of a tier whose guest, region or dedicated_app changed). The policy's own transaction
// writes none of the rows the subscription trigger writes, so that an application's write never waits on it; the
// worker does the queuing here, in short transactions that skip any user another transaction holds.
#include "pgfly/pgfly_job_runner.hpp"

#include "pgfly/pg/sql_values.hpp"
#include "pgfly/pg/transaction.hpp"

namespace pgfly {

namespace {

// Users one transaction queues at most: their queue rows stay locked until it commits.
constexpr int kPolicyUsersPerStep = 100;
// How often waits are looked at without being asked: a tier change that committed while a policy was added
// records a wait the policy's wake-up came too early to see.
constexpr double kPolicySweepSeconds = 10.0;

} // namespace

void
JobRunner::PolicyStep() {
	const double now = Now();
	const bool requested = pg_atomic_exchange_u32(&shared_->policy_pass_requested, 0) != 0;
	if (!extension_present_ || (!requested && !policy_more_ && now < next_policy_sweep_)) {
		return;
	}
	policy_more_ = false;
	next_policy_sweep_ = now + kPolicySweepSeconds;
	try {
		int64_t queued = 0;
		InTransaction("pg_fly: applying policy changes", [&](pg::SpiConnection &spi) {
			// An older schema (before ALTER EXTENSION pg_fly UPDATE) has nothing to apply.
			auto present =
				spi.Query("SELECT pg_catalog.to_regprocedure('fly._apply_policy_changes(integer)') IS NOT NULL", {});
			if (present.at(0).at(0) != std::string("t")) {
				return;
			}
			auto rows = spi.Query("SELECT queued, more FROM fly._apply_policy_changes($1::pg_catalog.int4)",
			                      {std::to_string(kPolicyUsersPerStep)});
			queued = pg::ToInt(rows.at(0).at(0));
			policy_more_ = rows.at(0).at(1) == std::string("t");
		});
		if (queued > 0) {
			Log("queued " + std::to_string(queued) + " user(s) for a policy added or changed in fly.tier_policies");
		}
	} catch (const std::exception &e) {
		policy_more_ = false;
		Log(std::string("applying policy changes failed, tried again in ") +
		    std::to_string(static_cast<int>(kPolicySweepSeconds)) + " s: " + e.what());
	}
}

} // namespace pgfly

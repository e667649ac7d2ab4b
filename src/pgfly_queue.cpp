#include "pgfly/pgfly_queue.hpp"

#include "pgfly/pgfly_shmem.hpp"

namespace pgfly {

namespace {

std::string
DesiredName(DesiredState desired) {
	return desired == DesiredState::kPresent ? "present" : "absent";
}

} // namespace

void
EnqueueReconcile(pg::SpiConnection &spi, const std::string &user_id, DesiredState desired, const pg::Value &tier,
                 const char *reason) {
	static const char *const kUpsert =
	    "INSERT INTO fly.reconcile_queue AS q (user_id, desired, tier, reason) "
	    "VALUES ($1::pg_catalog.uuid, $2, $3, $4) "
	    "ON CONFLICT (user_id) DO UPDATE SET desired = excluded.desired, tier = excluded.tier, "
	    "reason = excluded.reason, generation = q.generation OPERATOR(pg_catalog.+) 1, attempts = 0, alerted = false, "
	    // The claim goes too: an operation still running for the old generation hands over at its next step, and
	    // a claim the worker failed to release cannot hold the new desired state back for a whole lease.
	    "run_after = pg_catalog.now(), claimed_at = NULL, lease_until = NULL, last_error = NULL, "
	    "updated_at = pg_catalog.now()";
	spi.Query(kUpsert, {user_id, DesiredName(desired), tier, std::string(reason)});
	pg::PgGuard([]() { WakeWorkerAtCommit(); });
}

bool
EnqueueUnlessQueued(pg::SpiConnection &spi, const std::string &user_id, DesiredState desired, const pg::Value &tier,
                    const char *reason) {
	static const char *const kInsert = "INSERT INTO fly.reconcile_queue (user_id, desired, tier, reason) "
	                                   "VALUES ($1::pg_catalog.uuid, $2, $3, $4) ON CONFLICT (user_id) DO NOTHING "
	                                   "RETURNING 1";
	const bool queued = !spi.Query(kInsert, {user_id, DesiredName(desired), tier, std::string(reason)}).empty();
	if (queued) {
		pg::PgGuard([]() { WakeWorkerAtCommit(); });
	}
	return queued;
}

} // namespace pgfly

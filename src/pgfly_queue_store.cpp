#include "pgfly/pgfly_queue_store.hpp"

#include <algorithm>

#include "pgfly/core/json.hpp"
#include "pgfly/pg/sql_values.hpp"
#include "pgfly/pgfly_intent_log.hpp"
#include "pgfly/pgfly_shmem.hpp"

extern "C" {
#include "catalog/namespace.h"
#include "utils/lsyscache.h"
}

namespace pgfly {

using pg::Seconds;
using pg::ToInt;
using pg::UuidArray;

namespace {

std::string
DesiredName(DesiredState desired) {
	return desired == DesiredState::kPresent ? "present" : "absent";
}

// An upsert's conflict clause: the latest desired state replaces the item's, as a new generation.
constexpr const char *kNewIntent =
	"ON CONFLICT (user_id) DO UPDATE SET desired = excluded.desired, tier = excluded.tier, "
	"reason = excluded.reason, generation = q.generation OPERATOR(pg_catalog.+) 1, attempts = 0, alerted = false, "
	// The claim goes too: an operation still running for the old generation hands over at its next step, and
    // a claim the worker failed to release cannot hold the new desired state back for a whole lease.
	"run_after = pg_catalog.now(), claimed_at = NULL, lease_until = NULL, last_error = NULL, "
	"updated_at = pg_catalog.now()";

// Whether fly.manual_teardowns exists: not before ALTER EXTENSION pg_fly UPDATE has brought the schema to 0.3.0,
// and the library must keep serving the older one (the trigger's enqueue among them). A catalog cache lookup, not
// a query.
bool
ManualTeardownsExist() {
	return pg::PgGuardResult([]() {
		const Oid schema = get_namespace_oid("fly", true);
		return OidIsValid(schema) && OidIsValid(get_relname_relid("manual_teardowns", schema));
	});
}

} // namespace

void
EnqueueReconcile(pg::SpiConnection &spi, const std::string &user_id, DesiredState desired, const pg::Value &tier,
                 const char *reason) {
	EnqueueReconcile(spi, user_id, desired, tier, reason, TeardownClearing::kIfTableExists);
}

void
EnqueueReconcile(pg::SpiConnection &spi, const std::string &user_id, DesiredState desired, const pg::Value &tier,
                 const char *reason, TeardownClearing clearing) {
	static const std::string kUpsert =
		std::string("INSERT INTO fly.reconcile_queue AS q (user_id, desired, tier, reason) "
	                "VALUES ($1::pg_catalog.uuid, $2, $3, $4) ") +
		kNewIntent;
	// The same statement ends a manual teardown (fly.manual_teardowns, schema 0.3.0): a newer intent replaces it,
	// and the path gains no query.
	static const std::string kClearAndUpsert =
		std::string("WITH cleared AS (DELETE FROM fly.manual_teardowns t "
	                "WHERE t.user_id OPERATOR(pg_catalog.=) $1::pg_catalog.uuid) ") +
		kUpsert;
	// The user's changes still in the tier-change log are older than this intent: they go first.
	FoldUserIntents(spi, user_id, false);
	const bool clear = clearing == TeardownClearing::kIfTableExists && ManualTeardownsExist();
	spi.Query(clear ? kClearAndUpsert.c_str() : kUpsert.c_str(),
	          {user_id, DesiredName(desired), tier, std::string(reason)});
	pg::PgGuard([]() { WakeWorkerAtCommit(); });
}

bool
EndManualTeardown(pg::SpiConnection &spi, const std::string &user_id) {
	return !spi.Query("DELETE FROM fly.manual_teardowns WHERE user_id OPERATOR(pg_catalog.=) $1::pg_catalog.uuid "
	                  "RETURNING 1",
	                  {user_id})
	            .empty();
}

bool
EnqueueIfUnchanged(pg::SpiConnection &spi, const std::string &user_id, DesiredState desired, const pg::Value &tier,
                   const char *reason, const QueueItemSeen &seen) {
	// A queue item of another generation (or queued anew since: generations start at 1 again), or a live app row
	// other than the one seen, is newer than what the caller compared: it wins, and nothing is queued. A transaction
	// still changing the user's item (a tier change not yet committed) is waited for, then judged the same way.
	static const std::string kUpsertIf =
		std::string("INSERT INTO fly.reconcile_queue AS q (user_id, desired, tier, reason) "
	                "SELECT $1::pg_catalog.uuid, $2, $3, $4 "
	                "WHERE (SELECT a.id FROM fly.user_fly_apps a WHERE a.user_id OPERATOR(pg_catalog.=) "
	                "$1::pg_catalog.uuid AND a.deleted_at IS NULL) IS NOT DISTINCT FROM $6::pg_catalog.int8 ") +
		kNewIntent +
		" WHERE q.generation OPERATOR(pg_catalog.=) $5::pg_catalog.int8 "
		"AND EXTRACT(epoch FROM q.enqueued_at) OPERATOR(pg_catalog.=) $7::pg_catalog.numeric RETURNING 1";
	// A change of the user another transaction is still logging holds the user, as a held queue item does
	// (lock_not_available); one in the log already is newer than what the caller saw (a relabel changes no
	// generation), so nothing is queued.
	if (FoldUserIntents(spi, user_id, true) > 0) {
		return false;
	}
	const bool queued = !spi.Query(kUpsertIf.c_str(), {user_id, DesiredName(desired), tier, std::string(reason),
	                                                   seen.generation, seen.app_id, seen.enqueued_at})
	                         .empty();
	if (queued) {
		pg::PgGuard([]() { WakeWorkerAtCommit(); });
	}
	return queued;
}

bool
EnqueueUnlessQueued(pg::SpiConnection &spi, const std::string &user_id, DesiredState desired, const pg::Value &tier,
                    const char *reason) {
	static const char *const kInsert = "INSERT INTO fly.reconcile_queue (user_id, desired, tier, reason) "
									   "VALUES ($1::pg_catalog.uuid, $2, $3, $4) ON CONFLICT (user_id) DO NOTHING "
									   "RETURNING 1";
	FoldUserIntents(spi, user_id, false);
	const bool queued = !spi.Query(kInsert, {user_id, DesiredName(desired), tier, std::string(reason)}).empty();
	if (queued) {
		pg::PgGuard([]() { WakeWorkerAtCommit(); });
	}
	return queued;
}

void
ReleaseClaim(pg::SpiConnection &spi, const std::string &user_id) {
	spi.Query("UPDATE fly.reconcile_queue SET claimed_at = NULL, lease_until = NULL "
	          "WHERE user_id OPERATOR(pg_catalog.=) $1::pg_catalog.uuid",
	          {user_id});
}

bool
ReleaseOrphanClaims(pg::SpiConnection &spi, const std::vector<std::string> &running) {
	spi.Query("UPDATE fly.reconcile_queue SET claimed_at = NULL, lease_until = NULL "
	          "WHERE user_id IN (SELECT user_id FROM fly.reconcile_queue WHERE claimed_at IS NOT NULL "
	          "AND NOT (user_id OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.uuid[])) FOR UPDATE SKIP LOCKED)",
	          {UuidArray(running)});
	// Rows another transaction holds were skipped; they are released on a later pass.
	return spi.Query("SELECT NOT EXISTS (SELECT 1 FROM fly.reconcile_queue WHERE claimed_at IS NOT NULL "
	                 "AND NOT (user_id OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.uuid[])))",
	                 {UuidArray(running)})
	           .at(0)
	           .at(0) == std::string("t");
}

void
RenewLeases(pg::SpiConnection &spi, const std::vector<std::string> &users) {
	// A row another transaction holds keeps its lease until the next renewal, minutes before it runs out.
	spi.Query("UPDATE fly.reconcile_queue SET lease_until = pg_catalog.now() OPERATOR(pg_catalog.+) "
	          "pg_catalog.make_interval(secs => $2::pg_catalog.float8) "
	          "WHERE user_id IN (SELECT user_id FROM fly.reconcile_queue "
	          "WHERE user_id OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.uuid[]) AND claimed_at IS NOT NULL "
	          "FOR UPDATE SKIP LOCKED)",
	          {UuidArray(users), std::to_string(kLeaseSeconds)});
}

std::vector<ClaimedItem>
ClaimDueItems(pg::SpiConnection &spi, int limit, const std::vector<std::string> &running) {
	// Two index-ordered scans that stop at the limit, so that a claim costs the same with 1,000 or 100,000 items
	// queued: abandoned claims first (reconcile_queue_lease; rare, and never starved by a backlog), then
	// unclaimed items, oldest first (reconcile_queue_claim).
	static const char *const kClaim =
		"WITH due AS (SELECT user_id FROM (SELECT user_id FROM fly.reconcile_queue "
		"WHERE claimed_at IS NOT NULL AND lease_until OPERATOR(pg_catalog.<) pg_catalog.now() "
		"AND run_after OPERATOR(pg_catalog.<=) pg_catalog.now() "
		"AND NOT (user_id OPERATOR(pg_catalog.=) ANY ($3::pg_catalog.uuid[])) "
		"ORDER BY lease_until LIMIT $1::pg_catalog.int4 FOR UPDATE SKIP LOCKED) lapsed "
		"UNION ALL SELECT user_id FROM (SELECT user_id FROM fly.reconcile_queue "
		"WHERE claimed_at IS NULL AND run_after OPERATOR(pg_catalog.<=) pg_catalog.now() "
		"AND NOT (user_id OPERATOR(pg_catalog.=) ANY ($3::pg_catalog.uuid[])) "
		"ORDER BY run_after, user_id LIMIT $1::pg_catalog.int4 FOR UPDATE SKIP LOCKED) fresh "
		"LIMIT $1::pg_catalog.int4) "
		"UPDATE fly.reconcile_queue q SET claimed_at = pg_catalog.now(), "
		"lease_until = pg_catalog.now() OPERATOR(pg_catalog.+) pg_catalog.make_interval(secs => "
		"$2::pg_catalog.float8), "
		"attempts = q.attempts OPERATOR(pg_catalog.+) 1, updated_at = pg_catalog.now() "
		// By primary key, whatever the planner guesses of the CTE: a join could read the whole queue.
		"WHERE q.user_id OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT due.user_id FROM due)) "
		"RETURNING q.user_id, q.desired, q.tier, q.generation, q.attempts, q.alerted";
	auto rows = spi.Query(kClaim, {std::to_string(limit), std::to_string(kLeaseSeconds), UuidArray(running)});
	std::vector<ClaimedItem> items;
	for (const auto &row : rows) {
		ClaimedItem item;
		item.user_id = row[0].value_or("");
		item.present = row[1] == std::string("present");
		item.tier = row[2];
		item.generation = ToInt(row[3]);
		item.attempts = static_cast<int>(ToInt(row[4]));
		item.alerted = row[5] == std::string("t");
		items.push_back(std::move(item));
	}
	return items;
}

QueueSummary
SummarizeQueue(pg::SpiConnection &spi, bool count) {
	// This runs at every pass of the worker's loop: the next due time is the first entry of each partial index.
	// Not read-only: the claims this transaction just made must be seen as claims, not as items still due.
	static const char *const kNextDue =
		"SELECT EXTRACT(EPOCH FROM LEAST("
		"(SELECT run_after FROM fly.reconcile_queue WHERE claimed_at IS NULL ORDER BY run_after LIMIT 1), "
		"(SELECT lease_until FROM fly.reconcile_queue WHERE claimed_at IS NOT NULL ORDER BY lease_until LIMIT 1)) "
		"OPERATOR(pg_catalog.-) pg_catalog.now())";
	static const char *const kDue =
		"SELECT (SELECT pg_catalog.count(*) FROM fly.reconcile_queue WHERE claimed_at IS NULL "
		"AND run_after OPERATOR(pg_catalog.<=) pg_catalog.now()) OPERATOR(pg_catalog.+) "
		"(SELECT pg_catalog.count(*) FROM fly.reconcile_queue WHERE claimed_at IS NOT NULL "
		"AND run_after OPERATOR(pg_catalog.<=) pg_catalog.now())";
	QueueSummary summary;
	auto rows = spi.Query(kNextDue, {});
	// NULL when the queue is empty: the worker then sleeps until woken.
	if (rows.at(0).at(0)) {
		summary.seconds_until_next_due = std::max(0.0, std::stod(*rows[0][0]));
	}
	if (count) {
		summary.due = ToInt(spi.Query(kDue, {}).at(0).at(0));
	} else if (!summary.seconds_until_next_due) {
		summary.due = 0; // an empty queue: exact without counting, so an idle worker never wakes to count
	}
	return summary;
}

bool
DeferItem(pg::SpiConnection &spi, const std::string &user_id, int64_t generation, double delay_seconds,
          const std::string &error, bool return_attempt) {
	// A newer tier change (another generation) is not delayed by an older operation's trouble. A row another
	// transaction holds is skipped: the worker releases its claim on a later pass.
	return !spi.Query(
				   "UPDATE fly.reconcile_queue SET claimed_at = NULL, lease_until = NULL, "
				   "last_error = CASE WHEN generation OPERATOR(pg_catalog.=) $4::pg_catalog.int8 THEN $3 ELSE "
				   "last_error END, "
				   "run_after = CASE WHEN generation OPERATOR(pg_catalog.=) $4::pg_catalog.int8 THEN pg_catalog.now() "
				   "OPERATOR(pg_catalog.+) pg_catalog.make_interval(secs => $2::pg_catalog.float8) ELSE run_after END, "
				   "attempts = CASE WHEN $5::pg_catalog.bool AND generation OPERATOR(pg_catalog.=) $4::pg_catalog.int8 "
				   "THEN GREATEST(attempts OPERATOR(pg_catalog.-) 1, 0) ELSE attempts END "
				   "WHERE user_id IN (SELECT user_id FROM fly.reconcile_queue "
				   "WHERE user_id OPERATOR(pg_catalog.=) $1::pg_catalog.uuid FOR UPDATE SKIP LOCKED) RETURNING 1",
				   {user_id, Seconds(delay_seconds), error, std::to_string(generation),
	                std::string(return_attempt ? "true" : "false")})
	            .empty();
}

std::map<std::string, int64_t>
ReturnAttempts(pg::SpiConnection &spi, const std::map<std::string, int64_t> &items) {
	Json list = Json::Array();
	for (const auto &[user_id, generation] : items) {
		Json item = Json::Object();
		item.Set("user_id", Json::String(user_id));
		item.Set("generation", Json::String(std::to_string(generation)));
		list.Append(item);
	}
	// Only the same generation, still claimed: a newer tier change or a finished item has nothing to give back.
	// Both statements are literals: the cache of prepared plans is keyed by their address.
	static const char *const select =
		"SELECT q.user_id, q.generation "
		"FROM fly.reconcile_queue q JOIN pg_catalog.jsonb_to_recordset($1::pg_catalog.jsonb) AS r "
		"(user_id pg_catalog.uuid, generation pg_catalog.int8) ON q.user_id OPERATOR(pg_catalog.=) r.user_id "
		"AND q.generation OPERATOR(pg_catalog.=) r.generation WHERE q.claimed_at IS NOT NULL";
	static const char *const update =
		"UPDATE fly.reconcile_queue SET attempts = GREATEST(attempts OPERATOR(pg_catalog.-) 1, 0) "
		"WHERE user_id OPERATOR(pg_catalog.=) ANY (SELECT q.user_id "
		"FROM fly.reconcile_queue q JOIN pg_catalog.jsonb_to_recordset($1::pg_catalog.jsonb) AS r "
		"(user_id pg_catalog.uuid, generation pg_catalog.int8) ON q.user_id OPERATOR(pg_catalog.=) r.user_id "
		"AND q.generation OPERATOR(pg_catalog.=) r.generation WHERE q.claimed_at IS NOT NULL "
		"FOR UPDATE OF q SKIP LOCKED) RETURNING user_id";
	const std::string items_json = list.Dump();
	std::map<std::string, int64_t> held;
	for (const auto &row : spi.Query(select, {items_json}, true)) {
		held[row[0].value_or("")] = ToInt(row[1]);
	}
	for (const auto &row : spi.Query(update, {items_json})) {
		held.erase(row[0].value_or(""));
	}
	return held;
}

} // namespace pgfly

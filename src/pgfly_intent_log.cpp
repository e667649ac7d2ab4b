#include "pgfly/pgfly_intent_log.hpp"

extern "C" {
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "catalog/namespace.h"
#include "catalog/pg_type_d.h"
#include "commands/sequence.h"
#include "storage/lmgr.h"
#include "storage/procarray.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"
}

#include "pgfly/core/sql_error.hpp"
#include "pgfly/pg/sql_values.hpp"
#include "pgfly/pgfly_shmem.hpp"

namespace pgfly {

namespace {

// The log's columns, in order, as AppendIntent writes them.
constexpr int kColumns = 6;
constexpr Oid kColumnTypes[kColumns] = {INT8OID, UUIDOID, CHAROID, TEXTOID, TEXTOID, TIMESTAMPTZOID};
constexpr const char *kColumnNames[kColumns] = {"seq", "user_id", "kind", "tier", "reason", "at"};

bool
ShapeIsOurs(Relation relation) {
	TupleDesc desc = RelationGetDescr(relation);
	if (desc->natts != kColumns) {
		return false;
	}
	for (int i = 0; i < kColumns; ++i) {
		const Form_pg_attribute attribute = TupleDescAttr(desc, i);
		if (attribute->attisdropped || attribute->atttypid != kColumnTypes[i] ||
		    strcmp(NameStr(attribute->attname), kColumnNames[i]) != 0) {
			return false;
		}
	}
	return true;
}

// The statement folding a batch of log rows. Per user, in seq order: every 'p'/'a' row is a new intent (the
// item's generation goes up by one for each, as one enqueue each would have done) and the last one gives the
// desired state; 'r' rows after it rename the tier (the item's, if present, and the live app's). Any row ends a
// manual teardown (fly.manual_teardowns); a relabel that ended one queues the app again. The DELETE decides which
// rows this fold applies: a row another fold deleted first is waited for (lock_timeout applies), then left out.
// Runs with search_path pg_catalog, pg_temp (the worker, and pg_fly's SECURITY DEFINER functions).
std::string
FoldSql(const char *lock_clause) {
	std::string sql;
	if (*lock_clause == '\0') {
		// One pass over the log, taking every row visible now: a table without index is read in full anyway (dead
		// rows included, until VACUUM).
		sql = "WITH taken AS MATERIALIZED (DELETE FROM fly.tier_intents i"
			  "  WHERE ($1::uuid IS NULL OR i.user_id = $1::uuid) AND NOT (i.user_id = ANY ($2::uuid[]))"
			  "  RETURNING i.seq, i.user_id, i.kind, i.tier, i.reason), ";
	} else {
		sql = "WITH batch AS MATERIALIZED ("
			  "  SELECT i.ctid AS row_id FROM fly.tier_intents i"
			  "   WHERE ($1::uuid IS NULL OR i.user_id = $1::uuid) AND NOT (i.user_id = ANY ($2::uuid[]))"
			  "   ";
		sql += lock_clause;
		sql += "), "
			   "taken AS MATERIALIZED (DELETE FROM fly.tier_intents i USING batch b WHERE i.ctid = b.row_id"
			   "  RETURNING i.seq, i.user_id, i.kind, i.tier, i.reason), ";
	}
	sql +=
		// Hashed, not sorted per user: the last change and the last relabel are found by their seq.
		"counts AS (SELECT t.user_id, count(*) FILTER (WHERE t.kind <> 'r') AS changes,"
		"  coalesce(max(t.seq) FILTER (WHERE t.kind <> 'r'), 0) AS change_seq,"
		"  coalesce(max(t.seq) FILTER (WHERE t.kind = 'r'), 0) AS relabel_seq"
		"  FROM taken t GROUP BY t.user_id), "
		"users AS MATERIALIZED (SELECT c.user_id, c.changes, c.change_seq, c.relabel_seq, ch.kind,"
		"  ch.tier AS change_tier, ch.reason, rl.tier AS relabel_tier FROM counts c"
		"  LEFT JOIN taken ch ON ch.seq = c.change_seq LEFT JOIN taken rl ON rl.seq = c.relabel_seq), "
		"ended AS (DELETE FROM fly.manual_teardowns m USING users u WHERE m.user_id = u.user_id"
		"  RETURNING m.user_id), "
		"targets AS MATERIALIZED (SELECT u.user_id,"
		"  CASE WHEN u.kind = 'p' THEN 'present' ELSE 'absent' END AS desired,"
		"  CASE WHEN u.kind = 'p' AND u.relabel_seq > u.change_seq THEN u.relabel_tier ELSE u.change_tier END"
		"    AS tier, u.reason, u.changes AS generations FROM users u WHERE u.changes > 0"
		"  UNION ALL"
		"  SELECT u.user_id, 'present', u.relabel_tier, 'tier_change', 1 FROM users u"
		"   WHERE u.changes = 0 AND EXISTS (SELECT 1 FROM ended e WHERE e.user_id = u.user_id)), "
		// As one enqueue per intent would have left the item (EnqueueReconcile's conflict clause), except that
	    // an unclaimed item already due keeps its place in line: the row then changes no indexed column, and
	    // stays on its page. A plain UPDATE of the existing items, no speculative insertion.
		"replaced AS (UPDATE fly.reconcile_queue q SET desired = t.desired, tier = t.tier, reason = t.reason,"
		"  generation = q.generation + t.generations, attempts = 0, alerted = false,"
		"  run_after = CASE WHEN q.claimed_at IS NULL AND q.run_after <= now() THEN q.run_after ELSE now() END,"
		"  claimed_at = NULL, lease_until = NULL, last_error = NULL, updated_at = now()"
		"  FROM targets t WHERE q.user_id = t.user_id RETURNING q.user_id), "
		"queued AS (INSERT INTO fly.reconcile_queue AS q (user_id, desired, tier, reason, generation)"
		"  SELECT t.user_id, t.desired, t.tier, t.reason, t.generations FROM targets t"
		"   WHERE NOT EXISTS (SELECT 1 FROM replaced r WHERE r.user_id = t.user_id)"
		// An item another transaction queued since this statement's snapshot.
		"  ON CONFLICT (user_id) DO UPDATE SET desired = excluded.desired, tier = excluded.tier,"
		"  reason = excluded.reason, generation = q.generation + excluded.generation, attempts = 0,"
		"  alerted = false, run_after = now(), claimed_at = NULL, lease_until = NULL, last_error = NULL,"
		"  updated_at = now() RETURNING 1), "
		"relabelled AS (UPDATE fly.reconcile_queue q SET tier = u.relabel_tier FROM users u"
		"  WHERE q.user_id = u.user_id AND u.changes = 0 AND q.desired = 'present'"
		"    AND NOT EXISTS (SELECT 1 FROM ended e WHERE e.user_id = u.user_id)), "
		"apps AS (UPDATE fly.user_fly_apps a SET tier = u.relabel_tier, updated_at = now() FROM users u"
		"  WHERE a.user_id = u.user_id AND a.deleted_at IS NULL AND u.relabel_seq > u.change_seq"
		"    AND a.tier IS DISTINCT FROM u.relabel_tier) "
		"SELECT (SELECT count(*) FROM taken), (SELECT count(*) FROM replaced) + (SELECT count(*) FROM queued)";
	return sql;
}

FoldResult
RunFold(pg::SpiConnection &spi, const char *sql, const pg::Value &user, const std::vector<std::string> &skip_users) {
	const auto rows = spi.Query(sql, {user, pg::UuidArray(skip_users)});
	FoldResult result;
	result.folded = std::stoll(rows.at(0).at(0).value_or("0"));
	result.queued = std::stoll(rows.at(0).at(1).value_or("0"));
	// The worker's own folds tell no one: it claims next.
	if (result.queued > 0 && MyBackendType != B_BG_WORKER) {
		pg::PgGuard([]() { WakeWorkerAtCommit(); });
	}
	return result;
}

// What a scan with a dirty snapshot (which shows rows still in progress) finds of the user's rows: a transaction
// other than this one still adding or deleting one (a fold), and whether any row is there at all.
struct UserRows {
	TransactionId changing = InvalidTransactionId;
	bool any = false;
};

UserRows
ScanUserRows(Oid relid, Datum user) {
	return pg::PgGuardResult([&]() {
		SnapshotData dirty;
		InitDirtySnapshot(dirty);
		Relation relation = table_open(relid, AccessShareLock);
		TableScanDesc scan = table_beginscan(relation, &dirty, 0, nullptr);
		UserRows found;
		HeapTuple tuple;
		while ((tuple = heap_getnext(scan, ForwardScanDirection)) != nullptr) {
			// Read before the next tuple resets them: the inserter or deleter still in progress, if any.
			const TransactionId changing = TransactionIdIsValid(dirty.xmin) ? dirty.xmin : dirty.xmax;
			bool is_null = false;
			const Datum value = heap_getattr(tuple, 2, RelationGetDescr(relation), &is_null);
			if (is_null || !DatumGetBool(DirectFunctionCall2(uuid_eq, value, user))) {
				continue;
			}
			found.any = true;
			if (TransactionIdIsValid(changing)) {
				found.changing = changing;
				break;
			}
		}
		table_endscan(scan);
		table_close(relation, AccessShareLock);
		return found;
	});
}

} // namespace

IntentLog
FindIntentLog() {
	return pg::PgGuardResult([]() {
		IntentLog log;
		const Oid schema = get_namespace_oid("fly", true);
		if (!OidIsValid(schema)) {
			return log;
		}
		log.relid = get_relname_relid("tier_intents", schema);
		log.seq_relid = get_relname_relid("tier_intents_seq", schema);
		if (!OidIsValid(log.relid) || !OidIsValid(log.seq_relid)) {
			log.relid = log.seq_relid = InvalidOid;
			return log;
		}
		Relation relation = table_open(log.relid, AccessShareLock);
		List *indexes = RelationGetIndexList(relation);
		log.appendable = relation->rd_rel->relkind == RELKIND_RELATION && indexes == NIL &&
		                 relation->trigdesc == nullptr && relation->rd_rules == nullptr &&
		                 !relation->rd_rel->relrowsecurity && ShapeIsOurs(relation);
		list_free(indexes);
		table_close(relation, AccessShareLock);
		return log;
	});
}

void
AppendIntent(const IntentLog &log, const std::string &user_id, IntentKind kind, const pg::Value &tier,
             const char *reason) {
	pg::PgGuard([&]() {
		Datum values[kColumns];
		bool nulls[kColumns] = {false, false, false, false, false, false};
		// The seq is taken now, after the subscription row's lock: a later change of the row gets a larger one.
		values[0] = Int64GetDatum(nextval_internal(log.seq_relid, false));
		values[1] = DirectFunctionCall1(uuid_in, CStringGetDatum(user_id.c_str()));
		values[2] = CharGetDatum(static_cast<char>(kind));
		if (tier) {
			values[3] = PointerGetDatum(cstring_to_text_with_len(tier->data(), static_cast<int>(tier->size())));
		} else {
			nulls[3] = true;
		}
		values[4] = PointerGetDatum(cstring_to_text(reason));
		values[5] = TimestampTzGetDatum(GetCurrentTimestamp());
		Relation relation = table_open(log.relid, RowExclusiveLock);
		HeapTuple tuple = heap_form_tuple(RelationGetDescr(relation), values, nulls);
		simple_heap_insert(relation, tuple);
		heap_freetuple(tuple);
		table_close(relation, NoLock);
	});
}

namespace {

// The fold statement, one per backend: its address keys the prepared plan.
const std::string &
FoldStatement() {
	static const std::string kFold = FoldSql("");
	return kFold;
}

} // namespace

FoldResult
FoldIntents(pg::SpiConnection &spi, const std::vector<std::string> &skip_users, const pg::Value &user) {
	if (!OidIsValid(FindIntentLog().relid)) {
		return FoldResult{};
	}
	return RunFold(spi, FoldStatement().c_str(), user, skip_users);
}

int64_t
FoldUserIntents(pg::SpiConnection &spi, const std::string &user_id, bool nowait) {
	static const std::string kNoWait = FoldSql("FOR UPDATE NOWAIT");
	const IntentLog log = FindIntentLog();
	if (!OidIsValid(log.relid)) {
		return 0;
	}
	const Datum user =
		pg::PgGuardResult([&]() { return DirectFunctionCall1(uuid_in, CStringGetDatum(user_id.c_str())); });
	for (;;) {
		const TransactionId changing = ScanUserRows(log.relid, user).changing;
		if (!TransactionIdIsValid(changing)) {
			break;
		}
		if (nowait) {
			// As FOR UPDATE NOWAIT on the user's queue item fails while a tier change holds it (the callers treat
			// the user as held and come back later).
			throw SqlError(sqlstate::kLockNotAvailable, "could not fold the tier changes of user " + user_id +
			                                                ": another transaction is still changing the user's tier");
		}
		// The same wait a row lock gives: until that transaction ends, then look again.
		pg::PgGuard([&]() { XactLockTableWait(changing, nullptr, nullptr, XLTW_None); });
	}
	const int64_t folded = RunFold(spi, (nowait ? kNoWait : FoldStatement()).c_str(), user_id, {}).folded;
	// A transaction that reads one snapshot cannot see a change committed after it, and so cannot fold it; its
	// write would then be overtaken by that older change. As an update of a row changed since the snapshot does,
	// it fails.
	if (pg::PgGuardResult([]() { return IsolationUsesXactSnapshot(); }) && ScanUserRows(log.relid, user).any) {
		throw SqlError(sqlstate::kSerializationFailure,
		               "could not serialize access due to a concurrent tier change of user " + user_id, "",
		               "Retry the transaction.");
	}
	return folded;
}

} // namespace pgfly

// SQL-callable functions other than the trigger (their SQL declarations are in src/sql/pg_fly--*.sql).
#include "pgfly/pg/spi.hpp"

extern "C" {
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"
}

#include <cstring>

#include "pgfly/core/app_naming.hpp"
#include "pgfly/core/circuit_breaker.hpp"
#include "pgfly/core/token_source.hpp"
#include "pgfly/pgfly_guc.hpp"
#include "pgfly/pgfly_intent_log.hpp"
#include "pgfly/pgfly_queue_store.hpp"
#include "pgfly/pgfly_shmem.hpp"

using pgfly::SqlError;
namespace sqlstate = pgfly::sqlstate;

namespace {

std::string
TextArgument(FunctionCallInfo fcinfo, int index) {
	char *cstring = pgfly::pg::PgGuardResult([&]() { return text_to_cstring(PG_GETARG_TEXT_PP(index)); });
	std::string result(cstring);
	pfree(cstring);
	return result;
}

std::string
UuidArgument(FunctionCallInfo fcinfo, int index, const char *name) {
	if (PG_ARGISNULL(index)) {
		throw SqlError(sqlstate::kNullValueNotAllowed, std::string(name) + " must not be NULL");
	}
	Datum value = PG_GETARG_DATUM(index);
	char *cstring = pgfly::pg::PgGuardResult([&]() { return DatumGetCString(DirectFunctionCall1(uuid_out, value)); });
	std::string result(cstring);
	pfree(cstring);
	return result;
}

// Code a table's owner chose (an RLS policy, an index expression) runs inside a security-restricted operation
// while a pg_fly function reads the table for a superuser; it must not queue or start work through the
// SECURITY DEFINER functions it was granted, which would then be done, and recorded, as the superuser's.
void
RefuseInRestrictedOperation() {
	if (pgfly::pg::PgGuardResult([]() { return InSecurityRestrictedOperation(); })) {
		throw SqlError(sqlstate::kInsufficientPrivilege,
		               "pg_fly's functions cannot be called within a security-restricted operation",
		               "It runs code a table's owner chose (a policy, an index expression, a view) on another "
		               "role's behalf.");
	}
}

// Asks the worker for a pass once this transaction commits (nothing if it aborts).
void
RequestPassAtCommit(uint32 pass) {
	RefuseInRestrictedOperation();
	if (pgfly::Shared() == nullptr) {
		throw SqlError(sqlstate::kObjectNotInPrerequisiteState,
		               "pg_fly is not loaded through shared_preload_libraries");
	}
	pgfly::pg::PgGuard([&]() { pgfly::WakeWorkerAtCommit(pass); });
}

// The first four arguments of the enqueue functions: (user_id uuid, desired text, tier text, reason text).
struct EnqueueArguments {
	std::string user_id;
	pgfly::DesiredState desired;
	pgfly::pg::Value tier;
	std::string reason;
};

EnqueueArguments
ReadEnqueueArguments(FunctionCallInfo fcinfo) {
	EnqueueArguments args;
	args.user_id = UuidArgument(fcinfo, 0, "user_id");
	if (PG_ARGISNULL(1) || PG_ARGISNULL(3)) {
		throw SqlError(sqlstate::kNullValueNotAllowed, "desired and reason must not be NULL");
	}
	const std::string desired = TextArgument(fcinfo, 1);
	if (desired != "present" && desired != "absent") {
		throw SqlError(sqlstate::kInvalidParameterValue,
		               "desired state must be 'present' or 'absent', not \"" + desired + "\"");
	}
	args.desired = desired == "present" ? pgfly::DesiredState::kPresent : pgfly::DesiredState::kAbsent;
	if (!PG_ARGISNULL(2)) {
		args.tier = TextArgument(fcinfo, 2);
	}
	args.reason = TextArgument(fcinfo, 3);
	return args;
}

} // namespace

// fly._enqueue_reconcile(user_id uuid, desired text, tier text, reason text): the one enqueue path shared by
// the trigger and the SQL functions.
PGFLY_SQL_FUNCTION(_enqueue_reconcile) {
	RefuseInRestrictedOperation();
	const EnqueueArguments args = ReadEnqueueArguments(fcinfo);
	pgfly::pg::SpiConnection spi;
	pgfly::EnqueueReconcile(spi, args.user_id, args.desired, args.tier, args.reason.c_str());
	PG_RETURN_VOID();
}

// fly._enqueue_if_unchanged(user_id uuid, desired text, tier text, reason text, seen_generation bigint,
// seen_enqueued_at timestamptz, seen_app_id bigint) RETURNS boolean: queues the user's desired state only if the
// user's queue item and live app row are still those the caller saw (NULLs: none); a newer intent wins.
PGFLY_SQL_FUNCTION(_enqueue_if_unchanged) {
	RefuseInRestrictedOperation();
	const EnqueueArguments args = ReadEnqueueArguments(fcinfo);
	auto output = [&](int index, PGFunction out) {
		pgfly::pg::Value value;
		if (!PG_ARGISNULL(index)) {
			Datum datum = PG_GETARG_DATUM(index);
			char *cstring =
				pgfly::pg::PgGuardResult([&]() { return DatumGetCString(DirectFunctionCall1(out, datum)); });
			value = std::string(cstring);
			pfree(cstring);
		}
		return value;
	};
	pgfly::QueueItemSeen seen;
	seen.generation = output(4, int8out);
	// As exact seconds since the Unix epoch: timestamptz_out would write it in the caller's DateStyle and
	// TimeZone, and an abbreviation such as IST does not always read back as the same instant.
	if (!PG_ARGISNULL(5)) {
		const int64 micros = PG_GETARG_TIMESTAMPTZ(5) +
		                     static_cast<int64>(POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * USECS_PER_SEC;
		const uint64 magnitude = micros < 0 ? -static_cast<uint64>(micros) : static_cast<uint64>(micros);
		seen.enqueued_at = std::string(micros < 0 ? "-" : "") + std::to_string(magnitude / USECS_PER_SEC) + "." +
		                   std::to_string(USECS_PER_SEC + magnitude % USECS_PER_SEC).substr(1);
	}
	seen.app_id = output(6, int8out);
	pgfly::pg::SpiConnection spi;
	const bool queued =
		pgfly::EnqueueIfUnchanged(spi, args.user_id, args.desired, args.tier, args.reason.c_str(), seen);
	PG_RETURN_BOOL(queued);
}

// fly.fold_intents(): folds every committed change in the tier-change log (fly.tier_intents) into
// fly.reconcile_queue now, as the worker does within its fold interval; waits for rows a concurrent fold holds.
// Returns how many log rows it folded.
PGFLY_SQL_FUNCTION(fold_intents) {
	RefuseInRestrictedOperation();
	pgfly::pg::SpiConnection spi;
	const pgfly::FoldResult result = pgfly::FoldIntents(spi, {});
	PG_RETURN_INT64(result.folded);
}

// fly._refuse_in_restricted_operation(): called first by pg_fly's state-changing SECURITY DEFINER functions.
PGFLY_SQL_FUNCTION(_refuse_in_restricted_operation) {
	RefuseInRestrictedOperation();
	PG_RETURN_VOID();
}

// fly.app_name_for(user_id uuid, attempt int DEFAULT 0): the app name candidate pg_fly uses for a user.
PGFLY_SQL_FUNCTION(app_name_for) {
	const std::string user_id = UuidArgument(fcinfo, 0, "user_id");
	const int attempt = PG_ARGISNULL(1) ? 0 : PG_GETARG_INT32(1);
	if (attempt < 0) {
		throw SqlError(sqlstate::kInvalidParameterValue, "attempt must be 0 or more");
	}
	auto name = pgfly::AppNameCandidate(pgfly::settings::app_name_prefix, user_id, attempt);
	if (!name) {
		PG_RETURN_NULL();
	}
	text *result = pgfly::pg::PgGuardResult([&]() { return cstring_to_text_with_len(name->data(), name->size()); });
	PG_RETURN_TEXT_P(result);
}

// fly._request_health_pass(): a health pass over every active app.
PGFLY_SQL_FUNCTION(_request_health_pass) {
	RequestPassAtCommit(pgfly::kHealthPass);
	PG_RETURN_VOID();
}

// fly._request_orphan_pass(): list the organization's apps and reconcile fly.orphan_apps (deleting the ones
// marked for deletion).
PGFLY_SQL_FUNCTION(_request_orphan_pass) {
	RequestPassAtCommit(pgfly::kOrphanPass);
	PG_RETURN_VOID();
}

// fly._request_rollout_pass(): look at the running image rollout.
PGFLY_SQL_FUNCTION(_request_rollout_pass) {
	RequestPassAtCommit(pgfly::kRolloutPass);
	PG_RETURN_VOID();
}

// fly._request_policy_pass(): the worker queues what a change of fly.tier_policies asks for once the caller's
// transaction commits. Without pg_fly preloaded there is no worker to wake (it looks at its start), and a policy
// must still be writable, so this is not an error then.
PGFLY_SQL_FUNCTION(_request_policy_pass) {
	RefuseInRestrictedOperation();
	pgfly::pg::PgGuard([]() { pgfly::WakeWorkerAtCommit(pgfly::kPolicyPass); });
	PG_RETURN_VOID();
}

// fly.worker_status(): what the worker reports about itself through shared memory.
PGFLY_SQL_FUNCTION(worker_status) {
	pgfly::SharedState *shared = pgfly::Shared();
	if (shared == nullptr) {
		throw SqlError(sqlstate::kObjectNotInPrerequisiteState,
		               "pg_fly is not loaded through shared_preload_libraries");
	}
	TupleDesc desc = nullptr;
	if (pgfly::pg::PgGuardResult([&]() { return get_call_result_type(fcinfo, nullptr, &desc); }) !=
	    TYPEFUNC_COMPOSITE) {
		throw std::logic_error("worker_status() must return a composite type");
	}
	SpinLockAcquire(&shared->mutex);
	const pid_t pid = shared->worker_pid;
	const TimestampTz started_at = shared->worker_started_at;
	const TimestampTz last_wake_at = shared->last_wake_at;
	const int64 queue_ready = shared->queue_ready;
	const int token_source = shared->token_source;
	const int in_flight = shared->in_flight;
	const int rate_limited = shared->rate_limited;
	const int breaker_state = shared->breaker_state;
	const TimestampTz breaker_reopen_at = shared->breaker_reopen_at;
	const TimestampTz last_error_at = shared->last_error_at;
	char last_error[sizeof(shared->last_error)];
	memcpy(last_error, shared->last_error, sizeof(last_error));
	char database[sizeof(shared->worker_database)];
	// No worker yet: the one that starts will connect to fly.database_name (fixed until a restart).
	strlcpy(database,
	        pid != 0 && shared->worker_database[0] != '\0' ? shared->worker_database : pgfly::settings::database_name,
	        sizeof(database));
	SpinLockRelease(&shared->mutex);
	last_error[sizeof(last_error) - 1] = '\0';

	// The 0.2.0 declaration has 14 columns (no database, work_commits, wakes_sent): heap_form_tuple takes as many
	// as it declares.
	Datum values[17];
	bool nulls[17] = {false};
	values[0] = Int32GetDatum(pid);
	nulls[0] = pid == 0;
	values[1] = TimestampTzGetDatum(started_at);
	nulls[1] = started_at == 0;
	values[2] = Int64GetDatum(static_cast<int64>(pg_atomic_read_u64(&shared->commit_wakes)));
	values[3] = Int64GetDatum(static_cast<int64>(pg_atomic_read_u64(&shared->timer_wakes)));
	values[4] = Int64GetDatum(static_cast<int64>(pg_atomic_read_u64(&shared->iterations)));
	values[5] = TimestampTzGetDatum(last_wake_at);
	nulls[5] = last_wake_at == 0;
	values[6] = Int64GetDatum(queue_ready);
	nulls[6] = queue_ready < 0;
	const char *source = pgfly::TokenSourceName(static_cast<pgfly::TokenSource>(token_source));
	const char *breaker = pgfly::CircuitBreakerStateName(static_cast<pgfly::CircuitBreaker::State>(breaker_state));
	values[8] = Int32GetDatum(in_flight);
	values[9] = Int32GetDatum(rate_limited);
	values[11] = TimestampTzGetDatum(breaker_reopen_at);
	nulls[11] = breaker_reopen_at == 0;
	values[15] = Int64GetDatum(static_cast<int64>(pg_atomic_read_u64(&shared->work_commits)));
	values[16] = Int64GetDatum(static_cast<int64>(pg_atomic_read_u64(&shared->wakes_sent)));
	values[13] = TimestampTzGetDatum(last_error_at);
	nulls[13] = last_error_at == 0;
	nulls[12] = last_error[0] == '\0';
	HeapTuple tuple = pgfly::pg::PgGuardResult([&]() {
		values[7] = CStringGetTextDatum(source);
		values[10] = CStringGetTextDatum(breaker);
		if (!nulls[12]) {
			values[12] = CStringGetTextDatum(last_error);
		}
		values[14] = CStringGetTextDatum(database);
		return heap_form_tuple(BlessTupleDesc(desc), values, nulls);
	});
	return HeapTupleGetDatum(tuple);
}

// fly._guard_selftest(kind text): exercises the C++/PostgreSQL boundary, for the regression tests and for an
// operator who suspects a build problem. 'ok' returns; 'cpp' throws a std::runtime_error; 'sql' throws a
// SqlError with SQLSTATE 22023; 'pg' raises a PostgreSQL ERROR inside PgGuard, which must come back out as the
// same ERROR after crossing the C++ frames.
PGFLY_SQL_FUNCTION(_guard_selftest) {
	if (PG_ARGISNULL(0)) {
		throw SqlError(sqlstate::kNullValueNotAllowed, "kind must not be NULL");
	}
	const std::string kind = TextArgument(fcinfo, 0);
	std::string owned_by_cpp = "a C++ object alive across the boundary: " + kind;
	if (kind == "cpp") {
		throw std::runtime_error("selftest: a C++ exception became a PostgreSQL error");
	}
	if (kind == "sql") {
		throw SqlError(sqlstate::kInvalidParameterValue, "selftest: a SqlError kept its SQLSTATE", "detail kept",
		               "hint kept");
	}
	if (kind == "pg") {
		pgfly::pg::PgGuard([]() {
			ereport(ERROR,
			        (errcode(ERRCODE_DIVISION_BY_ZERO), errmsg("selftest: a PostgreSQL error crossed C++ frames")));
		});
	}
	if (kind != "ok") {
		throw SqlError(sqlstate::kInvalidParameterValue, "unknown selftest kind \"" + kind + "\"", "",
		               "Use 'ok', 'cpp', 'sql' or 'pg'.");
	}
	text *result =
		pgfly::pg::PgGuardResult([&]() { return cstring_to_text_with_len(owned_by_cpp.data(), owned_by_cpp.size()); });
	PG_RETURN_TEXT_P(result);
}

// on_user_tier_change: the trigger attach_tier_trigger() puts on the application's subscription table.
// It only records, in the caller's transaction, that a user needs reconciling; it never calls Fly.
#include "pgfly/pg/spi.hpp"

extern "C" {
#include "access/htup_details.h"
#include "access/xact.h"
#include "commands/trigger.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/inval.h"
#include "utils/uuid.h"
}

#include <cstring>

#include "pgfly/core/sql_text.hpp"
#include "pgfly/pgfly_app_store.hpp"
#include "pgfly/pgfly_guc.hpp"
#include "pgfly/pgfly_intent_log.hpp"
#include "pgfly/pgfly_queue_store.hpp"
#include "pgfly/pgfly_shmem.hpp"
#include "pgfly/pgfly_trigger_cache.hpp"

namespace pgfly {

namespace {

// What a tier means for a user's app. Two tiers with equal policies need no reconciling between them.
struct TierPolicy {
	bool known = false;
	bool dedicated = false;
	std::string guest; // cpu kind, cpus, memory and region; empty when not dedicated
	// Whether the user asked about has a row in fly.tier_waits; unknown (assume so) when the tier is.
	bool waiting = true;

	bool
	SameEffect(const TierPolicy &other) const {
		return known && other.known && dedicated == other.dedicated && guest == other.guest;
	}
};

struct SubscriptionRow {
	pg::Value user_id;
	pg::Value tier;
};

SubscriptionRow
ReadRow(HeapTuple tuple, TupleDesc desc, int user_attnum, int tier_attnum) {
	char *user_text = nullptr;
	char *tier_text = nullptr;
	pg::PgGuard([&]() {
		user_text = SPI_getvalue(tuple, desc, user_attnum);
		tier_text = SPI_getvalue(tuple, desc, tier_attnum);
	});
	SubscriptionRow row;
	if (user_text != nullptr) {
		row.user_id = std::string(user_text);
	}
	if (tier_text != nullptr) {
		row.tier = std::string(tier_text);
	}
	return row;
}

// The user id as a message shows it: a well-formed one as it is, anything else quoted and shortened.
std::string
UserForMessage(const pg::Value &user_id) {
	if (!user_id) {
		return "(null)";
	}
	return IsUuidText(*user_id) ? *user_id : QuoteForMessage(*user_id);
}

// The user's key in fly.tier_waits: the id as a message shows it, so that an application's megabyte of text
// neither fails the statement (an index entry has a size limit) nor reaches a notification.
pg::Value
WaitKey(const pg::Value &user_id) {
	return user_id ? pg::Value(UserForMessage(user_id)) : std::nullopt;
}

// The tier as an alert shows it: as it is when that reads well, otherwise quoted and shortened.
std::string
TierForMessage(const std::string &tier) {
	const std::string quoted = QuoteForMessage(tier);
	return quoted == "\"" + tier + "\"" ? tier : quoted;
}

// The tier as fly.tier_waits keeps it: as it is up to kMaxQuotedValueBytes (so that a policy's INSERT finds its
// waiting users), a longer one quoted and shortened, so that an application writing megabytes of distinct tiers
// cannot grow the table beyond a short row per user.
pg::Value
WaitTier(const pg::Value &tier) {
	if (!tier || tier->size() <= kMaxQuotedValueBytes) {
		return tier;
	}
	return QuoteForMessage(*tier);
}

// The tier's policy from the per-backend cache, and whether `user_id` waits in fly.tier_waits (asked only when
// the table may hold a row). A NULL `user_id` asks nothing about waits.
TierPolicy
LookUpPolicy(pg::SpiConnection &spi, const TriggerCache &cache, const pg::Value &tier, const pg::Value &user_id) {
	TierPolicy policy;
	policy.waiting = user_id && cache.WaitsPossible() &&
	                 spi.Query("SELECT EXISTS (SELECT 1 FROM fly.tier_waits "
	                           "WHERE user_id OPERATOR(pg_catalog.=) $1)",
	                           {WaitKey(user_id)}, true)
	                         .at(0)
	                         .at(0) == std::string("t");
	if (!tier) {
		// A subscription without a tier grants no app.
		policy.known = true;
		return policy;
	}
	// A REPEATABLE READ or SERIALIZABLE transaction judges by its own snapshot, as every query in it does: a
	// policy committed after it began is not yet there. The cache holds the latest committed policies.
	std::optional<CachedPolicy> in_snapshot;
	const CachedPolicy *cached = nullptr;
	if (pg::PgGuardResult([]() { return IsolationUsesXactSnapshot(); })) {
		auto rows = spi.Query("SELECT dedicated_app, pg_catalog.concat_ws('/', cpu_kind, cpus, memory_mb), region "
		                      "FROM fly.tier_policies WHERE tier OPERATOR(pg_catalog.=) $1",
		                      {tier}, true);
		if (!rows.empty()) {
			in_snapshot = CachedPolicy{rows[0][0] == std::string("t"), rows[0][1].value_or(""), rows[0][2]};
			cached = &*in_snapshot;
		}
	} else {
		cached = cache.Policy(*tier);
	}
	if (cached == nullptr) {
		return policy;
	}
	policy.known = true;
	policy.dedicated = cached->dedicated;
	if (policy.dedicated) {
		const std::string region = cached->region.value_or(settings::default_region ? settings::default_region : "");
		policy.guest = cached->guest.empty() ? region : cached->guest + "/" + region;
	}
	return policy;
}

int
ColumnNumber(TupleDesc desc, const char *column, const char *table) {
	int attnum = pg::PgGuardResult([&]() { return SPI_fnumber(desc, column); });
	if (attnum <= 0) {
		throw SqlError(sqlstate::kUndefinedColumn,
		               std::string("column \"") + column + "\" of \"" + table + "\" does not exist",
		               "on_user_tier_change() was given it as a trigger argument.",
		               "Re-attach the trigger with fly.attach_tier_trigger().");
	}
	return attnum;
}

[[noreturn]] void
ThrowUnknownTier(const std::string &tier, const pg::Value &user_id) {
	// The example is only offered for a tier that reads well as a literal.
	const bool printable = tier.size() <= kMaxQuotedValueBytes && QuoteForMessage(tier) == "\"" + tier + "\"";
	throw SqlError(sqlstate::kInvalidParameterValue,
	               "tier " + QuoteForMessage(tier) + " has no policy in fly.tier_policies",
	               "The subscription of user " + UserForMessage(user_id) + " names it.",
	               printable ? "Add the tier first, e.g. INSERT INTO fly.tier_policies (tier, dedicated_app) VALUES (" +
	                               SqlLiteral(tier) + ", false)."
	                         : "Add the tier to fly.tier_policies first.");
}

// A subscription row pg_fly cannot act on, and why; kNone when it can.
enum class Problem { kNone, kUnknownTier, kInvalidUserId, kNullUserId };

const char *
ProblemKind(Problem problem) {
	switch (problem) {
	case Problem::kUnknownTier:
		return "unknown_tier";
	case Problem::kInvalidUserId:
		return "invalid_user_id";
	case Problem::kNullUserId:
		return "null_user_id";
	case Problem::kNone:
		break;
	}
	return "";
}

Problem
ProblemOf(const SubscriptionRow &row, const TierPolicy &policy) {
	if (!policy.known) {
		return Problem::kUnknownTier;
	}
	if (!policy.dedicated) {
		return Problem::kNone; // nothing to provision: any user id will do
	}
	if (!row.user_id) {
		return Problem::kNullUserId;
	}
	return IsUuidText(*row.user_id) ? Problem::kNone : Problem::kInvalidUserId;
}

// Makes fly.tier_waits say what the row's problem is: records (or updates) the user's wait and raises one alert
// when the wait is new or its tier or reason changed, or removes a wait that no longer applies. A row without a
// user cannot wait: its problem is alerted at every change.
void
SettleWait(pg::SpiConnection &spi, const SubscriptionRow &row, const TierPolicy &policy) {
	const Problem problem = ProblemOf(row, policy);
	if (problem == Problem::kNone) {
		if (row.user_id && policy.waiting) {
			spi.Query("DELETE FROM fly.tier_waits WHERE user_id OPERATOR(pg_catalog.=) $1", {WaitKey(row.user_id)});
		}
		return;
	}
	pg::Value wait_id;
	if (row.user_id) {
		static const char *const kRecord =
			"INSERT INTO fly.tier_waits AS w (user_id, tier, reason) VALUES ($1, $2, $3) "
			"ON CONFLICT (user_id) DO UPDATE SET tier = excluded.tier, reason = excluded.reason, since = "
			"pg_catalog.now() WHERE w.tier IS DISTINCT FROM excluded.tier "
			"OR w.reason OPERATOR(pg_catalog.<>) excluded.reason RETURNING w.id";
		auto rows = spi.Query(kRecord, {WaitKey(row.user_id), WaitTier(row.tier), std::string(ProblemKind(problem))});
		if (rows.empty()) {
			return; // waiting already, for this tier and reason: alerted then
		}
		wait_id = rows[0][0];
	}
	const pg::Value uuid = row.user_id && IsUuidText(*row.user_id) ? row.user_id : std::nullopt;
	const pg::Value tier = row.tier ? pg::Value(TierForMessage(*row.tier)) : std::nullopt;
	RaiseSubscriptionAlert(spi, ProblemKind(problem), uuid, WaitKey(row.user_id), tier, wait_id);
}

void
ClearWait(pg::SpiConnection &spi, const pg::Value &user_id, const TierPolicy &policy) {
	if (user_id && policy.waiting) {
		spi.Query("DELETE FROM fly.tier_waits WHERE user_id OPERATOR(pg_catalog.=) $1", {WaitKey(user_id)});
	}
}

// Records the user's new desired state: one row appended to the tier-change log, which the worker folds into
// the queue (ending any manual teardown then). Without an appendable log (a schema older than 0.3.0's, or one
// given an index or a trigger since), the queue item is upserted here, ending a manual teardown by
// fly.deprovision_user_app() in the same statement when the cache says one may exist; otherwise looking again
// after the upsert, which waited for any uncommitted deprovision of the user (it writes the same queue row), and
// so took its invalidation.
void
EnqueueTierChange(pg::SpiConnection &spi, TriggerCache &cache, const std::string &user_id, DesiredState desired,
                  const pg::Value &tier) {
	if (cache.Log().appendable) {
		AppendIntent(cache.Log(), user_id,
		             desired == DesiredState::kPresent ? IntentKind::kPresent : IntentKind::kAbsent, tier,
		             "tier_change");
		pg::PgGuard([]() { WakeWorkerAtCommit(); });
		return;
	}
	// TeardownsPossible() implies the table exists (schema 0.3.0).
	const bool clear_now = cache.TeardownsPossible();
	EnqueueReconcile(spi, user_id, desired, tier, "tier_change",
	                 clear_now ? TeardownClearing::kIfTableExists : TeardownClearing::kSkip);
	if (!clear_now && cache.HasManualTeardowns() && TriggerCache::Current(spi).TeardownsPossible()) {
		EndManualTeardown(spi, user_id);
	}
}

// A change between two tiers with the same app (pro -> elite with equal policies) only renames the tier on the
// pending item and the live app, without waking the worker. It is a tier change all the same: a teardown by
// fly.deprovision_user_app() (fly.manual_teardowns, from 0.3.0 on) ends, and the app is queued again.
void
RelabelTier(pg::SpiConnection &spi, TriggerCache &cache, const std::string &user_id, const pg::Value &tier) {
	if (!IsUuidText(user_id)) {
		return; // pg_fly keeps nothing for a user id that is not a uuid
	}
	if (cache.Log().appendable) {
		// Folded within the worker's fold interval; nothing to start, so the worker is not woken.
		AppendIntent(cache.Log(), user_id, IntentKind::kRelabel, tier, "tier_change");
		pg::PgGuard([]() { NoteWorkAtCommit(); });
		return;
	}
	static const char *const kRelabel =
		"WITH queued AS (UPDATE fly.reconcile_queue SET tier = $2 "
		"WHERE user_id OPERATOR(pg_catalog.=) $1::pg_catalog.uuid AND desired OPERATOR(pg_catalog.=) 'present') "
		"UPDATE fly.user_fly_apps SET tier = $2, updated_at = pg_catalog.now() "
		"WHERE user_id OPERATOR(pg_catalog.=) $1::pg_catalog.uuid AND deleted_at IS NULL";
	static const char *const kRelabelAndEnd =
		"WITH queued AS (UPDATE fly.reconcile_queue SET tier = $2 "
		"WHERE user_id OPERATOR(pg_catalog.=) $1::pg_catalog.uuid AND desired OPERATOR(pg_catalog.=) 'present'), "
		"relabelled AS (UPDATE fly.user_fly_apps SET tier = $2, updated_at = pg_catalog.now() "
		"WHERE user_id OPERATOR(pg_catalog.=) $1::pg_catalog.uuid AND deleted_at IS NULL), "
		"ended AS (DELETE FROM fly.manual_teardowns WHERE user_id OPERATOR(pg_catalog.=) $1::pg_catalog.uuid "
		"RETURNING 1) SELECT 1 FROM ended";
	bool ended = false;
	if (cache.TeardownsPossible()) {
		ended = !spi.Query(kRelabelAndEnd, {user_id, tier}).empty();
	} else {
		spi.Query(kRelabel, {user_id, tier});
		// A deprovision that committed just before this change, whose invalidation had not yet arrived.
		ended = cache.HasManualTeardowns() && TriggerCache::Current(spi).TeardownsPossible() &&
		        EndManualTeardown(spi, user_id);
	}
	if (ended) {
		EnqueueReconcile(spi, user_id, DesiredState::kPresent, tier, "tier_change", TeardownClearing::kSkip);
	}
}

// user_column and table say where the user id comes from, for messages.
void
Enqueue(pg::SpiConnection &spi, TriggerCache &cache, const SubscriptionRow &row, const TierPolicy &policy,
        const char *user_column, const char *table, bool strict) {
	if (!row.user_id) {
		if (!policy.dedicated || !strict) {
			return; // nothing to tear down for a row without a user; a paid tier's waits (SettleWait)
		}
		throw SqlError(sqlstate::kNullValueNotAllowed,
		               "cannot provision an app for a subscription whose user id is NULL",
		               "Its tier " + QuoteForMessage(row.tier.value_or("")) + " grants a dedicated app.");
	}
	if (!IsUuidText(*row.user_id)) {
		if (!policy.dedicated || !strict) {
			return; // pg_fly never made an app for it: nothing to tear down; a paid tier's waits (SettleWait)
		}
		// Checked here rather than left to the uuid cast, whose message would repeat the whole value.
		throw SqlError(sqlstate::kInvalidTextRepresentation,
		               "user id " + QuoteForMessage(*row.user_id) + " in column \"" + user_column + "\" of \"" + table +
		                   "\" is not a uuid",
		               "pg_fly keeps one app per user, keyed by the user's uuid.");
	}
	EnqueueTierChange(spi, cache, *row.user_id, policy.dedicated ? DesiredState::kPresent : DesiredState::kAbsent,
	                  row.tier);
}

// Whether the firing table is the one fly.tier_source names (or one of its partitions or children) with the
// columns it names. A pg_fly trigger left elsewhere (renamed so detaching missed it, or on a partition detached
// since) must not let that table's owner queue work: it does nothing, with one WARNING per session.
bool
FiresOnTierSource(TriggerCache &cache, const Trigger *trigger, Relation relation, const char *table) {
	static bool warned = false;
	const bool matches = cache.FiresOn(relation, trigger->tgargs[0], trigger->tgargs[1]);
	if (!matches && !warned) {
		warned = true;
		pg::PgGuard([&]() {
			ereport(WARNING, (errmsg("pg_fly trigger \"%s\" on \"%s\" ignored this change: the table is not the "
			                         "subscription table pg_fly is attached to",
			                         trigger->tgname, table),
			                  errhint("Drop the trigger, or attach this table with fly.attach_tier_trigger().")));
		});
	}
	return matches;
}

// Whether the two tuples hold the same bytes in the column: then the change cannot concern pg_fly, and the
// trigger returns without converting anything to text. (Equal text from different bytes is caught later.)
bool
SameDatum(HeapTuple old_tuple, HeapTuple new_tuple, TupleDesc desc, int attnum) {
	return pg::PgGuardResult([&]() {
		bool old_null = false;
		bool new_null = false;
		const Datum old_value = heap_getattr(old_tuple, attnum, desc, &old_null);
		const Datum new_value = heap_getattr(new_tuple, attnum, desc, &new_null);
		if (old_null || new_null) {
			return old_null == new_null;
		}
		const Form_pg_attribute attribute = TupleDescAttr(desc, attnum - 1);
		return datumIsEqual(old_value, new_value, attribute->attbyval, attribute->attlen);
	});
}

} // namespace

} // namespace pgfly

using pgfly::SqlError;
namespace sqlstate = pgfly::sqlstate;

// fly._as_uuid(text): the uuid a subscription's user id names, by the rules the trigger uses (IsUuidText: what
// uuid_in reads), or NULL for anything else; it never raises. pg_fly's SQL asks it, never a pattern of its own.
PGFLY_SQL_FUNCTION(_as_uuid) {
	if (PG_ARGISNULL(0)) {
		PG_RETURN_NULL();
	}
	char *cstring = pgfly::pg::PgGuardResult([&]() { return text_to_cstring(PG_GETARG_TEXT_PP(0)); });
	const bool is_uuid = pgfly::IsUuidText(cstring);
	if (!is_uuid) {
		pgfly::pg::PgGuard([&]() { pfree(cstring); });
		PG_RETURN_NULL();
	}
	return pgfly::pg::PgGuardResult([&]() {
		Datum uuid = DirectFunctionCall1(uuid_in, CStringGetDatum(cstring));
		pfree(cstring);
		return uuid;
	});
}

PGFLY_SQL_FUNCTION(on_user_tier_change) {
	if (!CALLED_AS_TRIGGER(fcinfo)) {
		throw SqlError("39P01", "on_user_tier_change() must be called as a trigger");
	}
	TriggerData *trigger = reinterpret_cast<TriggerData *>(fcinfo->context);
	const TriggerEvent event = trigger->tg_event;
	if (!TRIGGER_FIRED_AFTER(event) || !TRIGGER_FIRED_FOR_ROW(event)) {
		throw SqlError("39P01", "on_user_tier_change() must be an AFTER ... FOR EACH ROW trigger");
	}
	if (trigger->tg_trigger->tgnargs != 2) {
		throw SqlError("39P01", "on_user_tier_change() takes two arguments: the user id column and the tier column", "",
		               "Attach it with fly.attach_tier_trigger().");
	}
	const char *table = RelationGetRelationName(trigger->tg_relation);
	TupleDesc desc = RelationGetDescr(trigger->tg_relation);
	const int user_attnum = pgfly::ColumnNumber(desc, trigger->tg_trigger->tgargs[0], table);
	const int tier_attnum = pgfly::ColumnNumber(desc, trigger->tg_trigger->tgargs[1], table);
	const char *user_column = trigger->tg_trigger->tgargs[0];

	const bool has_old = TRIGGER_FIRED_BY_UPDATE(event) || TRIGGER_FIRED_BY_DELETE(event);
	const bool has_new = TRIGGER_FIRED_BY_UPDATE(event) || TRIGGER_FIRED_BY_INSERT(event);
	// The cheapest exit, before any conversion to text: neither column's bytes changed.
	if (TRIGGER_FIRED_BY_UPDATE(event) &&
	    pgfly::SameDatum(trigger->tg_trigtuple, trigger->tg_newtuple, desc, user_attnum) &&
	    pgfly::SameDatum(trigger->tg_trigtuple, trigger->tg_newtuple, desc, tier_attnum)) {
		return PointerGetDatum(nullptr);
	}
	pgfly::SubscriptionRow old_row;
	pgfly::SubscriptionRow new_row;
	if (has_old) {
		old_row = pgfly::ReadRow(trigger->tg_trigtuple, desc, user_attnum, tier_attnum);
	}
	if (has_new) {
		HeapTuple tuple = TRIGGER_FIRED_BY_UPDATE(event) ? trigger->tg_newtuple : trigger->tg_trigtuple;
		new_row = pgfly::ReadRow(tuple, desc, user_attnum, tier_attnum);
	}
	// The cheap exit for updates that touch neither column's value.
	if (has_old && has_new && old_row.user_id == new_row.user_id && old_row.tier == new_row.tier) {
		return PointerGetDatum(nullptr);
	}

	pgfly::pg::SpiConnection spi;
	pgfly::TriggerCache &cache = pgfly::TriggerCache::Current(spi);
	if (!pgfly::FiresOnTierSource(cache, trigger->tg_trigger, trigger->tg_relation, table)) {
		return PointerGetDatum(nullptr);
	}
	// A row that moved to another user, or was deleted, leaves its old user.
	const bool old_user_leaves = has_old && (!has_new || old_row.user_id != new_row.user_id);
	// Without fly.tier_waits (schema older than 0.3.0) a row pg_fly cannot act on is an error, as it was then.
	const bool waits = cache.HasTierWaits();
	const bool strict = pgfly::settings::strict_tiers || !waits;
	const pgfly::pg::Value no_user;
	pgfly::TierPolicy old_policy;
	pgfly::TierPolicy new_policy;
	if (has_old) {
		// An old tier that has since left fly.tier_policies stays "unknown": reconciling is then always safe.
		old_policy =
			pgfly::LookUpPolicy(spi, cache, old_row.tier, waits && old_user_leaves ? old_row.user_id : no_user);
	} else {
		old_policy.known = true; // no row before: no app
	}
	if (has_new) {
		new_policy = pgfly::LookUpPolicy(spi, cache, new_row.tier, waits ? new_row.user_id : no_user);
		if (!new_policy.known) {
			if (strict) {
				pgfly::ThrowUnknownTier(*new_row.tier, new_row.user_id);
			}
			// No lock and no second look: the application's write never waits for pg_fly. A policy committing
			// while this statement runs may miss the wait recorded here; fly.needs_attention then hides it (the
			// tier has a policy), and the drift pass provisions the user (see the README).
		}
	} else {
		new_policy.known = true; // row deleted: no app
	}

	if (!new_policy.known) {
		// The user waits for the tier's policy; the app stays as it is until then. A user the row left loses
		// what it granted.
		pgfly::TierPolicy none;
		none.known = true;
		if (old_user_leaves && !old_policy.SameEffect(none)) {
			pgfly::Enqueue(spi, cache, pgfly::SubscriptionRow{old_row.user_id, std::nullopt}, none, user_column, table,
			               strict);
		}
	} else if (has_old && has_new && old_row.user_id != new_row.user_id) {
		// The row moved to another user: the old user loses what the row granted, the new one gains it.
		pgfly::TierPolicy none;
		none.known = true;
		if (!old_policy.SameEffect(none)) {
			pgfly::Enqueue(spi, cache, pgfly::SubscriptionRow{old_row.user_id, std::nullopt}, none, user_column, table,
			               strict);
		}
		if (!new_policy.SameEffect(none)) {
			pgfly::Enqueue(spi, cache, new_row, new_policy, user_column, table, strict);
		}
	} else if (old_policy.SameEffect(new_policy)) {
		// Only a row that grants the app names its tier: a second row of a user, on a tier without one, is not
		// the app's.
		if (has_old && has_new && new_policy.dedicated && new_row.user_id && old_row.tier != new_row.tier) {
			pgfly::RelabelTier(spi, cache, *new_row.user_id, new_row.tier);
		}
	} else {
		// A deleted row leaves the user without a tier.
		pgfly::Enqueue(spi, cache, has_new ? new_row : pgfly::SubscriptionRow{old_row.user_id, std::nullopt},
		               new_policy, user_column, table, strict);
	}
	if (old_user_leaves && waits) {
		pgfly::ClearWait(spi, old_row.user_id, old_policy);
	}
	if (has_new && waits) {
		pgfly::SettleWait(spi, new_row, new_policy);
	}
	return PointerGetDatum(nullptr);
}

#include "pgfly/pgfly_trigger_cache.hpp"

extern "C" {
#include "catalog/namespace.h"
#include "catalog/partition.h"
#include "commands/trigger.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
}

namespace pgfly {

namespace {

TriggerCache cache;
bool callback_registered = false;

} // namespace

void
TriggerCache::RegisterCallback() {
	if (!callback_registered) {
		CacheRegisterRelcacheCallback(OnRelcacheInvalidation, PointerGetDatum(nullptr));
		callback_registered = true;
	}
}

// Runs inside invalidation processing: only marks the cache, never allocates or raises.
void
TriggerCache::OnRelcacheInvalidation(Datum, Oid relid) noexcept {
	if (!cache.valid_) {
		return;
	}
	// InvalidOid: every relcache entry is being reset (the invalidation queue overflowed, say).
	if (relid == InvalidOid || relid == cache.tier_policies_relid_ || relid == cache.tier_source_relid_ ||
	    relid == cache.tier_waits_relid_ || relid == cache.manual_teardowns_relid_ || relid == cache.source_relid_ ||
	    relid == cache.log_.relid || cache.fires_.count(relid) != 0) {
		cache.valid_ = false;
	}
}

TriggerCache &
TriggerCache::Current(pg::SpiConnection &spi) {
	pg::PgGuard([]() { AcceptInvalidationMessages(); });
	if (!cache.valid_) {
		cache.Load(spi);
	}
	return cache;
}

void
TriggerCache::Load(pg::SpiConnection &spi) {
	valid_ = false;
	policies_.clear();
	fires_.clear();
	attached_ = false;
	source_relid_ = InvalidOid;
	// The log's indexes, triggers, rules and row security change only by DDL, which invalidates its relcache
	// entry.
	log_ = FindIntentLog();
	pg::PgGuard([&]() {
		const Oid schema = get_namespace_oid("fly", false);
		tier_policies_relid_ = get_relname_relid("tier_policies", schema);
		tier_source_relid_ = get_relname_relid("tier_source", schema);
		tier_waits_relid_ = get_relname_relid("tier_waits", schema);
		manual_teardowns_relid_ = get_relname_relid("manual_teardowns", schema);
		invalidated_by_triggers_ = OidIsValid(tier_policies_relid_) &&
		                           OidIsValid(get_trigger_oid(tier_policies_relid_, "invalidate_trigger_cache", true));
	});
	// The latest committed state (and this transaction's own changes), not the statement's snapshot: a
	// REPEATABLE READ transaction must not leave its old view of the policies to later transactions.
	pg::PgGuard([]() { PushActiveSnapshot(GetLatestSnapshot()); });
	// Valid from here on: an invalidation that arrives while the queries below run (they take locks, which
	// accepts invalidations) marks it stale again, and the next tier change reads once more. An error leaves it
	// stale (the abort pops the snapshot).
	valid_ = invalidated_by_triggers_;
	try {
		for (const auto &row : spi.Query("SELECT tier, dedicated_app, "
		                                 "pg_catalog.concat_ws('/', cpu_kind, cpus, memory_mb), region "
		                                 "FROM fly.tier_policies",
		                                 {}, true)) {
			CachedPolicy policy;
			policy.dedicated = row[1] == std::string("t");
			policy.guest = row[2].value_or("");
			policy.region = row[3];
			policies_[row[0].value_or("")] = std::move(policy);
		}
		auto source =
			spi.Query("SELECT table_name::pg_catalog.oid, user_column, tier_column FROM fly.tier_source", {}, true);
		if (!source.empty()) {
			attached_ = true;
			source_relid_ = static_cast<Oid>(std::stoul(source[0][0].value_or("0")));
			user_column_ = source[0][1].value_or("");
			tier_column_ = source[0][2].value_or("");
		}
		waits_possible_ =
			HasTierWaits() &&
			spi.Query("SELECT EXISTS (SELECT 1 FROM fly.tier_waits)", {}, true).at(0).at(0) == std::string("t");
		teardowns_possible_ =
			HasManualTeardowns() &&
			spi.Query("SELECT EXISTS (SELECT 1 FROM fly.manual_teardowns)", {}, true).at(0).at(0) == std::string("t");
	} catch (...) {
		valid_ = false;
		throw;
	}
	pg::PgGuard([]() { PopActiveSnapshot(); });
}

bool
TriggerCache::FiresOn(Relation relation, const char *user_column, const char *tier_column) {
	if (!attached_ || user_column_ != user_column || tier_column_ != tier_column) {
		return false;
	}
	const Oid relid = RelationGetRelid(relation);
	const bool partition = relation->rd_rel->relispartition;
	auto found = fires_.find(relid);
	if (found != fires_.end()) {
		return found->second;
	}
	const bool fires = relid == source_relid_ || pg::PgGuardResult([&]() {
						   List *ancestors = get_partition_ancestors(relid);
						   const bool member = list_member_oid(ancestors, source_relid_);
						   list_free(ancestors);
						   return member;
					   });
	if (partition) {
		fires_[relid] = fires;
	}
	return fires;
}

bool
TriggerCache::ChangeKnown(Oid relid, bool insert_or_update) {
	if (!insert_or_update) {
		return false; // a DELETE may empty the table
	}
	pg::PgGuard([]() { AcceptInvalidationMessages(); });
	return cache.valid_ && ((relid == cache.tier_waits_relid_ && cache.waits_possible_) ||
	                        (relid == cache.manual_teardowns_relid_ && cache.teardowns_possible_));
}

const CachedPolicy *
TriggerCache::Policy(const std::string &tier) const {
	auto found = policies_.find(tier);
	return found == policies_.end() ? nullptr : &found->second;
}

} // namespace pgfly

// fly._invalidate_trigger_cache(): a row trigger (and a TRUNCATE statement trigger) on the tables the cache above
// reads, so that only a statement that changes rows sends anything. Registers a relcache invalidation of the table
// (one per command however many rows): other backends take it when this transaction commits, this one at its next
// command.
PGFLY_SQL_FUNCTION(_invalidate_trigger_cache) {
	if (!CALLED_AS_TRIGGER(fcinfo)) {
		throw pgfly::SqlError("39P01", "_invalidate_trigger_cache() must be called as a trigger");
	}
	TriggerData *trigger = reinterpret_cast<TriggerData *>(fcinfo->context);
	const TriggerEvent event = trigger->tg_event;
	if (TRIGGER_FIRED_FOR_ROW(event) &&
	    pgfly::TriggerCache::ChangeKnown(RelationGetRelid(trigger->tg_relation),
	                                     TRIGGER_FIRED_BY_INSERT(event) || TRIGGER_FIRED_BY_UPDATE(event))) {
		return PointerGetDatum(nullptr);
	}
	pgfly::pg::PgGuard([&]() { CacheInvalidateRelcache(trigger->tg_relation); });
	return PointerGetDatum(nullptr);
}

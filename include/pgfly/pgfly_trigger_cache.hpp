// What the subscription trigger reads at every tier change, cached per backend: the tier policies, which table
// and columns fly.tier_source names, and whether fly.tier_waits and fly.manual_teardowns hold any row. A row
// trigger (and a TRUNCATE trigger) on each of those tables (fly._invalidate_trigger_cache) sends a relcache
// invalidation, so a committed change reaches every backend's next tier change, and this backend's own
// uncommitted change its next statement (a rollback is undone the same way).
#pragma once

#include <optional>
#include <string>
#include <unordered_map>

#include "pgfly/pg/postgres.hpp"
#include "pgfly/pg/spi.hpp"
#include "pgfly/pgfly_intent_log.hpp"

namespace pgfly {

// A tier's row of fly.tier_policies, as the trigger compares policies.
struct CachedPolicy {
	bool dedicated = false;
	// cpu kind, cpus and memory joined by '/' (the NULL ones left out), without the region.
	std::string guest;
	// NULL: fly.default_region at the time of the comparison, so that a reload of the setting needs no
	// invalidation.
	std::optional<std::string> region;
};

class TriggerCache {
public:
	// The cache, current: pending invalidations are taken first, and what they cleared is read again (queries
	// through `spi` under the latest snapshot, not the statement's).
	static TriggerCache &Current(pg::SpiConnection &spi);

	// Whether a trigger on `relation` (the attached table, or one of its partitions or children) with these
	// column arguments is the one attach_tier_trigger() made.
	bool FiresOn(Relation relation, const char *user_column, const char *tier_column);
	// The tier's policy; nullptr for a tier without one.
	const CachedPolicy *Policy(const std::string &tier) const;

	// Schema 0.3.0's tables (an older schema keeps the old errors and statements).
	bool
	HasTierWaits() const {
		return tier_waits_relid_ != InvalidOid;
	}
	bool
	HasManualTeardowns() const {
		return manual_teardowns_relid_ != InvalidOid;
	}
	// The tier-change log the trigger appends to (fly.tier_intents); not appendable before schema 0.3.0's, or
	// once someone has added an index, trigger, rule or row security to it.
	const IntentLog &
	Log() const {
		return log_;
	}
	// Whether the table may hold a row: false only when it was empty at the last look.
	bool
	WaitsPossible() const {
		return waits_possible_;
	}
	bool
	TeardownsPossible() const {
		return teardowns_possible_;
	}

	// Whether an invalidation arrived since Current() loaded the cache (after AcceptInvalidationMessages).
	bool
	Stale() const {
		return !valid_;
	}

	// Whether a row change of `relid` can go without an invalidation: an INSERT or UPDATE of fly.tier_waits or
	// fly.manual_teardowns while this backend's current cache already counts the table as possibly holding rows
	// (whoever made it so sent one, or this transaction did). Spares a bulk change to unknown tiers one
	// invalidation per row.
	static bool ChangeKnown(Oid relid, bool insert_or_update);

	// Called from _PG_init: registers the relcache callback (inherited by every backend).
	static void RegisterCallback();

private:
	void Load(pg::SpiConnection &spi);
	static void OnRelcacheInvalidation(Datum arg, Oid relid) noexcept;

	bool valid_ = false;
	// Whether the invalidation triggers exist (schema 0.3.0): without them nothing would tell the cache of a
	// change, and it is read afresh at every tier change, as before.
	bool invalidated_by_triggers_ = false;
	Oid tier_policies_relid_ = InvalidOid;
	Oid tier_source_relid_ = InvalidOid;
	Oid tier_waits_relid_ = InvalidOid;
	Oid manual_teardowns_relid_ = InvalidOid;
	IntentLog log_;
	bool attached_ = false;
	Oid source_relid_ = InvalidOid;
	std::string user_column_;
	std::string tier_column_;
	bool waits_possible_ = true;
	bool teardowns_possible_ = true;
	std::unordered_map<std::string, CachedPolicy> policies_;
	// Partitions the trigger fired on, and whether they are in the attached table's tree (attaching or detaching
	// a partition invalidates both it and its parent; a plain inheritance child is looked up every time, as
	// ALTER TABLE ... NO INHERIT of a table between it and the attached one invalidates neither).
	std::unordered_map<Oid, bool> fires_;
};

} // namespace pgfly

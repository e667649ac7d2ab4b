// What the subscription trigger reads at every tier change, cached per backend: the tier policies, which table
// and columns fly.tier_source names, and whether fly.tier_waits and fly.manual_teardowns hold any row. A
// statement trigger on each of those tables (fly._invalidate_trigger_cache) sends a relcache invalidation, so a
// committed change reaches every backend's next tier change, and this backend's own uncommitted change its next
// statement (a rollback is undone the same way).
#pragma once

#include <optional>
#include <string>
#include <unordered_map>

#include "pgfly/pg/postgres.hpp"
#include "pgfly/pg/spi.hpp"

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

	// Whether a trigger on `relid` (or on a partition or child of the attached table) with these column
	// arguments is the one attach_tier_trigger() made.
	bool FiresOn(Oid relid, const char *user_column, const char *tier_column);
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

	// Called from _PG_init: registers the relcache callback (inherited by every backend).
	static void RegisterCallback();

private:
	void Load(pg::SpiConnection &spi);
	static void OnRelcacheInvalidation(Datum arg, Oid relid) noexcept;

	bool valid_ = false;
	Oid tier_policies_relid_ = InvalidOid;
	Oid tier_source_relid_ = InvalidOid;
	Oid tier_waits_relid_ = InvalidOid;
	Oid manual_teardowns_relid_ = InvalidOid;
	bool attached_ = false;
	Oid source_relid_ = InvalidOid;
	std::string user_column_;
	std::string tier_column_;
	bool waits_possible_ = true;
	bool teardowns_possible_ = true;
	std::unordered_map<std::string, CachedPolicy> policies_;
	// Tables the trigger fired on, and whether they are (a partition or child of) the attached one.
	std::unordered_map<Oid, bool> fires_;
};

} // namespace pgfly

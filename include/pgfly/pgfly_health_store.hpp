// The worker's reads and writes for health checks (of active apps and their machines) and for orphan apps (apps
// in the Fly organization that carry pg_fly's prefix but that no live row owns). Each function runs inside the
// caller's transaction.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "pgfly/core/reconcile.hpp"
#include "pgfly/pg/spi.hpp"

namespace pgfly {

// An active app to health-check.
struct HealthTarget {
	int64_t app_id = 0;
	std::string user_id;
	std::string app_name;
	std::string machine_id;
	pg::Value tier;
	// Seconds since pg_fly created the machine, when it did.
	std::optional<double> machine_age_seconds;
	// A create-machine request of the user's is unanswered (pending_machine_operation): no duplicate is destroyed.
	bool pending_create = false;
};
// Where a health pass is: it checks the active apps in the order of their last check (never checked first), a
// page at a time, and ends at the apps checked since it started.
struct HealthCursor {
	// now() of the transaction that loaded the first page, in microseconds since the epoch (nothing: the pass
	// has not started).
	pg::Value pass_started;
	// The last app loaded: its last_health_check_at in microseconds since the epoch (nothing: never checked,
	// which sorts first) and its id.
	pg::Value after_checked_at;
	int64_t after_id = 0;
};
struct HealthPage {
	std::vector<HealthTarget> targets;
	HealthCursor cursor; // after this page
	bool more = false;   // a full page: there may be more
};
// The next page of at most `limit` apps after `cursor` (a fresh cursor starts a pass).
HealthPage LoadHealthTargets(pg::SpiConnection &spi, const HealthCursor &cursor, int limit);
// A routine check's answer that takes no action and needs no follow-up: recorded with others in one statement.
struct HealthRecord {
	int64_t app_id = 0;
	pg::Value health; // nothing: unchanged
	std::string details_json;
};
struct HealthBatchResult {
	int64_t recorded = 0;
	int64_t events = 0;
};
// Records a batch like RecordHealth (rows others hold are left for a later pass, a health_changed event for
// each change). The transaction commits without waiting for its WAL flush unless it wrote an event: a lost
// last_health_check_at only brings the check forward, but an event must be durable once it is visible.
HealthBatchResult RecordHealthBatch(pg::SpiConnection &spi, const std::vector<HealthRecord> &records);
// Records a check: health (nothing = unchanged), last_health_check_at, and an event when health changed or an
// action was taken. Returns false when the app is no longer active (it changed meanwhile).
bool RecordHealth(pg::SpiConnection &spi, const HealthTarget &target, const char *health, const std::string &event,
                  const std::string &details_json);

// Records, before the request leaves, that the health check destroys `machine_id`, a duplicate of the app's
// recorded machine (event duplicate_machine_destroyed). Returns false, recording nothing, when that must not
// happen now: the app is no longer active with that recorded machine, a create is pending, the user's reconcile
// is claimed, or another transaction holds the row.
bool RecordDuplicateDestroy(pg::SpiConnection &spi, const HealthTarget &target, const std::string &machine_id);

// Records the organization's apps with pg_fly's prefix that no live row owns (from a list-apps answer); returns
// the reported orphans marked for deletion that are still orphans.
std::vector<std::string> RecordOrphans(pg::SpiConnection &spi, const std::string &org_slug,
                                       const std::vector<std::pair<std::string, std::string>> &apps_with_prefix);
void RecordOrphanDeleted(pg::SpiConnection &spi, const std::string &app_name, const std::string &error);

// Records machines found in a user's app that belong to nobody (fly.orphan_machines), with an
// orphan_machine_found event for each one not reported yet. Nothing before the schema has the table.
void RecordOrphanMachines(pg::SpiConnection &spi, int64_t app_id, const std::string &user_id,
                          const std::vector<reconcile::OrphanMachine> &machines);
// A live app whose whole machine list the orphan pass reads, to find machines that belong to nobody.
struct OrphanMachineCheck {
	int64_t app_id = 0;
	std::string user_id;
	std::string app_name;
};
// Every live app (none before the schema has fly.orphan_machines).
std::vector<OrphanMachineCheck> LoadOrphanMachineChecks(pg::SpiConnection &spi);
// After an app's whole list was read: reported orphans of the app that it no longer holds are gone.
void RecordOrphanMachinesGone(pg::SpiConnection &spi, const std::string &app_name,
                              const std::vector<std::string> &listed_ids);
// The reported orphan machines marked for deletion that no live row records as its machine: (app, machine id).
std::vector<std::pair<std::string, std::string>> OrphanMachinesToDelete(pg::SpiConnection &spi);
void RecordOrphanMachineDeleted(pg::SpiConnection &spi, const std::string &app_name, const std::string &machine_id,
                                const std::string &error);

} // namespace pgfly

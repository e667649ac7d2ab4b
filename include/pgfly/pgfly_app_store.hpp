// The worker's reads and writes of the apps (fly.user_fly_apps) and their events: what a reconcile loads to
// start, and the recording of each of its steps. Each function runs inside the caller's transaction.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "pgfly/core/reconcile.hpp"
#include "pgfly/pg/spi.hpp"

namespace pgfly {

struct TierPolicyRow {
	bool dedicated = false;
	fly::Guest guest;
	std::string region;
	// Where to create the machine when `region` has no capacity, in order (none before the 0.3.0 schema).
	std::vector<std::string> fallback_regions;
};

// The first app name candidate for the user that no other user's live app holds (two users' names can collide).
int FirstFreeNameAttempt(pg::SpiConnection &spi, const std::string &user_id, const std::string &prefix);
std::optional<TierPolicyRow> LoadTierPolicy(pg::SpiConnection &spi, const std::string &tier);
std::optional<reconcile::AppRecord> LoadLiveApp(pg::SpiConnection &spi, const std::string &user_id);
// A machine size read from three columns of a row, in the tables' order: cpu_kind (NULL: `default_cpu_kind`),
// cpus, memory_mb.
fly::Guest GuestFromColumns(const pg::Row &row, size_t cpu_kind_column, const char *default_cpu_kind = "");

// What the worker knows about the operation a step belongs to.
struct StepContext {
	std::string user_id;
	int64_t generation = 0;
	int attempts = 0;
	std::string org_slug;
	// The live app row's id; set by a step that inserts the row.
	int64_t app_id = 0;
	// Delay before the next attempt, for a kRetry step.
	double retry_delay_seconds = 0;
	// Whether this run of failures already raised an alert; set `raise_alert` to raise one with this step.
	bool alerted = false;
	bool raise_alert = false;
};

// The NOTIFY channel alerts go to.
constexpr const char *kAlertChannel = "pg_fly_alerts";

// An alert about a subscription row the trigger could not act on (`kind` unknown_tier, invalid_user_id or
// null_user_id): an alert_raised event when `user_id` is a uuid, and a NOTIFY on kAlertChannel when the
// transaction commits. `user_for_message` is the user id as messages show it (a non-uuid quoted and shortened);
// `wait_id` names the fly.tier_waits row, if one was recorded. Honours fly.notify_payload.
void RaiseSubscriptionAlert(pg::SpiConnection &spi, const std::string &kind, const pg::Value &user_id,
                            const pg::Value &user_for_message, const pg::Value &tier, const pg::Value &wait_id);

// Writes one step atomically: the app row change, the events, and the queue item's fate. Returns whether the
// operation may go on: false when the item was superseded by a newer tier change (its claim is then released
// so that the newer desired state is picked up) or when the step ended the operation.
bool RecordStep(pg::SpiConnection &spi, StepContext &context, const reconcile::Step &step);

} // namespace pgfly

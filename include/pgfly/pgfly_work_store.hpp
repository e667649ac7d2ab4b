// The worker's reads and writes of pg_fly's tables. Each function runs inside the caller's transaction.
#pragma once

#include <optional>
#include <map>
#include <string>
#include <vector>

#include "pgfly/core/reconcile.hpp"
#include "pgfly/pg/spi.hpp"

namespace pgfly {

struct ClaimedItem {
	std::string user_id;
	bool present = false;
	pg::Value tier;
	int64_t generation = 0;
	int attempts = 0;
	bool alerted = false;
};

struct TierPolicyRow {
	bool dedicated = false;
	fly::Guest guest;
	std::string region;
};

// Claims lease a queue item for this long; every recorded step renews the lease.
constexpr int kLeaseSeconds = 600;

// Releases the claims of items whose user has no operation in `running`: orphans of a previous worker (there is
// one worker per cluster) or of a step that could not be recorded. Returns false when rows another transaction
// holds were skipped.
bool ReleaseOrphanClaims(pg::SpiConnection &spi, const std::vector<std::string> &running);
// Claims up to `limit` due items (FOR UPDATE SKIP LOCKED), oldest first, counting an attempt on each; never one
// of `running` (users whose operation is still going, even if its lease ran out).
std::vector<ClaimedItem> ClaimDueItems(pg::SpiConnection &spi, int limit, const std::vector<std::string> &running);
// Extends the leases of the items of operations still going (not of rows another transaction holds).
void RenewLeases(pg::SpiConnection &spi, const std::vector<std::string> &users);
struct QueueSummary {
	// Items due now, claimed or not.
	int64_t due = 0;
	// Until the next unclaimed item is due, or a claim's lease runs out (0 if now); nothing when the queue is empty.
	std::optional<double> seconds_until_next_due;
};
QueueSummary SummarizeQueue(pg::SpiConnection &spi);

// The first app name candidate for the user that no other user's live app holds (two users' names can collide).
int FirstFreeNameAttempt(pg::SpiConnection &spi, const std::string &user_id, const std::string &prefix);
std::optional<TierPolicyRow> LoadTierPolicy(pg::SpiConnection &spi, const std::string &tier);
std::optional<reconcile::AppRecord> LoadLiveApp(pg::SpiConnection &spi, const std::string &user_id);

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

// Writes one step atomically: the app row change, the events, and the queue item's fate. Returns whether the
// operation may go on: false when the item was superseded by a newer tier change (its claim is then released
// so that the newer desired state is picked up) or when the step ended the operation.
bool RecordStep(pg::SpiConnection &spi, StepContext &context, const reconcile::Step &step);

// An active app to health-check.
struct HealthTarget {
	int64_t app_id = 0;
	std::string user_id;
	std::string app_name;
	std::string machine_id;
	pg::Value tier;
};
std::vector<HealthTarget> LoadHealthTargets(pg::SpiConnection &spi);
// Records a check: health (nothing = unchanged), last_health_check_at, and an event when health changed or an
// action was taken. Returns false when the app is no longer active (it changed meanwhile).
bool RecordHealth(pg::SpiConnection &spi, const HealthTarget &target, const char *health, const std::string &event,
                  const std::string &details_json);

// Records the organization's apps with pg_fly's prefix that no live row owns (from a list-apps answer); returns
// the reported orphans marked for deletion that are still orphans.
std::vector<std::string> RecordOrphans(pg::SpiConnection &spi, const std::string &org_slug,
                                       const std::vector<std::pair<std::string, std::string>> &apps_with_prefix);
void RecordOrphanDeleted(pg::SpiConnection &spi, const std::string &app_name, const std::string &error);

// After an error that left a step unrecorded: release the claim and retry the item later. Returns false when
// another transaction holds the item (nothing was changed). return_attempt gives back the attempt counted at
// claim time (the step failed only because another transaction held the item).
bool DeferItem(pg::SpiConnection &spi, const std::string &user_id, int64_t generation, double delay_seconds,
			   const std::string &error, bool return_attempt);
// Gives back the attempt counted when each item (user -> generation) was claimed, while it is still claimed: its
// step failed only because another transaction held it. Returns the items still held by others.
std::map<std::string, int64_t> ReturnAttempts(pg::SpiConnection &spi, const std::map<std::string, int64_t> &items);

} // namespace pgfly

// The worker's reads and writes of the image rollout tables. Each function runs inside the caller's transaction.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "pgfly/core/fly_requests.hpp"
#include "pgfly/core/image_rollout.hpp"
#include "pgfly/pg/spi.hpp"
#include "pgfly/pgfly_health_store.hpp"

namespace pgfly {

// The rollout that is running (canary, canary_check or rolling), locked for this transaction; or, when another
// transaction holds it, only its id and `held_by_another`.
struct RunningRollout {
	int64_t id = 0;
	bool held_by_another = false;
	std::string image;
	rollout::Phase phase = rollout::Phase::kCanary;
	int max_failures = 0;
	bool canary_deadline_passed = false;
	rollout::Counts counts;
};
std::optional<RunningRollout> LoadRunningRollout(pg::SpiConnection &spi);

// Moves the rollout to the decided phase (starting the canary deadline, or halting with an alert on
// pg_fly_alerts); does nothing when the phase is unchanged.
void AdvanceRollout(pg::SpiConnection &spi, const RunningRollout &rollout, const rollout::Decision &decision);

// An app whose machine the worker is to update.
struct RolloutApp {
	int64_t app_id = 0;
	std::string user_id;
	std::string app_name;
	std::string machine_id;
	std::string region;
	fly::Guest guest;
	std::optional<int64_t> secrets_version;
	bool canary = false;
	int attempts = 0;
};
// Marks up to `limit` pending apps of the phase (canaries, or the others) as updating, in rollout order, never
// one of `running` (users with an operation going). Apps that stopped being active are skipped.
std::vector<RolloutApp> ClaimRolloutApps(pg::SpiConnection &spi, const RunningRollout &rollout, int limit,
                                         const std::vector<std::string> &running);
// Apps marked updating whose user has no operation going (`busy`) become pending again.
void ReleaseRolloutClaims(pg::SpiConnection &spi, int64_t rollout_id, const std::vector<std::string> &busy);

// Records a failed attempt (it will be retried) or the app's result, with its event.
void RecordRolloutAttemptFailed(pg::SpiConnection &spi, int64_t rollout_id, const RolloutApp &app,
                                const std::string &error);
void RecordRolloutResult(pg::SpiConnection &spi, int64_t rollout_id, const std::string &image, const RolloutApp &app,
                         const rollout::Step &step);

// Updated canaries due for a health check (not checked in the last `every_seconds`).
std::vector<HealthTarget> LoadCanariesToCheck(pg::SpiConnection &spi, int64_t rollout_id, double every_seconds);
void RecordCanaryHealth(pg::SpiConnection &spi, int64_t rollout_id, int64_t app_id, bool healthy);

} // namespace pgfly

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
	// "image", or "secrets" (a rollout the worker started when fly.app_secrets_file changed: image is empty).
	std::string kind = "image";
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
	// For a secrets rollout: the app's image (kept), the names last set on it, and the digest of the set the
	// update sends (filled in by the worker).
	bool secrets_rollout = false;
	std::string image;
	std::vector<std::string> secret_names;
	std::string secrets_digest;
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

// Secrets that change (a rollout of kind 'secrets'); none of these exist before the 0.3.0 schema.
bool SecretsColumnsExist(pg::SpiConnection &spi);
// The database's key for the secrets digest (fly.secrets_digest_key, made by the 0.3.0 script); empty before that
// schema. Throws when the table holds no key: recording unkeyed digests is what the key prevents.
std::string LoadSecretsDigestKey(pg::SpiConnection &spi);
// When no rollout is running: a secrets rollout of every active app whose recorded digest differs from `digest`
// and that no rollout for this set took yet, one canary first. Not when the last secrets rollout, for the same
// set, halted or was cancelled (the admin resumes it, or changes the file). Its id, or nothing to do.
std::optional<int64_t> StartSecretsRollout(pg::SpiConnection &spi, const std::string &digest, bool empty_set);
// Fly answered setting the app's secrets with `version`: the names now set, the version, a secrets_set event.
void RecordSecretsSet(pg::SpiConnection &spi, int64_t rollout_id, const RolloutApp &app, int64_t version,
                      const std::vector<std::string> &names, const std::vector<std::string> &unset);

// Updated canaries due for a health check (not checked in the last `every_seconds`).
std::vector<HealthTarget> LoadCanariesToCheck(pg::SpiConnection &spi, int64_t rollout_id, double every_seconds);
void RecordCanaryHealth(pg::SpiConnection &spi, int64_t rollout_id, int64_t app_id, bool healthy);

} // namespace pgfly

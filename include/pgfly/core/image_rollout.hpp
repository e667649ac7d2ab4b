// Image rollouts: moving every live app's machine to a new image in place, canary apps first.
//
// ImageUpdate is the state machine for one app (get the machine, update it with the full config, wait until
// it is started); NextRolloutPhase decides, from the per-app counts, when the canary phase ends, when the
// rollout halts and when it is complete. Both are pure: the worker sends the requests and records the results.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "pgfly/core/fly_outcome.hpp"
#include "pgfly/core/fly_requests.hpp"

namespace pgfly {
namespace rollout {

// One app of a rollout, as recorded. Its machine is read, updated with the full config (then started if the
// update left it stopped), and awaited until started.
struct AppTarget {
	std::string app_name;
	std::string machine_id;
	std::string image;
	// Wait calls for "started" after the update before the app counts as failed.
	int wait_timeout_seconds = 60;
	int wait_rounds = 5;
	// A secrets rollout: these are set first (null unsets a name), then the machine is updated to the version
	// Fly answers with. A machine does not show which secrets version it has, so it is updated even when it
	// already runs `image`.
	std::optional<std::map<std::string, std::optional<std::string>>> secrets;
};

enum class Result {
	kContinue,       // send `request` next
	kUpdated,        // the machine now runs the image and is started
	kAlreadyCurrent, // it already ran the image (e.g. updated before a restart): nothing was sent
	kVanished,       // the app or machine is gone: the health check's business, not the rollout's
	kFailed,         // Fly refused the update, or the machine did not start
};

struct Step {
	Result result = Result::kContinue;
	std::optional<fly::Request> request;
	// A transient failure: `request` re-sends the failed one after the backoff delay.
	bool failed_attempt = false;
	std::optional<double> retry_after_seconds;
	// What went wrong (kFailed, failed attempts), and the image the machine ran before.
	std::string error;
	std::string from_image;
	// Set on the step that follows Fly's answer to setting the secrets: the version it returned.
	bool secrets_set = false;
	std::optional<int64_t> secrets_version;
};

class ImageUpdate {
public:
	// `spec` is the full machine config with the new image (machine::MachineSpecFor).
	ImageUpdate(AppTarget target, fly::MachineSpec spec);

	Step Start();
	Step OnOutcome(const fly::Outcome &outcome);

	const AppTarget &
	target() const {
		return target_;
	}

private:
	enum class Phase { kSetSecrets, kGetMachine, kUpdate, kStart, kWaitStarted, kFinished };

	Step Send(Step step, Phase phase, fly::Request request);
	Step StartMachine(Step step);
	Step Wait(Step step);
	Step FirstWait(Step step);
	Step Retry(const fly::Outcome &outcome, Step step);
	Step Finish(Result result, Step step);

	AppTarget target_;
	fly::MachineSpec spec_;
	Phase phase_ = Phase::kFinished;
	int wait_round_ = 0;
	std::string from_image_;
	std::optional<fly::Request> last_request_;
};

// The rollout as a whole. Canary apps go first; the rest wait until every canary that was updated has been
// seen healthy. Failures beyond max_failures (updates that failed, canaries still not healthy at the deadline)
// halt the rollout.
enum class Phase { kCanary, kCanaryCheck, kRolling, kCompleted, kHalted };

const char *PhaseName(Phase phase);
std::optional<Phase> PhaseFromName(const std::string &name);

struct Counts {
	int canary_pending = 0; // canary apps not yet updated (pending or updating)
	int canary_updated = 0; // updated, not yet seen healthy
	int canary_healthy = 0;
	int pending = 0; // other apps not yet updated (pending or updating)
	int failed = 0;  // apps whose update failed (canary or not)
};

struct Decision {
	Phase phase;
	// Why it halted; empty otherwise.
	std::string reason;
};

Decision NextRolloutPhase(Phase phase, const Counts &counts, int max_failures, bool canary_deadline_passed);

} // namespace rollout
} // namespace pgfly

// The worker's job runner: it sends the Fly requests of four kinds of jobs through one client, one rate limiter
// and one circuit breaker, and turns each answer into the job's next step.
// - reconcile jobs (pgfly_reconcile_runner.cpp): one reconcile::Operation per claimed queue item, every step
//   recorded;
// - health jobs (pgfly_health_runner.cpp): checks of active apps' machines, and of rollout canaries;
// - orphan jobs (pgfly_orphan_runner.cpp): listing the organization's apps, deleting orphans;
// - rollout jobs (pgfly_rollout_runner.cpp): moving one app's machine to a rollout's image.
// pgfly_job_runner.cpp holds what they share: configuration, the dispatch loop, sending and observing
// requests, status and sleep. A user has at most one reconcile or rollout job at a time, and a health check
// does not start while they have one. All of it is C++-regime code: PostgreSQL is reached only through pgfly::pg
// (guarded), and no transaction is open while a request is in flight.
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "pgfly/core/circuit_breaker.hpp"
#include "pgfly/core/connection_budget.hpp"
#include "pgfly/core/drift_pass.hpp"
#include "pgfly/core/fly_client.hpp"
#include "pgfly/core/image_rollout.hpp"
#include "pgfly/core/rate_limiter.hpp"
#include "pgfly/core/reconcile.hpp"
#include "pgfly/pgfly_app_store.hpp"
#include "pgfly/pgfly_health_store.hpp"
#include "pgfly/pgfly_queue_store.hpp"
#include "pgfly/pgfly_rollout_store.hpp"
#include "pgfly/pgfly_shmem.hpp"

namespace pgfly {

class JobRunner {
public:
	explicit JobRunner(SharedState *shared);
	// Gives back the file descriptors reserved for the client.
	~JobRunner();
	JobRunner(const JobRunner &) = delete;
	JobRunner &operator=(const JobRunner &) = delete;

	// (Re)reads the fly.* settings, the token and the secrets file; called at start and after SIGHUP.
	void Configure();
	// Claims due items while below fly.max_concurrency (or the lower concurrency the reserved file descriptors
	// allow), while the breaker is closed, and starts them; then runs the drift pass's next batch, when it is due.
	void Dispatch();
	// Serves the client's sockets and timers, turns each answer into the operation's next step, and sends the
	// requests that the rate limiter and the breaker now allow.
	void Drive();
	// Publishes in-flight counts, breaker state and the last error to shared memory (fly.worker_status()).
	void PublishStatus() const;

	int EventFd() const;
	// How long the worker may sleep: the client's timer, a pending request, the next due item, the breaker's
	// probe time, the drift pass's next batch or next pass, or the poll interval.
	long SleepMs() const;
	// Whether the worker, about to sleep, waits for work it could start now: a free slot (so a usable
	// configuration and a breaker that lets an operation start) and no request held back by the rate limiter.
	// Only then does a commit that queued work wake it (SharedState::worker_idle); otherwise an operation's end or
	// the limiter's next send wakes it, and it claims what is due then.
	bool WaitsForWork() const;
	// fly.worker_status()'s work_commits as read before the last claim: a later value means commits the claim may
	// not have seen.
	uint64_t
	CommitsSeen() const {
		return commits_seen_;
	}
	// Whether commits have logged tier changes since the last fold (folded within kFoldIntervalSeconds), and
	// urgent_commits as read before the last fold.
	bool FoldDue() const;
	// Milliseconds until a fold for a commit that asked for a prompt start may run, and until the next fold of
	// anything logged (0: now).
	long UrgentFoldInMs() const;
	long FoldInMs() const;
	uint64_t
	UrgentFolded() const {
		return urgent_folded_;
	}

private:
	// The kinds of job. Each job is in one place at a time: a pending request, the requests in flight, or the
	// handler of its answer, which may give it a next request.
	// A reconcile of one claimed queue item.
	struct ReconcileJob {
		reconcile::Operation operation;
		StepContext context;
	};
	// A health check of one active app. A routine check lists the machines that carry the user's metadata: the
	// recorded machine's entry gives its health (its own GET when the list cannot say), and any other live one is a
	// duplicate, destroyed once the check is recorded (kDestroyingDuplicate). A canary's check gets its machine.
	// Then maybe the app's own endpoint is asked, or the machine started.
	struct HealthJob {
		HealthTarget target;
		// The image rollout whose canary this is (0: a routine check).
		int64_t canary_of_rollout = 0;
		// kList: a routine check's list of the user's machines; kMachine: the machine itself (a canary's check, or
		// when the list could not say).
		enum class Phase { kList, kMachine, kEndpoint, kStarting, kDestroyingDuplicate } phase = Phase::kMachine;
		// The machine's verdict, kept while the app's own endpoint is asked.
		std::string machine_state;
		// Duplicates still to destroy.
		std::vector<std::string> duplicates;
	};
	// Listing the organization's apps (empty name), deleting one orphan app, or one orphan machine (machine_id),
	// or listing one live app's machines (check.app_id set) for machines that belong to nobody.
	struct OrphanJob {
		std::string app_name;
		std::string machine_id;
		OrphanMachineCheck check;
	};
	// One app's machine moving to a rollout's image.
	struct RolloutJob {
		int64_t rollout_id;
		std::string image;
		RolloutApp app;
		rollout::ImageUpdate update;
	};
	using Job = std::variant<ReconcileJob, HealthJob, OrphanJob, RolloutJob>;
	// A request waiting for its time, the rate limiter and the breaker.
	struct PendingRequest {
		double due;
		Job job;
		fly::Request request;
		// Held back by the rate limiter (not by its own delay or the breaker).
		bool rate_limited = false;
	};
	struct InFlight {
		Job job;
		std::pair<std::string, std::string> rate_key;
		fly::Endpoint endpoint;
	};

	// pgfly_job_runner.cpp
	// Dispatch's claims and passes (all but the drift pass).
	void DispatchWork();
	// How many operations may be started now: none while the breaker is open or the configuration is unusable.
	int Capacity(double now) const;
	// Runs `body` in a transaction of its own when pg_fly exists in this database; returns whether it does.
	bool InTransaction(const char *activity, const std::function<void(pg::SpiConnection &)> &body);
	void SendAllowed();
	// Sends a Fly API request at once when the breaker is closed and the rate limiter has a token for it, and
	// pushes it onto the wire; nothing when it must wait (it then goes through pending_).
	std::optional<std::pair<fly::RequestId, std::pair<std::string, std::string>>> SendNow(const fly::Request &request);
	// Sends pending_[next...] that are due and allowed, keeping the others in still_pending; `next` says how far
	// it got.
	void SendDue(double now, std::vector<PendingRequest> &still_pending, size_t &next);
	void Observe(const InFlight &in_flight, const fly::Outcome &outcome);
	// The users of busy_users_, for the store functions that must leave them alone.
	std::vector<std::string> BusyUsers() const;
	void Log(const std::string &message) const;
	ConnectionBudget ReserveClientFds();
	static double Now();

	// pgfly_reconcile_runner.cpp
	// A claimed item's reconcile, loaded (its tier's policy, its live app row, its first free name) and ready to
	// start.
	struct LoadedStart {
		reconcile::Target target;
		std::optional<reconcile::AppRecord> app;
		reconcile::Settings settings;
		StepContext context;
	};
	// The loads, in the caller's transaction: the claim's own, so that a wake-up costs one transaction before the
	// first request.
	LoadedStart LoadStart(pg::SpiConnection &spi, const ClaimedItem &item);
	// Starts the operation of a loaded item, or defers the item.
	void Begin(LoadedStart loaded);
	// Loads in a transaction of its own, then starts (or defers the item when the loads fail).
	void Start(const ClaimedItem &item);
	void OnReconcileAnswer(ReconcileJob job, const fly::Outcome &outcome);
	// Records the step; then holds its request for sending, or ends the operation.
	void Record(ReconcileJob job, reconcile::Step step);
	// Applies fly.max_attempts and fly.alert_after_attempts to a failed step.
	void ApplyFailurePolicy(ReconcileJob &job, reconcile::Step &step);
	double RetryDelay(int attempts, std::optional<double> retry_after);
	void Defer(const std::string &user_id, int64_t generation, int attempts, const std::string &error,
	           bool item_was_locked = false);

	// pgfly_health_runner.cpp
	void StartHealthChecks();
	bool WantsHealthProbe(double now) const;
	void OnHealthAnswer(HealthJob check, const fly::Outcome &outcome);
	// Whether the duplicates a routine check's list showed may be destroyed (no when the app must be left alone
	// this pass), and the next duplicate's destruction (recorded first), if any.
	bool MayDestroyDuplicates(const HealthJob &check) const;
	std::optional<fly::Request> NextDuplicateDestroy(HealthJob &check);
	// Records the answers collected in health_batch_ in one transaction.
	void FlushHealthBatch();

	// pgfly_orphan_runner.cpp
	void StartOrphanPass();
	// Destroys the orphan machines fly.delete_orphan_machines() marked, and records each answer.
	void StartOrphanMachineDeletions();
	void OnOrphanMachineDeleted(const OrphanJob &work, const fly::Outcome &outcome);
	// Lists every live app's machines, and records those that belong to nobody.
	void StartOrphanMachineLists();
	void OnOrphanMachineList(const OrphanJob &work, const fly::Outcome &outcome);

	// pgfly_policy_runner.cpp: queues what fly.tier_policies changes ask for (fly._apply_policy_changes), one
	// short transaction per pass of the loop while there is more, when asked at a policy's commit, and every
	// few seconds for waits a policy's wake-up came too early to see.
	void PolicyStep();

	// Drift repair (pgfly_job_runner.cpp): one of fly.check_drift()'s batches, in a transaction of its own, per
	// pass of the loop, so that the application's table is locked for one batch at a time and the loop serves
	// everything else between two batches. drift_ remembers where the pass is.
	void DriftStep();

	// pgfly_retention_runner.cpp: one batch of fly.event_retention's deletions (fly._retention_batch), in a
	// transaction of its own, when due: batches paced by the time they took, a pass every 10 minutes.
	void RetentionStep();

	// pgfly_fold_runner.cpp: folds fly.tier_intents (the trigger's tier-change log) into the queue, in a
	// transaction of its own, before each claim: at once after a commit that logged a change (at most every
	// kFoldIntervalSeconds while the worker is busy), and every poll interval (after a crash, a promotion, or a
	// COMMIT PREPARED, which tells no one). A fold that waits on a lock falls back to one user at a time, and
	// leaves the users it cannot fold for a while.
	void FoldStep(double now);
	bool FoldUserByUser(const std::vector<std::string> &skip);
	void OnOrphanAnswer(const OrphanJob &work, const fly::Outcome &outcome);

	// pgfly_rollout_runner.cpp: in a transaction of its own, moves the running rollout on and claims apps to
	// update (at most `capacity`) or canaries to check; StartRolloutUpdates sends them.
	void PlanRollout(double now, const std::vector<std::string> &busy, int capacity);
	void StartRolloutUpdates();
	void OnRolloutAnswer(RolloutJob work, const fly::Outcome &outcome);
	void FinishRolloutUpdate(const RolloutJob &work, const rollout::Step &step);

	SharedState *shared_;
	fly::ClientConfig client_config_;
	std::unique_ptr<fly::Client> client_;
	reconcile::Settings settings_;
	std::string configuration_problem_;
	RateLimiter limiter_;
	CircuitBreaker breaker_;
	std::vector<PendingRequest> pending_;
	std::map<fly::RequestId, InFlight> in_flight_;
	// Requests sent before their step was recorded whose record then failed or ended the job: their answers
	// only feed the breaker and the limiter (the next attempt finds what they did).
	struct Abandoned {
		std::pair<std::string, std::string> rate_key;
		fly::Endpoint endpoint;
	};
	std::map<fly::RequestId, Abandoned> abandoned_;
	// Users with a reconcile or rollout job (pending or in flight): never two for one user.
	std::set<std::string> busy_users_;
	// When the next queue item is due (or an unclaimable one is looked at again); nothing: the queue is empty.
	std::optional<double> next_queue_due_;
	bool dispatch_again_ = true;
	uint64_t commits_seen_ = 0;
	std::string last_error_;
	double last_error_at_ = 0;
	double last_prune_ = 0;
	double last_lease_renewal_ = 0;
	bool claims_released_ = false;
	bool extension_present_ = true;
	// Items whose step failed only because another transaction held them: the attempt counted at claim time is
	// given back when their claim is released (user -> generation).
	std::map<std::string, int64_t> attempts_to_return_;
	double next_saturated_dispatch_ = 0;
	// When the due items are next counted (fly.worker_status().queue_ready).
	double next_queue_count_ = 0;
	// The last look at the queue did not count them: the loop wakes at next_queue_count_ to count them.
	bool queue_count_stale_ = false;
	// A wake that found every slot taken and was not looked at: the queue is looked at when the second is over.
	bool dispatch_skipped_ = false;
	// When a half-open breaker may next look for an app whose health check carries its probe.
	double next_probe_check_ = 0;
	// The page of the health pass being checked, and where the pass is (more: pages are left to load).
	std::vector<HealthTarget> health_queue_;
	size_t health_next_ = 0;
	HealthCursor health_cursor_;
	bool health_more_ = false;
	// Answered routine checks not recorded yet (FlushHealthBatch).
	std::vector<HealthRecord> health_batch_;
	int health_running_ = 0;
	double next_health_pass_ = 0;
	// Image rollouts: when to look again, what was claimed in this pass, canaries being checked.
	double next_rollout_pass_ = 0;
	// Whether apps are to be compared with fly.app_secrets_file's set (at the start and after each reload) at the
	// next rollout pass that finds no rollout running.
	bool secrets_check_due_ = true;
	double next_secrets_check_ = 0;
	// The drift pass: in progress or not, its cursor, when the next one is due (the first at the worker's start).
	DriftPass drift_;
	double drift_started_ = 0;
	// The policy step: when it next looks without being asked (at once at the worker's start), and whether its
	// last call stopped at its limit.
	double next_policy_sweep_ = 0;
	bool policy_more_ = false;
	// Event retention: when the next batch (or pass) is due, rows the pass deleted so far, and the retention it
	// was configured with (a change starts a pass at once).
	double next_retention_batch_ = 0;
	int64_t retention_removed_ = 0;
	// The fold: work_commits as read before the last fold, when the next may run (a busy worker folds at most
	// every kFoldIntervalSeconds) and the next one runs anyway, whether the last filled its batch, and users left
	// out until a time (their rows or items held by another transaction).
	uint64_t commits_folded_ = 0;
	uint64_t urgent_folded_ = 0;
	double next_urgent_fold_ = 0;
	double next_fold_ = 0;
	double next_periodic_fold_ = 0;
	bool fold_more_ = false;
	struct FoldHeld {
		double until;
		double hold;
	};
	std::map<std::string, FoldHeld> fold_held_;
	int retention_configured_ = -1;
	std::vector<RolloutJob> rollout_claimed_;
	std::vector<HealthJob> canaries_claimed_;
	std::set<int64_t> canaries_checking_;
	std::mt19937_64 random_;
	// File descriptors reserved with PostgreSQL for the client, and the concurrency and connections they allow.
	int reserved_fds_ = 0;
	int concurrency_limit_ = 0;
	int health_concurrency_limit_ = 0;
	int client_connections_ = 0;
};

} // namespace pgfly

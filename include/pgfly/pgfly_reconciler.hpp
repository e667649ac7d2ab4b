// Runs reconcile operations for the worker: claims due queue items, drives one reconcile::Operation per user
// through the Fly client, and records every step. Requests go out paced by the rate limiter and only while the
// circuit breaker lets them. All of it is C++-regime code: PostgreSQL is reached only through pgfly::pg
// (guarded), and no transaction is open while a request is in flight.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "pgfly/core/circuit_breaker.hpp"
#include "pgfly/core/connection_budget.hpp"
#include "pgfly/core/fly_client.hpp"
#include "pgfly/core/image_rollout.hpp"
#include "pgfly/core/rate_limiter.hpp"
#include "pgfly/core/reconcile.hpp"
#include "pgfly/pgfly_rollout_store.hpp"
#include "pgfly/pgfly_shmem.hpp"
#include "pgfly/pgfly_work_store.hpp"

namespace pgfly {

class Reconciler {
public:
	explicit Reconciler(SharedState *shared);
	// Gives back the file descriptors reserved for the client.
	~Reconciler();
	Reconciler(const Reconciler &) = delete;
	Reconciler &operator=(const Reconciler &) = delete;

	// (Re)reads the fly.* settings, the token and the secrets file; called at start and after SIGHUP.
	void Configure();
	// Claims due items while below fly.max_concurrency (or the lower concurrency the reserved file descriptors
	// allow), while the breaker is closed, and starts them.
	void Dispatch();
	// Serves the client's sockets and timers, turns each answer into the operation's next step, and sends the
	// requests that the rate limiter and the breaker now allow.
	void Drive();
	// Publishes in-flight counts, breaker state and the last error to shared memory (fly.worker_status()).
	void PublishStatus() const;

	int EventFd() const;
	// How long the worker may sleep: the client's timer, a held-back request, the next due item, the breaker's
	// probe time, or the poll interval.
	long SleepMs() const;

private:
	struct RunningOperation {
		reconcile::Operation operation;
		StepContext context;
	};
	// A health check of one active app: get its machine, then maybe start it.
	struct HealthCheck {
		HealthTarget target;
		// The image rollout whose canary this is (0: a routine check).
		int64_t canary_of_rollout = 0;
		enum class Phase { kMachine, kEndpoint, kStarting } phase = Phase::kMachine;
		// The machine's verdict, kept while the app's own endpoint is asked.
		std::string machine_state;
	};
	// A request waiting to be sent, or in flight, belongs to a reconcile operation or to a health check.
	// Orphan work: listing the organization's apps (empty name) or deleting one orphan app.
	struct OrphanWork {
		std::string app_name;
	};
	// One app's machine moving to a rollout's image.
	struct RolloutUpdate {
		int64_t rollout_id;
		std::string image;
		RolloutApp app;
		rollout::ImageUpdate update;
	};
	struct Held {
		double due;
		std::unique_ptr<RunningOperation> running;
		std::unique_ptr<HealthCheck> health;
		fly::Request request;
		std::unique_ptr<OrphanWork> orphan = nullptr;
		std::unique_ptr<RolloutUpdate> rollout = nullptr;
	};
	struct InFlight {
		std::unique_ptr<RunningOperation> running;
		std::unique_ptr<HealthCheck> health;
		std::unique_ptr<OrphanWork> orphan;
		std::unique_ptr<RolloutUpdate> rollout;
		std::pair<std::string, std::string> rate_key;
		fly::Endpoint endpoint;
	};

	void Start(const ClaimedItem &item);
	// How many operations may be started now: none while the breaker is open or the configuration is unusable.
	int Capacity(double now) const;
	// Runs `body` in a transaction of its own when pg_fly exists in this database; returns whether it does.
	bool InTransaction(const char *activity, const std::function<void(pg::SpiConnection &)> &body);
	void StartHealthChecks();
	bool WantsHealthProbe(double now) const;
	void OnHealthAnswer(std::unique_ptr<HealthCheck> check, const fly::Outcome &outcome);
	void OnOrphanAnswer(const OrphanWork &work, const fly::Outcome &outcome);
	// Image rollouts (pgfly_rollout_runner.cpp): in a transaction of its own, moves the running rollout on and
	// claims apps to update (at most `capacity`) or canaries to check; StartRolloutUpdates sends them.
	void PlanRollout(double now, const std::vector<std::string> &busy, int capacity);
	void StartRolloutUpdates();
	void OnRolloutAnswer(std::unique_ptr<RolloutUpdate> work, const fly::Outcome &outcome);
	void FinishRolloutUpdate(const RolloutUpdate &work, const rollout::Step &step);
	// Records the step; then holds its request for sending, or ends the operation.
	void Record(std::unique_ptr<RunningOperation> running, reconcile::Step step);
	void SendAllowed();
	void Observe(const InFlight &in_flight, const fly::Outcome &outcome);
	// Applies fly.max_attempts and fly.alert_after_attempts to a failed step.
	void ApplyFailurePolicy(RunningOperation &running, reconcile::Step &step);
	double RetryDelay(int attempts, std::optional<double> retry_after);
	void Defer(const std::string &user_id, int64_t generation, int attempts, const std::string &error,
			   bool item_was_locked = false);
	std::vector<std::string> RunningUsers() const;
	void Log(const std::string &message) const;
	ConnectionBudget ReserveClientFds();
	static double Now();

	SharedState *shared_;
	fly::ClientConfig client_config_;
	std::unique_ptr<fly::Client> client_;
	reconcile::Settings settings_;
	std::string configuration_problem_;
	RateLimiter limiter_;
	CircuitBreaker breaker_;
	std::vector<Held> held_;
	std::map<fly::RequestId, InFlight> in_flight_;
	// Users with an operation (held or in flight): never two operations for one user.
	std::map<std::string, bool> running_;
	// When the next queue item is due (or an unclaimable one is looked at again); nothing: the queue is empty.
	std::optional<double> next_queue_due_;
	bool dispatch_again_ = true;
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
	// When a half-open breaker may next look for an app whose health check carries its probe.
	double next_probe_check_ = 0;
	std::vector<HealthTarget> health_queue_;
	size_t health_next_ = 0;
	int health_running_ = 0;
	double next_health_pass_ = 0;
	// Image rollouts: when to look again, what was claimed in this pass, canaries being checked.
	double next_rollout_pass_ = 0;
	std::vector<std::unique_ptr<RolloutUpdate>> rollout_claimed_;
	std::vector<std::unique_ptr<HealthCheck>> canaries_claimed_;
	std::map<int64_t, bool> canaries_checking_;
	std::mt19937_64 random_;
	// File descriptors reserved with PostgreSQL for the client, and the concurrency and connections they allow.
	int reserved_fds_ = 0;
	int concurrency_limit_ = 0;
	int client_connections_ = 0;
};

} // namespace pgfly

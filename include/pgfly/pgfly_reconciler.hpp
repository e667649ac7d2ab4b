// Runs reconcile operations for the worker: claims due queue items, drives one reconcile::Operation per user
// through the Fly client, and records every step. All of it is C++-regime code: PostgreSQL is reached only
// through pgfly::pg (guarded), and no transaction is open while a request is in flight.
#pragma once

#include <map>
#include <memory>
#include <random>
#include <string>

#include "pgfly/core/fly_client.hpp"
#include "pgfly/core/reconcile.hpp"
#include "pgfly/pgfly_shmem.hpp"
#include "pgfly/pgfly_work_store.hpp"

namespace pgfly {

class Reconciler {
public:
	explicit Reconciler(SharedState *shared);

	// (Re)reads the fly.* settings, the token and the secrets file; called at start and after SIGHUP.
	void Configure();
	// At start: claims left by a previous worker are released.
	void ReleaseOrphanedClaims();
	// Claims due items while below fly.max_concurrency and starts their operations.
	void Dispatch();
	// Serves the client's sockets and timers, and turns each answer into the operation's next step.
	void Drive();

	int EventFd() const;
	// How long the worker may sleep: the client's timer, the next due item, or the poll interval.
	long SleepMs() const;
	size_t Running() const {
		return running_.size();
	}

private:
	struct RunningOperation {
		reconcile::Operation operation;
		StepContext context;
	};

	void Start(const ClaimedItem &item);
	// Records the step and sends its request, or ends the operation.
	void Advance(std::unique_ptr<RunningOperation> running, const reconcile::Step &step);
	double RetryDelay(int attempts, std::optional<double> retry_after);
	void Log(const std::string &message) const;

	SharedState *shared_;
	fly::ClientConfig client_config_;
	std::unique_ptr<fly::Client> client_;
	reconcile::Settings settings_;
	std::string configuration_problem_;
	std::map<fly::RequestId, std::unique_ptr<RunningOperation>> in_flight_;
	std::map<std::string, fly::RequestId> running_;
	std::optional<double> next_due_seconds_;
	bool dispatch_again_ = true;
	std::mt19937_64 random_;
};

} // namespace pgfly

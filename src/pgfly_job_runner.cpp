#include "pgfly/pgfly_job_runner.hpp"

extern "C" {
#include "commands/extension.h"
#include "storage/fd.h"
#include "utils/elog.h"
#include "utils/timestamp.h"
}

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "pgfly/core/token_source.hpp"
#include "pgfly/core/wake_schedule.hpp"
#include "pgfly/core/retry_delay.hpp"
#include "pgfly/core/secrets.hpp"
#include "pgfly/core/worker_settings.hpp"
#include "pgfly/pg/sql_values.hpp"
#include "pgfly/pg/transaction.hpp"
#include "pgfly/pgfly_guc.hpp"

namespace pgfly {

namespace {

constexpr double kPruneEverySeconds = 60;
constexpr double kSaturatedDispatchSeconds = 1.0;
// How often the queue's due items are counted for fly.worker_status().queue_ready.
constexpr double kQueueCountSeconds = 1.0;
// Active apps a health pass loads at a time.
constexpr int kHealthPageSize = 2000;
// External descriptors left to PostgreSQL when the reservation takes all it can.
constexpr int kFdHeadroom = 4;

// One callable of lambdas, one for each kind of job, for std::visit.
template <class... Handlers> struct Overloaded : Handlers... { using Handlers::operator()...; };
template <class... Handlers> Overloaded(Handlers...) -> Overloaded<Handlers...>;

} // namespace

JobRunner::JobRunner(SharedState *shared) : shared_(shared), random_(std::random_device{}()) {
	Configure();
}

double
JobRunner::Now() {
	return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void
JobRunner::Log(const std::string &message) const {
	pg::PgGuard([&]() { elog(LOG, "pg_fly worker: %s", message.c_str()); });
}

void
JobRunner::Configure() {
	std::string problem;
	ResolvedToken token = ResolveToken(settings::api_token, settings::api_token_file, getenv("FLY_API_TOKEN"));
	if (!token.problem.empty()) {
		problem = token.problem;
	}
	settings_ = reconcile::Settings{};
	settings_.org_slug = settings::org_slug;
	settings_.app_name_prefix = settings::app_name_prefix;
	settings_.image = settings::image;
	settings_.create_settle_seconds = settings::request_timeout_ms / 1000.0;
	settings_.visibility_window_seconds = settings::create_settle_time_ms / 1000.0;
	settings_.capacity_retries = settings::capacity_retries;
	settings_.shared_network = settings::app_network == settings::kAppNetworkShared;
	settings_.service.internal_port = settings::app_internal_port;
	settings_.service.health_path = settings::app_health_path;
	ParsedMap env = ParseMachineEnv(settings::machine_env);
	if (!env.problem.empty()) {
		problem = env.problem;
	}
	settings_.env = env.values;
	if (settings_.image.empty()) {
		problem = "fly.image is not set: there is no image to run";
	}
	if (settings::app_secrets_file[0] != '\0') {
		const auto text = ReadTextFile(settings::app_secrets_file);
		ParsedMap secrets = ParseSecretsFile(text.value_or(""));
		if (!text) {
			problem = std::string("fly.app_secrets_file \"") + settings::app_secrets_file + "\" cannot be read";
		} else if (!secrets.problem.empty()) {
			problem = "fly.app_secrets_file: " + secrets.problem;
		}
		settings_.secrets = secrets.values;
	}
	secrets_check_due_ = true;
	next_rollout_pass_ = 0;
	if (problem != configuration_problem_ && !problem.empty()) {
		Log(problem + "; provisioning waits until the configuration is fixed");
	}
	configuration_problem_ = problem;

	RateLimitSettings limits;
	limits.enabled = settings::rate_limits;
	limits.action = RateLimit{settings::rate_limit_per_second, static_cast<double>(settings::rate_limit_burst)};
	limits.get_machine = RateLimit{settings::rate_limit_get_machine_per_second,
	                               static_cast<double>(settings::rate_limit_get_machine_burst)};
	limits.delete_app = RateLimit{settings::rate_limit_app_deletes_per_minute / 60.0,
	                              static_cast<double>(settings::rate_limit_app_deletes_per_minute)};
	limiter_.Configure(limits);
	breaker_.Configure(CircuitBreakerSettings{settings::breaker_failure_threshold,
	                                          settings::breaker_open_time_ms / 1000.0,
	                                          settings::breaker_max_open_time_ms / 1000.0});

	client_config_.base_url = settings::api_url;
	client_config_.proxy = settings::http_proxy;
	client_config_.token = token.token;
	client_config_.secret_values.clear();
	for (const auto &secret : settings_.secrets) {
		client_config_.secret_values.push_back(secret.second);
	}
	client_config_.connect_timeout_ms = settings::connect_timeout_ms;
	client_config_.request_timeout_ms = settings::request_timeout_ms;
	// Reconciles (with rollouts) keep up to fly.max_concurrency requests in flight, health checks up to
	// fly.health_check_concurrency: as many connections as PostgreSQL grants descriptors for.
	const ConnectionBudget budget = ReserveClientFds();
	client_config_.max_host_connections = budget.connections;
	client_config_.max_total_connections = budget.connections;
	if (client_) {
		client_->UpdateConfig(client_config_);
	} else {
		client_ = std::make_unique<fly::Client>(client_config_);
	}
	SpinLockAcquire(&shared_->mutex);
	shared_->token_source = static_cast<int>(token.source);
	SpinLockRelease(&shared_->mutex);
	dispatch_again_ = true;
	// A reload looks at the queue and the extension at once, even with every slot taken: the tests' barriers
	// (a SIGHUP each) then count iterations that did look.
	next_saturated_dispatch_ = 0;
	// A changed interval starts a pass in progress over (or ends it, when 0).
	drift_.Configure(settings::drift_check_interval_ms / 1000.0);
	// A changed retention is applied at once.
	if (settings::event_retention_s != retention_configured_) {
		retention_configured_ = settings::event_retention_s;
		next_retention_batch_ = 0;
	}
}

// libcurl's sockets and epoll descriptor are opened outside fd.c: PostgreSQL learns of them here, so that its
// own files do not run out. What is not granted lowers the worker's concurrency rather than failing.
ConnectionBudget
JobRunner::ReserveClientFds() {
	const ConnectionBudget wanted = WantedConnections(settings::max_concurrency, settings::health_check_concurrency);
	pg::PgGuard([&]() {
		for (; reserved_fds_ > 0; reserved_fds_--) {
			ReleaseExternalFD();
		}
		// Stops kFdHeadroom short of what PostgreSQL would grant: the loop's wait set, an error pause's wait
		// and PostgreSQL's own external descriptors need some too.
		while (reserved_fds_ < wanted.fds + kFdHeadroom && AcquireExternalFD()) {
			reserved_fds_++;
		}
		const int keep = std::max(0, std::min(wanted.fds, reserved_fds_ - kFdHeadroom));
		for (int spare = reserved_fds_ - keep; spare > 0; spare--) {
			ReleaseExternalFD();
			reserved_fds_--;
		}
		for (; reserved_fds_ < kMinClientFds; reserved_fds_++) {
			ReserveExternalFD();
		}
	});
	const ConnectionBudget budget =
		FitConnections(settings::max_concurrency, settings::health_check_concurrency, reserved_fds_);
	if (budget.fds < wanted.fds &&
	    (budget.concurrency != concurrency_limit_ || budget.health_concurrency != health_concurrency_limit_)) {
		Log("only " + std::to_string(reserved_fds_) + " file descriptors are available for Fly connections (" +
		    std::to_string(wanted.fds) + " wanted): " + std::to_string(budget.concurrency) +
		    " users are reconciled at once instead of fly.max_concurrency = " +
		    std::to_string(settings::max_concurrency) + ", and " + std::to_string(budget.health_concurrency) +
		    " health checks instead of fly.health_check_concurrency = " +
		    std::to_string(settings::health_check_concurrency));
	}
	if (budget.connections != client_connections_) {
		pg::PgGuard([&]() {
			elog(DEBUG1, "pg_fly worker: %d file descriptors reserved, at most %d connections", reserved_fds_,
			     budget.connections);
		});
	}
	concurrency_limit_ = budget.concurrency;
	health_concurrency_limit_ = budget.health_concurrency;
	client_connections_ = budget.connections;
	return budget;
}

JobRunner::~JobRunner() {
	try {
		pg::PgGuard([&]() {
			for (; reserved_fds_ > 0; reserved_fds_--) {
				ReleaseExternalFD();
			}
		});
	} catch (...) {
		// Only a counter: nothing to do about it at exit.
	}
}

std::vector<std::string>
JobRunner::BusyUsers() const {
	std::vector<std::string> users;
	users.reserve(busy_users_.size());
	for (const auto &user : busy_users_) {
		users.push_back(user);
	}
	return users;
}

int
JobRunner::Capacity(double now) const {
	if (!configuration_problem_.empty()) {
		return 0;
	}
	switch (breaker_.state(now)) {
	case CircuitBreaker::State::kClosed:
		break;
	case CircuitBreaker::State::kOpen:
		return 0;
	case CircuitBreaker::State::kHalfOpen:
		// One operation to carry the probe, unless one is already waiting to send it.
		return busy_users_.empty() && !breaker_.probe_in_flight() ? 1 : 0;
	}
	return concurrency_limit_ - static_cast<int>(busy_users_.size());
}

bool
JobRunner::InTransaction(const char *activity, const std::function<void(pg::SpiConnection &)> &body) {
	bool present = false;
	pg::RunInTransaction(activity, [&](pg::SpiConnection &spi) {
		present = pg::PgGuardResult([]() { return OidIsValid(get_extension_oid("pg_fly", true)); });
		if (!present) {
			return;
		}
		// Nothing here needs to survive a crash: claims are released at start and every step is recorded
		// durably, so the worker need not wait for this commit's WAL flush before sending.
		spi.Query("SELECT pg_catalog.set_config('synchronous_commit', 'off', true)", {});
		body(spi);
	});
	return present;
}

void
JobRunner::Dispatch() {
	DispatchWork();
	PolicyStep();
	DriftStep();
	RetentionStep();
}

void
JobRunner::DispatchWork() {
	FoldStep(Now());
	const double now = Now();
	const int capacity = Capacity(now);
	// With every slot taken, a wake by a committing tier change has nothing to claim: the queue is looked at
	// again when an operation ends, or after a second (health, orphan and rollout requests wait that long).
	if (capacity <= 0 && claims_released_ && now < next_saturated_dispatch_) {
		dispatch_again_ = false;
		dispatch_skipped_ = true;
		return;
	}
	dispatch_skipped_ = false;
	// Read before the claim's snapshot (a commit bumps the counter once it is visible), paired with the wait's
	// re-check in the worker loop.
	commits_seen_ = pg_atomic_read_u64(&shared_->work_commits);
	pg_memory_barrier();
	next_saturated_dispatch_ = now + kSaturatedDispatchSeconds;
	dispatch_again_ = false;
	// Each step is a transaction of its own and skips rows others hold, so that one lock held by an application
	// or an operator delays only what it covers. Memory is changed only once a step has committed.
	bool present = true;
	if (!claims_released_) {
		bool released = false;
		std::map<std::string, int64_t> still_held = attempts_to_return_;
		present = InTransaction("pg_fly: releasing claims", [&](pg::SpiConnection &spi) {
			if (!still_held.empty()) {
				still_held = ReturnAttempts(spi, still_held);
			}
			released = ReleaseOrphanClaims(spi, BusyUsers());
		});
		claims_released_ = released;
		attempts_to_return_ = std::move(still_held);
	}
	if (present && !busy_users_.empty() && Now() - last_lease_renewal_ > kLeaseSeconds / 4.0) {
		const double renewed_at = Now();
		present =
			InTransaction("pg_fly: renewing leases", [&](pg::SpiConnection &spi) { RenewLeases(spi, BusyUsers()); });
		last_lease_renewal_ = renewed_at;
	}
	const bool health_requested = pg_atomic_exchange_u32(&shared_->health_pass_requested, 0) != 0;
	const bool health_due = configuration_problem_.empty() &&
	                        (health_requested || (settings::health_check_interval_ms > 0 && now >= next_health_pass_));
	const bool probe_due = WantsHealthProbe(now) && now >= next_probe_check_;
	std::vector<ClaimedItem> claimed;
	std::optional<HealthPage> health_page;
	// A pass goes on a page at a time; a new one starts only once the last one has loaded its last page.
	const bool health_drained = health_next_ >= health_queue_.size();
	const bool next_page_due = health_more_ && health_drained;
	const bool pass_starts = (health_due || probe_due) && !health_more_ && health_drained;
	QueueSummary summary;
	// The count of due items reads all of them: a status figure, counted at most once a second.
	const bool count_due = now >= next_queue_count_;
	// The claimed items' loads, done in the claim's transaction (one transaction between a wake-up and the first
	// request); empty when they were not.
	std::vector<LoadedStart> loaded;
	const auto claim = [&](bool with_loads) {
		claimed.clear();
		loaded.clear();
		health_page.reset();
		summary = QueueSummary{};
		return InTransaction("pg_fly: claiming work", [&](pg::SpiConnection &spi) {
			if (capacity > 0) {
				claimed = ClaimDueItems(spi, capacity, BusyUsers());
			}
			if (with_loads) {
				for (const auto &item : claimed) {
					loaded.push_back(LoadStart(spi, item));
				}
			}
			if (pass_starts || next_page_due) {
				health_page = LoadHealthTargets(spi, pass_starts ? HealthCursor{} : health_cursor_, kHealthPageSize);
			}
			summary = SummarizeQueue(spi, count_due);
		});
	};
	if (present) {
		try {
			try {
				present = claim(true);
			} catch (const std::exception &e) {
				// One item whose loads fail must not hold up every claim: claimed again without the loads, each
				// item then loads in a transaction of its own, and a failure there defers only that item.
				pg::PgGuard([&]() { elog(DEBUG1, "pg_fly worker: claiming with loads failed: %s", e.what()); });
				present = claim(false);
			}
		} catch (...) {
			if (health_requested) {
				pg_atomic_write_u32(&shared_->health_pass_requested, 1);
			}
			throw;
		}
	}
	if (!present) {
		next_queue_count_ = 0;
	} else if (summary.due) {
		next_queue_count_ = now + kQueueCountSeconds;
	}
	// A pass that did not count leaves the figure stale: the loop wakes to count once the second is over.
	queue_count_stale_ = present && !summary.due;
	SpinLockAcquire(&shared_->mutex);
	if (!present) {
		shared_->queue_ready = -1;
	} else if (summary.due) {
		shared_->queue_ready = *summary.due;
	}
	SpinLockRelease(&shared_->mutex);
	extension_present_ = present;
	if (!present) {
		// Nothing to do until pg_fly is created in this database: look again after the poll interval.
		claims_released_ = false;
		next_queue_due_.reset();
		next_health_pass_ = now + settings::poll_interval_ms / 1000.0;
		next_rollout_pass_ = next_health_pass_;
		return;
	}
	if (health_page) {
		health_queue_ = std::move(health_page->targets);
		health_next_ = 0;
		health_cursor_ = std::move(health_page->cursor);
		health_more_ = health_page->more;
	}
	if (!pass_starts && health_requested) {
		// A pass is still under way: the next one starts an interval after it, or when asked again.
		pg_atomic_write_u32(&shared_->health_pass_requested, 1);
	}
	if (health_due) {
		next_health_pass_ = now + settings::health_check_interval_ms / 1000.0;
	}
	if (probe_due) {
		// No app to check yet: look again after the poll interval rather than every second.
		next_probe_check_ = now + (health_next_ < health_queue_.size() ? kSaturatedDispatchSeconds
		                                                               : settings::poll_interval_ms / 1000.0);
	}
	dispatch_again_ = capacity > 0 && static_cast<int>(claimed.size()) == capacity;
	next_queue_due_.reset();
	if (summary.seconds_until_next_due) {
		// An item due now that was not claimed is held by another transaction, or its user's operation is still
		// going (which hands over when it ends): look again in a second.
		const double in = *summary.seconds_until_next_due;
		next_queue_due_ = now + (in > 0 ? in : kSaturatedDispatchSeconds);
	}
	std::vector<std::string> busy = BusyUsers();
	for (const auto &item : claimed) {
		busy.push_back(item.user_id);
	}
	if (loaded.size() == claimed.size()) {
		for (auto &item : loaded) {
			Begin(std::move(item));
		}
	} else {
		for (const auto &item : claimed) {
			Start(item);
		}
	}
	if (configuration_problem_.empty()) {
		PlanRollout(now, busy, capacity - static_cast<int>(claimed.size()));
	}
	StartRolloutUpdates();
	StartHealthChecks();
	StartOrphanPass();
}

void
JobRunner::DriftStep() {
	const double now = Now();
	if (!extension_present_) {
		if (drift_.InProgress()) {
			drift_.End(now);
		}
		return;
	}
	// The next batch waits as long as the last one took (or a failed one's retry delay); a pass, its interval.
	if (!drift_.Due(now)) {
		return;
	}
	if (!drift_.InProgress()) {
		drift_.Start();
		drift_started_ = now;
		pg::PgGuard([]() { elog(DEBUG1, "pg_fly worker: drift pass started"); });
	}
	// The table walk, then the users pg_fly keeps an app for that the table may have lost.
	static const char *const kTableBatch =
		"SELECT last_user, queued FROM fly._drift_table_batch($1, $2::pg_catalog.int4, fly._drift_max_repairs())";
	static const char *const kMissingBatch =
		"SELECT last_user, queued FROM fly._drift_missing_batch($1::pg_catalog.uuid, $2::pg_catalog.int4, "
		"fly._drift_max_repairs())";
	try {
		bool ready = false;
		std::string source;
		DriftPass::Batch batch;
		pg::Value last_user;
		int64_t queued = 0;
		const double started = Now();
		const bool present = InTransaction("pg_fly: drift repair", [&](pg::SpiConnection &spi) {
			// An older schema (before ALTER EXTENSION pg_fly UPDATE), or no subscription table attached. The
			// table's identity, read in the batch's transaction: another table attached mid-pass starts it over.
			auto rows = spi.Query("SELECT pg_catalog.to_regprocedure('fly._drift_missing_batch(uuid,integer,integer)') "
			                      "IS NOT NULL, (SELECT s.table_name::pg_catalog.oid::pg_catalog.text "
			                      "OPERATOR(pg_catalog.||) ' ' OPERATOR(pg_catalog.||) s.user_column "
			                      "OPERATOR(pg_catalog.||) ' ' OPERATOR(pg_catalog.||) s.tier_column "
			                      "FROM fly.tier_source s)",
			                      {});
			if (rows.at(0).at(0) != std::string("t") || !rows.at(0).at(1)) {
				return;
			}
			ready = true;
			source = *rows.at(0).at(1);
			batch = drift_.Next(source);
			auto result = spi.Query(batch.phase == DriftPass::Phase::kTable ? kTableBatch : kMissingBatch,
			                        {batch.after, std::to_string(batch.size)});
			last_user = result.at(0).at(0);
			queued = pg::ToInt(result.at(0).at(1));
		});
		if (!present || !ready) {
			drift_.End(Now()); // nothing to compare: looked at again an interval later
			return;
		}
		if (drift_.Advance(batch, source, last_user, queued, Now() - started, Now())) {
			const double seconds = Now() - drift_started_;
			pg::PgGuard([&]() { elog(DEBUG1, "pg_fly worker: drift pass ended after %.2f s", seconds); });
			if (drift_.queued() > 0) {
				Log("drift repair queued " + std::to_string(drift_.queued()) +
				    " user(s) whose subscription differs from pg_fly's records (see drift_repaired events)");
			}
		}
	} catch (const std::exception &e) {
		// What this pass queued stays queued. The same batch is tried again shortly (a deadlock or a timeout does
		// not last), so that on a large, busy table the pass still reaches its end; only a batch that keeps failing
		// ends the pass, and the next one starts from the beginning.
		if (const std::optional<double> retry = drift_.Fail(Now())) {
			Log("drift repair failed, retried in " + std::to_string(static_cast<int>(*retry)) + " s: " + e.what());
		} else {
			Log(std::string("drift repair failed, tried again in fly.drift_check_interval: ") + e.what());
		}
	}
}

void
JobRunner::SendAllowed() {
	if (pending_.empty()) {
		return;
	}
	std::sort(pending_.begin(), pending_.end(),
	          [](const PendingRequest &a, const PendingRequest &b) { return a.due < b.due; });
	const double now = Now();
	std::vector<PendingRequest> still_pending;
	// Reserved up front, so that keeping a request back cannot fail half-way through the list.
	still_pending.reserve(pending_.size());
	size_t next = 0;
	try {
		SendDue(now, still_pending, next);
	} catch (...) {
		// Requests not yet handed on stay pending (an exception here is out of memory, in practice): the next pass
		// sends them, instead of finding moved-from jobs.
		for (; next < pending_.size(); next++) {
			still_pending.push_back(std::move(pending_[next]));
		}
		pending_ = std::move(still_pending);
		throw;
	}
	pending_ = std::move(still_pending);
}

void
JobRunner::SendDue(double now, std::vector<PendingRequest> &still_pending, size_t &next) {
	// `next` moves past a request only once it has been handed on (kept back, or sent): on an exception the
	// caller keeps pending_[next...] as they are.
	while (next < pending_.size()) {
		PendingRequest &pending = pending_[next];
		// A user app's own health endpoint is not Fly: neither Fly's breaker nor Fly's limits apply to it.
		const bool fly_api = fly::IsFlyApi(pending.request.endpoint);
		if (pending.due > now || (fly_api && !breaker_.CanSend(now))) {
			still_pending.push_back(std::move(pending));
			next++;
			continue;
		}
		std::pair<std::string, std::string> key;
		if (fly_api) {
			key = RateLimitKey(pending.request, settings_.org_slug);
			const double wait = limiter_.Acquire(key, now);
			if (wait > 0) {
				pending.due = now + wait;
				pending.rate_limited = true;
				still_pending.push_back(std::move(pending));
				next++;
				continue;
			}
			breaker_.MarkSent(now);
		}
		const fly::RequestId id = client_->Submit(pending.request);
		next++;
		in_flight_.emplace(id, InFlight{std::move(pending.job), std::move(key), pending.request.endpoint});
	}
}

std::optional<std::pair<fly::RequestId, std::pair<std::string, std::string>>>
JobRunner::SendNow(const fly::Request &request) {
	const double now = Now();
	if (!fly::IsFlyApi(request.endpoint) || breaker_.state(now) != CircuitBreaker::State::kClosed) {
		return std::nullopt;
	}
	std::pair<std::string, std::string> key = RateLimitKey(request, settings_.org_slug);
	if (limiter_.Acquire(key, now) > 0) {
		return std::nullopt;
	}
	breaker_.MarkSent(now);
	const fly::RequestId id = client_->Submit(request);
	// Connects and writes now, rather than at the loop's next Drive: the caller's work overlaps the round trip.
	client_->Drive();
	return std::make_pair(id, std::move(key));
}

// Feeds the answer to the breaker and the limiter: a wait that timed out (408) or a machine that failed to start
// is an ordinary answer; a 429 holds back that action's scope for Retry-After (or a second), at most
// fly.retry_max_delay.
void
JobRunner::Observe(const InFlight &in_flight, const fly::Outcome &outcome) {
	if (!fly::IsFlyApi(in_flight.endpoint)) {
		return; // a user app's answer says nothing about Fly
	}
	const double now = Now();
	if (outcome.http_status == 429) {
		limiter_.Block(in_flight.rate_key,
		               now + RetryAfterHoldSeconds(outcome.retry_after_seconds, settings::retry_max_delay_ms / 1000.0));
		breaker_.OnAnswer();
		return;
	}
	if (fly::FailsFly(in_flight.endpoint, outcome)) {
		breaker_.OnTransientFailure(now);
	} else {
		breaker_.OnAnswer();
	}
}

void
JobRunner::Drive() {
	client_->Drive();
	for (auto &answer : client_->TakeAnswers()) {
		auto found = in_flight_.find(answer.id);
		if (found == in_flight_.end()) {
			auto abandoned = abandoned_.find(answer.id);
			if (abandoned != abandoned_.end()) {
				Observe(InFlight{OrphanJob{}, abandoned->second.rate_key, abandoned->second.endpoint}, answer.outcome);
				abandoned_.erase(abandoned);
			}
			continue;
		}
		InFlight in_flight = std::move(found->second);
		in_flight_.erase(found);
		Observe(in_flight, answer.outcome);
		const fly::Outcome &outcome = answer.outcome;
		std::visit(Overloaded{
					   [&](ReconcileJob &job) { OnReconcileAnswer(std::move(job), outcome); },
					   [&](HealthJob &job) { OnHealthAnswer(std::move(job), outcome); },
					   [&](OrphanJob &job) { OnOrphanAnswer(job, outcome); },
					   [&](RolloutJob &job) { OnRolloutAnswer(std::move(job), outcome); },
				   },
		           in_flight.job);
	}
	if (!health_batch_.empty()) {
		// The freed slots take the next checks, and they are on the wire before the batch's commit (which may
		// wait for its WAL flush) holds the loop.
		StartHealthChecks();
		SendAllowed();
		client_->Drive();
		FlushHealthBatch();
	}
	SendAllowed();
	const double now = Now();
	if (now - last_prune_ > kPruneEverySeconds) {
		limiter_.Prune(now);
		last_prune_ = now;
	}
}

void
JobRunner::PublishStatus() const {
	const double now = Now();
	const auto to_timestamp = [&](double at) {
		return GetCurrentTimestamp() + static_cast<TimestampTz>((at - now) * USECS_PER_SEC);
	};
	SpinLockAcquire(&shared_->mutex);
	shared_->in_flight = static_cast<int>(in_flight_.size());
	shared_->rate_limited = static_cast<int>(pending_.size());
	shared_->breaker_state = static_cast<int>(breaker_.state(now));
	shared_->breaker_reopen_at =
		breaker_.state(now) == CircuitBreaker::State::kOpen ? to_timestamp(breaker_.reopen_at()) : 0;
	if (!last_error_.empty()) {
		strlcpy(shared_->last_error, last_error_.c_str(), sizeof(shared_->last_error));
		shared_->last_error_at = to_timestamp(last_error_at_);
	}
	SpinLockRelease(&shared_->mutex);
}

int
JobRunner::EventFd() const {
	return client_->EventFd();
}

bool
JobRunner::WaitsForWork() const {
	if (Capacity(Now()) <= 0) {
		return false;
	}
	return std::none_of(pending_.begin(), pending_.end(),
	                    [](const PendingRequest &pending) { return pending.rate_limited; });
}

long
JobRunner::SleepMs() const {
	if (dispatch_again_ || fold_more_) {
		return 0;
	}
	const long client_timeout = client_->NextTimeoutMs();
	if (client_timeout == 0) {
		// Answers to hand over, or curl asks to be driven now (it does right after a request is added): its
		// timer is set afresh by every call, so it cannot go stale.
		return 0;
	}
	const double now = Now();
	WakeSchedule wake(now, settings::poll_interval_ms / 1000.0);
	if (client_timeout > 0) {
		wake.At(now + client_timeout / 1000.0);
	}
	// A pending request goes once its time has come and the breaker lets it: an open breaker at the end of its
	// pause; while the probe is out, its answer (which wakes the loop) decides.
	if (const std::optional<double> sendable = breaker_.SendableAt(now)) {
		for (const auto &pending : pending_) {
			wake.At(pending.due, *sendable);
		}
	}
	const bool saturated = Capacity(now) <= 0;
	if (configuration_problem_.empty()) {
		// Passes are planned by Dispatch, which looks at the queue only every second while no work can be claimed.
		const double dispatch_from = saturated ? next_saturated_dispatch_ : now;
		if (settings::health_check_interval_ms > 0) {
			wake.At(next_health_pass_, dispatch_from);
		}
		wake.At(next_rollout_pass_, dispatch_from);
		if (!saturated) {
			wake.At(next_queue_due_);
		}
	}
	if (breaker_.state(now) == CircuitBreaker::State::kOpen && configuration_problem_.empty()) {
		wake.At(breaker_.reopen_at());
	}
	if (WantsHealthProbe(now)) {
		wake.At(next_probe_check_);
	}
	// Dispatch runs the policy step, and the drift pass's next batch when it is due, saturated or not: a batch is
	// followed by a pause as long as it took, so a pass of slow batches leaves the worker at least half of its time.
	if (extension_present_) {
		if (policy_more_) {
			wake.Now();
		} else {
			wake.At(next_policy_sweep_);
		}
	}
	if (drift_.InProgress() || extension_present_) {
		wake.At(drift_.NextDue());
	}
	if (extension_present_ && settings::event_retention_s > 0) {
		wake.At(next_retention_batch_);
	}
	if (FoldDue()) {
		if (pg_atomic_read_u64(&shared_->urgent_commits) != urgent_folded_ && WaitsForWork()) {
			wake.At(next_urgent_fold_);
		}
		wake.At(next_fold_); // a change logged without a wake (a relabel, or while the worker was busy)
	}
	if (queue_count_stale_) {
		// Not before Dispatch looks at the queue again (once a second while no work can be claimed).
		wake.At(next_queue_count_, saturated ? next_saturated_dispatch_ : now);
	}
	if (dispatch_skipped_) {
		// Nothing else may wake the loop (a configuration problem runs no operation whose end would), so the
		// queue (and the status that reports it) would wait for the next policy sweep.
		wake.At(next_saturated_dispatch_);
	}
	if (!claims_released_ && extension_present_) {
		// A claim a failed step left behind (its item was held by another transaction, which may just roll back,
		// waking no one): released by the next Dispatch, at most once a second.
		wake.At(next_saturated_dispatch_);
	}
	if (saturated && configuration_problem_.empty() &&
	    (pg_atomic_read_u32(&shared_->health_pass_requested) != 0 ||
	     pg_atomic_read_u32(&shared_->orphan_pass_requested) != 0 ||
	     pg_atomic_read_u32(&shared_->rollout_pass_requested) != 0)) {
		wake.At(next_saturated_dispatch_);
	}
	return wake.SleepMs();
}

} // namespace pgfly

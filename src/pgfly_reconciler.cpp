#include "pgfly/pgfly_reconciler.hpp"

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

#include "pgfly/core/app_naming.hpp"
#include "pgfly/core/health.hpp"
#include "pgfly/core/retry_delay.hpp"
#include "pgfly/core/token_source.hpp"
#include "pgfly/core/wake_schedule.hpp"
#include "pgfly/core/worker_settings.hpp"
#include "pgfly/pg/transaction.hpp"
#include "pgfly/pgfly_guc.hpp"
#include "pgfly/pgfly_queue.hpp"

namespace pgfly {

namespace {

constexpr double kPruneEverySeconds = 60;
constexpr double kSaturatedDispatchSeconds = 1.0;
// External descriptors left to PostgreSQL when the reservation takes all it can.
constexpr int kFdHeadroom = 4;

} // namespace

Reconciler::Reconciler(SharedState *shared) : shared_(shared), random_(std::random_device {}()) {
	Configure();
}

double
Reconciler::Now() {
	return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void
Reconciler::Log(const std::string &message) const {
	pg::PgGuard([&]() { elog(LOG, "pg_fly worker: %s", message.c_str()); });
}

void
Reconciler::Configure() {
	std::string problem;
	ResolvedToken token = ResolveToken(api_token, api_token_file, getenv("FLY_API_TOKEN"));
	if (!token.problem.empty()) {
		problem = token.problem;
	}
	settings_ = reconcile::Settings{};
	settings_.org_slug = org_slug;
	settings_.app_name_prefix = app_name_prefix;
	settings_.image = image;
	settings_.create_settle_seconds = request_timeout_ms / 1000.0;
	ParsedMap env = ParseMachineEnv(machine_env);
	if (!env.problem.empty()) {
		problem = env.problem;
	}
	settings_.env = env.values;
	if (settings_.image.empty()) {
		problem = "fly.image is not set: there is no image to run";
	}
	if (app_secrets_file[0] != '\0') {
		const auto text = ReadTextFile(app_secrets_file);
		ParsedMap secrets = ParseSecretsFile(text.value_or(""));
		if (!text) {
			problem = std::string("fly.app_secrets_file \"") + app_secrets_file + "\" cannot be read";
		} else if (!secrets.problem.empty()) {
			problem = "fly.app_secrets_file: " + secrets.problem;
		}
		settings_.secrets = secrets.values;
	}
	if (problem != configuration_problem_ && !problem.empty()) {
		Log(problem + "; provisioning waits until the configuration is fixed");
	}
	configuration_problem_ = problem;

	RateLimitSettings limits;
	limits.enabled = rate_limits;
	limits.action = RateLimit{rate_limit_per_second, static_cast<double>(rate_limit_burst)};
	limits.get_machine = RateLimit{rate_limit_get_machine_per_second, static_cast<double>(rate_limit_get_machine_burst)};
	limits.delete_app = RateLimit{rate_limit_app_deletes_per_minute / 60.0,
	                              static_cast<double>(rate_limit_app_deletes_per_minute)};
	limiter_.Configure(limits);
	breaker_.Configure(CircuitBreakerSettings{breaker_failure_threshold, breaker_open_time_ms / 1000.0,
	                                          breaker_max_open_time_ms / 1000.0});

	client_config_.base_url = api_url;
	client_config_.proxy = http_proxy;
	client_config_.token = token.token;
	client_config_.secret_values.clear();
	for (const auto &secret : settings_.secrets) {
		client_config_.secret_values.push_back(secret.second);
	}
	client_config_.connect_timeout_ms = connect_timeout_ms;
	client_config_.request_timeout_ms = request_timeout_ms;
	// Reconciles (with rollouts) and health checks each keep up to fly.max_concurrency requests in flight: as
	// many connections as PostgreSQL grants descriptors for.
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
}

// libcurl's sockets and epoll descriptor are opened outside fd.c: PostgreSQL learns of them here, so that its
// own files do not run out. What is not granted lowers the worker's concurrency rather than failing.
ConnectionBudget
Reconciler::ReserveClientFds() {
	const ConnectionBudget wanted = WantedConnections(max_concurrency);
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
	const ConnectionBudget budget = FitConnections(max_concurrency, reserved_fds_);
	if (budget.concurrency < max_concurrency && budget.concurrency != concurrency_limit_) {
		Log("only " + std::to_string(reserved_fds_) + " file descriptors are available for Fly connections (" +
			std::to_string(wanted.fds) + " wanted): " + std::to_string(budget.concurrency) +
			" users are reconciled at once instead of fly.max_concurrency = " + std::to_string(max_concurrency));
	}
	if (budget.connections != client_connections_) {
		pg::PgGuard([&]() {
			elog(DEBUG1, "pg_fly worker: %d file descriptors reserved, at most %d connections", reserved_fds_,
				 budget.connections);
		});
	}
	concurrency_limit_ = budget.concurrency;
	client_connections_ = budget.connections;
	return budget;
}

Reconciler::~Reconciler() {
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
Reconciler::RunningUsers() const {
	std::vector<std::string> users;
	users.reserve(running_.size());
	for (const auto &entry : running_) {
		users.push_back(entry.first);
	}
	return users;
}

double
Reconciler::RetryDelay(int attempts, std::optional<double> retry_after) {
	std::uniform_real_distribution<double> unit(0.0, 1.0);
	return RetryDelaySeconds(attempts, retry_base_delay_ms / 1000.0, retry_max_delay_ms / 1000.0, retry_after,
	                         unit(random_));
}

int
Reconciler::Capacity(double now) const {
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
		return running_.empty() && !breaker_.probe_in_flight() ? 1 : 0;
	}
	return concurrency_limit_ - static_cast<int>(running_.size());
}

bool
Reconciler::InTransaction(const char *activity, const std::function<void(pg::SpiConnection &)> &body) {
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
Reconciler::Dispatch() {
	const double now = Now();
	const int capacity = Capacity(now);
	// With every slot taken, a wake by a committing tier change has nothing to claim: the queue is looked at
	// again when an operation ends, or after a second (health, orphan and rollout requests wait that long).
	if (capacity <= 0 && claims_released_ && now < next_saturated_dispatch_) {
		dispatch_again_ = false;
		return;
	}
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
			released = ReleaseOrphanClaims(spi, RunningUsers());
		});
		claims_released_ = released;
		attempts_to_return_ = std::move(still_held);
	}
	if (present && !running_.empty() && Now() - last_lease_renewal_ > kLeaseSeconds / 4.0) {
		const double renewed_at = Now();
		present = InTransaction("pg_fly: renewing leases",
		                        [&](pg::SpiConnection &spi) { RenewLeases(spi, RunningUsers()); });
		last_lease_renewal_ = renewed_at;
	}
	const bool health_requested = pg_atomic_exchange_u32(&shared_->health_pass_requested, 0) != 0;
	const bool health_due = configuration_problem_.empty() &&
	                        (health_requested || (health_check_interval_ms > 0 && now >= next_health_pass_));
	const bool probe_due = WantsHealthProbe(now) && now >= next_probe_check_;
	std::vector<ClaimedItem> claimed;
	std::optional<std::vector<HealthTarget>> health_targets;
	QueueSummary summary;
	summary.due = -1;
	if (present) {
		try {
			present = InTransaction("pg_fly: claiming work", [&](pg::SpiConnection &spi) {
				if (capacity > 0) {
					claimed = ClaimDueItems(spi, capacity, RunningUsers());
				}
				if ((health_due || probe_due) && health_next_ >= health_queue_.size()) {
					health_targets = LoadHealthTargets(spi);
				}
				summary = SummarizeQueue(spi);
			});
		} catch (...) {
			if (health_requested) {
				pg_atomic_write_u32(&shared_->health_pass_requested, 1);
			}
			throw;
		}
	}
	SpinLockAcquire(&shared_->mutex);
	shared_->queue_ready = present ? summary.due : -1;
	SpinLockRelease(&shared_->mutex);
	extension_present_ = present;
	if (!present) {
		// Nothing to do until pg_fly is created in this database: look again after the poll interval.
		claims_released_ = false;
		next_queue_due_.reset();
		next_health_pass_ = now + poll_interval_ms / 1000.0;
		next_rollout_pass_ = next_health_pass_;
		return;
	}
	if (health_targets) {
		health_queue_ = std::move(*health_targets);
		health_next_ = 0;
	} else if (health_requested) {
		// A pass is still under way: the next one starts an interval after it, or when asked again.
		pg_atomic_write_u32(&shared_->health_pass_requested, 1);
	}
	if (health_due) {
		next_health_pass_ = now + health_check_interval_ms / 1000.0;
	}
	if (probe_due) {
		// No app to check yet: look again after the poll interval rather than every second.
		next_probe_check_ =
			now + (health_next_ < health_queue_.size() ? kSaturatedDispatchSeconds : poll_interval_ms / 1000.0);
	}
	dispatch_again_ = capacity > 0 && static_cast<int>(claimed.size()) == capacity;
	next_queue_due_.reset();
	if (summary.seconds_until_next_due) {
		// An item due now that was not claimed is held by another transaction, or its user's operation is still
		// going (which hands over when it ends): look again in a second.
		const double in = *summary.seconds_until_next_due;
		next_queue_due_ = now + (in > 0 ? in : kSaturatedDispatchSeconds);
	}
	std::vector<std::string> busy = RunningUsers();
	for (const auto &item : claimed) {
		busy.push_back(item.user_id);
	}
	for (const auto &item : claimed) {
		Start(item);
	}
	if (configuration_problem_.empty()) {
		PlanRollout(now, busy, capacity - static_cast<int>(claimed.size()));
	}
	StartRolloutUpdates();
	StartHealthChecks();
	if (configuration_problem_.empty() && pg_atomic_exchange_u32(&shared_->orphan_pass_requested, 0) != 0) {
		held_.push_back(Held{Now(), nullptr, nullptr, fly::ListAppsRequest(settings_.org_slug),
		                     std::make_unique<OrphanWork>()});
	}
}

void
Reconciler::OnOrphanAnswer(const OrphanWork &work, const fly::Outcome &outcome) {
	try {
		if (!work.app_name.empty()) {
			const bool gone =
			    outcome.kind == fly::OutcomeKind::kSuccess || outcome.kind == fly::OutcomeKind::kNotFound;
			pg::RunInTransaction("pg_fly: recording an orphan deletion", [&](pg::SpiConnection &spi) {
				RecordOrphanDeleted(spi, work.app_name, gone ? "" : outcome.message);
			});
			return;
		}
		if (outcome.kind != fly::OutcomeKind::kSuccess) {
			Log("listing the organization's apps failed: " + outcome.message);
			return;
		}
		std::vector<std::pair<std::string, std::string>> ours;
		const Json apps = outcome.body.Get("apps");
		for (size_t i = 0; i < apps.Size(); i++) {
			const std::string name = apps.At(i).GetString("name").value_or("");
			if (name.empty() || settings_.app_name_prefix.empty() ||
				name.compare(0, settings_.app_name_prefix.size(), settings_.app_name_prefix) != 0) {
				continue;
			}
			const std::string id = apps.At(i).GetString("id").value_or("");
			std::optional<std::string> problem = AppNameProblem(name);
			if (!problem && !id.empty()) {
				problem = AppIdProblem(id);
			}
			if (problem) {
				// Fly's text goes into the log: no control character may start a line of its own.
				std::replace_if(
					problem->begin(), problem->end(),
					[](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; }, '?');
				Log("an app in the organization's list is not recorded as an orphan: " + *problem);
				continue;
			}
			ours.emplace_back(name, id);
		}
		std::vector<std::string> to_delete;
		pg::RunInTransaction("pg_fly: recording orphan apps", [&](pg::SpiConnection &spi) {
			to_delete = RecordOrphans(spi, settings_.org_slug, ours);
		});
		for (const auto &name : to_delete) {
			held_.push_back(Held{Now(), nullptr, nullptr, fly::DeleteAppRequest(name),
			                     std::make_unique<OrphanWork>(OrphanWork{name})});
		}
	} catch (const std::exception &e) {
		Log(std::string("recording orphan apps failed: ") + e.what());
	}
}

// Health checks share the client, the rate limiter and the breaker with reconciles (the app's own endpoint
// stays out of Fly's limiter and breaker), and take at most fly.max_concurrency requests at once of their own;
// apps whose user is being reconciled are skipped.
void
Reconciler::StartHealthChecks() {
	int limit = concurrency_limit_;
	switch (breaker_.state(Now())) {
	case CircuitBreaker::State::kClosed:
		break;
	case CircuitBreaker::State::kOpen:
		return;
	case CircuitBreaker::State::kHalfOpen:
		if (!WantsHealthProbe(Now())) {
			return;
		}
		limit = 1;
		break;
	}
	while (health_running_ < limit && health_next_ < health_queue_.size()) {
		const HealthTarget &target = health_queue_[health_next_++];
		if (running_.count(target.user_id)) {
			continue;
		}
		auto check = std::make_unique<HealthCheck>(HealthCheck{target});
		fly::Request request = fly::GetMachineRequest(target.app_name, target.machine_id);
		health_running_++;
		held_.push_back(Held{Now(), nullptr, std::move(check), std::move(request)});
	}
	if (health_next_ >= health_queue_.size()) {
		health_queue_.clear();
		health_next_ = 0;
	}
}

// A half-open breaker lets one request through to see whether Fly is back. With no reconcile to carry it, a
// health check (a cheap GET machine) does: otherwise the breaker would stay half-open and checks would stop.
bool
Reconciler::WantsHealthProbe(double now) const {
	return configuration_problem_.empty() && health_check_interval_ms > 0 &&
		   breaker_.state(now) == CircuitBreaker::State::kHalfOpen && !breaker_.probe_in_flight() && running_.empty() &&
		   health_running_ == 0 && held_.empty();
}

void
Reconciler::OnHealthAnswer(std::unique_ptr<HealthCheck> check, const fly::Outcome &outcome) {
	using Phase = HealthCheck::Phase;
	const HealthTarget &target = check->target;
	std::optional<fly::Request> next;
	try {
		if (check->phase == Phase::kStarting) {
			// The answer to our start request; the next pass sees whether the machine came up.
			const bool started = outcome.kind == fly::OutcomeKind::kSuccess;
			Json details = Json::Object();
			details.Set("machine_id", Json::String(target.machine_id));
			details.Set("result", Json::String(started ? "started" : outcome.message));
			pg::RunInTransaction("pg_fly: recording a machine restart", [&](pg::SpiConnection &spi) {
				RecordHealth(spi, target, nullptr, started ? "machine_restarted" : "machine_restart_failed",
				             details.Dump());
			});
		} else {
			HealthVerdict verdict = check->phase == Phase::kEndpoint ? EvaluateAppHealthEndpoint(outcome, target.user_id)
			                                                         : EvaluateMachineHealth(outcome);
			std::optional<std::string> endpoint_url;
			if (check->phase == Phase::kMachine && verdict.health == Health::kHealthy && app_health_url[0] != '\0') {
				endpoint_url = AppHealthUrl(app_health_url, target.app_name);
				if (!endpoint_url) {
					verdict.health = Health::kUnhealthy;
					verdict.detail = "the app's own endpoint was not asked: its name is not one Fly accepts";
				}
			}
			if (endpoint_url) {
				// The machine looks fine; the app's own endpoint has the last word.
				check->phase = Phase::kEndpoint;
				check->machine_state = verdict.state;
				next = fly::AppHealthRequest(*endpoint_url);
			} else {
				Json details = Json::Object();
				details.Set("machine_id", Json::String(target.machine_id));
				details.Set("state", Json::String(verdict.state));
				details.Set("detail", Json::String(verdict.detail));
				std::string event;
				if (verdict.action == HealthAction::kStartMachine && restart_stopped_machines) {
					event = "machine_restart_requested";
					next = fly::StartMachineRequest(target.app_name, target.machine_id);
				} else if (verdict.action == HealthAction::kReprovision && reprovision_vanished_apps) {
					event = "app_vanished";
				}
				const char *health = verdict.health == Health::kUnknown ? nullptr : HealthName(verdict.health);
				pg::RunInTransaction("pg_fly: recording a health check", [&](pg::SpiConnection &spi) {
					const bool active = RecordHealth(spi, target, health, event, details.Dump());
					if (check->canary_of_rollout != 0) {
						RecordCanaryHealth(spi, check->canary_of_rollout, target.app_id,
						                   verdict.health == Health::kHealthy);
					}
					if (active && event == "app_vanished") {
						// The reconcile finds or recreates the app and its machine from what the row records. A
						// queued item (a downgrade, say) is newer than this row's tier and is left as it is.
						EnqueueUnlessQueued(spi, target.user_id, DesiredState::kPresent, target.tier, "health_check");
					}
					if (!active) {
						next.reset();
					}
				});
				if (next) {
					check->phase = Phase::kStarting;
				}
			}
		}
	} catch (const std::exception &e) {
		Log("recording a health check of " + target.app_name + " failed: " + e.what());
		next.reset();
	}
	if (next) {
		held_.push_back(Held{Now(), nullptr, std::move(check), std::move(*next)});
		return;
	}
	if (check->canary_of_rollout != 0) {
		canaries_checking_.erase(target.app_id);
		next_rollout_pass_ = 0;
	}
	health_running_--;
}

void
Reconciler::Defer(const std::string &user_id, int64_t generation, int attempts, const std::string &error,
				  bool item_was_locked) {
	running_.erase(user_id);
	dispatch_again_ = true;
	Log("reconciling user " + user_id + " failed: " + error);
	const double delay = RetryDelay(attempts, std::nullopt);
	bool deferred = false;
	try {
		InTransaction("pg_fly: deferring work", [&](pg::SpiConnection &spi) {
			deferred = DeferItem(spi, user_id, generation, delay, error, item_was_locked);
		});
	} catch (const std::exception &e) {
		Log(std::string("could not defer the item: ") + e.what());
	}
	if (!deferred) {
		// Its claim is released by a later pass (within a second: see SleepMs), rather than holding the item for
		// the rest of the lease.
		claims_released_ = false;
		if (item_was_locked) {
			attempts_to_return_[user_id] = generation;
		}
	}
}

void
Reconciler::Start(const ClaimedItem &item) {
	StepContext context;
	context.user_id = item.user_id;
	context.generation = item.generation;
	context.attempts = item.attempts;
	context.alerted = item.alerted;
	context.org_slug = settings_.org_slug;
	running_[item.user_id] = true;
	try {
		std::unique_ptr<RunningOperation> running;
		reconcile::Target target;
		target.user_id = item.user_id;
		target.present = item.present;
		target.tier = item.tier;
		target.generation = item.generation;
		target.operation_id = std::to_string(item.generation) + "-" + std::to_string(item.attempts);
		std::optional<reconcile::AppRecord> app;
		pg::RunInTransaction("pg_fly: loading a reconcile", [&](pg::SpiConnection &spi) {
			if (item.present && item.tier) {
				auto policy = LoadTierPolicy(spi, *item.tier);
				if (policy && policy->dedicated) {
					target.guest = policy->guest;
					target.region = policy->region;
				} else {
					target.present = false; // the tier no longer grants an app
				}
			} else if (item.present) {
				target.present = false;
			}
			app = LoadLiveApp(spi, item.user_id);
			if (app) {
				context.app_id = app->id;
				if (!target.present && target.region.empty()) {
					target.region = app->region;
				}
			} else {
				target.first_name_attempt = FirstFreeNameAttempt(spi, item.user_id, settings_.app_name_prefix);
				target.look_for_leftover = target.first_name_attempt == 0;
			}
		});
		running = std::make_unique<RunningOperation>(
		    RunningOperation{reconcile::Operation(target, app, settings_), context});
		running->operation.SetNow(Now());
		reconcile::Step step = running->operation.Start();
		Record(std::move(running), std::move(step));
	} catch (const std::exception &e) {
		Defer(item.user_id, item.generation, item.attempts, e.what());
	}
}

void
Reconciler::ApplyFailurePolicy(RunningOperation &running, reconcile::Step &step) {
	using reconcile::Completion;
	if (step.completion != Completion::kRetry && step.completion != Completion::kFailed && !step.failed_attempt) {
		return;
	}
	StepContext &context = running.context;
	last_error_ = step.error;
	last_error_at_ = Now();
	if ((step.completion == Completion::kRetry || step.failed_attempt) && context.attempts >= max_attempts) {
		step.failed_attempt = false;
		step.request.reset();
		step.completion = Completion::kFailed;
		step.events.push_back(reconcile::Event{
		    running.operation.target().present ? "provision_failed" : "deprovision_failed",
		    "{\"reason\": \"gave up after fly.max_attempts attempts\", \"attempts\": " +
		        std::to_string(context.attempts) + "}"});
	}
	context.raise_alert = !context.alerted && (context.attempts >= alert_after_attempts ||
	                                          step.completion == Completion::kFailed);
	context.retry_delay_seconds = std::max(RetryDelay(context.attempts, step.retry_after_seconds), step.settle_seconds);
}

void
Reconciler::Record(std::unique_ptr<RunningOperation> running, reconcile::Step step) {
	const std::string user_id = running->context.user_id;
	const int64_t generation = running->context.generation;
	const int attempts = running->context.attempts;
	// A failure Fly answered spends the attempt, even when recording it meets a lock.
	const bool failure = step.failed_attempt || step.completion == reconcile::Completion::kRetry ||
	                     step.completion == reconcile::Completion::kFailed;
	try {
		ApplyFailurePolicy(*running, step);
		bool go_on = false;
		pg::RunInTransaction("pg_fly: recording a step",
		                     [&](pg::SpiConnection &spi) { go_on = RecordStep(spi, running->context, step); });
		if (go_on && step.request) {
			double due = Now() + step.delay_seconds;
			if (step.failed_attempt) {
				running->context.attempts++; // the retry is the next attempt
				due += running->context.retry_delay_seconds;
			}
			held_.push_back(Held{due, std::move(running), nullptr, *step.request});
		} else {
			running_.erase(user_id);
			dispatch_again_ = true;
		}
	} catch (const pg::PgError &e) {
		// Another transaction held the item (an application's uncommitted tier change, say): not a failure of
		// this attempt, which is given back, so that repeated rollbacks cannot exhaust fly.max_attempts -- unless
		// the step being recorded was a failure Fly answered, which spent it.
		Defer(user_id, generation, attempts, e.what(), e.sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE && !failure);
	} catch (const std::exception &e) {
		Defer(user_id, generation, attempts, e.what());
	}
}

void
Reconciler::SendAllowed() {
	if (held_.empty()) {
		return;
	}
	std::sort(held_.begin(), held_.end(), [](const Held &a, const Held &b) { return a.due < b.due; });
	const double now = Now();
	std::vector<Held> still_held;
	for (auto &held : held_) {
		// A user app's own health endpoint is not Fly: neither Fly's breaker nor Fly's limits apply to it.
		const bool fly_api = fly::IsFlyApi(held.request.endpoint);
		if (held.due > now || (fly_api && !breaker_.CanSend(now))) {
			still_held.push_back(std::move(held));
			continue;
		}
		std::pair<std::string, std::string> key;
		if (fly_api) {
			key = RateLimitKey(held.request, settings_.org_slug);
			const double wait = limiter_.Acquire(key, now);
			if (wait > 0) {
				held.due = now + wait;
				still_held.push_back(std::move(held));
				continue;
			}
			breaker_.MarkSent(now);
		}
		const fly::RequestId id = client_->Submit(held.request);
		in_flight_.emplace(id, InFlight{std::move(held.running), std::move(held.health), std::move(held.orphan),
		                                std::move(held.rollout), std::move(key), held.request.endpoint});
	}
	held_ = std::move(still_held);
}

// Feeds the answer to the breaker and the limiter: a wait that timed out (408) or a machine that failed to start
// is an ordinary answer; a 429 holds back that action's scope for Retry-After (or a second), at most
// fly.retry_max_delay.
void
Reconciler::Observe(const InFlight &in_flight, const fly::Outcome &outcome) {
	if (!fly::IsFlyApi(in_flight.endpoint)) {
		return; // a user app's answer says nothing about Fly
	}
	const double now = Now();
	if (outcome.http_status == 429) {
		limiter_.Block(in_flight.rate_key,
					   now + RetryAfterHoldSeconds(outcome.retry_after_seconds, retry_max_delay_ms / 1000.0));
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
Reconciler::Drive() {
	client_->Drive();
	for (auto &answer : client_->TakeAnswers()) {
		auto found = in_flight_.find(answer.id);
		if (found == in_flight_.end()) {
			continue;
		}
		InFlight in_flight = std::move(found->second);
		in_flight_.erase(found);
		Observe(in_flight, answer.outcome);
		if (in_flight.health) {
			OnHealthAnswer(std::move(in_flight.health), answer.outcome);
			continue;
		}
		if (in_flight.orphan) {
			OnOrphanAnswer(*in_flight.orphan, answer.outcome);
			continue;
		}
		if (in_flight.rollout) {
			OnRolloutAnswer(std::move(in_flight.rollout), answer.outcome);
			continue;
		}
		const std::string user_id = in_flight.running->context.user_id;
		const int64_t generation = in_flight.running->context.generation;
		const int attempts = in_flight.running->context.attempts;
		reconcile::Step step;
		try {
			in_flight.running->operation.SetNow(Now());
			step = in_flight.running->operation.OnOutcome(answer.outcome);
		} catch (const std::exception &e) {
			Defer(user_id, generation, attempts, e.what());
			continue;
		}
		Record(std::move(in_flight.running), std::move(step));
	}
	SendAllowed();
	const double now = Now();
	if (now - last_prune_ > kPruneEverySeconds) {
		limiter_.Prune(now);
		last_prune_ = now;
	}
}

void
Reconciler::PublishStatus() const {
	const double now = Now();
	const auto to_timestamp = [&](double at) {
		return GetCurrentTimestamp() + static_cast<TimestampTz>((at - now) * USECS_PER_SEC);
	};
	SpinLockAcquire(&shared_->mutex);
	shared_->in_flight = static_cast<int>(in_flight_.size());
	shared_->rate_limited = static_cast<int>(held_.size());
	shared_->breaker_state = static_cast<int>(breaker_.state(now));
	shared_->breaker_reopen_at = breaker_.state(now) == CircuitBreaker::State::kOpen ? to_timestamp(breaker_.reopen_at()) : 0;
	if (!last_error_.empty()) {
		strlcpy(shared_->last_error, last_error_.c_str(), sizeof(shared_->last_error));
		shared_->last_error_at = to_timestamp(last_error_at_);
	}
	SpinLockRelease(&shared_->mutex);
}

int
Reconciler::EventFd() const {
	return client_->EventFd();
}

long
Reconciler::SleepMs() const {
	if (dispatch_again_) {
		return 0;
	}
	const long client_timeout = client_->NextTimeoutMs();
	if (client_timeout == 0) {
		// Answers to hand over, or curl asks to be driven now (it does right after a request is added): its
		// timer is set afresh by every call, so it cannot go stale.
		return 0;
	}
	const double now = Now();
	WakeSchedule wake(now, poll_interval_ms / 1000.0);
	if (client_timeout > 0) {
		wake.At(now + client_timeout / 1000.0);
	}
	// A held request goes once its time has come and the breaker lets it: an open breaker at the end of its pause;
	// while the probe is out, its answer (which wakes the loop) decides.
	if (const std::optional<double> sendable = breaker_.SendableAt(now)) {
		for (const auto &held : held_) {
			wake.At(held.due, *sendable);
		}
	}
	const bool saturated = Capacity(now) <= 0;
	if (configuration_problem_.empty()) {
		// Passes are planned by Dispatch, which looks at the queue only every second while no work can be claimed.
		const double dispatch_from = saturated ? next_saturated_dispatch_ : now;
		if (health_check_interval_ms > 0) {
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

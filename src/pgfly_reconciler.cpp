#include "pgfly/pgfly_reconciler.hpp"

extern "C" {
#include "commands/extension.h"
#include "utils/elog.h"
}

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iterator>

#include "pgfly/core/token_source.hpp"
#include "pgfly/core/worker_settings.hpp"
#include "pgfly/pg/transaction.hpp"
#include "pgfly/pgfly_guc.hpp"

namespace pgfly {

namespace {

std::string
ReadFile(const char *path, bool &ok) {
	std::ifstream file(path, std::ios::binary);
	ok = file.is_open();
	return std::string((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
}

} // namespace

Reconciler::Reconciler(SharedState *shared) : shared_(shared), random_(std::random_device {}()) {
	Configure();
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
		bool readable = false;
		std::string text = ReadFile(app_secrets_file, readable);
		ParsedMap secrets = ParseSecretsFile(text);
		if (!readable) {
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

	client_config_.base_url = api_url;
	client_config_.token = token.token;
	client_config_.connect_timeout_ms = connect_timeout_ms;
	client_config_.request_timeout_ms = request_timeout_ms;
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

void
Reconciler::ReleaseOrphanedClaims() {
	pg::RunInTransaction("pg_fly: releasing claims of a previous worker",
	                     [](pg::SpiConnection &spi) { ReleaseAllClaims(spi); });
}

double
Reconciler::RetryDelay(int attempts, std::optional<double> retry_after) {
	std::uniform_real_distribution<double> unit(0.0, 1.0);
	return RetryDelaySeconds(attempts, retry_base_delay_ms / 1000.0, retry_max_delay_ms / 1000.0, retry_after,
	                         unit(random_));
}

void
Reconciler::Dispatch() {
	std::vector<ClaimedItem> claimed;
	const bool can_start = configuration_problem_.empty() && static_cast<int>(running_.size()) < max_concurrency;
	const int capacity = max_concurrency - static_cast<int>(running_.size());
	int64_t due = 0;
	pg::RunInTransaction("pg_fly: claiming work", [&](pg::SpiConnection &spi) {
		if (!pg::PgGuardResult([]() { return OidIsValid(get_extension_oid("pg_fly", true)); })) {
			due = -1;
			next_due_seconds_.reset();
			return;
		}
		if (can_start) {
			claimed = ClaimDueItems(spi, capacity);
		}
		next_due_seconds_ = SecondsUntilNextDue(spi);
		due = CountDueItems(spi);
	});
	SpinLockAcquire(&shared_->mutex);
	shared_->queue_ready = due;
	SpinLockRelease(&shared_->mutex);
	dispatch_again_ = can_start && static_cast<int>(claimed.size()) == capacity;
	for (const auto &item : claimed) {
		Start(item);
	}
}

void
Reconciler::Start(const ClaimedItem &item) {
	StepContext context;
	context.user_id = item.user_id;
	context.generation = item.generation;
	context.attempts = item.attempts;
	context.org_slug = settings_.org_slug;
	try {
		std::unique_ptr<RunningOperation> running;
		reconcile::Step step;
		pg::RunInTransaction("pg_fly: starting a reconcile", [&](pg::SpiConnection &spi) {
			reconcile::Target target;
			target.user_id = item.user_id;
			target.present = item.present;
			target.tier = item.tier;
			target.generation = item.generation;
			target.operation_id = std::to_string(item.generation) + "-" + std::to_string(item.attempts);
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
			auto app = LoadLiveApp(spi, item.user_id);
			if (!app && target.present) {
				target.first_name_attempt = FirstFreeNameAttempt(spi, item.user_id, settings_.app_name_prefix);
			}
			if (app) {
				context.app_id = app->id;
				if (!target.present && target.region.empty()) {
					target.region = app->region;
				}
			}
			running = std::make_unique<RunningOperation>(
			    RunningOperation{reconcile::Operation(target, app, settings_), context});
			step = running->operation.Start();
			running->context.retry_delay_seconds = RetryDelay(item.attempts, step.retry_after_seconds);
			if (!RecordStep(spi, running->context, step)) {
				running.reset();
			}
		});
		if (running && step.request) {
			running_[item.user_id] = 0;
			Advance(std::move(running), step);
		}
	} catch (const std::exception &e) {
		Log("reconciling user " + item.user_id + " failed to start: " + e.what());
		const double delay = RetryDelay(item.attempts, std::nullopt);
		pg::RunInTransaction("pg_fly: deferring work", [&](pg::SpiConnection &spi) {
			DeferItem(spi, item.user_id, delay, e.what());
		});
	}
}

void
Reconciler::Advance(std::unique_ptr<RunningOperation> running, const reconcile::Step &step) {
	const std::string user_id = running->context.user_id;
	if (!step.request) {
		running_.erase(user_id);
		dispatch_again_ = true;
		return;
	}
	const fly::RequestId id = client_->Submit(*step.request);
	running_[user_id] = id;
	in_flight_[id] = std::move(running);
}

void
Reconciler::Drive() {
	client_->Drive();
	for (auto &completion : client_->TakeCompleted()) {
		auto found = in_flight_.find(completion.id);
		if (found == in_flight_.end()) {
			continue;
		}
		std::unique_ptr<RunningOperation> running = std::move(found->second);
		in_flight_.erase(found);
		const std::string user_id = running->context.user_id;
		const int attempts = running->context.attempts;
		try {
			reconcile::Step step = running->operation.OnOutcome(completion.outcome);
			running->context.retry_delay_seconds =
			    RetryDelay(running->context.attempts, step.retry_after_seconds);
			bool go_on = false;
			pg::RunInTransaction("pg_fly: recording a step", [&](pg::SpiConnection &spi) {
				go_on = RecordStep(spi, running->context, step);
			});
			if (go_on) {
				Advance(std::move(running), step);
			} else {
				running_.erase(user_id);
				dispatch_again_ = true;
			}
		} catch (const std::exception &e) {
			running_.erase(user_id);
			dispatch_again_ = true;
			Log("recording a step for user " + user_id + " failed: " + e.what());
			const double delay = RetryDelay(attempts, std::nullopt);
			pg::RunInTransaction("pg_fly: deferring work", [&](pg::SpiConnection &spi) {
				DeferItem(spi, user_id, delay, e.what());
			});
		}
	}
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
	long sleep = poll_interval_ms;
	const long client_timeout = client_->NextTimeoutMs();
	if (client_timeout >= 0 && client_timeout < sleep) {
		sleep = client_timeout;
	}
	if (next_due_seconds_ && configuration_problem_.empty() && static_cast<int>(running_.size()) < max_concurrency) {
		const long due_ms = static_cast<long>(std::ceil(*next_due_seconds_ * 1000.0));
		if (due_ms < sleep) {
			sleep = due_ms;
		}
	}
	return sleep < 0 ? 0 : sleep;
}

} // namespace pgfly

// The runner's reconcile jobs: starting a claimed queue item's reconcile::Operation, applying fly.max_attempts
// and fly.alert_after_attempts to its failed steps, recording each step, and deferring the item when a step
// cannot be recorded.
#include "pgfly/pgfly_job_runner.hpp"

extern "C" {
#include "utils/errcodes.h"
}

#include <algorithm>

#include "pgfly/core/retry_delay.hpp"
#include "pgfly/pg/transaction.hpp"
#include "pgfly/pgfly_guc.hpp"

namespace pgfly {

double
JobRunner::RetryDelay(int attempts, std::optional<double> retry_after) {
	std::uniform_real_distribution<double> unit(0.0, 1.0);
	return RetryDelaySeconds(attempts, settings::retry_base_delay_ms / 1000.0, settings::retry_max_delay_ms / 1000.0,
	                         retry_after, unit(random_));
}

void
JobRunner::Defer(const std::string &user_id, int64_t generation, int attempts, const std::string &error,
                 bool item_was_locked) {
	busy_users_.erase(user_id);
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

JobRunner::LoadedStart
JobRunner::LoadStart(pg::SpiConnection &spi, const ClaimedItem &item) {
	LoadedStart loaded;
	StepContext &context = loaded.context;
	context.user_id = item.user_id;
	context.generation = item.generation;
	context.attempts = item.attempts;
	context.alerted = item.alerted;
	context.org_slug = settings_.org_slug;
	reconcile::Target &target = loaded.target;
	target.user_id = item.user_id;
	target.present = item.present;
	target.tier = item.tier;
	target.generation = item.generation;
	target.operation_id = std::to_string(item.generation) + "-" + std::to_string(item.attempts);
	loaded.settings = settings_;
	reconcile::Settings &settings = loaded.settings;
	if (!settings.secrets.empty()) {
		try {
			settings.secrets_digest_key = LoadSecretsDigestKey(spi);
		} catch (const std::runtime_error &e) {
			// Provisioning goes on without recording a digest (a secrets rollout then sets them again).
			Log(e.what());
		}
	}
	if (item.present && item.tier) {
		auto policy = LoadTierPolicy(spi, *item.tier);
		if (policy && policy->dedicated) {
			target.guest = policy->guest;
			target.region = policy->region;
			target.fallback_regions = policy->fallback_regions;
		} else {
			target.present = false; // the tier no longer grants an app
		}
	} else if (item.present) {
		target.present = false;
	}
	loaded.app = LoadLiveApp(spi, item.user_id);
	if (loaded.app) {
		context.app_id = loaded.app->id;
		if (!target.present && target.region.empty()) {
			target.region = loaded.app->region;
		}
	} else {
		target.first_name_attempt = FirstFreeNameAttempt(spi, item.user_id, settings_.app_name_prefix);
		target.look_for_leftover = target.first_name_attempt == 0;
	}
	return loaded;
}

void
JobRunner::Begin(LoadedStart loaded) {
	const std::string user_id = loaded.context.user_id;
	const int64_t generation = loaded.context.generation;
	const int attempts = loaded.context.attempts;
	busy_users_.insert(user_id);
	try {
		ReconcileJob job{reconcile::Operation(loaded.target, loaded.app, loaded.settings), loaded.context};
		job.operation.SetNow(Now());
		reconcile::Step step = job.operation.Start();
		Record(std::move(job), std::move(step));
	} catch (const std::exception &e) {
		Defer(user_id, generation, attempts, e.what());
	}
}

void
JobRunner::Start(const ClaimedItem &item) {
	busy_users_.insert(item.user_id);
	std::optional<LoadedStart> loaded;
	try {
		pg::RunInTransaction("pg_fly: loading a reconcile",
		                     [&](pg::SpiConnection &spi) { loaded = LoadStart(spi, item); });
	} catch (const std::exception &e) {
		Defer(item.user_id, item.generation, item.attempts, e.what());
		return;
	}
	Begin(std::move(*loaded));
}

void
JobRunner::ApplyFailurePolicy(ReconcileJob &job, reconcile::Step &step) {
	using reconcile::Completion;
	if (step.completion != Completion::kRetry && step.completion != Completion::kFailed && !step.failed_attempt) {
		return;
	}
	StepContext &context = job.context;
	last_error_ = step.error;
	last_error_at_ = Now();
	// A lack of capacity is Fly's, not the user's: it is retried (in the fallback regions, then later) for good.
	if ((step.completion == Completion::kRetry || step.failed_attempt) && context.attempts >= settings::max_attempts &&
	    !step.no_capacity) {
		step.failed_attempt = false;
		step.request.reset();
		step.completion = Completion::kFailed;
		step.events.push_back(
			reconcile::Event{job.operation.target().present ? "provision_failed" : "deprovision_failed",
		                     "{\"reason\": \"gave up after fly.max_attempts attempts\", \"attempts\": " +
		                         std::to_string(context.attempts) + "}"});
	}
	// No room in any region is worth one alert, though it spends no attempt.
	context.raise_alert = !context.alerted && (context.attempts >= settings::alert_after_attempts ||
	                                           step.completion == Completion::kFailed ||
	                                           (step.no_capacity && step.completion == Completion::kRetry));
	context.retry_delay_seconds = std::max(RetryDelay(context.attempts, step.retry_after_seconds), step.settle_seconds);
	if (step.no_capacity && step.failed_attempt) {
		// Capacity spends no attempt, so the attempt count would not grow the delay: start a few steps up.
		context.retry_delay_seconds = std::max(context.retry_delay_seconds,
		                                       RetryDelay(context.attempts + settings::capacity_retries, std::nullopt));
	}
	if (step.no_capacity && step.completion == Completion::kRetry) {
		// No region has room, and capacity spends no attempt, so the delay would not grow: wait the longest.
		context.retry_delay_seconds = std::max(context.retry_delay_seconds, settings::retry_max_delay_ms / 1000.0);
	}
}

void
JobRunner::Record(ReconcileJob job, reconcile::Step step) {
	const std::string user_id = job.context.user_id;
	const int64_t generation = job.context.generation;
	const int attempts = job.context.attempts;
	// A failure Fly answered spends the attempt, even when recording it meets a lock.
	const bool failure = step.failed_attempt || step.completion == reconcile::Completion::kRetry ||
	                     step.completion == reconcile::Completion::kFailed;
	// An operation's first request, when it is a read, leaves before its record, whose WAL flush then overlaps
	// Fly's round trip (reconcile::Step::send_before_record). The record is still synchronous: the step is
	// visible only once durable. Should the record fail or end the job, the read's answer is ignored.
	std::optional<std::pair<fly::RequestId, std::pair<std::string, std::string>>> sent;
	const auto abandon = [&]() {
		if (sent) {
			abandoned_.emplace(sent->first, Abandoned{sent->second, step.request->endpoint});
			sent.reset();
		}
	};
	try {
		ApplyFailurePolicy(job, step);
		if (step.send_before_record && step.request && !step.failed_attempt && step.delay_seconds <= 0 &&
		    step.completion == reconcile::Completion::kContinue) {
			sent = SendNow(*step.request);
		}
		bool go_on = false;
		try {
			pg::RunInTransaction("pg_fly: recording a step",
			                     [&](pg::SpiConnection &spi) { go_on = RecordStep(spi, job.context, step); });
		} catch (...) {
			abandon();
			throw;
		}
		if (go_on && sent) {
			const fly::Endpoint endpoint = step.request->endpoint;
			auto key = std::move(sent->second);
			const fly::RequestId id = sent->first;
			sent.reset();
			in_flight_.emplace(id, InFlight{std::move(job), std::move(key), endpoint});
		} else if (go_on && step.request) {
			double due = Now() + step.delay_seconds;
			if (step.failed_attempt) {
				if (!step.no_capacity) {
					job.context.attempts++; // the retry is the next attempt (a lack of capacity spends none)
				}
				due += job.context.retry_delay_seconds;
			}
			pending_.push_back(PendingRequest{due, std::move(job), *step.request});
		} else {
			abandon();
			busy_users_.erase(user_id);
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
JobRunner::OnReconcileAnswer(ReconcileJob job, const fly::Outcome &outcome) {
	const std::string user_id = job.context.user_id;
	const int64_t generation = job.context.generation;
	const int attempts = job.context.attempts;
	reconcile::Step step;
	try {
		job.operation.SetNow(Now());
		step = job.operation.OnOutcome(outcome);
	} catch (const std::exception &e) {
		Defer(user_id, generation, attempts, e.what());
		return;
	}
	Record(std::move(job), std::move(step));
}

} // namespace pgfly

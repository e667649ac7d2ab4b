// The worker's side of image rollouts: the JobRunner's rollout passes, the per-app machine updates and the
// canaries' health checks. Updates share the client, the rate limiter, the breaker and fly.max_concurrency
// with reconciles, and never run for a user whose reconcile is going (nor the other way round).
#include "pgfly/pgfly_job_runner.hpp"

extern "C" {
#include "utils/elog.h"
}

#include "pgfly/core/machine_spec.hpp"
#include "pgfly/core/reconcile.hpp"
#include "pgfly/core/secrets.hpp"
#include "pgfly/pg/transaction.hpp"
#include "pgfly/pgfly_guc.hpp"

namespace pgfly {

namespace {

// While a rollout runs, how often the worker looks at it (phase changes, canary deadline) and how often each
// updated canary's health is read.
constexpr double kRolloutPassSeconds = 1.0;
constexpr double kCanaryCheckEverySeconds = 2.0;
// Besides after each reload, how often apps are compared with the secrets file: an app whose provision was under
// way at the reload set the set it started with.
constexpr double kSecretsCheckEverySeconds = 60.0;

} // namespace

void
JobRunner::PlanRollout(double now, const std::vector<std::string> &busy, int capacity) {
	const bool requested = pg_atomic_exchange_u32(&shared_->rollout_pass_requested, 0) != 0;
	if (!requested && now < next_rollout_pass_) {
		return;
	}
	if (now >= next_secrets_check_) {
		secrets_check_due_ = true;
		next_secrets_check_ = now + kSecretsCheckEverySeconds;
	}
	// Filled in the transaction, kept only once it has committed.
	double next_pass = now + settings::poll_interval_ms / 1000.0;
	std::vector<RolloutJob> updates;
	std::vector<HealthJob> canaries;
	std::string news;
	try {
		InTransaction("pg_fly: image rollout pass", [&](pg::SpiConnection &spi) {
			// The file's set under the database's key (empty before the 0.3.0 schema), read only when needed.
			std::optional<std::string> digest;
			auto secrets_digest = [&]() -> const std::string & {
				if (!digest) {
					const std::string key = LoadSecretsDigestKey(spi);
					digest = key.empty() ? std::string() : secrets::Digest(settings_.secrets, key);
				}
				return *digest;
			};
			std::optional<RunningRollout> running = LoadRunningRollout(spi);
			if (!running && secrets_check_due_ && configuration_problem_.empty()) {
				// After a start or a reload: apps whose secrets differ from the file get a rollout of their own.
				secrets_check_due_ = false;
				if (secrets_digest().empty()) {
					return;
				}
				if (auto id = StartSecretsRollout(spi, secrets_digest(), settings_.secrets.empty())) {
					// Read-only queries in this transaction would not see it yet: the next pass (at once) takes it.
					news = "secrets rollout " + std::to_string(*id) + " started: fly.app_secrets_file changed";
					next_pass = now;
					return;
				}
			}
			if (!running) {
				return;
			}
			next_pass = now + kRolloutPassSeconds;
			if (running->held_by_another) {
				return; // an operator's transaction (cancel_image_rollout, say): look again in a second
			}
			// Updates that no operation of this worker carries any more (a previous worker's, or one whose result
			// could not be recorded) are taken again; each begins by reading the machine, so none is sent twice.
			ReleaseRolloutClaims(spi, running->id, busy);
			const rollout::Decision decision = rollout::NextRolloutPhase(
				running->phase, running->counts, running->max_failures, running->canary_deadline_passed);
			if (decision.phase != running->phase) {
				AdvanceRollout(spi, *running, decision);
				running->phase = decision.phase;
				const std::string what = running->kind + " rollout " + std::to_string(running->id);
				if (decision.phase == rollout::Phase::kHalted) {
					news = what + " halted: " + decision.reason;
				} else if (decision.phase == rollout::Phase::kCompleted) {
					news = what + " completed";
				}
			}
			switch (running->phase) {
			case rollout::Phase::kCanary:
			case rollout::Phase::kRolling:
				if (running->kind == "secrets" && !configuration_problem_.empty()) {
					break; // the secrets file cannot be read: nothing is set until it can
				}
				if (capacity > 0) {
					for (auto &app : ClaimRolloutApps(spi, *running, capacity, busy)) {
						rollout::AppTarget target;
						target.app_name = app.app_name;
						target.machine_id = app.machine_id;
						target.image = running->image;
						if (app.secrets_rollout) {
							// The app keeps its image; its secrets move to the file's set.
							target.image = app.image.empty() ? settings_.image : app.image;
							target.secrets = secrets::ValuesToSet(settings_.secrets, app.secret_names);
							app.secrets_digest = secrets_digest();
						}
						fly::MachineSpec spec =
							machine::MachineSpecFor(settings_.env, app.user_id, app.guest, app.region, target.image,
						                            "rollout-" + std::to_string(running->id), app.secrets_version);
						spec.service = settings_.service; // an update replaces the whole config
						updates.push_back(
							RolloutJob{running->id, target.image, app, rollout::ImageUpdate(target, spec)});
					}
				}
				break;
			case rollout::Phase::kCanaryCheck:
				for (auto &target : LoadCanariesToCheck(spi, running->id, kCanaryCheckEverySeconds)) {
					if (!canaries_checking_.count(target.app_id)) {
						canaries.push_back(HealthJob{target, running->id});
					}
				}
				break;
			default:
				break;
			}
		});
	} catch (const std::exception &e) {
		// Reconciles go on; the rollout is looked at again in a second.
		next_rollout_pass_ = now + kRolloutPassSeconds;
		Log(std::string("image rollout pass failed: ") + e.what());
		return;
	}
	next_rollout_pass_ = next_pass;
	rollout_claimed_ = std::move(updates);
	canaries_claimed_ = std::move(canaries);
	if (!news.empty()) {
		Log(news);
	}
}

void
JobRunner::StartRolloutUpdates() {
	for (auto &work : rollout_claimed_) {
		busy_users_.insert(work.app.user_id);
		const rollout::Step step = work.update.Start();
		pending_.push_back(PendingRequest{Now(), std::move(work), *step.request});
	}
	rollout_claimed_.clear();
	for (auto &check : canaries_claimed_) {
		canaries_checking_.insert(check.target.app_id);
		health_running_++;
		fly::Request request = fly::GetMachineRequest(check.target.app_name, check.target.machine_id);
		pending_.push_back(PendingRequest{Now(), std::move(check), std::move(request)});
	}
	canaries_claimed_.clear();
}

void
JobRunner::OnRolloutAnswer(RolloutJob work, const fly::Outcome &outcome) {
	rollout::Step step;
	try {
		step = work.update.OnOutcome(outcome);
	} catch (const std::exception &e) {
		step = rollout::Step{};
		step.result = rollout::Result::kFailed;
		step.error = e.what();
	}
	if (step.secrets_set && step.secrets_version && work.update.target().secrets) {
		// The names as sent (a reload since may have changed the file): set ones, and those unset with null.
		std::vector<std::string> names;
		std::vector<std::string> unset;
		for (const auto &value : *work.update.target().secrets) {
			(value.second ? names : unset).push_back(value.first);
		}
		try {
			pg::RunInTransaction("pg_fly: recording secrets set", [&](pg::SpiConnection &spi) {
				RecordSecretsSet(spi, work.rollout_id, work.app, *step.secrets_version, names, unset);
			});
		} catch (const std::exception &e) {
			// The names stay as they were: a later rollout unsets the removed ones again, which is harmless.
			Log(std::string("recording secrets set failed: ") + e.what());
		}
	}
	if (step.result == rollout::Result::kContinue && step.request) {
		double due = Now();
		if (step.failed_attempt) {
			last_error_ = step.error;
			last_error_at_ = Now();
			if (++work.app.attempts >= settings::max_attempts) {
				step.result = rollout::Result::kFailed;
				step.error = "gave up after fly.max_attempts attempts: " + step.error;
				FinishRolloutUpdate(work, step);
				return;
			}
			try {
				pg::RunInTransaction("pg_fly: recording a failed image update", [&](pg::SpiConnection &spi) {
					RecordRolloutAttemptFailed(spi, work.rollout_id, work.app, step.error);
				});
			} catch (const std::exception &e) {
				Log(std::string("recording a failed image update failed: ") + e.what());
			}
			due += RetryDelay(work.app.attempts, step.retry_after_seconds);
		}
		fly::Request request = *step.request;
		pending_.push_back(PendingRequest{due, std::move(work), std::move(request)});
		return;
	}
	if (step.result == rollout::Result::kContinue) {
		step.result = rollout::Result::kFailed;
		step.error = "the update stopped without a result";
	}
	FinishRolloutUpdate(work, step);
}

void
JobRunner::FinishRolloutUpdate(const RolloutJob &work, const rollout::Step &step) {
	busy_users_.erase(work.app.user_id);
	dispatch_again_ = true;
	next_rollout_pass_ = 0;
	if (step.result == rollout::Result::kFailed) {
		Log("updating " + work.app.app_name +
		    (work.app.secrets_rollout ? " to new secrets" : " to image " + work.image) + " failed: " + step.error);
	}
	try {
		pg::RunInTransaction("pg_fly: recording an image update", [&](pg::SpiConnection &spi) {
			RecordRolloutResult(spi, work.rollout_id, work.image, work.app, step);
		});
	} catch (const std::exception &e) {
		// The app stays 'updating' until the next rollout pass takes it again.
		Log(std::string("recording an image update failed: ") + e.what());
	}
}

} // namespace pgfly

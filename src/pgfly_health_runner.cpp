// The runner's health jobs: periodic checks of every active app (its machine, then maybe the app's own
// endpoint), restarting a stopped machine or re-queueing an app whose machine vanished, and the canary checks of
// image rollouts.
#include "pgfly/pgfly_job_runner.hpp"

#include "pgfly/core/health.hpp"
#include "pgfly/core/machine_spec.hpp"
#include "pgfly/pg/transaction.hpp"
#include "pgfly/pgfly_guc.hpp"

namespace pgfly {

namespace {

// The age was read when the pass loaded its targets; the check follows within the pass.
bool
RecentlyCreated(const HealthTarget &target) {
	return target.machine_age_seconds && *target.machine_age_seconds * 1000.0 < settings::create_settle_time_ms;
}

} // namespace

// Health checks share the client, the rate limiter and the breaker with reconciles (the app's own endpoint
// stays out of Fly's limiter and breaker), and take at most fly.health_check_concurrency requests at once, slots
// of their own that reconciles do not share; apps whose user is being reconciled are skipped.
void
JobRunner::StartHealthChecks() {
	int limit = health_concurrency_limit_;
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
		if (busy_users_.count(target.user_id)) {
			continue;
		}
		// One request: the user's machines in the app, the recorded one with its state and checks.
		fly::Request request = fly::ListMachinesRequest(target.app_name, {{machine::kUserMetadataKey, target.user_id}});
		HealthJob check{target};
		check.phase = HealthJob::Phase::kList;
		health_running_++;
		pending_.push_back(PendingRequest{Now(), std::move(check), std::move(request)});
	}
	if (health_next_ >= health_queue_.size()) {
		health_queue_.clear();
		health_next_ = 0;
		if (health_more_) {
			dispatch_again_ = true; // the pass's next page
		}
	}
}

// A half-open breaker lets one request through to see whether Fly is back. With no reconcile to carry it, a
// health check (a cheap GET machine) does: otherwise the breaker would stay half-open and checks would stop.
bool
JobRunner::WantsHealthProbe(double now) const {
	return configuration_problem_.empty() && settings::health_check_interval_ms > 0 &&
	       breaker_.state(now) == CircuitBreaker::State::kHalfOpen && !breaker_.probe_in_flight() &&
	       busy_users_.empty() && health_running_ == 0 && pending_.empty();
}

// Only a routine check of an app whose user has no reconcile in flight and no create pending destroys duplicates:
// a machine that is being created is no duplicate yet.
bool
JobRunner::MayDestroyDuplicates(const HealthJob &check) const {
	return check.canary_of_rollout == 0 && !check.target.pending_create && !busy_users_.count(check.target.user_id);
}

void
JobRunner::FlushHealthBatch() {
	if (health_batch_.empty()) {
		return;
	}
	std::vector<HealthRecord> batch;
	batch.swap(health_batch_);
	try {
		HealthBatchResult result;
		pg::RunInTransaction("pg_fly: recording health checks",
		                     [&](pg::SpiConnection &spi) { result = RecordHealthBatch(spi, batch); });
		if (result.recorded < static_cast<int64_t>(batch.size())) {
			// Rows others hold (an operator's, say) keep their old last_health_check_at: first in the next pass.
			const int64_t left = static_cast<int64_t>(batch.size()) - result.recorded;
			pg::PgGuard([&]() {
				elog(DEBUG1,
				     "pg_fly worker: %lld health check(s) recorded in a later pass: their rows are locked "
				     "or no longer active",
				     static_cast<long long>(left));
			});
		}
	} catch (const std::exception &e) {
		Log("recording " + std::to_string(batch.size()) + " health checks failed: " + e.what());
	}
}

std::optional<fly::Request>
JobRunner::NextDuplicateDestroy(HealthJob &check) {
	while (!check.duplicates.empty()) {
		const std::string machine_id = check.duplicates.back();
		check.duplicates.pop_back();
		if (busy_users_.count(check.target.user_id)) {
			return std::nullopt; // a reconcile started meanwhile: it decides
		}
		bool recorded = false;
		pg::RunInTransaction("pg_fly: recording a duplicate machine's destruction", [&](pg::SpiConnection &spi) {
			recorded = RecordDuplicateDestroy(spi, check.target, machine_id);
		});
		if (!recorded) {
			return std::nullopt;
		}
		Log("destroying machine " + machine_id + " of " + check.target.app_name +
		    ": a duplicate of the recorded machine " + check.target.machine_id);
		check.phase = HealthJob::Phase::kDestroyingDuplicate;
		return fly::DeleteMachineRequest(check.target.app_name, machine_id, true);
	}
	return std::nullopt;
}

void
JobRunner::OnHealthAnswer(HealthJob check, const fly::Outcome &outcome) {
	using Phase = HealthJob::Phase;
	const HealthTarget &target = check.target;
	std::optional<fly::Request> next;
	ListedHealth listed;
	try {
		if (check.phase == Phase::kDestroyingDuplicate) {
			if (outcome.kind != fly::OutcomeKind::kSuccess && outcome.kind != fly::OutcomeKind::kNotFound) {
				// The next pass finds it again.
				Log("destroying a duplicate machine of " + target.app_name + " failed: " + outcome.message);
			}
			next = NextDuplicateDestroy(check);
		} else if (check.phase == Phase::kStarting) {
			// The answer to our start request; the next pass sees whether the machine came up.
			const bool started = outcome.kind == fly::OutcomeKind::kSuccess;
			Json details = Json::Object();
			details.Set("machine_id", Json::String(target.machine_id));
			details.Set("result", Json::String(started ? "started" : outcome.message));
			pg::RunInTransaction("pg_fly: recording a machine restart", [&](pg::SpiConnection &spi) {
				RecordHealth(spi, target, nullptr, started ? "machine_restarted" : "machine_restart_failed",
				             details.Dump());
			});
		} else if (check.phase == Phase::kList &&
		           (listed = EvaluateListedMachineHealth(outcome, target.machine_id, target.user_id)).ask_machine) {
			// The list cannot say: the machine itself tells a vanished one from one the list does not show yet.
			check.phase = Phase::kMachine;
			next = fly::GetMachineRequest(target.app_name, target.machine_id);
		} else {
			HealthVerdict verdict;
			if (check.phase == Phase::kList) {
				verdict = std::move(listed.verdict);
				check.duplicates = std::move(listed.duplicates);
			} else if (check.phase == Phase::kEndpoint) {
				verdict = EvaluateAppHealthEndpoint(outcome, target.user_id);
			} else {
				verdict = EvaluateMachineHealth(outcome, RecentlyCreated(target));
			}
			std::optional<std::string> endpoint_url;
			if (check.phase != Phase::kEndpoint && verdict.health == Health::kHealthy &&
			    settings::app_health_url[0] != '\0') {
				endpoint_url = AppHealthUrl(settings::app_health_url, target.app_name);
				if (!endpoint_url) {
					verdict.health = Health::kUnhealthy;
					verdict.detail = "the app's own endpoint was not asked: its name is not one Fly accepts";
				}
			}
			if (endpoint_url) {
				// The machine looks fine; the app's own endpoint has the last word.
				check.phase = Phase::kEndpoint;
				check.machine_state = verdict.state;
				next = fly::AppHealthRequest(*endpoint_url);
			} else {
				Json details = Json::Object();
				details.Set("machine_id", Json::String(target.machine_id));
				details.Set("state", Json::String(verdict.state));
				details.Set("detail", Json::String(verdict.detail));
				std::string event;
				if (verdict.action == HealthAction::kStartMachine && settings::restart_stopped_machines) {
					event = "machine_restart_requested";
					next = fly::StartMachineRequest(target.app_name, target.machine_id);
				} else if (verdict.action == HealthAction::kReprovision && settings::reprovision_vanished_apps) {
					event = "app_vanished";
				}
				const char *health = verdict.health == Health::kUnknown ? nullptr : HealthName(verdict.health);
				// Duplicates are destroyed only after an answer about the machine (a failing Fly is not asked for
				// more), and not while it is started again or re-provisioned.
				const bool destroy_duplicates =
					!check.duplicates.empty() && next == std::nullopt && verdict.health != Health::kUnknown &&
					verdict.action != HealthAction::kReprovision && MayDestroyDuplicates(check);
				if (event.empty() && check.canary_of_rollout == 0 && !destroy_duplicates) {
					// Nothing follows from it: recorded with the other answers of this loop pass.
					health_batch_.push_back(
						HealthRecord{target.app_id, health ? pg::Value(health) : std::nullopt, details.Dump()});
					health_running_--;
					return;
				}
				bool active = false;
				pg::RunInTransaction("pg_fly: recording a health check", [&](pg::SpiConnection &spi) {
					active = RecordHealth(spi, target, health, event, details.Dump());
					if (check.canary_of_rollout != 0) {
						RecordCanaryHealth(spi, check.canary_of_rollout, target.app_id,
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
					check.phase = Phase::kStarting;
				} else if (active && destroy_duplicates) {
					next = NextDuplicateDestroy(check);
				}
			}
		}
	} catch (const std::exception &e) {
		Log("recording a health check of " + target.app_name + " failed: " + e.what());
		next.reset();
	}
	if (next) {
		pending_.push_back(PendingRequest{Now(), std::move(check), std::move(*next)});
		return;
	}
	if (check.canary_of_rollout != 0) {
		canaries_checking_.erase(target.app_id);
		next_rollout_pass_ = 0;
	}
	health_running_--;
}

} // namespace pgfly

// The shared part of a reconcile operation: starting it, routing each of Fly's answers to the handler of the
// phase that sent the request (reconcile_provision.cpp, reconcile_deprovision.cpp), and the retry and failure
// rules every phase follows.
#include "pgfly/core/reconcile.hpp"

#include <utility>

#include "pgfly/core/json.hpp"

#include "pgfly/core/cpp_only.hpp"

namespace pgfly {
namespace reconcile {

Event
Operation::MakeEvent(const char *type, const Json &details) {
	return Event{type, details.Dump()};
}

Json
Operation::OutcomeDetails(const fly::Outcome &outcome, const char *during) {
	Json details = Json::Object();
	details.Set("step", Json::String(during));
	details.Set("http_status", Json::Integer(outcome.http_status));
	if (!outcome.fly_status.empty()) {
		details.Set("fly_status", Json::String(outcome.fly_status));
	}
	if (!outcome.fly_error.empty()) {
		details.Set("fly_error", Json::String(outcome.fly_error));
	}
	if (!outcome.request_id.empty()) {
		details.Set("fly_request_id", Json::String(outcome.request_id));
	}
	details.Set("message", Json::String(outcome.message));
	return details;
}

// An answer that cannot be used although it came with a 2xx: like any malformed answer, it is retried.
fly::Outcome
Operation::Malformed(const fly::Outcome &outcome, const std::string &problem) {
	fly::Outcome malformed = outcome;
	malformed.kind = fly::OutcomeKind::kMalformed;
	malformed.message += ": " + problem;
	return malformed;
}

Operation::Operation(Target target, std::optional<AppRecord> app, Settings settings)
	: target_(std::move(target)), app_(std::move(app)), settings_(std::move(settings)) {}

const char *
Operation::FailedEvent() const {
	return target_.present ? "provision_failed" : "deprovision_failed";
}

Step
Operation::Start() {
	started_at_ = now_;
	if (app_ && app_->app_created_age_seconds) {
		app_created_at_ = now_ - *app_->app_created_age_seconds;
	}
	if (app_ && app_->machine_created_age_seconds) {
		machine_created_at_ = now_ - *app_->machine_created_age_seconds;
	}
	Step step = target_.present ? StartProvision() : StartDeprovision();
	// Only a read: a create-app sent before its record could, if the record then fails (a tier change holding the
	// queue row) and the next generation tears down, leave an app no row knows of.
	step.send_before_record = step.request && step.request->method == "GET" && !step.request->body_json;
	last_request_ = step.request;
	return step;
}

Step
Operation::OnOutcome(const fly::Outcome &outcome) {
	Step step = Handle(outcome);
	if (step.request) {
		last_request_ = step.request;
	}
	return step;
}

Step
Operation::Handle(const fly::Outcome &outcome) {
	if (auto settling = SettleIfYoung(outcome)) {
		return *settling;
	}
	switch (phase_) {
	case Phase::kCreateApp:
		return OnCreateApp(outcome);
	case Phase::kWaitAppVisible:
		return OnWaitAppVisible(outcome);
	case Phase::kGetTakenApp:
		return OnGetTakenApp(outcome);
	case Phase::kSetSecrets:
		return OnSetSecrets(outcome);
	case Phase::kListIps:
		return OnListIps(outcome);
	case Phase::kAssignIp:
		return OnAssignIp(outcome);
	case Phase::kFindMachine:
	case Phase::kFindCreatedMachine:
		return OnFindMachine(outcome);
	case Phase::kFindUnmarkedMachine:
		return OnFindUnmarkedMachine(outcome);
	case Phase::kCreateMachine:
		return OnCreateMachine(outcome);
	case Phase::kDeleteExtraMachine:
		return OnDeleteExtraMachine(outcome);
	case Phase::kUpdateMachine:
		return OnUpdateMachine(outcome);
	case Phase::kStartMachine:
		return OnStartMachine(outcome);
	case Phase::kWaitStopped:
		return OnWaitStopped(outcome);
	case Phase::kWaitStarted:
		return OnWaitStarted(outcome);
	case Phase::kLookUpOrphan:
		return OnLookUpOrphan(outcome);
	case Phase::kListForStop:
		return OnListForStop(outcome);
	case Phase::kStopMachine:
		return OnStopMachine(outcome);
	case Phase::kDeleteApp:
		return OnDeleteApp(outcome);
	case Phase::kWaitStoppedForDelete:
		return OnWaitStoppedForDelete(outcome);
	case Phase::kConfirmAppGone:
		return OnConfirmAppGone(outcome);
	case Phase::kFinished:
		break;
	}
	fly::Outcome stray = outcome;
	stray.message = "an answer arrived for an operation that had finished";
	return Fail(stray, "worker");
}

Step
Operation::Finish(Step step) {
	step.completion = Completion::kDone;
	step.request.reset();
	phase_ = Phase::kFinished;
	return step;
}

// A transient failure: the same request goes again after the backoff delay, keeping what the operation has
// done so far. Only a wait that has used up its rounds starts the operation afresh later.
Step
Operation::Retry(const fly::Outcome &outcome, const char *during) {
	Step step;
	step.error = outcome.message;
	step.retry_after_seconds = outcome.retry_after_seconds;
	step.events.push_back(MakeEvent(target_.present ? "provision_attempt_failed" : "deprovision_attempt_failed",
	                                OutcomeDetails(outcome, during)));
	if (last_request_ && phase_ != Phase::kFinished) {
		step.failed_attempt = true;
		step.request = last_request_;
		if (phase_ == Phase::kWaitStarted) {
			wait_round_ = 0;
		}
		return step;
	}
	step.completion = Completion::kRetry;
	phase_ = Phase::kFinished;
	return step;
}

Step
Operation::Fail(const fly::Outcome &outcome, const char *during) {
	Step step;
	step.completion = Completion::kFailed;
	step.error = outcome.message;
	step.events.push_back(MakeEvent(FailedEvent(), OutcomeDetails(outcome, during)));
	phase_ = Phase::kFinished;
	return step;
}

// An answer the step does not expect: transient and malformed ones (a garbled, oversized or mislabelled 2xx
// tells nothing, and the next answer may be fine) are retried, the rest fail the operation.
Step
Operation::Unexpected(const fly::Outcome &outcome, const char *during) {
	if (outcome.kind == fly::OutcomeKind::kTransient || outcome.kind == fly::OutcomeKind::kMalformed) {
		return Retry(outcome, during);
	}
	return Fail(outcome, during);
}

} // namespace reconcile
} // namespace pgfly

#include "pgfly/core/image_rollout.hpp"

#include <utility>

#include "pgfly/core/machine_spec.hpp"

#include "pgfly/core/cpp_only.hpp"

namespace pgfly {
namespace rollout {

ImageUpdate::ImageUpdate(AppTarget target, fly::MachineSpec spec) : target_(std::move(target)), spec_(std::move(spec)) {
	spec_.image = target_.image;
}

// The machine is read first, so that an update interrupted by a restart is not sent twice.
Step
ImageUpdate::Start() {
	if (target_.secrets) {
		if (target_.secrets->empty()) {
			// No name to set or unset: Fly's secrets and the machine stay as they are.
			return Finish(Result::kAlreadyCurrent, Step{});
		}
		return Send(Step{}, Phase::kSetSecrets, fly::SetSecretsRequest(target_.app_name, *target_.secrets));
	}
	return Send(Step{}, Phase::kGetMachine, fly::GetMachineRequest(target_.app_name, target_.machine_id));
}

// The request goes next, and again after a transient failure.
Step
ImageUpdate::Send(Step step, Phase phase, fly::Request request) {
	step.request = std::move(request);
	phase_ = phase;
	last_request_ = step.request;
	return step;
}

Step
ImageUpdate::StartMachine(Step step) {
	return Send(std::move(step), Phase::kStart, fly::StartMachineRequest(target_.app_name, target_.machine_id));
}

Step
ImageUpdate::Wait(Step step) {
	return Send(std::move(step), Phase::kWaitStarted,
	            fly::WaitMachineRequest(target_.app_name, target_.machine_id, "started", target_.wait_timeout_seconds));
}

Step
ImageUpdate::FirstWait(Step step) {
	wait_round_ = 0;
	return Wait(std::move(step));
}

Step
ImageUpdate::Retry(const fly::Outcome &outcome, Step step) {
	step.failed_attempt = true;
	step.error = outcome.message;
	step.retry_after_seconds = outcome.retry_after_seconds;
	step.request = last_request_;
	return step;
}

Step
ImageUpdate::Finish(Result result, Step step) {
	step.result = result;
	step.request.reset();
	phase_ = Phase::kFinished;
	return step;
}

Step
ImageUpdate::OnOutcome(const fly::Outcome &outcome) {
	using fly::OutcomeKind;
	Step step;
	step.from_image = from_image_;
	if (outcome.kind == OutcomeKind::kNotFound) {
		step.error = "the app or its machine no longer exists";
		return Finish(Result::kVanished, std::move(step));
	}
	const bool wait_timed_out = phase_ == Phase::kWaitStarted && outcome.http_status == 408;
	// A garbled or mislabelled answer is retried like a transient failure (as reconciles do).
	const bool retryable = outcome.kind == OutcomeKind::kTransient || outcome.kind == OutcomeKind::kMalformed;
	if (retryable && !wait_timed_out) {
		if (phase_ == Phase::kUpdate) {
			// The update may have taken effect anyway: read the machine again rather than update it twice.
			phase_ = Phase::kGetMachine;
			last_request_ = fly::GetMachineRequest(target_.app_name, target_.machine_id);
		}
		return Retry(outcome, std::move(step));
	}
	switch (phase_) {
	case Phase::kSetSecrets: {
		if (outcome.kind != OutcomeKind::kSuccess) {
			break;
		}
		auto version = outcome.body.GetInteger("version");
		if (!version) {
			version = outcome.body.GetInteger("Version"); // the deprecated spelling
		}
		if (!version) {
			step.error = "Fly's answer to setting the secrets has no version";
			return Finish(Result::kFailed, std::move(step));
		}
		spec_.min_secrets_version = version;
		step.secrets_set = true;
		step.secrets_version = version;
		return Send(std::move(step), Phase::kGetMachine, fly::GetMachineRequest(target_.app_name, target_.machine_id));
	}
	case Phase::kGetMachine: {
		if (outcome.kind != OutcomeKind::kSuccess) {
			break;
		}
		const machine::MachineFacts current = machine::MachineFromBody(outcome);
		if (from_image_.empty()) {
			from_image_ = current.image; // a re-read after an ambiguous update must not hide the old image
		}
		step.from_image = from_image_;
		if (current.image == target_.image && !target_.secrets) {
			if (current.state == "started") {
				return Finish(Result::kAlreadyCurrent, std::move(step));
			}
			if (machine::MachineNeedsStart(current.state)) {
				return StartMachine(std::move(step));
			}
			return FirstWait(std::move(step));
		}
		return Send(std::move(step), Phase::kUpdate,
		            fly::UpdateMachineRequest(target_.app_name, target_.machine_id, spec_));
	}
	case Phase::kUpdate: {
		if (outcome.kind != OutcomeKind::kSuccess) {
			break;
		}
		// Fly updates a stopped machine without starting it; an app must run.
		if (machine::MachineNeedsStart(machine::MachineFromBody(outcome).state)) {
			return StartMachine(std::move(step));
		}
		return FirstWait(std::move(step));
	}
	case Phase::kStart:
		if (outcome.kind != OutcomeKind::kSuccess) {
			break;
		}
		return FirstWait(std::move(step));
	case Phase::kWaitStarted:
		if (outcome.kind == OutcomeKind::kSuccess) {
			return Finish(Result::kUpdated, std::move(step));
		}
		if (wait_timed_out) {
			if (++wait_round_ < target_.wait_rounds) {
				return Wait(std::move(step));
			}
			step.error = "the machine did not start with the new image";
			return Finish(Result::kFailed, std::move(step));
		}
		break;
	case Phase::kFinished:
		break;
	}
	step.error = outcome.message.empty() ? std::string("unexpected answer from Fly") : outcome.message;
	return Finish(Result::kFailed, std::move(step));
}

const char *
PhaseName(Phase phase) {
	switch (phase) {
	case Phase::kCanary:
		return "canary";
	case Phase::kCanaryCheck:
		return "canary_check";
	case Phase::kRolling:
		return "rolling";
	case Phase::kCompleted:
		return "completed";
	case Phase::kHalted:
		return "halted";
	}
	return "halted";
}

std::optional<Phase>
PhaseFromName(const std::string &name) {
	for (Phase phase : {Phase::kCanary, Phase::kCanaryCheck, Phase::kRolling, Phase::kCompleted, Phase::kHalted}) {
		if (name == PhaseName(phase)) {
			return phase;
		}
	}
	return std::nullopt;
}

Decision
NextRolloutPhase(Phase phase, const Counts &counts, int max_failures, bool canary_deadline_passed) {
	if (phase == Phase::kCompleted || phase == Phase::kHalted) {
		return Decision{phase, ""};
	}
	if (counts.failed > max_failures) {
		return Decision{Phase::kHalted, std::to_string(counts.failed) +
		                                    " app(s) failed to update, more than max_failures (" +
		                                    std::to_string(max_failures) + ")"};
	}
	switch (phase) {
	case Phase::kCanary:
		if (counts.canary_pending > 0) {
			return Decision{Phase::kCanary, ""};
		}
		return Decision{counts.canary_updated > 0 ? Phase::kCanaryCheck : Phase::kRolling, ""};
	case Phase::kCanaryCheck:
		if (counts.canary_updated == 0) {
			return Decision{Phase::kRolling, ""};
		}
		if (canary_deadline_passed) {
			return Decision{Phase::kHalted,
			                std::to_string(counts.canary_updated) + " canary app(s) not healthy within canary_wait"};
		}
		return Decision{Phase::kCanaryCheck, ""};
	default:
		return Decision{counts.pending > 0 ? Phase::kRolling : Phase::kCompleted, ""};
	}
}

} // namespace rollout
} // namespace pgfly

// Deprovisioning: stop the app's running machines and wait until each is stopped, then delete the app, then wait
// until Fly answers 404 for it: Fly deletes asynchronously (202) and the name may stay held meanwhile. Without a
// live row, an app left under the user's first name is looked up and deleted only when it provably belongs to
// our organization. A provision that finds its row's app being deleted finishes that deletion the same way
// before it creates the app again (or moves on to the user's next name if the old one stays held).
// Each On* method handles Fly's answer to the request its phase sent.
#include "pgfly/core/reconcile.hpp"

#include <algorithm>
#include <utility>

#include "pgfly/core/app_naming.hpp"
#include "pgfly/core/json.hpp"

#include "pgfly/core/cpp_only.hpp"

namespace pgfly {
namespace reconcile {

namespace {

// Polling GET app after a 202: first look after half a second, doubling up to five seconds.
constexpr double kFirstConfirmDelaySeconds = 0.5;
constexpr double kMaxConfirmDelaySeconds = 5.0;

} // namespace

using fly::OutcomeKind;
using machine::MachineList;
using machine::MachinesFromList;

Step
Operation::StartDeprovision() {
	Step step;
	if (!app_) {
		// No live row: make sure the contract name is not left on Fly (a half-made app from a lost run).
		auto name = AppNameCandidate(settings_.app_name_prefix, target_.user_id, 0);
		if (!name || !target_.look_for_leftover) {
			step.completion = Completion::kDone;
			phase_ = Phase::kFinished;
			return step;
		}
		app_ = AppRecord{};
		app_->name = *name;
		step.request = fly::GetAppRequest(*name);
		phase_ = Phase::kLookUpOrphan;
		return step;
	}
	Json details = Json::Object();
	details.Set("app_name", Json::String(app_->name));
	details.Set("previous_status", Json::String(app_->status));
	details.Set("generation", Json::Integer(target_.generation));
	AppChange change;
	change.status = "deprovisioning";
	app_->status = "deprovisioning";
	step.app = change;
	step.events.push_back(MakeEvent("deprovision_requested", details));
	step.request = fly::ListMachinesRequest(app_->name);
	phase_ = Phase::kListForStop;
	return step;
}

Step
Operation::StopNextOrDelete(Step step) {
	if (!machines_to_stop_.empty()) {
		std::string id = machines_to_stop_.back();
		machines_to_stop_.pop_back();
		step.request = fly::StopMachineRequest(app_->name, id);
		phase_ = Phase::kStopMachine;
		return step;
	}
	wait_round_ = 0;
	return WaitNextStoppedOrDelete(std::move(step));
}

// Fly's docs ask for stopped machines before an app is deleted: a stop only begins stopping, so each machine is
// awaited in "stopped" (bounded by the wait rounds). One that does not get there makes the delete use
// force=true, which the docs describe (the spec does not list it: a server that ignores it is no worse off).
Step
Operation::WaitNextStoppedOrDelete(Step step) {
	if (!machines_to_wait_.empty()) {
		step.request =
			fly::WaitMachineRequest(app_->name, machines_to_wait_.back(), "stopped", settings_.wait_timeout_seconds);
		phase_ = Phase::kWaitStoppedForDelete;
		return step;
	}
	return DeleteApp(std::move(step));
}

// Recorded before the request leaves: from now on the app may be dying, and nobody reuses it.
Step
Operation::DeleteApp(Step step) {
	AppChange change = step.app.value_or(AppChange{});
	change.delete_requested = true;
	// This operation still reads a 404 to the DELETE of a young app as "not visible yet"; one restarted after the
	// delete went out reads it as the deletion it asked for.
	change.app_delete_sent = true;
	step.app = change;
	app_->delete_requested = true;
	Json details = Json::Object();
	details.Set("app_name", Json::String(app_->name));
	details.Set("force", Json::Bool(force_delete_));
	step.events.push_back(MakeEvent("app_delete_requested", details));
	step.request = fly::DeleteAppRequest(app_->name, force_delete_);
	phase_ = Phase::kDeleteApp;
	return step;
}

Step
Operation::ConfirmAppGone(Step step) {
	step.request = fly::GetAppRequest(app_->name);
	step.delay_seconds = confirm_delay_;
	confirm_delay_ = std::min(confirm_delay_ * 2, kMaxConfirmDelaySeconds);
	confirm_polls_++;
	phase_ = Phase::kConfirmAppGone;
	return step;
}

// Fly answered 404 for the app: it is gone. A deprovision records it deleted; a provision creates it again.
Step
Operation::AppGone(Step step, bool already_gone) {
	Json confirmed = Json::Object();
	confirmed.Set("app_name", Json::String(app_->name));
	confirmed.Set("already_gone", Json::Bool(already_gone));
	if (!already_gone) {
		confirmed.Set("waited_seconds", Json::Real(now_ - delete_accepted_at_));
		confirmed.Set("polls", Json::Integer(confirm_polls_));
	}
	step.events.push_back(MakeEvent("app_delete_confirmed", confirmed));
	if (target_.present) {
		AppChange change = step.app.value_or(AppChange{});
		change.delete_requested = false;
		step.app = change;
		app_->delete_requested = false;
		return CreateUnderName(std::move(step), app_->name, app_->name_attempt); // a new app, as any other
	}
	AppChange change = step.app.value_or(AppChange{});
	change.status = "deleted";
	change.deleted = true;
	step.app = change;
	Json details = Json::Object();
	details.Set("app_name", Json::String(app_->name));
	details.Set("already_gone", Json::Bool(already_gone));
	step.events.push_back(MakeEvent("deprovision_completed", details));
	app_->status = "deleted";
	return Finish(std::move(step));
}

// A provision waited as long as it may for the dying app's name: it takes the user's next deterministic name
// rather than reuse an app that Fly is deleting.
Step
Operation::MoveOnToNextName(Step step, const fly::Outcome &outcome) {
	const int next_attempt = app_->name_attempt + 1;
	auto next = AppNameCandidate(settings_.app_name_prefix, target_.user_id, next_attempt);
	if (!next) {
		fly::Outcome exhausted = outcome;
		exhausted.message = "the app being deleted still holds its name and no other name is left for this user";
		return Fail(exhausted, "get_app");
	}
	Json details = Json::Object();
	details.Set("from_name", Json::String(app_->name));
	details.Set("to_name", Json::String(*next));
	details.Set("reason", Json::String("the app being deleted still answers after its deletion was accepted"));
	details.Set("waited_seconds", Json::Real(now_ - delete_accepted_at_));
	step.events.push_back(MakeEvent("app_name_moved_on", details));
	AppChange change = step.app.value_or(AppChange{});
	change.delete_requested = false;
	change.machine_id = "";
	step.app = change;
	app_->delete_requested = false;
	app_->machine_id.clear();
	return CreateUnderName(std::move(step), *next, next_attempt);
}

Step
Operation::OnLookUpOrphan(const fly::Outcome &outcome) {
	Step step;
	// Deleting needs proof of ownership: an answer without the organization is not ours to delete.
	if (outcome.kind == OutcomeKind::kSuccess &&
	    outcome.body.Get("organization").GetString("slug") == std::optional<std::string>(settings_.org_slug)) {
		AppChange change;
		change.insert = true;
		change.name = app_->name;
		change.name_attempt = 0;
		change.status = "deprovisioning";
		change.region = target_.region;
		app_->status = "deprovisioning";
		step.app = change;
		Json details = Json::Object();
		details.Set("app_name", Json::String(app_->name));
		details.Set("reason", Json::String("found on Fly without a live row"));
		step.events.push_back(MakeEvent("deprovision_requested", details));
		step.request = fly::ListMachinesRequest(app_->name);
		phase_ = Phase::kListForStop;
		return step;
	}
	if (outcome.kind == OutcomeKind::kNotFound || outcome.kind == OutcomeKind::kForbidden ||
	    outcome.kind == OutcomeKind::kSuccess) {
		return Finish(std::move(step)); // nothing of ours there
	}
	return Unexpected(outcome, "get_app");
}

Step
Operation::OnListForStop(const fly::Outcome &outcome) {
	Step step;
	if (outcome.kind == OutcomeKind::kNotFound) {
		return StopNextOrDelete(std::move(step)); // the app is gone already; the delete confirms it
	}
	if (outcome.kind == OutcomeKind::kSuccess) {
		MachineList list = MachinesFromList(outcome);
		if (!list.problem.empty()) {
			return Unexpected(Malformed(outcome, list.problem), "list_machines");
		}
		machines_to_stop_.clear();
		machines_to_wait_.clear();
		force_delete_ = false;
		for (const auto &machine : list.machines) {
			if (machine.state == "started" || machine.state == "starting" || machine.state == "created") {
				machines_to_stop_.push_back(machine.id);
			}
			// A machine that never ran ("created") has nothing to stop, and may never report "stopped".
			if (machine.state == "started" || machine.state == "starting" || machine.state == "stopping") {
				machines_to_wait_.push_back(machine.id);
			}
		}
		return StopNextOrDelete(std::move(step));
	}
	return Unexpected(outcome, "list_machines");
}

Step
Operation::OnStopMachine(const fly::Outcome &outcome) {
	Step step;
	if (outcome.kind == OutcomeKind::kSuccess || outcome.kind == OutcomeKind::kNotFound) {
		if (machines_to_stop_.empty()) {
			Json details = Json::Object();
			details.Set("app_name", Json::String(app_->name));
			step.events.push_back(MakeEvent("machines_stopped", details));
		}
		return StopNextOrDelete(std::move(step));
	}
	return Unexpected(outcome, "stop_machine");
}

Step
Operation::OnWaitStoppedForDelete(const fly::Outcome &outcome) {
	Step step;
	if (outcome.kind == OutcomeKind::kSuccess || outcome.kind == OutcomeKind::kNotFound) {
		machines_to_wait_.pop_back();
		wait_round_ = 0;
		return WaitNextStoppedOrDelete(std::move(step));
	}
	const bool timed_out = outcome.kind == OutcomeKind::kTransient && outcome.http_status == 408;
	if (timed_out && ++wait_round_ < settings_.wait_rounds) {
		return WaitNextStoppedOrDelete(std::move(step)); // Fly's wait gives up after its timeout; ours is longer
	}
	if (timed_out || (outcome.kind == OutcomeKind::kPermanent && outcome.http_status == 400)) {
		// Not stopped within our bound, or Fly would not wait for it: delete with force=true.
		Json details = OutcomeDetails(outcome, "wait_machine");
		details.Set("app_name", Json::String(app_->name));
		details.Set("machine_id", Json::String(machines_to_wait_.back()));
		step.events.push_back(MakeEvent("machine_stop_unconfirmed", details));
		force_delete_ = true;
		machines_to_wait_.pop_back();
		wait_round_ = 0;
		return WaitNextStoppedOrDelete(std::move(step));
	}
	return Unexpected(outcome, "wait_machine");
}

Step
Operation::OnDeleteApp(const fly::Outcome &outcome) {
	Step step;
	if (outcome.kind == OutcomeKind::kSuccess) {
		// 202 only means accepted: the app is gone when its GET answers 404, not before.
		delete_accepted_at_ = now_;
		confirm_delay_ = kFirstConfirmDelaySeconds;
		confirm_polls_ = 0;
		return ConfirmAppGone(std::move(step));
	}
	if (outcome.kind == OutcomeKind::kNotFound) {
		return AppGone(std::move(step), true);
	}
	return Unexpected(outcome, "delete_app");
}

// Fly's docs do not say how a GET shows an app being deleted (its status values are not listed): only a 404
// counts. A 403 means another organization holds the name now, so ours is gone too.
Step
Operation::OnConfirmAppGone(const fly::Outcome &outcome) {
	Step step;
	if (outcome.kind == OutcomeKind::kNotFound || outcome.kind == OutcomeKind::kForbidden) {
		return AppGone(std::move(step), false);
	}
	if (outcome.kind == OutcomeKind::kSuccess) {
		if (now_ - delete_accepted_at_ < settings_.delete_confirm_seconds) {
			return ConfirmAppGone(std::move(step));
		}
		if (target_.present) {
			return MoveOnToNextName(std::move(step), outcome);
		}
		// Still there: keep asking, each time as a failed attempt, so fly.max_attempts bounds it.
		fly::Outcome lingering = outcome;
		lingering.message = "the app still exists after its deletion was accepted";
		return Retry(lingering, "get_app");
	}
	return Unexpected(outcome, "get_app");
}

} // namespace reconcile
} // namespace pgfly

// Deprovisioning: stop the app's running machines, then delete the app. Without a live row, an app left under
// the user's first name is looked up and deleted only when it provably belongs to our organization.
// Each On* method handles Fly's answer to the request its phase sent.
#include "pgfly/core/reconcile.hpp"

#include <utility>

#include "pgfly/core/app_naming.hpp"
#include "pgfly/core/json.hpp"

#include "pgfly/core/cpp_only.hpp"

namespace pgfly {
namespace reconcile {

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
	// This operation still reads 404s of a young app as "not visible yet"; one restarted after the delete went
	// out reads them as the deletion it asked for.
	AppChange change = step.app.value_or(AppChange{});
	change.app_delete_sent = true;
	step.app = change;
	step.request = fly::DeleteAppRequest(app_->name);
	phase_ = Phase::kDeleteApp;
	return step;
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
		for (const auto &machine : list.machines) {
			if (machine.state == "started" || machine.state == "starting" || machine.state == "created") {
				machines_to_stop_.push_back(machine.id);
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
Operation::OnDeleteApp(const fly::Outcome &outcome) {
	Step step;
	if (outcome.kind == OutcomeKind::kSuccess || outcome.kind == OutcomeKind::kNotFound) {
		AppChange change;
		change.status = "deleted";
		change.deleted = true;
		step.app = change;
		Json details = Json::Object();
		details.Set("app_name", Json::String(app_->name));
		details.Set("already_gone", Json::Bool(outcome.kind == OutcomeKind::kNotFound));
		step.events.push_back(MakeEvent("deprovision_completed", details));
		app_->status = "deleted";
		return Finish(std::move(step));
	}
	return Unexpected(outcome, "delete_app");
}

} // namespace reconcile
} // namespace pgfly

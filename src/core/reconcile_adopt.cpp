// Adopting the machine the previous system left in a user's app: it carries the user's id in its env (USER_ID)
// but none of pg_fly's metadata, so the metadata-filtered list misses it and pg_fly would create a second one.
// When the user's list is empty in an app that was there before this operation, the app's whole list is read:
// a machine whose env names the user is adopted (pg_fly's config, the tier's guest and the current image, in one
// update), others with that env are duplicates, and the rest belong to nobody and are reported, not touched.
#include "pgfly/core/reconcile.hpp"

#include <utility>

#include "pgfly/core/json.hpp"

#include "pgfly/core/cpp_only.hpp"

namespace pgfly {
namespace reconcile {

using fly::OutcomeKind;
using machine::GuestJson;
using machine::IsLiveMachine;
using machine::MachineFacts;
using machine::MachineList;
using machine::MachinesFromList;

Step
Operation::FindUnmarkedMachine(Step step, const fly::Outcome &user_list) {
	looked_for_unmarked_ = true;
	user_list_ = user_list;
	step.request = fly::ListMachinesRequest(app_->name, {});
	phase_ = Phase::kFindUnmarkedMachine;
	return step;
}

Step
Operation::OnFindUnmarkedMachine(const fly::Outcome &outcome) {
	if (outcome.kind != OutcomeKind::kSuccess) {
		return Unexpected(outcome, "list_machines");
	}
	MachineList list = MachinesFromList(outcome);
	if (!list.problem.empty()) {
		return Unexpected(Malformed(outcome, list.problem), "list_machines");
	}
	Step step;
	std::vector<MachineFacts> users;
	for (auto &machine : list.machines) {
		if (!IsLiveMachine(machine.state)) {
			continue;
		}
		const bool ours = machine.metadata_user_id == target_.user_id;
		if (ours || (machine.metadata_user_id.empty() && machine.env_user_id == target_.user_id)) {
			users.push_back(std::move(machine));
		} else {
			step.orphan_machines.push_back(OrphanMachine{app_->name, machine.id, machine.env_user_id});
		}
	}
	// Back to the user's (empty) list: whatever happens next (a create, a wait for one sent earlier) goes on from
	// there, and a retry asks for that list again.
	phase_ = Phase::kFindMachine;
	last_request_ = UserMachinesRequest();
	if (users.empty()) {
		return UseMachine(std::move(step), user_list_);
	}
	// Keep a started machine in the target region if there is one, else any in the region; the others go as
	// duplicates. With none in the region, every one is replaced, as a machine of pg_fly's would be.
	auto rank = [&](const MachineFacts &machine) {
		const bool in_region = target_.region.empty() || machine.region.empty() || machine.region == target_.region;
		return (in_region ? 2 : 0) + (machine.state == "started" ? 1 : 0);
	};
	size_t keep = 0;
	for (size_t i = 1; i < users.size(); i++) {
		if (rank(users[i]) > rank(users[keep])) {
			keep = i;
		}
	}
	extra_machines_.clear();
	for (size_t i = 0; i < users.size(); i++) {
		if (i != keep || rank(users[i]) < 2) {
			extra_machines_.push_back(users[i].id);
		}
	}
	if (rank(users[keep]) < 2) {
		adopted_.reset();
	} else {
		adopted_ = users[keep];
		adopting_unmarked_ = adopted_->metadata_user_id.empty();
	}
	return AdoptMachine(std::move(step));
}

// Duplicates are gone: give the machine pg_fly's config (metadata, the tier's guest, the current image and the
// operator's env) in one update, which Fly applies to a running machine by restarting it.
Step
Operation::AdoptUnmarkedMachine(Step step) {
	adopting_unmarked_ = false;
	const MachineFacts &chosen = *adopted_;
	app_->machine_id = chosen.id;
	AppChange change = step.app.value_or(AppChange{});
	change.machine_id = chosen.id;
	step.app = change;
	Json details = Json::Object();
	details.Set("machine_id", Json::String(chosen.id));
	details.Set("state", Json::String(chosen.state));
	details.Set("from_guest", GuestJson(chosen.guest));
	details.Set("to_guest", GuestJson(target_.guest));
	details.Set("from_image", Json::String(chosen.image));
	details.Set("to_image", Json::String(Image()));
	step.events.push_back(MakeEvent("machine_adopted", details));
	step.request = fly::UpdateMachineRequest(app_->name, chosen.id, Spec());
	phase_ = Phase::kUpdateMachine;
	return step;
}

} // namespace reconcile
} // namespace pgfly

// Adopting the machine the previous system left in a user's app: it carries the user's id in its env (USER_ID)
// but none of pg_fly's metadata, so the metadata-filtered list misses it and pg_fly would create a second one.
// When the user's list is empty in an app that was there before this operation, the app's whole list is read:
// a machine whose env names the user is adopted, wherever it runs (pg_fly's config, the tier's guest and the
// current image, in one update); other machines are reported, not touched.
#include "pgfly/core/reconcile.hpp"

#include <utility>

#include "pgfly/core/text.hpp"

#include "pgfly/core/cpp_only.hpp"

namespace pgfly {
namespace reconcile {

using fly::OutcomeKind;
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
		// A uuid written in capitals by the previous system is the same user.
		if (ours || (machine.metadata_user_id.empty() && EqualsIgnoreCase(machine.env_user_id, target_.user_id))) {
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
	// Adopt one machine, wherever it runs: a started one in the policy's (or a fallback) region first. It is the
	// user's, with whatever state it holds: it is never replaced for its region here (a later change of the
	// policy's region does that explicitly). Other machines of pg_fly's for this user are duplicates; other
	// machines the previous system left for this user are reported with the orphans, never destroyed unasked.
	auto rank = [&](const MachineFacts &machine) {
		return (AcceptableRegion(machine.region) ? 2 : 0) + (machine.state == "started" ? 1 : 0);
	};
	size_t keep = 0;
	for (size_t i = 1; i < users.size(); i++) {
		if (rank(users[i]) > rank(users[keep])) {
			keep = i;
		}
	}
	extra_machines_.clear();
	for (size_t i = 0; i < users.size(); i++) {
		if (i == keep) {
			continue;
		}
		if (users[i].metadata_user_id == target_.user_id) {
			extra_machines_.push_back(users[i].id);
		} else {
			step.orphan_machines.push_back(OrphanMachine{app_->name, users[i].id, users[i].env_user_id});
		}
	}
	adopted_ = users[keep];
	adopting_unmarked_ = adopted_->metadata_user_id.empty();
	return AdoptMachine(std::move(step));
}

// Duplicates are gone: give the machine pg_fly's config (metadata, the tier's guest, the current image and the
// operator's env) in one update, which Fly applies to a running machine by restarting it.
Step
Operation::AdoptUnmarkedMachine(Step step) {
	adopting_unmarked_ = false;
	const MachineFacts &chosen = *adopted_;
	app_->machine_id = chosen.id;
	machine_region_ = chosen.region;
	AppChange change = step.app.value_or(AppChange{});
	change.machine_id = chosen.id;
	step.app = change;
	return UpdateToSpec(std::move(step), chosen, "machine_adopted", true);
}

} // namespace reconcile
} // namespace pgfly

// The runner's orphan jobs: listing the organization's apps on request, recording the orphans among them, and
// deleting those an operator marked for deletion.
#include "pgfly/pgfly_job_runner.hpp"

#include <algorithm>

#include "pgfly/core/app_naming.hpp"
#include "pgfly/core/machine_spec.hpp"
#include "pgfly/core/text.hpp"
#include "pgfly/pgfly_health_store.hpp"
#include "pgfly/pg/transaction.hpp"

namespace pgfly {

// A pass over the organization's apps, when fly.find_orphan_apps() asked for one: list them, then record
// those with pg_fly's prefix that no live row owns (OnOrphanAnswer).
void
JobRunner::StartOrphanPass() {
	if (configuration_problem_.empty() && pg_atomic_exchange_u32(&shared_->orphan_pass_requested, 0) != 0) {
		pending_.push_back(PendingRequest{Now(), OrphanJob{}, fly::ListAppsRequest(settings_.org_slug)});
		StartOrphanMachineDeletions();
	}
}

void
JobRunner::OnOrphanAnswer(const OrphanJob &work, const fly::Outcome &outcome) {
	if (!work.machine_id.empty()) {
		OnOrphanMachineDeleted(work, outcome);
		return;
	}
	if (work.check.app_id != 0) {
		OnOrphanMachineList(work, outcome);
		return;
	}
	try {
		if (!work.app_name.empty()) {
			const bool gone = outcome.kind == fly::OutcomeKind::kSuccess || outcome.kind == fly::OutcomeKind::kNotFound;
			pg::RunInTransaction("pg_fly: recording an orphan deletion", [&](pg::SpiConnection &spi) {
				RecordOrphanDeleted(spi, work.app_name, gone ? "" : outcome.message);
			});
			return;
		}
		if (outcome.kind != fly::OutcomeKind::kSuccess) {
			Log("listing the organization's apps failed: " + outcome.message);
			return;
		}
		std::vector<std::pair<std::string, std::string>> ours;
		const Json apps = outcome.body.Get("apps");
		for (size_t i = 0; i < apps.Size(); i++) {
			const std::string name = apps.At(i).GetString("name").value_or("");
			if (name.empty() || settings_.app_name_prefix.empty() ||
			    name.compare(0, settings_.app_name_prefix.size(), settings_.app_name_prefix) != 0) {
				continue;
			}
			const std::string id = apps.At(i).GetString("id").value_or("");
			std::optional<std::string> problem = AppNameProblem(name);
			if (!problem && !id.empty()) {
				problem = AppIdProblem(id);
			}
			if (problem) {
				// Fly's text goes into the log: no control character may start a line of its own.
				std::replace_if(
					problem->begin(), problem->end(),
					[](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; }, '?');
				Log("an app in the organization's list is not recorded as an orphan: " + *problem);
				continue;
			}
			ours.emplace_back(name, id);
		}
		std::vector<std::string> to_delete;
		pg::RunInTransaction("pg_fly: recording orphan apps",
		                     [&](pg::SpiConnection &spi) { to_delete = RecordOrphans(spi, settings_.org_slug, ours); });
		for (const auto &name : to_delete) {
			pending_.push_back(PendingRequest{Now(), OrphanJob{name}, fly::DeleteAppRequest(name)});
		}
		StartOrphanMachineLists();
	} catch (const std::exception &e) {
		Log(std::string("recording orphan apps failed: ") + e.what());
	}
}

void
JobRunner::StartOrphanMachineDeletions() {
	try {
		std::vector<std::pair<std::string, std::string>> machines;
		pg::RunInTransaction("pg_fly: reading orphan machines to delete",
		                     [&](pg::SpiConnection &spi) { machines = OrphanMachinesToDelete(spi); });
		for (const auto &[app, id] : machines) {
			// Whoever can write the table must not steer the request elsewhere.
			if (AppNameProblem(app) || !machine::IsUsableMachineId(id)) {
				Log("an orphan machine marked for deletion is skipped: its app name or machine id is not usable");
				continue;
			}
			// Forced: the machine is running (reported, never stopped), and it is to go.
			pending_.push_back(PendingRequest{Now(), OrphanJob{app, id}, fly::DeleteMachineRequest(app, id, true)});
		}
	} catch (const std::exception &e) {
		Log(std::string("reading orphan machines to delete failed: ") + e.what());
	}
}

void
JobRunner::OnOrphanMachineDeleted(const OrphanJob &work, const fly::Outcome &outcome) {
	try {
		const bool gone = outcome.kind == fly::OutcomeKind::kSuccess || outcome.kind == fly::OutcomeKind::kNotFound;
		pg::RunInTransaction("pg_fly: recording an orphan machine deletion", [&](pg::SpiConnection &spi) {
			RecordOrphanMachineDeleted(spi, work.app_name, work.machine_id, gone ? "" : outcome.message);
		});
	} catch (const std::exception &e) {
		Log(std::string("recording an orphan machine deletion failed: ") + e.what());
	}
}

void
JobRunner::StartOrphanMachineLists() {
	try {
		std::vector<OrphanMachineCheck> apps;
		pg::RunInTransaction("pg_fly: reading live apps for orphan machines",
		                     [&](pg::SpiConnection &spi) { apps = LoadOrphanMachineChecks(spi); });
		// Paced, two lists a second: thousands of apps at once would queue behind the connection limit, where
		// libcurl counts the wait against each request's timeout, failing reconciles and health checks too.
		constexpr double kListSpacingSeconds = 0.5;
		double due = Now();
		for (auto &app : apps) {
			if (AppNameProblem(app.app_name)) {
				continue; // never put into a path what Fly would not accept as a name
			}
			fly::Request request = fly::ListMachinesRequest(app.app_name, {});
			pending_.push_back(PendingRequest{due, OrphanJob{"", "", std::move(app)}, std::move(request)});
			due += kListSpacingSeconds;
		}
	} catch (const std::exception &e) {
		Log(std::string("reading live apps for orphan machines failed: ") + e.what());
	}
}

// A machine of the app is the user's when pg_fly's metadata names the user, or when it has none and the env's
// USER_ID does (provisioning's rule, UseMachine and OnFindUnmarkedMachine); any other is reported. The user's
// machines are left to provisioning and health checks.
void
JobRunner::OnOrphanMachineList(const OrphanJob &work, const fly::Outcome &outcome) {
	try {
		if (outcome.kind != fly::OutcomeKind::kSuccess) {
			if (outcome.kind != fly::OutcomeKind::kNotFound) {
				Log("listing the machines of " + work.check.app_name + " failed: " + outcome.message);
			}
			return;
		}
		const machine::MachineList list = machine::MachinesFromList(outcome);
		if (!list.problem.empty()) {
			Log("the machines of " + work.check.app_name + " are not checked for orphans: " + list.problem);
			return;
		}
		std::vector<reconcile::OrphanMachine> orphans;
		std::vector<std::string> listed;
		for (const auto &machine : list.machines) {
			if (!machine::IsLiveMachine(machine.state)) {
				continue;
			}
			listed.push_back(machine.id);
			const std::string &user = work.check.user_id;
			const bool users = machine.metadata_user_id == user ||
			                   (machine.metadata_user_id.empty() && EqualsIgnoreCase(machine.env_user_id, user));
			if (!users) {
				orphans.push_back(reconcile::OrphanMachine{work.check.app_name, machine.id, machine.env_user_id});
			}
		}
		pg::RunInTransaction("pg_fly: recording orphan machines", [&](pg::SpiConnection &spi) {
			RecordOrphanMachines(spi, work.check.app_id, work.check.user_id, orphans);
			RecordOrphanMachinesGone(spi, work.check.app_name, listed);
		});
	} catch (const std::exception &e) {
		Log(std::string("recording orphan machines failed: ") + e.what());
	}
}

} // namespace pgfly

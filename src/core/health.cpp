#include "pgfly/core/health.hpp"

#include <utility>

#include "pgfly/core/app_naming.hpp"
#include "pgfly/core/machine_spec.hpp"
#include "pgfly/core/text.hpp"

#include "pgfly/core/cpp_only.hpp"

namespace pgfly {

namespace {

constexpr size_t kMaxReportedLength = 100;

std::string
Shortened(const std::string &text) {
	return TruncateUtf8(text, kMaxReportedLength);
}

} // namespace

const char *
HealthName(Health health) {
	switch (health) {
	case Health::kHealthy:
		return "healthy";
	case Health::kUnhealthy:
		return "unhealthy";
	case Health::kUnknown:
		break;
	}
	return "unknown";
}

HealthVerdict
EvaluateMachineHealth(const fly::Outcome &outcome, bool created_recently) {
	HealthVerdict verdict;
	if (outcome.kind == fly::OutcomeKind::kNotFound && created_recently) {
		verdict.detail = "the machine was created moments ago and Fly does not show it yet";
		return verdict;
	}
	if (outcome.kind == fly::OutcomeKind::kNotFound) {
		verdict.health = Health::kUnhealthy;
		verdict.action = HealthAction::kReprovision;
		verdict.detail = "the machine no longer exists on Fly";
		return verdict;
	}
	if (outcome.kind != fly::OutcomeKind::kSuccess) {
		verdict.detail = outcome.message;
		return verdict;
	}
	verdict.state = outcome.body.GetString("state").value_or("");
	if (verdict.state == "destroyed" || verdict.state == "destroying") {
		verdict.health = Health::kUnhealthy;
		verdict.action = HealthAction::kReprovision;
		verdict.detail = "the machine is " + verdict.state;
		return verdict;
	}
	if (verdict.state == "stopped" || verdict.state == "suspended" || verdict.state == "failed") {
		verdict.health = Health::kUnhealthy;
		verdict.action = HealthAction::kStartMachine;
		verdict.detail = "the machine is " + verdict.state;
		return verdict;
	}
	if (verdict.state != "started") {
		// Starting, updating, replacing: in transition; judge it next time.
		verdict.detail = "the machine is " + verdict.state;
		return verdict;
	}
	const Json checks = outcome.body.Get("checks");
	size_t passing = 0;
	for (size_t i = 0; i < checks.Size(); i++) {
		const Json check = checks.At(i);
		const std::string status = check.GetString("status").value_or("");
		if (status == "passing") {
			passing++;
		} else if (verdict.detail.empty()) {
			verdict.detail =
				check.GetString("name").value_or("a check") + " is " + (status.empty() ? "unknown" : status);
		}
	}
	if (passing == checks.Size()) {
		verdict.health = Health::kHealthy;
		verdict.detail = std::to_string(passing) + " of " + std::to_string(checks.Size()) + " checks passing";
	} else {
		verdict.health = Health::kUnhealthy;
	}
	return verdict;
}

HealthVerdict
EvaluateAppHealthEndpoint(const fly::Outcome &outcome, const std::string &user_id) {
	HealthVerdict verdict;
	verdict.state = "started";
	if (outcome.kind != fly::OutcomeKind::kSuccess) {
		verdict.health = Health::kUnhealthy;
		verdict.detail = "the health endpoint did not answer well: " + outcome.message;
		return verdict;
	}
	// Quoted in the event below: only as much as identifies the value.
	const std::string run_mode = Shortened(outcome.body.GetString("run_mode").value_or(""));
	const std::string reported_user = Shortened(outcome.body.GetString("user_id").value_or(""));
	if (run_mode != "user_dedicated") {
		verdict.health = Health::kUnhealthy;
		verdict.detail = "the health endpoint reports run_mode \"" + run_mode + "\", not user_dedicated";
	} else if (reported_user != user_id) {
		verdict.health = Health::kUnhealthy;
		verdict.detail = "the health endpoint reports user_id \"" + reported_user + "\", not this app's user";
	} else {
		verdict.health = Health::kHealthy;
		verdict.detail = "checks passing; health endpoint reports user_dedicated for this user";
		if (auto traders = outcome.body.GetInteger("trader_count")) {
			verdict.detail += " (" + std::to_string(*traders) + " traders)";
		}
	}
	return verdict;
}

DuplicateMachines
FindDuplicateMachines(const fly::Outcome &outcome, const std::string &recorded_machine_id, const std::string &user_id) {
	DuplicateMachines result;
	if (outcome.kind != fly::OutcomeKind::kSuccess) {
		result.problem = outcome.message;
		return result;
	}
	machine::MachineList list = machine::MachinesFromList(outcome);
	if (!list.problem.empty()) {
		result.problem = list.problem;
		return result;
	}
	bool recorded_live = false;
	std::vector<std::string> others;
	for (const auto &machine : list.machines) {
		if (!machine::IsLiveMachine(machine.state)) {
			continue;
		}
		if (machine.id == recorded_machine_id) {
			recorded_live = true;
		} else if (machine.metadata_user_id == user_id) {
			// Only machines that say they are this user's: were Fly's metadata filter ever ignored, the rest of
			// the app's machines (the previous system's, reported orphans) are not duplicates to destroy.
			others.push_back(machine.id);
		}
	}
	if (!recorded_live) {
		result.problem = "the recorded machine is not among the user's live machines";
		return result;
	}
	result.extra = std::move(others);
	return result;
}

ListedHealth
EvaluateListedMachineHealth(const fly::Outcome &outcome, const std::string &recorded_machine_id,
                            const std::string &user_id) {
	ListedHealth result;
	if (outcome.kind == fly::OutcomeKind::kNotFound) {
		result.ask_machine = true;
		return result;
	}
	if (outcome.kind != fly::OutcomeKind::kSuccess) {
		result.verdict = EvaluateMachineHealth(outcome);
		return result;
	}
	const machine::MachineList list = machine::MachinesFromList(outcome);
	if (!list.problem.empty()) {
		result.ask_machine = true;
		return result;
	}
	// MachinesFromList keeps every entry, in order.
	for (size_t i = 0; i < list.machines.size(); i++) {
		if (list.machines[i].id != recorded_machine_id) {
			continue;
		}
		fly::Outcome entry = outcome;
		entry.body = outcome.body.At(i);
		result.verdict = EvaluateMachineHealth(entry);
		result.duplicates = FindDuplicateMachines(outcome, recorded_machine_id, user_id).extra;
		return result;
	}
	result.ask_machine = true;
	return result;
}

std::optional<std::string>
AppHealthUrl(const std::string &url_template, const std::string &app_name) {
	if (AppNameProblem(app_name)) {
		return std::nullopt;
	}
	std::string url = url_template;
	const std::string placeholder = "{app}";
	for (size_t at = url.find(placeholder); at != std::string::npos; at = url.find(placeholder, at + app_name.size())) {
		url.replace(at, placeholder.size(), app_name);
	}
	return url;
}

} // namespace pgfly

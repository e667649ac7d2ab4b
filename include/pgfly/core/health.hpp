// What a machine's answer says about a user's app: healthy when the machine is started and every check Fly
// reports passes; what to do when it is not (start a machine that stopped; re-provision an app that vanished).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "pgfly/core/fly_outcome.hpp"

namespace pgfly {

enum class Health { kHealthy, kUnhealthy, kUnknown };
const char *HealthName(Health health);

enum class HealthAction {
	kNone,
	kStartMachine, // it stopped without pg_fly asking
	kReprovision,  // the machine (or the whole app) is gone
};

struct HealthVerdict {
	Health health = Health::kUnknown;
	HealthAction action = HealthAction::kNone;
	std::string state;
	// e.g. "2 of 2 checks passing" or "servicecheck-00-http-8080 is critical"; never a secret.
	std::string detail;
};

// From the answer to GET /v1/apps/{app}/machines/{id}. A transient failure tells nothing (kUnknown), nor does a
// 404 about a machine created less than fly.create_settle_time ago (`created_recently`): Fly may not show it yet.
HealthVerdict EvaluateMachineHealth(const fly::Outcome &outcome, bool created_recently = false);

// From the list of an app's machines that carry the user's metadata: the live ones besides the recorded machine
// (a create whose answer was lost, or one made behind pg_fly's back), to destroy. Nothing when the answer is not
// a usable list, or when the recorded machine is not live in it: which machine to keep is then a reconcile's
// decision, not a health check's.
struct DuplicateMachines {
	std::vector<std::string> extra;
	// Why nothing can be decided ("" when the list was usable).
	std::string problem;
};
DuplicateMachines FindDuplicateMachines(const fly::Outcome &outcome, const std::string &recorded_machine_id,
                                        const std::string &user_id);

// A routine check in one request: the list of the app's machines that carry the user's metadata (not a summary:
// each entry has its `state` and `checks[]`, as GET machine gives them). The recorded machine's entry gives its
// health, and the user's other live machines are the duplicates (FindDuplicateMachines). When the list cannot say
// (the app is not found, the list is unusable, or the recorded machine is not in it: gone, or a create the list
// does not show yet) the machine itself is to be asked (ask_machine), which tells a vanished machine from one
// the list lags behind. Any other failure tells nothing (kUnknown), as for GET machine.
struct ListedHealth {
	bool ask_machine = false;
	HealthVerdict verdict;
	std::vector<std::string> duplicates;
};
ListedHealth EvaluateListedMachineHealth(const fly::Outcome &outcome, const std::string &recorded_machine_id,
                                         const std::string &user_id);

// From the app's own health endpoint (the user app's backend reports run_mode, user_id and trader_count): healthy
// only when it answers and runs in user_dedicated mode for this very user, which proves that the machine serves
// one user and no other.
HealthVerdict EvaluateAppHealthEndpoint(const fly::Outcome &outcome, const std::string &user_id);

// The health URL for an app: every "{app}" in the template replaced by the app's name. Nothing for a name Fly
// would not accept (AppNameProblem): whoever can write fly.user_fly_apps must not be able to steer the request
// to another host or path ("evil.example", "..").
std::optional<std::string> AppHealthUrl(const std::string &url_template, const std::string &app_name);

} // namespace pgfly

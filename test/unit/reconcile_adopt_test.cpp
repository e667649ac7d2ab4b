// Adopting the previous system's machine (env USER_ID, no pg_fly metadata) and reporting machines that belong to
// nobody (src/core/reconcile_adopt.cpp).
#include <gtest/gtest.h>

#include <cctype>

#include <string>
#include <utility>
#include <vector>

#include "pgfly/core/app_naming.hpp"
#include "pgfly/core/json.hpp"
#include "pgfly/core/reconcile.hpp"

namespace pgfly {
namespace reconcile {
namespace {

using fly::Endpoint;
using fly::OutcomeKind;
using Query = std::vector<std::pair<std::string, std::string>>;

const std::string kUser = "3f2504e0-4f89-11d3-9a0c-0305e82c3301";
const std::string kOtherUser = "11111111-2222-4333-8444-555555555555";
const std::string kOrg = "acme";
const std::string kImage = "registry.fly.io/vyx@sha256:0123abcd";
const std::string kOldImage = "registry.fly.io/vyx-app:legacy";
const fly::Guest kGuest{"performance", 2, 4096};
const fly::Guest kOldGuest{"shared", 1, 256};

std::string
AppName() {
	return AppNameCandidate("vyx-user-", kUser, 0).value();
}

Operation
MakeOperation() {
	Settings settings;
	settings.org_slug = kOrg;
	settings.app_name_prefix = "vyx-user-";
	settings.image = kImage;
	Target target;
	target.user_id = kUser;
	target.present = true;
	target.tier = "pro";
	target.guest = kGuest;
	target.region = "ams";
	target.generation = 3;
	target.operation_id = "3-1";
	return Operation(target, std::nullopt, settings);
}

fly::Outcome
Out(OutcomeKind kind, long http_status, const std::string &body = "", const std::string &fly_status = "") {
	fly::Outcome outcome;
	outcome.kind = kind;
	outcome.http_status = http_status;
	outcome.fly_status = fly_status;
	outcome.message = "test: HTTP " + std::to_string(http_status);
	if (!body.empty()) {
		JsonParseResult parsed = ParseJson(body);
		EXPECT_TRUE(parsed.ok()) << parsed.error << " in " << body;
		outcome.body = parsed.value;
	}
	return outcome;
}

fly::Outcome
Ok(const std::string &body) {
	return Out(OutcomeKind::kSuccess, 200, body);
}

// A machine as Fly lists it; env_user and meta_user empty leave the key out.
std::string
Machine(const std::string &id, const std::string &state, const std::string &env_user, const std::string &meta_user,
        const std::string &region = "ams") {
	std::string env =
		"{\"RUN_MODE\":\"user_dedicated\"" + (env_user.empty() ? "" : ",\"USER_ID\":\"" + env_user + "\"") + "}";
	std::string meta = meta_user.empty() ? "{}" : "{\"pg_fly_user_id\":\"" + meta_user + "\"}";
	return "{\"id\":\"" + id + "\",\"state\":\"" + state + "\",\"region\":\"" + region + "\",\"config\":{\"image\":\"" +
	       kOldImage + "\",\"guest\":{\"cpu_kind\":\"shared\",\"cpus\":1,\"memory_mb\":256},\"env\":" + env +
	       ",\"metadata\":" + meta + "}}";
}

std::string
List(const std::vector<std::string> &machines) {
	std::string text = "[";
	for (size_t i = 0; i < machines.size(); i++) {
		text += (i ? "," : "") + machines[i];
	}
	return text + "]";
}

std::vector<std::string>
Types(const Step &step) {
	std::vector<std::string> types;
	for (const auto &event : step.events) {
		types.push_back(event.type);
	}
	return types;
}

Json
Details(const Step &step, const std::string &type) {
	for (const auto &event : step.events) {
		if (event.type == type) {
			return ParseJson(event.details_json).value;
		}
	}
	ADD_FAILURE() << "no " << type << " event";
	return Json::Object();
}

void
ExpectRequest(const Step &step, Endpoint endpoint, const std::string &method, const std::string &path,
              const Query &query = {}) {
	ASSERT_TRUE(step.request.has_value());
	EXPECT_EQ(fly::EndpointName(step.request->endpoint), std::string(fly::EndpointName(endpoint)));
	EXPECT_EQ(step.request->method, method);
	EXPECT_EQ(step.request->path, path);
	EXPECT_EQ(step.request->query, query);
}

std::string
Path() {
	return "/v1/apps/" + AppName() + "/machines";
}

Query
UserFilter() {
	return {{"metadata.pg_fly_user_id", kUser}};
}

// The app name is taken by our own organization (the previous system's app): reused, then the user's list is
// asked for and answered empty.
Step
DriveReusedAppToEmptyUserList(Operation &operation) {
	operation.Start();
	Step step = operation.OnOutcome(Out(OutcomeKind::kNameTaken, 422, "", "name_taken"));
	step = operation.OnOutcome(
		Ok("{\"id\":\"app-1\",\"name\":\"" + AppName() + "\",\"organization\":{\"slug\":\"" + kOrg + "\"}}"));
	EXPECT_EQ(Types(step), std::vector<std::string>{"app_reused"});
	ExpectRequest(step, Endpoint::kListMachines, "GET", Path(), UserFilter());
	return operation.OnOutcome(Ok("[]"));
}

TEST(ReconcileAdopt, EnvMatchingMachineIsAdoptedInOneUpdate) {
	Operation operation = MakeOperation();
	Step step = DriveReusedAppToEmptyUserList(operation);
	// The whole list, without a metadata filter.
	ExpectRequest(step, Endpoint::kListMachines, "GET", Path());
	step = operation.OnOutcome(Ok(List({Machine("m1", "started", kUser, "")})));
	EXPECT_EQ(Types(step), std::vector<std::string>{"machine_adopted"});
	EXPECT_TRUE(step.orphan_machines.empty());
	Json adopted = Details(step, "machine_adopted");
	EXPECT_EQ(adopted.GetString("machine_id"), "m1");
	EXPECT_EQ(adopted.GetString("from_image"), kOldImage);
	EXPECT_EQ(adopted.GetString("to_image"), kImage);
	EXPECT_EQ(adopted.Get("from_guest").GetInteger("memory_mb"), 256);
	EXPECT_EQ(adopted.Get("to_guest").GetInteger("memory_mb"), 4096);
	ASSERT_TRUE(step.app.has_value());
	EXPECT_EQ(step.app->machine_id, "m1");
	ExpectRequest(step, Endpoint::kUpdateMachine, "POST", Path() + "/m1");
	Json config = ParseJson(step.request->body_json.value_or("{}")).value.Get("config");
	EXPECT_EQ(config.Get("metadata").GetString("pg_fly_user_id"), kUser);
	EXPECT_EQ(config.GetString("image"), kImage);
	EXPECT_EQ(config.Get("guest").GetInteger("memory_mb"), 4096);
	EXPECT_EQ(config.Get("env").GetString("USER_ID"), kUser);
	// Updated (Fly restarts a running machine): wait for it, then done.
	step = operation.OnOutcome(Ok(Machine("m1", "replacing", kUser, kUser)));
	EXPECT_EQ(Types(step), std::vector<std::string>{"machine_updated"});
	ExpectRequest(step, Endpoint::kWaitMachine, "GET", Path() + "/m1/wait", {{"state", "started"}, {"timeout", "60"}});
	step = operation.OnOutcome(Ok("{\"ok\":true,\"state\":\"started\"}"));
	EXPECT_EQ(step.completion, Completion::kDone);
	EXPECT_EQ(step.app->machine_id, "m1");
}

TEST(ReconcileAdopt, AStartedMachineIsPreferredOtherLegacyOnesAreReportedNotDestroyed) {
	Operation operation = MakeOperation();
	DriveReusedAppToEmptyUserList(operation);
	// m1 and m2 are the previous system's (env only), m3 carries pg_fly's metadata (a duplicate of ours).
	Step step = operation.OnOutcome(Ok(List({Machine("m1", "stopped", kUser, ""), Machine("m2", "started", kUser, ""),
	                                         Machine("m3", "stopped", "", kUser)})));
	ASSERT_EQ(step.orphan_machines.size(), 1u);
	EXPECT_EQ(step.orphan_machines[0].machine_id, "m1");
	EXPECT_EQ(step.orphan_machines[0].user_id_env, kUser);
	EXPECT_EQ(Types(step), std::vector<std::string>{"duplicate_machine_destroyed"});
	EXPECT_EQ(Details(step, "duplicate_machine_destroyed").GetString("machine_id"), "m3");
	EXPECT_EQ(Details(step, "duplicate_machine_destroyed").GetString("kept_machine_id"), "m2");
	ExpectRequest(step, Endpoint::kDeleteMachine, "DELETE", Path() + "/m3", {{"force", "true"}});
	step = operation.OnOutcome(Ok("{\"ok\":true}"));
	EXPECT_EQ(Types(step), std::vector<std::string>{"machine_adopted"});
	ExpectRequest(step, Endpoint::kUpdateMachine, "POST", Path() + "/m2");
}

TEST(ReconcileAdopt, MachinesOfNobodyAreReportedAndLeftAlone) {
	Operation operation = MakeOperation();
	DriveReusedAppToEmptyUserList(operation);
	Step step =
		operation.OnOutcome(Ok(List({Machine("m1", "started", kOtherUser, ""), Machine("m2", "started", "", ""),
	                                 Machine("m3", "started", kUser, ""), Machine("m4", "started", kUser, kOtherUser),
	                                 Machine("m5", "destroyed", "", "")})));
	ASSERT_EQ(step.orphan_machines.size(), 3u);
	EXPECT_EQ(step.orphan_machines[0].machine_id, "m1");
	EXPECT_EQ(step.orphan_machines[0].user_id_env, kOtherUser);
	EXPECT_EQ(step.orphan_machines[0].app_name, AppName());
	EXPECT_EQ(step.orphan_machines[1].machine_id, "m2");
	EXPECT_EQ(step.orphan_machines[1].user_id_env, "");
	EXPECT_EQ(step.orphan_machines[2].machine_id, "m4"); // another user's metadata: not this user's to adopt
	// Only the user's machine is touched.
	EXPECT_EQ(Types(step), std::vector<std::string>{"machine_adopted"});
	ExpectRequest(step, Endpoint::kUpdateMachine, "POST", Path() + "/m3");
}

TEST(ReconcileAdopt, NoEnvMatchCreatesAMachineAndReportsTheOthers) {
	Operation operation = MakeOperation();
	DriveReusedAppToEmptyUserList(operation);
	Step step = operation.OnOutcome(Ok(List({Machine("m1", "started", kOtherUser, "")})));
	ASSERT_EQ(step.orphan_machines.size(), 1u);
	ExpectRequest(step, Endpoint::kCreateMachine, "POST", Path());
	ASSERT_TRUE(step.app.has_value());
	EXPECT_EQ(step.app->pending_create, "3-1");
}

TEST(ReconcileAdopt, AnEnvMatchInAnotherRegionIsAdoptedWhereItRuns) {
	// The user's machine, with whatever it holds, is never destroyed to move it: it is adopted in its region.
	Operation operation = MakeOperation();
	DriveReusedAppToEmptyUserList(operation);
	Step step = operation.OnOutcome(Ok(List({Machine("m1", "started", kUser, "", "sjc")})));
	EXPECT_EQ(Types(step), std::vector<std::string>{"machine_adopted"});
	EXPECT_TRUE(step.orphan_machines.empty());
	ExpectRequest(step, Endpoint::kUpdateMachine, "POST", Path() + "/m1");
}

TEST(ReconcileAdopt, ANewAppIsNotListedTwice) {
	Operation operation = MakeOperation();
	operation.Start();
	Step step = operation.OnOutcome(Out(OutcomeKind::kSuccess, 201, "{\"id\":\"app-1\"}"));
	EXPECT_EQ(step.request->endpoint, Endpoint::kGetApp); // until Fly shows the new app
	step = operation.OnOutcome(Ok("{\"id\":\"app-1\",\"organization\":{\"slug\":\"acme\"}}"));
	ExpectRequest(step, Endpoint::kListMachines, "GET", Path(), UserFilter());
	step = operation.OnOutcome(Ok("[]"));
	ExpectRequest(step, Endpoint::kCreateMachine, "POST", Path());
}

TEST(ReconcileAdopt, FailedWholeListIsRetriedAndAGarbledOneCreatesNothing) {
	Operation operation = MakeOperation();
	DriveReusedAppToEmptyUserList(operation);
	Step step = operation.OnOutcome(Out(OutcomeKind::kTransient, 503));
	EXPECT_TRUE(step.failed_attempt);
	ExpectRequest(step, Endpoint::kListMachines, "GET", Path());
	step = operation.OnOutcome(Ok("[{\"id\":\"../x\",\"state\":\"started\"}]"));
	EXPECT_TRUE(step.failed_attempt);
	ExpectRequest(step, Endpoint::kListMachines, "GET", Path());
	EXPECT_TRUE(step.orphan_machines.empty());
}

TEST(ReconcileAdopt, AnUnmarkedListIsReadOncePerOperation) {
	Operation operation = MakeOperation();
	DriveReusedAppToEmptyUserList(operation);
	Step step = operation.OnOutcome(Ok(List({Machine("m1", "started", kUser, "")})));
	ExpectRequest(step, Endpoint::kUpdateMachine, "POST", Path() + "/m1");
	operation.OnOutcome(Ok(Machine("m1", "started", kUser, kUser)));
	// The machine vanishes while awaited (past fly.create_settle_time, so the 404 is believed): the user's list is
	// read again, and an empty one now means create.
	operation.SetNow(61);
	step = operation.OnOutcome(Out(OutcomeKind::kNotFound, 404));
	ExpectRequest(step, Endpoint::kListMachines, "GET", Path(), UserFilter());
	step = operation.OnOutcome(Ok("[]"));
	ExpectRequest(step, Endpoint::kCreateMachine, "POST", Path());
}

TEST(ReconcileAdopt, AUserIdInCapitalsIsTheSameUser) {
	Operation operation = MakeOperation();
	DriveReusedAppToEmptyUserList(operation);
	std::string upper = kUser;
	for (char &c : upper) {
		c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
	}
	Step step = operation.OnOutcome(Ok(List({Machine("m1", "started", upper, "")})));
	EXPECT_EQ(Types(step), std::vector<std::string>{"machine_adopted"});
	EXPECT_TRUE(step.orphan_machines.empty());
}

} // namespace
} // namespace reconcile
} // namespace pgfly

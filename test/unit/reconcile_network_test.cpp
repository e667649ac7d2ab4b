// Issue 14, points 3 and 4: each app on its own private network, and, with a service port, public addresses
// assigned once (listed first) before the machine is looked for.
#include "pgfly/core/reconcile.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "pgfly/core/app_naming.hpp"
#include "pgfly/core/json.hpp"

namespace pgfly {
namespace reconcile {
namespace {

using fly::Endpoint;
using fly::OutcomeKind;

const std::string kUser = "7d1c2f7e-5a4b-4c3d-9e8f-0a1b2c3d4e5f";
const std::string kOrg = "acme";
const std::string kPrefix = "vyx-user-";

std::string
Name(int attempt = 0) {
	return AppNameCandidate(kPrefix, kUser, attempt).value();
}

Settings
MakeSettings(int port = 0, bool shared_network = false) {
	Settings settings;
	settings.org_slug = kOrg;
	settings.app_name_prefix = kPrefix;
	settings.image = "registry.fly.io/vyx:1";
	settings.shared_network = shared_network;
	settings.service.internal_port = port;
	return settings;
}

Target
MakeTarget() {
	Target target;
	target.user_id = kUser;
	target.present = true;
	target.tier = "pro";
	target.region = "ams";
	target.generation = 3;
	target.operation_id = "3-1";
	return target;
}

fly::Outcome
Out(OutcomeKind kind, long http_status, const std::string &body = "") {
	fly::Outcome outcome;
	outcome.kind = kind;
	outcome.http_status = http_status;
	outcome.message = "test: HTTP " + std::to_string(http_status);
	if (!body.empty()) {
		JsonParseResult parsed = ParseJson(body);
		EXPECT_TRUE(parsed.ok()) << parsed.error;
		outcome.body = parsed.value;
	}
	return outcome;
}

fly::Outcome
Ok(const std::string &body, long http_status = 200) {
	return Out(OutcomeKind::kSuccess, http_status, body);
}

Json
Body(const Step &step) {
	EXPECT_TRUE(step.request && step.request->body_json);
	JsonParseResult parsed = ParseJson(step.request && step.request->body_json ? *step.request->body_json : "{}");
	EXPECT_TRUE(parsed.ok());
	return parsed.value;
}

Endpoint
Sent(const Step &step) {
	EXPECT_EQ(step.completion, Completion::kContinue);
	EXPECT_TRUE(step.request.has_value());
	return step.request ? step.request->endpoint : Endpoint::kAppHealth;
}

std::vector<std::string>
EventTypes(const Step &step) {
	std::vector<std::string> types;
	for (const auto &event : step.events) {
		types.push_back(event.type);
	}
	return types;
}

Json
Details(const Event &event) {
	return ParseJson(event.details_json).value;
}

std::string
AppText(const std::string &name) {
	return "{\"id\":\"app-1\",\"name\":\"" + name + "\",\"network\":\"default\",\"organization\":{\"slug\":\"" + kOrg +
	       "\"}}";
}

// The 201 to create_app, then the 200 to the look-up that waits until Fly shows the new app.
Step
Created(Operation &operation, const std::string &body) {
	Step step = operation.OnOutcome(Ok(body, 201));
	EXPECT_EQ(Sent(step), Endpoint::kGetApp);
	return operation.OnOutcome(Ok(AppText(Name(0))));
}

TEST(ReconcileNetwork, EachAppIsCreatedOnItsOwnNetworkByDefault) {
	Operation operation(MakeTarget(), std::nullopt, MakeSettings());
	Step step = operation.Start();
	ASSERT_EQ(Sent(step), Endpoint::kCreateApp);
	EXPECT_EQ(Body(step).GetString("network"), Name(0));
	// Another organization holds the name: the next name's network is named after it.
	step = operation.OnOutcome(Out(OutcomeKind::kNameTaken, 422, "{\"status\":\"name_taken\"}"));
	ASSERT_EQ(Sent(step), Endpoint::kGetApp);
	step = operation.OnOutcome(Out(OutcomeKind::kForbidden, 403, "{\"error\":\"unauthorized\"}"));
	ASSERT_EQ(Sent(step), Endpoint::kCreateApp);
	EXPECT_EQ(Body(step).GetString("name"), Name(1));
	EXPECT_EQ(Body(step).GetString("network"), Name(1));
}

TEST(ReconcileNetwork, SharedLeavesTheNetworkToFly) {
	Operation operation(MakeTarget(), std::nullopt, MakeSettings(0, true));
	Step step = operation.Start();
	ASSERT_EQ(Sent(step), Endpoint::kCreateApp);
	EXPECT_FALSE(Body(step).Get("network").HasValue());
}

TEST(ReconcileNetwork, WithoutAPortNoAddressIsListedNorAssigned) {
	Operation operation(MakeTarget(), std::nullopt, MakeSettings());
	operation.Start();
	Step step = Created(operation, "{\"id\":\"app-1\"}");
	EXPECT_EQ(Sent(step), Endpoint::kListMachines);
	step = operation.OnOutcome(Ok("[]"));
	ASSERT_EQ(Sent(step), Endpoint::kCreateMachine);
	EXPECT_FALSE(Body(step).Get("config").Get("services").HasValue());
	EXPECT_FALSE(Body(step).Get("config").Get("checks").HasValue());
}

TEST(ReconcileNetwork, WithAPortTheMissingAddressesAreAssignedOnTheAppsNetwork) {
	Operation operation(MakeTarget(), std::nullopt, MakeSettings(8080));
	operation.Start();
	Step step = Created(operation, "{\"id\":\"app-1\"}");
	ASSERT_EQ(Sent(step), Endpoint::kListIpAssignments);
	EXPECT_EQ(step.request->path, "/v1/apps/" + Name() + "/ip_assignments");
	// Only a private (Flycast) address and an egress one: neither serves the public.
	step = operation.OnOutcome(
		Ok("{\"ips\":[{\"ip\":\"fdaa:0:1::3\",\"shared\":false},{\"ip\":\"203.0.113.9\",\"egress\":true}]}"));
	ASSERT_EQ(Sent(step), Endpoint::kAssignIp);
	EXPECT_EQ(Body(step).GetString("type"), "shared_v4");
	EXPECT_EQ(Body(step).GetString("network"), Name());
	step = operation.OnOutcome(Ok("{\"ip\":\"192.0.2.7\",\"shared\":true}"));
	EXPECT_EQ(EventTypes(step), std::vector<std::string>{"ip_assigned"});
	EXPECT_EQ(Details(step.events[0]).GetString("type"), "shared_v4");
	EXPECT_EQ(Details(step.events[0]).GetString("ip"), "192.0.2.7");
	ASSERT_EQ(Sent(step), Endpoint::kAssignIp);
	EXPECT_EQ(Body(step).GetString("type"), "v6");
	step = operation.OnOutcome(Ok("{\"ip\":\"2001:db8::7\"}"));
	EXPECT_EQ(Details(step.events[0]).GetString("ip"), "2001:db8::7");
	ASSERT_EQ(Sent(step), Endpoint::kListMachines);
	step = operation.OnOutcome(Ok("[]"));
	ASSERT_EQ(Sent(step), Endpoint::kCreateMachine);
	const Json config = Body(step).Get("config");
	EXPECT_EQ(config.Get("services").At(0).GetInteger("internal_port"), 8080);
	EXPECT_EQ(config.Get("checks").Get("pg_fly_health").GetString("path"), "/health");
}

TEST(ReconcileNetwork, AReusedAppWithItsAddressesGetsNoneMore) {
	Operation operation(MakeTarget(), std::nullopt, MakeSettings(8080, true));
	Step step = operation.Start();
	EXPECT_FALSE(Body(step).Get("network").HasValue());
	operation.OnOutcome(Out(OutcomeKind::kNameTaken, 422, "{\"status\":\"name_taken\"}"));
	step = operation.OnOutcome(Ok(AppText(Name())));
	EXPECT_EQ(EventTypes(step), std::vector<std::string>{"app_reused"});
	ASSERT_EQ(Sent(step), Endpoint::kListIpAssignments);
	step = operation.OnOutcome(Ok("{\"ips\":[{\"ip\":\"192.0.2.7\",\"shared\":true},{\"ip\":\"2001:db8::7\"}]}"));
	EXPECT_TRUE(step.events.empty());
	EXPECT_EQ(Sent(step), Endpoint::kListMachines);
}

std::string
MachineText(const std::string &services_and_checks) {
	return "[{\"id\":\"m1\",\"state\":\"started\",\"region\":\"ams\",\"config\":{\"image\":\"registry.fly.io/"
	       "vyx:1\",\"guest\":{\"cpu_kind\":\"shared\",\"cpus\":1,\"memory_mb\":256}" +
	       services_and_checks + "}}]";
}

// A machine made before the port was set (or with another port or path) is updated in place to carry the service.
TEST(ReconcileNetwork, AMachineWithoutTheServiceIsUpdatedToCarryIt) {
	Target target = MakeTarget();
	target.guest = fly::Guest{"shared", 1, 256};
	const std::string served =
		",\"services\":[{\"protocol\":\"tcp\",\"internal_port\":8080}],\"checks\":{\"pg_fly_health\":{"
		"\"type\":\"http\",\"path\":\"/health\"}}";
	struct Case {
		int port;
		std::string config;
		bool update;
	};
	for (const Case &c : {Case{8080, "", true}, Case{8080, served, false}, Case{9090, served, true}, Case{0, "", false},
	                      Case{0, served, true}}) {
		Operation operation(target, std::nullopt, MakeSettings(c.port));
		operation.Start();
		Step step = Created(operation, "{}");
		if (c.port > 0) {
			step = operation.OnOutcome(Ok("{\"ips\":[{\"ip\":\"192.0.2.7\"},{\"ip\":\"2001:db8::7\"}]}"));
		}
		ASSERT_EQ(Sent(step), Endpoint::kListMachines);
		step = operation.OnOutcome(Ok(MachineText(c.config)));
		EXPECT_EQ(Sent(step), c.update ? Endpoint::kUpdateMachine : Endpoint::kWaitMachine) << c.port << c.config;
		if (c.update) {
			EXPECT_EQ(Body(step).Get("config").Get("services").HasValue(), c.port > 0);
		}
	}
}

TEST(ReconcileNetwork, OnlyTheMissingTypeIsAssignedAndWithoutANetworkWhenShared) {
	Operation operation(MakeTarget(), std::nullopt, MakeSettings(8080, true));
	operation.Start();
	Created(operation, "{}");
	Step step = operation.OnOutcome(Ok("{\"ips\":[{\"ip\":\"192.0.2.7\",\"shared\":true}]}"));
	ASSERT_EQ(Sent(step), Endpoint::kAssignIp);
	EXPECT_EQ(Body(step).GetString("type"), "v6");
	EXPECT_FALSE(Body(step).Get("network").HasValue());
}

TEST(ReconcileNetwork, AnAmbiguousAssignmentListsAgainInsteadOfAssigningTwice) {
	Operation operation(MakeTarget(), std::nullopt, MakeSettings(8080));
	operation.Start();
	Created(operation, "{}");
	Step step = operation.OnOutcome(Ok("{\"ips\":[]}"));
	ASSERT_EQ(Sent(step), Endpoint::kAssignIp);
	step = operation.OnOutcome(Out(OutcomeKind::kTransient, 503));
	EXPECT_TRUE(step.failed_attempt);
	EXPECT_EQ(EventTypes(step), std::vector<std::string>{"provision_attempt_failed"});
	ASSERT_EQ(Sent(step), Endpoint::kListIpAssignments);
	// The first one had landed: only the IPv6 is still missing.
	step = operation.OnOutcome(Ok("{\"ips\":[{\"ip\":\"192.0.2.7\",\"shared\":true}]}"));
	ASSERT_EQ(Sent(step), Endpoint::kAssignIp);
	EXPECT_EQ(Body(step).GetString("type"), "v6");
}

TEST(ReconcileNetwork, ARefusedAssignmentFailsAndAnUnusableListIsRetried) {
	Operation operation(MakeTarget(), std::nullopt, MakeSettings(8080));
	operation.Start();
	Created(operation, "{}");
	Step step = operation.OnOutcome(Ok("{\"ips\":\"none\"}"));
	EXPECT_TRUE(step.failed_attempt);
	ASSERT_EQ(Sent(step), Endpoint::kListIpAssignments);
	step = operation.OnOutcome(Ok("{\"ips\":[{\"shared\":true}]}"));
	EXPECT_TRUE(step.failed_attempt);
	step = operation.OnOutcome(Ok("{\"ips\":[]}"));
	ASSERT_EQ(Sent(step), Endpoint::kAssignIp);
	step = operation.OnOutcome(Out(OutcomeKind::kPermanent, 400, "{\"error\":\"invalid type\"}"));
	EXPECT_EQ(step.completion, Completion::kFailed);
	EXPECT_EQ(EventTypes(step), std::vector<std::string>{"provision_failed"});
	EXPECT_EQ(Details(step.events[0]).GetString("step"), "assign_ip");
}

} // namespace
} // namespace reconcile
} // namespace pgfly

#include "pgfly/core/reconcile.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "pgfly/core/app_naming.hpp"
#include "pgfly/core/json.hpp"
#include "pgfly/core/secrets.hpp"

namespace pgfly {
namespace reconcile {
namespace {

using fly::Endpoint;
using fly::OutcomeKind;
using machine::kOperationMetadataKey;
using machine::kUserMetadataKey;
using Query = std::vector<std::pair<std::string, std::string>>;

const std::string kUser = "3f2504e0-4f89-11d3-9a0c-0305e82c3301";
const std::string kOrg = "acme";
const std::string kPrefix = "vyx-user-";
const std::string kImage = "registry.fly.io/vyx@sha256:0123abcd";
const fly::Guest kGuest{"performance", 2, 4096};
const fly::Guest kOtherGuest{"shared", 1, 256};

std::string
Candidate(int attempt) {
	return AppNameCandidate(kPrefix, kUser, attempt).value();
}

Settings
MakeSettings() {
	Settings settings;
	settings.org_slug = kOrg;
	settings.app_name_prefix = kPrefix;
	settings.image = kImage;
	settings.env = {{"LOG_LEVEL", "debug"}, {"RUN_MODE", "operator-says-so"}, {"USER_ID", "not-this-one"}};
	settings.wait_timeout_seconds = 45;
	settings.wait_rounds = 3;
	settings.create_settle_seconds = 30;
	return settings;
}

Target
MakeTarget(bool present = true) {
	Target target;
	target.user_id = kUser;
	target.present = present;
	if (present) {
		target.tier = "pro";
		target.guest = kGuest;
		target.region = "ams";
	}
	target.generation = 7;
	target.operation_id = "7-1";
	return target;
}

// An existing live row for the user, with the app already named.
AppRecord
MakeRecord(const std::string &status = "active") {
	AppRecord record;
	record.id = 11;
	record.name = Candidate(0);
	record.name_attempt = 0;
	record.status = status;
	record.region = "ams";
	record.guest = kGuest;
	record.image = kImage;
	return record;
}

// A fake Fly answer: kind, HTTP status and a JSON body (parsed as the client would).
fly::Outcome
Out(OutcomeKind kind, long http_status, const std::string &body = "", const std::string &fly_status = "",
    const std::string &request_id = "") {
	fly::Outcome outcome;
	outcome.kind = kind;
	outcome.http_status = http_status;
	outcome.fly_status = fly_status;
	outcome.request_id = request_id;
	outcome.message = "test: HTTP " + std::to_string(http_status);
	if (!body.empty()) {
		JsonParseResult parsed = ParseJson(body);
		EXPECT_TRUE(parsed.ok()) << parsed.error << " in " << body;
		outcome.body = parsed.value;
	}
	return outcome;
}

fly::Outcome
Ok(const std::string &body = "", long http_status = 200) {
	return Out(OutcomeKind::kSuccess, http_status, body);
}

std::string
GuestText(const fly::Guest &guest) {
	return "{\"cpu_kind\":\"" + guest.cpu_kind + "\",\"cpus\":" + std::to_string(guest.cpus) +
	       ",\"memory_mb\":" + std::to_string(guest.memory_mb) + "}";
}

std::string
MachineText(const std::string &id, const std::string &state, const fly::Guest &guest = kGuest,
            const std::string &image = kImage, const std::string &region = "ams") {
	return "{\"id\":\"" + id + "\",\"name\":\"m-" + id + "\",\"state\":\"" + state + "\",\"region\":\"" + region +
	       "\",\"instance_id\":\"01HV\",\"config\":{\"image\":\"" + image + "\",\"guest\":" + GuestText(guest) +
	       ",\"metadata\":{\"pg_fly_user_id\":\"" + kUser + "\"}}}";
}

std::string
ListText(const std::vector<std::string> &machines) {
	std::string text = "[";
	for (size_t i = 0; i < machines.size(); i++) {
		text += (i ? "," : "") + machines[i];
	}
	return text + "]";
}

std::string
AppText(const std::string &name, const std::string &org) {
	return "{\"id\":\"app-" + name + "\",\"name\":\"" + name +
	       "\",\"status\":\"deployed\",\"organization\":{\"name\":\"" + org + "\",\"slug\":\"" + org + "\"}}";
}

Json
Body(const fly::Request &request) {
	EXPECT_TRUE(request.body_json.has_value());
	JsonParseResult parsed = ParseJson(request.body_json.value_or("null"));
	EXPECT_TRUE(parsed.ok()) << parsed.error;
	return parsed.value;
}

Json
Details(const Event &event) {
	JsonParseResult parsed = ParseJson(event.details_json);
	EXPECT_TRUE(parsed.ok()) << parsed.error << " in " << event.details_json;
	EXPECT_TRUE(parsed.value.IsObject()) << event.details_json;
	return parsed.value;
}

std::vector<std::string>
EventTypes(const Step &step) {
	std::vector<std::string> types;
	for (const auto &event : step.events) {
		types.push_back(event.type);
	}
	return types;
}

using Types = std::vector<std::string>;

// The request a continuing step sends; fails the test (and returns an empty request) when there is none.
const fly::Request &
Req(const Step &step) {
	static const fly::Request kNone;
	EXPECT_EQ(step.completion, Completion::kContinue);
	EXPECT_TRUE(step.request.has_value()) << "step has no request";
	return step.request ? *step.request : kNone;
}

void
ExpectRequest(const Step &step, Endpoint endpoint, const std::string &method, const std::string &path,
              const Query &query = {}) {
	const fly::Request &request = Req(step);
	EXPECT_EQ(fly::EndpointName(request.endpoint), std::string(fly::EndpointName(endpoint)));
	EXPECT_EQ(request.method, method);
	EXPECT_EQ(request.path, path);
	EXPECT_EQ(request.query, query);
}

std::string
AppPath(const std::string &name = Candidate(0)) {
	return "/v1/apps/" + name;
}

Query
UserFilter() {
	return {{"metadata.pg_fly_user_id", kUser}};
}

Query
WaitQuery() {
	return {{"state", "started"}, {"timeout", "45"}};
}

void
ExpectEnded(const Step &step, Completion completion) {
	EXPECT_EQ(step.completion, completion);
	EXPECT_FALSE(step.request.has_value());
}

// A transient failure: the same request goes again after the backoff, as a new attempt.
void
ExpectRetriedInPlace(const Step &step) {
	EXPECT_EQ(step.completion, Completion::kContinue);
	EXPECT_TRUE(step.failed_attempt);
	EXPECT_TRUE(step.request.has_value());
}

void
ExpectGuest(const Json &guest, const fly::Guest &expected) {
	EXPECT_EQ(guest.GetString("cpu_kind"), expected.cpu_kind);
	EXPECT_EQ(guest.GetInteger("cpus"), expected.cpus);
	EXPECT_EQ(guest.GetInteger("memory_mb"), expected.memory_mb);
}

// The answers to create_app (201, `body`) and to the look-up that follows until Fly shows the new app (200):
// one step with the events and app changes of both and the request sent after them.
Step
AppCreated(Operation &operation, const std::string &body = "{}") {
	Step created = operation.OnOutcome(Ok(body, 201));
	EXPECT_TRUE(created.request && created.request->endpoint == Endpoint::kGetApp);
	EXPECT_TRUE(created.app && created.app->app_created);
	Step visible = operation.OnOutcome(Ok(AppText(Candidate(0), kOrg)));
	visible.events.insert(visible.events.begin(), created.events.begin(), created.events.end());
	if (!visible.app) {
		visible.app = created.app;
	}
	return visible;
}

// A provision of a new user, driven until it sends list_machines (the app exists, no secrets).
Step
DriveToFindMachine(Operation &operation) {
	Step step = operation.Start();
	step = AppCreated(operation, "{\"id\":\"app-1\"}");
	ExpectRequest(step, Endpoint::kListMachines, "GET", AppPath() + "/machines", UserFilter());
	return step;
}

// A provision of a user whose app row exists: create_app answers name_taken, the app is ours.
void
DriveRecordedAppToFindMachine(Operation &operation) {
	operation.Start();
	operation.OnOutcome(Out(OutcomeKind::kNameTaken, 422, "", "name_taken"));
	Step step = operation.OnOutcome(Ok(AppText(Candidate(0), kOrg)));
	EXPECT_TRUE(step.request && step.request->endpoint == Endpoint::kListMachines);
}

// ... until it sends create_machine.
Step
DriveToCreateMachine(Operation &operation) {
	DriveToFindMachine(operation);
	Step step = operation.OnOutcome(Ok("[]"));
	ExpectRequest(step, Endpoint::kCreateMachine, "POST", AppPath() + "/machines");
	return step;
}

// ... until it sends the first wait.
Step
DriveToWait(Operation &operation) {
	DriveToCreateMachine(operation);
	Step step = operation.OnOutcome(Ok(MachineText("m1", "created")));
	ExpectRequest(step, Endpoint::kWaitMachine, "GET", AppPath() + "/machines/m1/wait", WaitQuery());
	return step;
}

// ---------------------------------------------------------------------------------------------------------------
// Provision

TEST(ReconcileProvision, NewUserRunsTheWholeSequence) {
	Operation operation(MakeTarget(), std::nullopt, MakeSettings());

	// 1. Row inserted with candidate 0, create_app sent.
	Step step = operation.Start();
	EXPECT_EQ(EventTypes(step), Types{"provision_requested"});
	Json requested = Details(step.events[0]);
	EXPECT_EQ(requested.GetString("app_name"), Candidate(0));
	EXPECT_EQ(requested.GetString("tier"), "pro");
	EXPECT_EQ(requested.GetString("region"), "ams");
	EXPECT_EQ(requested.GetInteger("generation"), 7);
	ExpectGuest(requested.Get("guest"), kGuest);
	ASSERT_TRUE(step.app.has_value());
	EXPECT_TRUE(step.app->insert);
	EXPECT_EQ(step.app->name, Candidate(0));
	EXPECT_EQ(step.app->name_attempt, 0);
	EXPECT_EQ(step.app->status, "provisioning");
	EXPECT_EQ(step.app->tier, "pro");
	EXPECT_EQ(step.app->region, "ams");
	ASSERT_TRUE(step.app->guest.has_value());
	EXPECT_EQ(step.app->guest->memory_mb, 4096);
	EXPECT_EQ(step.app->image, kImage);
	EXPECT_FALSE(step.app->provisioned);
	EXPECT_FALSE(step.app->deleted);
	ExpectRequest(step, Endpoint::kCreateApp, "POST", "/v1/apps");
	Json create_app = Body(Req(step));
	EXPECT_EQ(create_app.GetString("name"), Candidate(0));
	EXPECT_EQ(create_app.GetString("app_name"), Candidate(0));
	EXPECT_EQ(create_app.GetString("org_slug"), kOrg);

	// 2. 201 → app_created, list this user's machines.
	step = AppCreated(operation, "{\"id\":\"app-1\",\"created_at\":1700000000}");
	EXPECT_EQ(EventTypes(step), Types{"app_created"});
	EXPECT_EQ(Details(step.events[0]).GetString("app_name"), Candidate(0));
	ASSERT_TRUE(step.app.has_value());
	EXPECT_FALSE(step.app->insert);
	EXPECT_EQ(step.app->fly_app_id, "app-1");
	ExpectRequest(step, Endpoint::kListMachines, "GET", AppPath() + "/machines", UserFilter());

	// 3. None → create, with pending_create recorded in the same step.
	step = operation.OnOutcome(Ok("[]"));
	EXPECT_TRUE(step.events.empty());
	ASSERT_TRUE(step.app.has_value());
	EXPECT_EQ(step.app->pending_create, "7-1");
	ExpectRequest(step, Endpoint::kCreateMachine, "POST", AppPath() + "/machines");
	Json create = Body(Req(step));
	EXPECT_EQ(create.GetString("region"), "ams");
	EXPECT_FALSE(create.Get("min_secrets_version").HasValue());
	Json config = create.Get("config");
	EXPECT_EQ(config.GetString("image"), kImage);
	ExpectGuest(config.Get("guest"), kGuest);
	EXPECT_EQ(config.Get("env").GetString("RUN_MODE"), "user_dedicated");
	EXPECT_EQ(config.Get("env").GetString("USER_ID"), kUser);
	EXPECT_EQ(config.Get("env").GetString("LOG_LEVEL"), "debug");
	EXPECT_EQ(config.Get("metadata").GetString(kUserMetadataKey), kUser);
	EXPECT_EQ(config.Get("metadata").GetString(kOperationMetadataKey), "7-1");
	EXPECT_EQ(config.Get("restart").GetString("policy"), "always");

	// 4. Created → record the machine, clear pending, wait for started.
	step = operation.OnOutcome(Ok(MachineText("m1", "created")));
	EXPECT_EQ(EventTypes(step), Types{"machine_created"});
	Json created = Details(step.events[0]);
	EXPECT_EQ(created.GetString("machine_id"), "m1");
	EXPECT_EQ(created.GetString("operation_id"), "7-1");
	ASSERT_TRUE(step.app.has_value());
	EXPECT_EQ(step.app->machine_id, "m1");
	EXPECT_EQ(step.app->pending_create, "");
	ExpectRequest(step, Endpoint::kWaitMachine, "GET", AppPath() + "/machines/m1/wait", WaitQuery());

	// 5. Fly's wait times out (408) → wait again, up to wait_rounds (3) calls in all.
	for (int i = 0; i < 2; i++) {
		step = operation.OnOutcome(Out(OutcomeKind::kTransient, 408, "{\"error\":\"deadline exceeded\"}"));
		EXPECT_TRUE(step.events.empty());
		EXPECT_FALSE(step.app.has_value());
		ExpectRequest(step, Endpoint::kWaitMachine, "GET", AppPath() + "/machines/m1/wait", WaitQuery());
	}

	// 6. Started → active.
	step = operation.OnOutcome(Ok("{\"ok\":true,\"state\":\"started\"}"));
	ExpectEnded(step, Completion::kDone);
	EXPECT_EQ(EventTypes(step), Types{"provision_completed"});
	Json completed = Details(step.events[0]);
	EXPECT_EQ(completed.GetString("app_name"), Candidate(0));
	EXPECT_EQ(completed.GetString("machine_id"), "m1");
	EXPECT_EQ(completed.GetString("image"), kImage);
	ASSERT_TRUE(step.app.has_value());
	EXPECT_EQ(step.app->status, "active");
	EXPECT_TRUE(step.app->provisioned);
	EXPECT_EQ(step.app->machine_id, "m1");
	EXPECT_FALSE(step.app->tier.has_value()); // set when the operation started; a relabel since then stands
	EXPECT_TRUE(step.error.empty());
}

// Only an operation's first request, and only create-app or a read, may leave before its step is recorded.
TEST(ReconcileStart, OnlyAFirstReadMaySendBeforeItsRecord) {
	Operation provision(MakeTarget(), std::nullopt, MakeSettings());
	Step step = provision.Start();
	ExpectRequest(step, Endpoint::kCreateApp, "POST", "/v1/apps");
	EXPECT_FALSE(step.send_before_record); // a write: recorded before it leaves
	step = AppCreated(provision, "{\"id\":\"app-1\"}");
	EXPECT_FALSE(step.send_before_record); // a read, but not the first request
	step = provision.OnOutcome(Ok("[]"));
	ExpectRequest(step, Endpoint::kCreateMachine, "POST", AppPath() + "/machines");
	EXPECT_FALSE(step.send_before_record);

	Operation recorded(MakeTarget(), MakeRecord("provisioning"), MakeSettings());
	step = recorded.Start();
	ExpectRequest(step, Endpoint::kCreateApp, "POST", "/v1/apps");
	EXPECT_FALSE(step.send_before_record);

	AppRecord dying = MakeRecord("deprovisioning");
	dying.delete_requested = true;
	Operation finish_delete(MakeTarget(), dying, MakeSettings());
	step = finish_delete.Start();
	ASSERT_TRUE(step.request.has_value());
	EXPECT_EQ(step.request->method, "DELETE");
	EXPECT_FALSE(step.send_before_record);

	Operation deprovision(MakeTarget(false), MakeRecord("active"), MakeSettings());
	step = deprovision.Start();
	ExpectRequest(step, Endpoint::kListMachines, "GET", AppPath() + "/machines");
	EXPECT_TRUE(step.send_before_record);
}

TEST(ReconcileProvision, WaitGivesUpAfterWaitRoundsTimeouts) {
	Operation operation(MakeTarget(), std::nullopt, MakeSettings());
	DriveToWait(operation); // first wait call
	Step step = operation.OnOutcome(Out(OutcomeKind::kTransient, 408));
	ExpectRequest(step, Endpoint::kWaitMachine, "GET", AppPath() + "/machines/m1/wait", WaitQuery());
	step = operation.OnOutcome(Out(OutcomeKind::kTransient, 408));
	ExpectRequest(step, Endpoint::kWaitMachine, "GET", AppPath() + "/machines/m1/wait", WaitQuery());
	step = operation.OnOutcome(Out(OutcomeKind::kTransient, 408));
	// Every round used up: the whole operation starts over later.
	ExpectEnded(step, Completion::kRetry);
	EXPECT_EQ(EventTypes(step), Types{"provision_attempt_failed"});
	EXPECT_EQ(Details(step.events[0]).GetString("step"), "wait_machine");
}

TEST(ReconcileProvision, WaitClampsTheTimeoutToFlysLimit) {
	Settings settings = MakeSettings();
	settings.wait_timeout_seconds = 300;
	Operation operation(MakeTarget(), std::nullopt, settings);
	DriveToCreateMachine(operation);
	Step step = operation.OnOutcome(Ok(MachineText("m1", "created")));
	ExpectRequest(step, Endpoint::kWaitMachine, "GET", AppPath() + "/machines/m1/wait",
	              {{"state", "started"}, {"timeout", "60"}});
}

TEST(ReconcileProvision, MachineVanishingDuringWaitIsFoundOrCreatedAgain) {
	Operation operation(MakeTarget(), std::nullopt, MakeSettings());
	DriveToWait(operation);
	operation.SetNow(61); // past fly.create_settle_time: a 404 now means what it says
	Step step = operation.OnOutcome(Out(OutcomeKind::kNotFound, 404));
	ASSERT_TRUE(step.app.has_value());
	EXPECT_EQ(step.app->machine_id, "");
	ExpectRequest(step, Endpoint::kListMachines, "GET", AppPath() + "/machines", UserFilter());
	// The earlier create's answer was recorded, so nothing is pending: create straight away.
	step = operation.OnOutcome(Ok("[]"));
	EXPECT_EQ(step.app->pending_create, "7-1");
	ExpectRequest(step, Endpoint::kCreateMachine, "POST", AppPath() + "/machines");
}

TEST(ReconcileProvision, ExistingRowIsNotInsertedAgain) {
	AppRecord record = MakeRecord("failed");
	record.name = Candidate(1);
	record.name_attempt = 1;
	Operation operation(MakeTarget(), record, MakeSettings());
	Step step = operation.Start();
	EXPECT_EQ(EventTypes(step), Types{"provision_requested"});
	Json details = Details(step.events[0]);
	EXPECT_EQ(details.GetString("previous_status"), "failed");
	EXPECT_EQ(details.GetString("app_name"), Candidate(1));
	ASSERT_TRUE(step.app.has_value());
	EXPECT_FALSE(step.app->insert);
	EXPECT_FALSE(step.app->name.has_value());
	EXPECT_EQ(step.app->status, "provisioning");
	ExpectRequest(step, Endpoint::kCreateApp, "POST", "/v1/apps");
	EXPECT_EQ(Body(Req(step)).GetString("name"), Candidate(1));
}

TEST(ReconcileProvision, FirstNameAttemptChoosesTheStartingCandidate) {
	Target target = MakeTarget();
	target.first_name_attempt = 2;
	Operation operation(target, std::nullopt, MakeSettings());
	Step step = operation.Start();
	ASSERT_TRUE(step.app.has_value());
	EXPECT_TRUE(step.app->insert);
	EXPECT_EQ(step.app->name, Candidate(2));
	EXPECT_EQ(step.app->name_attempt, 2);
	ExpectRequest(step, Endpoint::kCreateApp, "POST", "/v1/apps");
	Json body = Body(Req(step));
	EXPECT_EQ(body.GetString("name"), Candidate(2));
	EXPECT_EQ(body.GetString("app_name"), Candidate(2));
	step = AppCreated(operation, "{\"id\":\"app-2\"}");
	ExpectRequest(step, Endpoint::kListMachines, "GET", AppPath(Candidate(2)) + "/machines", UserFilter());
}

TEST(ReconcileProvision, EmptyImageFailsWithoutAnyRequest) {
	Settings settings = MakeSettings();
	settings.image.clear();
	Operation operation(MakeTarget(), std::nullopt, settings);
	Step step = operation.Start();
	ExpectEnded(step, Completion::kFailed);
	EXPECT_FALSE(step.app.has_value());
	EXPECT_FALSE(step.error.empty());
	// The operation is over: a stray answer fails rather than continuing.
	step = operation.OnOutcome(Ok("{}"));
	ExpectEnded(step, Completion::kFailed);
}

TEST(ReconcileProvision, ExhaustedNameCandidatesFailWithoutAnyRequest) {
	Settings settings = MakeSettings();
	settings.app_name_prefix = std::string(40, 'a');
	Target target = MakeTarget();
	target.first_name_attempt = 4; // beyond 62 characters for this prefix
	Operation operation(target, std::nullopt, settings);
	Step step = operation.Start();
	ExpectEnded(step, Completion::kFailed);
	EXPECT_FALSE(step.app.has_value());
}

// ---------------------------------------------------------------------------------------------------------------
// Secrets

TEST(ReconcileSecrets, SecretsAreSetBeforeTheMachineAndItsVersionIsRequired) {
	Settings settings = MakeSettings();
	settings.secrets = {{"DB_PASSWORD", "hunter2-very-secret"}, {"API_KEY", "sk-live-XYZZY"}};
	settings.secrets_digest_key = "0123456789abcdef0123456789abcdef";
	Operation operation(MakeTarget(), std::nullopt, settings);
	std::vector<Step> steps;
	steps.push_back(operation.Start());
	steps.push_back(AppCreated(operation, "{\"id\":\"app-1\"}"));
	const Step &after_create = steps.back();
	EXPECT_EQ(EventTypes(after_create), Types{"app_created"});
	ExpectRequest(after_create, Endpoint::kSetSecrets, "POST", AppPath() + "/secrets");
	Json values = Body(Req(after_create)).Get("values");
	EXPECT_EQ(values.Size(), 2u);
	EXPECT_EQ(values.GetString("DB_PASSWORD"), "hunter2-very-secret");
	EXPECT_EQ(values.GetString("API_KEY"), "sk-live-XYZZY");

	steps.push_back(operation.OnOutcome(
		Ok("{\"secrets\":[{\"name\":\"API_KEY\",\"digest\":\"d1\"},{\"name\":\"DB_PASSWORD\",\"digest\":\"d2\"}],"
	       "\"version\":4,\"Version\":4}")));
	const Step &after_secrets = steps.back();
	ASSERT_TRUE(after_secrets.app.has_value());
	EXPECT_EQ(after_secrets.app->secrets_version, 4);
	// The set is recorded as one digest and its names, so that no secrets rollout sets it again.
	EXPECT_EQ(after_secrets.app->secrets_digest, secrets::Digest(settings.secrets, settings.secrets_digest_key));
	EXPECT_EQ(after_secrets.app->secret_names, (std::vector<std::string>{"API_KEY", "DB_PASSWORD"}));
	EXPECT_EQ(EventTypes(after_secrets), Types{"secrets_set"});
	Json set = Details(after_secrets.events[0]);
	ASSERT_EQ(set.Get("names").Size(), 2u);
	EXPECT_EQ(set.Get("names").At(0).AsString(), "API_KEY");
	EXPECT_EQ(set.Get("names").At(1).AsString(), "DB_PASSWORD");
	EXPECT_EQ(set.GetInteger("version"), 4);
	ExpectRequest(after_secrets, Endpoint::kListMachines, "GET", AppPath() + "/machines", UserFilter());

	steps.push_back(operation.OnOutcome(Ok("[]")));
	ExpectRequest(steps.back(), Endpoint::kCreateMachine, "POST", AppPath() + "/machines");
	Json create = Body(Req(steps.back()));
	EXPECT_EQ(create.GetInteger("min_secrets_version"), 4);
	// Secrets are app secrets, not machine env.
	EXPECT_FALSE(create.Get("config").Get("env").Get("DB_PASSWORD").HasValue());

	steps.push_back(operation.OnOutcome(Ok(MachineText("m1", "created"))));
	steps.push_back(operation.OnOutcome(Ok("{\"ok\":true}")));
	EXPECT_EQ(steps.back().completion, Completion::kDone);

	// No event of the whole run carries a secret value.
	for (const auto &each : steps) {
		for (const auto &event : each.events) {
			EXPECT_EQ(event.details_json.find("hunter2"), std::string::npos) << event.type;
			EXPECT_EQ(event.details_json.find("XYZZY"), std::string::npos) << event.type;
		}
		EXPECT_EQ(each.error.find("hunter2"), std::string::npos);
	}
}

TEST(ReconcileSecrets, DeprecatedVersionFieldIsRead) {
	Settings settings = MakeSettings();
	settings.secrets = {{"K", "v"}};
	Operation operation(MakeTarget(), std::nullopt, settings);
	operation.Start();
	AppCreated(operation, "{}");
	Step step = operation.OnOutcome(Ok("{\"secrets\":[],\"Version\":9}"));
	ASSERT_TRUE(step.app.has_value());
	EXPECT_EQ(step.app->secrets_version, 9);
}

TEST(ReconcileSecrets, FailureToSetSecretsDoesNotLeakValues) {
	Settings settings = MakeSettings();
	settings.secrets = {{"DB_PASSWORD", "hunter2-very-secret"}};
	Operation operation(MakeTarget(), std::nullopt, settings);
	operation.Start();
	AppCreated(operation, "{}");
	Step step = operation.OnOutcome(Out(OutcomeKind::kTransient, 500, "", "", "req-9"));
	ExpectRetriedInPlace(step);
	ASSERT_EQ(EventTypes(step), Types{"provision_attempt_failed"});
	EXPECT_EQ(Details(step.events[0]).GetString("step"), "set_secrets");
	EXPECT_EQ(step.events[0].details_json.find("hunter2"), std::string::npos);
}

TEST(ReconcileSecrets, MachineUpdateAlsoCarriesMinSecretsVersion) {
	Settings settings = MakeSettings();
	settings.secrets = {{"K", "v"}};
	Operation operation(MakeTarget(), std::nullopt, settings);
	operation.Start();
	AppCreated(operation, "{}");
	operation.OnOutcome(Ok("{\"version\":12}"));
	Step step = operation.OnOutcome(Ok(ListText({MachineText("m1", "started", kOtherGuest)})));
	ExpectRequest(step, Endpoint::kUpdateMachine, "POST", AppPath() + "/machines/m1");
	EXPECT_EQ(Body(Req(step)).GetInteger("min_secrets_version"), 12);
}

// ---------------------------------------------------------------------------------------------------------------
// App names

TEST(ReconcileAppName, TakenByOurOrgIsReused) {
	Operation operation(MakeTarget(), std::nullopt, MakeSettings());
	operation.Start();
	Step step = operation.OnOutcome(Out(OutcomeKind::kNameTaken, 422, "", "name_taken"));
	EXPECT_TRUE(step.events.empty());
	EXPECT_FALSE(step.app.has_value());
	ExpectRequest(step, Endpoint::kGetApp, "GET", AppPath());
	EXPECT_FALSE(Req(step).body_json.has_value());

	step = operation.OnOutcome(Ok(AppText(Candidate(0), kOrg)));
	EXPECT_EQ(EventTypes(step), Types{"app_reused"});
	ASSERT_TRUE(step.app.has_value());
	EXPECT_EQ(step.app->fly_app_id, "app-" + Candidate(0));
	EXPECT_FALSE(step.app->name.has_value());
	ExpectRequest(step, Endpoint::kListMachines, "GET", AppPath() + "/machines", UserFilter());
}

// An app answered without its organization is neither provably ours (to reuse) nor another's: asked again.
TEST(ReconcileAppName, TakenAppWithoutOrganizationIsAskedAgain) {
	Operation operation(MakeTarget(), std::nullopt, MakeSettings());
	operation.Start();
	operation.OnOutcome(Out(OutcomeKind::kNameTaken, 422, "", "name_taken"));
	Step step = operation.OnOutcome(Ok("{\"id\":\"app-x\",\"name\":\"" + Candidate(0) + "\",\"status\":\"deployed\"}"));
	ExpectRetriedInPlace(step);
	EXPECT_EQ(EventTypes(step), Types{"provision_attempt_failed"});
	EXPECT_FALSE(step.app.has_value());
	ExpectRequest(step, Endpoint::kGetApp, "GET", AppPath());
	step = operation.OnOutcome(Ok(AppText(Candidate(0), kOrg)));
	EXPECT_EQ(EventTypes(step), Types{"app_reused"});
}

TEST(ReconcileAppName, TakenByAnotherOrgMovesToTheNextCandidate) {
	Operation operation(MakeTarget(), std::nullopt, MakeSettings());
	operation.Start();
	operation.OnOutcome(Out(OutcomeKind::kNameTaken, 422, "", "name_taken"));
	Step step = operation.OnOutcome(Out(OutcomeKind::kForbidden, 403, "{\"error\":\"unauthorized\"}"));
	EXPECT_EQ(EventTypes(step), Types{"app_name_taken"});
	Json details = Details(step.events[0]);
	EXPECT_EQ(details.GetString("taken_name"), Candidate(0));
	EXPECT_EQ(details.GetString("next_name"), Candidate(1));
	ASSERT_TRUE(step.app.has_value());
	EXPECT_FALSE(step.app->insert);
	EXPECT_EQ(step.app->name, Candidate(1));
	EXPECT_EQ(step.app->name_attempt, 1);
	ExpectRequest(step, Endpoint::kCreateApp, "POST", "/v1/apps");
	Json body = Body(Req(step));
	EXPECT_EQ(body.GetString("name"), Candidate(1));
	EXPECT_EQ(body.GetString("app_name"), Candidate(1));
	EXPECT_EQ(body.GetString("org_slug"), kOrg);

	// The next candidate is ours from then on.
	step = AppCreated(operation, "{\"id\":\"app-x\"}");
	EXPECT_EQ(EventTypes(step), Types{"app_created"});
	EXPECT_EQ(Details(step.events[0]).GetString("app_name"), Candidate(1));
	ExpectRequest(step, Endpoint::kListMachines, "GET", AppPath(Candidate(1)) + "/machines", UserFilter());
}

TEST(ReconcileAppName, ReadableAppOfAnotherOrgIsNotReused) {
	Operation operation(MakeTarget(), std::nullopt, MakeSettings());
	operation.Start();
	operation.OnOutcome(Out(OutcomeKind::kNameTaken, 422, "", "name_taken"));
	Step step = operation.OnOutcome(Ok(AppText(Candidate(0), "someone-else")));
	EXPECT_EQ(EventTypes(step), Types{"app_name_taken"});
	EXPECT_EQ(step.app->name, Candidate(1));
	ExpectRequest(step, Endpoint::kCreateApp, "POST", "/v1/apps");
}

TEST(ReconcileAppName, TakenThenGoneIsRetried) {
	Operation operation(MakeTarget(), std::nullopt, MakeSettings());
	operation.Start();
	operation.OnOutcome(Out(OutcomeKind::kNameTaken, 422, "", "name_taken"));
	operation.SetNow(61); // within fly.create_settle_time the 404 could be our own create not visible yet
	Step step = operation.OnOutcome(Out(OutcomeKind::kNotFound, 404, "{\"error\":\"Could not find App\"}"));
	ExpectRetriedInPlace(step);
	EXPECT_EQ(EventTypes(step), Types{"provision_attempt_failed"});
	EXPECT_EQ(Details(step.events[0]).GetString("step"), "get_app");
	EXPECT_EQ(Details(step.events[0]).GetInteger("http_status"), 404);
	EXPECT_FALSE(step.app.has_value());
}

TEST(ReconcileAppName, LastCandidateTakenFails) {
	Settings settings = MakeSettings();
	settings.app_name_prefix = std::string(40, 'a');
	Target target = MakeTarget();
	target.first_name_attempt = 3; // the last candidate that fits 62 characters
	Operation operation(target, std::nullopt, settings);
	Step step = operation.Start();
	ASSERT_EQ(step.completion, Completion::kContinue);
	operation.OnOutcome(Out(OutcomeKind::kNameTaken, 422, "", "name_taken"));
	step = operation.OnOutcome(Out(OutcomeKind::kForbidden, 403));
	ExpectEnded(step, Completion::kFailed);
	EXPECT_EQ(EventTypes(step), Types{"provision_failed"});
}

// ---------------------------------------------------------------------------------------------------------------
// Finding and adopting machines

TEST(ReconcileMachine, LiveMachineWithAnotherGuestIsUpdated) {
	Operation operation(MakeTarget(), std::nullopt, MakeSettings());
	DriveToFindMachine(operation);
	Step step = operation.OnOutcome(Ok(ListText({MachineText("m7", "started", kOtherGuest)})));
	EXPECT_EQ(EventTypes(step), (Types{"machine_reused", "machine_update_requested"}));
	Json update = Details(step.events[1]);
	EXPECT_EQ(update.GetString("machine_id"), "m7");
	ExpectGuest(update.Get("from_guest"), kOtherGuest);
	ExpectGuest(update.Get("to_guest"), kGuest);
	ASSERT_TRUE(step.app.has_value());
	EXPECT_EQ(step.app->machine_id, "m7");
	ExpectRequest(step, Endpoint::kUpdateMachine, "POST", AppPath() + "/machines/m7");
	Json body = Body(Req(step));
	EXPECT_FALSE(body.Get("region").HasValue()); // immutable
	Json config = body.Get("config");
	EXPECT_EQ(config.GetString("image"), kImage);
	ExpectGuest(config.Get("guest"), kGuest);
	EXPECT_EQ(config.Get("env").GetString("RUN_MODE"), "user_dedicated");
	EXPECT_EQ(config.Get("metadata").GetString(kUserMetadataKey), kUser);

	step = operation.OnOutcome(Ok(MachineText("m7", "started")));
	EXPECT_EQ(EventTypes(step), Types{"machine_updated"});
	ASSERT_TRUE(step.app.has_value());
	EXPECT_EQ(step.app->guest->cpu_kind, "performance");
	EXPECT_EQ(step.app->image, kImage);
	ExpectRequest(step, Endpoint::kWaitMachine, "GET", AppPath() + "/machines/m7/wait", WaitQuery());
	step = operation.OnOutcome(Ok("{\"ok\":true}"));
	ExpectEnded(step, Completion::kDone);
	EXPECT_EQ(step.app->machine_id, "m7");
}

TEST(ReconcileMachine, LiveMachineWithAnotherImageIsUpdated) {
	AppRecord record = MakeRecord();
	record.machine_id = "m7";
	Operation operation(MakeTarget(), record, MakeSettings());
	DriveRecordedAppToFindMachine(operation);
	Step step = operation.OnOutcome(Ok(ListText({MachineText("m7", "stopped", kGuest, "old-image:1")})));
	// The row already records m7: no machine_reused.
	EXPECT_EQ(EventTypes(step), Types{"machine_update_requested"});
	EXPECT_EQ(Details(step.events[0]).GetString("from_image"), "old-image:1");
	ExpectRequest(step, Endpoint::kUpdateMachine, "POST", AppPath() + "/machines/m7");
}

// fly.image is for new apps; an app that runs keeps its image until an image rollout changes it.
TEST(ReconcileMachine, AnAppKeepsItsImageWhenFlyImageChanges) {
	AppRecord record = MakeRecord();
	record.machine_id = "m7";
	record.image = "registry.fly.io/vyx:v1";
	Operation operation(MakeTarget(), record, MakeSettings());
	DriveRecordedAppToFindMachine(operation);
	Step step = operation.OnOutcome(Ok(ListText({MachineText("m7", "started", kGuest, "registry.fly.io/vyx:v1")})));
	EXPECT_TRUE(step.events.empty());
	ExpectRequest(step, Endpoint::kWaitMachine, "GET", AppPath() + "/machines/m7/wait", WaitQuery());
}

TEST(ReconcileMachine, AResizeKeepsTheAppsImage) {
	AppRecord record = MakeRecord();
	record.machine_id = "m7";
	record.image = "registry.fly.io/vyx:v1";
	Operation operation(MakeTarget(), record, MakeSettings());
	DriveRecordedAppToFindMachine(operation);
	Step step =
		operation.OnOutcome(Ok(ListText({MachineText("m7", "started", kOtherGuest, "registry.fly.io/vyx:v1")})));
	ExpectRequest(step, Endpoint::kUpdateMachine, "POST", AppPath() + "/machines/m7");
	EXPECT_EQ(Body(Req(step)).Get("config").GetString("image"), "registry.fly.io/vyx:v1");
}

TEST(ReconcileMachine, AnAppThatNeverCameUpGetsFlyImage) {
	AppRecord record = MakeRecord("failed");
	record.machine_id = "m7";
	record.image.clear(); // LoadLiveApp reports no image until the app was provisioned
	Operation operation(MakeTarget(), record, MakeSettings());
	DriveRecordedAppToFindMachine(operation);
	Step step = operation.OnOutcome(Ok(ListText({MachineText("m7", "started", kGuest, "registry.fly.io/typo:v1")})));
	ExpectRequest(step, Endpoint::kUpdateMachine, "POST", AppPath() + "/machines/m7");
	EXPECT_EQ(Body(Req(step)).Get("config").GetString("image"), kImage);
}

TEST(ReconcileMachine, StoppedMachineIsStartedThenAwaited) {
	Operation operation(MakeTarget(), std::nullopt, MakeSettings());
	DriveToFindMachine(operation);
	Step step = operation.OnOutcome(Ok(ListText({MachineText("m7", "stopped")})));
	EXPECT_EQ(EventTypes(step), Types{"machine_reused"});
	EXPECT_EQ(Details(step.events[0]).GetString("state"), "stopped");
	ExpectRequest(step, Endpoint::kStartMachine, "POST", AppPath() + "/machines/m7/start");
	EXPECT_FALSE(Req(step).body_json.has_value());
	step = operation.OnOutcome(Ok("{\"previous_state\":\"stopped\",\"migrated\":false,\"new_host\":\"\"}"));
	EXPECT_TRUE(step.events.empty());
	ExpectRequest(step, Endpoint::kWaitMachine, "GET", AppPath() + "/machines/m7/wait", WaitQuery());
}

// Fly leaves a stopped machine stopped when it is updated (a downgrade stopped it, an upgrade to another guest
// came before the app was deleted): it is started after the update, not awaited as it is.
TEST(ReconcileMachine, StoppedMachineIsStartedAfterItsUpdate) {
	Operation operation(MakeTarget(), std::nullopt, MakeSettings());
	DriveToFindMachine(operation);
	Step step = operation.OnOutcome(Ok(ListText({MachineText("m7", "stopped", kOtherGuest)})));
	ExpectRequest(step, Endpoint::kUpdateMachine, "POST", AppPath() + "/machines/m7");
	step = operation.OnOutcome(Ok(MachineText("m7", "stopped")));
	EXPECT_EQ(EventTypes(step), Types{"machine_updated"});
	ExpectRequest(step, Endpoint::kStartMachine, "POST", AppPath() + "/machines/m7/start");
	step = operation.OnOutcome(Ok("{\"previous_state\":\"stopped\"}"));
	ExpectRequest(step, Endpoint::kWaitMachine, "GET", AppPath() + "/machines/m7/wait", WaitQuery());
}

// A deprovision stopped the machine and a new tier came before the app was deleted: the stop is let finish,
// then the machine is started (waiting for "started" straight away would wait for nothing).
TEST(ReconcileMachine, StoppingMachineIsLetStopThenStarted) {
	Operation operation(MakeTarget(), std::nullopt, MakeSettings());
	DriveToFindMachine(operation);
	Step step = operation.OnOutcome(Ok(ListText({MachineText("m7", "stopping")})));
	ExpectRequest(step, Endpoint::kWaitMachine, "GET", AppPath() + "/machines/m7/wait",
	              {{"state", "stopped"}, {"timeout", "45"}});
	step = operation.OnOutcome(Ok("{\"ok\":true,\"state\":\"stopped\"}"));
	ExpectRequest(step, Endpoint::kListMachines, "GET", AppPath() + "/machines", UserFilter());
	step = operation.OnOutcome(Ok(ListText({MachineText("m7", "stopped")})));
	ExpectRequest(step, Endpoint::kStartMachine, "POST", AppPath() + "/machines/m7/start");
	step = operation.OnOutcome(Ok("{\"previous_state\":\"stopped\"}"));
	ExpectRequest(step, Endpoint::kWaitMachine, "GET", AppPath() + "/machines/m7/wait", WaitQuery());
}

TEST(ReconcileMachine, StoppingMachineIsLetStopAfterItsUpdate) {
	Operation operation(MakeTarget(), std::nullopt, MakeSettings());
	DriveToFindMachine(operation);
	operation.OnOutcome(Ok(ListText({MachineText("m7", "stopping", kOtherGuest)})));
	Step step = operation.OnOutcome(Ok(MachineText("m7", "stopping")));
	ExpectRequest(step, Endpoint::kWaitMachine, "GET", AppPath() + "/machines/m7/wait",
	              {{"state", "stopped"}, {"timeout", "45"}});
}

TEST(ReconcileMachine, RunningMachineIsAwaitedAfterItsUpdate) {
	Operation operation(MakeTarget(), std::nullopt, MakeSettings());
	DriveToFindMachine(operation);
	operation.OnOutcome(Ok(ListText({MachineText("m7", "started", kOtherGuest)})));
	Step step = operation.OnOutcome(Ok(MachineText("m7", "replacing")));
	ExpectRequest(step, Endpoint::kWaitMachine, "GET", AppPath() + "/machines/m7/wait", WaitQuery());
}

TEST(ReconcileMachine, SuspendedAndFailedMachinesAreStartedToo) {
	for (const char *state : {"suspended", "failed"}) {
		Operation operation(MakeTarget(), std::nullopt, MakeSettings());
		DriveToFindMachine(operation);
		Step step = operation.OnOutcome(Ok(ListText({MachineText("m7", state)})));
		ExpectRequest(step, Endpoint::kStartMachine, "POST", AppPath() + "/machines/m7/start");
	}
}

TEST(ReconcileMachine, MatchingRecordedMachineIsAwaitedDirectly) {
	AppRecord record = MakeRecord();
	record.machine_id = "m7";
	Operation operation(MakeTarget(), record, MakeSettings());
	DriveRecordedAppToFindMachine(operation); // the app is there: a new one would hold no machine
	Step step = operation.OnOutcome(Ok(ListText({MachineText("m7", "started")})));
	EXPECT_TRUE(step.events.empty());
	EXPECT_FALSE(step.app.has_value());
	ExpectRequest(step, Endpoint::kWaitMachine, "GET", AppPath() + "/machines/m7/wait", WaitQuery());
}

TEST(ReconcileMachine, DuplicateIsDestroyedKeepingTheRecordedMachine) {
	AppRecord record = MakeRecord();
	record.machine_id = "m2";
	Operation operation(MakeTarget(), record, MakeSettings());
	DriveRecordedAppToFindMachine(operation); // the app is there: a new one would hold no machine
	// m1 is listed first, but the row records m2; m3 is already destroyed and left alone.
	Step step = operation.OnOutcome(
		Ok(ListText({MachineText("m1", "started"), MachineText("m2", "started"), MachineText("m3", "destroyed")})));
	EXPECT_EQ(EventTypes(step), Types{"duplicate_machine_destroyed"});
	Json details = Details(step.events[0]);
	EXPECT_EQ(details.GetString("machine_id"), "m1");
	EXPECT_EQ(details.GetString("kept_machine_id"), "m2");
	ExpectRequest(step, Endpoint::kDeleteMachine, "DELETE", AppPath() + "/machines/m1", {{"force", "true"}});

	step = operation.OnOutcome(Ok("{\"ok\":true}"));
	EXPECT_TRUE(step.events.empty()); // m2 is the recorded machine: not "reused"
	ExpectRequest(step, Endpoint::kWaitMachine, "GET", AppPath() + "/machines/m2/wait", WaitQuery());
}

TEST(ReconcileMachine, EveryDuplicateIsDestroyedAndAlreadyGoneCounts) {
	Operation operation(MakeTarget(), std::nullopt, MakeSettings());
	DriveToFindMachine(operation);
	Step step = operation.OnOutcome(
		Ok(ListText({MachineText("m1", "stopped"), MachineText("m2", "started"), MachineText("m3", "starting")})));
	// Without a recorded machine, the first listed is kept.
	EXPECT_EQ(EventTypes(step), Types{"duplicate_machine_destroyed"});
	EXPECT_EQ(Details(step.events[0]).GetString("kept_machine_id"), "m1");
	const std::string first = Details(step.events[0]).GetString("machine_id").value_or("");
	ExpectRequest(step, Endpoint::kDeleteMachine, "DELETE", AppPath() + "/machines/" + first, {{"force", "true"}});
	step = operation.OnOutcome(Out(OutcomeKind::kNotFound, 404));
	EXPECT_EQ(EventTypes(step), Types{"duplicate_machine_destroyed"});
	const std::string second = Details(step.events[0]).GetString("machine_id").value_or("");
	EXPECT_NE(first, second);
	EXPECT_TRUE((first == "m2" && second == "m3") || (first == "m3" && second == "m2")) << first << " " << second;
	ExpectRequest(step, Endpoint::kDeleteMachine, "DELETE", AppPath() + "/machines/" + second, {{"force", "true"}});
	step = operation.OnOutcome(Ok("{\"ok\":true}"));
	EXPECT_EQ(EventTypes(step), Types{"machine_reused"});
	ASSERT_TRUE(step.app.has_value());
	EXPECT_EQ(step.app->machine_id, "m1");
	ExpectRequest(step, Endpoint::kStartMachine, "POST", AppPath() + "/machines/m1/start");
}

TEST(ReconcileMachine, DuplicateDeleteFailureIsRetried) {
	Operation operation(MakeTarget(), std::nullopt, MakeSettings());
	DriveToFindMachine(operation);
	operation.OnOutcome(Ok(ListText({MachineText("m1", "started"), MachineText("m2", "started")})));
	Step step = operation.OnOutcome(Out(OutcomeKind::kTransient, 503));
	ExpectRetriedInPlace(step);
	EXPECT_EQ(Details(step.events[0]).GetString("step"), "delete_machine");
}

TEST(ReconcileMachine, OnlyDestroyedMachinesMeansCreate) {
	Operation operation(MakeTarget(), std::nullopt, MakeSettings());
	DriveToFindMachine(operation);
	Step step = operation.OnOutcome(Ok(ListText({MachineText("m1", "destroyed"), MachineText("m2", "destroying")})));
	ExpectRequest(step, Endpoint::kCreateMachine, "POST", AppPath() + "/machines");
}

// ---------------------------------------------------------------------------------------------------------------
// Ambiguous and pending creations

TEST(ReconcileCreate, AmbiguousCreateFindsAndAdoptsTheMachine) {
	Operation operation(MakeTarget(), std::nullopt, MakeSettings());
	DriveToCreateMachine(operation);
	Step step = operation.OnOutcome(Out(OutcomeKind::kTransient, 408, "", "", "req-408"));
	EXPECT_EQ(EventTypes(step), Types{"provision_attempt_failed"});
	Json failed = Details(step.events[0]);
	EXPECT_EQ(failed.GetString("step"), "create_machine");
	EXPECT_EQ(failed.GetInteger("http_status"), 408);
	EXPECT_EQ(failed.GetString("fly_request_id"), "req-408");
	EXPECT_FALSE(step.app.has_value()); // pending_create stays recorded
	ExpectRequest(step, Endpoint::kListMachines, "GET", AppPath() + "/machines", UserFilter());

	step = operation.OnOutcome(Ok(ListText({MachineText("m9", "created")})));
	EXPECT_EQ(EventTypes(step), Types{"machine_reused"});
	EXPECT_EQ(Details(step.events[0]).GetString("machine_id"), "m9");
	ASSERT_TRUE(step.app.has_value());
	EXPECT_EQ(step.app->machine_id, "m9");
	EXPECT_EQ(step.app->pending_create, "");
	ExpectRequest(step, Endpoint::kWaitMachine, "GET", AppPath() + "/machines/m9/wait", WaitQuery());
	step = operation.OnOutcome(Ok("{\"ok\":true}"));
	ExpectEnded(step, Completion::kDone);
}

TEST(ReconcileCreate, AmbiguousCreateWithNothingFoundLooksAgainThenCreates) {
	Operation operation(MakeTarget(), std::nullopt, MakeSettings());
	DriveToCreateMachine(operation);
	operation.SetNow(100);
	Step step = operation.OnOutcome(Out(OutcomeKind::kTransient, 500));
	EXPECT_EQ(EventTypes(step), Types{"provision_attempt_failed"});
	EXPECT_GT(step.delay_seconds, 0);
	// Fly answered (not a timeout nor a gateway's error), so its list catches up within moments: look again,
	// without counting a failure.
	operation.SetNow(101);
	step = operation.OnOutcome(Ok("[]"));
	EXPECT_FALSE(step.failed_attempt);
	EXPECT_TRUE(step.events.empty());
	EXPECT_GT(step.delay_seconds, 0);
	ExpectRequest(step, Endpoint::kListMachines, "GET", AppPath() + "/machines", UserFilter());
	// Still nothing once the list has had time to catch up: the creation did not happen; create again.
	operation.SetNow(102.5);
	step = operation.OnOutcome(Ok("[]"));
	ASSERT_TRUE(step.request.has_value());
	EXPECT_EQ(step.request->endpoint, Endpoint::kCreateMachine);
	ASSERT_TRUE(step.app.has_value());
	EXPECT_TRUE(step.app->pending_create.has_value());
}

TEST(ReconcileCreate, UnansweredCreateWaitsAsLongAsARequestMayTake) {
	Settings settings = MakeSettings();
	settings.create_settle_seconds = 30;
	Operation operation(MakeTarget(), std::nullopt, settings);
	DriveToCreateMachine(operation);
	operation.SetNow(100);
	operation.OnOutcome(Out(OutcomeKind::kTransient, 0)); // no answer: connection reset, timeout
	operation.SetNow(110);
	Step step = operation.OnOutcome(Ok("[]"));
	EXPECT_EQ(step.request->endpoint, Endpoint::kListMachines);
	operation.SetNow(131);
	step = operation.OnOutcome(Ok("[]"));
	EXPECT_EQ(step.request->endpoint, Endpoint::kCreateMachine);
}

// A timeout at Fly's end or a gateway's error may hide a create still running: no second machine is created
// before fly.request_timeout has passed, and the list is looked at meanwhile, less often after the first seconds.
TEST(ReconcileCreate, AmbiguousAnswersWaitTheRequestTimeoutBeforeCreatingAgain) {
	for (long status : {408L, 502L, 503L, 504L}) {
		Settings settings = MakeSettings();
		settings.create_settle_seconds = 10;
		Operation operation(MakeTarget(), std::nullopt, settings);
		DriveToCreateMachine(operation);
		operation.SetNow(100);
		Step step = operation.OnOutcome(Out(OutcomeKind::kTransient, status));
		ExpectRequest(step, Endpoint::kListMachines, "GET", AppPath() + "/machines", UserFilter());
		operation.SetNow(103);
		step = operation.OnOutcome(Ok("[]"));
		ExpectRequest(step, Endpoint::kListMachines, "GET", AppPath() + "/machines", UserFilter());
		EXPECT_FALSE(step.failed_attempt);
		EXPECT_GE(step.delay_seconds, 2.0) << status;
		operation.SetNow(109.5);
		step = operation.OnOutcome(Ok("[]"));
		EXPECT_EQ(step.request->endpoint, Endpoint::kListMachines) << status;
		// The machine lands late: it is adopted, nothing else is created.
		operation.SetNow(109.9);
		step = operation.OnOutcome(Ok(ListText({MachineText("m7", "created")})));
		EXPECT_EQ(EventTypes(step), Types{"machine_reused"});
		EXPECT_EQ(step.request->endpoint, Endpoint::kWaitMachine) << status;
	}
	Settings settings = MakeSettings();
	settings.create_settle_seconds = 10;
	Operation operation(MakeTarget(), std::nullopt, settings);
	DriveToCreateMachine(operation);
	operation.SetNow(100);
	operation.OnOutcome(Out(OutcomeKind::kTransient, 504));
	operation.SetNow(110.1);
	Step step = operation.OnOutcome(Ok("[]"));
	EXPECT_EQ(step.request->endpoint, Endpoint::kCreateMachine);
}

TEST(ReconcileCreate, MalformedCreateAnswerIsAlsoAmbiguous) {
	Operation operation(MakeTarget(), std::nullopt, MakeSettings());
	DriveToCreateMachine(operation);
	Step step = operation.OnOutcome(Out(OutcomeKind::kMalformed, 200));
	ExpectRequest(step, Endpoint::kListMachines, "GET", AppPath() + "/machines", UserFilter());
}

TEST(ReconcileCreate, CreateAnswerWithoutIdIsRetried) {
	Operation operation(MakeTarget(), std::nullopt, MakeSettings());
	DriveToCreateMachine(operation);
	Step step = operation.OnOutcome(Ok("{\"state\":\"created\"}"));
	// The machine may exist all the same: it is looked up before anything is created again.
	EXPECT_FALSE(step.failed_attempt);
	ASSERT_TRUE(step.request.has_value());
	EXPECT_EQ(step.request->endpoint, Endpoint::kListMachines);
	EXPECT_EQ(EventTypes(step), Types{"provision_attempt_failed"});
}

TEST(ReconcileCreate, YoungPendingCreateWaitsInsteadOfCreating) {
	AppRecord record = MakeRecord("provisioning");
	record.pending_create_operation = "7-0";
	record.pending_create_age_seconds = 12;
	Operation operation(MakeTarget(), record, MakeSettings());
	operation.Start();
	AppCreated(operation, "{}");
	Step step = operation.OnOutcome(Ok("[]"));
	ExpectRetriedInPlace(step);
	// Our own wait, not Fly's Retry-After: fly.retry_max_delay (which caps only Fly's header) leaves it whole.
	EXPECT_FALSE(step.retry_after_seconds.has_value());
	EXPECT_NEAR(step.settle_seconds, 18.0, 0.001);
	EXPECT_EQ(EventTypes(step), Types{"provision_attempt_failed"});
	EXPECT_FALSE(step.app.has_value());
}

// The crash came between recording the create and sending it: once the pending create is old enough, the
// waiting operation itself creates the machine instead of waiting again until it runs out of attempts.
TEST(ReconcileCreate, PendingCreateThatNeverLandsIsReplacedOnceItIsOldEnough) {
	AppRecord record = MakeRecord("provisioning");
	record.pending_create_operation = "7-0";
	record.pending_create_age_seconds = 12;
	Operation operation(MakeTarget(), record, MakeSettings());
	operation.SetNow(1000);
	operation.Start();
	AppCreated(operation, "{}");
	operation.SetNow(1001);
	Step step = operation.OnOutcome(Ok("[]"));
	ExpectRetriedInPlace(step);
	EXPECT_FALSE(step.retry_after_seconds.has_value());
	EXPECT_NEAR(step.settle_seconds, 17.0, 0.001);
	operation.SetNow(1001 + 17.1);
	step = operation.OnOutcome(Ok("[]"));
	ASSERT_TRUE(step.app.has_value());
	EXPECT_EQ(step.app->pending_create, "7-1");
	ExpectRequest(step, Endpoint::kCreateMachine, "POST", AppPath() + "/machines");
}

TEST(ReconcileCreate, OldPendingCreateIsReplacedByANewOne) {
	AppRecord record = MakeRecord("provisioning");
	record.pending_create_operation = "7-0";
	record.pending_create_age_seconds = 45;
	Operation operation(MakeTarget(), record, MakeSettings());
	operation.Start();
	AppCreated(operation, "{}");
	Step step = operation.OnOutcome(Ok("[]"));
	ASSERT_TRUE(step.app.has_value());
	EXPECT_EQ(step.app->pending_create, "7-1");
	ExpectRequest(step, Endpoint::kCreateMachine, "POST", AppPath() + "/machines");
	EXPECT_EQ(Body(Req(step)).Get("config").Get("metadata").GetString(kOperationMetadataKey), "7-1");
}

TEST(ReconcileCreate, PendingCreateThatLandedIsAdoptedAndCleared) {
	AppRecord record = MakeRecord("provisioning");
	record.pending_create_operation = "7-0";
	record.pending_create_age_seconds = 3;
	Operation operation(MakeTarget(), record, MakeSettings());
	operation.Start();
	AppCreated(operation, "{}");
	Step step = operation.OnOutcome(Ok(ListText({MachineText("m4", "started")})));
	EXPECT_EQ(EventTypes(step), Types{"machine_reused"});
	ASSERT_TRUE(step.app.has_value());
	EXPECT_EQ(step.app->pending_create, "");
	EXPECT_EQ(step.app->machine_id, "m4");
	ExpectRequest(step, Endpoint::kWaitMachine, "GET", AppPath() + "/machines/m4/wait", WaitQuery());
}

// ---------------------------------------------------------------------------------------------------------------
// Failures

// Drives a fresh provision (with secrets, so every step is reachable) to the request of `endpoint`.
Operation
ProvisionAt(Endpoint endpoint) {
	Settings settings = MakeSettings();
	settings.secrets = {{"K", "v"}};
	Operation operation(MakeTarget(), std::nullopt, settings);
	std::vector<std::function<fly::Outcome()>> answers = {
		[] { return Ok("{}", 201); },                                             // create_app
		[] { return Ok(AppText(Candidate(0), kOrg)); },                           // get_app: visible
		[] { return Ok("{\"version\":2}"); },                                     // set_secrets
		[] { return Ok(ListText({MachineText("m1", "stopped", kOtherGuest)})); }, // list → update
		[] { return Ok(MachineText("m1", "stopped")); },                          // update → start
		[] { return Ok("{\"previous_state\":\"stopped\"}"); },                    // start → wait
	};
	Step step = operation.Start();
	for (const auto &answer : answers) {
		if (step.request && step.request->endpoint == endpoint) {
			return operation;
		}
		step = operation.OnOutcome(answer());
	}
	EXPECT_TRUE(step.request && step.request->endpoint == endpoint) << fly::EndpointName(endpoint);
	return operation;
}

TEST(ReconcileFailure, TransientFailureAtAnyStepIsRetriedWithDetails) {
	for (Endpoint endpoint : {Endpoint::kCreateApp, Endpoint::kSetSecrets, Endpoint::kListMachines,
	                          Endpoint::kUpdateMachine, Endpoint::kStartMachine, Endpoint::kWaitMachine}) {
		SCOPED_TRACE(fly::EndpointName(endpoint));
		Operation operation = ProvisionAt(endpoint);
		fly::Outcome outcome = Out(OutcomeKind::kTransient, 503, "", "service_unavailable", "01REQ");
		outcome.fly_error = "try later";
		outcome.retry_after_seconds = 7;
		Step step = operation.OnOutcome(outcome);
		ExpectRetriedInPlace(step);
		EXPECT_FALSE(step.app.has_value());
		EXPECT_EQ(step.error, outcome.message);
		EXPECT_EQ(step.retry_after_seconds, 7.0);
		ASSERT_EQ(EventTypes(step), Types{"provision_attempt_failed"});
		Json details = Details(step.events[0]);
		EXPECT_EQ(details.GetString("step"), std::string(fly::EndpointName(endpoint)));
		EXPECT_EQ(details.GetInteger("http_status"), 503);
		EXPECT_EQ(details.GetString("fly_status"), "service_unavailable");
		EXPECT_EQ(details.GetString("fly_error"), "try later");
		EXPECT_EQ(details.GetString("fly_request_id"), "01REQ");
		// The same request goes again; the operation keeps what it has done.
		EXPECT_EQ(step.request->endpoint, endpoint);
	}
}

// A 2xx whose body is cut short or is not what the endpoint returns says nothing about the request itself (a
// proxy or a dropped connection may have mangled it): it is retried like a 5xx, within fly.max_attempts.
TEST(ReconcileFailure, MalformedAnswerAtAnyStepIsRetried) {
	for (Endpoint endpoint : {Endpoint::kCreateApp, Endpoint::kSetSecrets, Endpoint::kListMachines,
	                          Endpoint::kUpdateMachine, Endpoint::kStartMachine, Endpoint::kWaitMachine}) {
		SCOPED_TRACE(fly::EndpointName(endpoint));
		Operation operation = ProvisionAt(endpoint);
		Step step = operation.OnOutcome(Out(OutcomeKind::kMalformed, 200));
		ExpectRetriedInPlace(step);
		EXPECT_EQ(EventTypes(step), Types{"provision_attempt_failed"});
		EXPECT_EQ(step.request->endpoint, endpoint);
	}
	Operation deprovision(MakeTarget(false), MakeRecord("active"), MakeSettings());
	deprovision.Start();
	Step step = deprovision.OnOutcome(Out(OutcomeKind::kMalformed, 200));
	ExpectRetriedInPlace(step);
	EXPECT_EQ(EventTypes(step), Types{"deprovision_attempt_failed"});
	EXPECT_EQ(step.request->endpoint, Endpoint::kListMachines);
}

TEST(ReconcileFailure, TransientFailureOnStartIsRetried) {
	Operation operation(MakeTarget(), std::nullopt, MakeSettings());
	DriveToFindMachine(operation);
	operation.OnOutcome(Ok(ListText({MachineText("m1", "stopped")})));
	Step step = operation.OnOutcome(Out(OutcomeKind::kTransient, 429));
	ExpectRetriedInPlace(step);
	EXPECT_EQ(Details(step.events[0]).GetString("step"), "start_machine");
}

// A start whose answer was lost and is sent again finds the machine starting already: Fly answers 412, and the
// operation looks at the machine again (a failed attempt) instead of failing.
TEST(ReconcileFailure, RepeatedStartThatFindsTheMachineStartingWaitsForIt) {
	Operation operation(MakeTarget(), std::nullopt, MakeSettings());
	DriveToFindMachine(operation);
	Step step = operation.OnOutcome(Ok(ListText({MachineText("m1", "stopped")})));
	ExpectRequest(step, Endpoint::kStartMachine, "POST", AppPath() + "/machines/m1/start");
	step = operation.OnOutcome(Out(OutcomeKind::kMalformed, 200));
	ExpectRetriedInPlace(step);
	step = operation.OnOutcome(Out(OutcomeKind::kPermanent, 412, "", "failed_precondition"));
	ExpectRetriedInPlace(step);
	EXPECT_EQ(EventTypes(step), Types{"provision_attempt_failed"});
	ExpectRequest(step, Endpoint::kListMachines, "GET", AppPath() + "/machines", UserFilter());
	step = operation.OnOutcome(Ok(ListText({MachineText("m1", "starting")})));
	ExpectRequest(step, Endpoint::kWaitMachine, "GET", AppPath() + "/machines/m1/wait", WaitQuery());
	step = operation.OnOutcome(Ok("{\"ok\":true,\"state\":\"started\"}"));
	ExpectEnded(step, Completion::kDone);
}

TEST(ReconcileFailure, PermanentFailureFailsTheOperation) {
	Operation operation(MakeTarget(), std::nullopt, MakeSettings());
	operation.Start();
	fly::Outcome outcome = Out(OutcomeKind::kPermanent, 422, "", "invalid_name", "01VAL");
	outcome.fly_error = "Name must only contain lowercase letters";
	Step step = operation.OnOutcome(outcome);
	ExpectEnded(step, Completion::kFailed);
	EXPECT_FALSE(step.app.has_value());
	EXPECT_FALSE(step.error.empty());
	ASSERT_EQ(EventTypes(step), Types{"provision_failed"});
	Json details = Details(step.events[0]);
	EXPECT_EQ(details.GetString("step"), "create_app");
	EXPECT_EQ(details.GetInteger("http_status"), 422);
	EXPECT_EQ(details.GetString("fly_status"), "invalid_name");
	EXPECT_EQ(details.GetString("fly_request_id"), "01VAL");
}

TEST(ReconcileFailure, PermanentCreateMachineFailureFails) {
	Operation operation(MakeTarget(), std::nullopt, MakeSettings());
	DriveToCreateMachine(operation);
	Step step = operation.OnOutcome(Out(OutcomeKind::kPermanent, 422, "", "insufficient_capacity"));
	ExpectEnded(step, Completion::kFailed);
	EXPECT_EQ(EventTypes(step), Types{"provision_failed"});
	EXPECT_EQ(Details(step.events[0]).GetString("step"), "create_machine");
}

TEST(ReconcileFailure, UnauthorizedWaitFails) {
	Operation operation(MakeTarget(), std::nullopt, MakeSettings());
	DriveToWait(operation);
	operation.SetNow(61);
	Step step = operation.OnOutcome(Out(OutcomeKind::kPermanent, 401));
	ExpectEnded(step, Completion::kFailed);
	EXPECT_EQ(EventTypes(step), Types{"provision_failed"});
}

TEST(ReconcileFailure, OutcomeAfterTheOperationFinishedFails) {
	Operation operation(MakeTarget(), std::nullopt, MakeSettings());
	DriveToWait(operation);
	Step step = operation.OnOutcome(Ok("{\"ok\":true}"));
	ASSERT_EQ(step.completion, Completion::kDone);
	step = operation.OnOutcome(Ok("{\"ok\":true}"));
	ExpectEnded(step, Completion::kFailed);
	EXPECT_FALSE(step.app.has_value());
	EXPECT_EQ(EventTypes(step), Types{"provision_failed"});
	// And again: still no crash.
	EXPECT_EQ(operation.OnOutcome(Out(OutcomeKind::kTransient, 0)).completion, Completion::kFailed);
}

TEST(ReconcileFailure, OutcomeBeforeStartFails) {
	Operation operation(MakeTarget(false), std::nullopt, MakeSettings());
	Step step = operation.OnOutcome(Ok("[]"));
	ExpectEnded(step, Completion::kFailed);
	EXPECT_EQ(EventTypes(step), Types{"deprovision_failed"});
}

// ---------------------------------------------------------------------------------------------------------------
// Deprovision

Query
StoppedWait() {
	return {{"state", "stopped"}, {"timeout", "45"}};
}

// After DELETE answered 202: expects the GET app that confirms the deletion, after `delay` seconds.
void
ExpectConfirmGet(const Step &step, double delay) {
	ExpectRequest(step, Endpoint::kGetApp, "GET", AppPath());
	EXPECT_DOUBLE_EQ(step.delay_seconds, delay);
	EXPECT_FALSE(step.failed_attempt);
}

TEST(ReconcileDeprovision, LiveRowStopsMachinesWaitsUntilStoppedThenDeletesTheApp) {
	Operation operation(MakeTarget(false), MakeRecord("active"), MakeSettings());
	Step step = operation.Start();
	EXPECT_EQ(EventTypes(step), Types{"deprovision_requested"});
	Json requested = Details(step.events[0]);
	EXPECT_EQ(requested.GetString("app_name"), Candidate(0));
	EXPECT_EQ(requested.GetString("previous_status"), "active");
	ASSERT_TRUE(step.app.has_value());
	EXPECT_FALSE(step.app->insert);
	EXPECT_EQ(step.app->status, "deprovisioning");
	ExpectRequest(step, Endpoint::kListMachines, "GET", AppPath() + "/machines"); // no metadata filter

	step = operation.OnOutcome(
		Ok(ListText({MachineText("m1", "started"), MachineText("m2", "stopped"), MachineText("m3", "started"),
	                 MachineText("m4", "destroyed"), MachineText("m5", "stopping")})));
	EXPECT_TRUE(step.events.empty());
	EXPECT_FALSE(step.app.has_value());
	ExpectRequest(step, Endpoint::kStopMachine, "POST", AppPath() + "/machines/m3/stop");
	EXPECT_FALSE(Req(step).body_json.has_value());

	step = operation.OnOutcome(Ok("{\"ok\":true}"));
	EXPECT_TRUE(step.events.empty());
	ExpectRequest(step, Endpoint::kStopMachine, "POST", AppPath() + "/machines/m1/stop");

	step = operation.OnOutcome(Out(OutcomeKind::kNotFound, 404)); // gone already counts as stopped
	EXPECT_EQ(EventTypes(step), Types{"machines_stopped"});
	// A stop only begins stopping: each machine that was running or stopping is awaited in "stopped".
	ExpectRequest(step, Endpoint::kWaitMachine, "GET", AppPath() + "/machines/m5/wait", StoppedWait());
	step = operation.OnOutcome(Ok("{\"ok\":true,\"state\":\"stopped\"}"));
	ExpectRequest(step, Endpoint::kWaitMachine, "GET", AppPath() + "/machines/m3/wait", StoppedWait());
	step = operation.OnOutcome(Ok("{\"ok\":true,\"state\":\"stopped\"}"));
	ExpectRequest(step, Endpoint::kWaitMachine, "GET", AppPath() + "/machines/m1/wait", StoppedWait());
	EXPECT_FALSE(step.app.has_value());
	step = operation.OnOutcome(Out(OutcomeKind::kNotFound, 404)); // destroyed meanwhile

	EXPECT_EQ(EventTypes(step), Types{"app_delete_requested"});
	EXPECT_EQ(Details(step.events[0]).GetBool("force"), false);
	ASSERT_TRUE(step.app.has_value());
	EXPECT_EQ(step.app->delete_requested, std::optional<bool>(true)); // recorded before the DELETE leaves
	EXPECT_FALSE(step.app->deleted);
	ExpectRequest(step, Endpoint::kDeleteApp, "DELETE", AppPath());

	// 202 is not "gone": the app is polled until it answers 404, with a growing pause.
	operation.SetNow(100);
	step = operation.OnOutcome(Ok("", 202));
	EXPECT_TRUE(step.events.empty());
	EXPECT_FALSE(step.app.has_value());
	ExpectConfirmGet(step, 0.5);
	operation.SetNow(101);
	step = operation.OnOutcome(Ok(AppText(Candidate(0), kOrg)));
	EXPECT_FALSE(step.app.has_value());
	ExpectConfirmGet(step, 1);
	step = operation.OnOutcome(Ok(AppText(Candidate(0), kOrg)));
	ExpectConfirmGet(step, 2);
	step = operation.OnOutcome(Ok(AppText(Candidate(0), kOrg)));
	ExpectConfirmGet(step, 4);
	step = operation.OnOutcome(Ok(AppText(Candidate(0), kOrg)));
	ExpectConfirmGet(step, 5);
	step = operation.OnOutcome(Ok(AppText(Candidate(0), kOrg)));
	ExpectConfirmGet(step, 5);

	operation.SetNow(112.5);
	step = operation.OnOutcome(Out(OutcomeKind::kNotFound, 404));
	ExpectEnded(step, Completion::kDone);
	EXPECT_EQ(EventTypes(step), (Types{"app_delete_confirmed", "deprovision_completed"}));
	Json confirmed = Details(step.events[0]);
	EXPECT_EQ(confirmed.GetString("app_name"), Candidate(0));
	EXPECT_EQ(confirmed.GetBool("already_gone"), false);
	EXPECT_EQ(confirmed.GetNumber("waited_seconds"), 12.5);
	EXPECT_EQ(confirmed.GetInteger("polls"), 6);
	EXPECT_EQ(Details(step.events[1]).GetBool("already_gone"), false);
	ASSERT_TRUE(step.app.has_value());
	EXPECT_EQ(step.app->status, "deleted");
	EXPECT_TRUE(step.app->deleted);
}

TEST(ReconcileDeprovision, NotFoundOnListOrDeleteCountsAsDone) {
	Operation operation(MakeTarget(false), MakeRecord("active"), MakeSettings());
	operation.Start();
	Step step = operation.OnOutcome(Out(OutcomeKind::kNotFound, 404));
	EXPECT_EQ(EventTypes(step), Types{"app_delete_requested"});
	ExpectRequest(step, Endpoint::kDeleteApp, "DELETE", AppPath());
	step = operation.OnOutcome(Out(OutcomeKind::kNotFound, 404));
	ExpectEnded(step, Completion::kDone);
	EXPECT_EQ(EventTypes(step), (Types{"app_delete_confirmed", "deprovision_completed"}));
	EXPECT_EQ(Details(step.events[0]).GetBool("already_gone"), true);
	EXPECT_EQ(Details(step.events[1]).GetBool("already_gone"), true);
	ASSERT_TRUE(step.app.has_value());
	EXPECT_EQ(step.app->status, "deleted");
	EXPECT_TRUE(step.app->deleted);
}

TEST(ReconcileDeprovision, NoRunningMachinesGoesStraightToDelete) {
	Operation operation(MakeTarget(false), MakeRecord("failed"), MakeSettings());
	operation.Start();
	Step step = operation.OnOutcome(Ok(ListText({MachineText("m1", "stopped"), MachineText("m2", "suspended")})));
	EXPECT_EQ(EventTypes(step), Types{"app_delete_requested"});
	ExpectRequest(step, Endpoint::kDeleteApp, "DELETE", AppPath());
}

// A machine that does not reach "stopped" within the wait rounds, or that Fly will not wait for, makes the
// delete use force=true (documented in Fly's docs).
TEST(ReconcileDeprovision, MachineNotStoppedInTimeMakesTheDeleteForced) {
	Operation operation(MakeTarget(false), MakeRecord("active"), MakeSettings());
	operation.Start();
	operation.OnOutcome(Ok(ListText({MachineText("m1", "started"), MachineText("m2", "stopping")})));
	Step step = operation.OnOutcome(Ok("{\"ok\":true}"));
	ExpectRequest(step, Endpoint::kWaitMachine, "GET", AppPath() + "/machines/m2/wait", StoppedWait());
	step = operation.OnOutcome(Out(OutcomeKind::kPermanent, 400));
	EXPECT_EQ(EventTypes(step), Types{"machine_stop_unconfirmed"});
	EXPECT_EQ(Details(step.events[0]).GetString("machine_id"), "m2");
	ExpectRequest(step, Endpoint::kWaitMachine, "GET", AppPath() + "/machines/m1/wait", StoppedWait());
	for (int round = 1; round < 3; round++) { // wait_rounds = 3
		step = operation.OnOutcome(Out(OutcomeKind::kTransient, 408));
		EXPECT_TRUE(step.events.empty());
		EXPECT_FALSE(step.failed_attempt);
		ExpectRequest(step, Endpoint::kWaitMachine, "GET", AppPath() + "/machines/m1/wait", StoppedWait());
	}
	step = operation.OnOutcome(Out(OutcomeKind::kTransient, 408));
	EXPECT_EQ(EventTypes(step), (Types{"machine_stop_unconfirmed", "app_delete_requested"}));
	EXPECT_EQ(Details(step.events[1]).GetBool("force"), true);
	ExpectRequest(step, Endpoint::kDeleteApp, "DELETE", AppPath(), {{"force", "true"}});
}

TEST(ReconcileDeprovision, TransientWaitOrConfirmFailuresAreRetriedInPlace) {
	Operation operation(MakeTarget(false), MakeRecord("active"), MakeSettings());
	operation.Start();
	operation.OnOutcome(Ok(ListText({MachineText("m1", "stopping")})));
	Step step = operation.OnOutcome(Out(OutcomeKind::kTransient, 503));
	ExpectRetriedInPlace(step);
	EXPECT_EQ(Details(step.events[0]).GetString("step"), "wait_machine");
	step = operation.OnOutcome(Ok("{\"ok\":true}"));
	step = operation.OnOutcome(Ok("", 202));
	step = operation.OnOutcome(Out(OutcomeKind::kTransient, 500));
	ExpectRetriedInPlace(step);
	EXPECT_EQ(Details(step.events[0]).GetString("step"), "get_app");
	ExpectRequest(step, Endpoint::kGetApp, "GET", AppPath());
	step = operation.OnOutcome(Out(OutcomeKind::kForbidden, 403)); // another org holds the name: ours is gone
	ExpectEnded(step, Completion::kDone);
	EXPECT_EQ(EventTypes(step), (Types{"app_delete_confirmed", "deprovision_completed"}));
}

// An app still there when the bound is reached is not recorded gone: each further look is a failed attempt, so
// fly.max_attempts ends it.
TEST(ReconcileDeprovision, AppStillThereAfterTheBoundIsNeverRecordedGone) {
	Operation operation(MakeTarget(false), MakeRecord("active"), MakeSettings());
	operation.Start();
	operation.OnOutcome(Ok("[]"));
	operation.SetNow(10);
	operation.OnOutcome(Ok("", 202));
	operation.SetNow(10 + 299);
	Step step = operation.OnOutcome(Ok(AppText(Candidate(0), kOrg)));
	ExpectConfirmGet(step, 1);
	operation.SetNow(10 + 300);
	step = operation.OnOutcome(Ok(AppText(Candidate(0), kOrg)));
	ExpectRetriedInPlace(step);
	EXPECT_EQ(EventTypes(step), Types{"deprovision_attempt_failed"});
	ExpectRequest(step, Endpoint::kGetApp, "GET", AppPath());
	EXPECT_FALSE(step.app.has_value());
}

TEST(ReconcileDeprovision, TransientFailuresAreRetriedAsDeprovisionAttempts) {
	Operation operation(MakeTarget(false), MakeRecord("active"), MakeSettings());
	operation.Start();
	operation.OnOutcome(Ok(ListText({MachineText("m1", "started")})));
	Step step = operation.OnOutcome(Out(OutcomeKind::kTransient, 502, "", "", "rq"));
	ExpectRetriedInPlace(step);
	EXPECT_EQ(EventTypes(step), Types{"deprovision_attempt_failed"});
	EXPECT_EQ(Details(step.events[0]).GetString("step"), "stop_machine");
	EXPECT_EQ(Details(step.events[0]).GetString("fly_request_id"), "rq");
}

TEST(ReconcileDeprovision, PermanentDeleteFailureFails) {
	Operation operation(MakeTarget(false), MakeRecord("active"), MakeSettings());
	operation.Start();
	operation.OnOutcome(Ok("[]"));
	Step step = operation.OnOutcome(Out(OutcomeKind::kPermanent, 401));
	ExpectEnded(step, Completion::kFailed);
	EXPECT_EQ(EventTypes(step), Types{"deprovision_failed"});
	EXPECT_EQ(Details(step.events[0]).GetString("step"), "delete_app");
}

TEST(ReconcileDeprovision, WithoutRowNothingOnFlyIsDone) {
	Operation operation(MakeTarget(false), std::nullopt, MakeSettings());
	Step step = operation.Start();
	EXPECT_TRUE(step.events.empty());
	EXPECT_FALSE(step.app.has_value());
	ExpectRequest(step, Endpoint::kGetApp, "GET", AppPath());
	step = operation.OnOutcome(Out(OutcomeKind::kNotFound, 404));
	ExpectEnded(step, Completion::kDone);
	EXPECT_TRUE(step.events.empty());
	EXPECT_FALSE(step.app.has_value());
}

TEST(ReconcileDeprovision, WithoutRowAnotherOrgsAppIsLeftAlone) {
	{
		Operation operation(MakeTarget(false), std::nullopt, MakeSettings());
		operation.Start();
		Step step = operation.OnOutcome(Out(OutcomeKind::kForbidden, 403));
		ExpectEnded(step, Completion::kDone);
		EXPECT_TRUE(step.events.empty());
		EXPECT_FALSE(step.app.has_value());
	}
	{
		Operation operation(MakeTarget(false), std::nullopt, MakeSettings());
		operation.Start();
		Step step = operation.OnOutcome(Ok(AppText(Candidate(0), "someone-else")));
		ExpectEnded(step, Completion::kDone);
		EXPECT_TRUE(step.events.empty());
		EXPECT_FALSE(step.app.has_value());
	}
}

TEST(ReconcileDeprovision, WithoutRowOurOrphanIsRecordedAndDeleted) {
	Operation operation(MakeTarget(false), std::nullopt, MakeSettings());
	operation.Start();
	Step step = operation.OnOutcome(Ok(AppText(Candidate(0), kOrg)));
	EXPECT_EQ(EventTypes(step), Types{"deprovision_requested"});
	EXPECT_EQ(Details(step.events[0]).GetString("app_name"), Candidate(0));
	ASSERT_TRUE(step.app.has_value());
	EXPECT_TRUE(step.app->insert);
	EXPECT_EQ(step.app->name, Candidate(0));
	EXPECT_EQ(step.app->name_attempt, 0);
	EXPECT_EQ(step.app->status, "deprovisioning");
	ExpectRequest(step, Endpoint::kListMachines, "GET", AppPath() + "/machines");
	step = operation.OnOutcome(Ok(ListText({MachineText("m1", "started")})));
	ExpectRequest(step, Endpoint::kStopMachine, "POST", AppPath() + "/machines/m1/stop");
	step = operation.OnOutcome(Ok("{\"ok\":true}"));
	EXPECT_EQ(EventTypes(step), Types{"machines_stopped"});
	ExpectRequest(step, Endpoint::kWaitMachine, "GET", AppPath() + "/machines/m1/wait", StoppedWait());
	step = operation.OnOutcome(Ok("{\"ok\":true,\"state\":\"stopped\"}"));
	ExpectRequest(step, Endpoint::kDeleteApp, "DELETE", AppPath());
	step = operation.OnOutcome(Ok("", 202));
	ExpectConfirmGet(step, 0.5);
	step = operation.OnOutcome(Out(OutcomeKind::kNotFound, 404));
	ExpectEnded(step, Completion::kDone);
	EXPECT_TRUE(step.app->deleted);
	EXPECT_EQ(EventTypes(step), (Types{"app_delete_confirmed", "deprovision_completed"}));
}

// A provision over a row whose app was being deleted: it never reuses that app. It sends the DELETE again (the
// first may never have left), waits for 404, and creates the app afresh under the same name.
TEST(ReconcileDeprovision, ProvisionFinishesADeletionBeforeCreatingTheAppAgain) {
	AppRecord record = MakeRecord("deprovisioning");
	record.delete_requested = true;
	Operation operation(MakeTarget(), record, MakeSettings());
	Step step = operation.Start();
	EXPECT_EQ(EventTypes(step), (Types{"provision_requested", "app_delete_requested"}));
	ASSERT_TRUE(step.app.has_value());
	EXPECT_EQ(step.app->status, "provisioning");
	EXPECT_EQ(step.app->delete_requested, std::optional<bool>(true));
	// Sent again forced: the first one stopped the machines, or met one that would not stop.
	ExpectRequest(step, Endpoint::kDeleteApp, "DELETE", AppPath(), {{"force", "true"}});
	step = operation.OnOutcome(Ok("", 202));
	ExpectConfirmGet(step, 0.5);
	step = operation.OnOutcome(Ok(AppText(Candidate(0), kOrg))); // ours, and dying: not reused
	ExpectConfirmGet(step, 1);
	step = operation.OnOutcome(Out(OutcomeKind::kNotFound, 404));
	EXPECT_EQ(EventTypes(step), Types{"app_delete_confirmed"});
	ASSERT_TRUE(step.app.has_value());
	EXPECT_EQ(step.app->delete_requested, std::optional<bool>(false));
	EXPECT_FALSE(step.app->deleted);
	ExpectRequest(step, Endpoint::kCreateApp, "POST", "/v1/apps");
	EXPECT_EQ(Body(Req(step)).GetString("name"), Candidate(0));
}

// ... and when the dying app still answers at the end of the bound, it moves on to the user's next name.
TEST(ReconcileDeprovision, ProvisionMovesOnToTheNextNameWhenTheDyingAppLingers) {
	AppRecord record = MakeRecord("deprovisioning");
	record.delete_requested = true;
	record.machine_id = "m1";
	Operation operation(MakeTarget(), record, MakeSettings());
	operation.Start();
	operation.SetNow(5);
	operation.OnOutcome(Ok("", 202));
	operation.SetNow(5 + 300);
	Step step = operation.OnOutcome(Ok(AppText(Candidate(0), kOrg)));
	EXPECT_EQ(EventTypes(step), Types{"app_name_moved_on"});
	Json details = Details(step.events[0]);
	EXPECT_EQ(details.GetString("from_name"), Candidate(0));
	EXPECT_EQ(details.GetString("to_name"), Candidate(1));
	EXPECT_EQ(details.GetNumber("waited_seconds"), 300);
	ASSERT_TRUE(step.app.has_value());
	EXPECT_EQ(step.app->name, Candidate(1));
	EXPECT_EQ(step.app->name_attempt, 1);
	EXPECT_EQ(step.app->delete_requested, std::optional<bool>(false));
	EXPECT_EQ(step.app->machine_id, std::optional<std::string>(""));
	ExpectRequest(step, Endpoint::kCreateApp, "POST", "/v1/apps");
	EXPECT_EQ(Body(Req(step)).GetString("name"), Candidate(1));
	EXPECT_EQ(Body(Req(step)).GetString("network"), Candidate(1)); // its own network, like any new app
	step = operation.OnOutcome(Ok("{\"id\":\"app-2\"}", 201));
	EXPECT_EQ(EventTypes(step), Types{"app_created"});
	ExpectRequest(step, Endpoint::kGetApp, "GET", AppPath(Candidate(1)));
	step = operation.OnOutcome(Ok(AppText(Candidate(1), kOrg)));
	ExpectRequest(step, Endpoint::kListMachines, "GET", AppPath(Candidate(1)) + "/machines", UserFilter());
}

TEST(ReconcileDeprovision, WithoutRowTransientLookupIsRetried) {
	Operation operation(MakeTarget(false), std::nullopt, MakeSettings());
	operation.Start();
	Step step = operation.OnOutcome(Out(OutcomeKind::kTransient, 500));
	ExpectRetriedInPlace(step);
	EXPECT_EQ(EventTypes(step), Types{"deprovision_attempt_failed"});
	EXPECT_EQ(Details(step.events[0]).GetString("step"), "get_app");
}

TEST(ReconcileHostileAnswers, GarbledMachineListIsRetriedAndCreatesNothing) {
	Operation operation(MakeTarget(), std::nullopt, MakeSettings());
	DriveToFindMachine(operation);
	// Fly lists the user's machine with a null id: the machine exists, so creating another would duplicate it.
	Step step = operation.OnOutcome(Ok("[{\"id\":null,\"state\":\"started\"}]"));
	ExpectRetriedInPlace(step);
	ExpectRequest(step, Endpoint::kListMachines, "GET", AppPath() + "/machines", UserFilter());
	ASSERT_EQ(EventTypes(step), Types{"provision_attempt_failed"});
	Json details = Details(step.events[0]);
	EXPECT_EQ(details.GetString("step"), "list_machines");
	EXPECT_NE(details.GetString("message").value_or("").find("entry 1 of the machine list is unusable: its id is null"),
	          std::string::npos)
		<< step.events[0].details_json;
	// The next, sound answer carries on.
	step = operation.OnOutcome(Ok(ListText({MachineText("m1", "started")})));
	ExpectRequest(step, Endpoint::kWaitMachine, "GET", AppPath() + "/machines/m1/wait", WaitQuery());
}

TEST(ReconcileHostileAnswers, MalformedAnswersAreRetriedNotFailed) {
	// Oversized, not JSON, mislabelled: the client reports all of them as malformed; the next answer may be fine.
	Operation operation(MakeTarget(), std::nullopt, MakeSettings());
	operation.Start();
	Step step = operation.OnOutcome(Out(OutcomeKind::kMalformed, 201));
	ExpectRetriedInPlace(step);
	ExpectRequest(step, Endpoint::kCreateApp, "POST", "/v1/apps");
	EXPECT_EQ(EventTypes(step), Types{"provision_attempt_failed"});

	Operation deprovision(MakeTarget(false), MakeRecord(), MakeSettings());
	deprovision.Start();
	step = deprovision.OnOutcome(Ok("[\"m1\"]"));
	ExpectRetriedInPlace(step);
	ExpectRequest(step, Endpoint::kListMachines, "GET", AppPath() + "/machines");
	EXPECT_EQ(EventTypes(step), Types{"deprovision_attempt_failed"});
}

TEST(ReconcileHostileAnswers, CreateAnswerWithConfusedTypesIsLookedUp) {
	Operation operation(MakeTarget(), std::nullopt, MakeSettings());
	DriveToCreateMachine(operation);
	Step step = operation.OnOutcome(Ok("{\"id\":\"m1\",\"config\":\"{}\"}"));
	ExpectRequest(step, Endpoint::kListMachines, "GET", AppPath() + "/machines", UserFilter());
	ASSERT_EQ(EventTypes(step), Types{"provision_attempt_failed"});
	EXPECT_NE(Details(step.events[0])
	              .GetString("message")
	              .value_or("")
	              .find("the created machine is unusable: its config is a string"),
	          std::string::npos);
}

} // namespace
} // namespace reconcile
} // namespace pgfly

namespace pgfly {
namespace reconcile {
namespace {

// Machines cannot change region: when the tier's region moves, the machine elsewhere is destroyed and a new
// one is created in the target region.
TEST(ReconcileMachine, MachineInAnotherRegionIsReplaced) {
	Operation operation(MakeTarget(), std::nullopt, MakeSettings());
	DriveToFindMachine(operation);
	Step step = operation.OnOutcome(Ok(ListText({MachineText("m9", "started", kGuest, kImage, "lhr")})));
	EXPECT_EQ(EventTypes(step), Types{"machine_replaced_for_region"});
	EXPECT_EQ(Details(step.events[0]).GetString("target_region"), "ams");
	ExpectRequest(step, Endpoint::kDeleteMachine, "DELETE", AppPath() + "/machines/m9", {{"force", "true"}});
	step = operation.OnOutcome(Ok("{\"ok\":true}"));
	ASSERT_TRUE(step.request.has_value());
	EXPECT_EQ(step.request->endpoint, Endpoint::kCreateMachine);
	EXPECT_EQ(Body(Req(step)).GetString("region"), "ams");
}

// Consistency after create

TEST(ReconcileSettle, ANewAppIsLookedUpUntilFlyShowsIt) {
	Operation operation(MakeTarget(), std::nullopt, MakeSettings());
	operation.Start();
	Step step = operation.OnOutcome(Ok("{\"id\":\"app-1\"}", 201));
	EXPECT_EQ(EventTypes(step), Types{"app_created"});
	ASSERT_TRUE(step.app.has_value());
	EXPECT_TRUE(step.app->app_created);
	ExpectRequest(step, Endpoint::kGetApp, "GET", AppPath());
	// 404, then 401 (both seen right after a create), then 200: asked again with a growing pause, no attempt
	// counted, one event.
	operation.SetNow(1);
	step = operation.OnOutcome(Out(OutcomeKind::kNotFound, 404));
	ExpectRequest(step, Endpoint::kGetApp, "GET", AppPath());
	EXPECT_FALSE(step.failed_attempt);
	EXPECT_EQ(step.completion, Completion::kContinue);
	EXPECT_DOUBLE_EQ(step.delay_seconds, 0.5);
	ASSERT_EQ(EventTypes(step), Types{"app_settling"});
	EXPECT_EQ(Details(step.events[0]).GetInteger("http_status"), 404);
	step = operation.OnOutcome(Out(OutcomeKind::kPermanent, 401));
	ExpectRequest(step, Endpoint::kGetApp, "GET", AppPath());
	EXPECT_FALSE(step.failed_attempt);
	EXPECT_DOUBLE_EQ(step.delay_seconds, 1.0);
	EXPECT_TRUE(step.events.empty());
	step = operation.OnOutcome(Ok(AppText(Candidate(0), kOrg)));
	ExpectRequest(step, Endpoint::kListMachines, "GET", AppPath() + "/machines", UserFilter());
}

TEST(ReconcileSettle, AnAppStillInvisibleAfterTheWindowIsAskedAgainAsFailedAttempts) {
	// Fly accepted the create: the look-up goes on, as failed attempts that fly.max_attempts ends (also with
	// fly.create_settle_time = 0, where there is no window at all).
	for (double window : {60.0, 0.0}) {
		Settings settings = MakeSettings();
		settings.visibility_window_seconds = window;
		Operation operation(MakeTarget(), std::nullopt, settings);
		operation.Start();
		operation.OnOutcome(Ok("{}", 201));
		operation.SetNow(window + 0.5);
		Step step = operation.OnOutcome(Out(OutcomeKind::kNotFound, 404));
		ExpectRequest(step, Endpoint::kGetApp, "GET", AppPath());
		EXPECT_TRUE(step.failed_attempt);
		EXPECT_EQ(EventTypes(step), Types{"provision_attempt_failed"});
		EXPECT_NE(step.error.find("still cannot be read"), std::string::npos) << step.error;
	}
}

TEST(ReconcileSettle, NotFoundUnderAYoungAppIsAskedAgainNotBelieved) {
	Operation operation(MakeTarget(), std::nullopt, MakeSettings());
	DriveToFindMachine(operation);
	operation.SetNow(5);
	Step step = operation.OnOutcome(Out(OutcomeKind::kNotFound, 404));
	ExpectRequest(step, Endpoint::kListMachines, "GET", AppPath() + "/machines", UserFilter());
	EXPECT_FALSE(step.failed_attempt);
	EXPECT_EQ(step.completion, Completion::kContinue);
	EXPECT_EQ(EventTypes(step), Types{"app_settling"});
	// The pause doubles and stays at 4 s.
	std::vector<double> delays;
	for (int i = 0; i < 5; i++) {
		delays.push_back(operation.OnOutcome(Out(OutcomeKind::kNotFound, 404)).delay_seconds);
	}
	EXPECT_EQ(delays, (std::vector<double>{1, 2, 4, 4, 4}));
	// Past the window the 404 is believed.
	operation.SetNow(61);
	step = operation.OnOutcome(Out(OutcomeKind::kNotFound, 404));
	ExpectEnded(step, Completion::kFailed);
}

TEST(ReconcileSettle, AMachineJustCreatedIsWaitedForWhenFlyDoesNotShowItYet) {
	Operation operation(MakeTarget(), std::nullopt, MakeSettings());
	DriveToWait(operation);
	// The wait right after the create answers 404: wait again, do not look for (and create) another machine.
	operation.SetNow(2);
	Step step = operation.OnOutcome(Out(OutcomeKind::kNotFound, 404));
	EXPECT_EQ(step.request->endpoint, Endpoint::kWaitMachine);
	EXPECT_FALSE(step.failed_attempt);
	EXPECT_FALSE(step.app.has_value());
	EXPECT_EQ(EventTypes(step), Types{"app_settling"});
}

TEST(ReconcileSettle, AfterARestartTheRecordedAgesKeepTheWindowOpen) {
	// The worker restarted 10 s after creating the machine: the list does not show it yet.
	AppRecord record = MakeRecord("provisioning");
	record.machine_id = "m1";
	record.app_created_age_seconds = 12;
	record.machine_created_age_seconds = 10;
	Operation operation(MakeTarget(), record, MakeSettings());
	DriveRecordedAppToFindMachine(operation);
	Step step = operation.OnOutcome(Ok("[]"));
	ExpectRequest(step, Endpoint::kListMachines, "GET", AppPath() + "/machines", UserFilter());
	EXPECT_GT(step.delay_seconds, 0);
	EXPECT_FALSE(step.app && step.app->pending_create);
	// Once the machine is old enough, an empty list means it is gone: after a look for a machine the previous
	// system left in the app (none), create one.
	operation.SetNow(51);
	step = operation.OnOutcome(Ok("[]"));
	ExpectRequest(step, Endpoint::kListMachines, "GET", AppPath() + "/machines");
	step = operation.OnOutcome(Ok("[]"));
	ExpectRequest(step, Endpoint::kCreateMachine, "POST", AppPath() + "/machines");
}

TEST(ReconcileSettle, AnOldAppAnswersAsItSays) {
	AppRecord record = MakeRecord("active");
	record.app_created_age_seconds = 3600;
	Operation operation(MakeTarget(false), record, MakeSettings());
	Step step = operation.Start();
	ExpectRequest(step, Endpoint::kListMachines, "GET", AppPath() + "/machines");
	// The app is gone: the teardown goes on to confirm it with the delete, without asking again.
	step = operation.OnOutcome(Out(OutcomeKind::kNotFound, 404));
	ExpectRequest(step, Endpoint::kDeleteApp, "DELETE", AppPath());
	EXPECT_EQ(std::count_if(step.events.begin(), step.events.end(),
	                        [](const Event &event) { return event.type == "app_settling"; }),
	          0);
}

TEST(ReconcileSettle, TheFirstCreateOfAnAppOpensTheWindow) {
	Operation operation(MakeTarget(), std::nullopt, MakeSettings());
	Step step = operation.Start();
	ASSERT_TRUE(step.app.has_value());
	EXPECT_TRUE(step.app->app_create_sent);
	// The create's answer is lost; the next try finds the name taken and the look-up does not see the app yet:
	// a lost create that took effect, not a free name nor a bad token.
	operation.SetNow(3);
	operation.OnOutcome(Out(OutcomeKind::kTransient, 504));
	step = operation.OnOutcome(Out(OutcomeKind::kNameTaken, 422, "", "name_taken"));
	ExpectRequest(step, Endpoint::kGetApp, "GET", AppPath());
	step = operation.OnOutcome(Out(OutcomeKind::kPermanent, 401));
	ExpectRequest(step, Endpoint::kGetApp, "GET", AppPath());
	EXPECT_FALSE(step.failed_attempt);
	EXPECT_EQ(EventTypes(step), Types{"app_settling"});
	step = operation.OnOutcome(Out(OutcomeKind::kNotFound, 404));
	ExpectRequest(step, Endpoint::kGetApp, "GET", AppPath());
	EXPECT_FALSE(step.failed_attempt);
	step = operation.OnOutcome(Ok(AppText(Candidate(0), kOrg)));
	EXPECT_EQ(EventTypes(step), Types{"app_reused"});
}

TEST(ReconcileSettle, AnAppRecordedYoungIsLookedUpAgainAfterARestart) {
	AppRecord record = MakeRecord("provisioning");
	record.app_created_age_seconds = 5;
	Operation operation(MakeTarget(), record, MakeSettings());
	Step step = operation.Start();
	EXPECT_FALSE(step.app->app_create_sent); // the window keeps its start
	operation.OnOutcome(Out(OutcomeKind::kNameTaken, 422, "", "name_taken"));
	step = operation.OnOutcome(Out(OutcomeKind::kPermanent, 401));
	ExpectRequest(step, Endpoint::kGetApp, "GET", AppPath());
	EXPECT_EQ(step.completion, Completion::kContinue);
	// Past the window a 404 there means the name is free again: create it.
	operation.SetNow(56);
	step = operation.OnOutcome(Out(OutcomeKind::kNotFound, 404));
	EXPECT_EQ(step.request->endpoint, Endpoint::kCreateApp);
	EXPECT_TRUE(step.failed_attempt);
}

TEST(ReconcileSettle, AnOldAppFoundAgainIsNotYoung) {
	AppRecord record = MakeRecord("active");
	record.app_created_age_seconds = 3600;
	Operation operation(MakeTarget(), record, MakeSettings());
	Step step = operation.Start();
	EXPECT_FALSE(step.app->app_create_sent);
	operation.OnOutcome(Out(OutcomeKind::kNameTaken, 422, "", "name_taken"));
	step = operation.OnOutcome(Ok(AppText(Candidate(0), kOrg)));
	EXPECT_FALSE(step.app->app_created);
	step = operation.OnOutcome(Out(OutcomeKind::kNotFound, 404));
	ExpectEnded(step, Completion::kFailed);
}

TEST(ReconcileSettle, AYoungAppIsNotTakenForGoneByATeardown) {
	AppRecord record = MakeRecord("active");
	record.app_created_age_seconds = 3;
	Operation operation(MakeTarget(false), record, MakeSettings());
	Step step = operation.Start();
	const Endpoint first = step.request->endpoint;
	step = operation.OnOutcome(Out(OutcomeKind::kNotFound, 404));
	EXPECT_EQ(step.completion, Completion::kContinue);
	EXPECT_EQ(step.request->endpoint, first);
	EXPECT_EQ(EventTypes(step), Types{"app_settling"});
}

TEST(ReconcileSettle, TheDeleteEndsTheWindowForARestartedTeardown) {
	AppRecord record = MakeRecord("active");
	record.app_created_age_seconds = 3;
	Operation operation(MakeTarget(false), record, MakeSettings());
	operation.Start();
	Step step = operation.OnOutcome(Ok("[]"));
	ExpectRequest(step, Endpoint::kDeleteApp, "DELETE", AppPath());
	ASSERT_TRUE(step.app.has_value());
	EXPECT_TRUE(step.app->app_delete_sent);
	// This operation itself still asks a 404 again (the app may not be visible yet).
	step = operation.OnOutcome(Out(OutcomeKind::kNotFound, 404));
	EXPECT_EQ(EventTypes(step), Types{"app_settling"});
	ExpectRequest(step, Endpoint::kDeleteApp, "DELETE", AppPath());
}

// ---------------------------------------------------------------------------------------------------------------
// Capacity

fly::Outcome
NoCapacityOut() {
	fly::Outcome outcome = Out(OutcomeKind::kTransient, 412, "", "insufficient_capacity");
	outcome.no_capacity = true;
	return outcome;
}

Target
TargetWithFallbacks(std::vector<std::string> fallbacks) {
	Target target = MakeTarget();
	target.fallback_regions = std::move(fallbacks);
	return target;
}

TEST(ReconcileCapacity, NoCapacityIsRetriedThenTheFallbackRegionIsUsed) {
	Settings settings = MakeSettings();
	settings.capacity_retries = 2;
	Operation operation(TargetWithFallbacks({"lhr", "fra"}), std::nullopt, settings);
	DriveToCreateMachine(operation);
	Step step = operation.OnOutcome(NoCapacityOut());
	ExpectRetriedInPlace(step);
	EXPECT_TRUE(step.no_capacity);
	EXPECT_EQ(EventTypes(step), Types{"provision_attempt_failed"});
	EXPECT_EQ(Body(Req(step)).GetString("region"), "ams");
	step = operation.OnOutcome(NoCapacityOut());
	EXPECT_EQ(EventTypes(step), (Types{"provision_attempt_failed", "region_fallback"}));
	Json details = Details(step.events[1]);
	EXPECT_EQ(details.GetString("from_region"), "ams");
	EXPECT_EQ(details.GetString("to_region"), "lhr");
	EXPECT_EQ(details.GetInteger("attempts"), 2);
	EXPECT_FALSE(step.failed_attempt);
	ExpectRequest(step, Endpoint::kCreateMachine, "POST", AppPath() + "/machines");
	EXPECT_EQ(Body(Req(step)).GetString("region"), "lhr");
	ASSERT_TRUE(step.app.has_value());
	EXPECT_TRUE(step.app->pending_create.has_value());
	// Created in lhr: the row, the cost estimate and the completion event show lhr.
	step = operation.OnOutcome(Ok(MachineText("m1", "created", kGuest, kImage, "lhr")));
	ASSERT_TRUE(step.app.has_value());
	EXPECT_EQ(step.app->region, "lhr");
	step = operation.OnOutcome(Ok("{\"ok\":true}"));
	ExpectEnded(step, Completion::kDone);
	ASSERT_TRUE(step.app.has_value());
	EXPECT_EQ(step.app->region, "lhr");
	EXPECT_EQ(Details(step.events.back()).GetString("region"), "lhr");
}

TEST(ReconcileCapacity, EveryFallbackRegionIsTriedInOrder) {
	Settings settings = MakeSettings();
	settings.capacity_retries = 1;
	Operation operation(TargetWithFallbacks({"lhr", "fra"}), std::nullopt, settings);
	DriveToCreateMachine(operation);
	Step step = operation.OnOutcome(NoCapacityOut());
	EXPECT_EQ(Body(Req(step)).GetString("region"), "lhr");
	step = operation.OnOutcome(NoCapacityOut());
	EXPECT_EQ(Body(Req(step)).GetString("region"), "fra");
	Json details = Details(step.events.back());
	EXPECT_EQ(details.GetString("from_region"), "lhr");
	EXPECT_EQ(details.GetString("to_region"), "fra");
}

// No region has room: the operation is tried again later, never failed for good.
TEST(ReconcileCapacity, NoCapacityAnywhereRetriesLater) {
	Settings settings = MakeSettings();
	settings.capacity_retries = 1;
	Operation operation(TargetWithFallbacks({"lhr"}), std::nullopt, settings);
	DriveToCreateMachine(operation);
	operation.OnOutcome(NoCapacityOut());
	Step step = operation.OnOutcome(NoCapacityOut());
	ExpectEnded(step, Completion::kRetry);
	EXPECT_TRUE(step.no_capacity);
	EXPECT_NE(step.error.find("no capacity for the machine in any region (ams, lhr)"), std::string::npos) << step.error;
	ASSERT_TRUE(step.app.has_value());
	EXPECT_EQ(step.app->pending_create, ""); // nothing was created: the next run does not wait for it
	Operation without(MakeTarget(), std::nullopt, settings);
	DriveToCreateMachine(without);
	step = without.OnOutcome(NoCapacityOut());
	ExpectEnded(step, Completion::kRetry);
	EXPECT_TRUE(step.no_capacity);
}

// A later reconcile keeps a machine that sits in a fallback region: it is not "in the wrong region".
TEST(ReconcileCapacity, MachineInAFallbackRegionIsKept) {
	Operation operation(TargetWithFallbacks({"lhr"}), std::nullopt, MakeSettings());
	DriveToFindMachine(operation);
	Step step = operation.OnOutcome(Ok(ListText({MachineText("m9", "started", kGuest, kImage, "lhr")})));
	EXPECT_EQ(EventTypes(step), Types{"machine_reused"});
	ExpectRequest(step, Endpoint::kWaitMachine, "GET", AppPath() + "/machines/m9/wait", WaitQuery());
	step = operation.OnOutcome(Ok("{\"ok\":true}"));
	ExpectEnded(step, Completion::kDone);
	EXPECT_EQ(step.app->region, "lhr");
	// A resize updates it where it is.
	Target target = TargetWithFallbacks({"lhr"});
	target.guest = kOtherGuest;
	Operation resize(target, std::nullopt, MakeSettings());
	DriveToFindMachine(resize);
	step = resize.OnOutcome(Ok(ListText({MachineText("m9", "started", kGuest, kImage, "lhr")})));
	ExpectRequest(step, Endpoint::kUpdateMachine, "POST", AppPath() + "/machines/m9");
	step = resize.OnOutcome(Ok(MachineText("m9", "replacing", kOtherGuest, kImage, "lhr")));
	EXPECT_EQ(step.app->region, "lhr");
}

TEST(ReconcileSettle, AnAppCreatedAgainHoldsNoneOfTheOldMachine) {
	// The app was deleted (and its machine with it) and is created again: the machine recorded from before,
	// however young, is not waited for.
	AppRecord record = MakeRecord("provisioning");
	record.machine_id = "m-old";
	record.machine_created_age_seconds = 4;
	Operation operation(MakeTarget(), record, MakeSettings());
	operation.Start();
	Step step = operation.OnOutcome(Ok("{\"id\":\"app-2\"}", 201));
	ASSERT_TRUE(step.app.has_value());
	EXPECT_EQ(step.app->machine_id, std::optional<std::string>(""));
	EXPECT_EQ(step.app->machine_created, std::optional<bool>(false));
	step = operation.OnOutcome(Ok(AppText(Candidate(0), kOrg)));
	step = operation.OnOutcome(Ok("[]"));
	ExpectRequest(step, Endpoint::kCreateMachine, "POST", AppPath() + "/machines");
}

} // namespace
} // namespace reconcile
} // namespace pgfly

#include "pgfly/core/health.hpp"

#include <gtest/gtest.h>

namespace pgfly {
namespace {

fly::Outcome
Answer(fly::OutcomeKind kind, const std::string &body = "") {
	fly::Outcome outcome;
	outcome.kind = kind;
	outcome.http_status = kind == fly::OutcomeKind::kSuccess ? 200 : 0;
	if (!body.empty()) {
		outcome.body = ParseJson(body).value;
	}
	outcome.message = "get_machine: something";
	return outcome;
}

TEST(EvaluateMachineHealth, StartedWithAllChecksPassingIsHealthy) {
	auto verdict = EvaluateMachineHealth(
		Answer(fly::OutcomeKind::kSuccess,
	           R"({"state":"started","checks":[{"name":"a","status":"passing"},{"name":"b","status":"passing"}]})"));
	EXPECT_EQ(verdict.health, Health::kHealthy);
	EXPECT_EQ(verdict.action, HealthAction::kNone);
	EXPECT_EQ(verdict.detail, "2 of 2 checks passing");
	EXPECT_EQ(EvaluateMachineHealth(Answer(fly::OutcomeKind::kSuccess, R"({"state":"started"})")).health,
	          Health::kHealthy);
}

TEST(EvaluateMachineHealth, AFailingCheckIsUnhealthyAndNamed) {
	auto verdict = EvaluateMachineHealth(Answer(
		fly::OutcomeKind::kSuccess,
		R"({"state":"started","checks":[{"name":"ok","status":"passing"},{"name":"servicecheck-00-http-8080","status":"critical"}]})"));
	EXPECT_EQ(verdict.health, Health::kUnhealthy);
	EXPECT_EQ(verdict.action, HealthAction::kNone);
	EXPECT_EQ(verdict.detail, "servicecheck-00-http-8080 is critical");
	EXPECT_EQ(EvaluateMachineHealth(Answer(fly::OutcomeKind::kSuccess,
	                                       R"({"state":"started","checks":[{"name":"w","status":"warning"}]})"))
	              .health,
	          Health::kUnhealthy);
}

TEST(EvaluateMachineHealth, StoppedMachinesAreStartedVanishedOnesReprovisioned) {
	EXPECT_EQ(EvaluateMachineHealth(Answer(fly::OutcomeKind::kSuccess, R"({"state":"stopped"})")).action,
	          HealthAction::kStartMachine);
	EXPECT_EQ(EvaluateMachineHealth(Answer(fly::OutcomeKind::kSuccess, R"({"state":"destroyed"})")).action,
	          HealthAction::kReprovision);
	auto gone = EvaluateMachineHealth(Answer(fly::OutcomeKind::kNotFound));
	EXPECT_EQ(gone.action, HealthAction::kReprovision);
	EXPECT_EQ(gone.health, Health::kUnhealthy);
}

// Fly may not show a machine it created moments ago: a 404 then says nothing yet.
TEST(EvaluateMachineHealth, ANotFoundMachineCreatedMomentsAgoIsUnknown) {
	auto young = EvaluateMachineHealth(Answer(fly::OutcomeKind::kNotFound), true);
	EXPECT_EQ(young.health, Health::kUnknown);
	EXPECT_EQ(young.action, HealthAction::kNone);
	EXPECT_EQ(EvaluateMachineHealth(Answer(fly::OutcomeKind::kSuccess, R"({"state":"destroyed"})"), true).action,
	          HealthAction::kReprovision);
}

TEST(EvaluateMachineHealth, TransitionsAndFailuresTellNothing) {
	EXPECT_EQ(EvaluateMachineHealth(Answer(fly::OutcomeKind::kSuccess, R"({"state":"starting"})")).health,
	          Health::kUnknown);
	auto failed = EvaluateMachineHealth(Answer(fly::OutcomeKind::kTransient));
	EXPECT_EQ(failed.health, Health::kUnknown);
	EXPECT_EQ(failed.action, HealthAction::kNone);
	EXPECT_STREQ(HealthName(Health::kUnknown), "unknown");
	EXPECT_STREQ(HealthName(Health::kHealthy), "healthy");
}

} // namespace
} // namespace pgfly

namespace pgfly {
namespace {

const std::string kUser = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";

TEST(EvaluateAppHealthEndpoint, HealthyOnlyForThisUserInDedicatedMode) {
	auto verdict = EvaluateAppHealthEndpoint(
		Answer(
			fly::OutcomeKind::kSuccess,
			R"({"status":"ok","run_mode":"user_dedicated","user_id":"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11","trader_count":4})"),
		kUser);
	EXPECT_EQ(verdict.health, Health::kHealthy);
	EXPECT_NE(verdict.detail.find("4 traders"), std::string::npos);
	auto other_user = EvaluateAppHealthEndpoint(
		Answer(fly::OutcomeKind::kSuccess, R"({"run_mode":"user_dedicated","user_id":"someone-else"})"), kUser);
	EXPECT_EQ(other_user.health, Health::kUnhealthy);
	EXPECT_NE(other_user.detail.find("user_id \"someone-else\""), std::string::npos);
	auto shared = EvaluateAppHealthEndpoint(
		Answer(fly::OutcomeKind::kSuccess, R"({"run_mode":"shared_backend","user_id":""})"), kUser);
	EXPECT_EQ(shared.health, Health::kUnhealthy);
	EXPECT_NE(shared.detail.find("shared_backend"), std::string::npos);
	EXPECT_EQ(EvaluateAppHealthEndpoint(Answer(fly::OutcomeKind::kTransient), kUser).health, Health::kUnhealthy);
}

TEST(AppHealthUrl, ReplacesEveryPlaceholder) {
	EXPECT_EQ(AppHealthUrl("https://{app}.fly.dev/health", "vyx-user-1"), "https://vyx-user-1.fly.dev/health");
	EXPECT_EQ(AppHealthUrl("http://h/{app}/{app}", "a"), "http://h/a/a");
	EXPECT_EQ(AppHealthUrl("http://h/health", "a"), "http://h/health");
}

TEST(AppHealthUrl, RefusesNamesThatCouldSteerTheRequest) {
	// fly.user_fly_apps accepts letters, digits, '.', '_' and '-': enough for another host or a path step back.
	for (const char *name : {"evil.example", "..", ".", "Vyx-User-1", "a_b", "", "x-"}) {
		EXPECT_FALSE(AppHealthUrl("https://{app}/health", name).has_value()) << name;
	}
	EXPECT_EQ(AppHealthUrl("https://{app}/health", "vyx-user-1a2b3c4d"), "https://vyx-user-1a2b3c4d/health");
}

TEST(EvaluateAppHealthEndpoint, LongReportedValuesAreShortenedInTheDetail) {
	const std::string huge(100000, 'u');
	auto verdict = EvaluateAppHealthEndpoint(
		Answer(fly::OutcomeKind::kSuccess, R"({"run_mode":"user_dedicated","user_id":")" + huge + "\"}"), kUser);
	EXPECT_EQ(verdict.health, Health::kUnhealthy);
	EXPECT_LT(verdict.detail.size(), 200u);
	EXPECT_NE(verdict.detail.find(std::string(100, 'u')), std::string::npos);
}

TEST(AppHealthRequest, GoesToItsOwnUrlWithoutTheToken) {
	fly::Request request = fly::AppHealthRequest("https://vyx-user-1.fly.dev/health");
	EXPECT_EQ(request.method, "GET");
	EXPECT_EQ(request.absolute_url, "https://vyx-user-1.fly.dev/health");
	EXPECT_FALSE(request.authenticated);
	EXPECT_STREQ(fly::EndpointName(request.endpoint), "app_health");
}

TEST(FindDuplicateMachines, LiveMachinesOfTheUserBesidesTheRecordedOneAreExtra) {
	const std::string list = R"([{"id":"m1","state":"started","config":{"metadata":{"pg_fly_user_id":"u1"}}},)"
							 R"({"id":"m2","state":"created","config":{"metadata":{"pg_fly_user_id":"u1"}}},)"
							 R"({"id":"m3","state":"destroyed","config":{"metadata":{"pg_fly_user_id":"u1"}}},)"
							 R"({"id":"m4","state":"stopped","config":{"metadata":{"pg_fly_user_id":"u1"}}},)"
							 R"({"id":"m5","state":"started","config":{"metadata":{"pg_fly_user_id":"u2"}}},)"
							 R"({"id":"m6","state":"started","config":{"env":{"USER_ID":"u1"}}}])";
	// m5 (another user's) and m6 (no metadata: the previous system's) are never duplicates, even should Fly's
	// metadata filter have let them through.
	DuplicateMachines found = FindDuplicateMachines(Answer(fly::OutcomeKind::kSuccess, list), "m1", "u1");
	EXPECT_EQ(found.problem, "");
	EXPECT_EQ(found.extra, (std::vector<std::string>{"m2", "m4"}));
	found = FindDuplicateMachines(Answer(fly::OutcomeKind::kSuccess, R"([{"id":"m1","state":"started"}])"), "m1", "u1");
	EXPECT_TRUE(found.extra.empty());
	EXPECT_EQ(found.problem, "");
}

// Without the recorded machine live in the list, nothing is destroyed: a reconcile decides which to keep.
TEST(FindDuplicateMachines, NothingIsDecidedWithoutTheRecordedMachine) {
	DuplicateMachines found =
		FindDuplicateMachines(Answer(fly::OutcomeKind::kSuccess, R"([{"id":"m2","state":"started"}])"), "m1", "u1");
	EXPECT_TRUE(found.extra.empty());
	EXPECT_NE(found.problem, "");
	found = FindDuplicateMachines(
		Answer(fly::OutcomeKind::kSuccess, R"([{"id":"m1","state":"destroying"},{"id":"m2","state":"started"}])"), "m1",
		"u1");
	EXPECT_TRUE(found.extra.empty());
	found = FindDuplicateMachines(Answer(fly::OutcomeKind::kTransient), "m1", "u1");
	EXPECT_TRUE(found.extra.empty());
	EXPECT_NE(found.problem, "");
	found =
		FindDuplicateMachines(Answer(fly::OutcomeKind::kSuccess, R"([{"id":"../x","state":"started"}])"), "m1", "u1");
	EXPECT_TRUE(found.extra.empty());
	EXPECT_NE(found.problem, "");
}

TEST(EvaluateListedMachineHealth, TheRecordedEntryGivesHealthAndTheOthersAreDuplicates) {
	const std::string list = R"([{"id":"m2","state":"started","config":{"metadata":{"pg_fly_user_id":"u1"}}},)"
							 R"({"id":"m1","state":"started","checks":[{"name":"a","status":"passing"}],)"
							 R"("config":{"metadata":{"pg_fly_user_id":"u1"}}},)"
							 R"({"id":"m3","state":"destroyed","config":{"metadata":{"pg_fly_user_id":"u1"}}}])";
	ListedHealth listed = EvaluateListedMachineHealth(Answer(fly::OutcomeKind::kSuccess, list), "m1", "u1");
	EXPECT_FALSE(listed.ask_machine);
	EXPECT_EQ(listed.verdict.health, Health::kHealthy);
	EXPECT_EQ(listed.verdict.detail, "1 of 1 checks passing");
	EXPECT_EQ(listed.duplicates, std::vector<std::string>{"m2"});
	// The recorded machine's own checks decide, not another entry's.
	listed = EvaluateListedMachineHealth(
		Answer(fly::OutcomeKind::kSuccess,
	           R"([{"id":"m2","state":"started","checks":[{"name":"a","status":"passing"}]},)"
	           R"({"id":"m1","state":"started","checks":[{"name":"b","status":"critical"}]}])"),
		"m1", "u1");
	EXPECT_EQ(listed.verdict.health, Health::kUnhealthy);
	EXPECT_EQ(listed.verdict.detail, "b is critical");
	EXPECT_TRUE(listed.duplicates.empty()); // m2 does not say it is u1's
	listed = EvaluateListedMachineHealth(Answer(fly::OutcomeKind::kSuccess, R"([{"id":"m1","state":"stopped"}])"), "m1",
	                                     "u1");
	EXPECT_EQ(listed.verdict.action, HealthAction::kStartMachine);
	// A recorded machine on its way out: re-provisioned, and nothing else is a duplicate of it.
	listed = EvaluateListedMachineHealth(
		Answer(fly::OutcomeKind::kSuccess,
	           R"([{"id":"m1","state":"destroying"},)"
	           R"({"id":"m2","state":"started","config":{"metadata":{"pg_fly_user_id":"u1"}}}])"),
		"m1", "u1");
	EXPECT_EQ(listed.verdict.action, HealthAction::kReprovision);
	EXPECT_TRUE(listed.duplicates.empty());
}

TEST(EvaluateListedMachineHealth, AsksTheMachineWhenTheListCannotSay) {
	// Not in the list (gone, or not shown yet), the app not found, an unusable list.
	EXPECT_TRUE(EvaluateListedMachineHealth(Answer(fly::OutcomeKind::kSuccess, R"([{"id":"m2","state":"started"}])"),
	                                        "m1", "u1")
	                .ask_machine);
	EXPECT_TRUE(EvaluateListedMachineHealth(Answer(fly::OutcomeKind::kSuccess, "[]"), "m1", "u1").ask_machine);
	EXPECT_TRUE(EvaluateListedMachineHealth(Answer(fly::OutcomeKind::kNotFound), "m1", "u1").ask_machine);
	EXPECT_TRUE(
		EvaluateListedMachineHealth(Answer(fly::OutcomeKind::kSuccess, R"({"id":"m1"})"), "m1", "u1").ask_machine);
	EXPECT_TRUE(EvaluateListedMachineHealth(Answer(fly::OutcomeKind::kSuccess, R"([{"id":"../x","state":"started"}])"),
	                                        "m1", "u1")
	                .ask_machine);
	// A failing Fly tells nothing, and is not asked again.
	ListedHealth listed = EvaluateListedMachineHealth(Answer(fly::OutcomeKind::kTransient), "m1", "u1");
	EXPECT_FALSE(listed.ask_machine);
	EXPECT_EQ(listed.verdict.health, Health::kUnknown);
	EXPECT_EQ(listed.verdict.detail, "get_machine: something");
}

} // namespace
} // namespace pgfly

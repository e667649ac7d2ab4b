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
	auto verdict = EvaluateMachineHealth(Answer(fly::OutcomeKind::kSuccess,
	    R"({"state":"started","checks":[{"name":"a","status":"passing"},{"name":"b","status":"passing"}]})"));
	EXPECT_EQ(verdict.health, Health::kHealthy);
	EXPECT_EQ(verdict.action, HealthAction::kNone);
	EXPECT_EQ(verdict.detail, "2 of 2 checks passing");
	EXPECT_EQ(EvaluateMachineHealth(Answer(fly::OutcomeKind::kSuccess, R"({"state":"started"})")).health,
	          Health::kHealthy);
}

TEST(EvaluateMachineHealth, AFailingCheckIsUnhealthyAndNamed) {
	auto verdict = EvaluateMachineHealth(Answer(fly::OutcomeKind::kSuccess,
	    R"({"state":"started","checks":[{"name":"ok","status":"passing"},{"name":"servicecheck-00-http-8080","status":"critical"}]})"));
	EXPECT_EQ(verdict.health, Health::kUnhealthy);
	EXPECT_EQ(verdict.action, HealthAction::kNone);
	EXPECT_EQ(verdict.detail, "servicecheck-00-http-8080 is critical");
	EXPECT_EQ(EvaluateMachineHealth(Answer(fly::OutcomeKind::kSuccess,
	              R"({"state":"started","checks":[{"name":"w","status":"warning"}]})")).health,
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

#include "pgfly/core/image_rollout.hpp"

#include <gtest/gtest.h>

#include <string>

#include "pgfly/core/json.hpp"
#include "pgfly/core/machine_spec.hpp"

namespace pgfly {
namespace rollout {
namespace {

using fly::Endpoint;
using fly::OutcomeKind;

const std::string kApp = "vyx-user-1a2b3c4d";
const std::string kNewImage = "registry.fly.io/vyx:v2";

fly::Outcome
Out(OutcomeKind kind, long http_status, const std::string &body = "") {
	fly::Outcome outcome;
	outcome.kind = kind;
	outcome.http_status = http_status;
	outcome.message = "test: HTTP " + std::to_string(http_status);
	if (!body.empty()) {
		outcome.body = ParseJson(body).value;
	}
	return outcome;
}

std::string
Machine(const std::string &state, const std::string &image) {
	return "{\"id\":\"m1\",\"state\":\"" + state + "\",\"config\":{\"image\":\"" + image +
	       "\",\"guest\":{\"cpu_kind\":\"shared\",\"cpus\":1,\"memory_mb\":256}}}";
}

ImageUpdate
MakeUpdate() {
	fly::MachineSpec spec = machine::MachineSpecFor({{"LOG_LEVEL", "info"}}, "u-1", fly::Guest{"shared", 1, 256}, "sjc",
	                                                "ignored:image", "rollout-3", 2);
	AppTarget target;
	target.app_name = kApp;
	target.machine_id = "m1";
	target.image = kNewImage;
	target.wait_rounds = 2;
	return ImageUpdate(target, spec);
}

TEST(ImageUpdate, ReadsTheMachineThenUpdatesItWithTheFullConfigAndWaits) {
	ImageUpdate update = MakeUpdate();
	Step step = update.Start();
	ASSERT_TRUE(step.request);
	EXPECT_EQ(step.request->endpoint, Endpoint::kGetMachine);
	step = update.OnOutcome(Out(OutcomeKind::kSuccess, 200, Machine("started", "registry.fly.io/vyx:v1")));
	ASSERT_TRUE(step.request);
	EXPECT_EQ(step.request->endpoint, Endpoint::kUpdateMachine);
	EXPECT_EQ(step.from_image, "registry.fly.io/vyx:v1");
	const Json config = ParseJson(step.request->body_json.value_or("null")).value.Get("config");
	EXPECT_EQ(config.GetString("image"), kNewImage);
	EXPECT_EQ(config.Get("env").GetString("RUN_MODE"), "user_dedicated");
	EXPECT_EQ(config.Get("env").GetString("USER_ID"), "u-1");
	EXPECT_EQ(config.Get("env").GetString("LOG_LEVEL"), "info");
	EXPECT_EQ(config.Get("metadata").GetString(machine::kUserMetadataKey), "u-1");
	EXPECT_EQ(config.Get("guest").GetInteger("memory_mb"), 256);
	step = update.OnOutcome(Out(OutcomeKind::kSuccess, 200, Machine("replacing", kNewImage)));
	ASSERT_TRUE(step.request);
	EXPECT_EQ(step.request->endpoint, Endpoint::kWaitMachine);
	step = update.OnOutcome(Out(OutcomeKind::kSuccess, 200, "{\"ok\":true}"));
	EXPECT_EQ(step.result, Result::kUpdated);
	EXPECT_EQ(step.from_image, "registry.fly.io/vyx:v1");
	EXPECT_FALSE(step.request);
}

TEST(ImageUpdate, AMachineTheUpdateLeftStoppedIsStartedThenAwaited) {
	ImageUpdate update = MakeUpdate();
	update.Start();
	update.OnOutcome(Out(OutcomeKind::kSuccess, 200, Machine("stopped", "old")));
	Step step = update.OnOutcome(Out(OutcomeKind::kSuccess, 200, Machine("stopped", kNewImage)));
	ASSERT_TRUE(step.request);
	EXPECT_EQ(step.request->endpoint, Endpoint::kStartMachine);
	step = update.OnOutcome(Out(OutcomeKind::kSuccess, 200, "{\"previous_state\":\"stopped\"}"));
	ASSERT_TRUE(step.request);
	EXPECT_EQ(step.request->endpoint, Endpoint::kWaitMachine);
	step = update.OnOutcome(Out(OutcomeKind::kSuccess, 200, "{\"ok\":true}"));
	EXPECT_EQ(step.result, Result::kUpdated);
}

TEST(ImageUpdate, AMachineAlreadyOnTheImageIsNotUpdatedAgain) {
	ImageUpdate update = MakeUpdate();
	update.Start();
	Step step = update.OnOutcome(Out(OutcomeKind::kSuccess, 200, Machine("started", kNewImage)));
	EXPECT_EQ(step.result, Result::kAlreadyCurrent);
	EXPECT_FALSE(step.request);
}

TEST(ImageUpdate, AStoppedMachineAlreadyOnTheImageIsStarted) {
	ImageUpdate update = MakeUpdate();
	update.Start();
	Step step = update.OnOutcome(Out(OutcomeKind::kSuccess, 200, Machine("stopped", kNewImage)));
	ASSERT_TRUE(step.request);
	EXPECT_EQ(step.request->endpoint, Endpoint::kStartMachine);
}

TEST(ImageUpdate, AMachineOnTheImageButNotStartedIsAwaited) {
	ImageUpdate update = MakeUpdate();
	update.Start();
	Step step = update.OnOutcome(Out(OutcomeKind::kSuccess, 200, Machine("starting", kNewImage)));
	ASSERT_TRUE(step.request);
	EXPECT_EQ(step.request->endpoint, Endpoint::kWaitMachine);
}

TEST(ImageUpdate, TransientFailuresResendTheSameRequest) {
	ImageUpdate update = MakeUpdate();
	Step step = update.Start();
	const std::string get_path = step.request->path;
	fly::Outcome busy = Out(OutcomeKind::kTransient, 429);
	busy.retry_after_seconds = 3;
	step = update.OnOutcome(busy);
	EXPECT_TRUE(step.failed_attempt);
	EXPECT_EQ(step.retry_after_seconds, 3);
	ASSERT_TRUE(step.request);
	EXPECT_EQ(step.request->endpoint, Endpoint::kGetMachine);
	EXPECT_EQ(step.request->path, get_path);
	EXPECT_EQ(step.result, Result::kContinue);
}

// A 503 or a reset may hide an update Fly performed: the machine is read again, and updated only if it still
// runs the old image.
TEST(ImageUpdate, AnUpdateThatFailedTransientlyIsCheckedBeforeItIsSentAgain) {
	ImageUpdate update = MakeUpdate();
	update.Start();
	update.OnOutcome(Out(OutcomeKind::kSuccess, 200, Machine("started", "old")));
	Step step = update.OnOutcome(Out(OutcomeKind::kTransient, 503));
	EXPECT_TRUE(step.failed_attempt);
	ASSERT_TRUE(step.request);
	EXPECT_EQ(step.request->endpoint, Endpoint::kGetMachine);
	step = update.OnOutcome(Out(OutcomeKind::kMalformed, 200));
	EXPECT_TRUE(step.failed_attempt);
	ASSERT_TRUE(step.request);
	EXPECT_EQ(step.request->endpoint, Endpoint::kGetMachine);
	step = update.OnOutcome(Out(OutcomeKind::kSuccess, 200, Machine("started", kNewImage)));
	EXPECT_EQ(step.result, Result::kAlreadyCurrent);
	EXPECT_EQ(step.from_image, "old");
}

TEST(ImageUpdate, ARefusedUpdateFailsTheApp) {
	ImageUpdate update = MakeUpdate();
	update.Start();
	update.OnOutcome(Out(OutcomeKind::kSuccess, 200, Machine("started", "old")));
	Step step = update.OnOutcome(Out(OutcomeKind::kPermanent, 422));
	EXPECT_EQ(step.result, Result::kFailed);
	EXPECT_EQ(step.error, "test: HTTP 422");
	EXPECT_FALSE(step.request);
}

TEST(ImageUpdate, AMachineThatNeverStartsFailsAfterTheWaitRounds) {
	ImageUpdate update = MakeUpdate();
	update.Start();
	update.OnOutcome(Out(OutcomeKind::kSuccess, 200, Machine("started", "old")));
	update.OnOutcome(Out(OutcomeKind::kSuccess, 200, Machine("replacing", kNewImage)));
	Step step = update.OnOutcome(Out(OutcomeKind::kTransient, 408));
	ASSERT_TRUE(step.request);
	EXPECT_FALSE(step.failed_attempt);
	EXPECT_EQ(step.request->endpoint, Endpoint::kWaitMachine);
	step = update.OnOutcome(Out(OutcomeKind::kTransient, 408));
	EXPECT_EQ(step.result, Result::kFailed);
}

TEST(ImageUpdate, AVanishedMachineIsLeftToTheHealthCheck) {
	ImageUpdate update = MakeUpdate();
	update.Start();
	Step step = update.OnOutcome(Out(OutcomeKind::kNotFound, 404));
	EXPECT_EQ(step.result, Result::kVanished);
}

TEST(RolloutPhase, CanariesFirstThenTheirHealthThenTheRest) {
	Counts counts;
	counts.canary_pending = 2;
	counts.pending = 10;
	EXPECT_EQ(NextRolloutPhase(Phase::kCanary, counts, 0, false).phase, Phase::kCanary);
	counts.canary_pending = 0;
	counts.canary_updated = 2;
	EXPECT_EQ(NextRolloutPhase(Phase::kCanary, counts, 0, false).phase, Phase::kCanaryCheck);
	EXPECT_EQ(NextRolloutPhase(Phase::kCanaryCheck, counts, 0, false).phase, Phase::kCanaryCheck);
	counts.canary_updated = 0;
	counts.canary_healthy = 2;
	EXPECT_EQ(NextRolloutPhase(Phase::kCanaryCheck, counts, 0, false).phase, Phase::kRolling);
	EXPECT_EQ(NextRolloutPhase(Phase::kRolling, counts, 0, false).phase, Phase::kRolling);
	counts.pending = 0;
	EXPECT_EQ(NextRolloutPhase(Phase::kRolling, counts, 0, false).phase, Phase::kCompleted);
	EXPECT_EQ(NextRolloutPhase(Phase::kCompleted, counts, 0, false).phase, Phase::kCompleted);
}

TEST(RolloutPhase, ACanaryNotHealthyByTheDeadlineHaltsWhateverTheFailureThreshold) {
	Counts counts;
	counts.canary_updated = 1;
	counts.canary_healthy = 2;
	counts.pending = 10;
	const Decision decision = NextRolloutPhase(Phase::kCanaryCheck, counts, 100, true);
	EXPECT_EQ(decision.phase, Phase::kHalted);
	EXPECT_EQ(decision.reason, "1 canary app(s) not healthy within canary_wait");
}

TEST(RolloutPhase, FailuresBeyondTheThresholdHalt) {
	Counts counts;
	counts.pending = 10;
	counts.failed = 2;
	EXPECT_EQ(NextRolloutPhase(Phase::kRolling, counts, 2, false).phase, Phase::kRolling);
	counts.failed = 3;
	const Decision decision = NextRolloutPhase(Phase::kRolling, counts, 2, false);
	EXPECT_EQ(decision.phase, Phase::kHalted);
	EXPECT_EQ(decision.reason, "3 app(s) failed to update, more than max_failures (2)");
	EXPECT_EQ(NextRolloutPhase(Phase::kHalted, counts, 2, false).phase, Phase::kHalted);
}

TEST(RolloutPhase, NoCanariesGoesStraightToRolling) {
	Counts counts;
	counts.pending = 3;
	EXPECT_EQ(NextRolloutPhase(Phase::kCanary, counts, 0, false).phase, Phase::kRolling);
}

TEST(RolloutPhase, NamesRoundTrip) {
	for (Phase phase : {Phase::kCanary, Phase::kCanaryCheck, Phase::kRolling, Phase::kCompleted, Phase::kHalted}) {
		EXPECT_EQ(PhaseFromName(PhaseName(phase)), phase);
	}
	EXPECT_FALSE(PhaseFromName("cancelled"));
}

} // namespace
} // namespace rollout
} // namespace pgfly

namespace pgfly {
namespace rollout {
namespace {

ImageUpdate
MakeSecretsUpdate(std::map<std::string, std::optional<std::string>> values) {
	fly::MachineSpec spec =
		machine::MachineSpecFor({}, "u-1", fly::Guest{"shared", 1, 256}, "sjc", kNewImage, "rollout-4", 2);
	AppTarget target;
	target.app_name = kApp;
	target.machine_id = "m1";
	target.image = kNewImage;
	target.secrets = std::move(values);
	return ImageUpdate(target, spec);
}

TEST(SecretsUpdate, SetsTheSecretsThenUpdatesTheMachineToTheVersionFlyAnswered) {
	ImageUpdate update = MakeSecretsUpdate({{"A", std::string("new")}, {"GONE", std::nullopt}});
	Step step = update.Start();
	ASSERT_TRUE(step.request);
	EXPECT_EQ(step.request->endpoint, Endpoint::kSetSecrets);
	const Json values = ParseJson(step.request->body_json.value_or("null")).value.Get("values");
	EXPECT_EQ(values.GetString("A"), "new");
	EXPECT_TRUE(values.Get("GONE").IsNull());
	step = update.OnOutcome(Out(OutcomeKind::kSuccess, 200, "{\"secrets\":[],\"version\":7,\"Version\":7}"));
	EXPECT_TRUE(step.secrets_set);
	EXPECT_EQ(step.secrets_version, 7);
	ASSERT_TRUE(step.request);
	EXPECT_EQ(step.request->endpoint, Endpoint::kGetMachine);
	// The machine runs the image already, but its secrets version cannot be seen: it is updated anyway.
	step = update.OnOutcome(Out(OutcomeKind::kSuccess, 200, Machine("started", kNewImage)));
	EXPECT_FALSE(step.secrets_set);
	ASSERT_TRUE(step.request);
	EXPECT_EQ(step.request->endpoint, Endpoint::kUpdateMachine);
	const Json body = ParseJson(step.request->body_json.value_or("null")).value;
	EXPECT_EQ(body.GetInteger("min_secrets_version"), 7);
	EXPECT_EQ(body.Get("config").GetString("image"), kNewImage);
	step = update.OnOutcome(Out(OutcomeKind::kSuccess, 200, Machine("replacing", kNewImage)));
	ASSERT_TRUE(step.request);
	EXPECT_EQ(step.request->endpoint, Endpoint::kWaitMachine);
	step = update.OnOutcome(Out(OutcomeKind::kSuccess, 200, "{\"ok\":true}"));
	EXPECT_EQ(step.result, Result::kUpdated);
}

TEST(SecretsUpdate, TheDeprecatedVersionSpellingIsRead) {
	ImageUpdate update = MakeSecretsUpdate({{"A", std::string("v")}});
	update.Start();
	Step step = update.OnOutcome(Out(OutcomeKind::kSuccess, 200, "{\"Version\":3}"));
	EXPECT_EQ(step.secrets_version, 3);
}

TEST(SecretsUpdate, AnAnswerWithoutAVersionFailsTheApp) {
	ImageUpdate update = MakeSecretsUpdate({{"A", std::string("v")}});
	update.Start();
	Step step = update.OnOutcome(Out(OutcomeKind::kSuccess, 200, "{\"secrets\":[]}"));
	EXPECT_EQ(step.result, Result::kFailed);
	EXPECT_FALSE(step.secrets_set);
	EXPECT_FALSE(step.request);
}

TEST(SecretsUpdate, ATransientFailureSetsTheSecretsAgainAndARefusalFails) {
	ImageUpdate update = MakeSecretsUpdate({{"A", std::string("v")}});
	update.Start();
	Step step = update.OnOutcome(Out(OutcomeKind::kTransient, 503));
	EXPECT_TRUE(step.failed_attempt);
	ASSERT_TRUE(step.request);
	EXPECT_EQ(step.request->endpoint, Endpoint::kSetSecrets);
	step = update.OnOutcome(Out(OutcomeKind::kPermanent, 400));
	EXPECT_EQ(step.result, Result::kFailed);
	// The error is Fly's message, never the request body.
	EXPECT_EQ(step.error.find("\"v\""), std::string::npos);
}

TEST(SecretsUpdate, AGoneAppIsSkippedAndNothingToSendIsAlreadyCurrent) {
	ImageUpdate gone = MakeSecretsUpdate({{"A", std::string("v")}});
	gone.Start();
	EXPECT_EQ(gone.OnOutcome(Out(OutcomeKind::kNotFound, 404)).result, Result::kVanished);
	ImageUpdate empty = MakeSecretsUpdate({});
	Step step = empty.Start();
	EXPECT_EQ(step.result, Result::kAlreadyCurrent);
	EXPECT_FALSE(step.request);
}

} // namespace
} // namespace rollout
} // namespace pgfly

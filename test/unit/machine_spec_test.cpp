#include "pgfly/core/machine_spec.hpp"

#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "pgfly/core/json.hpp"

namespace pgfly {
namespace machine {
namespace {

const std::string kUser = "3f2504e0-4f89-11d3-9a0c-0305e82c3301";
const std::string kImage = "registry.fly.io/vyx@sha256:0123abcd";
const fly::Guest kGuest{"performance", 2, 4096};
const fly::Guest kOtherGuest{"shared", 1, 256};

// A 200 answer whose body is `body` parsed as the client would (no value when it is not JSON).
fly::Outcome
Ok(const std::string &body) {
	fly::Outcome outcome;
	outcome.kind = fly::OutcomeKind::kSuccess;
	outcome.body = ParseJson(body).value;
	return outcome;
}

std::string
MachineText(const std::string &id, const std::string &state, const fly::Guest &guest = kGuest,
            const std::string &image = kImage, const std::string &region = "ams") {
	return "{\"id\":\"" + id + "\",\"state\":\"" + state + "\",\"region\":\"" + region + "\",\"config\":{\"image\":\"" +
	       image + "\",\"guest\":{\"cpu_kind\":\"" + guest.cpu_kind + "\",\"cpus\":" + std::to_string(guest.cpus) +
	       ",\"memory_mb\":" + std::to_string(guest.memory_mb) + "}}}";
}

// A machine list of two entries.
std::string
ListText(const std::string &first, const std::string &second) {
	return "[" + first + "," + second + "]";
}

TEST(MachinesFromList, ReadsFacts) {
	MachineList list = MachinesFromList(
		Ok(ListText(MachineText("m1", "started", kOtherGuest, "img:2", "fra"), MachineText("m2", "stopped"))));
	EXPECT_EQ(list.problem, "");
	ASSERT_EQ(list.machines.size(), 2u);
	EXPECT_EQ(list.machines[0].id, "m1");
	EXPECT_EQ(list.machines[0].state, "started");
	EXPECT_EQ(list.machines[0].image, "img:2");
	EXPECT_EQ(list.machines[0].region, "fra");
	EXPECT_EQ(list.machines[0].guest.cpu_kind, "shared");
	EXPECT_EQ(list.machines[0].guest.memory_mb, 256);
	EXPECT_EQ(list.machines[1].id, "m2");
	EXPECT_TRUE(MachinesFromList(Ok("[]")).machines.empty());
	EXPECT_EQ(MachinesFromList(Ok("[]")).problem, "");
}

// One unusable entry makes the whole list untrustworthy: acting on the rest could create a second machine.
TEST(MachinesFromList, AnyUnusableEntryMakesTheListMalformed) {
	const std::string good = MachineText("m1", "started");
	const std::vector<std::pair<std::string, std::string>> cases = {
		{"{\"state\":\"started\"}", "it has no id"},
		{"17", "it is a number, not an object"},
		{"\"{\\\"id\\\":\\\"m2\\\"}\"", "it is a string, not an object"},
		{"{\"id\":null}", "its id is null, not a string"},
		{"{\"id\":1234567890123}", "its id is a number, not a string"},
		{"{\"id\":[\"m2\"]}", "its id is an array, not a string"},
		{"{\"id\":\"../../orgs/x\"}", "its id is not a machine id (letters, digits, '-' and '_', at most 64)"},
		{"{\"id\":\"\"}", "its id is not a machine id (letters, digits, '-' and '_', at most 64)"},
		{"{\"id\":\"m2\",\"state\":[\"started\"]}", "its state is an array, not a string"},
		{"{\"id\":\"m2\",\"config\":\"{}\"}", "its config is a string, not an object"},
		{"{\"id\":\"m2\",\"config\":{\"guest\":\"big\"}}", "config: its guest is a string, not an object"},
		{"{\"id\":\"m2\",\"config\":{\"guest\":{\"cpus\":\"2\"}}}",
	     "config.guest: its cpus is a string, not an integer"},
	};
	for (const auto &[entry, problem] : cases) {
		MachineList list = MachinesFromList(Ok(ListText(good, entry)));
		EXPECT_TRUE(list.machines.empty()) << entry;
		EXPECT_EQ(list.problem, "entry 2 of the machine list is unusable: " + problem) << entry;
	}
	EXPECT_EQ(MachinesFromList(Ok("{\"machines\":[]}")).problem, "the machine list is not an array");
	EXPECT_EQ(MachinesFromList(Ok("")).problem, "the machine list is not an array");
}

TEST(MachinesFromList, MachineIds) {
	EXPECT_TRUE(IsUsableMachineId("1781973f003d89"));
	EXPECT_TRUE(IsUsableMachineId("M_1-x"));
	EXPECT_TRUE(IsUsableMachineId(std::string(64, 'a')));
	EXPECT_FALSE(IsUsableMachineId(std::string(65, 'a')));
	EXPECT_FALSE(IsUsableMachineId(""));
	EXPECT_FALSE(IsUsableMachineId(".."));
	EXPECT_FALSE(IsUsableMachineId("m1/stop"));
	EXPECT_FALSE(IsUsableMachineId("m1?force=true"));
	EXPECT_FALSE(IsUsableMachineId("m1 "));
}

TEST(MachineFromBody, ReadsFactsAndToleratesMissingFields) {
	MachineFacts facts = MachineFromBody(Ok(MachineText("m1", "stopped", kOtherGuest, "img:3", "fra")));
	EXPECT_EQ(facts.id, "m1");
	EXPECT_EQ(facts.state, "stopped");
	EXPECT_EQ(facts.image, "img:3");
	EXPECT_EQ(facts.region, "fra");
	EXPECT_TRUE(SameGuest(facts.guest, kOtherGuest));
	MachineFacts empty = MachineFromBody(Ok("{\"id\":7}"));
	EXPECT_EQ(empty.id, "");
	EXPECT_EQ(empty.state, "");
	EXPECT_EQ(empty.guest.cpus, 0);
	EXPECT_EQ(MachineProblem(Ok(MachineText("m1", "started")).body), std::nullopt);
}

TEST(MachineStates, StartableAndLive) {
	for (const char *state : {"stopped", "suspended", "failed"}) {
		EXPECT_TRUE(MachineNeedsStart(state)) << state;
	}
	for (const char *state : {"started", "starting", "stopping", "created", "replacing", ""}) {
		EXPECT_FALSE(MachineNeedsStart(state)) << state;
	}
	for (const char *state : {"destroyed", "destroying", "replaced", "migrated"}) {
		EXPECT_FALSE(IsLiveMachine(state)) << state;
	}
	for (const char *state : {"started", "stopped", "created", ""}) {
		EXPECT_TRUE(IsLiveMachine(state)) << state;
	}
}

TEST(MachineSpecFor, PgFlysVariablesAndMetadataWin) {
	fly::MachineSpec spec = MachineSpecFor({{"LOG_LEVEL", "debug"}, {"RUN_MODE", "x"}, {"USER_ID", "y"}}, kUser, kGuest,
	                                       "ams", kImage, "7-1", 4);
	EXPECT_EQ(spec.image, kImage);
	EXPECT_TRUE(SameGuest(spec.guest, kGuest));
	EXPECT_EQ(spec.region, "ams");
	EXPECT_EQ(spec.env, (std::map<std::string, std::string>{
							{"LOG_LEVEL", "debug"}, {"RUN_MODE", "user_dedicated"}, {"USER_ID", kUser}}));
	EXPECT_EQ(spec.restart_policy, "always");
	EXPECT_EQ(spec.metadata,
	          (std::map<std::string, std::string>{{kUserMetadataKey, kUser}, {kOperationMetadataKey, "7-1"}}));
	EXPECT_EQ(spec.min_secrets_version, 4);
	EXPECT_FALSE(spec.name.has_value());
}

TEST(GuestJson, UsesFlysFieldNames) {
	EXPECT_EQ(GuestJson(kGuest).Dump(), "{\"cpu_kind\":\"performance\",\"cpus\":2,\"memory_mb\":4096}");
}

} // namespace
} // namespace machine
} // namespace pgfly

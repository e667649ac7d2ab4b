#include "pgfly/core/worker_settings.hpp"

#include <gtest/gtest.h>

#include <ctime>

#include "pgfly/core/fly_outcome.hpp"

namespace pgfly {
namespace {

TEST(ParseMachineEnv, ReadsAnObjectOfStrings) {
	auto parsed = ParseMachineEnv(R"({"SUPABASE_URL": "https://x.supabase.co", "LOG_LEVEL": "info"})");
	EXPECT_TRUE(parsed.problem.empty());
	EXPECT_EQ(parsed.values.at("SUPABASE_URL"), "https://x.supabase.co");
	EXPECT_EQ(parsed.values.size(), 2u);
	EXPECT_TRUE(ParseMachineEnv("").values.empty());
}

TEST(ParseMachineEnv, RefusesOtherShapes) {
	EXPECT_FALSE(ParseMachineEnv("[1]").problem.empty());
	EXPECT_FALSE(ParseMachineEnv(R"({"A": 1})").problem.empty());
	EXPECT_FALSE(ParseMachineEnv(R"({"1A": "x"})").problem.empty());
	EXPECT_FALSE(ParseMachineEnv("{not json").problem.empty());
	EXPECT_TRUE(ParseMachineEnv(R"({"A": 1})").values.empty());
}

// A name given twice is refused, and the problem says which one instead of "must be a JSON object".
TEST(ParseMachineEnv, NamesADuplicatedVariable) {
	auto parsed = ParseMachineEnv(R"({"LOG_LEVEL": "info", "LOG_LEVEL": "debug"})");
	EXPECT_TRUE(parsed.values.empty());
	EXPECT_NE(parsed.problem.find("given twice"), std::string::npos) << parsed.problem;
	EXPECT_NE(parsed.problem.find("LOG_LEVEL"), std::string::npos) << parsed.problem;
	EXPECT_EQ(parsed.problem.find("debug"), std::string::npos) << parsed.problem;
}

TEST(ParseSecretsFile, ReadsNamesValuesAndBase64Markers) {
	auto parsed = ParseSecretsFile("# comment\n\nGEMINI_API_KEY=abc=def\r\nSUPABASE_SERVICE_KEY_B64:base64=hello\n");
	ASSERT_TRUE(parsed.problem.empty()) << parsed.problem;
	EXPECT_EQ(parsed.values.at("GEMINI_API_KEY"), "abc=def");
	EXPECT_EQ(parsed.values.at("SUPABASE_SERVICE_KEY_B64"), "aGVsbG8=");
}

TEST(ParseSecretsFile, ProblemsNeverQuoteValues) {
	auto parsed = ParseSecretsFile("GOOD=ok\nno equals sign here secretvalue\n");
	EXPECT_NE(parsed.problem.find("line 2"), std::string::npos);
	EXPECT_EQ(parsed.problem.find("secretvalue"), std::string::npos);
	EXPECT_TRUE(parsed.values.empty());
	parsed = ParseSecretsFile("bad-name=topsecret\n");
	EXPECT_EQ(parsed.problem.find("topsecret"), std::string::npos);
	EXPECT_FALSE(parsed.problem.empty());
}

TEST(Base64Encode, MatchesRfc4648Vectors) {
	EXPECT_EQ(Base64Encode(""), "");
	EXPECT_EQ(Base64Encode("f"), "Zg==");
	EXPECT_EQ(Base64Encode("fo"), "Zm8=");
	EXPECT_EQ(Base64Encode("foo"), "Zm9v");
	EXPECT_EQ(Base64Encode("foob"), "Zm9vYg==");
	EXPECT_EQ(Base64Encode("fooba"), "Zm9vYmE=");
	EXPECT_EQ(Base64Encode("foobar"), "Zm9vYmFy");
}

TEST(RetryDelaySeconds, GrowsExponentiallyUpToTheCapWithFullJitter) {
	EXPECT_DOUBLE_EQ(RetryDelaySeconds(1, 1.0, 300.0, std::nullopt, 0.999999), 0.999999);
	EXPECT_DOUBLE_EQ(RetryDelaySeconds(4, 1.0, 300.0, std::nullopt, 0.5), 4.0);
	EXPECT_DOUBLE_EQ(RetryDelaySeconds(30, 1.0, 300.0, std::nullopt, 0.5), 150.0);
	EXPECT_DOUBLE_EQ(RetryDelaySeconds(1000, 1.0, 300.0, std::nullopt, 1.0), 300.0);
	EXPECT_DOUBLE_EQ(RetryDelaySeconds(3, 1.0, 300.0, std::nullopt, 0.0), 0.0);
}

TEST(RetryDelaySeconds, HonoursRetryAfter) {
	EXPECT_DOUBLE_EQ(RetryDelaySeconds(1, 1.0, 300.0, 2.0, 0.1), 2.0);
	EXPECT_DOUBLE_EQ(RetryDelaySeconds(10, 1.0, 300.0, 2.0, 0.5), 150.0);
	EXPECT_DOUBLE_EQ(RetryDelaySeconds(1, 1.0, 300.0, 200.0, 0.5), 200.0);
}

TEST(RetryDelaySeconds, CapsRetryAfterAtTheMaximumDelay) {
	EXPECT_DOUBLE_EQ(RetryDelaySeconds(1, 1.0, 300.0, 900.0, 0.5), 300.0);
	// 999999999 s (the longest delay-seconds accepted) or a far-future HTTP date.
	EXPECT_DOUBLE_EQ(RetryDelaySeconds(1, 1.0, 300.0, 999999999.0, 0.5), 300.0);
	EXPECT_DOUBLE_EQ(RetryDelaySeconds(2, 1.0, 60.0, 4.0e9, 0.0), 60.0);
}

TEST(RetryAfterHoldSeconds, HoldsForRetryAfterUpToTheCap) {
	EXPECT_DOUBLE_EQ(RetryAfterHoldSeconds(std::nullopt, 300.0), 1.0);
	EXPECT_DOUBLE_EQ(RetryAfterHoldSeconds(3.0, 300.0), 3.0);
	EXPECT_DOUBLE_EQ(RetryAfterHoldSeconds(0.0, 300.0), 0.0);
	EXPECT_DOUBLE_EQ(RetryAfterHoldSeconds(999999999.0, 300.0), 300.0);
	EXPECT_DOUBLE_EQ(RetryAfterHoldSeconds(-5.0, 300.0), 0.0);
	EXPECT_DOUBLE_EQ(RetryAfterHoldSeconds(std::nullopt, 0.5), 0.5);
}

TEST(RetryAfterHoldSeconds, AFarFutureHttpDateIsCapped) {
	const std::time_t now = 1700000000;
	const auto parsed = fly::ParseRetryAfter("Fri, 31 Dec 9999 23:59:59 GMT", now);
	ASSERT_TRUE(parsed.has_value());
	EXPECT_GT(*parsed, 1.0e9);
	EXPECT_DOUBLE_EQ(RetryAfterHoldSeconds(parsed, 300.0), 300.0);
	EXPECT_DOUBLE_EQ(RetryDelaySeconds(1, 1.0, 300.0, parsed, 0.0), 300.0);
}

TEST(ConnectionBudget, WantsTwoConnectionsPerUserAndOneMore) {
	const ConnectionBudget budget = WantedConnections(16);
	EXPECT_EQ(budget.concurrency, 16);
	EXPECT_EQ(budget.connections, 33);
	EXPECT_EQ(budget.fds, 33 + kClientFdOverhead);
	EXPECT_EQ(WantedConnections(0).concurrency, 1);
}

TEST(ConnectionBudget, FewerDescriptorsLowerTheConcurrency) {
	EXPECT_EQ(FitConnections(16, 1000).concurrency, 16);
	EXPECT_EQ(FitConnections(16, 36).connections, 33);
	// One short: 35 descriptors leave 32 connections, 15 users (31) and the spare.
	ConnectionBudget budget = FitConnections(16, 35);
	EXPECT_EQ(budget.concurrency, 15);
	EXPECT_EQ(budget.connections, 31);
	EXPECT_LE(budget.fds, 35);
	for (int granted = kMinClientFds; granted < 300; granted++) {
		budget = FitConnections(1024, granted);
		EXPECT_LE(budget.fds, granted) << granted;
		EXPECT_GE(budget.fds, granted - 1) << granted;
		EXPECT_EQ(budget.connections, 2 * budget.concurrency + 1);
	}
	// Nothing to spare: the smallest budget, one user at a time.
	budget = FitConnections(16, 0);
	EXPECT_EQ(budget.concurrency, 1);
	EXPECT_EQ(budget.connections, 3);
	EXPECT_EQ(budget.fds, kMinClientFds);
}

} // namespace
} // namespace pgfly

#include "pgfly/core/worker_settings.hpp"

#include <gtest/gtest.h>

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

} // namespace
} // namespace pgfly

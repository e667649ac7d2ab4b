#include "pgfly/core/token_source.hpp"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <unistd.h>

namespace pgfly {
namespace {

class TempFile {
public:
	explicit TempFile(const std::string &contents) {
		char path_template[] = "/tmp/pgfly_token_XXXXXX";
		const int fd = mkstemp(path_template);
		EXPECT_GE(fd, 0);
		close(fd);
		path = path_template;
		std::ofstream(path) << contents;
	}
	~TempFile() { std::remove(path.c_str()); }
	std::string path;
};

TEST(ResolveToken, SettingWinsOverFileAndEnvironment) {
	TempFile file("from-file");
	auto resolved = ResolveToken("from-setting", file.path.c_str(), "from-env");
	EXPECT_EQ(resolved.source, TokenSource::kSetting);
	EXPECT_EQ(resolved.token, "from-setting");
}

TEST(ResolveToken, FileIsTrimmedAndWinsOverEnvironment) {
	TempFile file("  FlyV1 fm2_abc,fm2_def\n");
	auto resolved = ResolveToken("", file.path.c_str(), "from-env");
	EXPECT_EQ(resolved.source, TokenSource::kFile);
	EXPECT_EQ(resolved.token, "FlyV1 fm2_abc,fm2_def");
	EXPECT_TRUE(resolved.problem.empty());
}

TEST(ResolveToken, EnvironmentIsTheLastResort) {
	auto resolved = ResolveToken(nullptr, nullptr, "from-env");
	EXPECT_EQ(resolved.source, TokenSource::kEnvironment);
	EXPECT_EQ(resolved.token, "from-env");
}

TEST(ResolveToken, NothingConfiguredIsExplained) {
	auto resolved = ResolveToken("", "", nullptr);
	EXPECT_EQ(resolved.source, TokenSource::kNone);
	EXPECT_NE(resolved.problem.find("no Fly API token"), std::string::npos);
}

TEST(ResolveToken, UnreadableFileIsAProblemNotAFallback) {
	auto resolved = ResolveToken("", "/nonexistent/pgfly-token", "from-env");
	EXPECT_EQ(resolved.source, TokenSource::kNone);
	EXPECT_TRUE(resolved.token.empty());
	EXPECT_NE(resolved.problem.find("cannot be read"), std::string::npos);
}

TEST(ResolveToken, EmptyFileIsReportedAsEmpty) {
	TempFile file("\n");
	auto resolved = ResolveToken("", file.path.c_str(), nullptr);
	EXPECT_EQ(resolved.source, TokenSource::kNone);
	EXPECT_NE(resolved.problem.find("empty"), std::string::npos);
}

TEST(ResolveToken, TokenWithLineBreakIsRefusedWithoutEchoingIt) {
	auto resolved = ResolveToken("secret-part\r\nX-Injected: 1", nullptr, nullptr);
	EXPECT_EQ(resolved.source, TokenSource::kNone);
	EXPECT_TRUE(resolved.token.empty());
	EXPECT_EQ(resolved.problem.find("secret-part"), std::string::npos);
	EXPECT_NE(resolved.problem.find("control character"), std::string::npos);
}

TEST(TokenSourceName, NamesEverySource) {
	EXPECT_STREQ(TokenSourceName(TokenSource::kSetting), "fly.api_token");
	EXPECT_STREQ(TokenSourceName(TokenSource::kFile), "fly.api_token_file");
	EXPECT_STREQ(TokenSourceName(TokenSource::kEnvironment), "FLY_API_TOKEN");
	EXPECT_STREQ(TokenSourceName(TokenSource::kNone), "none");
}

} // namespace
} // namespace pgfly

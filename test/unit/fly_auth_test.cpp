#include "pgfly/core/fly_auth.hpp"

#include <gtest/gtest.h>

namespace pgfly {
namespace fly {
namespace {

TEST(AuthorizationHeader, FlyV1TokenAsIssuedIsSentAsFlyV1) {
	// `fly tokens create` prints the token with its scheme.
	EXPECT_EQ(AuthorizationHeader("FlyV1 fm2_abc"), "FlyV1 fm2_abc");
	EXPECT_EQ(AuthorizationHeader("FlyV1 fm2_abc,fm2_def"), "FlyV1 fm2_abc,fm2_def");
	EXPECT_EQ(AuthorizationHeader("  FlyV1   fm2_abc \n"), "FlyV1 fm2_abc");
	EXPECT_EQ(AuthorizationHeader("flyv1 fm2_abc"), "FlyV1 fm2_abc");
}

TEST(AuthorizationHeader, DocsStyleBearerFlyV1BecomesFlyV1) {
	EXPECT_EQ(AuthorizationHeader("Bearer FlyV1 fm2_abc"), "FlyV1 fm2_abc");
	EXPECT_EQ(AuthorizationHeader("bearer FlyV1 fm2_abc,fm1a_def"), "FlyV1 fm2_abc,fm1a_def");
}

TEST(AuthorizationHeader, BareMacaroonsGetFlyV1) {
	EXPECT_EQ(AuthorizationHeader("fm2_abc"), "FlyV1 fm2_abc");
	EXPECT_EQ(AuthorizationHeader("fm1r_abc"), "FlyV1 fm1r_abc");
	EXPECT_EQ(AuthorizationHeader("fm1a_abc"), "FlyV1 fm1a_abc");
	EXPECT_EQ(AuthorizationHeader("fm2_abc,fm2_def"), "FlyV1 fm2_abc,fm2_def");
	EXPECT_EQ(AuthorizationHeader("fm2_abc, fm1a_def"), "FlyV1 fm2_abc,fm1a_def");
	EXPECT_EQ(AuthorizationHeader("Bearer fm2_abc"), "FlyV1 fm2_abc");
	// As fly-go does: with macaroons present, other tokens in the list are dropped.
	EXPECT_EQ(AuthorizationHeader("oauth123,fm2_abc"), "FlyV1 fm2_abc");
}

TEST(AuthorizationHeader, OtherTokensGetBearer) {
	EXPECT_EQ(AuthorizationHeader("abc123"), "Bearer abc123");
	EXPECT_EQ(AuthorizationHeader("Bearer abc123"), "Bearer abc123");
	EXPECT_EQ(AuthorizationHeader("BEARER abc123"), "Bearer abc123");
	EXPECT_EQ(AuthorizationHeader(" abc123 "), "Bearer abc123");
	// Prefixes that only look like macaroons.
	EXPECT_EQ(AuthorizationHeader("fm3_abc"), "Bearer fm3_abc");
	EXPECT_EQ(AuthorizationHeader("fm2abc"), "Bearer fm2abc");
	EXPECT_EQ(AuthorizationHeader("FlyV1fm2"), "Bearer FlyV1fm2");
}

TEST(RedactToken, RemovesTheTokenAndItsParts) {
	const std::string token = "FlyV1 fm2_firstpart123,fm2_secondpart456";
	EXPECT_EQ(RedactToken("header FlyV1 fm2_firstpart123,fm2_secondpart456 end", token), "header <redacted> end");
	EXPECT_EQ(RedactToken("got fm2_firstpart123,fm2_secondpart456", token), "got <redacted>");
	EXPECT_EQ(RedactToken("only fm2_secondpart456 here", token), "only <redacted> here");
	EXPECT_EQ(RedactToken("Bearer plain-token-xyz", "plain-token-xyz"), "Bearer <redacted>");
	EXPECT_EQ(RedactToken("nothing to hide", token), "nothing to hide");
	EXPECT_EQ(RedactToken("tiny t", "t"), "tiny t");
}

TEST(ApiUrlProblem, HttpsAnywhereHttpOnlyToLoopback) {
	for (const char *url :
	     {"https://api.machines.dev", "https://10.0.0.1:8443/x", "http://127.0.0.1:4280", "http://127.10.0.1",
	      "http://localhost:80/", "http://LOCALHOST", "http://[::1]:4280/v1", "http://127.0.0.1/"}) {
		EXPECT_FALSE(ApiUrlProblem(url).has_value()) << url;
	}
	for (const char *url :
	     {"http://api.machines.dev", "http://10.0.0.1", "http://[::2]", "http://128.0.0.1", "http://127.0.0.1.nip.io",
	      "http://localhost.evil.example", "http://127.0.0.1@evil.example", "http://evil.example#@127.0.0.1",
	      "http://evil.example?127.0.0.1", "http://127.1", "http://[::ffff:10.0.0.1]"}) {
		const auto problem = ApiUrlProblem(url);
		ASSERT_TRUE(problem.has_value()) << url;
		EXPECT_NE(problem->find("loopback"), std::string::npos) << *problem;
	}
	EXPECT_NE(ApiUrlProblem("ftp://example.com").value_or("").find("https://"), std::string::npos);
	EXPECT_NE(ApiUrlProblem("https://a b").value_or("").find("spaces"), std::string::npos);
	EXPECT_TRUE(ApiUrlProblem("").has_value());
}

TEST(PlainUrlProblem, HttpAllowedAnywhere) {
	EXPECT_FALSE(PlainUrlProblem("http://{app}.internal:8080/health").has_value());
	EXPECT_FALSE(PlainUrlProblem("https://{app}.fly.dev/health").has_value());
	EXPECT_TRUE(PlainUrlProblem("gopher://x").has_value());
	EXPECT_TRUE(PlainUrlProblem("http://a\tb").has_value());
}

TEST(ProxyUrlProblem, SchemesHostAndNoCredentials) {
	for (const char *url : {"http://proxy.internal:3128", "https://proxy:443", "socks5h://127.0.0.1:1080",
	                        "socks5://[::1]:1080", "socks4a://p", "http://10.1.2.3:8080/"}) {
		EXPECT_FALSE(ProxyUrlProblem(url).has_value()) << url;
	}
	EXPECT_NE(ProxyUrlProblem("http://user:secret@proxy:3128").value_or("").find("user name or password"),
	          std::string::npos);
	EXPECT_TRUE(ProxyUrlProblem("proxy:3128").has_value());
	EXPECT_TRUE(ProxyUrlProblem("ftp://proxy").has_value());
	EXPECT_TRUE(ProxyUrlProblem("http://").has_value());
	EXPECT_TRUE(ProxyUrlProblem("http://proxy :3128").has_value());
}

} // namespace
} // namespace fly
} // namespace pgfly

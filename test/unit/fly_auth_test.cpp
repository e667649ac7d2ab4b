#include "pgfly/core/fly_auth.hpp"

#include <gtest/gtest.h>

namespace pgfly {
namespace fly {
namespace {

TEST(AuthorizationHeader, FlyV1TokenAsIssuedIsSentAsFlyV1) {
	// `fly tokens create` prints the token with its scheme (api-reference §1).
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

} // namespace
} // namespace fly
} // namespace pgfly

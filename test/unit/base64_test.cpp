#include "pgfly/core/base64.hpp"

#include <gtest/gtest.h>

namespace pgfly {
namespace {

TEST(Base64Encode, MatchesRfc4648Vectors) {
	EXPECT_EQ(Base64Encode(""), "");
	EXPECT_EQ(Base64Encode("f"), "Zg==");
	EXPECT_EQ(Base64Encode("fo"), "Zm8=");
	EXPECT_EQ(Base64Encode("foo"), "Zm9v");
	EXPECT_EQ(Base64Encode("foob"), "Zm9vYg==");
	EXPECT_EQ(Base64Encode("fooba"), "Zm9vYmE=");
	EXPECT_EQ(Base64Encode("foobar"), "Zm9vYmFy");
}

} // namespace
} // namespace pgfly

#include "pgfly/core/text.hpp"

#include <gtest/gtest.h>

#include <string>

namespace pgfly {
namespace {

TEST(Trim, RemovesAsciiWhiteSpaceAtBothEnds) {
	EXPECT_EQ(Trim("  fo o \t\r\n"), "fo o");
	EXPECT_EQ(Trim("\r\n"), "");
	EXPECT_EQ(Trim(""), "");
	EXPECT_EQ(Trim("x"), "x");
	EXPECT_EQ(TrimView(" a\u00a0"), "a\u00a0"); // non-ASCII space is text
	EXPECT_EQ(TrimView(" \tx \n", " \t"), "x \n");
	EXPECT_TRUE(IsAsciiSpace('\n'));
	EXPECT_FALSE(IsAsciiSpace('\v'));
	EXPECT_FALSE(IsAsciiSpace('\0'));
}

TEST(ToLower, LowersAsciiLettersOnly) {
	EXPECT_EQ(ToLower("Application/JSON; Charset=UTF-8"), "application/json; charset=utf-8");
	EXPECT_EQ(ToLower("ÄÖ-Z@[`"), "ÄÖ-z@[`");
	EXPECT_EQ(ToLower('Q'), 'q');
	EXPECT_EQ(ToLower('\xc4'), '\xc4');
	EXPECT_TRUE(EqualsIgnoreCase("Retry-After", "retry-after"));
	EXPECT_TRUE(EqualsIgnoreCase("", ""));
	EXPECT_FALSE(EqualsIgnoreCase("retry-after", "retry-afte"));
	EXPECT_FALSE(EqualsIgnoreCase("[", "{")); // '[' is 'A' - 'a' away from '{', but not a letter
}

TEST(TruncateUtf8, NeverSplitsASequence) {
	EXPECT_EQ(TruncateUtf8("abc", 3), "abc");
	EXPECT_EQ(TruncateUtf8("abc", 2), "ab");
	EXPECT_EQ(TruncateUtf8("abc", 0), "");
	// "é" is 2 bytes, "💎" 4.
	EXPECT_EQ(TruncateUtf8("aé", 2), "a");
	EXPECT_EQ(TruncateUtf8("aé", 3), "aé");
	for (size_t limit = 1; limit < 5; limit++) {
		EXPECT_EQ(TruncateUtf8("a💎", limit), "a") << limit;
	}
	EXPECT_EQ(TruncateUtf8("a💎", 5), "a💎");
	EXPECT_EQ(Utf8PrefixLength("a💎b", 5), 5u);
	EXPECT_EQ(Utf8PrefixLength("💎", 3), 0u);
	// Not UTF-8: stray continuation bytes are dropped from the end, other bytes cut where the limit says.
	EXPECT_EQ(Utf8PrefixLength(std::string("\x80\x80\x80", 3), 2), 0u);
	EXPECT_EQ(Utf8PrefixLength(std::string("\xff\xff\xff", 3), 2), 2u);
}

TEST(HexEncode, LowerCaseTwoDigitsPerByte) {
	const unsigned char bytes[] = {0x00, 0x0f, 0xa5, 0xff};
	EXPECT_EQ(HexEncode(bytes, sizeof bytes), "000fa5ff");
	EXPECT_EQ(HexEncode(bytes, 0), "");
}

} // namespace
} // namespace pgfly

#include "pgfly/core/sql_text.hpp"

#include <gtest/gtest.h>

#include <string>

namespace pgfly {
namespace {

TEST(QuoteForMessage, ShortValuesAreQuotedAsTheyAre) {
	EXPECT_EQ(QuoteForMessage("platinum"), "\"platinum\"");
	EXPECT_EQ(QuoteForMessage(""), "\"\"");
	EXPECT_EQ(QuoteForMessage("pro'; DROP TABLE fly.reconcile_queue; --"),
	          "\"pro'; DROP TABLE fly.reconcile_queue; --\"");
	EXPECT_EQ(QuoteForMessage("💎 diamond"), "\"💎 diamond\"");
}

TEST(QuoteForMessage, ControlCharactersQuotesAndBackslashesAreEscaped) {
	EXPECT_EQ(QuoteForMessage("a\nLOG:  forged\r\tb"), "\"a\\nLOG:  forged\\r\\tb\"");
	EXPECT_EQ(QuoteForMessage(std::string("\x01\x1f\x7f", 3)), "\"\\x01\\x1f\\x7f\"");
	EXPECT_EQ(QuoteForMessage("say \"hi\" \\o/"), "\"say \\\"hi\\\" \\\\o/\"");
}

TEST(QuoteForMessage, LongValuesAreCutAndTheirLengthNamed) {
	const std::string megabyte(1024 * 1024, 'x');
	const std::string quoted = QuoteForMessage(megabyte);
	EXPECT_EQ(quoted, "\"" + std::string(64, 'x') + "...\" (1048576 bytes)");
	EXPECT_EQ(QuoteForMessage("abcdef", 3), "\"abc...\" (6 bytes)");
	// A cut never splits a UTF-8 sequence: "é" is two bytes.
	EXPECT_EQ(QuoteForMessage("aé", 2), "\"a...\" (3 bytes)");
	EXPECT_EQ(QuoteForMessage("éé", 3), "\"é...\" (4 bytes)");
}

TEST(SqlLiteral, DoublesQuotes) {
	EXPECT_EQ(SqlLiteral("platinum"), "'platinum'");
	EXPECT_EQ(SqlLiteral("it's"), "'it''s'");
	EXPECT_EQ(SqlLiteral("'); DROP TABLE x; --"), "'''); DROP TABLE x; --'");
}

TEST(IsUuidText, AcceptsWhatPostgresAccepts) {
	for (const char *text : {"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
	                         "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}", "a0eebc999c0b4ef8bb6d6bb9bd380a11",
	                         "a0ee-bc99-9c0b4ef8-bb6d6bb9-bd380a11", "{a0eebc999c0b4ef8bb6d6bb9bd380a11}"}) {
		EXPECT_TRUE(IsUuidText(text)) << text;
	}
}

TEST(IsUuidText, RefusesEverythingElse) {
	for (const char *text :
	     {"", "not-a-uuid", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a111",
	      "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11-", "-a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
	      "a0eebc99--9c0b-4ef8-bb6d-6bb9bd380a11", "a0eeb-c999c0b4ef8bb6d6bb9bd380a11",
	      "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}", "{}", "{",
	      " a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
	      "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'; --"}) {
		EXPECT_FALSE(IsUuidText(text)) << text;
	}
}

} // namespace
} // namespace pgfly

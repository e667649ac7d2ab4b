// Values that SQL users supply (a tier, a user id from the application's table) shown in error messages, and
// checked before PostgreSQL would cast them. Such a value may be a megabyte long or hold line breaks: a message
// quotes a short, single-line form of it.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace pgfly {

constexpr size_t kMaxQuotedValueBytes = 64;

// value in double quotes, with '"', '\' and control characters escaped (\n, \t, \r, \xNN) so that it stays on
// one line; past max_bytes it is cut (never inside a UTF-8 sequence) and its full length is named:
// "abc..." (1048576 bytes).
std::string QuoteForMessage(std::string_view value, size_t max_bytes = kMaxQuotedValueBytes);

// value as a SQL string literal, quotes doubled: 'it''s'.
std::string SqlLiteral(std::string_view value);

// Whether text is a uuid as PostgreSQL's uuid input reads it: 32 hex digits, optionally inside one pair of
// braces, with a '-' allowed after any group of four digits but the last.
bool IsUuidText(std::string_view text);

} // namespace pgfly

// Small text helpers the core shares: ASCII white space and case (HTTP header names, token schemes, host names
// and media types are ASCII and case-insensitive), and cutting text to a byte limit without splitting a UTF-8
// sequence (text that goes into a log line, an event or an error message).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace pgfly {

// The white space trimmed from tokens, header values and lines of a file.
constexpr std::string_view kAsciiSpace = " \t\r\n";

bool IsAsciiSpace(char c);
// text without leading and trailing characters from `space`.
std::string_view TrimView(std::string_view text, std::string_view space = kAsciiSpace);
std::string Trim(std::string_view text);

// ASCII upper-case letters lowered; every other byte (UTF-8 included) is left as it is.
char ToLower(char c);
std::string ToLower(std::string_view text);
bool EqualsIgnoreCase(std::string_view a, std::string_view b);

// How many bytes of text to keep for at most max_bytes: max_bytes, or fewer so that the cut does not fall
// inside a UTF-8 sequence (text that is not UTF-8 is cut at max_bytes or just before continuation bytes).
size_t Utf8PrefixLength(std::string_view text, size_t max_bytes);
// The first Utf8PrefixLength(text, max_bytes) bytes of text.
std::string TruncateUtf8(std::string_view text, size_t max_bytes);

// Bytes as lower-case hexadecimal (digests).
std::string HexEncode(const unsigned char *bytes, size_t length);

} // namespace pgfly

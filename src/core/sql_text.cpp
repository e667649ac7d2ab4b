#include "pgfly/core/sql_text.hpp"

#include "pgfly/core/text.hpp"

#include "pgfly/core/cpp_only.hpp"

namespace pgfly {

namespace {

bool
IsHexDigit(char c) {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

void
AppendEscaped(std::string &out, char c) {
	static const char kHex[] = "0123456789abcdef";
	const unsigned char byte = static_cast<unsigned char>(c);
	switch (c) {
	case '"':
		out += "\\\"";
		return;
	case '\\':
		out += "\\\\";
		return;
	case '\n':
		out += "\\n";
		return;
	case '\t':
		out += "\\t";
		return;
	case '\r':
		out += "\\r";
		return;
	default:
		break;
	}
	if (byte < 0x20 || byte == 0x7f) {
		out += "\\x";
		out.push_back(kHex[byte >> 4]);
		out.push_back(kHex[byte & 0xf]);
		return;
	}
	out.push_back(c);
}

} // namespace

std::string
QuoteForMessage(std::string_view value, size_t max_bytes) {
	const size_t shown = Utf8PrefixLength(value, max_bytes);
	std::string quoted = "\"";
	for (size_t i = 0; i < shown; i++) {
		AppendEscaped(quoted, value[i]);
	}
	if (shown < value.size()) {
		return quoted + "...\" (" + std::to_string(value.size()) + " bytes)";
	}
	return quoted + "\"";
}

std::string
SqlLiteral(std::string_view value) {
	std::string literal = "'";
	for (char c : value) {
		literal.push_back(c);
		if (c == '\'') {
			literal.push_back('\'');
		}
	}
	return literal + "'";
}

bool
IsUuidText(std::string_view text) {
	constexpr int kHexDigits = 32;
	const bool braces = !text.empty() && text.front() == '{';
	if (braces) {
		if (text.size() < 2 || text.back() != '}') {
			return false;
		}
		text = text.substr(1, text.size() - 2);
	}
	int digits = 0;
	size_t i = 0;
	while (digits < kHexDigits) {
		if (i >= text.size() || !IsHexDigit(text[i])) {
			return false;
		}
		digits++;
		i++;
		if (digits % 4 == 0 && digits < kHexDigits && i < text.size() && text[i] == '-') {
			i++;
		}
	}
	return i == text.size();
}

} // namespace pgfly

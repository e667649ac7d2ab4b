#include "pgfly/core/text.hpp"

#include "pgfly/core/cpp_only.hpp"

namespace pgfly {

bool
IsAsciiSpace(char c) {
	return kAsciiSpace.find(c) != std::string_view::npos;
}

std::string_view
TrimView(std::string_view text, std::string_view space) {
	const size_t begin = text.find_first_not_of(space);
	if (begin == std::string_view::npos) {
		return {};
	}
	return text.substr(begin, text.find_last_not_of(space) - begin + 1);
}

std::string
Trim(std::string_view text) {
	return std::string(TrimView(text));
}

char
ToLower(char c) {
	return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
}

std::string
ToLower(std::string_view text) {
	std::string lower(text);
	for (char &c : lower) {
		c = ToLower(c);
	}
	return lower;
}

bool
EqualsIgnoreCase(std::string_view a, std::string_view b) {
	if (a.size() != b.size()) {
		return false;
	}
	for (size_t i = 0; i < a.size(); i++) {
		if (ToLower(a[i]) != ToLower(b[i])) {
			return false;
		}
	}
	return true;
}

size_t
Utf8PrefixLength(std::string_view text, size_t max_bytes) {
	if (text.size() <= max_bytes) {
		return text.size();
	}
	size_t cut = max_bytes;
	// A continuation byte (10xxxxxx) at the cut means the sequence it belongs to started before it.
	while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xc0) == 0x80) {
		cut--;
	}
	return cut;
}

std::string
TruncateUtf8(std::string_view text, size_t max_bytes) {
	return std::string(text.substr(0, Utf8PrefixLength(text, max_bytes)));
}

std::string
HexEncode(const unsigned char *bytes, size_t length) {
	static const char kHex[] = "0123456789abcdef";
	std::string hex;
	hex.reserve(length * 2);
	for (size_t i = 0; i < length; i++) {
		hex.push_back(kHex[bytes[i] >> 4]);
		hex.push_back(kHex[bytes[i] & 0xf]);
	}
	return hex;
}

} // namespace pgfly

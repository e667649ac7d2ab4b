#include "pgfly/core/base64.hpp"

#include "pgfly/core/cpp_only.hpp"

namespace pgfly {

std::string
Base64Encode(const std::string &bytes) {
	static const char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	std::string encoded;
	encoded.reserve((bytes.size() + 2) / 3 * 4);
	size_t i = 0;
	for (; i + 2 < bytes.size(); i += 3) {
		const unsigned v = (static_cast<unsigned char>(bytes[i]) << 16) |
		                   (static_cast<unsigned char>(bytes[i + 1]) << 8) | static_cast<unsigned char>(bytes[i + 2]);
		encoded += kAlphabet[(v >> 18) & 63];
		encoded += kAlphabet[(v >> 12) & 63];
		encoded += kAlphabet[(v >> 6) & 63];
		encoded += kAlphabet[v & 63];
	}
	if (i < bytes.size()) {
		unsigned v = static_cast<unsigned char>(bytes[i]) << 16;
		if (i + 1 < bytes.size()) {
			v |= static_cast<unsigned char>(bytes[i + 1]) << 8;
		}
		encoded += kAlphabet[(v >> 18) & 63];
		encoded += kAlphabet[(v >> 12) & 63];
		encoded += i + 1 < bytes.size() ? kAlphabet[(v >> 6) & 63] : '=';
		encoded += '=';
	}
	return encoded;
}

} // namespace pgfly

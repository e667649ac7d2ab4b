#include "pgfly/core/fly_auth.hpp"

#include <algorithm>
#include <vector>

#include "pgfly/core/cpp_only.hpp"

namespace pgfly {
namespace fly {

namespace {

constexpr size_t kMinRedactedLength = 4;
constexpr const char *kRedacted = "<redacted>";

bool
IsSpace(char c) {
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

std::string
Trim(const std::string &text) {
	size_t begin = 0;
	size_t end = text.size();
	while (begin < end && IsSpace(text[begin])) {
		begin++;
	}
	while (end > begin && IsSpace(text[end - 1])) {
		end--;
	}
	return text.substr(begin, end - begin);
}

// When text starts with scheme (any case) followed by white space, stores what follows (trimmed) in rest.
bool
StripScheme(const std::string &text, const std::string &scheme, std::string *rest) {
	if (text.size() <= scheme.size() || !IsSpace(text[scheme.size()])) {
		return false;
	}
	for (size_t i = 0; i < scheme.size(); i++) {
		const char a = text[i];
		const char b = scheme[i];
		if (a != b && !(a >= 'A' && a <= 'Z' && a + ('a' - 'A') == b) &&
			!(a >= 'a' && a <= 'z' && a - ('a' - 'A') == b)) {
			return false;
		}
	}
	*rest = Trim(text.substr(scheme.size()));
	return true;
}

std::vector<std::string>
SplitList(const std::string &text) {
	std::vector<std::string> parts;
	size_t start = 0;
	while (start <= text.size()) {
		size_t comma = text.find(',', start);
		if (comma == std::string::npos) {
			comma = text.size();
		}
		std::string part = Trim(text.substr(start, comma - start));
		if (!part.empty()) {
			parts.push_back(std::move(part));
		}
		start = comma + 1;
	}
	return parts;
}

std::string
Join(const std::vector<std::string> &parts) {
	std::string joined;
	for (const auto &part : parts) {
		if (!joined.empty()) {
			joined += ",";
		}
		joined += part;
	}
	return joined;
}

// fly-go's test: the part before the first '_' is one of the macaroon kinds.
bool
IsMacaroon(const std::string &part) {
	const std::string kind = part.substr(0, part.find('_'));
	return part.find('_') != std::string::npos && (kind == "fm1r" || kind == "fm1a" || kind == "fm2");
}

std::string
ReplaceAll(std::string text, const std::string &needle) {
	size_t position = 0;
	while ((position = text.find(needle, position)) != std::string::npos) {
		text.replace(position, needle.size(), kRedacted);
		position += std::char_traits<char>::length(kRedacted);
	}
	return text;
}

} // namespace

std::string
AuthorizationHeader(const std::string &token) {
	std::string credential = Trim(token);
	std::string rest;
	// fly-go strips any number of schemes; "Bearer FlyV1 ..." is what the docs' examples send.
	while (StripScheme(credential, "Bearer", &rest)) {
		credential = rest;
	}
	if (StripScheme(credential, "FlyV1", &rest)) {
		// The token says it is a FlyV1 credential: keep every part, only drop white space around commas.
		return "FlyV1 " + Join(SplitList(rest));
	}
	std::vector<std::string> macaroons;
	for (auto &part : SplitList(credential)) {
		if (IsMacaroon(part)) {
			macaroons.push_back(std::move(part));
		}
	}
	if (!macaroons.empty()) {
		return "FlyV1 " + Join(macaroons);
	}
	return "Bearer " + credential;
}

std::string
RedactToken(const std::string &text, const std::string &token) {
	std::vector<std::string> fragments;
	fragments.push_back(Trim(token));
	const std::string header = AuthorizationHeader(token);
	const std::string credential = header.substr(header.find(' ') + 1);
	fragments.push_back(credential);
	for (auto &part : SplitList(credential)) {
		fragments.push_back(std::move(part));
	}
	return RedactStrings(text, std::move(fragments));
}

std::string
RedactStrings(const std::string &text, std::vector<std::string> values) {
	// Longest first, so that a whole token is replaced before its parts.
	std::sort(values.begin(), values.end(),
			  [](const std::string &a, const std::string &b) { return a.size() > b.size(); });
	std::string redacted = text;
	for (const auto &value : values) {
		if (value.size() >= kMinRedactedLength) {
			redacted = ReplaceAll(std::move(redacted), value);
		}
	}
	return redacted;
}

} // namespace fly
} // namespace pgfly

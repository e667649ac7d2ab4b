#include "pgfly/core/fly_auth.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "pgfly/core/fly_outcome.hpp"
#include "pgfly/core/text.hpp"

#include "pgfly/core/cpp_only.hpp"

namespace pgfly {
namespace fly {

namespace {

constexpr size_t kMinRedactedLength = 4;
constexpr const char *kRedacted = "<redacted>";

// When text starts with scheme (any case) followed by white space, stores what follows (trimmed) in rest.
bool
StripScheme(const std::string &text, const std::string &scheme, std::string *rest) {
	if (text.size() <= scheme.size() || !IsAsciiSpace(text[scheme.size()]) ||
	    !EqualsIgnoreCase(std::string_view(text).substr(0, scheme.size()), scheme)) {
		return false;
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

namespace {

bool
StartsWith(const std::string &text, const char *prefix) {
	return text.compare(0, std::strlen(prefix), prefix) == 0;
}

std::optional<std::string>
UrlCharacterProblem(const std::string &url) {
	for (char c : url) {
		if (static_cast<unsigned char>(c) <= ' ' || c == 0x7f) {
			return std::string("it must not contain spaces or control characters");
		}
	}
	return std::nullopt;
}

} // namespace

bool
IsLoopbackHost(const std::string &host) {
	const std::string lower = ToLower(host);
	if (lower == "localhost" || lower == "localhost.") {
		return true;
	}
	in_addr v4 = {};
	if (inet_pton(AF_INET, lower.c_str(), &v4) == 1) {
		return (ntohl(v4.s_addr) >> 24) == 127;
	}
	if (lower.size() > 2 && lower.front() == '[' && lower.back() == ']') {
		in6_addr v6 = {};
		const std::string inner = lower.substr(1, lower.size() - 2);
		return inet_pton(AF_INET6, inner.c_str(), &v6) == 1 && IN6_IS_ADDR_LOOPBACK(&v6);
	}
	return false;
}

std::optional<std::string>
PlainUrlProblem(const std::string &url) {
	if (!StartsWith(url, "https://") && !StartsWith(url, "http://")) {
		return std::string("it must start with https:// or http://");
	}
	return UrlCharacterProblem(url);
}

std::optional<std::string>
ApiUrlProblem(const std::string &url) {
	if (auto problem = PlainUrlProblem(url)) {
		return problem;
	}
	if (StartsWith(url, "http://") && !IsLoopbackHost(UrlHost(url))) {
		return std::string("it must start with https://; http:// is allowed only for a loopback host (localhost, "
		                   "127.0.0.0/8, [::1]), since the token would travel in clear text");
	}
	return std::nullopt;
}

std::optional<std::string>
ProxyUrlProblem(const std::string &url) {
	bool known_scheme = false;
	for (const char *scheme : {"http://", "https://", "socks4://", "socks4a://", "socks5://", "socks5h://"}) {
		known_scheme = known_scheme || StartsWith(url, scheme);
	}
	if (!known_scheme) {
		return std::string("it must start with http://, https://, socks4://, socks4a://, socks5:// or socks5h://");
	}
	if (auto problem = UrlCharacterProblem(url)) {
		return problem;
	}
	const size_t start = url.find("://") + 3;
	const std::string authority = url.substr(start, url.find_first_of("/?#", start) - start);
	if (authority.find('@') != std::string::npos) {
		return std::string("it must not contain a user name or password (a changed setting's value is logged)");
	}
	if (UrlHost(url).empty()) {
		return std::string("it names no host");
	}
	return std::nullopt;
}

} // namespace fly
} // namespace pgfly

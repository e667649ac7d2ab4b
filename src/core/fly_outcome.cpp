#include "pgfly/core/fly_outcome.hpp"

#include <curl/curl.h>

#include <cmath>
#include <cstdlib>

#include "pgfly/core/fly_auth.hpp"
#include "pgfly/core/text.hpp"

#include "pgfly/core/cpp_only.hpp"

namespace pgfly {
namespace fly {

namespace {

constexpr size_t kMaxHeaderValueLength = 200;
// A delay-seconds value longer than this is nonsense (over 31 years); refusing it also avoids overflow.
constexpr size_t kMaxRetryAfterDigits = 9;

enum class BodyShape { kNone, kOptional, kObject, kArray };

// What each endpoint's success body is (the responses of Fly's OpenAPI spec; docs/fly-api.md). kOptional: Fly sends
// a small object or nothing (create app 201, delete app 202, stop/start/delete/wait machine 200).
BodyShape
ExpectedBody(Endpoint endpoint) {
	switch (endpoint) {
	case Endpoint::kGetApp:
	case Endpoint::kListApps:
	case Endpoint::kSetSecrets:
	case Endpoint::kCreateMachine:
	case Endpoint::kGetMachine:
	case Endpoint::kUpdateMachine:
	case Endpoint::kListIpAssignments:
	case Endpoint::kAssignIp:
	case Endpoint::kAppHealth:
		return BodyShape::kObject;
	case Endpoint::kListMachines:
		return BodyShape::kArray;
	case Endpoint::kDeleteApp:
		return BodyShape::kNone;
	case Endpoint::kCreateApp:
	case Endpoint::kWaitMachine:
	case Endpoint::kStopMachine:
	case Endpoint::kStartMachine:
	case Endpoint::kDeleteMachine:
		return BodyShape::kOptional;
	}
	return BodyShape::kOptional;
}

const char *
ReasonPhrase(long status) {
	switch (status) {
	case 200:
		return "ok";
	case 201:
		return "created";
	case 202:
		return "accepted";
	case 204:
		return "no content";
	case 301:
		return "moved permanently";
	case 302:
		return "found";
	case 303:
		return "see other";
	case 304:
		return "not modified";
	case 307:
		return "temporary redirect";
	case 308:
		return "permanent redirect";
	case 400:
		return "bad request";
	case 401:
		return "unauthorized";
	case 403:
		return "forbidden";
	case 404:
		return "not found";
	case 405:
		return "method not allowed";
	case 408:
		return "request timeout";
	case 409:
		return "conflict";
	case 412:
		return "precondition failed";
	case 413:
		return "payload too large";
	case 415:
		return "unsupported media type";
	case 422:
		return "unprocessable entity";
	case 429:
		return "too many requests";
	case 500:
		return "internal server error";
	case 501:
		return "not implemented";
	case 502:
		return "bad gateway";
	case 503:
		return "service unavailable";
	case 504:
		return "gateway timeout";
	default:
		return nullptr;
	}
}

bool
IsBlank(const std::string &text) {
	return TrimView(text).empty();
}

// At most limit bytes of text on one line: control characters become spaces, and a cut never splits a UTF-8
// sequence.
std::string
OneLine(const std::string &text, size_t limit) {
	std::string line;
	for (char c : text) {
		const unsigned char byte = static_cast<unsigned char>(c);
		line.push_back(byte < 0x20 || byte == 0x7f ? ' ' : c);
	}
	return TruncateUtf8(line, limit);
}

// The first kMaxBodySnippetLength printable ASCII characters of a body, white space collapsed: enough to
// recognise an HTML error page or a proxy's message without copying arbitrary bytes into a log.
std::string
Snippet(const std::string &body) {
	std::string snippet;
	bool space = false;
	size_t i = 0;
	for (; i < body.size() && snippet.size() < kMaxBodySnippetLength; i++) {
		const unsigned char c = static_cast<unsigned char>(body[i]);
		if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
			space = !snippet.empty();
		} else if (c > 0x20 && c < 0x7f) {
			if (space) {
				snippet.push_back(' ');
				space = false;
			}
			snippet.push_back(static_cast<char>(c));
		}
	}
	if (i < body.size() && !IsBlank(body.substr(i))) {
		snippet += "...";
	}
	return snippet;
}

std::string
FormatSeconds(double seconds) {
	return std::to_string(static_cast<long long>(std::ceil(seconds))) + " s";
}

std::string
HttpPrefix(const char *name, long status) {
	std::string prefix = std::string(name) + ": HTTP " + std::to_string(status);
	if (const char *reason = ReasonPhrase(status)) {
		prefix += std::string(" (") + reason + ")";
	}
	return prefix;
}

std::string
NetworkDescription(NetworkError error) {
	switch (error) {
	case NetworkError::kDns:
		return "network error (DNS lookup failed)";
	case NetworkError::kConnect:
		return "network error (could not connect)";
	case NetworkError::kTimeout:
		return "network error (timed out)";
	case NetworkError::kReset:
		return "network error (connection reset or closed)";
	case NetworkError::kTls:
		return "TLS error (a configuration problem: check fly.api_url, the CA file and any proxy)";
	case NetworkError::kTooLarge:
		return "response too large";
	case NetworkError::kCancelled:
		return "cancelled before completion";
	case NetworkError::kConfig:
		return "request not sent (a configuration problem)";
	case NetworkError::kOther:
	case NetworkError::kNone:
		break;
	}
	return "network error";
}

OutcomeKind
NetworkKind(NetworkError error) {
	switch (error) {
	case NetworkError::kTls:
	case NetworkError::kConfig:
		return OutcomeKind::kPermanent;
	case NetworkError::kTooLarge:
		return OutcomeKind::kMalformed;
	default:
		return OutcomeKind::kTransient;
	}
}

// Reads Fly's ErrorResponse {"error", "status"} (and the "message" of lease envelopes and fly-go's parser).
// Returns false when the body is not a JSON object.
bool
ReadErrorBody(const std::string &body, Outcome &outcome) {
	JsonParseResult parsed = ParseJson(body);
	if (!parsed.ok() || !parsed.value.IsObject()) {
		return false;
	}
	std::string text = parsed.value.GetString("message").value_or("");
	if (text.empty()) {
		text = parsed.value.GetString("error").value_or("");
	}
	outcome.fly_error = OneLine(text, kMaxFlyErrorLength);
	outcome.fly_status = OneLine(parsed.value.GetString("status").value_or(""), kMaxFlyErrorLength);
	return true;
}

OutcomeKind
ErrorKind(long status, const Outcome &outcome) {
	if (status == 404) {
		return OutcomeKind::kNotFound;
	}
	if (status == 403) {
		return OutcomeKind::kForbidden;
	}
	if (status == 422) {
		// Prefer the status; the text is a fallback for servers that send no status (docs/fly-api.md).
		if (outcome.fly_status == "name_taken" ||
		    (outcome.fly_status.empty() &&
		     outcome.fly_error.find("Name has already been taken") != std::string::npos)) {
			return OutcomeKind::kNameTaken;
		}
		return OutcomeKind::kPermanent;
	}
	if (status == 408 || status == 429 || (status >= 500 && status <= 599)) {
		return OutcomeKind::kTransient;
	}
	return OutcomeKind::kPermanent;
}

void
ClassifySuccess(const RawResponse &response, const char *name, Outcome &outcome) {
	const BodyShape shape = ExpectedBody(response.endpoint);
	outcome.kind = OutcomeKind::kSuccess;
	outcome.message = HttpPrefix(name, response.http_status);
	if (IsBlank(response.body)) {
		if (shape == BodyShape::kObject || shape == BodyShape::kArray) {
			outcome.kind = OutcomeKind::kMalformed;
			outcome.message += ": the body is empty, a JSON " +
			                   std::string(shape == BodyShape::kArray ? "array" : "object") + " was expected";
		}
		return;
	}
	if (shape == BodyShape::kNone) {
		// Nothing is expected (delete app 202); whatever came is ignored rather than judged.
		return;
	}
	// Fly labels every body it sends as JSON; anything else came from somewhere else (a proxy's page, a captive
	// portal), even when it happens to parse. No label at all is tolerated.
	if (!response.content_type.empty() && !IsJsonContentType(response.content_type)) {
		outcome.kind = OutcomeKind::kMalformed;
		outcome.message += ": the body is labelled " + OneLine(response.content_type, kMaxHeaderValueLength) +
		                   ", not JSON: " + Snippet(response.body);
		return;
	}
	JsonParseResult parsed = ParseJson(response.body);
	if (!parsed.ok()) {
		outcome.kind = OutcomeKind::kMalformed;
		outcome.message += ": the body is not valid JSON (" + OneLine(parsed.error, kMaxBodySnippetLength) +
		                   "): " + Snippet(response.body);
		return;
	}
	if ((shape == BodyShape::kObject && !parsed.value.IsObject()) ||
	    (shape == BodyShape::kArray && !parsed.value.IsArray())) {
		outcome.kind = OutcomeKind::kMalformed;
		outcome.message += std::string(": the body is not a JSON ") +
		                   (shape == BodyShape::kArray ? "array" : "object") + ": " + Snippet(response.body);
		return;
	}
	if (response.endpoint == Endpoint::kGetApp && !parsed.value.Get("organization").GetString("slug")) {
		// Ownership is read from the organization: an app without one cannot be judged ours or another's.
		outcome.kind = OutcomeKind::kMalformed;
		outcome.message += ": the app has no organization: " + Snippet(response.body);
		return;
	}
	if (response.endpoint == Endpoint::kStartMachine && parsed.value.GetString("status") == std::string("error")) {
		// fly-go reads status/message from a start answer, and flyctl treats "error" as a failed start.
		std::string text = parsed.value.GetString("message").value_or("");
		if (text.empty()) {
			text = parsed.value.GetString("error").value_or("");
		}
		outcome.kind = OutcomeKind::kTransient;
		outcome.app_failure = true;
		outcome.fly_status = "error";
		outcome.fly_error = OneLine(text, kMaxFlyErrorLength);
		outcome.message += ": Fly reported the start failed (status error)";
		if (!outcome.fly_error.empty()) {
			outcome.message += ": " + outcome.fly_error;
		}
		return;
	}
	outcome.body = std::move(parsed.value);
}

void
ClassifyError(const RawResponse &response, const char *name, Outcome &outcome) {
	const long status = response.http_status;
	outcome.message = HttpPrefix(name, status);
	if (status >= 300 && status <= 399) {
		outcome.kind = OutcomeKind::kPermanent;
		const std::string host = UrlHost(response.location);
		outcome.message += host.empty() ? ": unexpected redirect (not followed)"
		                                : ": unexpected redirect to " + OneLine(host, kMaxHeaderValueLength);
		return;
	}
	if (status < 100 || status > 599 || status < 200) {
		outcome.kind = OutcomeKind::kMalformed;
		outcome.message += ": unexpected HTTP status";
		return;
	}
	const bool json = ReadErrorBody(response.body, outcome);
	outcome.kind = ErrorKind(status, outcome);
	if (outcome.fly_status == "insufficient_capacity") {
		// Neither Fly's reference nor its spec fixes the HTTP status of this answer (412 has been seen): the
		// status field decides, and the caller must retry or choose another region (docs/fly-api.md).
		outcome.kind = OutcomeKind::kTransient;
		outcome.no_capacity = true;
	}
	if (!outcome.fly_error.empty()) {
		outcome.message += ": " + outcome.fly_error;
	} else if (!json && !IsBlank(response.body)) {
		outcome.message += ": non-JSON body: " + Snippet(response.body);
	}
	if (!outcome.fly_status.empty()) {
		outcome.message += " (status " + outcome.fly_status + ")";
	}
}

} // namespace

const char *
OutcomeKindName(OutcomeKind kind) {
	switch (kind) {
	case OutcomeKind::kSuccess:
		return "success";
	case OutcomeKind::kNotFound:
		return "not_found";
	case OutcomeKind::kNameTaken:
		return "name_taken";
	case OutcomeKind::kForbidden:
		return "forbidden";
	case OutcomeKind::kTransient:
		return "transient";
	case OutcomeKind::kPermanent:
		return "permanent";
	case OutcomeKind::kMalformed:
		return "malformed";
	}
	return "unknown";
}

const char *
NetworkErrorName(NetworkError error) {
	switch (error) {
	case NetworkError::kNone:
		return "none";
	case NetworkError::kDns:
		return "dns";
	case NetworkError::kConnect:
		return "connect";
	case NetworkError::kTimeout:
		return "timeout";
	case NetworkError::kReset:
		return "reset";
	case NetworkError::kTls:
		return "tls";
	case NetworkError::kTooLarge:
		return "too_large";
	case NetworkError::kCancelled:
		return "cancelled";
	case NetworkError::kConfig:
		return "config";
	case NetworkError::kOther:
		return "other";
	}
	return "unknown";
}

std::optional<double>
ParseRetryAfter(const std::string &value, std::time_t now) {
	const size_t begin = value.find_first_not_of(" \t");
	if (begin == std::string::npos) {
		return std::nullopt;
	}
	const std::string text = value.substr(begin, value.find_last_not_of(" \t") - begin + 1);
	if (text.find_first_not_of("0123456789") == std::string::npos) {
		if (text.size() > kMaxRetryAfterDigits) {
			return std::nullopt;
		}
		return static_cast<double>(std::strtol(text.c_str(), nullptr, 10));
	}
	// curl_getdate parses the three HTTP-date forms without depending on the process's locale.
	const time_t date = curl_getdate(text.c_str(), nullptr);
	if (date == -1) {
		return std::nullopt;
	}
	return date > now ? static_cast<double>(date - now) : 0.0;
}

std::string
UrlHost(const std::string &url) {
	const size_t scheme_end = url.find("://");
	if (scheme_end == std::string::npos) {
		return "";
	}
	const size_t start = scheme_end + 3;
	const size_t end = url.find_first_of("/?#", start);
	std::string authority = url.substr(start, end == std::string::npos ? std::string::npos : end - start);
	const size_t at = authority.rfind('@');
	if (at != std::string::npos) {
		authority = authority.substr(at + 1);
	}
	if (!authority.empty() && authority[0] == '[') {
		const size_t close = authority.find(']');
		return close == std::string::npos ? authority : authority.substr(0, close + 1);
	}
	return authority.substr(0, authority.find(':'));
}

bool
IsJsonContentType(const std::string &content_type) {
	const std::string_view type_and_subtype = std::string_view(content_type).substr(0, content_type.find(';'));
	const std::string media = ToLower(TrimView(type_and_subtype, " \t"));
	const std::string suffix = "+json";
	return media == "application/json" ||
	       (media.size() > suffix.size() && media.compare(media.size() - suffix.size(), suffix.size(), suffix) == 0);
}

void
RedactValues(Outcome &outcome, const std::vector<std::string> &values) {
	for (std::string *text : {&outcome.message, &outcome.fly_error, &outcome.fly_status, &outcome.request_id}) {
		*text = RedactStrings(*text, values);
	}
}

bool
FailsFly(Endpoint endpoint, const Outcome &outcome) {
	const bool wait_timed_out = endpoint == Endpoint::kWaitMachine && outcome.http_status == 408;
	return outcome.kind == OutcomeKind::kTransient && !wait_timed_out && !outcome.app_failure && !outcome.no_capacity;
}

Outcome
Classify(const RawResponse &raw, const std::string &token, std::time_t now) {
	// Scrubbed before anything is cut short, so that no piece of the token survives at the end of a snippet.
	RawResponse response = raw;
	if (!token.empty()) {
		for (std::string *text : {&response.body, &response.network_detail, &response.request_id, &response.location}) {
			*text = RedactToken(*text, token);
		}
	}
	Outcome outcome;
	const char *name = EndpointName(response.endpoint);
	outcome.http_status = response.http_status;
	outcome.request_id = OneLine(response.request_id, kMaxHeaderValueLength);
	outcome.network_error = response.network_error;
	if (!response.retry_after.empty()) {
		outcome.retry_after_seconds = ParseRetryAfter(response.retry_after, now);
	}

	if (response.network_error != NetworkError::kNone) {
		outcome.kind = NetworkKind(response.network_error);
		// An oversized answer still had a status line; everything else had no response at all.
		if (response.network_error != NetworkError::kTooLarge) {
			outcome.http_status = 0;
		}
		outcome.maybe_delivered = response.request_sent;
		outcome.message = std::string(name) + ": " + NetworkDescription(response.network_error);
		if (!response.network_detail.empty()) {
			outcome.message += ": " + OneLine(response.network_detail, kMaxFlyErrorLength);
		}
	} else if (response.http_status >= 200 && response.http_status <= 299) {
		ClassifySuccess(response, name, outcome);
	} else {
		ClassifyError(response, name, outcome);
	}

	if (outcome.retry_after_seconds) {
		outcome.message += "; retry after " + FormatSeconds(*outcome.retry_after_seconds);
	}
	if (!outcome.request_id.empty()) {
		outcome.message += "; fly-request-id " + outcome.request_id;
	}
	if (!token.empty()) {
		outcome.message = RedactToken(outcome.message, token);
		outcome.fly_error = RedactToken(outcome.fly_error, token);
		outcome.fly_status = RedactToken(outcome.fly_status, token);
		outcome.request_id = RedactToken(outcome.request_id, token);
	}
	return outcome;
}

} // namespace fly
} // namespace pgfly

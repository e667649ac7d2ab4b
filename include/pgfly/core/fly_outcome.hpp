// What a Fly API response (or the lack of one) means for the provisioner (Fly's statuses and error bodies:
// docs/fly-api.md).
// Classification is pure: the client collects a RawResponse and Classify turns it into an Outcome.
#pragma once

#include <ctime>
#include <optional>
#include <string>
#include <vector>

#include "pgfly/core/fly_requests.hpp"
#include "pgfly/core/json.hpp"

namespace pgfly {
namespace fly {

enum class OutcomeKind {
	kSuccess,
	// 404: the app or machine does not exist (on delete: already gone).
	kNotFound,
	// 422 with status "name_taken" (or, without a status, Fly's "Name has already been taken" text).
	kNameTaken,
	// 403: on get app, another organisation holds the name (docs/fly-api.md).
	kForbidden,
	// Worth retrying with backoff: 408, 429, 5xx, network errors.
	kTransient,
	// Retrying the same request cannot help: 401, other 4xx, redirects, TLS configuration problems.
	kPermanent,
	// A 2xx whose body is not what the endpoint returns (not JSON, labelled as something else than JSON, the
	// wrong shape), or a response beyond the size limit. Nothing can be learnt from it; asking again may help.
	kMalformed,
};

// "success", "not_found", "name_taken", "forbidden", "transient", "permanent", "malformed".
const char *OutcomeKindName(OutcomeKind kind);

// Why no HTTP response arrived.
enum class NetworkError {
	kNone,
	kDns,
	kConnect,
	kTimeout,
	// Connection reset or closed, nothing or a truncated answer received.
	kReset,
	// Certificate verification or TLS setup failed: a configuration problem.
	kTls,
	kTooLarge,
	kCancelled,
	// The request could not be formed or sent (bad URL, unsupported scheme, unusable token).
	kConfig,
	kOther,
};

const char *NetworkErrorName(NetworkError error);

// What the client observed; input to Classify.
struct RawResponse {
	Endpoint endpoint = Endpoint::kGetApp;
	// 0 when no response arrived (network_error says why).
	long http_status = 0;
	std::string body;
	// Response headers: fly-request-id, Retry-After, and the redirect target for 3xx.
	std::string request_id;
	std::string retry_after;
	std::string location;
	// The Content-Type header ("" when there was none).
	std::string content_type;
	NetworkError network_error = NetworkError::kNone;
	// libcurl's description of the failure.
	std::string network_detail;
	// Whether any part of the request was sent. With no response, false means Fly cannot have acted on it.
	bool request_sent = true;
};

struct Outcome {
	OutcomeKind kind = OutcomeKind::kTransient;
	// 0 for transport errors.
	long http_status = 0;
	// Fly's "message" or else "error" text (fly-go prefers "message"), at most 500 bytes.
	std::string fly_error;
	// Fly's "status", e.g. "name_taken", "insufficient_capacity".
	std::string fly_status;
	// The fly-request-id response header.
	std::string request_id;
	// From Retry-After (delay-seconds or an HTTP-date), never negative.
	std::optional<double> retry_after_seconds;
	// One line for logs and events, e.g. "create_machine: HTTP 503 (service unavailable): ...". Never contains
	// the token.
	std::string message;
	// The parsed body of a successful response (no value when it had none).
	Json body;
	NetworkError network_error = NetworkError::kNone;
	// False only when the request certainly never reached Fly (DNS or connect failure, nothing sent), so that
	// even a non-idempotent call (create machine) can be retried without looking for its effect first.
	bool maybe_delivered = true;
	// Fly answered properly about a failure of this app's own (a start reporting status "error", e.g. a bad
	// image): retried like a transient failure, but no sign that Fly is failing.
	bool app_failure = false;
	// Fly has no room for the machine here (status "insufficient_capacity", whatever the HTTP status): nothing was
	// created; retried, then another region is tried. Not a sign that Fly is failing either.
	bool no_capacity = false;
};

constexpr size_t kMaxFlyErrorLength = 500;
constexpr size_t kMaxBodySnippetLength = 200;

// Classifies a response. token (if given) is scrubbed from every text field; now is the reference time for an
// HTTP-date Retry-After.
Outcome Classify(const RawResponse &response, const std::string &token = "", std::time_t now = std::time(nullptr));

// Whether the answer counts as a failure of Fly for the circuit breaker: transient failures do, except a wait
// that timed out (408, an ordinary answer) and a failure of the app itself.
bool FailsFly(Endpoint endpoint, const Outcome &outcome);

// Retry-After as seconds from now: "120" or an HTTP-date ("Wed, 21 Oct 2015 07:28:00 GMT"); a date in the past
// gives 0. Nothing for anything else.
std::optional<double> ParseRetryAfter(const std::string &value, std::time_t now);

// The host of an absolute URL (without user info or port); "" when there is none.
std::string UrlHost(const std::string &url);

// Whether a Content-Type names JSON: application/json or any "+json" type, parameters and case aside.
bool IsJsonContentType(const std::string &content_type);

// Replaces every value (of 4 bytes or more) in the outcome's texts with "<redacted>", as Classify does for the
// token: for secrets an answer might echo.
void RedactValues(Outcome &outcome, const std::vector<std::string> &values);

} // namespace fly
} // namespace pgfly

#include "pgfly/core/fly_outcome.hpp"

#include <gtest/gtest.h>

#include "pgfly/core/json.hpp"

namespace pgfly {
namespace fly {
namespace {

// 2015-10-21 07:28:00 UTC
constexpr std::time_t kNow = 1445412480;

RawResponse
Response(Endpoint endpoint, long status, std::string body = "") {
	RawResponse response;
	response.endpoint = endpoint;
	response.http_status = status;
	response.body = std::move(body);
	return response;
}

Outcome
Classified(Endpoint endpoint, long status, std::string body = "") {
	return Classify(Response(endpoint, status, std::move(body)), "", kNow);
}

// ---- success ----

TEST(Classify, Created201WithBody) {
	const Outcome outcome =
		Classified(Endpoint::kCreateApp, 201, R"({"id": "z4k69dxd8r31p5mx", "created_at": 1708631799000})");
	EXPECT_EQ(outcome.kind, OutcomeKind::kSuccess);
	EXPECT_EQ(outcome.http_status, 201);
	EXPECT_EQ(outcome.body.GetString("id"), "z4k69dxd8r31p5mx");
	EXPECT_EQ(outcome.message, "create_app: HTTP 201 (created)");
}

TEST(Classify, Created201WithoutBody) {
	const Outcome outcome = Classified(Endpoint::kCreateApp, 201);
	EXPECT_EQ(outcome.kind, OutcomeKind::kSuccess);
	EXPECT_FALSE(outcome.body.HasValue());
}

TEST(Classify, Accepted202EmptyBody) {
	const Outcome outcome = Classified(Endpoint::kDeleteApp, 202);
	EXPECT_EQ(outcome.kind, OutcomeKind::kSuccess);
	EXPECT_EQ(outcome.message, "delete_app: HTTP 202 (accepted)");
}

TEST(Classify, Ok200WithObjectAndArray) {
	Outcome outcome = Classified(Endpoint::kGetApp, 200, R"({"name":"a","organization":{"slug":"acme"}})");
	EXPECT_EQ(outcome.kind, OutcomeKind::kSuccess);
	EXPECT_EQ(outcome.body.Get("organization").GetString("slug"), "acme");
	outcome = Classified(Endpoint::kListMachines, 200, R"([{"id":"m1","state":"started"}])");
	EXPECT_EQ(outcome.kind, OutcomeKind::kSuccess);
	EXPECT_EQ(outcome.body.Size(), 1u);
	outcome = Classified(Endpoint::kSetSecrets, 200, R"({"secrets":[],"version":4,"Version":4})");
	EXPECT_EQ(outcome.body.GetInteger("version"), 4);
	outcome = Classified(Endpoint::kStopMachine, 200, R"({"ok":true})");
	EXPECT_EQ(outcome.kind, OutcomeKind::kSuccess);
	outcome = Classified(Endpoint::kWaitMachine, 200, R"({"ok":true,"state":"started"})");
	EXPECT_EQ(outcome.body.GetString("state"), "started");
}

TEST(Classify, NoContent204) {
	const Outcome outcome = Classified(Endpoint::kDeleteMachine, 204);
	EXPECT_EQ(outcome.kind, OutcomeKind::kSuccess);
	EXPECT_EQ(outcome.message, "delete_machine: HTTP 204 (no content)");
}

TEST(Classify, MalformedJsonOn200) {
	Outcome outcome = Classified(Endpoint::kGetMachine, 200, "{\"id\": \"m1\",");
	EXPECT_EQ(outcome.kind, OutcomeKind::kMalformed);
	EXPECT_EQ(outcome.http_status, 200);
	EXPECT_NE(outcome.message.find("not valid JSON"), std::string::npos) << outcome.message;
	outcome = Classified(Endpoint::kGetApp, 200, "");
	EXPECT_EQ(outcome.kind, OutcomeKind::kMalformed);
	outcome = Classified(Endpoint::kListMachines, 200, R"({"machines":[]})");
	EXPECT_EQ(outcome.kind, OutcomeKind::kMalformed);
	outcome = Classified(Endpoint::kCreateMachine, 200, "[]");
	EXPECT_EQ(outcome.kind, OutcomeKind::kMalformed);
	outcome = Classified(Endpoint::kStartMachine, 200, "<html>ok</html>");
	EXPECT_EQ(outcome.kind, OutcomeKind::kMalformed);
	outcome = Classified(Endpoint::kGetApp, 200, std::string(100, '[') + std::string(100, ']'));
	EXPECT_EQ(outcome.kind, OutcomeKind::kMalformed);
	outcome = Classified(Endpoint::kGetApp, 200, "{\"name\":\"\xff\"}");
	EXPECT_EQ(outcome.kind, OutcomeKind::kMalformed);
}

// A duplicated id or state would otherwise be read last-wins: the answer is unusable, and asked again.
TEST(Classify, DuplicatedMembersMakeA2xxMalformed) {
	const Outcome outcome =
		Classified(Endpoint::kGetMachine, 200, R"({"id":"m1","state":"stopped","state":"started"})");
	EXPECT_EQ(outcome.kind, OutcomeKind::kMalformed);
	EXPECT_FALSE(outcome.body.HasValue());
	EXPECT_NE(outcome.message.find("not valid JSON"), std::string::npos) << outcome.message;
	EXPECT_EQ(Classified(Endpoint::kListMachines, 200, R"([{"id":"m1","id":"m2","state":"started"}])").kind,
	          OutcomeKind::kMalformed);
}

TEST(Classify, AppWithoutOrganizationIsMalformed) {
	for (const char *body :
	     {R"({"name":"a","status":"deployed"})", R"({"name":"a","organization":null})",
	      R"({"name":"a","organization":{"name":"Acme"}})", R"({"name":"a","organization":"acme"})"}) {
		const Outcome outcome = Classified(Endpoint::kGetApp, 200, body);
		EXPECT_EQ(outcome.kind, OutcomeKind::kMalformed) << body;
		EXPECT_NE(outcome.message.find("no organization"), std::string::npos) << outcome.message;
	}
}

TEST(Classify, StartAnsweredWithStatusErrorIsTransient) {
	Outcome outcome =
		Classified(Endpoint::kStartMachine, 200, R"({"status":"error","message":"failed to start machine"})");
	EXPECT_EQ(outcome.kind, OutcomeKind::kTransient);
	EXPECT_EQ(outcome.http_status, 200);
	EXPECT_EQ(outcome.fly_status, "error");
	EXPECT_EQ(outcome.fly_error, "failed to start machine");
	EXPECT_EQ(outcome.message,
	          "start_machine: HTTP 200 (ok): Fly reported the start failed (status error): failed to start machine");
	outcome = Classified(Endpoint::kStartMachine, 200, R"({"status":"error"})");
	EXPECT_EQ(outcome.kind, OutcomeKind::kTransient);
	outcome =
		Classified(Endpoint::kStartMachine, 200, R"({"previous_state":"stopped","migrated":false,"new_host":""})");
	EXPECT_EQ(outcome.kind, OutcomeKind::kSuccess);
	outcome = Classified(Endpoint::kStartMachine, 200);
	EXPECT_EQ(outcome.kind, OutcomeKind::kSuccess);
}

// A machine that fails to start (a bad image) is this app's problem: retried, but a few in a row must not open
// the breaker for every user.
TEST(FailsFly, AStartReportingErrorIsNotAFailureOfFly) {
	EXPECT_FALSE(FailsFly(Endpoint::kStartMachine,
	                      Classified(Endpoint::kStartMachine, 200, R"({"status":"error","message":"bad image"})")));
	EXPECT_TRUE(FailsFly(Endpoint::kStartMachine, Classified(Endpoint::kStartMachine, 503, "{}")));
	EXPECT_FALSE(FailsFly(Endpoint::kWaitMachine, Classified(Endpoint::kWaitMachine, 408, "{}")));
	EXPECT_TRUE(FailsFly(Endpoint::kGetMachine, Classified(Endpoint::kGetMachine, 408, "{}")));
	EXPECT_FALSE(FailsFly(Endpoint::kStartMachine, Classified(Endpoint::kStartMachine, 200, "{}")));
}

TEST(Classify, SuccessBodyLabelledAsSomethingElseIsMalformed) {
	RawResponse response = Response(Endpoint::kGetApp, 200, R"({"name":"a","organization":{"slug":"o"}})");
	response.content_type = "text/html; charset=utf-8";
	Outcome outcome = Classify(response, "", kNow);
	EXPECT_EQ(outcome.kind, OutcomeKind::kMalformed);
	EXPECT_EQ(outcome.message, R"(get_app: HTTP 200 (ok): the body is labelled text/html; charset=utf-8, not JSON: )"
	                           R"({"name":"a","organization":{"slug":"o"}})");
	EXPECT_FALSE(outcome.body.HasValue());
	for (const char *json : {"application/json", "Application/JSON; charset=utf-8", " application/problem+json ", ""}) {
		response.content_type = json;
		EXPECT_EQ(Classify(response, "", kNow).kind, OutcomeKind::kSuccess) << json;
	}
	// Nobody reads a body that is not expected, whatever its label.
	RawResponse deleted = Response(Endpoint::kDeleteApp, 202, "<html>gone</html>");
	deleted.content_type = "text/html";
	EXPECT_EQ(Classify(deleted, "", kNow).kind, OutcomeKind::kSuccess);
}

TEST(IsJsonContentType, Forms) {
	EXPECT_TRUE(IsJsonContentType("application/json"));
	EXPECT_TRUE(IsJsonContentType("application/json;charset=UTF-8"));
	EXPECT_TRUE(IsJsonContentType("application/vnd.api+json"));
	EXPECT_FALSE(IsJsonContentType("text/json-ish"));
	EXPECT_FALSE(IsJsonContentType("text/plain"));
	EXPECT_FALSE(IsJsonContentType("application/jsonp"));
	EXPECT_FALSE(IsJsonContentType("+json"));
	EXPECT_FALSE(IsJsonContentType(""));
}

TEST(RedactValues, ScrubsEveryTextOfAnOutcome) {
	Outcome outcome = Classified(Endpoint::kSetSecrets, 400,
	                             R"({"error":"value gemini-secret-4711 is invalid","status":"eyJhbGciOi.jwt"})");
	outcome.request_id = "req-gemini-secret-4711";
	RedactValues(outcome, {"gemini-secret-4711", "eyJhbGciOi.jwt", "abc"});
	for (const std::string &text : {outcome.message, outcome.fly_error, outcome.fly_status, outcome.request_id}) {
		EXPECT_EQ(text.find("secret-4711"), std::string::npos) << text;
		EXPECT_EQ(text.find("eyJhbGciOi"), std::string::npos) << text;
	}
	EXPECT_EQ(outcome.fly_error, "value <redacted> is invalid");
	// Values shorter than 4 bytes would blank out ordinary words: they are left alone.
	EXPECT_NE(outcome.message.find("HTTP 400"), std::string::npos);
}

// ---- client errors ----

TEST(Classify, BadRequest400IsPermanent) {
	const Outcome outcome = Classified(Endpoint::kCreateMachine, 400, R"({"error":"invalid config.guest.cpus"})");
	EXPECT_EQ(outcome.kind, OutcomeKind::kPermanent);
	EXPECT_EQ(outcome.fly_error, "invalid config.guest.cpus");
	EXPECT_EQ(outcome.message, "create_machine: HTTP 400 (bad request): invalid config.guest.cpus");
}

TEST(Classify, Unauthorized401IsPermanent) {
	const Outcome outcome = Classified(Endpoint::kGetApp, 401, R"({"error":"Authenticate: token validation error"})");
	EXPECT_EQ(outcome.kind, OutcomeKind::kPermanent);
	EXPECT_EQ(outcome.fly_error, "Authenticate: token validation error");
}

TEST(Classify, Forbidden403) {
	const Outcome outcome = Classified(Endpoint::kGetApp, 403, R"({"error":"unauthorized"})");
	EXPECT_EQ(outcome.kind, OutcomeKind::kForbidden);
	EXPECT_EQ(outcome.fly_error, "unauthorized");
	EXPECT_EQ(outcome.message, "get_app: HTTP 403 (forbidden): unauthorized");
}

TEST(Classify, NotFound404) {
	const Outcome outcome = Classified(Endpoint::kDeleteApp, 404, R"({"error": "Could not find App \"my-app-name\""})");
	EXPECT_EQ(outcome.kind, OutcomeKind::kNotFound);
	EXPECT_EQ(outcome.fly_error, "Could not find App \"my-app-name\"");
	// Go's router answers unknown paths in plain text; still a 404.
	EXPECT_EQ(Classified(Endpoint::kGetApp, 404, "404 page not found\n").kind, OutcomeKind::kNotFound);
}

TEST(Classify, RequestTimeout408IsTransient) {
	EXPECT_EQ(Classified(Endpoint::kWaitMachine, 408, R"({"error":"deadline exceeded"})").kind,
	          OutcomeKind::kTransient);
	EXPECT_EQ(Classified(Endpoint::kCreateMachine, 408).kind, OutcomeKind::kTransient);
}

TEST(Classify, PreconditionFailed412IsPermanent) {
	const Outcome outcome = Classified(Endpoint::kUpdateMachine, 412, R"({"error":"machine_version mismatch"})");
	EXPECT_EQ(outcome.kind, OutcomeKind::kPermanent);
	EXPECT_EQ(outcome.fly_error, "machine_version mismatch");
	EXPECT_EQ(Classified(Endpoint::kUpdateMachine, 409, R"({"error":"lease currently held"})").kind,
	          OutcomeKind::kPermanent);
}

// Fly's reference gives no HTTP status for a lack of capacity: the body's status decides, and nothing was created.
TEST(Classify, InsufficientCapacityIsTransientWhateverTheStatus) {
	const std::string body =
		R"({"error":"insufficient resources available to fulfill request","status":"insufficient_capacity"})";
	for (long status : {412L, 409L, 422L, 503L}) {
		const Outcome outcome = Classified(Endpoint::kCreateMachine, status, body);
		EXPECT_EQ(outcome.kind, OutcomeKind::kTransient) << status;
		EXPECT_TRUE(outcome.no_capacity) << status;
		EXPECT_EQ(outcome.fly_status, "insufficient_capacity");
		EXPECT_FALSE(FailsFly(Endpoint::kCreateMachine, outcome)) << status;
	}
	const Outcome other = Classified(Endpoint::kCreateMachine, 412, R"({"error":"x","status":"unknown"})");
	EXPECT_EQ(other.kind, OutcomeKind::kPermanent);
	EXPECT_FALSE(other.no_capacity);
	EXPECT_FALSE(Classified(Endpoint::kCreateMachine, 503, "{}").no_capacity);
}

TEST(Classify, NameTaken422WithStatus) {
	const Outcome outcome =
		Classified(Endpoint::kCreateApp, 422,
	               R"({"error":"Validation failed: Name has already been taken","status":"name_taken"})");
	EXPECT_EQ(outcome.kind, OutcomeKind::kNameTaken);
	EXPECT_EQ(outcome.fly_status, "name_taken");
	EXPECT_EQ(outcome.message, "create_app: HTTP 422 (unprocessable entity): Validation failed: Name has already been "
	                           "taken (status name_taken)");
	// The race that slips past validation hits a constraint with a generic text, but keeps the status.
	EXPECT_EQ(
		Classified(Endpoint::kCreateApp, 422, R"({"error":"uniqueness constraint violated","status":"name_taken"})")
			.kind,
		OutcomeKind::kNameTaken);
}

TEST(Classify, ValidationError422WithoutStatusIsPermanent) {
	const Outcome outcome =
		Classified(Endpoint::kCreateApp, 422,
	               R"({"error":"Validation failed: Name under 63 chars using numbers, lowercase letters and dashes"})");
	EXPECT_EQ(outcome.kind, OutcomeKind::kPermanent);
	EXPECT_EQ(outcome.fly_status, "");
}

TEST(Classify, LegacyNameTakenText422) {
	EXPECT_EQ(
		Classified(Endpoint::kCreateApp, 422, R"({"error":"Validation failed: Name has already been taken"})").kind,
		OutcomeKind::kNameTaken);
	// The text is only a fallback: a different status wins.
	EXPECT_EQ(Classified(Endpoint::kCreateApp, 422,
	                     R"({"error":"Validation failed: Name has already been taken","status":"unknown"})")
	              .kind,
	          OutcomeKind::kPermanent);
}

TEST(Classify, MessageFieldIsPreferredOverError) {
	const Outcome outcome =
		Classified(Endpoint::kStartMachine, 400, R"({"error":"generic","message":"specific reason"})");
	EXPECT_EQ(outcome.fly_error, "specific reason");
}

TEST(Classify, TooManyRequests429WithoutRetryAfter) {
	const Outcome outcome = Classified(Endpoint::kCreateMachine, 429, R"({"error":"rate limit exceeded"})");
	EXPECT_EQ(outcome.kind, OutcomeKind::kTransient);
	EXPECT_FALSE(outcome.retry_after_seconds.has_value());
}

TEST(Classify, TooManyRequests429WithRetryAfterSeconds) {
	RawResponse response = Response(Endpoint::kCreateMachine, 429, R"({"error":"rate limit exceeded"})");
	response.retry_after = "7";
	response.request_id = "01J9ABCDEF";
	const Outcome outcome = Classify(response, "", kNow);
	EXPECT_EQ(outcome.kind, OutcomeKind::kTransient);
	ASSERT_TRUE(outcome.retry_after_seconds.has_value());
	EXPECT_EQ(*outcome.retry_after_seconds, 7.0);
	EXPECT_EQ(outcome.request_id, "01J9ABCDEF");
	EXPECT_EQ(outcome.message, "create_machine: HTTP 429 (too many requests): rate limit exceeded; retry after 7 s; "
	                           "fly-request-id 01J9ABCDEF");
}

TEST(Classify, TooManyRequests429WithRetryAfterDate) {
	RawResponse response = Response(Endpoint::kCreateMachine, 429);
	response.retry_after = "Wed, 21 Oct 2015 07:28:30 GMT";
	const Outcome outcome = Classify(response, "", kNow);
	ASSERT_TRUE(outcome.retry_after_seconds.has_value());
	EXPECT_EQ(*outcome.retry_after_seconds, 30.0);
}

TEST(ParseRetryAfter, Forms) {
	EXPECT_EQ(ParseRetryAfter("0", kNow), 0.0);
	EXPECT_EQ(ParseRetryAfter(" 120 ", kNow), 120.0);
	EXPECT_EQ(ParseRetryAfter("Wed, 21 Oct 2015 07:29:00 GMT", kNow), 60.0);
	EXPECT_EQ(ParseRetryAfter("Wednesday, 21-Oct-15 07:29:00 GMT", kNow), 60.0);
	EXPECT_EQ(ParseRetryAfter("Wed Oct 21 07:29:00 2015", kNow), 60.0);
	EXPECT_EQ(ParseRetryAfter("Tue, 20 Oct 2015 07:28:00 GMT", kNow), 0.0) << "a past date means now";
	EXPECT_EQ(ParseRetryAfter("-5", kNow), std::nullopt);
	EXPECT_EQ(ParseRetryAfter("1.5", kNow), std::nullopt);
	EXPECT_EQ(ParseRetryAfter("soon", kNow), std::nullopt);
	EXPECT_EQ(ParseRetryAfter("", kNow), std::nullopt);
	EXPECT_EQ(ParseRetryAfter("99999999999999999999", kNow), std::nullopt);
}

// ---- server errors ----

TEST(Classify, InternalServerError500HtmlBody) {
	const std::string html = "<html>\n<head><title>500 Internal Server Error</title></head>\n<body>\x01\x02"
	                         "<center><h1>500 Internal Server Error</h1></center>" +
	                         std::string(500, 'x') + "</body></html>";
	const Outcome outcome = Classified(Endpoint::kCreateMachine, 500, html);
	EXPECT_EQ(outcome.kind, OutcomeKind::kTransient);
	EXPECT_EQ(outcome.fly_error, "");
	EXPECT_NE(outcome.message.find("create_machine: HTTP 500 (internal server error): non-JSON body: <html> <head>"
	                               "<title>500 Internal Server Error</title>"),
	          std::string::npos)
		<< outcome.message;
	EXPECT_EQ(outcome.message.find('\n'), std::string::npos);
	EXPECT_EQ(outcome.message.find('\x01'), std::string::npos);
	EXPECT_LT(outcome.message.size(), 300u);
}

TEST(Classify, GatewayErrors502503504AreTransient) {
	EXPECT_EQ(Classified(Endpoint::kGetApp, 502, "Bad Gateway").kind, OutcomeKind::kTransient);
	RawResponse response =
		Response(Endpoint::kCreateMachine, 503, R"({"error":"no capacity in sjc","status":"insufficient_capacity"})");
	response.retry_after = "3";
	const Outcome outcome = Classify(response, "", kNow);
	EXPECT_EQ(outcome.kind, OutcomeKind::kTransient);
	EXPECT_EQ(outcome.fly_status, "insufficient_capacity");
	EXPECT_EQ(outcome.retry_after_seconds, 3.0);
	EXPECT_EQ(outcome.message.rfind("create_machine: HTTP 503 (service unavailable): no capacity in sjc", 0), 0u);
	EXPECT_EQ(Classified(Endpoint::kGetMachine, 504).kind, OutcomeKind::kTransient);
	EXPECT_EQ(Classified(Endpoint::kGetMachine, 504).message, "get_machine: HTTP 504 (gateway timeout)");
}

TEST(Classify, LongErrorTextIsTruncated) {
	const Outcome outcome = Classified(Endpoint::kCreateMachine, 400, "{\"error\":\"" + std::string(2000, 'e') + "\"}");
	EXPECT_EQ(outcome.fly_error.size(), kMaxFlyErrorLength);
	// Never in the middle of a UTF-8 sequence.
	std::string accented;
	for (int i = 0; i < 400; i++) {
		accented += "\xc3\xa9";
	}
	const Outcome utf8 = Classified(Endpoint::kCreateMachine, 400, "{\"error\":\"" + accented + "\"}");
	EXPECT_LE(utf8.fly_error.size(), kMaxFlyErrorLength);
	EXPECT_TRUE(IsValidUtf8(utf8.fly_error));
}

TEST(Classify, RedirectIsPermanent) {
	RawResponse response = Response(Endpoint::kGetApp, 302);
	response.location = "https://user:pw@evil.example:8443/steal?x=1";
	const Outcome outcome = Classify(response, "", kNow);
	EXPECT_EQ(outcome.kind, OutcomeKind::kPermanent);
	EXPECT_EQ(outcome.message, "get_app: HTTP 302 (found): unexpected redirect to evil.example");
	EXPECT_EQ(Classified(Endpoint::kGetApp, 301).kind, OutcomeKind::kPermanent);
}

TEST(Classify, OddStatusesAreMalformed) {
	EXPECT_EQ(Classified(Endpoint::kGetApp, 101).kind, OutcomeKind::kMalformed);
	EXPECT_EQ(Classified(Endpoint::kGetApp, 999).kind, OutcomeKind::kMalformed);
}

// ---- network ----

TEST(Classify, NetworkErrors) {
	struct Case {
		NetworkError error;
		OutcomeKind kind;
		bool sent;
	};
	const Case cases[] = {
		{NetworkError::kDns, OutcomeKind::kTransient, false},
		{NetworkError::kConnect, OutcomeKind::kTransient, false},
		{NetworkError::kTimeout, OutcomeKind::kTransient, true},
		{NetworkError::kReset, OutcomeKind::kTransient, true},
		{NetworkError::kOther, OutcomeKind::kTransient, true},
		{NetworkError::kCancelled, OutcomeKind::kTransient, true},
		{NetworkError::kTls, OutcomeKind::kPermanent, false},
		{NetworkError::kConfig, OutcomeKind::kPermanent, false},
	};
	for (const Case &c : cases) {
		RawResponse response;
		response.endpoint = Endpoint::kCreateMachine;
		response.network_error = c.error;
		response.network_detail = "detail text";
		response.request_sent = c.sent;
		const Outcome outcome = Classify(response, "", kNow);
		EXPECT_EQ(outcome.kind, c.kind) << NetworkErrorName(c.error);
		EXPECT_EQ(outcome.http_status, 0);
		EXPECT_EQ(outcome.network_error, c.error);
		EXPECT_EQ(outcome.maybe_delivered, c.sent);
		EXPECT_EQ(outcome.message.rfind("create_machine: ", 0), 0u);
		EXPECT_NE(outcome.message.find("detail text"), std::string::npos);
	}
	RawResponse tls;
	tls.network_error = NetworkError::kTls;
	EXPECT_NE(Classify(tls).message.find("configuration problem"), std::string::npos);
	RawResponse large = Response(Endpoint::kListMachines, 200);
	large.network_error = NetworkError::kTooLarge;
	large.network_detail = "response larger than 1048576 bytes";
	const Outcome outcome = Classify(large);
	EXPECT_EQ(outcome.kind, OutcomeKind::kMalformed);
	EXPECT_EQ(outcome.http_status, 200);
	EXPECT_NE(outcome.message.find("response larger than 1048576 bytes"), std::string::npos);
}

TEST(Classify, TokenIsScrubbedFromEveryText) {
	const std::string token = "FlyV1 fm2_verysecretmacaroon1,fm2_verysecretmacaroon2";
	RawResponse response = Response(Endpoint::kGetApp, 401,
	                                R"({"error":"bad token FlyV1 fm2_verysecretmacaroon1,fm2_verysecretmacaroon2",)"
	                                R"("status":"fm2_verysecretmacaroon2"})");
	response.request_id = "fm2_verysecretmacaroon1";
	const Outcome outcome = Classify(response, token, kNow);
	for (const std::string &text : {outcome.message, outcome.fly_error, outcome.fly_status, outcome.request_id}) {
		EXPECT_EQ(text.find("verysecret"), std::string::npos) << text;
	}
	EXPECT_NE(outcome.message.find("<redacted>"), std::string::npos);
	RawResponse network;
	network.network_error = NetworkError::kOther;
	network.network_detail = "echo fm2_verysecretmacaroon2";
	EXPECT_EQ(Classify(network, token).message.find("verysecret"), std::string::npos);
}

TEST(Classify, NoPieceOfTheTokenSurvivesASnippetCut) {
	const std::string token = "FlyV1 fm2_verysecretmacaroon1";
	// The snippet of a non-JSON body stops after 200 characters, in the middle of the echoed token.
	RawResponse response = Response(Endpoint::kGetApp, 502, std::string(185, 'a') + " " + token + " tail");
	const Outcome outcome = Classify(response, token, kNow);
	EXPECT_EQ(outcome.message.find("verysec"), std::string::npos) << outcome.message;
	EXPECT_EQ(outcome.message.find("fm2_"), std::string::npos) << outcome.message;
}

TEST(UrlHost, Forms) {
	EXPECT_EQ(UrlHost("https://api.machines.dev/v1/apps"), "api.machines.dev");
	EXPECT_EQ(UrlHost("http://u:p@host:80?x"), "host");
	EXPECT_EQ(UrlHost("http://[::1]:8080/"), "[::1]");
	EXPECT_EQ(UrlHost("/relative/path"), "");
}

TEST(OutcomeKindName, Names) {
	EXPECT_STREQ(OutcomeKindName(OutcomeKind::kSuccess), "success");
	EXPECT_STREQ(OutcomeKindName(OutcomeKind::kNotFound), "not_found");
	EXPECT_STREQ(OutcomeKindName(OutcomeKind::kNameTaken), "name_taken");
	EXPECT_STREQ(OutcomeKindName(OutcomeKind::kForbidden), "forbidden");
	EXPECT_STREQ(OutcomeKindName(OutcomeKind::kTransient), "transient");
	EXPECT_STREQ(OutcomeKindName(OutcomeKind::kPermanent), "permanent");
	EXPECT_STREQ(OutcomeKindName(OutcomeKind::kMalformed), "malformed");
}

} // namespace
} // namespace fly
} // namespace pgfly

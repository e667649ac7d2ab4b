// The Fly client against a loopback HTTP server (test_http_server.hpp). Only 127.0.0.1 is ever contacted.
#include "pgfly/core/fly_client.hpp"

#include <gtest/gtest.h>
#include <poll.h>

#include <chrono>
#include <cstdlib>
#include <set>

#include "pgfly/core/c_callback.hpp"
#include "test_http_server.hpp"

namespace pgfly {
namespace fly {
namespace {

using test::ReceivedRequest;
using test::Reply;
using test::TestHttpServer;
using Clock = std::chrono::steady_clock;

const char *const kAppBody = R"({"name":"app-1","organization":{"slug":"personal"}})";
const std::string kToken = "FlyV1 fm2_unitTestSecretMacaroonAAAA,fm2_unitTestSecretMacaroonBBBB";

double
MsSince(Clock::time_point start) {
	return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

void
ExpectNoToken(const Outcome &outcome) {
	for (const std::string &text : {outcome.message, outcome.fly_error, outcome.fly_status, outcome.request_id}) {
		EXPECT_EQ(text.find("unitTestSecret"), std::string::npos) << text;
	}
}

MachineSpec
NginxSpec() {
	MachineSpec spec;
	spec.image = "nginx:1";
	return spec;
}

class FlyClientTest : public ::testing::Test {
protected:
	static void
	SetUpTestSuite() {
		// A proxy from the environment must not receive loopback test traffic.
		setenv("no_proxy", "*", 1);
		setenv("NO_PROXY", "*", 1);
	}

	static ClientConfig
	Config(const TestHttpServer &server) {
		ClientConfig config;
		config.base_url = server.BaseUrl();
		config.token = kToken;
		config.connect_timeout_ms = 2000;
		config.request_timeout_ms = 5000;
		return config;
	}

	// Drives the client the way the background worker does: wait on EventFd with NextTimeoutMs, then Drive.
	static std::vector<Answer>
	DriveUntil(Client &client, size_t count, long limit_ms = 10000) {
		std::vector<Answer> completions;
		const auto start = Clock::now();
		while (completions.size() < count && MsSince(start) < limit_ms) {
			long timeout = client.NextTimeoutMs();
			if (timeout < 0 || timeout > 100) {
				timeout = 100;
			}
			pollfd descriptor = {client.EventFd(), POLLIN, 0};
			poll(&descriptor, 1, static_cast<int>(timeout));
			client.Drive();
			for (auto &completion : client.TakeAnswers()) {
				completions.push_back(std::move(completion));
			}
		}
		return completions;
	}
};

TEST_F(FlyClientTest, SendsMethodPathHeadersAndBody) {
	TestHttpServer server([](const ReceivedRequest &) {
		Reply reply = Reply::Json(201, R"({"id":"z4k69dxd8r31p5mx","created_at":1708631799000})");
		reply.headers.emplace_back("Fly-Request-Id", "01JREQ");
		return reply;
	});
	Client client(Config(server));
	const Request request = CreateAppRequest("vyx-user-1a2b3c4d", "acme");
	const Outcome outcome = client.RunSync(request);
	EXPECT_EQ(outcome.kind, OutcomeKind::kSuccess) << outcome.message;
	EXPECT_EQ(outcome.http_status, 201);
	EXPECT_EQ(outcome.body.GetString("id"), "z4k69dxd8r31p5mx");
	EXPECT_EQ(outcome.request_id, "01JREQ");
	ASSERT_EQ(server.RequestCount(), 1u);
	const ReceivedRequest received = server.Requests()[0];
	EXPECT_EQ(received.method, "POST");
	EXPECT_EQ(received.target, "/v1/apps");
	EXPECT_EQ(received.body, *request.body_json);
	EXPECT_EQ(received.Header("content-type"), "application/json");
	EXPECT_EQ(received.Header("accept"), "application/json");
	EXPECT_EQ(received.Header("authorization"), "FlyV1 fm2_unitTestSecretMacaroonAAAA,fm2_unitTestSecretMacaroonBBBB");
	EXPECT_EQ(received.Header("user-agent"), std::string("pg_fly/") + PGFLY_VERSION);
	EXPECT_FALSE(received.HasHeader("expect"));
}

TEST_F(FlyClientTest, BodylessPostDeleteAndEncodedQuery) {
	TestHttpServer server([](const ReceivedRequest &request) {
		if (request.method == "GET") {
			return Reply::Json(200, "[]");
		}
		return Reply::Json(200, R"({"ok":true})");
	});
	Client client(Config(server));
	EXPECT_EQ(client.RunSync(StartMachineRequest("app-1", "m1")).kind, OutcomeKind::kSuccess);
	EXPECT_EQ(client.RunSync(DeleteMachineRequest("app-1", "m1", true)).kind, OutcomeKind::kSuccess);
	EXPECT_EQ(client.RunSync(ListMachinesRequest("app-1", {{"pg_fly_op", "a b&c=d/é"}})).kind, OutcomeKind::kSuccess);
	const auto requests = server.Requests();
	ASSERT_EQ(requests.size(), 3u);
	EXPECT_EQ(requests[0].method, "POST");
	EXPECT_EQ(requests[0].target, "/v1/apps/app-1/machines/m1/start");
	EXPECT_EQ(requests[0].Header("content-length"), "0");
	EXPECT_FALSE(requests[0].HasHeader("content-type"));
	EXPECT_EQ(requests[1].method, "DELETE");
	EXPECT_EQ(requests[1].target, "/v1/apps/app-1/machines/m1?force=true");
	EXPECT_EQ(requests[1].body, "");
	EXPECT_EQ(requests[2].method, "GET");
	EXPECT_EQ(requests[2].target, "/v1/apps/app-1/machines?metadata.pg_fly_op=a%20b%26c%3Dd%2F%C3%A9");
}

TEST_F(FlyClientTest, ManyConcurrentRequestsShareFewConnections) {
	constexpr int kRequests = 50;
	constexpr int kDelayMs = 100;
	TestHttpServer server([](const ReceivedRequest &) {
		Reply reply = Reply::Json(200, R"({"name":"app","status":"deployed","organization":{"slug":"o"}})");
		reply.delay_ms = kDelayMs;
		return reply;
	});
	ClientConfig config = Config(server);
	config.max_host_connections = 16;
	Client client(config);
	const auto start = Clock::now();
	std::set<RequestId> ids;
	for (int i = 0; i < kRequests; i++) {
		ids.insert(client.Submit(GetAppRequest("app-" + std::to_string(i))));
	}
	EXPECT_EQ(ids.size(), static_cast<size_t>(kRequests));
	EXPECT_EQ(client.InFlight(), static_cast<size_t>(kRequests));
	const auto completions = DriveUntil(client, kRequests);
	const double elapsed = MsSince(start);
	ASSERT_EQ(completions.size(), static_cast<size_t>(kRequests));
	for (const auto &completion : completions) {
		EXPECT_EQ(completion.outcome.kind, OutcomeKind::kSuccess) << completion.outcome.message;
		EXPECT_EQ(completion.endpoint, Endpoint::kGetApp);
		EXPECT_GE(completion.elapsed_ms, kDelayMs - 5);
		EXPECT_EQ(ids.erase(completion.id), 1u);
	}
	EXPECT_EQ(client.InFlight(), 0u);
	// Serial would take 50 x 100 ms; 16 connections need about four rounds.
	EXPECT_LT(elapsed, 2000.0);
	EXPECT_LE(server.AcceptedConnections(), 16);
	EXPECT_GT(server.AcceptedConnections(), 1);
}

TEST_F(FlyClientTest, SequentialRequestsReuseOneConnection) {
	TestHttpServer server([](const ReceivedRequest &) { return Reply::Json(200, R"({"id":"m1"})"); });
	Client client(Config(server));
	for (int i = 0; i < 10; i++) {
		EXPECT_EQ(client.RunSync(GetMachineRequest("app-1", "m1")).kind, OutcomeKind::kSuccess);
	}
	EXPECT_EQ(server.RequestCount(), 10u);
	EXPECT_EQ(server.AcceptedConnections(), 1);
}

// Each user app is a host of its own: its connections close after use instead of filling Fly's cache.
TEST_F(FlyClientTest, AppHealthConnectionsAreNotKept) {
	TestHttpServer server([](const ReceivedRequest &) { return Reply::Json(200, R"({"status":"ok"})"); });
	Client client(Config(server));
	for (int i = 0; i < 3; i++) {
		EXPECT_EQ(client.RunSync(AppHealthRequest(server.BaseUrl() + "/health")).kind, OutcomeKind::kSuccess);
	}
	EXPECT_EQ(server.AcceptedConnections(), 3);
}

TEST_F(FlyClientTest, LongRequestDoesNotHoldBackOthers) {
	TestHttpServer server([](const ReceivedRequest &request) {
		Reply reply = Reply::Json(200, R"({"ok":true})");
		if (request.target.find("/wait") != std::string::npos) {
			reply.action = Reply::Action::kHang;
		}
		return reply;
	});
	Client client(Config(server));
	// Submitted first on a fresh client: the long wait must not keep the next request off the wire (as
	// CURLOPT_PIPEWAIT does on plain http until the first response arrives).
	client.Submit(WaitMachineRequest("app-1", "m1", "started", 60));
	const auto start = Clock::now();
	EXPECT_EQ(client.RunSync(GetMachineRequest("app-1", "m1")).kind, OutcomeKind::kSuccess);
	EXPECT_LT(MsSince(start), 1000.0);
	EXPECT_EQ(client.InFlight(), 1u);
	client.CancelAll();
}

TEST_F(FlyClientTest, UnansweredRequestTimesOutAsTransient) {
	TestHttpServer server([](const ReceivedRequest &) {
		Reply reply;
		reply.action = Reply::Action::kHang;
		return reply;
	});
	ClientConfig config = Config(server);
	config.request_timeout_ms = 300;
	Client client(config);
	const auto start = Clock::now();
	const Outcome outcome = client.RunSync(CreateMachineRequest("app-1", NginxSpec()));
	const double elapsed = MsSince(start);
	EXPECT_EQ(outcome.kind, OutcomeKind::kTransient);
	EXPECT_EQ(outcome.network_error, NetworkError::kTimeout);
	EXPECT_EQ(outcome.http_status, 0);
	EXPECT_TRUE(outcome.maybe_delivered) << "the request was sent, so create machine may have happened";
	EXPECT_GE(elapsed, 250.0);
	EXPECT_LT(elapsed, 2000.0);
	ExpectNoToken(outcome);
}

TEST_F(FlyClientTest, WaitRequestsGetTheirOwnTimeout) {
	TestHttpServer server([](const ReceivedRequest &) {
		Reply reply = Reply::Json(200, R"({"ok":true,"state":"started"})");
		reply.delay_ms = 700;
		return reply;
	});
	ClientConfig config = Config(server);
	config.request_timeout_ms = 200;
	Client client(config);
	// timeout=1 gives the wait 1 s + 5 s, well beyond the 200 ms configured for other requests.
	const Outcome outcome = client.RunSync(WaitMachineRequest("app-1", "m1", "started", 1));
	EXPECT_EQ(outcome.kind, OutcomeKind::kSuccess) << outcome.message;
	EXPECT_EQ(client.RunSync(GetMachineRequest("app-1", "m1")).network_error, NetworkError::kTimeout);
}

TEST_F(FlyClientTest, OversizedResponsesAreAborted) {
	TestHttpServer server([](const ReceivedRequest &request) {
		Reply reply = Reply::Json(200, "[" + std::string(300000, ' ') + "]");
		reply.chunked = request.target.find("chunked") != std::string::npos;
		return reply;
	});
	ClientConfig config = Config(server);
	config.max_response_bytes = 64 * 1024;
	Client client(config);
	// With a Content-Length, curl refuses before reading the body; chunked, the write callback stops it.
	for (const char *app : {"declared", "chunked"}) {
		const Outcome outcome = client.RunSync(ListMachinesRequest(app));
		EXPECT_EQ(outcome.kind, OutcomeKind::kMalformed) << app;
		EXPECT_EQ(outcome.network_error, NetworkError::kTooLarge) << app;
		EXPECT_NE(outcome.message.find("response larger than 65536 bytes"), std::string::npos) << outcome.message;
	}
}

TEST_F(FlyClientTest, ConnectionResetAndCloseAreTransient) {
	TestHttpServer server([](const ReceivedRequest &request) {
		Reply reply;
		reply.action =
			request.target.find("reset") != std::string::npos ? Reply::Action::kReset : Reply::Action::kClose;
		return reply;
	});
	for (const char *app : {"reset", "close"}) {
		Client client(Config(server));
		const Outcome outcome = client.RunSync(GetAppRequest(app));
		EXPECT_EQ(outcome.kind, OutcomeKind::kTransient) << app;
		EXPECT_EQ(outcome.http_status, 0) << app;
		EXPECT_EQ(outcome.network_error, NetworkError::kReset) << app << ": " << outcome.message;
		ExpectNoToken(outcome);
	}
}

TEST_F(FlyClientTest, ConnectionRefusedIsTransientAndNotDelivered) {
	ClientConfig config;
	config.base_url = "http://127.0.0.1:" + std::to_string(TestHttpServer::UnusedPort());
	config.token = kToken;
	Client client(config);
	const Outcome outcome = client.RunSync(CreateMachineRequest("app-1", NginxSpec()));
	EXPECT_EQ(outcome.kind, OutcomeKind::kTransient);
	EXPECT_EQ(outcome.network_error, NetworkError::kConnect);
	EXPECT_EQ(outcome.http_status, 0);
	EXPECT_FALSE(outcome.maybe_delivered);
	EXPECT_EQ(outcome.message.rfind("create_machine: network error (could not connect)", 0), 0u) << outcome.message;
	ExpectNoToken(outcome);
}

TEST_F(FlyClientTest, RedirectIsNotFollowed) {
	int port = 0;
	TestHttpServer server([&port](const ReceivedRequest &) {
		Reply reply;
		reply.status = 302;
		reply.headers.emplace_back("Location", "http://127.0.0.1:" + std::to_string(port) + "/elsewhere");
		return reply;
	});
	port = server.Port();
	Client client(Config(server));
	const Outcome outcome = client.RunSync(GetAppRequest("app-1"));
	EXPECT_EQ(outcome.kind, OutcomeKind::kPermanent);
	EXPECT_EQ(outcome.http_status, 302);
	EXPECT_NE(outcome.message.find("unexpected redirect to 127.0.0.1"), std::string::npos) << outcome.message;
	EXPECT_EQ(server.RequestCount(), 1u);
}

TEST_F(FlyClientTest, CapturesRequestIdAndRetryAfter) {
	TestHttpServer server([](const ReceivedRequest &request) {
		Reply reply = Reply::Json(429, R"({"error":"rate limited"})");
		reply.headers.emplace_back("fly-request-id", "01JRATE");
		if (request.target.find("date") != std::string::npos) {
			reply.status = 503;
			reply.headers.emplace_back("Retry-After", "Thu, 01 Jan 1970 00:00:00 GMT");
		} else {
			reply.headers.emplace_back("Retry-After", "2");
		}
		return reply;
	});
	Client client(Config(server));
	Outcome outcome = client.RunSync(GetAppRequest("seconds"));
	EXPECT_EQ(outcome.kind, OutcomeKind::kTransient);
	EXPECT_EQ(outcome.http_status, 429);
	EXPECT_EQ(outcome.request_id, "01JRATE");
	EXPECT_EQ(outcome.retry_after_seconds, 2.0);
	EXPECT_EQ(outcome.fly_error, "rate limited");
	outcome = client.RunSync(GetAppRequest("date"));
	EXPECT_EQ(outcome.http_status, 503);
	EXPECT_EQ(outcome.retry_after_seconds, 0.0);
}

TEST_F(FlyClientTest, TokenNeverAppearsInOutcomes) {
	TestHttpServer server([](const ReceivedRequest &request) {
		const std::string echoed = request.Header("authorization");
		Reply reply;
		if (request.target.find("json") != std::string::npos) {
			reply = Reply::Json(401, "{\"error\":\"invalid token " + echoed + "\",\"status\":\"" + echoed + "\"}");
		} else {
			reply.status = 500;
			reply.body = "<html><body>proxy saw Authorization: " + echoed + "</body></html>";
		}
		reply.headers.emplace_back("Fly-Request-Id", echoed.substr(6));
		return reply;
	});
	Client client(Config(server));
	for (const char *app : {"json", "html"}) {
		const Outcome outcome = client.RunSync(GetAppRequest(app));
		EXPECT_NE(outcome.kind, OutcomeKind::kSuccess);
		EXPECT_NE(outcome.message.find("<redacted>"), std::string::npos) << outcome.message;
		ExpectNoToken(outcome);
	}
}

TEST_F(FlyClientTest, SecretValuesNeverAppearInOutcomes) {
	TestHttpServer server([](const ReceivedRequest &request) {
		// A hostile answer quotes the request body, secret values and all.
		return Reply::Json(422, "{\"error\":\"rejected " + request.body.substr(0, 200) + "\"}");
	});
	ClientConfig config = Config(server);
	config.secret_values = {"gemini-secret-value-4711", "ZXlKaGJHY2lPaS5qd3Q="};
	Client client(config);
	const Outcome outcome =
		client.RunSync(SetSecretsRequest("app-1", {{"GEMINI_API_KEY", std::string("gemini-secret-value-4711")},
	                                               {"B64", std::string("ZXlKaGJHY2lPaS5qd3Q=")}}));
	EXPECT_EQ(outcome.kind, OutcomeKind::kPermanent);
	EXPECT_NE(outcome.message.find("<redacted>"), std::string::npos) << outcome.message;
	for (const std::string &text : {outcome.message, outcome.fly_error}) {
		EXPECT_EQ(text.find("4711"), std::string::npos) << text;
		EXPECT_EQ(text.find("ZXlKaGJH"), std::string::npos) << text;
	}
}

TEST_F(FlyClientTest, ContentTypeIsCapturedAndJudged) {
	TestHttpServer server([](const ReceivedRequest &request) {
		Reply reply;
		reply.body = R"({"id":"m1","state":"started"})";
		reply.headers.emplace_back("Content-Type", request.target.find("html") != std::string::npos
		                                               ? "text/html; charset=utf-8"
		                                               : "application/json; charset=utf-8");
		return reply;
	});
	Client client(Config(server));
	Outcome outcome = client.RunSync(GetMachineRequest("app-1", "html"));
	EXPECT_EQ(outcome.kind, OutcomeKind::kMalformed);
	EXPECT_NE(outcome.message.find("labelled text/html; charset=utf-8, not JSON"), std::string::npos)
		<< outcome.message;
	outcome = client.RunSync(GetMachineRequest("app-1", "json"));
	EXPECT_EQ(outcome.kind, OutcomeKind::kSuccess) << outcome.message;
	EXPECT_EQ(outcome.body.GetString("id"), "m1");
}

TEST_F(FlyClientTest, UnusableTokenFailsWithoutSending) {
	TestHttpServer server([](const ReceivedRequest &) { return Reply::Json(200, kAppBody); });
	ClientConfig config = Config(server);
	config.token = "fm2_abc\r\nX-Injected: 1";
	Client client(config);
	client.Submit(GetAppRequest("app-1"));
	EXPECT_EQ(client.NextTimeoutMs(), 0);
	auto completions = client.TakeAnswers();
	ASSERT_EQ(completions.size(), 1u);
	EXPECT_EQ(completions[0].outcome.kind, OutcomeKind::kPermanent);
	EXPECT_EQ(completions[0].outcome.network_error, NetworkError::kConfig);
	EXPECT_FALSE(completions[0].outcome.maybe_delivered);
	config.token = "";
	client.UpdateConfig(config);
	EXPECT_EQ(client.RunSync(GetAppRequest("app-1")).network_error, NetworkError::kConfig);
	EXPECT_EQ(server.RequestCount(), 0u);
}

TEST_F(FlyClientTest, OnlyHttpAndHttpsAreUsed) {
	ClientConfig config;
	config.token = kToken;
	for (const char *url : {"ftp://127.0.0.1:1", "file:///etc", "gopher://127.0.0.1:1", "not a url"}) {
		config.base_url = url;
		Client client(config);
		const Outcome outcome = client.RunSync(GetAppRequest("app-1"));
		EXPECT_EQ(outcome.kind, OutcomeKind::kPermanent) << url << ": " << outcome.message;
		EXPECT_EQ(outcome.network_error, NetworkError::kConfig) << url << ": " << outcome.message;
	}
}

TEST_F(FlyClientTest, TlsProblemsArePermanent) {
	// A plain-HTTP server behind an https URL: the handshake fails; an unreadable CA file fails before it.
	TestHttpServer server([](const ReceivedRequest &) { return Reply::Json(200, kAppBody); });
	ClientConfig config = Config(server);
	config.base_url = "https://127.0.0.1:" + std::to_string(server.Port());
	{
		Client client(config);
		const Outcome outcome = client.RunSync(GetAppRequest("app-1"));
		EXPECT_EQ(outcome.kind, OutcomeKind::kPermanent) << outcome.message;
		EXPECT_EQ(outcome.network_error, NetworkError::kTls) << outcome.message;
		EXPECT_NE(outcome.message.find("TLS error"), std::string::npos);
	}
	config.ca_file = "/nonexistent/pg_fly_test_ca.pem";
	Client client(config);
	const Outcome outcome = client.RunSync(GetAppRequest("app-1"));
	EXPECT_EQ(outcome.kind, OutcomeKind::kPermanent) << outcome.message;
	EXPECT_EQ(outcome.network_error, NetworkError::kTls) << outcome.message;
	EXPECT_EQ(server.RequestCount(), 0u);
}

TEST_F(FlyClientTest, CancelAllCompletesEveryTransfer) {
	TestHttpServer server([](const ReceivedRequest &request) {
		Reply reply = Reply::Json(200, R"({"id":"m1"})");
		if (request.target.find("hang") != std::string::npos) {
			reply.action = Reply::Action::kHang;
		}
		return reply;
	});
	Client client(Config(server));
	std::set<RequestId> ids;
	for (int i = 0; i < 3; i++) {
		ids.insert(client.Submit(GetMachineRequest("hang", std::to_string(i))));
	}
	const auto start = Clock::now();
	while (server.RequestCount() < 3 && MsSince(start) < 3000) {
		DriveUntil(client, 1, 20);
	}
	EXPECT_EQ(client.InFlight(), 3u);
	client.CancelAll();
	EXPECT_EQ(client.InFlight(), 0u);
	auto completions = client.TakeAnswers();
	ASSERT_EQ(completions.size(), 3u);
	for (const auto &completion : completions) {
		EXPECT_EQ(completion.outcome.kind, OutcomeKind::kTransient);
		EXPECT_EQ(completion.outcome.network_error, NetworkError::kCancelled);
		EXPECT_TRUE(completion.outcome.maybe_delivered);
		EXPECT_EQ(ids.erase(completion.id), 1u);
	}
	// The client stays usable.
	EXPECT_EQ(client.RunSync(GetMachineRequest("app-1", "m1")).kind, OutcomeKind::kSuccess);
}

TEST_F(FlyClientTest, UpdateConfigAppliesToLaterRequests) {
	TestHttpServer server([](const ReceivedRequest &) { return Reply::Json(200, kAppBody); });
	ClientConfig config = Config(server);
	Client client(config);
	EXPECT_EQ(client.RunSync(GetAppRequest("app-1")).kind, OutcomeKind::kSuccess);
	config.token = "Bearer personal-access-token";
	config.user_agent = "pg_fly/test";
	client.UpdateConfig(config);
	EXPECT_EQ(client.RunSync(GetAppRequest("app-1")).kind, OutcomeKind::kSuccess);
	const auto requests = server.Requests();
	ASSERT_EQ(requests.size(), 2u);
	EXPECT_EQ(requests[0].Header("authorization").rfind("FlyV1 fm2_", 0), 0u);
	EXPECT_EQ(requests[1].Header("authorization"), "Bearer personal-access-token");
	EXPECT_EQ(requests[1].Header("user-agent"), "pg_fly/test");
}

TEST_F(FlyClientTest, EventLoopContract) {
	TestHttpServer server([](const ReceivedRequest &) { return Reply::Json(200, R"({"ok":true})"); });
	Client client(Config(server));
	EXPECT_GE(client.EventFd(), 0);
	EXPECT_EQ(client.NextTimeoutMs(), -1) << "an idle client needs no wake-ups";
	client.Drive();
	EXPECT_TRUE(client.TakeAnswers().empty());
	const RequestId first = client.Submit(StopMachineRequest("app-1", "m1"));
	const RequestId second = client.Submit(StartMachineRequest("app-1", "m1"));
	EXPECT_GT(second, first);
	EXPECT_GE(client.NextTimeoutMs(), 0);
	const auto completions = DriveUntil(client, 2);
	ASSERT_EQ(completions.size(), 2u);
	for (const auto &completion : completions) {
		EXPECT_EQ(completion.outcome.kind, OutcomeKind::kSuccess);
		EXPECT_EQ(completion.endpoint, completion.id == first ? Endpoint::kStopMachine : Endpoint::kStartMachine);
		EXPECT_GT(completion.elapsed_ms, 0.0);
	}
	EXPECT_EQ(client.InFlight(), 0u);
}

TEST_F(FlyClientTest, RunSyncLeavesOtherAnswersQueued) {
	TestHttpServer server([](const ReceivedRequest &request) {
		Reply reply = Reply::Json(200, kAppBody);
		reply.delay_ms = request.target.find("slow") != std::string::npos ? 200 : 0;
		return reply;
	});
	Client client(Config(server));
	const RequestId background = client.Submit(GetAppRequest("fast"));
	EXPECT_EQ(client.RunSync(GetAppRequest("slow")).kind, OutcomeKind::kSuccess);
	const auto completions = client.TakeAnswers();
	ASSERT_EQ(completions.size(), 1u);
	EXPECT_EQ(completions[0].id, background);
}

// Sets proxy variables for one test, and puts the suite's no_proxy back afterwards.
class ScopedProxyEnvironment {
public:
	explicit ScopedProxyEnvironment(const std::string &proxy) {
		for (const char *name : kProxyNames) {
			setenv(name, proxy.c_str(), 1);
		}
		unsetenv("no_proxy");
		unsetenv("NO_PROXY");
	}
	~ScopedProxyEnvironment() {
		for (const char *name : kProxyNames) {
			unsetenv(name);
		}
		setenv("no_proxy", "*", 1);
		setenv("NO_PROXY", "*", 1);
	}

private:
	static constexpr const char *kProxyNames[] = {"http_proxy",  "HTTP_PROXY", "https_proxy",
	                                              "HTTPS_PROXY", "all_proxy",  "ALL_PROXY"};
};

TEST_F(FlyClientTest, ProxyVariablesInTheEnvironmentAreIgnored) {
	TestHttpServer server([](const ReceivedRequest &) { return Reply::Json(200, kAppBody); });
	TestHttpServer proxy([](const ReceivedRequest &) { return Reply::Json(502, R"({"error":"proxied"})"); });
	ScopedProxyEnvironment environment(proxy.BaseUrl());
	Client client(Config(server));
	const Outcome outcome = client.RunSync(GetAppRequest("app-1"));
	EXPECT_EQ(outcome.kind, OutcomeKind::kSuccess) << outcome.message;
	EXPECT_EQ(server.Requests().size(), 1u);
	EXPECT_EQ(proxy.Requests().size(), 0u) << "the request went through the environment's proxy";
}

TEST_F(FlyClientTest, OnlyTheConfiguredProxyIsUsed) {
	TestHttpServer server([](const ReceivedRequest &) { return Reply::Json(500, "{}"); });
	TestHttpServer proxy([](const ReceivedRequest &) { return Reply::Json(200, kAppBody); });
	ScopedProxyEnvironment environment("http://127.0.0.1:9");
	ClientConfig config = Config(server);
	config.proxy = proxy.BaseUrl();
	Client client(config);
	const Outcome outcome = client.RunSync(GetAppRequest("app-1"));
	EXPECT_EQ(outcome.kind, OutcomeKind::kSuccess) << outcome.message;
	ASSERT_EQ(proxy.Requests().size(), 1u);
	EXPECT_EQ(proxy.Requests()[0].target, server.BaseUrl() + "/v1/apps/app-1");
	EXPECT_EQ(server.Requests().size(), 0u);
}

// A callback handed to libcurl that throws (std::bad_alloc, say) must not unwind through libcurl and terminate
// the process: the transfer fails as a transient network error instead.
TEST_F(FlyClientTest, ThrowingWriteOrHeaderCallbackFailsOnlyThatTransfer) {
	TestHttpServer server([](const ReceivedRequest &) { return Reply::Json(200, kAppBody); });
	Client client(Config(server));
	for (CCallback callback : {CCallback::kCurlWrite, CCallback::kCurlHeader}) {
		InjectCallbackFaultForTesting(callback, 1);
		const Outcome failed = client.RunSync(GetAppRequest("app-1"));
		EXPECT_EQ(failed.kind, OutcomeKind::kTransient) << failed.message;
		EXPECT_EQ(failed.network_error, NetworkError::kOther);
		EXPECT_NE(failed.message.find("out of memory"), std::string::npos) << failed.message;
		EXPECT_EQ(client.RunSync(GetAppRequest("app-1")).kind, OutcomeKind::kSuccess) << "the next one is fine";
	}
}

TEST_F(FlyClientTest, ThrowingSocketOrTimerCallbackDoesNotTerminate) {
	TestHttpServer server([](const ReceivedRequest &) { return Reply::Json(200, kAppBody); });
	Client client(Config(server));
	for (CCallback callback : {CCallback::kCurlSocket, CCallback::kCurlTimer}) {
		InjectCallbackFaultForTesting(callback, 1);
		const RequestId id = client.Submit(GetAppRequest("app-1"));
		const auto completions = DriveUntil(client, 1, 8000);
		ASSERT_EQ(completions.size(), 1u) << "every request completes, even after a failed callback";
		EXPECT_EQ(completions[0].id, id);
		InjectCallbackFaultForTesting(callback, 0);
		const Outcome next = client.RunSync(GetAppRequest("app-1"));
		EXPECT_EQ(next.kind, OutcomeKind::kSuccess) << next.message;
	}
}

TEST_F(FlyClientTest, DestroyingWithTransfersInFlightIsClean) {
	TestHttpServer server([](const ReceivedRequest &) {
		Reply reply;
		reply.action = Reply::Action::kHang;
		return reply;
	});
	{
		Client client(Config(server));
		client.Submit(GetAppRequest("app-1"));
		client.Submit(GetAppRequest("app-2"));
		DriveUntil(client, 1, 100);
		EXPECT_EQ(client.InFlight(), 2u);
	}
	Client moved_from(Config(server));
	Client target = std::move(moved_from);
	EXPECT_GE(target.EventFd(), 0);
}

} // namespace
} // namespace fly
} // namespace pgfly

// An asynchronous Fly Machines API client on libcurl's multi interface, driven from someone else's event loop
// (the background worker's WaitLatchOrSocket). No threads, no signals, no global state beyond curl_global_init:
//
//     client.Submit(request);
//     loop:
//         wait until client.EventFd() is readable, or client.NextTimeoutMs() passes (or the latch is set)
//         client.Drive();
//         for (auto &answer : client.TakeAnswers()) ...
//
// Every request completes exactly once, with an Outcome (fly_outcome.hpp), unless the client is destroyed first.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "pgfly/core/fly_outcome.hpp"
#include "pgfly/core/fly_requests.hpp"

#ifndef PGFLY_VERSION
#error "PGFLY_VERSION (the extension version) must be defined by the build"
#endif

namespace pgfly {
namespace fly {

// Defaults of fly.connect_timeout and fly.request_timeout, and what a value below 1 falls back to.
constexpr long kDefaultConnectTimeoutMs = 5000;
constexpr long kDefaultRequestTimeoutMs = 30000;
constexpr size_t kDefaultMaxResponseBytes = 1024 * 1024;

struct ClientConfig {
	// e.g. "https://api.machines.dev" (a trailing slash is ignored); only http and https are used.
	std::string base_url;
	std::string token;
	// Values (app secrets) scrubbed from every outcome's texts like the token, in case an answer echoes them.
	std::vector<std::string> secret_values;
	// Timeouts are never 0 (unbounded): values below 1 fall back to the defaults.
	long connect_timeout_ms = kDefaultConnectTimeoutMs;
	// Whole request, including waiting for a free connection. Wait requests instead get their own
	// timeout_seconds * 1000 + 5000, since Fly holds them open that long on purpose.
	long request_timeout_ms = kDefaultRequestTimeoutMs;
	// Larger responses are aborted and reported as kMalformed (0 falls back to the default).
	size_t max_response_bytes = kDefaultMaxResponseBytes;
	long max_host_connections = 16;
	// Connections open at once to all hosts, in use and idle together (the user apps' health endpoints are hosts
	// too); 0 for no cap beyond max_host_connections per host. Requests beyond it wait for a free connection.
	long max_total_connections = 0;
	std::string user_agent = std::string("pg_fly/") + PGFLY_VERSION;
	// PEM bundle for a private CA; empty uses the system's. Verification is never turned off.
	std::string ca_file;
	// The proxy every request goes through; empty for none. Proxy variables in the environment (http_proxy,
	// https_proxy, ALL_PROXY, NO_PROXY) are never used.
	std::string proxy;
};

using RequestId = uint64_t;

// A finished request: what Fly (or the transport) answered, classified.
struct Answer {
	RequestId id = 0;
	Endpoint endpoint = Endpoint::kGetApp;
	Outcome outcome;
	double elapsed_ms = 0;
};

class Client {
public:
	// Throws std::runtime_error if libcurl or epoll cannot be set up.
	explicit Client(ClientConfig config);
	// Aborts transfers still in flight, without answers.
	~Client();
	Client(const Client &) = delete;
	Client &operator=(const Client &) = delete;
	Client(Client &&) noexcept;
	Client &operator=(Client &&) noexcept;

	// Starts a request; ids are never reused. A request that cannot be sent (unusable token, say) completes at
	// once, on the next TakeAnswers.
	RequestId Submit(const Request &request);

	// An epoll descriptor that is readable while any of curl's sockets is ready. Stable for the client's life.
	int EventFd() const;
	// Milliseconds until Drive must be called even if EventFd stays quiet: -1 for never, 0 for now (also when
	// answers are waiting to be taken).
	long NextTimeoutMs() const;
	// Non-blocking: serves ready sockets and an expired timer, and collects finished transfers.
	void Drive();
	std::vector<Answer> TakeAnswers();
	// Transfers in flight (answers not yet taken are not counted).
	size_t InFlight() const;
	// Aborts every transfer in flight; each completes as kTransient with NetworkError::kCancelled (the request
	// may or may not have reached Fly).
	void CancelAll();
	// Applies to requests submitted afterwards; requests in flight keep their settings.
	void UpdateConfig(const ClientConfig &config);

	// Blocking convenience for tools and tests: submits the request and drives the client (polling EventFd)
	// until it completes. Other requests in flight progress meanwhile; their answers stay queued.
	Outcome RunSync(const Request &request);

private:
	struct Impl;
	std::unique_ptr<Impl> impl_;
};

// base_url + path + "?" + query, with the query percent-encoded.
std::string BuildUrl(const std::string &base_url, const Request &request);

} // namespace fly
} // namespace pgfly

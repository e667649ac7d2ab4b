// Operator configuration the worker turns into machine env and app secrets, parsed without PostgreSQL.
#pragma once

#include <map>
#include <optional>
#include <string>

namespace pgfly {

struct ParsedMap {
	std::map<std::string, std::string> values;
	// Empty when the input was fine; otherwise what is wrong, never quoting a value.
	std::string problem;
};

// fly.machine_env: a JSON object of string values, e.g. {"SUPABASE_URL": "https://x.supabase.co"}.
ParsedMap ParseMachineEnv(const std::string &json_text);

// The file named by fly.app_secrets_file: one NAME=value per line; blank lines and lines starting with '#'
// are ignored. NAME:base64=value sends base64(value) (the seed's SUPABASE_SERVICE_KEY_B64 avoids Fly's JWT
// handling that way). Names are upper-case letters, digits and '_', not starting with a digit.
ParsedMap ParseSecretsFile(const std::string &text);

std::string Base64Encode(const std::string &bytes);

// Capped exponential backoff with full jitter: a delay drawn uniformly from [0, min(cap, base * 2^(attempt-1))],
// never less than Retry-After when Fly gave one, but never more than the cap either. `unit_random` is a number
// in [0, 1).
double RetryDelaySeconds(int attempt, double base_seconds, double cap_seconds, std::optional<double> retry_after,
                         double unit_random);

// How long a 429 holds back its rate-limit key: Retry-After (or 1 s without one), at most cap_seconds
// (fly.retry_max_delay).
constexpr double kDefaultRateLimitHoldSeconds = 1.0;
double RetryAfterHoldSeconds(std::optional<double> retry_after, double cap_seconds);

// The file descriptors the worker's HTTP client uses, accounted for with PostgreSQL (AcquireExternalFD), and
// what fits into them.
struct ConnectionBudget {
	// Descriptors to reserve: the connections, the client's epoll descriptor and a resolver's socket pair.
	int fds = 0;
	// libcurl's cap on open connections, in use and idle together.
	int connections = 0;
	// Users reconciled at once, and health checks at once: each has one request in flight, and one more
	// connection is left for orphan and rollout work.
	int concurrency = 0;
};
constexpr int kClientFdOverhead = 3;
// The smallest budget the worker runs with: one user and one health check at a time.
constexpr int kMinClientFds = 3 + kClientFdOverhead;

// What fly.max_concurrency asks for: 2 x max_concurrency + 1 connections.
ConnectionBudget WantedConnections(int max_concurrency);
// What fits into `granted` descriptors: what max_concurrency wants if there are enough, otherwise a lower
// concurrency (never below 1; fewer than kMinClientFds granted still gives the smallest budget).
ConnectionBudget FitConnections(int max_concurrency, int granted_fds);

} // namespace pgfly

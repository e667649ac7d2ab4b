// How many connections, and so how many users and health checks at once, fit into the file descriptors the
// worker may use.
#pragma once

namespace pgfly {

// The file descriptors the worker's HTTP client uses, accounted for with PostgreSQL (AcquireExternalFD), and
// what fits into them.
struct ConnectionBudget {
	// Descriptors to reserve: the connections, the client's epoll descriptor and a resolver's socket pair.
	int fds = 0;
	// libcurl's cap on open connections, in use and idle together.
	int connections = 0;
	// Users reconciled at once: each has one request in flight.
	int concurrency = 0;
	// Health checks at once (fly.health_check_concurrency), each with one request in flight; one more
	// connection is left for orphan and rollout work.
	int health_concurrency = 0;
};
constexpr int kClientFdOverhead = 3;
// The smallest budget the worker runs with: one user and one health check at a time.
constexpr int kMinClientFds = 3 + kClientFdOverhead;

// What fly.max_concurrency and fly.health_check_concurrency ask for: one connection for each, and one more.
ConnectionBudget WantedConnections(int max_concurrency, int health_concurrency);
// What fits into `granted` descriptors: what is asked for if there are enough, otherwise both concurrencies
// lowered in proportion (never below 1 each; fewer than kMinClientFds granted still gives the smallest budget).
ConnectionBudget FitConnections(int max_concurrency, int health_concurrency, int granted_fds);

} // namespace pgfly

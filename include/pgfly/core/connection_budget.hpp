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

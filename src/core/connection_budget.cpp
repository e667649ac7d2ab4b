#include "pgfly/core/connection_budget.hpp"

#include <algorithm>

#include "pgfly/core/cpp_only.hpp"

namespace pgfly {

ConnectionBudget
WantedConnections(int max_concurrency, int health_concurrency) {
	ConnectionBudget budget;
	budget.concurrency = std::max(1, max_concurrency);
	budget.health_concurrency = std::max(1, health_concurrency);
	budget.connections = budget.concurrency + budget.health_concurrency + 1;
	budget.fds = budget.connections + kClientFdOverhead;
	return budget;
}

ConnectionBudget
FitConnections(int max_concurrency, int health_concurrency, int granted_fds) {
	const ConnectionBudget wanted = WantedConnections(max_concurrency, health_concurrency);
	if (granted_fds >= wanted.fds) {
		return wanted;
	}
	// Connections for both kinds of work, the spare one left aside; at least one each.
	const int available = std::max(granted_fds, kMinClientFds) - kClientFdOverhead - 1;
	const long long asked = static_cast<long long>(wanted.concurrency) + wanted.health_concurrency;
	const int reconciles =
		std::max(1, static_cast<int>(static_cast<long long>(available) * wanted.concurrency / asked));
	const int health = std::max(1, available - reconciles);
	return WantedConnections(std::min(reconciles, available - 1), health);
}

} // namespace pgfly

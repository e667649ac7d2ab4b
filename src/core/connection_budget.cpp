#include "pgfly/core/connection_budget.hpp"

#include <algorithm>

#include "pgfly/core/cpp_only.hpp"

namespace pgfly {

ConnectionBudget
WantedConnections(int max_concurrency) {
	ConnectionBudget budget;
	budget.concurrency = std::max(1, max_concurrency);
	budget.connections = 2 * budget.concurrency + 1;
	budget.fds = budget.connections + kClientFdOverhead;
	return budget;
}

ConnectionBudget
FitConnections(int max_concurrency, int granted_fds) {
	const ConnectionBudget wanted = WantedConnections(max_concurrency);
	if (granted_fds >= wanted.fds) {
		return wanted;
	}
	return WantedConnections((std::max(granted_fds, kMinClientFds) - kClientFdOverhead - 1) / 2);
}

} // namespace pgfly

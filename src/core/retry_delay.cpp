#include "pgfly/core/retry_delay.hpp"

#include <algorithm>
#include <cmath>

#include "pgfly/core/cpp_only.hpp"

namespace pgfly {

double
RetryDelaySeconds(int attempt, double base_seconds, double cap_seconds, std::optional<double> retry_after,
                  double unit_random) {
	const int exponent = std::clamp(attempt - 1, 0, 62);
	const double ceiling = std::min(cap_seconds, base_seconds * std::ldexp(1.0, exponent));
	double delay = std::clamp(unit_random, 0.0, 1.0) * ceiling;
	if (retry_after) {
		delay = std::max(delay, RetryAfterHoldSeconds(*retry_after, cap_seconds));
	}
	return delay;
}

double
RetryAfterHoldSeconds(std::optional<double> retry_after, double cap_seconds) {
	// Fly's Retry-After is trusted only up to the cap: a huge one would otherwise park a user, or an org-wide
	// rate-limit key, until the worker restarts.
	const double wanted = retry_after.value_or(kDefaultRateLimitHoldSeconds);
	return std::clamp(std::isfinite(wanted) ? wanted : cap_seconds, 0.0, std::max(0.0, cap_seconds));
}

} // namespace pgfly

// How long a failed request waits before it goes again, and how long a rate-limited key is held back.
#pragma once

#include <optional>

namespace pgfly {

// Capped exponential backoff with full jitter: a delay drawn uniformly from [0, min(cap, base * 2^(attempt-1))],
// never less than Retry-After when Fly gave one, but never more than the cap either. `unit_random` is a number
// in [0, 1).
double RetryDelaySeconds(int attempt, double base_seconds, double cap_seconds, std::optional<double> retry_after,
                         double unit_random);

// How long a 429 holds back its rate-limit key: Retry-After (or 1 s without one), at most cap_seconds
// (fly.retry_max_delay).
constexpr double kDefaultRateLimitHoldSeconds = 1.0;
double RetryAfterHoldSeconds(std::optional<double> retry_after, double cap_seconds);

} // namespace pgfly

// Client-side rate limiting that follows Fly's documented limits (docs/fly-api.md): token buckets per action
// and per scope (the organization, app or machine the request is about), so that bulk work runs as fast as
// Fly allows without provoking 429s, and a 429 slows down only its own scope. Times are seconds on a
// monotonic clock, passed in so that tests control them.
#pragma once

#include <map>
#include <string>
#include <utility>

#include "pgfly/core/fly_requests.hpp"

namespace pgfly {

struct RateLimit {
	double per_second = 1.0;
	double burst = 3.0;
};

struct RateLimitSettings {
	bool enabled = true;
	RateLimit action{1.0, 3.0}; // every action, per app or machine
	RateLimit get_machine{5.0, 10.0};
	RateLimit delete_app{100.0 / 60.0, 100.0}; // per organization
	// Refill a little slower than Fly does, so that network jitter between our clock and Fly's cannot push a
	// request over the limit.
	double safety_factor = 0.95;
};

// What a request counts against: (action, scope).
std::pair<std::string, std::string> RateLimitKey(const fly::Request &request, const std::string &org_slug);

class RateLimiter {
public:
	explicit RateLimiter(RateLimitSettings settings = {});
	void Configure(RateLimitSettings settings);

	// 0 when the request may go now (a token is taken); otherwise the seconds to wait before asking again.
	double Acquire(const std::pair<std::string, std::string> &key, double now);
	// Fly answered 429 for this key: nothing more for it before `until`.
	void Block(const std::pair<std::string, std::string> &key, double until);
	// Forgets buckets idle long enough to be full again, so memory stays bounded over millions of apps.
	void Prune(double now);
	size_t
	Buckets() const {
		return buckets_.size();
	}

private:
	struct Bucket {
		double tokens = 0;
		double updated = 0;
		double blocked_until = 0;
	};
	RateLimit LimitFor(const std::string &action) const;

	RateLimitSettings settings_;
	std::map<std::pair<std::string, std::string>, Bucket> buckets_;
};

} // namespace pgfly

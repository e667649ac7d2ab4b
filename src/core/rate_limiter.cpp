#include "pgfly/core/rate_limiter.hpp"

#include <algorithm>
#include <vector>

#include "pgfly/core/cpp_only.hpp"

namespace pgfly {

namespace {

// Path segments of /v1/apps/{app}/machines/{id}/...: [v1, apps, app, machines, id, ...].
std::vector<std::string>
Segments(const std::string &path) {
	std::vector<std::string> segments;
	size_t start = 1;
	while (start <= path.size()) {
		size_t end = path.find('/', start);
		if (end == std::string::npos) {
			end = path.size();
		}
		segments.push_back(path.substr(start, end - start));
		start = end + 1;
	}
	return segments;
}

} // namespace

std::pair<std::string, std::string>
RateLimitKey(const fly::Request &request, const std::string &org_slug) {
	const std::string action = fly::EndpointName(request.endpoint);
	const auto segments = Segments(request.path);
	switch (request.endpoint) {
	case fly::Endpoint::kCreateApp:
	case fly::Endpoint::kListApps:
	case fly::Endpoint::kDeleteApp:
		return {action, "org:" + org_slug};
	case fly::Endpoint::kAppHealth:
		return {action, "url:" + request.absolute_url};
	case fly::Endpoint::kGetApp:
	case fly::Endpoint::kSetSecrets:
	case fly::Endpoint::kCreateMachine:
	case fly::Endpoint::kListMachines:
	case fly::Endpoint::kListIpAssignments:
	case fly::Endpoint::kAssignIp:
		return {action, "app:" + (segments.size() > 2 ? segments[2] : "")};
	default:
		return {action, "machine:" + (segments.size() > 4 ? segments[4] : "")};
	}
}

RateLimiter::RateLimiter(RateLimitSettings settings) : settings_(settings) {}

void
RateLimiter::Configure(RateLimitSettings settings) {
	settings_ = settings;
}

RateLimit
RateLimiter::LimitFor(const std::string &action) const {
	RateLimit limit = settings_.action;
	if (action == "get_machine") {
		limit = settings_.get_machine;
	} else if (action == "delete_app") {
		limit = settings_.delete_app;
	}
	limit.per_second *= settings_.safety_factor;
	return limit;
}

double
RateLimiter::Acquire(const std::pair<std::string, std::string> &key, double now) {
	auto found = buckets_.find(key);
	if (found != buckets_.end() && found->second.blocked_until > now) {
		return found->second.blocked_until - now;
	}
	if (!settings_.enabled) {
		return 0;
	}
	const RateLimit limit = LimitFor(key.first);
	if (found == buckets_.end()) {
		found = buckets_.emplace(key, Bucket{limit.burst, now, 0}).first;
	}
	Bucket &bucket = found->second;
	bucket.tokens = std::min(limit.burst, bucket.tokens + (now - bucket.updated) * limit.per_second);
	bucket.updated = now;
	if (bucket.tokens >= 1.0) {
		bucket.tokens -= 1.0;
		return 0;
	}
	return (1.0 - bucket.tokens) / limit.per_second;
}

void
RateLimiter::Block(const std::pair<std::string, std::string> &key, double until) {
	Bucket &bucket = buckets_[key];
	bucket.blocked_until = std::max(bucket.blocked_until, until);
	// The answer spent Fly's token for this scope; start refilling from empty.
	bucket.tokens = 0;
	bucket.updated = until;
}

void
RateLimiter::Prune(double now) {
	for (auto it = buckets_.begin(); it != buckets_.end();) {
		const RateLimit limit = LimitFor(it->first.first);
		const double full_at = it->second.updated + (limit.burst - it->second.tokens) / limit.per_second;
		if (it->second.blocked_until <= now && full_at <= now) {
			it = buckets_.erase(it);
		} else {
			++it;
		}
	}
}

} // namespace pgfly

#include "pgfly/core/rate_limiter.hpp"

#include <gtest/gtest.h>

namespace pgfly {
namespace {

RateLimitSettings
Exact() {
	RateLimitSettings settings;
	settings.safety_factor = 1.0;
	return settings;
}

TEST(RateLimitKey, ScopesFollowFlysDocumentedLimits) {
	EXPECT_EQ(RateLimitKey(fly::CreateAppRequest("a1", "personal"), "personal"),
	          std::make_pair(std::string("create_app"), std::string("org:personal")));
	EXPECT_EQ(RateLimitKey(fly::DeleteAppRequest("a1"), "personal").second, "org:personal");
	EXPECT_EQ(RateLimitKey(fly::GetAppRequest("a1"), "personal").second, "app:a1");
	EXPECT_EQ(RateLimitKey(fly::ListMachinesRequest("a1", {{"k", "v"}}), "personal").second, "app:a1");
	fly::MachineSpec spec;
	spec.image = "img";
	EXPECT_EQ(RateLimitKey(fly::CreateMachineRequest("a1", spec), "personal").second, "app:a1");
	EXPECT_EQ(RateLimitKey(fly::WaitMachineRequest("a1", "m1", "started", 60), "personal"),
	          std::make_pair(std::string("wait_machine"), std::string("machine:m1")));
	EXPECT_EQ(RateLimitKey(fly::StopMachineRequest("a1", "m1"), "personal").second, "machine:m1");
}

TEST(RateLimiter, BurstThenOnePerSecondPerScope) {
	RateLimiter limiter(Exact());
	const auto key = std::make_pair(std::string("create_machine"), std::string("app:a1"));
	EXPECT_EQ(limiter.Acquire(key, 100.0), 0);
	EXPECT_EQ(limiter.Acquire(key, 100.0), 0);
	EXPECT_EQ(limiter.Acquire(key, 100.0), 0);
	EXPECT_DOUBLE_EQ(limiter.Acquire(key, 100.0), 1.0);
	EXPECT_DOUBLE_EQ(limiter.Acquire(key, 100.5), 0.5);
	EXPECT_EQ(limiter.Acquire(key, 101.0), 0);
	// Another app, or another action, has its own bucket.
	EXPECT_EQ(limiter.Acquire({"create_machine", "app:a2"}, 100.0), 0);
	EXPECT_EQ(limiter.Acquire({"list_machines", "app:a1"}, 100.0), 0);
}

TEST(RateLimiter, GetMachineAndAppDeletesHaveTheirOwnLimits) {
	RateLimiter limiter(Exact());
	for (int i = 0; i < 10; i++) {
		EXPECT_EQ(limiter.Acquire({"get_machine", "machine:m1"}, 0.0), 0) << i;
	}
	EXPECT_DOUBLE_EQ(limiter.Acquire({"get_machine", "machine:m1"}, 0.0), 0.2);
	for (int i = 0; i < 100; i++) {
		EXPECT_EQ(limiter.Acquire({"delete_app", "org:o"}, 0.0), 0) << i;
	}
	EXPECT_NEAR(limiter.Acquire({"delete_app", "org:o"}, 0.0), 0.6, 1e-9);
}

TEST(RateLimiter, SafetyFactorRefillsSlowerThanFly) {
	RateLimiter limiter; // default safety factor 0.95
	const auto key = std::make_pair(std::string("create_app"), std::string("org:o"));
	for (int i = 0; i < 3; i++) {
		limiter.Acquire(key, 0.0);
	}
	EXPECT_GT(limiter.Acquire(key, 1.0), 0.0);
	EXPECT_EQ(limiter.Acquire(key, 1.06), 0);
}

TEST(RateLimiter, A429BlocksOnlyItsScope) {
	RateLimiter limiter(Exact());
	const auto key = std::make_pair(std::string("create_machine"), std::string("app:a1"));
	limiter.Block(key, 12.0);
	EXPECT_DOUBLE_EQ(limiter.Acquire(key, 10.0), 2.0);
	EXPECT_EQ(limiter.Acquire({"create_machine", "app:a2"}, 10.0), 0);
	EXPECT_GT(limiter.Acquire(key, 12.0), 0.0); // refilling from empty
	EXPECT_EQ(limiter.Acquire(key, 13.0), 0);
}

TEST(RateLimiter, DisabledLetsEverythingThroughButStillHonoursRetryAfter) {
	RateLimitSettings settings;
	settings.enabled = false;
	RateLimiter limiter(settings);
	for (int i = 0; i < 100; i++) {
		EXPECT_EQ(limiter.Acquire({"create_app", "org:o"}, 0.0), 0);
	}
	limiter.Block({"create_app", "org:o"}, 5.0);
	EXPECT_DOUBLE_EQ(limiter.Acquire({"create_app", "org:o"}, 1.0), 4.0);
}

TEST(RateLimiter, PruneForgetsFullIdleBuckets) {
	RateLimiter limiter(Exact());
	limiter.Acquire({"create_machine", "app:a1"}, 0.0);
	limiter.Acquire({"create_machine", "app:a2"}, 0.0);
	limiter.Block({"create_machine", "app:a3"}, 100.0);
	EXPECT_EQ(limiter.Buckets(), 3u);
	limiter.Prune(10.0);
	EXPECT_EQ(limiter.Buckets(), 1u);
}

} // namespace
} // namespace pgfly

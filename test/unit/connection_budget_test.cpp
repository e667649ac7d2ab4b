#include "pgfly/core/connection_budget.hpp"

#include <gtest/gtest.h>

namespace pgfly {
namespace {

TEST(ConnectionBudget, WantsOneConnectionPerUserAndHealthCheckAndOneMore) {
	const ConnectionBudget budget = WantedConnections(16, 64);
	EXPECT_EQ(budget.concurrency, 16);
	EXPECT_EQ(budget.health_concurrency, 64);
	EXPECT_EQ(budget.connections, 81);
	EXPECT_EQ(budget.fds, 81 + kClientFdOverhead);
	EXPECT_EQ(WantedConnections(0, 0).concurrency, 1);
	EXPECT_EQ(WantedConnections(0, 0).health_concurrency, 1);
}

TEST(ConnectionBudget, HealthChecksDoNotTakeReconcileSlots) {
	// However many health checks run at once, reconciles keep fly.max_concurrency.
	for (int health : {1, 16, 64, 1024}) {
		const ConnectionBudget budget = FitConnections(16, health, 10000);
		EXPECT_EQ(budget.concurrency, 16) << health;
		EXPECT_EQ(budget.health_concurrency, health);
	}
}

TEST(ConnectionBudget, FewerDescriptorsLowerBothConcurrencies) {
	EXPECT_EQ(FitConnections(16, 64, 84).connections, 81);
	// One short: 83 descriptors leave 80 connections, the spare and 79 for both kinds, split in proportion.
	ConnectionBudget budget = FitConnections(16, 64, 83);
	EXPECT_EQ(budget.concurrency + budget.health_concurrency, 79);
	EXPECT_EQ(budget.concurrency, 15);
	EXPECT_EQ(budget.health_concurrency, 64);
	EXPECT_LE(budget.fds, 83);
	for (int granted = kMinClientFds; granted < 300; granted++) {
		budget = FitConnections(1024, 64, granted);
		EXPECT_LE(budget.fds, granted) << granted;
		EXPECT_EQ(budget.fds, granted) << granted;
		EXPECT_GE(budget.concurrency, 1);
		EXPECT_GE(budget.health_concurrency, 1);
		EXPECT_LE(budget.health_concurrency, 64);
		EXPECT_EQ(budget.connections, budget.concurrency + budget.health_concurrency + 1);
	}
	// Nothing to spare: the smallest budget, one user and one health check at a time.
	budget = FitConnections(16, 64, 0);
	EXPECT_EQ(budget.concurrency, 1);
	EXPECT_EQ(budget.health_concurrency, 1);
	EXPECT_EQ(budget.connections, 3);
	EXPECT_EQ(budget.fds, kMinClientFds);
}

} // namespace
} // namespace pgfly

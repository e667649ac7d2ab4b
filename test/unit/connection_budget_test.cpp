#include "pgfly/core/connection_budget.hpp"

#include <gtest/gtest.h>

namespace pgfly {
namespace {

TEST(ConnectionBudget, WantsTwoConnectionsPerUserAndOneMore) {
	const ConnectionBudget budget = WantedConnections(16);
	EXPECT_EQ(budget.concurrency, 16);
	EXPECT_EQ(budget.connections, 33);
	EXPECT_EQ(budget.fds, 33 + kClientFdOverhead);
	EXPECT_EQ(WantedConnections(0).concurrency, 1);
}

TEST(ConnectionBudget, FewerDescriptorsLowerTheConcurrency) {
	EXPECT_EQ(FitConnections(16, 1000).concurrency, 16);
	EXPECT_EQ(FitConnections(16, 36).connections, 33);
	// One short: 35 descriptors leave 32 connections, 15 users (31) and the spare.
	ConnectionBudget budget = FitConnections(16, 35);
	EXPECT_EQ(budget.concurrency, 15);
	EXPECT_EQ(budget.connections, 31);
	EXPECT_LE(budget.fds, 35);
	for (int granted = kMinClientFds; granted < 300; granted++) {
		budget = FitConnections(1024, granted);
		EXPECT_LE(budget.fds, granted) << granted;
		EXPECT_GE(budget.fds, granted - 1) << granted;
		EXPECT_EQ(budget.connections, 2 * budget.concurrency + 1);
	}
	// Nothing to spare: the smallest budget, one user at a time.
	budget = FitConnections(16, 0);
	EXPECT_EQ(budget.concurrency, 1);
	EXPECT_EQ(budget.connections, 3);
	EXPECT_EQ(budget.fds, kMinClientFds);
}

} // namespace
} // namespace pgfly

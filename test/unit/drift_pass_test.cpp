#include "pgfly/core/drift_pass.hpp"

#include <gtest/gtest.h>

namespace pgfly {
namespace {

const std::string kTable = "16384 user_id tier";

TEST(DriftPass, RunsAtStartThenAnIntervalAfterEachPassEnds) {
	DriftPass pass;
	pass.Configure(60);
	EXPECT_TRUE(pass.Due(5));
	pass.Start();
	EXPECT_TRUE(pass.InProgress());
	EXPECT_FALSE(pass.NextDue()); // no deadline while it runs: the loop does not sleep
	DriftPass::Batch batch = pass.Next(kTable);
	EXPECT_FALSE(pass.Advance(batch, kTable, std::nullopt, 0, 0.01, 7)); // the table walk is done
	batch = pass.Next(kTable);
	EXPECT_TRUE(pass.Advance(batch, kTable, std::nullopt, 0, 0.01, 8)); // so is the missing-users walk
	EXPECT_FALSE(pass.InProgress());
	ASSERT_TRUE(pass.NextDue());
	EXPECT_DOUBLE_EQ(*pass.NextDue(), 68); // the full interval after it ended
	EXPECT_FALSE(pass.Due(67.9));
	EXPECT_TRUE(pass.Due(68));
}

TEST(DriftPass, OffMeansNeverDue) {
	DriftPass pass;
	pass.Configure(0);
	EXPECT_FALSE(pass.Due(1e9));
	EXPECT_FALSE(pass.NextDue());
}

TEST(DriftPass, WalksTheTableThenTheMissingUsersFromTheirCursors) {
	DriftPass pass;
	pass.Configure(60);
	pass.Start();
	DriftPass::Batch batch = pass.Next(kTable);
	EXPECT_TRUE(batch.restart); // the first batch learns the table
	EXPECT_EQ(batch.phase, DriftPass::Phase::kTable);
	EXPECT_FALSE(batch.after);
	EXPECT_FALSE(pass.Advance(batch, kTable, std::string("a"), 2, 0.05, 1));
	batch = pass.Next(kTable);
	EXPECT_FALSE(batch.restart);
	EXPECT_EQ(batch.phase, DriftPass::Phase::kTable);
	EXPECT_EQ(batch.after, std::optional<std::string>("a"));
	EXPECT_FALSE(pass.Advance(batch, kTable, std::nullopt, 1, 0.05, 2));
	batch = pass.Next(kTable);
	EXPECT_EQ(batch.phase, DriftPass::Phase::kMissing);
	EXPECT_FALSE(batch.after);
	EXPECT_FALSE(pass.Advance(batch, kTable, std::string("m"), 0, 0.05, 3));
	batch = pass.Next(kTable);
	EXPECT_EQ(batch.phase, DriftPass::Phase::kMissing);
	EXPECT_EQ(batch.after, std::optional<std::string>("m"));
	EXPECT_TRUE(pass.Advance(batch, kTable, std::nullopt, 4, 0.05, 4));
	EXPECT_EQ(pass.queued(), 7);
}

TEST(DriftPass, AnotherTableAttachedMidPassStartsItOver) {
	DriftPass pass;
	pass.Configure(60);
	pass.Start();
	DriftPass::Batch batch = pass.Next(kTable);
	pass.Advance(batch, kTable, std::nullopt, 0, 0.05, 1);
	batch = pass.Next(kTable);
	pass.Advance(batch, kTable, std::string("m"), 0, 0.05, 2);
	batch = pass.Next("16999 account tier");
	EXPECT_TRUE(batch.restart);
	EXPECT_EQ(batch.phase, DriftPass::Phase::kTable);
	EXPECT_FALSE(batch.after);
}

TEST(DriftPass, AChangedIntervalRestartsAPassInProgress) {
	DriftPass pass;
	pass.Configure(60);
	pass.Start();
	DriftPass::Batch batch = pass.Next(kTable);
	pass.Advance(batch, kTable, std::string("k"), 0, 0.05, 1);
	pass.Configure(60); // unchanged: goes on
	EXPECT_EQ(pass.Next(kTable).after, std::optional<std::string>("k"));
	pass.Configure(30);
	EXPECT_TRUE(pass.InProgress());
	batch = pass.Next(kTable);
	EXPECT_TRUE(batch.restart);
	EXPECT_FALSE(batch.after);
	pass.Configure(0); // off: ends it
	EXPECT_FALSE(pass.InProgress());
	EXPECT_FALSE(pass.Due(1e9));
}

TEST(DriftPass, AFailedPassIsTriedAgainAnIntervalLater) {
	DriftPass pass;
	pass.Configure(60);
	pass.Start();
	pass.End(10);
	EXPECT_FALSE(pass.InProgress());
	EXPECT_FALSE(pass.Due(69));
	EXPECT_TRUE(pass.Due(70));
}

TEST(DriftPass, BatchSizeFollowsTheTimeABatchTakes) {
	DriftPass pass;
	pass.Configure(60);
	pass.Start();
	DriftPass::Batch batch = pass.Next(kTable);
	EXPECT_EQ(batch.size, DriftPass::kFirstBatchSize);
	pass.Advance(batch, kTable, std::string("a"), 0, 0.5, 1); // ten times too slow: halved, no more
	batch = pass.Next(kTable);
	EXPECT_EQ(batch.size, DriftPass::kFirstBatchSize / 2);
	for (int i = 0; i < 20; i++) {
		pass.Advance(batch, kTable, std::string("a"), 0, 10.0, 1);
		batch = pass.Next(kTable);
	}
	EXPECT_EQ(batch.size, DriftPass::kMinBatchSize);
	for (int i = 0; i < 20; i++) {
		pass.Advance(batch, kTable, std::string("a"), 0, 0.0, 1);
		batch = pass.Next(kTable);
	}
	EXPECT_EQ(batch.size, DriftPass::kMaxBatchSize);
	pass.Advance(batch, kTable, std::string("a"), 0, DriftPass::kTargetBatchSeconds, 1);
	EXPECT_EQ(pass.Next(kTable).size, DriftPass::kMaxBatchSize);
}

} // namespace
} // namespace pgfly

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
	EXPECT_EQ(pass.NextDue(), std::optional<double>(0)); // its first batch at once
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

// A pass under a 60 s interval, started.
DriftPass
StartedPass() {
	DriftPass pass;
	pass.Configure(60);
	pass.Start();
	return pass;
}

// The next batch of `source` read up to `last_user` (nothing: its walk is done) and committed at `now`, after
// `seconds`. Returns whether the pass ended with it.
bool
ReadBatch(DriftPass &pass, const std::optional<std::string> &last_user, double now, double seconds = 0.05,
          const std::string &source = kTable) {
	const DriftPass::Batch batch = pass.Next(source);
	return pass.Advance(batch, source, last_user, 0, seconds, now);
}

TEST(DriftPass, TheNextBatchWaitsAsLongAsTheLastOneTook) {
	DriftPass pass = StartedPass();
	EXPECT_TRUE(pass.Due(5));
	EXPECT_FALSE(ReadBatch(pass, std::string("a"), 10, 0.3)); // a slow batch, a full read
	EXPECT_EQ(pass.NextDue(), std::optional<double>(10.3));
	EXPECT_FALSE(pass.Due(10.29)); // the worker's loop sleeps (or serves other work) meanwhile
	EXPECT_TRUE(pass.Due(10.3));
	EXPECT_EQ(pass.Next(kTable).after, std::optional<std::string>("a"));
	EXPECT_FALSE(ReadBatch(pass, std::nullopt, 11, 0.01)); // the table walk ends: the pause too
	EXPECT_EQ(pass.NextDue(), std::optional<double>(11.01));
	EXPECT_TRUE(ReadBatch(pass, std::nullopt, 12, 0.02));
	EXPECT_EQ(pass.NextDue(), std::optional<double>(72)); // ended: the next pass, an interval later
}

TEST(DriftPass, AFailedBatchIsTriedAgainFromItsCursorAfterAGrowingDelay) {
	DriftPass pass = StartedPass();
	DriftPass::Batch batch = pass.Next(kTable);
	pass.Advance(batch, kTable, std::string("k"), 3, 0.05, 10);
	EXPECT_EQ(pass.Fail(20), std::optional<double>(1));
	EXPECT_TRUE(pass.InProgress());
	EXPECT_EQ(pass.failures(), 1);
	EXPECT_EQ(pass.NextDue(), std::optional<double>(21));
	EXPECT_FALSE(pass.Due(20.9));
	EXPECT_TRUE(pass.Due(21));
	batch = pass.Next(kTable);
	EXPECT_FALSE(batch.restart);
	EXPECT_EQ(batch.phase, DriftPass::Phase::kTable);
	EXPECT_EQ(batch.after, std::optional<std::string>("k"));
	EXPECT_EQ(pass.Fail(21), std::optional<double>(2));
	EXPECT_EQ(pass.NextDue(), std::optional<double>(23));
	EXPECT_EQ(pass.Next(kTable).after, std::optional<std::string>("k"));
	EXPECT_EQ(pass.queued(), 3); // what the pass queued before stays counted
	// The missing-users walk keeps its cursor too.
	ReadBatch(pass, std::nullopt, 24);
	ReadBatch(pass, std::string("m"), 25);
	EXPECT_EQ(pass.Fail(26), std::optional<double>(1));
	batch = pass.Next(kTable);
	EXPECT_EQ(batch.phase, DriftPass::Phase::kMissing);
	EXPECT_EQ(batch.after, std::optional<std::string>("m"));
}

TEST(DriftPass, TheThirdFailureInARowEndsThePass) {
	DriftPass pass = StartedPass();
	ReadBatch(pass, std::string("k"), 10);
	EXPECT_TRUE(pass.Fail(20));
	EXPECT_TRUE(pass.Fail(21));
	EXPECT_FALSE(pass.Fail(23));
	EXPECT_FALSE(pass.InProgress());
	EXPECT_EQ(pass.failures(), 0);
	EXPECT_EQ(pass.NextDue(), std::optional<double>(83)); // as a pass that ended: an interval later
	EXPECT_FALSE(pass.Fail(24));                          // none in progress: nothing to retry
	EXPECT_EQ(pass.NextDue(), std::optional<double>(83));
	// The next pass starts from the beginning, with no failures.
	pass.Start();
	const DriftPass::Batch batch = pass.Next(kTable);
	EXPECT_EQ(batch.phase, DriftPass::Phase::kTable);
	EXPECT_FALSE(batch.after);
	EXPECT_EQ(pass.Fail(90), std::optional<double>(1));
}

TEST(DriftPass, ASuccessResetsTheFailures) {
	DriftPass pass = StartedPass();
	EXPECT_TRUE(pass.Fail(1));
	EXPECT_TRUE(pass.Fail(2));
	EXPECT_FALSE(pass.Next(kTable).after); // the first batch, never read
	EXPECT_FALSE(ReadBatch(pass, std::string("k"), 4));
	EXPECT_EQ(pass.failures(), 0);
	EXPECT_EQ(pass.NextDue(), std::optional<double>(4.05)); // paced by the batch, not by the last retry delay
	EXPECT_EQ(pass.Fail(5), std::optional<double>(1));      // one failure again, not the third
	EXPECT_EQ(pass.Fail(6), std::optional<double>(2));
	EXPECT_TRUE(pass.InProgress());
	EXPECT_EQ(pass.Next(kTable).after, std::optional<std::string>("k"));
}

TEST(DriftPass, ConfigureWhileABatchIsFailing) {
	DriftPass pass = StartedPass();
	ReadBatch(pass, std::string("k"), 10);
	pass.Fail(20);
	pass.Fail(21);
	pass.Configure(60); // a reload that changes nothing: the retry stands, and its count
	EXPECT_EQ(pass.failures(), 2);
	EXPECT_EQ(pass.NextDue(), std::optional<double>(23));
	EXPECT_EQ(pass.Next(kTable).after, std::optional<std::string>("k"));
	pass.Configure(30); // another interval: the pass starts over, after the retry delay, with no failures
	EXPECT_TRUE(pass.InProgress());
	EXPECT_EQ(pass.failures(), 0);
	EXPECT_EQ(pass.NextDue(), std::optional<double>(23));
	const DriftPass::Batch batch = pass.Next(kTable);
	EXPECT_TRUE(batch.restart);
	EXPECT_FALSE(batch.after);
	EXPECT_EQ(pass.Fail(23), std::optional<double>(1));
	pass.Configure(0); // off: the failing pass ends, and no other is due
	EXPECT_FALSE(pass.InProgress());
	EXPECT_EQ(pass.failures(), 0);
	EXPECT_FALSE(pass.NextDue());
	EXPECT_FALSE(pass.Due(1e9));
}

TEST(DriftPass, AnotherTableAttachedWhileABatchIsFailingStartsThePassOver) {
	DriftPass pass = StartedPass();
	ReadBatch(pass, std::nullopt, 1);
	ReadBatch(pass, std::string("m"), 2);
	EXPECT_TRUE(pass.Fail(3));
	const std::string other = "16999 account tier";
	DriftPass::Batch batch = pass.Next(other);
	EXPECT_TRUE(batch.restart);
	EXPECT_EQ(batch.phase, DriftPass::Phase::kTable);
	EXPECT_FALSE(batch.after);
	EXPECT_FALSE(ReadBatch(pass, std::string("b"), 4, 0.05, other));
	EXPECT_EQ(pass.failures(), 0);
	batch = pass.Next(other);
	EXPECT_FALSE(batch.restart);
	EXPECT_EQ(batch.phase, DriftPass::Phase::kTable);
	EXPECT_EQ(batch.after, std::optional<std::string>("b"));
}

} // namespace
} // namespace pgfly

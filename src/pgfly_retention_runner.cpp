// The runner's retention step (fly.event_retention): deletes events older than the retention, and app rows deleted
// longer ago than that with their events, through fly._retention_batch(), one short transaction of a bounded
// number of rows per pass of the loop. A batch is followed by a pause as long as it took, so that a large backlog
// (the first pass after an upgrade, say) takes at most about half of the worker's time; a pass ends at a batch
// that was not full, and the next starts kRetentionPassSeconds later.
#include "pgfly/pgfly_job_runner.hpp"

#include "pgfly/pg/sql_values.hpp"
#include "pgfly/pg/transaction.hpp"
#include "pgfly/pgfly_guc.hpp"

namespace pgfly {

namespace {

// Rows one transaction deletes at most: short transactions, few locks.
constexpr int kRetentionBatchRows = 1000;
constexpr double kRetentionPassSeconds = 600;
constexpr double kRetentionRetrySeconds = 60;

} // namespace

void
JobRunner::RetentionStep() {
	const double now = Now();
	if (!extension_present_ || settings::event_retention_s <= 0 || now < next_retention_batch_) {
		return;
	}
	try {
		int64_t removed = 0;
		bool ready = false;
		InTransaction("pg_fly: event retention", [&](pg::SpiConnection &spi) {
			// An older schema (before ALTER EXTENSION pg_fly UPDATE) has no retention function.
			auto present = spi.Query(
				"SELECT pg_catalog.to_regprocedure('fly._retention_batch(integer,interval)') IS NOT NULL", {});
			if (present.at(0).at(0) != std::string("t")) {
				return;
			}
			ready = true;
			auto rows = spi.Query("SELECT fly._retention_batch($1::pg_catalog.int4, "
			                      "pg_catalog.make_interval(secs => $2::pg_catalog.float8))",
			                      {std::to_string(kRetentionBatchRows), std::to_string(settings::event_retention_s)});
			removed = pg::ToInt(rows.at(0).at(0));
		});
		const double ended = Now();
		retention_removed_ += removed;
		if (ready && removed >= kRetentionBatchRows) {
			next_retention_batch_ = ended + (ended - now);
			return;
		}
		if (retention_removed_ > 0) {
			Log("event retention deleted " + std::to_string(retention_removed_) +
			    " event(s) and deleted app row(s) older than fly.event_retention");
		}
		retention_removed_ = 0;
		next_retention_batch_ = ended + kRetentionPassSeconds;
	} catch (const std::exception &e) {
		// What earlier batches deleted stays deleted; the pass goes on from the oldest rows left.
		next_retention_batch_ = Now() + kRetentionRetrySeconds;
		Log(std::string("event retention failed, tried again in ") +
		    std::to_string(static_cast<int>(kRetentionRetrySeconds)) + " s: " + e.what());
	}
}

} // namespace pgfly

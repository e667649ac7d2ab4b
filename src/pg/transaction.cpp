#include "pgfly/pg/transaction.hpp"
#include "pgfly/pg/compat.hpp"

extern "C" {
#include "pgstat.h"
#include "storage/bufmgr.h"
#include "storage/condition_variable.h"
#include "storage/lwlock.h"
#include "utils/snapmgr.h"
#include "utils/timeout.h"
}

namespace pgfly::pg {

namespace {

// Outside any transaction: ending one frees its memory contexts, so a guarded call around the end must not
// come back to one of them if it fails.
void
ReportIdle() {
	MemoryContextSwitchTo(TopMemoryContext);
	PgGuard([]() {
		pgstat_report_stat(false);
		pgstat_report_activity(STATE_IDLE, nullptr);
	});
}

} // namespace

void
RunInTransaction(const char *activity, const std::function<void(SpiConnection &)> &body) {
	MemoryContextSwitchTo(TopMemoryContext);
	try {
		PgGuard([&]() {
			SetCurrentStatementStartTimestamp();
			StartTransactionCommand();
			PushActiveSnapshot(GetTransactionSnapshot());
			pgstat_report_activity(STATE_RUNNING, activity);
		});
		{
			SpiConnection spi;
			body(spi);
		}
		PgGuard([]() { PopActiveSnapshot(); });
		MemoryContextSwitchTo(TopMemoryContext);
		PgGuard([]() { CommitTransactionCommand(); });
	} catch (...) {
		AbortTransactionQuietly();
		throw;
	}
	ReportIdle();
}

void
AbortTransactionQuietly() noexcept {
	try {
		MemoryContextSwitchTo(TopMemoryContext);
		PgGuard([]() {
			// What the error recovery of a backend (PostgresMain) and of autovacuum does. Inside a transaction,
			// AbortTransaction repeats most of it; an error caught outside one gets it only from here.
			HOLD_INTERRUPTS();
			disable_all_timeouts(false);
			QueryCancelPending = false;
			LWLockReleaseAll();
			ConditionVariableCancelSleep();
			pgstat_report_wait_end();
			compat::AbortBufferIOAfterError();
			UnlockBuffers();
			AbortCurrentTransaction(); // does nothing outside a transaction
			MemoryContextSwitchTo(TopMemoryContext);
			FlushErrorState();
			RESUME_INTERRUPTS();
		});
		ReportIdle();
	} catch (...) {
		// Aborting failed as well; the next StartTransactionCommand reports the state.
	}
}

} // namespace pgfly::pg

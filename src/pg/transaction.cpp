#include "pgfly/pg/transaction.hpp"

extern "C" {
#include "pgstat.h"
#include "utils/snapmgr.h"
}

namespace pgfly::pg {

void
RunInTransaction(const char *activity, const std::function<void(SpiConnection &)> &body) {
	PgGuard([&]() {
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		PushActiveSnapshot(GetTransactionSnapshot());
		pgstat_report_activity(STATE_RUNNING, activity);
	});
	try {
		{
			SpiConnection spi;
			body(spi);
		}
		PgGuard([]() {
			PopActiveSnapshot();
			CommitTransactionCommand();
			pgstat_report_stat(false);
			pgstat_report_activity(STATE_IDLE, nullptr);
		});
	} catch (...) {
		AbortTransactionQuietly();
		throw;
	}
}

void
AbortTransactionQuietly() noexcept {
	try {
		PgGuard([]() {
			AbortCurrentTransaction(); // does nothing outside a transaction
			pgstat_report_activity(STATE_IDLE, nullptr);
		});
	} catch (...) {
		// Aborting failed as well; the next StartTransactionCommand reports the state.
	}
}

} // namespace pgfly::pg

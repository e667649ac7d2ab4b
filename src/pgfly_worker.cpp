// The worker loop. It sleeps on its latch until a committed tier change wakes it (or the poll timer fires),
// then looks at the reconcile queue in a short transaction. The main function is Postgres-regime code: no
// C++ object with a destructor lives in it, and every C++ step runs through InvokeCpp.
#include "pgfly/pg/spi.hpp"

extern "C" {
#include "access/xact.h"
#include "commands/extension.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/snapmgr.h"
}

#include <cstdlib>

#include "pgfly/core/token_source.hpp"
#include "pgfly/pgfly_guc.hpp"
#include "pgfly/pgfly_shmem.hpp"
#include "pgfly/pgfly_worker.hpp"

extern "C" PGDLLEXPORT void PgFlyWorkerMain(Datum main_arg);

namespace pgfly {

namespace {

constexpr int kRestartSeconds = 1;
constexpr long kErrorPauseMs = 1000;

void
PublishWorker(SharedState *shared, bool running) {
	SpinLockAcquire(&shared->mutex);
	shared->worker_pid = running ? MyProcPid : 0;
	shared->worker_procno = running ? MyProc->pgprocno : -1;
	shared->worker_started_at = running ? GetCurrentTimestamp() : 0;
	SpinLockRelease(&shared->mutex);
}

void
UnpublishWorker(int, Datum) noexcept {
	if (SharedState *shared = Shared()) {
		PublishWorker(shared, false);
	}
}

// Resolves the token only to report where it comes from; the value never leaves this function yet.
void
RefreshTokenSource(SharedState *shared) {
	ResolvedToken resolved = ResolveToken(api_token, api_token_file, getenv("FLY_API_TOKEN"));
	if (!resolved.problem.empty()) {
		const std::string problem = resolved.problem;
		pg::PgGuard([&]() { elog(LOG, "pg_fly worker: %s", problem.c_str()); });
	}
	SpinLockAcquire(&shared->mutex);
	shared->token_source = static_cast<int>(resolved.source);
	SpinLockRelease(&shared->mutex);
}

// One pass over the queue. For now the worker counts the items that are due; reconciling them with Fly
// comes with the provisioning flow.
void
ReadQueue(SharedState *shared) {
	pg::PgGuard([]() {
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		PushActiveSnapshot(GetTransactionSnapshot());
		pgstat_report_activity(STATE_RUNNING, "pg_fly: reading the reconcile queue");
	});
	int64 ready = -1;
	const bool installed =
	    pg::PgGuardResult([]() { return !RecoveryInProgress() && OidIsValid(get_extension_oid("pg_fly", true)); });
	if (installed) {
		pg::SpiConnection spi;
		auto rows = spi.Query("SELECT pg_catalog.count(*) FROM fly.reconcile_queue "
		                      "WHERE run_after OPERATOR(pg_catalog.<=) pg_catalog.now()",
		                      {}, true);
		ready = std::stoll(rows.at(0).at(0).value_or("0"));
	}
	pg::PgGuard([]() {
		PopActiveSnapshot();
		CommitTransactionCommand();
		pgstat_report_stat(false);
		pgstat_report_activity(STATE_IDLE, nullptr);
	});
	SpinLockAcquire(&shared->mutex);
	shared->queue_ready = ready;
	SpinLockRelease(&shared->mutex);
}

void
RecordWake(SharedState *shared, bool latch_set) {
	const bool committed_work = pg_atomic_exchange_u32(&shared->wake_pending, 0) != 0;
	if (committed_work) {
		pg_atomic_fetch_add_u64(&shared->commit_wakes, 1);
	} else if (!latch_set) {
		pg_atomic_fetch_add_u64(&shared->timer_wakes, 1);
	}
	pg_atomic_fetch_add_u64(&shared->iterations, 1);
	SpinLockAcquire(&shared->mutex);
	shared->last_wake_at = GetCurrentTimestamp();
	SpinLockRelease(&shared->mutex);
}

} // namespace

void
RegisterWorker() {
	BackgroundWorker worker;
	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	// Only once the server accepts writes: a standby's worker starts at promotion.
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = kRestartSeconds;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "pg_fly");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "PgFlyWorkerMain");
	snprintf(worker.bgw_name, BGW_MAXLEN, "pg_fly worker");
	snprintf(worker.bgw_type, BGW_MAXLEN, "pg_fly worker");
	RegisterBackgroundWorker(&worker);
}

} // namespace pgfly

void
PgFlyWorkerMain(Datum) {
	pgfly::SharedState *shared = pgfly::Shared();
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	BackgroundWorkerInitializeConnection(pgfly::database_name, nullptr, 0);
	pgstat_report_appname("pg_fly worker");
	pgfly::PublishWorker(shared, true);
	on_shmem_exit(pgfly::UnpublishWorker, 0);
	pgfly::pg::InvokeCpp(pgfly::RefreshTokenSource, shared);
	ereport(LOG, (errmsg("pg_fly worker started in database \"%s\"", pgfly::database_name)));

	// A commit may have asked for a wake-up before this worker existed: look at the queue once at start.
	bool latch_set = true;
	for (;;) {
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending) {
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			pgfly::pg::InvokeCpp(pgfly::RefreshTokenSource, shared);
		}
		pgfly::RecordWake(shared, latch_set);

		// An error in one pass is logged and the pass abandoned; the worker goes on after a pause instead of
		// crash-looping through restarts.
		volatile bool failed = false;
		MemoryContext loop_context = CurrentMemoryContext;
		PG_TRY();
		{
			pgfly::pg::InvokeCpp(pgfly::ReadQueue, shared);
		}
		PG_CATCH();
		{
			MemoryContextSwitchTo(loop_context);
			EmitErrorReport();
			FlushErrorState();
			AbortCurrentTransaction();
			pgstat_report_activity(STATE_IDLE, nullptr);
			failed = true;
		}
		PG_END_TRY();

		const long timeout_ms = failed ? pgfly::kErrorPauseMs : pgfly::poll_interval_ms;
		const int events =
		    WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, timeout_ms, PG_WAIT_EXTENSION);
		latch_set = (events & WL_LATCH_SET) != 0;
		ResetLatch(MyLatch);
	}
}

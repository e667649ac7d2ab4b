// The worker loop. It sleeps on its latch and on the Fly client's sockets until a committed tier change, a
// Fly answer or a timer wakes it; then it claims due work and advances the operations in flight
// (pgfly_job_runner.cpp). PgFlyWorkerMain is Postgres-regime code with no C++ objects; the loop itself runs
// in C++ through InvokeCpp, reaching PostgreSQL only through guarded calls.
#include "pgfly/pg/spi.hpp"

#include <algorithm>
#include "pgfly/pg/compat.hpp"

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
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
}

#include <cstdlib>

#include "pgfly/pgfly_guc.hpp"
#include "pgfly/pgfly_job_runner.hpp"
#include "pgfly/pgfly_shmem.hpp"
#include "pgfly/pg/transaction.hpp"
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
	shared->worker_procno = running ? pg::compat::MyProcIndex() : -1;
	shared->worker_started_at = running ? GetCurrentTimestamp() : 0;
	SpinLockRelease(&shared->mutex);
}

void
UnpublishWorker(int, Datum) noexcept {
	if (SharedState *shared = Shared()) {
		PublishWorker(shared, false);
	}
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

// One pass of the loop failed (a PostgreSQL error or an exception): log it and pause briefly, instead of
// crash-looping through worker restarts. Operations in flight keep going.
void
ReportLoopError(const char *what) {
	const std::string message = what;
	pg::AbortTransactionQuietly();
	pg::PgGuard([&]() { elog(LOG, "pg_fly worker: %s", message.c_str()); });
}

// Sleeps on the latch alone (not on the client's sockets) for the error pause.
void
PauseAfterError() noexcept {
	try {
		pg::PgGuard([]() {
			(void)WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, kErrorPauseMs, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
		});
	} catch (...) {
		pg_usleep(kErrorPauseMs * 1000L);
	}
}

// The loop's wait: the latch, postmaster death and the client's event fd. Built once and reused, because every
// new WaitEventSet needs a descriptor of its own (its epoll fd), which a worker that reserved most of its
// descriptors for Fly connections may not get. Rebuilt only when the client's event fd changes (a reconfigured
// client, or a multi handle renewed after a failure).
class LoopWait {
public:
	LoopWait() = default;
	LoopWait(const LoopWait &) = delete;
	LoopWait &operator=(const LoopWait &) = delete;
	~LoopWait() {
		try {
			Free();
		} catch (...) {
			// The process is ending: its descriptors close with it.
		}
	}

	// The WL_* events that ended the wait (0 on timeout).
	int
	Wait(int socket, long timeout_ms) {
		if (set_ == nullptr || socket != socket_) {
			Build(socket);
		}
		return pg::PgGuardResult([&]() {
			WaitEvent occurred[kEvents];
			const int count = WaitEventSetWait(set_, timeout_ms, occurred, kEvents, PG_WAIT_EXTENSION);
			int events = 0;
			for (int i = 0; i < count; i++) {
				events |= occurred[i].events;
			}
			return events;
		});
	}

	void
	Free() {
		if (set_ != nullptr) {
			WaitEventSet *set = set_;
			set_ = nullptr;
			pg::PgGuard([&]() { FreeWaitEventSet(set); });
		}
	}

private:
	static constexpr int kEvents = 3;

	void
	Build(int socket) {
		Free();
		socket_ = socket;
		pg::PgGuard([&]() {
			set_ = pg::compat::NewLongLivedWaitEventSet(kEvents);
			AddWaitEventToSet(set_, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, nullptr);
			AddWaitEventToSet(set_, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, nullptr, nullptr);
			if (socket != PGINVALID_SOCKET) {
				AddWaitEventToSet(set_, WL_SOCKET_READABLE, socket, nullptr, nullptr);
			}
		});
	}

	WaitEventSet *set_ = nullptr;
	int socket_ = PGINVALID_SOCKET;
};

void
WorkerLoop(SharedState *shared) {
	// An application transaction holding a queue or app row (its trigger upserted it) must not stall every
	// user's work: the worker's statements give up after a second and the item is retried.
	pg::PgGuard([]() { SetConfigOption("lock_timeout", "1000", PGC_SUSET, PGC_S_OVERRIDE); });
	// The drift pass and the policy step read the subscription table as its owner, whose row security or
	// functions may take their time: no statement may hold the loop for longer than a minute (the longest, a
	// drift batch over a table without an index, takes about a second per 100,000 rows).
	pg::PgGuard([]() { SetConfigOption("statement_timeout", "60000", PGC_SUSET, PGC_S_OVERRIDE); });
	// The worker is a superuser: a database owner's ALTER DATABASE ... SET search_path must not choose the
	// operators and functions its SQL resolves.
	pg::PgGuard([]() { SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_OVERRIDE); });
	// Each statement sees what committed before it (the drift pass confirms a difference against a fresh read),
	// whatever default_transaction_isolation the server or database sets.
	pg::PgGuard(
		[]() { SetConfigOption("default_transaction_isolation", "read committed", PGC_SUSET, PGC_S_OVERRIDE); });
	JobRunner runner(shared);
	LoopWait wait;
	// A commit may have asked for a wake-up before this worker existed: look at the queue once at start.
	bool latch_set = true;
	for (;;) {
		long sleep_ms = 0;
		bool failed = false;
		try {
			// SIGTERM ends the process here (FATAL exits without unwinding); a cancel request is an ERROR that
			// abandons this pass only.
			pg::PgGuard([]() { CHECK_FOR_INTERRUPTS(); });
			if (ConfigReloadPending) {
				ConfigReloadPending = false;
				pg::PgGuard([]() { ProcessConfigFile(PGC_SIGHUP); });
				runner.Configure();
			}
			RecordWake(shared, latch_set);
			runner.Drive();
			runner.Dispatch();
			runner.Drive();
			runner.PublishStatus();
			sleep_ms = runner.SleepMs();
		} catch (const std::exception &e) {
			ReportLoopError(e.what());
			sleep_ms = kErrorPauseMs;
			failed = true;
		}
		// Not after a failed pass: its pause must hold however many commits come meanwhile.
		if (!failed && sleep_ms != 0 && runner.WaitsForWork()) {
			// Commits that queue work wake the worker only now. The pairing with the committing backend (it bumps
			// work_commits, then reads worker_idle): a commit the last claim may have missed is seen here, or
			// the commit sees the flag and sets the latch.
			// With tier changes logged since the last fold, the fold timer wakes the worker within 200 ms anyway:
			// only a commit that asked for a prompt start does before.
			const uint32 idle = runner.FoldDue() ? kIdleFoldDue : kIdle;
			pg_atomic_write_u32(&shared->worker_idle, idle);
			pg_memory_barrier();
			// A change logged after SleepMs looked is folded on time too.
			if (idle == kIdleFoldDue) {
				sleep_ms = sleep_ms < 0 ? runner.FoldInMs() : std::min(sleep_ms, runner.FoldInMs());
			}
			if (pg_atomic_read_u64(&shared->urgent_commits) != runner.UrgentFolded()) {
				sleep_ms = sleep_ms < 0 ? runner.UrgentFoldInMs() : std::min(sleep_ms, runner.UrgentFoldInMs());
			}
			if (idle == kIdle && pg_atomic_read_u64(&shared->work_commits) != runner.CommitsSeen()) {
				sleep_ms = 0;
			}
		}
		int events = WL_LATCH_SET;
		try {
			events = wait.Wait(runner.EventFd(), sleep_ms);
			pg_atomic_write_u32(&shared->worker_idle, 0);
			pg::PgGuard([]() { ResetLatch(MyLatch); });
		} catch (const std::exception &e) {
			pg_atomic_write_u32(&shared->worker_idle, 0);
			ReportLoopError(e.what());
			try {
				wait.Free(); // built afresh by the next wait
			} catch (const std::exception &) {
				// Leaked at worst: the next wait builds another.
			}
			// A wait that keeps failing must not turn into a busy loop.
			PauseAfterError();
		}
		latch_set = (events & WL_LATCH_SET) != 0;
	}
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

	BackgroundWorkerInitializeConnection(pgfly::settings::database_name, nullptr, 0);
	pgstat_report_appname("pg_fly worker");
	pgfly::PublishWorker(shared, true);
	pgfly::PublishWorkerDatabase(pgfly::settings::database_name);
	on_shmem_exit(pgfly::UnpublishWorker, 0);
	ereport(LOG, (errmsg("pg_fly worker started in database \"%s\"", pgfly::settings::database_name)));
	// Returns only by an error, which ends the worker; the postmaster starts it again after a second.
	pgfly::pg::InvokeCpp(pgfly::WorkerLoop, shared);
}

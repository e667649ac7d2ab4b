#include "pgfly/pgfly_shmem.hpp"
#include "pgfly/pg/compat.hpp"

extern "C" {
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
}

#include <cstring>

namespace pgfly {

namespace {

SharedState *shared_state = nullptr;
shmem_request_hook_type previous_shmem_request_hook = nullptr;
shmem_startup_hook_type previous_shmem_startup_hook = nullptr;

// Per backend: whether the current transaction enqueued work, and whether our callback is registered.
bool wake_at_commit = false;
// Work that needs no prompt start (a relabel in the log): counted in work_commits, without setting the latch.
bool note_at_commit = false;
uint32 passes_at_commit = 0; // kHealthPass etc.
bool xact_callback_registered = false;

void
ShmemRequest() noexcept {
	if (previous_shmem_request_hook) {
		previous_shmem_request_hook();
	}
	RequestAddinShmemSpace(MAXALIGN(sizeof(SharedState)));
}

void
ShmemStartup() noexcept {
	if (previous_shmem_startup_hook) {
		previous_shmem_startup_hook();
	}
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	bool found = false;
	shared_state = static_cast<SharedState *>(ShmemInitStruct("pg_fly", sizeof(SharedState), &found));
	if (!found) {
		memset(shared_state, 0, sizeof(SharedState));
		SpinLockInit(&shared_state->mutex);
		shared_state->worker_pid = 0;
		shared_state->worker_procno = -1;
		shared_state->worker_started_at = 0;
		shared_state->last_wake_at = 0;
		shared_state->queue_ready = -1;
		shared_state->token_source = 0;
		pg_atomic_init_u32(&shared_state->wake_pending, 0);
		pg_atomic_init_u32(&shared_state->health_pass_requested, 0);
		pg_atomic_init_u32(&shared_state->orphan_pass_requested, 0);
		pg_atomic_init_u32(&shared_state->rollout_pass_requested, 0);
		pg_atomic_init_u32(&shared_state->policy_pass_requested, 0);
		pg_atomic_init_u64(&shared_state->commit_wakes, 0);
		pg_atomic_init_u64(&shared_state->timer_wakes, 0);
		pg_atomic_init_u64(&shared_state->iterations, 0);
		pg_atomic_init_u32(&shared_state->worker_idle, 0);
		pg_atomic_init_u64(&shared_state->work_commits, 0);
		pg_atomic_init_u64(&shared_state->urgent_commits, 0);
		pg_atomic_init_u64(&shared_state->wakes_sent, 0);
	}
	LWLockRelease(AddinShmemInitLock);
}

// Runs at every transaction end of a backend that ever enqueued work. Only atomics and SetLatch: nothing
// here can raise an error.
void
WakeXactCallback(XactEvent event, void *) noexcept {
	switch (event) {
	case XACT_EVENT_COMMIT:
	case XACT_EVENT_PARALLEL_COMMIT:
		if ((wake_at_commit || note_at_commit) && shared_state != nullptr) {
			// The passes are asked for only now, so that the worker's pass sees what this transaction wrote.
			if (passes_at_commit & kHealthPass) {
				pg_atomic_write_u32(&shared_state->health_pass_requested, 1);
			}
			if (passes_at_commit & kOrphanPass) {
				pg_atomic_write_u32(&shared_state->orphan_pass_requested, 1);
			}
			if (passes_at_commit & kRolloutPass) {
				pg_atomic_write_u32(&shared_state->rollout_pass_requested, 1);
			}
			if (passes_at_commit & kPolicyPass) {
				pg_atomic_write_u32(&shared_state->policy_pass_requested, 1);
			}
			// A full barrier, paired with the worker's: it either sees this commit when it re-reads the counter
			// after setting worker_idle, or this read sees worker_idle set.
			if (wake_at_commit) {
				pg_atomic_fetch_add_u64(&shared_state->urgent_commits, 1);
			}
			pg_atomic_fetch_add_u64(&shared_state->work_commits, 1);
			const uint32 idle = pg_atomic_read_u32(&shared_state->worker_idle);
			const bool wake = passes_at_commit != 0 || idle == kIdle || (idle == kIdleFoldDue && wake_at_commit);
			uint32 expected = 0;
			if (wake && pg_atomic_compare_exchange_u32(&shared_state->wake_pending, &expected, 1)) {
				pg_atomic_fetch_add_u64(&shared_state->wakes_sent, 1);
				SpinLockAcquire(&shared_state->mutex);
				int procno = shared_state->worker_procno;
				SpinLockRelease(&shared_state->mutex);
				if (procno >= 0) {
					SetLatch(pg::compat::ProcLatch(procno));
				}
			}
		}
		wake_at_commit = false;
		note_at_commit = false;
		passes_at_commit = 0;
		break;
	case XACT_EVENT_ABORT:
	case XACT_EVENT_PARALLEL_ABORT:
	case XACT_EVENT_PREPARE:
		// A prepared transaction's work is found by the worker's poll timer after COMMIT PREPARED.
		wake_at_commit = false;
		note_at_commit = false;
		passes_at_commit = 0;
		break;
	default:
		break;
	}
}

} // namespace

SharedState *
Shared() {
	return shared_state;
}

void
PublishWorkerDatabase(const char *database) {
	if (shared_state == nullptr) {
		return;
	}
	SpinLockAcquire(&shared_state->mutex);
	strlcpy(shared_state->worker_database, database, sizeof(shared_state->worker_database));
	SpinLockRelease(&shared_state->mutex);
}

void
InstallShmemHooks() {
	previous_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = ShmemRequest;
	previous_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = ShmemStartup;
}

namespace {

void
RegisterCallbackOnce() {
	if (!xact_callback_registered) {
		RegisterXactCallback(WakeXactCallback, nullptr);
		xact_callback_registered = true;
	}
}

} // namespace

void
WakeWorkerAtCommit(uint32 passes) {
	RegisterCallbackOnce();
	wake_at_commit = true;
	passes_at_commit |= passes;
}

void
NoteWorkAtCommit() {
	RegisterCallbackOnce();
	note_at_commit = true;
}

} // namespace pgfly

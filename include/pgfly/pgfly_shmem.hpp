// State shared between the worker and the backends that enqueue work: how to wake the worker, and what it
// reports about itself (fly.worker_status()).
#pragma once

#include "pgfly/pg/postgres.hpp"

extern "C" {
#include "port/atomics.h"
#include "storage/spin.h"
#include "utils/timestamp.h"
}

namespace pgfly {

constexpr uint32 kIdle = 1;
constexpr uint32 kIdleFoldDue = 2;

struct SharedState {
	slock_t mutex;
	// Guarded by mutex.
	pid_t worker_pid;
	int worker_procno; // -1 while no worker runs
	TimestampTz worker_started_at;
	TimestampTz last_wake_at;
	int64 queue_ready;
	int token_source;  // a pgfly::TokenSource
	int in_flight;     // requests sent and not yet answered
	int rate_limited;  // requests held back by the rate limiter or the breaker
	int breaker_state; // a CircuitBreaker::State
	TimestampTz breaker_reopen_at;
	TimestampTz last_error_at;
	char last_error[512];              // the last failed attempt's message (never a secret)
	char worker_database[NAMEDATALEN]; // the database the worker connected to (fly.worker_status())
	// Set by a committing backend that enqueued work; the worker swaps it back to 0 when it wakes, so many
	// concurrent commits cost one SetLatch.
	pg_atomic_uint32 wake_pending;
	pg_atomic_uint32 health_pass_requested;  // fly.check_fly_apps_health()
	pg_atomic_uint32 orphan_pass_requested;  // fly.find_orphan_apps(), fly.delete_orphan_apps()
	pg_atomic_uint32 rollout_pass_requested; // fly.start_image_rollout(), fly.resume_image_rollout()
	pg_atomic_uint32 policy_pass_requested;  // a change of fly.tier_policies
	pg_atomic_uint64 commit_wakes;
	pg_atomic_uint64 timer_wakes;
	pg_atomic_uint64 iterations;
	// Wake gating. The worker sets worker_idle before it sleeps when it waits for work it could start now
	// (configuration usable, breaker closed, a free slot, no request held back by the rate limiter); a commit that
	// queued work bumps work_commits and wakes the worker only then. Otherwise the worker finds the work on its
	// own timers (an operation's end, the limiter's next send). The pairing (worker: set idle, barrier, re-read
	// work_commits; backend: bump work_commits, barrier, read idle) loses no wake.
	// 0: busy; kIdle: wake for any commit that logged or queued work; kIdleFoldDue: the worker will fold the
	// tier-change log within 200 ms anyway, so only a commit that asked for a prompt start wakes it.
	pg_atomic_uint32 worker_idle;
	pg_atomic_uint64 work_commits;   // commits that queued work (or asked for a pass)
	pg_atomic_uint64 urgent_commits; // of those, the ones that asked for a prompt start (not a relabel)
	pg_atomic_uint64 wakes_sent;     // of those, the commits that set the worker's latch
};

// Null until shared memory is attached (always attached when pg_fly is preloaded).
SharedState *Shared();

// Records the database the worker connected to; called by the worker when it starts.
void PublishWorkerDatabase(const char *database);

// Hooks shared memory into the postmaster; called from _PG_init.
void InstallShmemHooks();

// Passes a backend can ask the worker for (bits), besides looking at the queue.
constexpr uint32 kHealthPass = 1;
constexpr uint32 kOrphanPass = 2;
constexpr uint32 kRolloutPass = 4;
constexpr uint32 kPolicyPass = 8;

// Arranges for the worker to be told when the current transaction commits, to look at the queue and run the
// given passes; nothing happens if it aborts. A pass is asked for with a wake every time; queued work wakes the
// worker only while it waits for work it could start (SharedState::worker_idle).
void WakeWorkerAtCommit(uint32 passes = 0);

// Counts the current transaction's commit in work_commits without waking the worker: work it finds within its
// fold interval (a relabel in fly.tier_intents).
void NoteWorkAtCommit();

} // namespace pgfly

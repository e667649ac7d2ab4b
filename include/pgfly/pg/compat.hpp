// Every difference between the PostgreSQL majors pg_fly builds against (15, 17, 18) lives here, and only here:
// no other file tests PG_VERSION_NUM. Each helper is named for what the caller wants, not for the version.
#pragma once

#include "pgfly/pg/postgres.hpp"

extern "C" {
#include "storage/bufmgr.h"
#include "storage/latch.h"
#include "storage/proc.h"

#if PG_VERSION_NUM < 160000
// 16 and later declare it in fmgr.h.
PGDLLEXPORT void _PG_init(void);
#endif
}

namespace pgfly::pg::compat {

// This backend's index in ProcGlobal->allProcs, which other backends use to set its latch.
// 17 replaced PGPROC.pgprocno with the global MyProcNumber.
inline int
MyProcIndex() {
#if PG_VERSION_NUM >= 170000
	return MyProcNumber;
#else
	return MyProc->pgprocno;
#endif
}

// The latch of the backend at that index.
inline Latch *
ProcLatch(int proc_index) {
	return &GetPGProcByNumber(proc_index)->procLatch;
}

// A wait event set that lives until it is freed, owned by no resource owner (the worker keeps it across
// transactions). Before 17 the first argument was the memory context; from 17 it is the resource owner, and the
// set is then allocated in TopMemoryContext.
inline WaitEventSet *
NewLongLivedWaitEventSet(int events) {
#if PG_VERSION_NUM >= 170000
	return CreateWaitEventSet(nullptr, events);
#else
	return CreateWaitEventSet(TopMemoryContext, events);
#endif
}

// The part of a backend's error recovery that ends a buffer I/O in progress. From 16 the resource owner of the
// aborted transaction does it (16's AbortBufferIO takes the buffer and is the resource owner's; 17 removed it).
inline void
AbortBufferIOAfterError() {
#if PG_VERSION_NUM < 160000
	AbortBufferIO();
#endif
}

} // namespace pgfly::pg::compat

// Library entry: the magic block and _PG_init (settings, shared memory, the worker).
#include "pgfly/pg/compat.hpp"

extern "C" {
#include "utils/guc.h"
}

#include "pgfly/pgfly_guc.hpp"
#include "pgfly/pgfly_shmem.hpp"
#include "pgfly/pgfly_trigger_cache.hpp"
#include "pgfly/pgfly_worker.hpp"

extern "C" {

PG_MODULE_MAGIC;

// Postgres-regime code: nothing here throws.
void
_PG_init(void) {
	pgfly::settings::Define();
	if (!process_shared_preload_libraries_in_progress) {
		ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
		                errmsg("pg_fly must be loaded through shared_preload_libraries"),
		                errhint("Add pg_fly to shared_preload_libraries in postgresql.conf and restart the server.")));
	}
	MarkGUCPrefixReserved("fly");
	if (IsBinaryUpgrade) {
		return;
	}
	// Backends inherit the callback from the postmaster. noexcept: it only marks the cache.
	pgfly::TriggerCache::RegisterCallback();
	pgfly::InstallShmemHooks();
	pgfly::RegisterWorker();
}

} // extern "C"

// The pg_fly background worker (one per cluster, connected to fly.database_name).
#pragma once

namespace pgfly {

// Registers the static worker; called from _PG_init while shared_preload_libraries is being processed.
void RegisterWorker();

} // namespace pgfly

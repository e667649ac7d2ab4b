// Included last by every .cpp file of the PostgreSQL-free core: fails the build if a PostgreSQL header slipped in,
// which keeps the core unit-testable without a server and free of longjmp-based error handling.
#pragma once

#ifdef POSTGRES_H
static_assert(false, "pg_fly core files must not include postgres.h");
#endif

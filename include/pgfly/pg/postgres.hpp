// The one place PostgreSQL's C headers enter C++ code: postgres.h first, everything in C linkage.
// PostgreSQL 15's headers use `register`, which C++17 forbids; the Makefile passes -Wno-register.
#pragma once

extern "C" {
#include "postgres.h"

#include "access/xact.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/elog.h"
#include "utils/memutils.h"
}

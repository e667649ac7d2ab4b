// A short transaction for C++ code: start, SPI, run the body, commit; on an exception, abort and rethrow.
#pragma once

#include <functional>

#include "pgfly/pg/spi.hpp"

namespace pgfly::pg {

// `activity` shows in pg_stat_activity while the transaction runs.
void RunInTransaction(const char *activity, const std::function<void(SpiConnection &)> &body);

// Aborts the current transaction if one is open; never throws.
void AbortTransactionQuietly() noexcept;

} // namespace pgfly::pg

// Guarded SPI for C++ code: every PostgreSQL call goes through PgGuard, so its ERROR arrives as a PgError.
// Parameters and results travel as text (NULL as an empty optional); statements cast where they need types.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "pgfly/pg/guard.hpp"

namespace pgfly::pg {

using Value = std::optional<std::string>;
using Row = std::vector<Value>;

// An SPI connection for the lifetime of the object. On an exception the connection is left to the
// transaction abort that follows, which cleans up SPI without raising again.
class SpiConnection {
public:
	SpiConnection();
	~SpiConnection();
	SpiConnection(const SpiConnection &) = delete;
	SpiConnection &operator=(const SpiConnection &) = delete;

	// Runs a statement with text parameters. `sql` must be a string literal: its address keys the
	// backend's cache of prepared plans. Returns the rows it produced (SELECT, or RETURNING).
	std::vector<Row> Query(const char *sql, const std::vector<Value> &params, bool read_only = false);

private:
	int uncaught_at_start;
};

} // namespace pgfly::pg

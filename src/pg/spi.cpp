#include "pgfly/pg/spi.hpp"

extern "C" {
#include "utils/builtins.h"
#include "catalog/pg_type.h"
}

#include <exception>
#include <unordered_map>

namespace pgfly::pg {

namespace {

constexpr int kMaxParams = 32;

// Plans live for the backend's lifetime; the plan cache revalidates them after DDL. Keyed by the statement's
// text, not its address: a statement built at run time must neither leak a plan per call nor meet another's.
std::unordered_map<std::string, SPIPlanPtr> &
PlanCache() {
	static std::unordered_map<std::string, SPIPlanPtr> cache;
	return cache;
}

SPIPlanPtr
PreparedPlan(const char *sql, int param_count) {
	auto &cache = PlanCache();
	auto found = cache.find(sql);
	if (found != cache.end()) {
		return found->second;
	}
	SPIPlanPtr plan = PgGuardResult([&]() {
		Oid types[kMaxParams];
		for (int i = 0; i < param_count; i++) {
			types[i] = TEXTOID;
		}
		SPIPlanPtr prepared = SPI_prepare(sql, param_count, types);
		if (prepared == nullptr) {
			elog(ERROR, "pg_fly: could not prepare a statement: %s", SPI_result_code_string(SPI_result));
		}
		SPI_keepplan(prepared);
		return prepared;
	});
	cache.emplace(sql, plan);
	return plan;
}

} // namespace

SpiConnection::SpiConnection() : uncaught_at_start(std::uncaught_exceptions()) {
	PgGuard([]() {
		if (SPI_connect() != SPI_OK_CONNECT) {
			elog(ERROR, "pg_fly: SPI_connect failed");
		}
	});
}

SpiConnection::~SpiConnection() {
	if (std::uncaught_exceptions() > uncaught_at_start) {
		return;
	}
	try {
		PgGuard([]() { SPI_finish(); });
	} catch (...) {
		// SPI_finish only fails when SPI is not connected; the transaction end cleans up either way.
	}
}

std::vector<Row>
SpiConnection::Query(const char *sql, const std::vector<Value> &params, bool read_only) {
	const int param_count = static_cast<int>(params.size());
	if (param_count > kMaxParams) {
		throw std::logic_error("pg_fly: too many statement parameters");
	}
	SPIPlanPtr plan = PreparedPlan(sql, param_count);

	// Built before the guarded call: the call itself must not own anything with a destructor.
	Datum values[kMaxParams];
	char nulls[kMaxParams];
	for (int i = 0; i < param_count; i++) {
		nulls[i] = params[i] ? ' ' : 'n';
		values[i] = 0;
	}
	PgGuard([&]() {
		for (int i = 0; i < param_count; i++) {
			if (params[i]) {
				values[i] = PointerGetDatum(cstring_to_text_with_len(params[i]->data(), params[i]->size()));
			}
		}
	});

	int result = PgGuardResult([&]() { return SPI_execute_plan(plan, values, nulls, read_only, 0); });
	if (result < 0) {
		throw std::runtime_error(std::string("pg_fly: statement failed: ") + SPI_result_code_string(result));
	}

	std::vector<Row> rows;
	if (SPI_tuptable == nullptr) {
		return rows;
	}
	SPITupleTable *table = SPI_tuptable;
	const int column_count = table->tupdesc->natts;
	rows.reserve(SPI_processed);
	for (uint64 r = 0; r < SPI_processed; r++) {
		Row row;
		row.reserve(column_count);
		for (int c = 1; c <= column_count; c++) {
			char *cstring = PgGuardResult([&]() { return SPI_getvalue(table->vals[r], table->tupdesc, c); });
			if (cstring == nullptr) {
				row.emplace_back(std::nullopt);
			} else {
				row.emplace_back(std::string(cstring));
				pfree(cstring);
			}
		}
		rows.push_back(std::move(row));
	}
	return rows;
}

} // namespace pgfly::pg

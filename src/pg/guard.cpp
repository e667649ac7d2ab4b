#include "pgfly/pg/guard.hpp"

extern "C" {
#include "mb/pg_wchar.h"
}

#include <cstring>

namespace pgfly::pg {

namespace {

void
CopyTruncated(char *target, size_t size, const char *source) noexcept {
	if (source == nullptr) {
		target[0] = '\0';
		return;
	}
	// Never cut inside a character of the database's encoding: clients refuse a broken one. pg_mbcliplen only
	// measures, it never raises an error.
	const int length = static_cast<int>(strnlen(source, size));
	const size_t kept = static_cast<size_t>(pg_mbcliplen(source, length, static_cast<int>(size - 1)));
	memcpy(target, source, kept);
	target[kept] = '\0';
}

int
SqlStateToCode(const std::string &sqlstate) noexcept {
	if (sqlstate.size() != 5) {
		return ERRCODE_INTERNAL_ERROR;
	}
	const char *s = sqlstate.c_str();
	return MAKE_SQLSTATE(s[0], s[1], s[2], s[3], s[4]);
}

} // namespace

PgError::PgError(const ErrorData *edata)
	: sqlerrcode(edata->sqlerrcode), message(edata->message ? edata->message : "unknown PostgreSQL error"),
	  detail(edata->detail ? edata->detail : ""), hint(edata->hint ? edata->hint : "") {}

void
ThrowPgError(ErrorData *edata) {
	PgError error(edata);
	FreeErrorData(edata);
	throw error;
}

void
PendingError::Set(int code, const char *msg, const char *det, const char *hnt) noexcept {
	sqlerrcode = code;
	CopyTruncated(message, sizeof(message), msg);
	CopyTruncated(detail, sizeof(detail), det);
	CopyTruncated(hint, sizeof(hint), hnt);
}

void
PendingError::SetFromException(std::exception_ptr exception) noexcept {
	try {
		std::rethrow_exception(exception);
	} catch (const PgError &e) {
		Set(e.sqlerrcode, e.message.c_str(), e.detail.c_str(), e.hint.c_str());
	} catch (const SqlError &e) {
		Set(SqlStateToCode(e.sqlstate), e.what(), e.detail.c_str(), e.hint.c_str());
	} catch (const std::bad_alloc &) {
		Set(ERRCODE_OUT_OF_MEMORY, "pg_fly: out of memory", nullptr, nullptr);
	} catch (const std::exception &e) {
		Set(ERRCODE_INTERNAL_ERROR, e.what(), nullptr, nullptr);
	} catch (...) {
		Set(ERRCODE_INTERNAL_ERROR, "pg_fly: unknown C++ exception", nullptr, nullptr);
	}
}

void
PendingError::Raise() const {
	ereport(ERROR, (errcode(sqlerrcode), errmsg_internal("%s", message),
	                detail[0] ? errdetail_internal("%s", detail) : 0, hint[0] ? errhint("%s", hint) : 0));
	pg_unreachable();
}

} // namespace pgfly::pg

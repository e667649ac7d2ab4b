#include "pgfly/pg/guard.hpp"

#include <cstring>
#include <string_view>

#include "pgfly/core/text.hpp"

namespace pgfly::pg {

namespace {

void
CopyTruncated(char *target, size_t size, const char *source) noexcept {
	if (source == nullptr) {
		target[0] = '\0';
		return;
	}
	// Never cut inside a UTF-8 sequence: the message goes to clients, which would refuse a broken one.
	const size_t kept = Utf8PrefixLength(std::string_view(source), size - 1);
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
      detail(edata->detail ? edata->detail : ""), hint(edata->hint ? edata->hint : "") {
}

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

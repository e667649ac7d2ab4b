// The C/C++ boundary: how PostgreSQL errors and C++ exceptions are kept from crossing each other.
//
// PostgreSQL reports errors with siglongjmp, which skips C++ destructors; C++ exceptions unwinding through
// PostgreSQL's C frames skip its PG_CATCH cleanup. Neither may cross. So:
//  - InvokeCpp runs C++ code called from PostgreSQL; it catches every exception, leaves the catch block, and
//    only then raises the PostgreSQL ERROR (with the original SQLSTATE, detail and hint where known).
//  - PgGuard runs one PostgreSQL call made from C++; a PostgreSQL ERROR inside becomes a PgError exception.
//    The callable must hold no destructor-bearing objects of its own: the longjmp would skip them.
#pragma once

#include "pgfly/pg/postgres.hpp"

#include <exception>
#include <new>
#include <string>
#include <type_traits>
#include <utility>

#include "pgfly/core/sql_error.hpp"

namespace pgfly::pg {

// A PostgreSQL ERROR caught by PgGuard, carried up the C++ stack.
class PgError : public std::exception {
public:
	explicit PgError(const ErrorData *edata);
	const char *
	what() const noexcept override {
		return message.c_str();
	}

	int sqlerrcode;
	std::string message;
	std::string detail;
	std::string hint;
};

// Plain data only: it lives on the stack while ereport longjmps away.
struct PendingError {
	int sqlerrcode = 0;
	char message[2048] = {0};
	char detail[1024] = {0};
	char hint[512] = {0};

	void Set(int code, const char *msg, const char *det, const char *hnt) noexcept;
	void SetFromException(std::exception_ptr exception) noexcept;
	// Raises the PostgreSQL ERROR; never returns.
	[[noreturn]] void Raise() const;
};

[[noreturn]] void ThrowPgError(ErrorData *edata);

template <typename Fn, typename... Args>
auto
InvokeCpp(Fn &&fn, Args &&...args) noexcept -> decltype(fn(std::forward<Args>(args)...)) {
	sigjmp_buf *volatile saved_exception_stack = PG_exception_stack;
	PendingError error;
	try {
		return fn(std::forward<Args>(args)...);
	} catch (...) {
		error.SetFromException(std::current_exception());
	}
	// A C++ exception that escaped a PG_TRY block (a bug) leaves PostgreSQL's handler pointing at a dead frame.
	if (PG_exception_stack != saved_exception_stack) {
		PG_exception_stack = saved_exception_stack;
	}
	error.Raise();
}

template <typename F>
void
PgGuard(F &&f) {
	MemoryContext volatile caller_context = CurrentMemoryContext;
	ErrorData *volatile edata = nullptr;
	PG_TRY();
	{ f(); }
	PG_CATCH();
	{
		MemoryContextSwitchTo(caller_context);
		edata = CopyErrorData();
		FlushErrorState();
	}
	PG_END_TRY();
	if (edata != nullptr) {
		ThrowPgError(edata);
	}
}

// PgGuard for a call that returns a value. The value must be plain data (a pointer, a number).
template <typename F>
auto
PgGuardResult(F &&f) -> decltype(f()) {
	using Result = decltype(f());
	static_assert(std::is_trivially_destructible_v<Result>, "PgGuardResult carries plain data only");
	Result result{};
	PgGuard([&]() { result = f(); });
	return result;
}

} // namespace pgfly::pg

// Defines the SQL-callable C symbol `name`, whose body is the C++ function `name##Cpp(FunctionCallInfo)`,
// guarded by InvokeCpp.
#define PGFLY_SQL_FUNCTION(name)                                                                                       \
	static Datum name##Cpp([[maybe_unused]] FunctionCallInfo fcinfo);                                                  \
	extern "C" {                                                                                                       \
	PG_FUNCTION_INFO_V1(name);                                                                                         \
	Datum                                                                                                              \
	name(PG_FUNCTION_ARGS) {                                                                                           \
		return pgfly::pg::InvokeCpp(name##Cpp, fcinfo);                                                                \
	}                                                                                                                  \
	}                                                                                                                  \
	static Datum name##Cpp([[maybe_unused]] FunctionCallInfo fcinfo)

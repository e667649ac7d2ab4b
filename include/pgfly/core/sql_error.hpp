// An error meant for the SQL user, carrying its SQLSTATE. Thrown by C++ code; turned into an ordinary
// PostgreSQL ERROR by the entry-point guard (pgfly/pg/guard.hpp) once the C++ stack has unwound.
#pragma once

#include <stdexcept>
#include <string>

namespace pgfly {

class SqlError : public std::runtime_error {
public:
	// sqlstate_code: the five-character SQLSTATE code, e.g. "22023" (invalid_parameter_value).
	SqlError(std::string sqlstate_code, const std::string &message, std::string detail_text = "",
	         std::string hint_text = "")
		: std::runtime_error(message), sqlstate(std::move(sqlstate_code)), detail(std::move(detail_text)),
		  hint(std::move(hint_text)) {}

	std::string sqlstate;
	std::string detail;
	std::string hint;
};

namespace sqlstate {
constexpr const char *kInvalidParameterValue = "22023";
constexpr const char *kNullValueNotAllowed = "22004";
constexpr const char *kInvalidTextRepresentation = "22P02";
constexpr const char *kUndefinedTable = "42P01";
constexpr const char *kUndefinedColumn = "42703";
constexpr const char *kInsufficientPrivilege = "42501";
constexpr const char *kDatatypeMismatch = "42804";
constexpr const char *kNoDataFound = "P0002";
constexpr const char *kObjectNotInPrerequisiteState = "55000";
constexpr const char *kLockNotAvailable = "55P03";
constexpr const char *kSerializationFailure = "40001";
constexpr const char *kInternalError = "XX000";
} // namespace sqlstate

} // namespace pgfly

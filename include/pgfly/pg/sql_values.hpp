// Conversions between C++ values and the text parameters and results of pgfly::pg::SpiConnection.
#pragma once

#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "pgfly/pg/spi.hpp"

namespace pgfly::pg {

inline int64_t
ToInt(const Value &value) {
	return value ? std::stoll(*value) : 0;
}

inline Value
Number(std::optional<int64_t> value) {
	if (!value) {
		return std::nullopt;
	}
	return std::to_string(*value);
}

// Seconds as text for make_interval(secs => ...).
inline std::string
Seconds(double seconds) {
	char text[64];
	snprintf(text, sizeof(text), "%.3f", seconds);
	return text;
}

// A text array literal of uuids, e.g. {a,b}: uuids need no quoting.
inline std::string
UuidArray(const std::vector<std::string> &users) {
	std::string text = "{";
	for (size_t i = 0; i < users.size(); i++) {
		text += (i ? "," : "") + users[i];
	}
	return text + "}";
}

} // namespace pgfly::pg

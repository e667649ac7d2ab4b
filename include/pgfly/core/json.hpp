// A small RAII wrapper over jansson. Json holds one reference to a json_t (or nothing); copies share the value,
// as jansson's reference counting does. Readers never throw and never crash on the wrong type: they return an
// empty Json or std::nullopt, because most JSON here comes from the network. ParseJson reports malformed,
// oversized or too deeply nested input as an error value.
#pragma once

// jansson.h stays out of this header: its json_object() collides with PostgreSQL's SQL function of that name
// in files that include both.
struct json_t;

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pgfly {

// Defaults for ParseJson: Fly's answers are a few KiB; 64 levels is far deeper than any Fly object.
constexpr size_t kJsonDefaultMaxBytes = 1024 * 1024;
constexpr int kJsonDefaultMaxDepth = 64;

class Json {
public:
	// No value at all (not JSON null): what readers return for a missing member or a wrong type.
	Json() = default;
	~Json();
	Json(const Json &other);
	Json(Json &&other) noexcept;
	Json &operator=(const Json &other);
	Json &operator=(Json &&other) noexcept;

	// Takes over a reference the caller owns (the result of json_object(), json_loadb() ...). Null gives no value.
	static Json Adopt(json_t *value);
	// Adds a reference to a value owned elsewhere (e.g. a borrowed json_object_get() result).
	static Json Borrow(json_t *value);

	static Json Object();
	static Json Array();
	// No value when text is not valid UTF-8: jansson refuses it, and so must we rather than send mangled text.
	static Json String(std::string_view text);
	static Json Integer(int64_t number);
	// No value for NaN or infinity, which JSON cannot represent.
	static Json Real(double number);
	static Json Bool(bool flag);
	static Json Null();

	bool
	HasValue() const {
		return value_ != nullptr;
	}
	explicit operator bool() const { return HasValue(); }
	bool IsObject() const;
	bool IsArray() const;
	bool IsString() const;
	bool IsInteger() const;
	// Integer or real.
	bool IsNumber() const;
	bool IsBool() const;
	bool IsNull() const;

	// Building. False (and no change) when this is not an object/array, the key is not valid UTF-8 or contains
	// NUL, or value has no value.
	bool Set(std::string_view key, const Json &value);
	bool Append(const Json &value);

	// Reading. Get gives no value when this is not an object or has no such member; At likewise for arrays.
	Json Get(std::string_view key) const;
	Json At(size_t index) const;
	// Members of an object or elements of an array; 0 for anything else.
	size_t Size() const;
	// Member names of an object in their stored order; empty for anything else.
	std::vector<std::string> Keys() const;

	std::optional<std::string> AsString() const;
	std::optional<int64_t> AsInteger() const;
	// Integers are converted; reals as they are.
	std::optional<double> AsNumber() const;
	std::optional<bool> AsBool() const;

	std::optional<std::string>
	GetString(std::string_view key) const {
		return Get(key).AsString();
	}
	std::optional<int64_t>
	GetInteger(std::string_view key) const {
		return Get(key).AsInteger();
	}
	std::optional<double>
	GetNumber(std::string_view key) const {
		return Get(key).AsNumber();
	}
	std::optional<bool>
	GetBool(std::string_view key) const {
		return Get(key).AsBool();
	}

	// Compact JSON text in member insertion order; "" when there is no value. Throws std::bad_alloc when memory
	// runs out.
	std::string Dump() const;

	// The underlying value, still owned by this Json (may be null).
	json_t *
	get() const {
		return value_;
	}

private:
	json_t *value_ = nullptr;
};

struct JsonParseResult {
	Json value;
	// Empty on success; otherwise why the text was refused (never contains the text itself beyond a position).
	std::string error;

	bool
	ok() const {
		return error.empty();
	}
};

// Parses any JSON value (object, array, or scalar). Refuses text longer than max_bytes, nesting deeper than
// max_depth arrays/objects, invalid UTF-8, "\u0000" in strings, integers beyond int64 and objects with a
// duplicated member. Never throws.
JsonParseResult ParseJson(std::string_view text, size_t max_bytes = kJsonDefaultMaxBytes,
                          int max_depth = kJsonDefaultMaxDepth);

// Whether text is well-formed UTF-8 (no overlong forms, surrogates or code points beyond U+10FFFF).
bool IsValidUtf8(std::string_view text);

} // namespace pgfly

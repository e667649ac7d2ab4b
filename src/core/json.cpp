#include "pgfly/core/json.hpp"

#include <jansson.h>

#include <cmath>
#include <new>
#include <string>

#include "pgfly/core/c_callback.hpp"

#include "pgfly/core/cpp_only.hpp"

namespace pgfly {

namespace {

// Deepest array/object nesting in the text, stopping early once limit is passed. Strings are skipped so that
// brackets inside them do not count. jansson has its own limit (2048), far above what we accept.
bool
NestingExceeds(std::string_view text, int limit) {
	int depth = 0;
	bool in_string = false;
	bool escaped = false;
	for (char c : text) {
		if (in_string) {
			if (escaped) {
				escaped = false;
			} else if (c == '\\') {
				escaped = true;
			} else if (c == '"') {
				in_string = false;
			}
			continue;
		}
		switch (c) {
		case '"':
			in_string = true;
			break;
		case '[':
		case '{':
			if (++depth > limit) {
				return true;
			}
			break;
		case ']':
		case '}':
			depth--;
			break;
		default:
			break;
		}
	}
	return false;
}

struct DumpSink {
	std::string text;
	bool failed = false;
};

// jansson's dump callback: -1 stops the dump.
int
AppendToSink(const char *buffer, size_t size, void *data) noexcept {
	auto *sink = static_cast<DumpSink *>(data);
	return GuardCCallback(
		CCallback::kJsonDump,
		[&] {
			sink->text.append(buffer, size);
			return 0;
		},
		[&] {
			sink->failed = true;
			return -1;
		});
}

bool
UsableKey(std::string_view key) {
	return key.find('\0') == std::string_view::npos && IsValidUtf8(key);
}

} // namespace

Json::~Json() {
	json_decref(value_);
}

Json::Json(const Json &other) : value_(json_incref(other.value_)) {}

Json::Json(Json &&other) noexcept : value_(other.value_) {
	other.value_ = nullptr;
}

Json &
Json::operator=(const Json &other) {
	if (this != &other) {
		json_t *previous = value_;
		value_ = json_incref(other.value_);
		json_decref(previous);
	}
	return *this;
}

Json &
Json::operator=(Json &&other) noexcept {
	if (this != &other) {
		json_decref(value_);
		value_ = other.value_;
		other.value_ = nullptr;
	}
	return *this;
}

Json
Json::Adopt(json_t *value) {
	Json json;
	json.value_ = value;
	return json;
}

Json
Json::Borrow(json_t *value) {
	return Adopt(json_incref(value));
}

Json
Json::Object() {
	// Not json_object(): inside a PostgreSQL backend that name resolves to PostgreSQL's own json_object() (a SQL
	// function the postgres executable exports), which takes precedence over jansson's. json_pack calls
	// jansson's from inside the library, where it cannot be interposed.
	return Adopt(json_pack("{}"));
}

Json
Json::Array() {
	return Adopt(json_array());
}

Json
Json::String(std::string_view text) {
	// json_stringn validates UTF-8 itself and returns null for invalid text.
	return Adopt(json_stringn(text.data(), text.size()));
}

Json
Json::Integer(int64_t number) {
	return Adopt(json_integer(static_cast<json_int_t>(number)));
}

Json
Json::Real(double number) {
	if (!std::isfinite(number)) {
		return Json();
	}
	return Adopt(json_real(number));
}

Json
Json::Bool(bool flag) {
	return Adopt(json_boolean(flag));
}

Json
Json::Null() {
	return Adopt(json_null());
}

bool
Json::IsObject() const {
	return value_ != nullptr && json_is_object(value_);
}

bool
Json::IsArray() const {
	return value_ != nullptr && json_is_array(value_);
}

bool
Json::IsString() const {
	return value_ != nullptr && json_is_string(value_);
}

bool
Json::IsInteger() const {
	return value_ != nullptr && json_is_integer(value_);
}

bool
Json::IsNumber() const {
	return value_ != nullptr && json_is_number(value_);
}

bool
Json::IsBool() const {
	return value_ != nullptr && json_is_boolean(value_);
}

bool
Json::IsNull() const {
	return value_ != nullptr && json_is_null(value_);
}

bool
Json::Set(std::string_view key, const Json &value) {
	if (!IsObject() || !value.HasValue() || !UsableKey(key)) {
		return false;
	}
	const std::string key_text(key);
	return json_object_set(value_, key_text.c_str(), value.value_) == 0;
}

bool
Json::Append(const Json &value) {
	if (!IsArray() || !value.HasValue()) {
		return false;
	}
	return json_array_append(value_, value.value_) == 0;
}

Json
Json::Get(std::string_view key) const {
	if (!IsObject() || key.find('\0') != std::string_view::npos) {
		return Json();
	}
	const std::string key_text(key);
	return Borrow(json_object_get(value_, key_text.c_str()));
}

Json
Json::At(size_t index) const {
	if (!IsArray()) {
		return Json();
	}
	return Borrow(json_array_get(value_, index));
}

size_t
Json::Size() const {
	if (IsObject()) {
		return json_object_size(value_);
	}
	if (IsArray()) {
		return json_array_size(value_);
	}
	return 0;
}

std::vector<std::string>
Json::Keys() const {
	std::vector<std::string> keys;
	if (!IsObject()) {
		return keys;
	}
	const char *key;
	json_t *member;
	json_object_foreach(value_, key, member) {
		(void)member;
		keys.emplace_back(key);
	}
	return keys;
}

std::optional<std::string>
Json::AsString() const {
	if (!IsString()) {
		return std::nullopt;
	}
	return std::string(json_string_value(value_), json_string_length(value_));
}

std::optional<int64_t>
Json::AsInteger() const {
	if (!IsInteger()) {
		return std::nullopt;
	}
	return static_cast<int64_t>(json_integer_value(value_));
}

std::optional<double>
Json::AsNumber() const {
	if (!IsNumber()) {
		return std::nullopt;
	}
	return json_number_value(value_);
}

std::optional<bool>
Json::AsBool() const {
	if (!IsBool()) {
		return std::nullopt;
	}
	return json_is_true(value_);
}

std::string
Json::Dump() const {
	DumpSink sink;
	if (value_ != nullptr) {
		// A callback rather than json_dumps: no malloc'd buffer whose allocator we would have to match.
		json_dump_callback(value_, AppendToSink, &sink, JSON_COMPACT | JSON_ENCODE_ANY);
	}
	if (sink.failed) {
		// Out of memory inside the callback: thrown here, in C++ frames, rather than through jansson's.
		throw std::bad_alloc();
	}
	return std::move(sink.text);
}

JsonParseResult
ParseJson(std::string_view text, size_t max_bytes, int max_depth) {
	JsonParseResult result;
	if (text.size() > max_bytes) {
		result.error = "JSON text of " + std::to_string(text.size()) + " bytes exceeds the limit of " +
		               std::to_string(max_bytes) + " bytes";
		return result;
	}
	if (NestingExceeds(text, max_depth)) {
		result.error = "JSON nested deeper than " + std::to_string(max_depth) + " levels";
		return result;
	}
	json_error_t error;
	// A duplicated member ("id", "state") would otherwise resolve last-wins, silently.
	json_t *value = json_loadb(text.data(), text.size(), JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &error);
	if (value == nullptr) {
		// error.text is jansson's description; it can quote a few bytes of the input near the failure.
		result.error = std::string(error.text) + " at line " + std::to_string(error.line) + ", column " +
		               std::to_string(error.column);
		return result;
	}
	result.value = Json::Adopt(value);
	return result;
}

bool
IsValidUtf8(std::string_view text) {
	size_t i = 0;
	const size_t n = text.size();
	while (i < n) {
		const unsigned char c = static_cast<unsigned char>(text[i]);
		size_t length;
		uint32_t code_point;
		if (c < 0x80) {
			i++;
			continue;
		} else if (c >= 0xc2 && c <= 0xdf) {
			length = 2;
			code_point = c & 0x1f;
		} else if (c >= 0xe0 && c <= 0xef) {
			length = 3;
			code_point = c & 0x0f;
		} else if (c >= 0xf0 && c <= 0xf4) {
			length = 4;
			code_point = c & 0x07;
		} else {
			return false;
		}
		if (i + length > n) {
			return false;
		}
		for (size_t k = 1; k < length; k++) {
			const unsigned char next = static_cast<unsigned char>(text[i + k]);
			if ((next & 0xc0) != 0x80) {
				return false;
			}
			code_point = (code_point << 6) | (next & 0x3f);
		}
		// Overlong forms, UTF-16 surrogates and values beyond Unicode.
		if ((length == 3 && code_point < 0x800) || (length == 4 && code_point < 0x10000) ||
		    (code_point >= 0xd800 && code_point <= 0xdfff) || code_point > 0x10ffff) {
			return false;
		}
		i += length;
	}
	return true;
}

} // namespace pgfly

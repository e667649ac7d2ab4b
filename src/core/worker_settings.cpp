#include "pgfly/core/worker_settings.hpp"

#include <algorithm>
#include <sstream>

#include "pgfly/core/base64.hpp"
#include "pgfly/core/json.hpp"

#include "pgfly/core/cpp_only.hpp"

namespace pgfly {

namespace {

bool
IsEnvName(const std::string &name) {
	if (name.empty() || (name[0] >= '0' && name[0] <= '9')) {
		return false;
	}
	return std::all_of(name.begin(), name.end(), [](char c) {
		return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
	});
}

} // namespace

ParsedMap
ParseMachineEnv(const std::string &json_text) {
	ParsedMap parsed;
	if (json_text.empty()) {
		return parsed;
	}
	JsonParseResult result = ParseJson(json_text, 64 * 1024, 2);
	if (!result.ok() && result.error.find("duplicate object key") != std::string::npos) {
		// jansson's text names the key ("duplicate object key near '"A"'"); the value is never quoted.
		parsed.problem = "fly.machine_env: a variable name is given twice (" + result.error + ")";
		return parsed;
	}
	if (!result.ok() || !result.value.IsObject()) {
		parsed.problem = "fly.machine_env must be a JSON object of strings";
		return parsed;
	}
	for (const std::string &key : result.value.Keys()) {
		auto value = result.value.GetString(key);
		if (!value || !IsEnvName(key)) {
			parsed.problem = "fly.machine_env: \"" + key + "\" must be a variable name with a string value";
			parsed.values.clear();
			return parsed;
		}
		parsed.values[key] = *value;
	}
	return parsed;
}

ParsedMap
ParseSecretsFile(const std::string &text) {
	ParsedMap parsed;
	std::istringstream lines(text);
	std::string line;
	int number = 0;
	while (std::getline(lines, line)) {
		number++;
		if (!line.empty() && line.back() == '\r') {
			line.pop_back();
		}
		const size_t first = line.find_first_not_of(" \t");
		if (first == std::string::npos || line[first] == '#') {
			continue;
		}
		const size_t equals = line.find('=');
		if (equals == std::string::npos) {
			parsed.problem = "line " + std::to_string(number) + " of the secrets file has no '='";
			parsed.values.clear();
			return parsed;
		}
		std::string name = line.substr(first, equals - first);
		name.erase(name.find_last_not_of(" \t") + 1);
		std::string value = line.substr(equals + 1);
		bool base64 = false;
		const std::string suffix = ":base64";
		if (name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
			base64 = true;
			name.resize(name.size() - suffix.size());
		}
		if (!IsEnvName(name)) {
			parsed.problem = "line " + std::to_string(number) + " of the secrets file has an invalid name";
			parsed.values.clear();
			return parsed;
		}
		if (!IsValidUtf8(value)) {
			parsed.problem = "the value of " + name + " in the secrets file is not UTF-8 text";
			parsed.values.clear();
			return parsed;
		}
		parsed.values[name] = base64 ? Base64Encode(value) : value;
	}
	return parsed;
}

} // namespace pgfly

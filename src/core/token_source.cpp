#include "pgfly/core/token_source.hpp"

#include <fstream>
#include <iterator>

#include "pgfly/core/text.hpp"

#include "pgfly/core/cpp_only.hpp"

namespace pgfly {

namespace {

ResolvedToken
Checked(TokenSource source, std::string token) {
	ResolvedToken resolved;
	if (auto problem = TokenProblem(token)) {
		resolved.problem = std::string("the token from ") + TokenSourceName(source) + " is unusable: " + *problem;
		return resolved;
	}
	resolved.source = source;
	resolved.token = std::move(token);
	return resolved;
}

} // namespace

const char *
TokenSourceName(TokenSource source) {
	switch (source) {
	case TokenSource::kSetting:
		return "fly.api_token";
	case TokenSource::kFile:
		return "fly.api_token_file";
	case TokenSource::kEnvironment:
		return "FLY_API_TOKEN";
	case TokenSource::kNone:
		break;
	}
	return "none";
}

std::optional<std::string>
ReadTextFile(const char *path) {
	std::ifstream file(path, std::ios::binary);
	std::string contents((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
	if (!file.is_open() || file.bad()) {
		return std::nullopt;
	}
	return contents;
}

std::optional<std::string>
TokenProblem(const std::string &token) {
	if (token.empty()) {
		return "it is empty";
	}
	for (unsigned char c : token) {
		if (c < 0x20 || c == 0x7f) {
			return "it contains a control character or a line break";
		}
	}
	return std::nullopt;
}

ResolvedToken
ResolveToken(const char *setting, const char *file_path, const char *environment) {
	if (setting != nullptr && setting[0] != '\0') {
		return Checked(TokenSource::kSetting, Trim(setting));
	}
	if (file_path != nullptr && file_path[0] != '\0') {
		auto contents = ReadTextFile(file_path);
		if (!contents) {
			ResolvedToken resolved;
			resolved.problem = std::string("fly.api_token_file \"") + file_path + "\" cannot be read";
			return resolved;
		}
		return Checked(TokenSource::kFile, Trim(*contents));
	}
	if (environment != nullptr && environment[0] != '\0') {
		return Checked(TokenSource::kEnvironment, Trim(environment));
	}
	ResolvedToken resolved;
	resolved.problem = "no Fly API token is configured (set fly.api_token_file, fly.api_token or FLY_API_TOKEN)";
	return resolved;
}

} // namespace pgfly

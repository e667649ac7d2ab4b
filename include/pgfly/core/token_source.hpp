// Where the Fly API token comes from, in order: the fly.api_token setting, the file named by
// fly.api_token_file, the postmaster's FLY_API_TOKEN environment variable.
#pragma once

#include <optional>
#include <string>

namespace pgfly {

enum class TokenSource { kNone, kSetting, kFile, kEnvironment };

const char *TokenSourceName(TokenSource source);

struct ResolvedToken {
	TokenSource source = TokenSource::kNone;
	std::string token;
	// Why no usable token was found, or why the one found was refused; never contains the token.
	std::string problem;
};

// setting and file_path may be null or empty; environment is the value of FLY_API_TOKEN (null when unset).
// A file that cannot be read is a problem, not a fallback to the environment: the operator asked for it.
ResolvedToken ResolveToken(const char *setting, const char *file_path, const char *environment);

// The whole file, or nothing when it cannot be read (for the token and the secrets file).
std::optional<std::string> ReadTextFile(const char *path);

// Whether a token can go into an HTTP header as it is (no control characters, no line breaks).
std::optional<std::string> TokenProblem(const std::string &token);

} // namespace pgfly

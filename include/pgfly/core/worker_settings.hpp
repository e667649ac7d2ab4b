// Operator configuration the worker turns into machine env and app secrets, parsed without PostgreSQL.
#pragma once

#include <map>
#include <string>

namespace pgfly {

struct ParsedMap {
	std::map<std::string, std::string> values;
	// Empty when the input was fine; otherwise what is wrong, never quoting a value.
	std::string problem;
};

// fly.machine_env: a JSON object of string values, e.g. {"SUPABASE_URL": "https://x.supabase.co"}.
ParsedMap ParseMachineEnv(const std::string &json_text);

// The file named by fly.app_secrets_file: one NAME=value per line; blank lines and lines starting with '#'
// are ignored. NAME:base64=value sends base64(value), for an app that reads a secret base64-encoded (e.g. a
// JWT in SUPABASE_SERVICE_KEY_B64). Names are upper-case letters, digits and '_', not starting with a digit.
ParsedMap ParseSecretsFile(const std::string &text);

} // namespace pgfly

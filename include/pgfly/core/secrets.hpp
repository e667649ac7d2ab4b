// App secrets that change: the digest recorded per app, and what to send to Fly to move an app to a new set.
// Only names and the digest are ever stored; the values stay in the worker's memory and the request body.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

namespace pgfly {
namespace secrets {

// HMAC-SHA-256 (hex) under `key` (the database's fly.secrets_digest_key; never empty) over every name and value
// together, each length-prefixed so that no two sets share an encoding. One digest for the whole set, and keyed:
// whoever reads it without the key cannot test guesses of a short secret against it.
std::string Digest(const std::map<std::string, std::string> &secrets, const std::string &key);

// The names of the set, in order.
std::vector<std::string> Names(const std::map<std::string, std::string> &secrets);

// Names set before (`previous_names`) that the set no longer holds, sorted and without duplicates.
std::vector<std::string> RemovedNames(const std::map<std::string, std::string> &secrets,
                                      const std::vector<std::string> &previous_names);

// The body's values for POST /v1/apps/{app}/secrets: every secret, and null (unset) for each removed name.
std::map<std::string, std::optional<std::string>> ValuesToSet(const std::map<std::string, std::string> &secrets,
                                                              const std::vector<std::string> &previous_names);

} // namespace secrets
} // namespace pgfly

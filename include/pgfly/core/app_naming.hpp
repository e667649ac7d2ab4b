// Fly app names for users. Names are global across all of Fly, so a name can be taken by another
// organisation or, rarely, by another user whose hash shares the first 8 hex digits. Every user therefore
// has a deterministic sequence of candidate names: candidate 0 is the contract's `<prefix><8 hex>`, and
// each later candidate appends four more hex digits of the same digest (`<prefix><8 hex>-<4n hex>`).
#pragma once

#include <optional>
#include <string>

namespace pgfly {

// Longest app name Fly accepts ("Name under 63 chars").
constexpr size_t kMaxAppNameLength = 62;
// Longest prefix we accept, leaving room for the hash and several fallbacks.
constexpr size_t kMaxAppNamePrefixLength = 40;

// Lower-case hex SHA-256 of the text.
std::string Sha256Hex(const std::string &text);

// Candidate `attempt` (0-based) of the app name for the user id (its canonical text form). Returns nothing
// when the candidates are exhausted, i.e. the name would exceed kMaxAppNameLength.
std::optional<std::string> AppNameCandidate(const std::string &prefix, const std::string &user_id, int attempt);

// Which candidate `name` is for this user and prefix, or -1 when it is none of them.
int AppNameAttempt(const std::string &prefix, const std::string &user_id, const std::string &name);

// Whether Fly would accept `name`: 1 to 62 characters, lower-case letters, digits and dashes, starting
// with a letter, not ending with a dash. Returns an explanation when it would not, nothing when valid.
std::optional<std::string> AppNameProblem(const std::string &name);

// Why an app id from Fly cannot be stored as it is, or nothing: 1 to 62 letters, digits, dashes or underscores
// (Fly's ids are lower-case letters and digits). The id is quoted in the message only when it is printable.
std::optional<std::string> AppIdProblem(const std::string &id);

// Whether a configured prefix is safe to put into a URL path. Deliberately weaker than AppNameProblem:
// a prefix Fly rejects (upper case, say) must reach Fly and fail there with its own 422, so the operator
// sees Fly's reason; only characters that could change the request's meaning are refused here.
std::optional<std::string> AppNamePrefixProblem(const std::string &prefix);

} // namespace pgfly

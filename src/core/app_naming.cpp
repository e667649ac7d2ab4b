#include "pgfly/core/app_naming.hpp"

#include <openssl/evp.h>

#include <algorithm>
#include <memory>
#include <stdexcept>

#include "pgfly/core/text.hpp"

#include "pgfly/core/cpp_only.hpp"

namespace pgfly {

namespace {

constexpr size_t kBaseHashDigits = 8;
constexpr size_t kFallbackHashDigits = 4;

bool
IsLowerAlnum(char c) {
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

} // namespace

std::string
Sha256Hex(const std::string &text) {
	std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
	unsigned char digest[EVP_MAX_MD_SIZE];
	unsigned int digest_length = 0;
	if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1 ||
	    EVP_DigestUpdate(ctx.get(), text.data(), text.size()) != 1 ||
	    EVP_DigestFinal_ex(ctx.get(), digest, &digest_length) != 1) {
		throw std::runtime_error("OpenSSL could not compute a SHA-256 digest");
	}
	return HexEncode(digest, digest_length);
}

std::optional<std::string>
AppNameCandidate(const std::string &prefix, const std::string &user_id, int attempt) {
	if (attempt < 0) {
		return std::nullopt;
	}
	const std::string digest = Sha256Hex(user_id);
	std::string name = prefix + digest.substr(0, kBaseHashDigits);
	if (attempt > 0) {
		const size_t extra = kFallbackHashDigits * static_cast<size_t>(attempt);
		if (kBaseHashDigits + extra > digest.size()) {
			return std::nullopt;
		}
		name += "-" + digest.substr(kBaseHashDigits, extra);
	}
	if (name.size() > kMaxAppNameLength) {
		return std::nullopt;
	}
	return name;
}

int
AppNameAttempt(const std::string &prefix, const std::string &user_id, const std::string &name) {
	for (int attempt = 0;; attempt++) {
		auto candidate = AppNameCandidate(prefix, user_id, attempt);
		if (!candidate) {
			return -1;
		}
		if (*candidate == name) {
			return attempt;
		}
	}
}

std::optional<std::string>
AppNameProblem(const std::string &name) {
	if (name.empty()) {
		return "the app name is empty";
	}
	if (name.size() > kMaxAppNameLength) {
		return "the app name \"" + name + "\" is longer than " + std::to_string(kMaxAppNameLength) + " characters";
	}
	if (!(name[0] >= 'a' && name[0] <= 'z')) {
		return "the app name \"" + name + "\" does not start with a lower-case letter";
	}
	for (char c : name) {
		if (!IsLowerAlnum(c) && c != '-') {
			return "the app name \"" + name +
			       "\" contains a character other than lower-case letters, digits and dashes";
		}
	}
	if (name.back() == '-') {
		return "the app name \"" + name + "\" ends with a dash";
	}
	return std::nullopt;
}

std::optional<std::string>
AppIdProblem(const std::string &id) {
	if (id.empty()) {
		return std::string("the app id is empty");
	}
	const bool usable = id.size() <= kMaxAppNameLength && std::all_of(id.begin(), id.end(), [](char c) {
							return IsLowerAlnum(c) || (c >= 'A' && c <= 'Z') || c == '-' || c == '_';
						});
	if (usable) {
		return std::nullopt;
	}
	const bool printable = id.size() <= 100 && std::all_of(id.begin(), id.end(), [](char c) {
							   return static_cast<unsigned char>(c) >= 0x20 && static_cast<unsigned char>(c) < 0x7f;
						   });
	return std::string("the app id ") + (printable ? "\"" + id + "\" " : "") + "is not 1 to " +
	       std::to_string(kMaxAppNameLength) + " letters, digits, dashes or underscores";
}

std::optional<std::string>
AppNamePrefixProblem(const std::string &prefix) {
	if (prefix.size() > kMaxAppNamePrefixLength) {
		return "the prefix is longer than " + std::to_string(kMaxAppNamePrefixLength) + " characters";
	}
	for (char c : prefix) {
		const bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
		const bool digit = c >= '0' && c <= '9';
		if (!letter && !digit && c != '-' && c != '_' && c != '.') {
			return "the prefix contains a character that cannot appear in an app name (only letters, digits, '-', "
				   "'_' and '.' are allowed here, and Fly itself accepts only lower-case letters, digits and '-')";
		}
	}
	return std::nullopt;
}

} // namespace pgfly

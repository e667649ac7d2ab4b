#include "pgfly/core/secrets.hpp"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <set>
#include <stdexcept>

#include "pgfly/core/text.hpp"

#include "pgfly/core/cpp_only.hpp"

namespace pgfly {
namespace secrets {

std::string
Digest(const std::map<std::string, std::string> &secrets, const std::string &key) {
	if (key.empty()) {
		// Unkeyed, the digest of a short secret could be brute-forced by anyone who can read it.
		throw std::invalid_argument("the secrets digest needs a key");
	}
	std::string encoded = "pg_fly secrets v1\n";
	for (const auto &secret : secrets) {
		encoded += std::to_string(secret.first.size()) + ":" + secret.first;
		encoded += std::to_string(secret.second.size()) + ":" + secret.second;
	}
	unsigned char mac[EVP_MAX_MD_SIZE];
	unsigned int mac_length = 0;
	if (HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
	         reinterpret_cast<const unsigned char *>(encoded.data()), encoded.size(), mac, &mac_length) == nullptr) {
		throw std::runtime_error("OpenSSL could not compute an HMAC-SHA-256");
	}
	return HexEncode(mac, mac_length);
}

std::vector<std::string>
Names(const std::map<std::string, std::string> &secrets) {
	std::vector<std::string> names;
	for (const auto &secret : secrets) {
		names.push_back(secret.first);
	}
	return names;
}

std::vector<std::string>
RemovedNames(const std::map<std::string, std::string> &secrets, const std::vector<std::string> &previous_names) {
	std::set<std::string> removed;
	for (const auto &name : previous_names) {
		if (!name.empty() && !secrets.count(name)) {
			removed.insert(name);
		}
	}
	return std::vector<std::string>(removed.begin(), removed.end());
}

std::map<std::string, std::optional<std::string>>
ValuesToSet(const std::map<std::string, std::string> &secrets, const std::vector<std::string> &previous_names) {
	std::map<std::string, std::optional<std::string>> values;
	for (const auto &secret : secrets) {
		values.emplace(secret.first, secret.second);
	}
	for (const auto &name : RemovedNames(secrets, previous_names)) {
		values.emplace(name, std::nullopt);
	}
	return values;
}

} // namespace secrets
} // namespace pgfly

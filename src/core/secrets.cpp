#include "pgfly/core/secrets.hpp"

#include <set>

#include "pgfly/core/app_naming.hpp"

#include "pgfly/core/cpp_only.hpp"

namespace pgfly {
namespace secrets {

std::string
Digest(const std::map<std::string, std::string> &secrets) {
	std::string encoded = "pg_fly secrets v1\n";
	for (const auto &secret : secrets) {
		encoded += std::to_string(secret.first.size()) + ":" + secret.first;
		encoded += std::to_string(secret.second.size()) + ":" + secret.second;
	}
	return Sha256Hex(encoded);
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

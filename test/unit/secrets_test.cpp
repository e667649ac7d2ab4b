#include "pgfly/core/secrets.hpp"

#include <gtest/gtest.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdexcept>

#include "pgfly/core/app_naming.hpp"

namespace pgfly {
namespace secrets {
namespace {

const std::string kKey = "0123456789abcdef0123456789abcdef";

std::string
Digest(const std::map<std::string, std::string> &set) {
	return secrets::Digest(set, kKey);
}

TEST(SecretsDigest, IsHexOfTheWholeSetAndChangesWithAnyNameOrValue) {
	const std::map<std::string, std::string> set = {{"A", "one"}, {"B", "two"}};
	const std::string digest = Digest(set);
	EXPECT_EQ(digest.size(), 64u);
	EXPECT_EQ(digest.find_first_not_of("0123456789abcdef"), std::string::npos);
	EXPECT_EQ(Digest(set), digest);
	EXPECT_NE(Digest({{"A", "one"}, {"B", "twO"}}), digest);
	EXPECT_NE(Digest({{"A", "one"}}), digest);
	EXPECT_NE(Digest({{"A", "one"}, {"C", "two"}}), digest);
	EXPECT_NE(Digest({}), digest);
	EXPECT_EQ(Digest({}).size(), 64u);
}

TEST(SecretsDigest, DependsOnTheKeyAndIsNotThePlainHashOfTheEncoding) {
	const std::map<std::string, std::string> set = {{"PIN", "4711"}};
	const std::string encoded = "pg_fly secrets v1\n3:PIN4:4711";
	// Without the key, the public encoding of a guess does not give the digest.
	EXPECT_NE(Digest(set), Sha256Hex(encoded));
	EXPECT_NE(secrets::Digest(set, kKey + "x"), Digest(set));
	EXPECT_NE(secrets::Digest(set, "another key of thirty-two bytes!"), Digest(set));
	// It is HMAC-SHA-256 under the key, computed independently here.
	unsigned char mac[EVP_MAX_MD_SIZE];
	unsigned int length = 0;
	HMAC(EVP_sha256(), kKey.data(), static_cast<int>(kKey.size()),
	     reinterpret_cast<const unsigned char *>(encoded.data()), encoded.size(), mac, &length);
	std::string hex;
	for (unsigned int i = 0; i < length; i++) {
		hex += "0123456789abcdef"[mac[i] >> 4];
		hex += "0123456789abcdef"[mac[i] & 0xf];
	}
	EXPECT_EQ(Digest(set), hex);
	// No key, no digest.
	EXPECT_THROW(secrets::Digest(set, ""), std::invalid_argument);
}

TEST(SecretsDigest, NoTwoSetsShareAnEncoding) {
	// Moving characters between a name and its value, or between two secrets, gives another digest.
	EXPECT_NE(Digest({{"AB", "c"}}), Digest({{"A", "Bc"}}));
	EXPECT_NE(Digest({{"A", "1:B1:x"}}), Digest({{"A", ""}, {"B", "x"}}));
}

TEST(SecretsDigest, IsNotAHashOfOneValue) {
	const std::map<std::string, std::string> one = {{"A", "hunter2"}};
	// Neither the value alone nor NAME=value hashes to the recorded digest.
	EXPECT_NE(Digest(one), Digest({{"B", "hunter2"}}));
	EXPECT_NE(Digest(one), Digest({{"", "A=hunter2"}}));
}

TEST(SecretsToSet, RemovedNamesAreUnsetWithNull) {
	const std::map<std::string, std::string> set = {{"A", "1"}, {"C", "3"}};
	auto values = ValuesToSet(set, {"A", "B", "B", "D", ""});
	ASSERT_EQ(values.size(), 4u);
	EXPECT_EQ(values["A"], std::optional<std::string>("1"));
	EXPECT_EQ(values["C"], std::optional<std::string>("3"));
	EXPECT_FALSE(values["B"]);
	EXPECT_FALSE(values["D"]);
	EXPECT_EQ(RemovedNames(set, {"D", "A", "B"}), (std::vector<std::string>{"B", "D"}));
	EXPECT_EQ(Names(set), (std::vector<std::string>{"A", "C"}));
	EXPECT_TRUE(ValuesToSet({}, {}).empty());
	EXPECT_EQ(ValuesToSet({}, {"X"}).size(), 1u);
}

} // namespace
} // namespace secrets
} // namespace pgfly

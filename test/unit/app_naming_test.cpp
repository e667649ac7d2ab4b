#include "pgfly/core/app_naming.hpp"

#include <gtest/gtest.h>

#include <set>

namespace pgfly {
namespace {

const std::string kUser = "3f2504e0-4f89-11d3-9a0c-0305e82c3301";

TEST(Sha256Hex, MatchesKnownDigests) {
	EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
	EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(AppNameCandidate, FirstCandidateIsPrefixPlusEightHexOfSha256) {
	const std::string digest = Sha256Hex(kUser);
	EXPECT_EQ(AppNameCandidate("vyx-user-", kUser, 0), "vyx-user-" + digest.substr(0, 8));
}

TEST(AppNameCandidate, FallbacksExtendTheSameDigestDeterministically) {
	const std::string digest = Sha256Hex(kUser);
	EXPECT_EQ(AppNameCandidate("vyx-user-", kUser, 1), "vyx-user-" + digest.substr(0, 8) + "-" + digest.substr(8, 4));
	EXPECT_EQ(AppNameCandidate("vyx-user-", kUser, 2), "vyx-user-" + digest.substr(0, 8) + "-" + digest.substr(8, 8));
	EXPECT_EQ(AppNameCandidate("vyx-user-", kUser, 2), AppNameCandidate("vyx-user-", kUser, 2));
}

TEST(AppNameCandidate, EveryCandidateIsAValidDistinctFlyName) {
	std::set<std::string> seen;
	for (int attempt = 0;; attempt++) {
		auto name = AppNameCandidate("vyx-user-", kUser, attempt);
		if (!name) {
			EXPECT_GE(attempt, 5) << "too few fallbacks for the default prefix";
			break;
		}
		EXPECT_FALSE(AppNameProblem(*name).has_value()) << *name;
		EXPECT_TRUE(seen.insert(*name).second) << *name;
	}
}

TEST(AppNameCandidate, StopsBeforeExceedingFlysLengthLimit) {
	const std::string long_prefix(40, 'a');
	for (int attempt = 0; attempt < 20; attempt++) {
		auto name = AppNameCandidate(long_prefix, kUser, attempt);
		if (name) {
			EXPECT_LE(name->size(), kMaxAppNameLength);
		}
	}
	EXPECT_FALSE(AppNameCandidate(long_prefix, kUser, 4).has_value());
	EXPECT_FALSE(AppNameCandidate("vyx-user-", kUser, -1).has_value());
}

TEST(AppNameCandidate, UsersWhoseNamesCollideStillGetDistinctFallbacks) {
	// Find two user ids sharing the first 8 hex digits would take ~2^16 tries; instead check the property the
	// fallback relies on: different ids with the same first candidate differ at the second.
	const std::string other = "3f2504e0-4f89-11d3-9a0c-0305e82c3302";
	EXPECT_NE(AppNameCandidate("p-", kUser, 1), AppNameCandidate("p-", other, 1));
}

TEST(AppNameAttempt, RecognisesItsOwnCandidates) {
	for (int attempt = 0; attempt < 4; attempt++) {
		EXPECT_EQ(AppNameAttempt("vyx-user-", kUser, *AppNameCandidate("vyx-user-", kUser, attempt)), attempt);
	}
	EXPECT_EQ(AppNameAttempt("vyx-user-", kUser, "vyx-user-00000000"), -1);
	EXPECT_EQ(AppNameAttempt("other-", kUser, *AppNameCandidate("vyx-user-", kUser, 0)), -1);
}

TEST(AppIdProblem, AcceptsFlyIdsAndRefusesWhatCouldAlterAnArrayOrRow) {
	for (const char *id : {"z4k69dxd8r31p5mx", "0123abc", "NULL", "app_1-X"}) {
		EXPECT_FALSE(AppIdProblem(id).has_value()) << id;
	}
	for (const char *id : {"", "a,b", "a}", "a\"b", "{a}", "a b", "a\\b", "caf\xc3\xa9"}) {
		EXPECT_TRUE(AppIdProblem(id).has_value()) << id;
	}
	EXPECT_TRUE(AppIdProblem(std::string(63, 'a')).has_value());
	EXPECT_NE(AppIdProblem("a,b").value_or("").find("\"a,b\""), std::string::npos);
	EXPECT_EQ(AppIdProblem("a\nb").value_or("").find('\n'), std::string::npos) << "not quoted when unprintable";
}

TEST(AppNameProblem, AcceptsFlyNamesAndExplainsRejections) {
	EXPECT_FALSE(AppNameProblem("vyx-user-a3f8b2c9").has_value());
	EXPECT_FALSE(AppNameProblem("a").has_value());
	EXPECT_NE(AppNameProblem("").value_or(""), "");
	EXPECT_NE(AppNameProblem("Vyx-user").value_or("").find("lower-case letter"), std::string::npos);
	EXPECT_NE(AppNameProblem("9abc").value_or("").find("start"), std::string::npos);
	EXPECT_NE(AppNameProblem("abc_def").value_or("").find("character"), std::string::npos);
	EXPECT_NE(AppNameProblem("abc-").value_or("").find("dash"), std::string::npos);
	EXPECT_NE(AppNameProblem(std::string(63, 'a')).value_or("").find("longer"), std::string::npos);
	EXPECT_FALSE(AppNameProblem(std::string(62, 'a')).has_value());
}

TEST(AppNamePrefixProblem, RefusesOnlyWhatCouldBreakARequest) {
	EXPECT_FALSE(AppNamePrefixProblem("vyx-user-").has_value());
	EXPECT_FALSE(AppNamePrefixProblem("").has_value());
	// Fly rejects these, with its own 422, which the operator then sees.
	EXPECT_FALSE(AppNamePrefixProblem("Vyx_User.").has_value());
	EXPECT_TRUE(AppNamePrefixProblem("a/b").has_value());
	EXPECT_TRUE(AppNamePrefixProblem("a b").has_value());
	EXPECT_TRUE(AppNamePrefixProblem("a?x=1").has_value());
	EXPECT_TRUE(AppNamePrefixProblem("caf\xc3\xa9").has_value());
	EXPECT_TRUE(AppNamePrefixProblem(std::string(41, 'a')).has_value());
}

} // namespace
} // namespace pgfly

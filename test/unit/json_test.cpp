// The JSON wrapper and the parser of Fly's answers, which are untrusted input.
#include "pgfly/core/json.hpp"

#include <gtest/gtest.h>
#include <jansson.h>

#include <new>
#include <string>

#include "pgfly/core/c_callback.hpp"

namespace pgfly {
namespace {

TEST(Json, BuildsAndReadsWithTypeChecks) {
	Json object = Json::Object();
	EXPECT_TRUE(object.Set("s", Json::String("text")));
	EXPECT_TRUE(object.Set("i", Json::Integer(42)));
	EXPECT_TRUE(object.Set("b", Json::Bool(true)));
	EXPECT_TRUE(object.Set("n", Json::Null()));
	Json array = Json::Array();
	EXPECT_TRUE(array.Append(Json::Real(1.5)));
	EXPECT_TRUE(object.Set("a", array));
	EXPECT_EQ(object.Dump(), R"({"s":"text","i":42,"b":true,"n":null,"a":[1.5]})");
	EXPECT_EQ(object.GetString("s"), "text");
	EXPECT_EQ(object.GetInteger("i"), 42);
	EXPECT_EQ(object.GetNumber("i"), 42.0);
	EXPECT_EQ(object.GetBool("b"), true);
	EXPECT_TRUE(object.Get("n").IsNull());
	EXPECT_EQ(object.Get("a").At(0).AsNumber(), 1.5);
	// Wrong types and missing members give nothing rather than crashing.
	EXPECT_EQ(object.GetString("i"), std::nullopt);
	EXPECT_EQ(object.GetInteger("s"), std::nullopt);
	EXPECT_FALSE(object.Get("missing").HasValue());
	EXPECT_FALSE(object.Get("s").Get("x").HasValue());
	EXPECT_FALSE(object.Get("a").At(7).HasValue());
	EXPECT_FALSE(Json().Get("x").HasValue());
	EXPECT_EQ(Json().Dump(), "");
	EXPECT_FALSE(object.Append(Json::Integer(1)));
	EXPECT_FALSE(array.Set("k", Json::Integer(1)));
	EXPECT_FALSE(object.Set("k", Json()));
}

TEST(Json, CopiesShareAndReleaseTheValue) {
	// json_t is opaque in jansson 2.14, so sharing is observed through the value; leaks show under ASan/valgrind.
	Json a = Json::Object();
	{
		Json b = a;
		b.Set("k", Json::Integer(1));
		EXPECT_EQ(a.GetInteger("k"), 1);
		EXPECT_EQ(a.get(), b.get());
	}
	EXPECT_EQ(a.GetInteger("k"), 1);
	json_t *raw = a.get();
	Json moved = std::move(a);
	EXPECT_FALSE(a.HasValue());
	EXPECT_EQ(moved.get(), raw);
	Json assigned;
	assigned = moved;
	EXPECT_EQ(assigned.get(), raw);
	const Json borrowed = Json::Borrow(json_object_get(raw, "k"));
	EXPECT_EQ(borrowed.AsInteger(), 1);
}

TEST(Json, RefusesInvalidUtf8WhenBuilding) {
	EXPECT_FALSE(Json::String("bad\xff").HasValue());
	EXPECT_FALSE(Json::String("\xc0\xaf").HasValue());
	Json object = Json::Object();
	EXPECT_FALSE(object.Set("bad\xff", Json::Integer(1)));
	EXPECT_FALSE(object.Set(std::string("nul\0key", 7), Json::Integer(1)));
	EXPECT_TRUE(Json::String("caf\xc3\xa9").HasValue());
	EXPECT_FALSE(Json::Real(1.0 / 0.0).HasValue());
}

TEST(ParseJson, AcceptsValidTextAndRejectsMalformedInput) {
	EXPECT_TRUE(ParseJson(R"({"a":[1,2,{"b":null}]})").ok());
	EXPECT_TRUE(ParseJson("\"scalar\"").ok());
	EXPECT_FALSE(ParseJson("").ok());
	EXPECT_FALSE(ParseJson("{").ok());
	EXPECT_FALSE(ParseJson("<html>").ok());
	EXPECT_FALSE(ParseJson("{\"a\":\"\xff\"}").ok()) << "invalid UTF-8";
	EXPECT_FALSE(ParseJson("{\"a\":\"\xed\xa0\x80\"}").ok()) << "encoded surrogate";
	EXPECT_FALSE(ParseJson(R"({"a":"\u0000"})").ok());
	EXPECT_FALSE(ParseJson(R"({"a":99999999999999999999999})").ok());
	EXPECT_FALSE(ParseJson("{} trailing").ok());
}

TEST(ParseJson, RejectsDuplicatedMembers) {
	const JsonParseResult duplicated = ParseJson(R"({"id":"m1","state":"stopped","state":"started"})");
	EXPECT_FALSE(duplicated.ok());
	EXPECT_NE(duplicated.error.find("duplicate"), std::string::npos) << duplicated.error;
	EXPECT_FALSE(ParseJson(R"([{"config":{"id":1,"id":2}}])").ok()) << "at any depth";
	EXPECT_TRUE(ParseJson(R"({"id":"m1","config":{"id":"m1"}})").ok()) << "the same key in different objects";
}

TEST(Json, DumpAllocationFailureThrowsInCppFrames) {
	Json object = Json::Object();
	object.Set("a", Json::String("b"));
	// The dump callback fails as an allocation would: the exception surfaces from Dump, not through jansson.
	InjectCallbackFaultForTesting(CCallback::kJsonDump, 1);
	EXPECT_THROW(object.Dump(), std::bad_alloc);
	EXPECT_EQ(object.Dump(), R"({"a":"b"})");
}

TEST(ParseJson, DepthAndSizeLimits) {
	const std::string deep_64 = std::string(64, '[') + std::string(64, ']');
	const std::string deep_65 = std::string(65, '[') + std::string(65, ']');
	EXPECT_TRUE(ParseJson(deep_64).ok());
	const JsonParseResult too_deep = ParseJson(deep_65);
	EXPECT_FALSE(too_deep.ok());
	EXPECT_NE(too_deep.error.find("deeper than 64"), std::string::npos);
	// Brackets inside strings do not count.
	EXPECT_TRUE(ParseJson("{\"a\":\"" + std::string(100, '[') + "\\\"\"}").ok());
	EXPECT_FALSE(ParseJson(std::string(100000, '[')).ok());
	EXPECT_FALSE(ParseJson("[1,2,3]", 5).ok());
	EXPECT_TRUE(ParseJson("[1,2,3]", 7).ok());
}

TEST(IsValidUtf8, Basics) {
	EXPECT_TRUE(IsValidUtf8(""));
	EXPECT_TRUE(IsValidUtf8("ascii"));
	EXPECT_TRUE(IsValidUtf8("\xe2\x82\xac\xf0\x9f\x98\x80"));
	EXPECT_FALSE(IsValidUtf8("\x80"));
	EXPECT_FALSE(IsValidUtf8("\xe2\x82"));
	EXPECT_FALSE(IsValidUtf8("\xf4\x90\x80\x80"));
	EXPECT_FALSE(IsValidUtf8("\xe0\x80\x80"));
}

} // namespace
} // namespace pgfly

#include "pgfly/core/fly_requests.hpp"

#include <gtest/gtest.h>

#include <stdexcept>

#include "pgfly/core/json.hpp"

namespace pgfly {
namespace fly {
namespace {

using Query = std::vector<std::pair<std::string, std::string>>;

Json
Body(const Request &request) {
	EXPECT_TRUE(request.body_json.has_value());
	JsonParseResult parsed = ParseJson(request.body_json.value_or(""));
	EXPECT_TRUE(parsed.ok()) << parsed.error;
	EXPECT_TRUE(parsed.value.IsObject());
	return parsed.value;
}

MachineSpec
SampleSpec() {
	MachineSpec spec;
	spec.image = "registry.fly.io/app@sha256:abc";
	spec.guest = Guest{"performance", 2, 4096};
	spec.region = "sjc";
	spec.env = {{"RUN_MODE", "user_dedicated"}, {"USER_ID", "7d1c"}};
	spec.metadata = {{"pg_fly_user", "7d1c"}, {"pg_fly_op", "42"}};
	spec.min_secrets_version = 3;
	return spec;
}

void
ExpectConfig(const Json &config) {
	ASSERT_TRUE(config.IsObject());
	EXPECT_EQ(config.GetString("image"), "registry.fly.io/app@sha256:abc");
	const Json guest = config.Get("guest");
	EXPECT_EQ(guest.GetString("cpu_kind"), "performance");
	EXPECT_EQ(guest.GetInteger("cpus"), 2);
	EXPECT_EQ(guest.GetInteger("memory_mb"), 4096);
	EXPECT_EQ(guest.Size(), 3u);
	const Json env = config.Get("env");
	EXPECT_EQ(env.Size(), 2u);
	EXPECT_EQ(env.GetString("RUN_MODE"), "user_dedicated");
	EXPECT_EQ(env.GetString("USER_ID"), "7d1c");
	EXPECT_EQ(config.Get("restart").GetString("policy"), "always");
	EXPECT_EQ(config.Get("restart").Size(), 1u);
	const Json metadata = config.Get("metadata");
	EXPECT_EQ(metadata.Size(), 2u);
	EXPECT_EQ(metadata.GetString("pg_fly_user"), "7d1c");
	EXPECT_EQ(metadata.GetString("pg_fly_op"), "42");
	EXPECT_EQ(config.Size(), 5u) << config.Dump();
}

TEST(EndpointName, MatchesTheSimulatorNames) {
	EXPECT_STREQ(EndpointName(Endpoint::kCreateApp), "create_app");
	EXPECT_STREQ(EndpointName(Endpoint::kGetApp), "get_app");
	EXPECT_STREQ(EndpointName(Endpoint::kDeleteApp), "delete_app");
	EXPECT_STREQ(EndpointName(Endpoint::kListApps), "list_apps");
	EXPECT_STREQ(EndpointName(Endpoint::kSetSecrets), "set_secrets");
	EXPECT_STREQ(EndpointName(Endpoint::kCreateMachine), "create_machine");
	EXPECT_STREQ(EndpointName(Endpoint::kListMachines), "list_machines");
	EXPECT_STREQ(EndpointName(Endpoint::kGetMachine), "get_machine");
	EXPECT_STREQ(EndpointName(Endpoint::kWaitMachine), "wait_machine");
	EXPECT_STREQ(EndpointName(Endpoint::kUpdateMachine), "update_machine");
	EXPECT_STREQ(EndpointName(Endpoint::kStopMachine), "stop_machine");
	EXPECT_STREQ(EndpointName(Endpoint::kStartMachine), "start_machine");
	EXPECT_STREQ(EndpointName(Endpoint::kDeleteMachine), "delete_machine");
	EXPECT_STREQ(EndpointName(Endpoint::kListIpAssignments), "list_ip_assignments");
	EXPECT_STREQ(EndpointName(Endpoint::kAssignIp), "assign_ip");
}

TEST(PercentEncode, KeepsUnreservedAndEncodesTheRest) {
	EXPECT_EQ(PercentEncode("vyx-user-1a2b3c4d"), "vyx-user-1a2b3c4d");
	EXPECT_EQ(PercentEncode("a.b_c~d"), "a.b_c~d");
	EXPECT_EQ(PercentEncode("a/b?c#d e%"), "a%2Fb%3Fc%23d%20e%25");
	EXPECT_EQ(PercentEncode("\xc3\xa9"), "%C3%A9");
	EXPECT_EQ(PercentEncode(".."), "%2E%2E");
	EXPECT_EQ(PercentEncode("."), "%2E");
}

TEST(CreateAppRequest, SendsNameAndAppNameAndOrg) {
	const Request request = CreateAppRequest("vyx-user-1a2b3c4d", "acme");
	EXPECT_EQ(request.method, "POST");
	EXPECT_EQ(request.path, "/v1/apps");
	EXPECT_TRUE(request.query.empty());
	EXPECT_EQ(request.endpoint, Endpoint::kCreateApp);
	const Json body = Body(request);
	EXPECT_EQ(body.GetString("name"), "vyx-user-1a2b3c4d");
	EXPECT_EQ(body.GetString("app_name"), "vyx-user-1a2b3c4d");
	EXPECT_EQ(body.GetString("org_slug"), "acme");
	EXPECT_FALSE(body.Get("network").HasValue());
	EXPECT_EQ(body.Size(), 3u);
}

TEST(CreateAppRequest, SendsNetworkWhenGiven) {
	const Json body = Body(CreateAppRequest("vyx-user-1a2b3c4d", "personal", std::string("vyx-user-1a2b3c4d")));
	EXPECT_EQ(body.GetString("network"), "vyx-user-1a2b3c4d");
	EXPECT_EQ(body.Size(), 4u);
}

TEST(CreateAppRequest, RefusesEmptyNamesAndInvalidUtf8) {
	EXPECT_THROW(CreateAppRequest("", "acme"), std::invalid_argument);
	EXPECT_THROW(CreateAppRequest("app", ""), std::invalid_argument);
	EXPECT_THROW(CreateAppRequest("app\xff", "acme"), std::invalid_argument);
}

TEST(GetAppRequest, PathIsEncoded) {
	const Request request = GetAppRequest("vyx-user-1a2b3c4d");
	EXPECT_EQ(request.method, "GET");
	EXPECT_EQ(request.path, "/v1/apps/vyx-user-1a2b3c4d");
	EXPECT_FALSE(request.body_json.has_value());
	EXPECT_EQ(request.endpoint, Endpoint::kGetApp);
	EXPECT_EQ(GetAppRequest("a/../b").path, "/v1/apps/a%2F..%2Fb");
	EXPECT_EQ(GetAppRequest("..").path, "/v1/apps/%2E%2E");
	EXPECT_THROW(GetAppRequest(""), std::invalid_argument);
}

TEST(DeleteAppRequest, ForceIsAQueryParameter) {
	Request request = DeleteAppRequest("app-1");
	EXPECT_EQ(request.method, "DELETE");
	EXPECT_EQ(request.path, "/v1/apps/app-1");
	EXPECT_TRUE(request.query.empty());
	EXPECT_FALSE(request.body_json.has_value());
	EXPECT_EQ(request.endpoint, Endpoint::kDeleteApp);
	request = DeleteAppRequest("app-1", true);
	EXPECT_EQ(request.query, (Query{{"force", "true"}}));
}

TEST(ListAppsRequest, OrgSlugAndRole) {
	Request request = ListAppsRequest("acme");
	EXPECT_EQ(request.method, "GET");
	EXPECT_EQ(request.path, "/v1/apps");
	EXPECT_EQ(request.query, (Query{{"org_slug", "acme"}}));
	EXPECT_EQ(request.endpoint, Endpoint::kListApps);
	request = ListAppsRequest("acme", std::string("machines"));
	EXPECT_EQ(request.query, (Query{{"org_slug", "acme"}, {"app_role", "machines"}}));
	EXPECT_THROW(ListAppsRequest(""), std::invalid_argument);
}

TEST(SetSecretsRequest, ValuesWithNullUnsetting) {
	const Request request =
		SetSecretsRequest("app-1", {{"DATABASE_URL", std::string("postgres://x")}, {"OLD", std::nullopt}});
	EXPECT_EQ(request.method, "POST");
	EXPECT_EQ(request.path, "/v1/apps/app-1/secrets");
	EXPECT_EQ(request.endpoint, Endpoint::kSetSecrets);
	const Json body = Body(request);
	EXPECT_EQ(body.Size(), 1u);
	const Json values = body.Get("values");
	ASSERT_TRUE(values.IsObject());
	EXPECT_EQ(values.Size(), 2u);
	EXPECT_EQ(values.GetString("DATABASE_URL"), "postgres://x");
	EXPECT_TRUE(values.Get("OLD").IsNull());
	EXPECT_EQ(*request.body_json, R"({"values":{"DATABASE_URL":"postgres://x","OLD":null}})");
}

TEST(SetSecretsRequest, InvalidValueIsRefusedWithoutQuotingIt) {
	try {
		SetSecretsRequest("app-1", {{"API_KEY", std::string("s3cr3t\xff")}});
		FAIL() << "expected std::invalid_argument";
	} catch (const std::invalid_argument &error) {
		EXPECT_EQ(std::string(error.what()).find("s3cr3t"), std::string::npos);
		EXPECT_NE(std::string(error.what()).find("API_KEY"), std::string::npos);
	}
	EXPECT_THROW(SetSecretsRequest("app-1", {{"", std::string("x")}}), std::invalid_argument);
}

TEST(CreateMachineRequest, FullBody) {
	MachineSpec spec = SampleSpec();
	spec.name = std::string("main");
	const Request request = CreateMachineRequest("app-1", spec);
	EXPECT_EQ(request.method, "POST");
	EXPECT_EQ(request.path, "/v1/apps/app-1/machines");
	EXPECT_TRUE(request.query.empty());
	EXPECT_EQ(request.endpoint, Endpoint::kCreateMachine);
	const Json body = Body(request);
	EXPECT_EQ(body.GetString("region"), "sjc");
	EXPECT_EQ(body.GetString("name"), "main");
	EXPECT_EQ(body.GetInteger("min_secrets_version"), 3);
	EXPECT_EQ(body.Size(), 4u);
	ExpectConfig(body.Get("config"));
}

TEST(CreateMachineRequest, OptionalFieldsAreOmitted) {
	MachineSpec spec;
	spec.image = "nginx:1";
	spec.restart_policy = "";
	const Json body = Body(CreateMachineRequest("app-1", spec));
	EXPECT_EQ(body.Keys(), (std::vector<std::string>{"config"}));
	const Json config = body.Get("config");
	EXPECT_EQ(config.GetString("image"), "nginx:1");
	EXPECT_EQ(config.Get("guest").GetString("cpu_kind"), "shared");
	EXPECT_EQ(config.Get("guest").GetInteger("cpus"), 1);
	EXPECT_EQ(config.Get("guest").GetInteger("memory_mb"), 256);
	EXPECT_FALSE(config.Get("restart").HasValue());
	EXPECT_TRUE(config.Get("env").IsObject());
	EXPECT_EQ(config.Get("env").Size(), 0u);
	EXPECT_TRUE(config.Get("metadata").IsObject());
	MachineSpec no_image;
	EXPECT_THROW(CreateMachineRequest("app-1", no_image), std::invalid_argument);
}

TEST(CreateMachineRequest, NoServicesOrChecksWithoutAPort) {
	const Json config = Body(CreateMachineRequest("app-1", SampleSpec())).Get("config");
	EXPECT_FALSE(config.Get("services").HasValue());
	EXPECT_FALSE(config.Get("checks").HasValue());
}

TEST(CreateMachineRequest, ServiceAndHttpCheckWithAPort) {
	MachineSpec spec = SampleSpec();
	spec.service.internal_port = 8080;
	spec.service.health_path = "/healthz";
	const Json config = Body(CreateMachineRequest("app-1", spec)).Get("config");
	const Json services = config.Get("services");
	ASSERT_TRUE(services.IsArray());
	ASSERT_EQ(services.Size(), 1u);
	const Json service = services.At(0);
	EXPECT_EQ(service.GetString("protocol"), "tcp");
	EXPECT_EQ(service.GetInteger("internal_port"), 8080);
	EXPECT_EQ(service.GetString("autostop"), "off");
	EXPECT_EQ(service.GetBool("autostart"), true);
	EXPECT_EQ(service.GetInteger("min_machines_running"), 1);
	const Json ports = service.Get("ports");
	ASSERT_EQ(ports.Size(), 2u);
	EXPECT_EQ(ports.At(0).GetInteger("port"), 443);
	EXPECT_EQ(ports.At(0).Get("handlers").Dump(), "[\"tls\",\"http\"]");
	EXPECT_FALSE(ports.At(0).Get("force_https").HasValue());
	EXPECT_EQ(ports.At(1).GetInteger("port"), 80);
	EXPECT_EQ(ports.At(1).Get("handlers").Dump(), "[\"http\"]");
	EXPECT_EQ(ports.At(1).GetBool("force_https"), true);
	const Json check = config.Get("checks").Get("pg_fly_health");
	EXPECT_EQ(check.GetString("type"), "http");
	EXPECT_EQ(check.GetInteger("port"), 8080);
	EXPECT_EQ(check.GetString("path"), "/healthz");
	EXPECT_EQ(check.GetString("method"), "GET");
	EXPECT_EQ(check.GetString("interval"), "15s"); // durations are Go duration strings, never numbers
	EXPECT_EQ(check.GetString("timeout"), "5s");
	EXPECT_EQ(check.GetString("grace_period"), "10s");
	// An update carries the same service: it replaces the whole config.
	EXPECT_EQ(Body(UpdateMachineRequest("app-1", "m1", spec)).Get("config").Dump(), config.Dump());
}

TEST(IpAssignmentRequests, ListAndAssignWithNetwork) {
	const Request list = ListIpAssignmentsRequest("vyx-user-1");
	EXPECT_EQ(list.method, "GET");
	EXPECT_EQ(list.path, "/v1/apps/vyx-user-1/ip_assignments");
	EXPECT_FALSE(list.body_json.has_value());
	const Request assign = AssignIpRequest("vyx-user-1", "shared_v4", std::string("vyx-user-1"));
	EXPECT_EQ(assign.method, "POST");
	EXPECT_EQ(assign.path, "/v1/apps/vyx-user-1/ip_assignments");
	EXPECT_EQ(assign.endpoint, Endpoint::kAssignIp);
	const Json body = Body(assign);
	EXPECT_EQ(body.Keys(), (std::vector<std::string>{"type", "network"}));
	EXPECT_EQ(body.GetString("type"), "shared_v4");
	EXPECT_EQ(body.GetString("network"), "vyx-user-1");
	EXPECT_EQ(Body(AssignIpRequest("a", "v6")).Keys(), (std::vector<std::string>{"type"}));
	EXPECT_THROW(AssignIpRequest("", "v6"), std::invalid_argument);
	EXPECT_THROW(AssignIpRequest("a", ""), std::invalid_argument);
	EXPECT_THROW(ListIpAssignmentsRequest(""), std::invalid_argument);
}

TEST(UpdateMachineRequest, SameConfigWithoutRegionOrName) {
	MachineSpec spec = SampleSpec();
	spec.name = std::string("main");
	const Request request = UpdateMachineRequest("app-1", "3d8d9e1b", spec);
	EXPECT_EQ(request.method, "POST");
	EXPECT_EQ(request.path, "/v1/apps/app-1/machines/3d8d9e1b");
	EXPECT_EQ(request.endpoint, Endpoint::kUpdateMachine);
	const Json body = Body(request);
	EXPECT_FALSE(body.Get("region").HasValue());
	EXPECT_FALSE(body.Get("name").HasValue());
	EXPECT_EQ(body.GetInteger("min_secrets_version"), 3);
	EXPECT_EQ(body.Size(), 2u);
	ExpectConfig(body.Get("config"));
	// Update replaces the whole config, so it must be exactly what create sent.
	EXPECT_EQ(body.Get("config").Dump(), Body(CreateMachineRequest("app-1", spec)).Get("config").Dump());
	spec.min_secrets_version.reset();
	EXPECT_FALSE(Body(UpdateMachineRequest("app-1", "3d8d9e1b", spec)).Get("min_secrets_version").HasValue());
	EXPECT_THROW(UpdateMachineRequest("app-1", "", spec), std::invalid_argument);
}

TEST(ListMachinesRequest, MetadataFilters) {
	Request request = ListMachinesRequest("app-1");
	EXPECT_EQ(request.method, "GET");
	EXPECT_EQ(request.path, "/v1/apps/app-1/machines");
	EXPECT_TRUE(request.query.empty());
	EXPECT_EQ(request.endpoint, Endpoint::kListMachines);
	request = ListMachinesRequest("app-1", {{"pg_fly_user", "7d1c"}, {"pg_fly_op", "a b&c"}});
	EXPECT_EQ(request.query, (Query{{"metadata.pg_fly_op", "a b&c"}, {"metadata.pg_fly_user", "7d1c"}}));
	EXPECT_FALSE(request.body_json.has_value());
}

TEST(GetMachineRequest, Path) {
	const Request request = GetMachineRequest("app-1", "3d8d9e1b");
	EXPECT_EQ(request.method, "GET");
	EXPECT_EQ(request.path, "/v1/apps/app-1/machines/3d8d9e1b");
	EXPECT_EQ(request.endpoint, Endpoint::kGetMachine);
	EXPECT_EQ(GetMachineRequest("app-1", "x/y").path, "/v1/apps/app-1/machines/x%2Fy");
}

TEST(WaitMachineRequest, StateAndClampedTimeout) {
	Request request = WaitMachineRequest("app-1", "m1", "started", 30);
	EXPECT_EQ(request.method, "GET");
	EXPECT_EQ(request.path, "/v1/apps/app-1/machines/m1/wait");
	EXPECT_EQ(request.query, (Query{{"state", "started"}, {"timeout", "30"}}));
	EXPECT_EQ(request.endpoint, Endpoint::kWaitMachine);
	EXPECT_EQ(WaitTimeoutSeconds(request), 30);
	request = WaitMachineRequest("app-1", "m1", "stopped", 600, "01HQVERSION");
	EXPECT_EQ(request.query, (Query{{"state", "stopped"}, {"timeout", "60"}, {"version", "01HQVERSION"}}));
	EXPECT_EQ(WaitTimeoutSeconds(request), 60);
	request = WaitMachineRequest("app-1", "m1", "", 0);
	EXPECT_EQ(request.query, (Query{{"state", "started"}, {"timeout", "1"}}));
	EXPECT_EQ(WaitMachineRequest("app-1", "m1", "destroyed", -5).query[1].second, "1");
	EXPECT_EQ(WaitTimeoutSeconds(GetAppRequest("app-1")), 0);
}

TEST(StopMachineRequest, NoBodyUnlessSignalOrTimeout) {
	Request request = StopMachineRequest("app-1", "m1");
	EXPECT_EQ(request.method, "POST");
	EXPECT_EQ(request.path, "/v1/apps/app-1/machines/m1/stop");
	EXPECT_FALSE(request.body_json.has_value());
	EXPECT_EQ(request.endpoint, Endpoint::kStopMachine);
	const Json body = Body(StopMachineRequest("app-1", "m1", "SIGTERM", "30s"));
	EXPECT_EQ(body.GetString("signal"), "SIGTERM");
	EXPECT_EQ(body.GetString("timeout"), "30s");
	EXPECT_EQ(body.Size(), 2u);
}

TEST(StartMachineRequest, PathWithoutBody) {
	const Request request = StartMachineRequest("app-1", "m1");
	EXPECT_EQ(request.method, "POST");
	EXPECT_EQ(request.path, "/v1/apps/app-1/machines/m1/start");
	EXPECT_FALSE(request.body_json.has_value());
	EXPECT_EQ(request.endpoint, Endpoint::kStartMachine);
}

TEST(DeleteMachineRequest, ForceQuery) {
	Request request = DeleteMachineRequest("app-1", "m1");
	EXPECT_EQ(request.method, "DELETE");
	EXPECT_EQ(request.path, "/v1/apps/app-1/machines/m1");
	EXPECT_TRUE(request.query.empty());
	EXPECT_EQ(request.endpoint, Endpoint::kDeleteMachine);
	request = DeleteMachineRequest("app-1", "m1", true);
	EXPECT_EQ(request.query, (Query{{"force", "true"}}));
}

} // namespace
} // namespace fly
} // namespace pgfly

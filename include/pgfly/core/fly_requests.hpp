// Builders for the Fly Machines API requests the provisioner makes (docs/fly-api.md; field names as in Fly's
// OpenAPI spec). A Request is plain data: method, path (segments percent-encoded), raw query pairs (encoded by
// the client) and an optional JSON body. Builders throw std::invalid_argument for input that cannot form a valid
// request (an empty app name or machine id, text that is not UTF-8); the message never quotes secret values.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace pgfly {
namespace fly {

enum class Endpoint {
	kCreateApp,
	kGetApp,
	kDeleteApp,
	kListApps,
	kSetSecrets,
	kCreateMachine,
	kListMachines,
	kGetMachine,
	kWaitMachine,
	kUpdateMachine,
	kStopMachine,
	kStartMachine,
	kDeleteMachine,
	kListIpAssignments,
	kAssignIp,
	// Not Fly's API: a user app's own health endpoint (absolute URL, no token).
	kAppHealth,
};

// snake_case name, as the project's Fly simulator and the event log call it ("create_app", ...).
const char *EndpointName(Endpoint endpoint);

// Whether the endpoint is Fly's API, whose answers feed Fly's rate limiter and circuit breaker. A user app's own
// health endpoint is not: a batch of slow user apps says nothing about Fly.
bool IsFlyApi(Endpoint endpoint);

struct Request {
	std::string method;
	// Starts with /v1/; identifiers already percent-encoded.
	std::string path;
	// Unencoded name/value pairs, in order.
	std::vector<std::pair<std::string, std::string>> query;
	std::optional<std::string> body_json;
	Endpoint endpoint = Endpoint::kGetApp;
	// When set, the request goes to this URL instead of the API's base URL + path.
	std::string absolute_url;
	// Whether the Fly token goes along; never for URLs outside the Fly API.
	bool authenticated = true;
};

struct Guest {
	std::string cpu_kind = "shared";
	int cpus = 1;
	int memory_mb = 256;
};

// The one public service a user app's machine offers when an internal port is configured: Fly's proxy takes
// 443 (TLS + HTTP) and 80 (HTTP, redirected to HTTPS) to internal_port, and an HTTP check asks health_path.
// The name of pg_fly's HTTP check (a key of fly.MachineConfig.checks).
constexpr const char *kHealthCheckName = "pg_fly_health";

struct AppService {
	int internal_port = 0; // 0: no service, no check (the config carries neither)
	std::string health_path = "/health";
};

struct MachineSpec {
	std::string image;
	Guest guest;
	// Omitted from the body when empty: Fly then picks a region near the caller.
	std::string region;
	std::map<std::string, std::string> env;
	// Omitted when empty (Fly's default is on-failure).
	std::string restart_policy = "always";
	std::map<std::string, std::string> metadata;
	std::optional<int64_t> min_secrets_version;
	// Create only: Fly generates a name when absent, and a name cannot be changed by an update.
	std::optional<std::string> name;
	AppService service;
};

// Percent-encodes everything but RFC 3986 unreserved characters; "." and ".." are encoded entirely so that no
// dot-segment normalisation can change the path.
std::string PercentEncode(const std::string &text);

// POST /v1/apps with both "name" (spec, fly-go) and "app_name" (docs) set to app_name; network only if given.
Request CreateAppRequest(const std::string &app_name, const std::string &org_slug,
                         const std::optional<std::string> &network = std::nullopt);
// GET /v1/apps/{app}
Request GetAppRequest(const std::string &app_name);
// DELETE /v1/apps/{app}[?force=true] (force is in Fly's docs, not in its OpenAPI spec).
Request DeleteAppRequest(const std::string &app_name, bool force = false);
// GET /v1/apps?org_slug=...[&app_role=...]
Request ListAppsRequest(const std::string &org_slug, const std::optional<std::string> &app_role = std::nullopt);
// POST /v1/apps/{app}/secrets {"values": {"K": "v", "OLD": null}}: a value of nullopt unsets the secret.
Request SetSecretsRequest(const std::string &app_name, const std::map<std::string, std::optional<std::string>> &values);
// POST /v1/apps/{app}/machines {"region", "name", "config", "min_secrets_version"}
Request CreateMachineRequest(const std::string &app_name, const MachineSpec &spec);
// GET /v1/apps/{app}/machines?metadata.<key>=<value>... (every filter must match)
Request ListMachinesRequest(const std::string &app_name, const std::map<std::string, std::string> &metadata = {});
// GET /v1/apps/{app}/machines/{id}
Request GetMachineRequest(const std::string &app_name, const std::string &machine_id);
// GET /v1/apps/{app}/machines/{id}/wait?state=...&timeout=N[&version=...]; timeout clamped to 1..60 seconds.
Request WaitMachineRequest(const std::string &app_name, const std::string &machine_id, const std::string &state,
                           int timeout_seconds, const std::string &version = "");
// POST /v1/apps/{app}/machines/{id} {"config", "min_secrets_version"}: the full config; region and name are
// immutable and not sent.
Request UpdateMachineRequest(const std::string &app_name, const std::string &machine_id, const MachineSpec &spec);
// POST /v1/apps/{app}/machines/{id}/stop: no body (Fly's default signal and timeout) unless signal or timeout is
// given, e.g. "SIGTERM" and "30s" (StopRequest in the spec).
Request StopMachineRequest(const std::string &app_name, const std::string &machine_id, const std::string &signal = "",
                           const std::string &timeout = "");
// POST /v1/apps/{app}/machines/{id}/start (no body)
Request StartMachineRequest(const std::string &app_name, const std::string &machine_id);
// DELETE /v1/apps/{app}/machines/{id}[?force=true]
Request DeleteMachineRequest(const std::string &app_name, const std::string &machine_id, bool force = false);

// GET /v1/apps/{app}/ip_assignments
Request ListIpAssignmentsRequest(const std::string &app_name);
// POST /v1/apps/{app}/ip_assignments {"type", "network"}: type is an IPAssignmentType ("shared_v4", "v6", ...);
// network only if given (the app's private network, so that the address belongs to it).
Request AssignIpRequest(const std::string &app_name, const std::string &type,
                        const std::optional<std::string> &network = std::nullopt);

// GET <url> without the Fly token: a user app's own health endpoint.
Request AppHealthRequest(const std::string &url);

// The wait timeout, in seconds, a WaitMachineRequest carries (from its query); 0 for other requests.
int WaitTimeoutSeconds(const Request &request);

} // namespace fly
} // namespace pgfly

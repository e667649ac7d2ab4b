#include "pgfly/core/fly_requests.hpp"

#include <algorithm>
#include <cstdlib>
#include <initializer_list>
#include <stdexcept>

#include "pgfly/core/json.hpp"

#include "pgfly/core/cpp_only.hpp"

namespace pgfly {
namespace fly {

namespace {

constexpr int kMinWaitSeconds = 1;
// Fly blocks a wait for at most 60 s whatever is asked (docs/fly-api.md).
constexpr int kMaxWaitSeconds = 60;

bool
IsUnreserved(unsigned char c) {
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
	       c == '_' || c == '~';
}

std::string
Segment(const std::string &what, const std::string &value) {
	if (value.empty()) {
		throw std::invalid_argument("the " + what + " is empty");
	}
	return PercentEncode(value);
}

std::string
AppPath(const std::string &app_name) {
	return "/v1/apps/" + Segment("app name", app_name);
}

std::string
MachinePath(const std::string &app_name, const std::string &machine_id) {
	return AppPath(app_name) + "/machines/" + Segment("machine id", machine_id);
}

// A JSON string, or std::invalid_argument naming the field (never its value, which may be a secret).
Json
Text(const std::string &value, const std::string &field) {
	Json json = Json::String(value);
	if (!json) {
		throw std::invalid_argument("the " + field + " is not valid UTF-8");
	}
	return json;
}

void
SetMember(Json &object, const std::string &key, const Json &value, const std::string &field) {
	if (!object.Set(key, value)) {
		throw std::invalid_argument("the " + field + " name is not valid UTF-8 or contains a NUL byte");
	}
}

Json
StringMap(const std::map<std::string, std::string> &map, const std::string &field) {
	Json object = Json::Object();
	for (const auto &[key, value] : map) {
		SetMember(object, key, Text(value, field + " value of " + key), field);
	}
	return object;
}

Json
PortJson(int port, std::initializer_list<const char *> handlers, bool force_https) {
	Json json = Json::Object();
	json.Set("port", Json::Integer(port));
	Json names = Json::Array();
	for (const char *handler : handlers) {
		names.Append(Json::String(handler));
	}
	json.Set("handlers", names);
	if (force_https) {
		json.Set("force_https", Json::Bool(true));
	}
	return json;
}

// fly.MachineService: the app's one public service. Always running (a user's traders must not be stopped by
// the proxy when no request comes), so autostop off and autostart on.
Json
ServicesJson(const AppService &service) {
	Json json = Json::Object();
	json.Set("protocol", Json::String("tcp"));
	json.Set("internal_port", Json::Integer(service.internal_port));
	Json ports = Json::Array();
	ports.Append(PortJson(443, {"tls", "http"}, false));
	ports.Append(PortJson(80, {"http"}, true));
	json.Set("ports", ports);
	json.Set("autostop", Json::String("off"));
	json.Set("autostart", Json::Bool(true));
	json.Set("min_machines_running", Json::Integer(1));
	Json services = Json::Array();
	services.Append(json);
	return services;
}

// fly.MachineConfig.checks: one named HTTP check on the health path, so that Fly's checks[] mean "answers".
Json
ChecksJson(const AppService &service) {
	Json check = Json::Object();
	check.Set("type", Json::String("http"));
	check.Set("port", Json::Integer(service.internal_port));
	check.Set("method", Json::String("GET"));
	check.Set("path", Text(service.health_path, "health path"));
	check.Set("protocol", Json::String("http"));
	check.Set("interval", Json::String("15s"));
	check.Set("timeout", Json::String("5s"));
	check.Set("grace_period", Json::String("10s"));
	Json checks = Json::Object();
	checks.Set(kHealthCheckName, check);
	return checks;
}

// fly.MachineConfig with the fields the provisioner manages. Update replaces the whole config (no partial
// updates), so create and update must build exactly the same object.
Json
MachineConfig(const MachineSpec &spec) {
	if (spec.image.empty()) {
		throw std::invalid_argument("the machine image is empty");
	}
	Json guest = Json::Object();
	guest.Set("cpu_kind", Text(spec.guest.cpu_kind, "guest cpu_kind"));
	guest.Set("cpus", Json::Integer(spec.guest.cpus));
	guest.Set("memory_mb", Json::Integer(spec.guest.memory_mb));

	Json config = Json::Object();
	config.Set("image", Text(spec.image, "machine image"));
	config.Set("guest", guest);
	config.Set("env", StringMap(spec.env, "env"));
	if (!spec.restart_policy.empty()) {
		Json restart = Json::Object();
		restart.Set("policy", Text(spec.restart_policy, "restart policy"));
		config.Set("restart", restart);
	}
	config.Set("metadata", StringMap(spec.metadata, "metadata"));
	if (spec.service.internal_port > 0) {
		config.Set("services", ServicesJson(spec.service));
		config.Set("checks", ChecksJson(spec.service));
	}
	return config;
}

enum class MachineBodyFor { kCreate, kUpdate };

// The body of a create or an update: the same config either way; region and name only on create, since an
// update cannot change them.
std::string
MachineBody(const MachineSpec &spec, MachineBodyFor purpose) {
	Json body = Json::Object();
	if (purpose == MachineBodyFor::kCreate) {
		if (!spec.region.empty()) {
			body.Set("region", Text(spec.region, "region"));
		}
		if (spec.name) {
			body.Set("name", Text(*spec.name, "machine name"));
		}
	}
	body.Set("config", MachineConfig(spec));
	if (spec.min_secrets_version) {
		body.Set("min_secrets_version", Json::Integer(*spec.min_secrets_version));
	}
	return body.Dump();
}

Request
Make(const char *method, std::string path, Endpoint endpoint) {
	Request request;
	request.method = method;
	request.path = std::move(path);
	request.endpoint = endpoint;
	return request;
}

} // namespace

const char *
EndpointName(Endpoint endpoint) {
	switch (endpoint) {
	case Endpoint::kCreateApp:
		return "create_app";
	case Endpoint::kGetApp:
		return "get_app";
	case Endpoint::kDeleteApp:
		return "delete_app";
	case Endpoint::kListApps:
		return "list_apps";
	case Endpoint::kSetSecrets:
		return "set_secrets";
	case Endpoint::kCreateMachine:
		return "create_machine";
	case Endpoint::kListMachines:
		return "list_machines";
	case Endpoint::kGetMachine:
		return "get_machine";
	case Endpoint::kWaitMachine:
		return "wait_machine";
	case Endpoint::kUpdateMachine:
		return "update_machine";
	case Endpoint::kStopMachine:
		return "stop_machine";
	case Endpoint::kStartMachine:
		return "start_machine";
	case Endpoint::kDeleteMachine:
		return "delete_machine";
	case Endpoint::kListIpAssignments:
		return "list_ip_assignments";
	case Endpoint::kAssignIp:
		return "assign_ip";
	case Endpoint::kAppHealth:
		return "app_health";
	}
	return "unknown";
}

bool
IsFlyApi(Endpoint endpoint) {
	return endpoint != Endpoint::kAppHealth;
}

std::string
PercentEncode(const std::string &text) {
	static const char kHex[] = "0123456789ABCDEF";
	const bool dot_segment = text == "." || text == "..";
	std::string encoded;
	encoded.reserve(text.size() * 3);
	for (unsigned char c : text) {
		if (IsUnreserved(c) && !dot_segment) {
			encoded.push_back(static_cast<char>(c));
		} else {
			encoded.push_back('%');
			encoded.push_back(kHex[c >> 4]);
			encoded.push_back(kHex[c & 0xf]);
		}
	}
	return encoded;
}

Request
CreateAppRequest(const std::string &app_name, const std::string &org_slug, const std::optional<std::string> &network) {
	if (app_name.empty()) {
		throw std::invalid_argument("the app name is empty");
	}
	if (org_slug.empty()) {
		throw std::invalid_argument("the organization slug is empty");
	}
	Request request = Make("POST", "/v1/apps", Endpoint::kCreateApp);
	// Fly's OpenAPI spec and fly-go say "name", Fly's docs "app_name"; which one Fly treats as canonical is not
	// documented (docs/fly-api.md), so both carry the same value.
	Json body = Json::Object();
	body.Set("name", Text(app_name, "app name"));
	body.Set("app_name", Text(app_name, "app name"));
	body.Set("org_slug", Text(org_slug, "organization slug"));
	if (network) {
		body.Set("network", Text(*network, "network name"));
	}
	request.body_json = body.Dump();
	return request;
}

Request
GetAppRequest(const std::string &app_name) {
	return Make("GET", AppPath(app_name), Endpoint::kGetApp);
}

Request
DeleteAppRequest(const std::string &app_name, bool force) {
	Request request = Make("DELETE", AppPath(app_name), Endpoint::kDeleteApp);
	if (force) {
		request.query.emplace_back("force", "true");
	}
	return request;
}

Request
ListAppsRequest(const std::string &org_slug, const std::optional<std::string> &app_role) {
	if (org_slug.empty()) {
		throw std::invalid_argument("the organization slug is empty");
	}
	Request request = Make("GET", "/v1/apps", Endpoint::kListApps);
	request.query.emplace_back("org_slug", org_slug);
	if (app_role) {
		request.query.emplace_back("app_role", *app_role);
	}
	return request;
}

Request
SetSecretsRequest(const std::string &app_name, const std::map<std::string, std::optional<std::string>> &values) {
	Request request = Make("POST", AppPath(app_name) + "/secrets", Endpoint::kSetSecrets);
	Json object = Json::Object();
	for (const auto &[name, value] : values) {
		if (name.empty()) {
			throw std::invalid_argument("a secret name is empty");
		}
		// JSON null unsets the secret (AppSecretsUpdateRequest).
		SetMember(object, name, value ? Text(*value, "value of secret " + name) : Json::Null(), "secret");
	}
	Json body = Json::Object();
	body.Set("values", object);
	request.body_json = body.Dump();
	return request;
}

Request
CreateMachineRequest(const std::string &app_name, const MachineSpec &spec) {
	Request request = Make("POST", AppPath(app_name) + "/machines", Endpoint::kCreateMachine);
	request.body_json = MachineBody(spec, MachineBodyFor::kCreate);
	return request;
}

Request
ListMachinesRequest(const std::string &app_name, const std::map<std::string, std::string> &metadata) {
	Request request = Make("GET", AppPath(app_name) + "/machines", Endpoint::kListMachines);
	for (const auto &[key, value] : metadata) {
		if (key.empty()) {
			throw std::invalid_argument("a metadata filter key is empty");
		}
		request.query.emplace_back("metadata." + key, value);
	}
	return request;
}

Request
GetMachineRequest(const std::string &app_name, const std::string &machine_id) {
	return Make("GET", MachinePath(app_name, machine_id), Endpoint::kGetMachine);
}

Request
WaitMachineRequest(const std::string &app_name, const std::string &machine_id, const std::string &state,
                   int timeout_seconds, const std::string &version) {
	Request request = Make("GET", MachinePath(app_name, machine_id) + "/wait", Endpoint::kWaitMachine);
	request.query.emplace_back("state", state.empty() ? "started" : state);
	request.query.emplace_back("timeout",
	                           std::to_string(std::clamp(timeout_seconds, kMinWaitSeconds, kMaxWaitSeconds)));
	if (!version.empty()) {
		request.query.emplace_back("version", version);
	}
	return request;
}

Request
UpdateMachineRequest(const std::string &app_name, const std::string &machine_id, const MachineSpec &spec) {
	Request request = Make("POST", MachinePath(app_name, machine_id), Endpoint::kUpdateMachine);
	request.body_json = MachineBody(spec, MachineBodyFor::kUpdate);
	return request;
}

Request
StopMachineRequest(const std::string &app_name, const std::string &machine_id, const std::string &signal,
                   const std::string &timeout) {
	Request request = Make("POST", MachinePath(app_name, machine_id) + "/stop", Endpoint::kStopMachine);
	// The body is optional (StopRequest); without one Fly uses the machine's stop_config or SIGINT.
	if (!signal.empty() || !timeout.empty()) {
		Json body = Json::Object();
		if (!signal.empty()) {
			body.Set("signal", Text(signal, "stop signal"));
		}
		if (!timeout.empty()) {
			body.Set("timeout", Text(timeout, "stop timeout"));
		}
		request.body_json = body.Dump();
	}
	return request;
}

Request
StartMachineRequest(const std::string &app_name, const std::string &machine_id) {
	return Make("POST", MachinePath(app_name, machine_id) + "/start", Endpoint::kStartMachine);
}

Request
DeleteMachineRequest(const std::string &app_name, const std::string &machine_id, bool force) {
	Request request = Make("DELETE", MachinePath(app_name, machine_id), Endpoint::kDeleteMachine);
	if (force) {
		request.query.emplace_back("force", "true");
	}
	return request;
}

Request
ListIpAssignmentsRequest(const std::string &app_name) {
	return Make("GET", AppPath(app_name) + "/ip_assignments", Endpoint::kListIpAssignments);
}

Request
AssignIpRequest(const std::string &app_name, const std::string &type, const std::optional<std::string> &network) {
	Request request = Make("POST", AppPath(app_name) + "/ip_assignments", Endpoint::kAssignIp);
	if (type.empty()) {
		throw std::invalid_argument("the IP address type is empty");
	}
	Json body = Json::Object();
	body.Set("type", Text(type, "IP address type"));
	if (network) {
		body.Set("network", Text(*network, "network name"));
	}
	request.body_json = body.Dump();
	return request;
}

int
WaitTimeoutSeconds(const Request &request) {
	if (request.endpoint != Endpoint::kWaitMachine) {
		return 0;
	}
	for (const auto &[name, value] : request.query) {
		if (name == "timeout") {
			const int seconds = std::atoi(value.c_str());
			return std::clamp(seconds, kMinWaitSeconds, kMaxWaitSeconds);
		}
	}
	// Fly's default when no timeout is given.
	return kMaxWaitSeconds;
}

Request
AppHealthRequest(const std::string &url) {
	Request request;
	request.method = "GET";
	request.absolute_url = url;
	request.authenticated = false;
	request.endpoint = Endpoint::kAppHealth;
	return request;
}

} // namespace fly
} // namespace pgfly

#include "pgfly/core/machine_spec.hpp"

#include "pgfly/core/cpp_only.hpp"

namespace pgfly {
namespace machine {

namespace {

fly::Guest
GuestFrom(const Json &config) {
	fly::Guest guest;
	Json json = config.Get("guest");
	guest.cpu_kind = json.GetString("cpu_kind").value_or("");
	guest.cpus = static_cast<int>(json.GetInteger("cpus").value_or(0));
	guest.memory_mb = static_cast<int>(json.GetInteger("memory_mb").value_or(0));
	return guest;
}

MachineFacts
FactsFrom(const Json &machine) {
	MachineFacts facts;
	facts.id = machine.GetString("id").value_or("");
	facts.state = machine.GetString("state").value_or("");
	facts.region = machine.GetString("region").value_or("");
	Json config = machine.Get("config");
	facts.image = config.GetString("image").value_or("");
	facts.guest = GuestFrom(config);
	const Json services = config.Get("services");
	if (services.IsArray() && services.Size() > 0) {
		facts.service.internal_port = static_cast<int>(services.At(0).GetInteger("internal_port").value_or(0));
	}
	facts.service.health_path = config.Get("checks").Get(fly::kHealthCheckName).GetString("path").value_or("");
	facts.metadata_user_id = config.Get("metadata").GetString(kUserMetadataKey).value_or("");
	facts.env_user_id = config.Get("env").GetString("USER_ID").value_or("");
	return facts;
}

const char *
JsonTypeName(const Json &value) {
	if (value.IsObject()) {
		return "an object";
	}
	if (value.IsArray()) {
		return "an array";
	}
	if (value.IsString()) {
		return "a string";
	}
	if (value.IsNumber()) {
		return "a number";
	}
	if (value.IsBool()) {
		return "a boolean";
	}
	return "null";
}

// Why member `key` of object is present with another JSON type than `wanted` says (absent is fine).
std::optional<std::string>
MemberTypeProblem(const Json &object, const char *key, const char *wanted, bool (Json::*is_wanted)() const) {
	const Json member = object.Get(key);
	if (!member.HasValue() || (member.*is_wanted)()) {
		return std::nullopt;
	}
	return std::string("its ") + key + " is " + JsonTypeName(member) + ", not " + wanted;
}

} // namespace

Json
GuestJson(const fly::Guest &guest) {
	Json json = Json::Object();
	json.Set("cpu_kind", Json::String(guest.cpu_kind));
	json.Set("cpus", Json::Integer(guest.cpus));
	json.Set("memory_mb", Json::Integer(guest.memory_mb));
	return json;
}

bool
SameGuest(const fly::Guest &a, const fly::Guest &b) {
	return a.cpu_kind == b.cpu_kind && a.cpus == b.cpus && a.memory_mb == b.memory_mb;
}

fly::MachineSpec
MachineSpecFor(const std::map<std::string, std::string> &env, const std::string &user_id, const fly::Guest &guest,
               const std::string &region, const std::string &image, const std::string &operation_id,
               std::optional<int64_t> secrets_version) {
	fly::MachineSpec spec;
	spec.image = image;
	spec.guest = guest;
	spec.region = region;
	spec.env = env;
	spec.env["RUN_MODE"] = "user_dedicated";
	spec.env["USER_ID"] = user_id;
	spec.restart_policy = "always";
	spec.metadata[kUserMetadataKey] = user_id;
	spec.metadata[kOperationMetadataKey] = operation_id;
	spec.min_secrets_version = secrets_version;
	return spec;
}

bool
SameService(const fly::AppService &have, const fly::AppService &want) {
	if (have.internal_port != want.internal_port) {
		return false;
	}
	return want.internal_port == 0 || have.health_path == want.health_path;
}

bool
IsUsableMachineId(const std::string &id) {
	constexpr size_t kMaxMachineIdLength = 64;
	if (id.empty() || id.size() > kMaxMachineIdLength) {
		return false;
	}
	for (char c : id) {
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_')) {
			return false;
		}
	}
	return true;
}

bool
IsLiveMachine(const std::string &state) {
	return state != "destroyed" && state != "destroying" && state != "replaced" && state != "migrated";
}

bool
MachineNeedsStart(const std::string &state) {
	return state == "stopped" || state == "suspended" || state == "failed";
}

std::optional<std::string>
MachineProblem(const Json &machine) {
	if (!machine.IsObject()) {
		return std::string("it is ") + JsonTypeName(machine) + ", not an object";
	}
	const auto id = machine.GetString("id");
	if (!id) {
		return machine.Get("id").HasValue()
		           ? "its id is " + std::string(JsonTypeName(machine.Get("id"))) + ", not a string"
		           : std::string("it has no id");
	}
	if (!IsUsableMachineId(*id)) {
		return std::string("its id is not a machine id (letters, digits, '-' and '_', at most 64)");
	}
	for (const char *key : {"state", "region"}) {
		if (auto problem = MemberTypeProblem(machine, key, "a string", &Json::IsString)) {
			return problem;
		}
	}
	if (auto problem = MemberTypeProblem(machine, "config", "an object", &Json::IsObject)) {
		return problem;
	}
	const Json config = machine.Get("config");
	if (auto problem = MemberTypeProblem(config, "image", "a string", &Json::IsString)) {
		return "config: " + *problem;
	}
	if (auto problem = MemberTypeProblem(config, "guest", "an object", &Json::IsObject)) {
		return "config: " + *problem;
	}
	const Json guest = config.Get("guest");
	if (auto problem = MemberTypeProblem(guest, "cpu_kind", "a string", &Json::IsString)) {
		return "config.guest: " + *problem;
	}
	for (const char *key : {"cpus", "memory_mb"}) {
		if (auto problem = MemberTypeProblem(guest, key, "an integer", &Json::IsInteger)) {
			return "config.guest: " + *problem;
		}
	}
	return std::nullopt;
}

MachineList
MachinesFromList(const fly::Outcome &outcome) {
	MachineList list;
	if (!outcome.body.IsArray()) {
		list.problem = "the machine list is not an array";
		return list;
	}
	for (size_t i = 0; i < outcome.body.Size(); i++) {
		const Json machine = outcome.body.At(i);
		if (auto problem = MachineProblem(machine)) {
			list.machines.clear();
			list.problem = "entry " + std::to_string(i + 1) + " of the machine list is unusable: " + *problem;
			return list;
		}
		list.machines.push_back(FactsFrom(machine));
	}
	return list;
}

MachineFacts
MachineFromBody(const fly::Outcome &outcome) {
	return FactsFrom(outcome.body);
}

} // namespace machine
} // namespace pgfly

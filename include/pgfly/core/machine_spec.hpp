// Fly machines as pg_fly sees them: reading the machine objects Fly answers with (defensively: an answer is
// untrusted input) and building the full machine config pg_fly runs for a user. Reconcile operations and image
// rollouts both use it. The fields read and sent are described in docs/fly-api.md.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "pgfly/core/fly_outcome.hpp"
#include "pgfly/core/fly_requests.hpp"

namespace pgfly {
namespace machine {

// Metadata keys pg_fly puts on every machine it creates.
constexpr const char *kUserMetadataKey = "pg_fly_user_id";
constexpr const char *kOperationMetadataKey = "pg_fly_operation_id";

// Facts read from Fly's answers (missing or mistyped fields give empty values, never an exception).
struct MachineFacts {
	std::string id;
	std::string state;
	std::string image;
	fly::Guest guest;
	std::string region;
	// The service pg_fly configures, as the config holds it: the first service's internal port (0: none) and the
	// path of pg_fly's HTTP check.
	fly::AppService service;
	// Who the machine belongs to: pg_fly's metadata (empty on a machine pg_fly never configured), and the
	// USER_ID in its env (the previous system marked its machines only so).
	std::string metadata_user_id;
	std::string env_user_id;
};

// Whether a machine's config carries the service (or, with port 0, none) that settings ask for.
bool SameService(const fly::AppService &have, const fly::AppService &want);

// The full machine config pg_fly runs for a user: the operator's env, then RUN_MODE and USER_ID (which win),
// and the metadata that finds the machine again. An update replaces the whole config, so every request that
// sends one (create, update, image rollout) builds it here.
fly::MachineSpec MachineSpecFor(const std::map<std::string, std::string> &env, const std::string &user_id,
                                const fly::Guest &guest, const std::string &region, const std::string &image,
                                const std::string &operation_id, std::optional<int64_t> secrets_version);

// A machine list from Fly, or why it cannot be trusted: then none of it is used, since acting on part of a
// list (a machine left out) could create a second machine or leave one running.
struct MachineList {
	std::vector<MachineFacts> machines;
	// Empty when every entry is a usable machine.
	std::string problem;
};

MachineList MachinesFromList(const fly::Outcome &outcome);
MachineFacts MachineFromBody(const fly::Outcome &outcome);
// Not running, and Fly would start it (an update leaves such a machine as it was).
bool MachineNeedsStart(const std::string &state);
// Not destroyed or on its way out: a machine that still counts as the user's.
bool IsLiveMachine(const std::string &state);
// Why a machine object from Fly cannot be used (not an object, no usable id, a field pg_fly reads of the wrong
// JSON type); nothing when it can.
std::optional<std::string> MachineProblem(const Json &machine);
// Whether text can be a Fly machine id: 1 to 64 letters, digits, '-' or '_' (Fly's are 14 hex digits). Ids go
// into request paths, so nothing else is accepted from an answer.
bool IsUsableMachineId(const std::string &id);

// The guest as the JSON object Fly uses for it ({"cpu_kind", "cpus", "memory_mb"}), for event details.
Json GuestJson(const fly::Guest &guest);
bool SameGuest(const fly::Guest &a, const fly::Guest &b);

} // namespace machine
} // namespace pgfly

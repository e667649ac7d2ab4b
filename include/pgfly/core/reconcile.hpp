// The reconcile decisions for one user: a state machine that turns "this user should (not) have an app" into
// Fly requests, one at a time, and into the records to write after each answer. It knows nothing of
// PostgreSQL: the worker feeds it Fly's answers and writes what each Step asks for in one transaction.
//
// Every step is idempotent, so an operation interrupted anywhere (crash, restart, superseded) can start over
// from what the app row records: the app name is the key for apps (name_taken → look it up: ours → reuse,
// another org's → next name), and machines carry the user id in their metadata and are looked up before one
// is created.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "pgfly/core/fly_outcome.hpp"
#include "pgfly/core/fly_requests.hpp"
#include "pgfly/core/machine_spec.hpp"

namespace pgfly {
namespace reconcile {

// The user's live app row, as last recorded.
struct AppRecord {
	int64_t id = 0;
	std::string name;
	int name_attempt = 0;
	std::string status;
	std::string machine_id;
	std::string region;
	fly::Guest guest;
	// The image the app runs once it has come up (empty before): it keeps it until an image rollout changes it.
	std::string image;
	// A machine creation whose answer was never recorded (the worker stopped while it was in flight), and how
	// long ago it was sent: the machine may still appear.
	std::string pending_create_operation;
	double pending_create_age_seconds = 0;
	// How long ago pg_fly created (or first adopted) the app, and created the recorded machine, when it did.
	std::optional<double> app_created_age_seconds;
	std::optional<double> machine_created_age_seconds;
	// A DELETE of this app was recorded as sent: the app may be dying on Fly, so it is never reused.
	bool delete_requested = false;
};

struct Settings {
	std::string org_slug;
	std::string app_name_prefix;
	std::string image;
	// Operator-configured variables; RUN_MODE and USER_ID are always set by pg_fly and win over these.
	std::map<std::string, std::string> env;
	// App secrets to set before the machine is created. Values never leave the request body.
	std::map<std::string, std::string> secrets;
	// The database's key for the secrets digest (fly.secrets_digest_key); empty before the 0.3.0 schema, which has
	// nowhere to record a digest.
	std::string secrets_digest_key;
	// One wait call blocks at most this long; a provision waits at most wait_rounds calls for "started".
	int wait_timeout_seconds = 60;
	int wait_rounds = 5;
	// fly.request_timeout: how long a create-machine request that got no recorded answer, or an ambiguous one
	// (408, 502, 503, 504), may still take effect on Fly; until then the operation looks for its machine instead
	// of creating another.
	double create_settle_seconds = 30;
	// fly.create_settle_time: for this long after an app or machine is created, Fly may answer 404 or 401 to
	// calls under it (reads lag writes). Such answers are asked again with backoff instead of being believed.
	double visibility_window_seconds = 60;
	// How many "insufficient_capacity" answers one region gets before the next fallback region is tried.
	int capacity_retries = 3;
	// fly.app_network: each new app gets a private network named after it, unless shared (the org's default).
	bool shared_network = false;
	// fly.app_internal_port and fly.app_health_path: with a port, machines carry a service and an HTTP check, and
	// the app gets a shared IPv4 and an IPv6 (docs/fly-api.md).
	fly::AppService service;
	// After Fly accepts an app's deletion (202), how long to wait for its GET to answer 404.
	double delete_confirm_seconds = 300;
};

struct Target {
	std::string user_id;
	bool present = false;
	std::optional<std::string> tier;
	fly::Guest guest;
	std::string region;
	// Where to create the machine, in order, when `region` has no capacity; a machine in any of them is kept.
	std::vector<std::string> fallback_regions;
	int64_t generation = 0;
	// Distinguishes this run's machine creations (metadata), e.g. "<generation>-<attempt>".
	std::string operation_id;
	// The first app name candidate no other user's live app holds in the database.
	int first_name_attempt = 0;
	// For a deprovision without a live row: whether to look for a leftover app under the contract name (not
	// when another user's live app holds that name).
	bool look_for_leftover = true;
};

// A change to the live app row. Unset fields keep their value.
struct AppChange {
	bool insert = false;
	std::optional<std::string> status;
	std::optional<std::string> name;
	std::optional<int> name_attempt;
	std::optional<std::string> fly_app_id;
	std::optional<std::string> machine_id; // "" clears it
	std::optional<std::string> region;
	std::optional<fly::Guest> guest;
	std::optional<std::string> image;
	std::optional<std::string> tier;
	std::optional<int64_t> secrets_version;
	// Secrets just set: the digest of the set and its names (never a value).
	std::optional<std::string> secrets_digest;
	std::vector<std::string> secret_names;
	// The operation id of a create-machine request about to be sent; "" once its answer is recorded.
	std::optional<std::string> pending_create;
	// Sets fly_app_created_at to now (app_created: created, or a new name about to be), or to now unless it is
	// set (app_create_sent: pg_fly is about to ask for the app; if that answer is lost the app may still appear).
	bool app_created = false;
	bool app_create_sent = false;
	// Clears fly_app_created_at: pg_fly is about to delete the app, so after a restart a 404 is what it asked for.
	bool app_delete_sent = false;
	// true: fly_machine_created_at = now (pg_fly created the machine); false: cleared (a machine it found).
	std::optional<bool> machine_created;
	bool provisioned = false; // sets provisioned_at and clears last_error
	bool deleted = false;     // sets deleted_at
	// true: a DELETE of the app is about to be sent (sets delete_requested_at); false: the name is in use again.
	std::optional<bool> delete_requested;
};

struct Event {
	std::string type;
	// Compact JSON object; never holds a secret value or the token.
	std::string details_json = "{}";
};

// A machine in the user's app that belongs to nobody (neither pg_fly's metadata nor the env's USER_ID names the
// user): reported (fly.orphan_machines, an orphan_machine_found event the first time), never touched.
struct OrphanMachine {
	std::string app_name;
	std::string machine_id;
	std::string user_id_env; // the env's USER_ID, empty when it has none
};

enum class Completion {
	kContinue, // send `request` next (after `retry_after_seconds` when `failed_attempt`)
	kDone,     // the user's app matches the target
	kRetry,    // a transient failure that needs a fresh start: run the whole operation again later
	kFailed,   // a permanent failure: stop until someone asks again
};

struct Step {
	std::optional<AppChange> app;
	std::vector<Event> events;
	std::optional<fly::Request> request;
	Completion completion = Completion::kContinue;
	// For kRetry and kFailed: what went wrong (no secrets), and Fly's Retry-After if it gave one.
	std::string error;
	std::optional<double> retry_after_seconds;
	// A kContinue step that re-sends the request that just failed transiently: it counts as a failed attempt,
	// and the request waits for the backoff delay (or Fly's Retry-After) before it goes again.
	bool failed_attempt = false;
	// Send `request` only after this many seconds (waiting for something to settle, not a failure).
	double delay_seconds = 0;
	// A failed attempt that waits for something of our own to settle (an earlier create to land) waits at least
	// this long. Unlike Fly's Retry-After it is not capped by fly.retry_max_delay: shortened, it would turn into
	// many short retries, each costing an attempt.
	double settle_seconds = 0;
	// The failure is Fly's lack of capacity (nothing was created): fly.max_attempts does not end the operation,
	// which moves on through the fallback regions and, when none has room, is tried again later.
	bool no_capacity = false;
	// Machines found in the app that belong to nobody, to record.
	std::vector<OrphanMachine> orphan_machines;
	// The request may leave before this step is recorded, so that the record's WAL flush overlaps Fly's round
	// trip. Only an operation's first request, and only a read (deprovisioning's first lookup): a write sent
	// before a record that then fails (a tier change holding the queue row) could leave an app no row knows of
	// once the next generation tears down. Every other step (create-app, create-machine, deletions, ...) is
	// recorded before it is sent.
	bool send_before_record = false;
};

class Operation {
public:
	Operation(Target target, std::optional<AppRecord> app, Settings settings);

	Step Start();
	Step OnOutcome(const fly::Outcome &outcome);
	// The caller's monotonic clock, in seconds, for decisions that depend on elapsed time.
	void
	SetNow(double now) {
		now_ = now;
	}

	const Target &
	target() const {
		return target_;
	}

private:
	enum class Phase {
		kLookUpOrphan,
		kCreateApp,
		kWaitAppVisible,
		kGetTakenApp,
		kSetSecrets,
		kListIps,
		kAssignIp,
		kFindMachine,
		kCreateMachine,
		kFindCreatedMachine,
		kFindUnmarkedMachine,
		kDeleteExtraMachine,
		kUpdateMachine,
		kStartMachine,
		kWaitStopped,
		kWaitStarted,
		kListForStop,
		kStopMachine,
		kDeleteApp,
		kWaitStoppedForDelete,
		kConfirmAppGone,
		kFinished,
	};

	// Shared (reconcile.cpp): the dispatch to the phase's handler, the end of an operation, retries and failures.
	Step Handle(const fly::Outcome &outcome);
	Step Finish(Step step);
	Step Retry(const fly::Outcome &outcome, const char *during);
	Step Fail(const fly::Outcome &outcome, const char *during);
	Step Unexpected(const fly::Outcome &outcome, const char *during);
	const char *FailedEvent() const;
	static Event MakeEvent(const char *type, const Json &details);
	static Json OutcomeDetails(const fly::Outcome &outcome, const char *during);
	static fly::Outcome Malformed(const fly::Outcome &outcome, const std::string &problem);

	// Consistency after create (reconcile_settle.cpp): Fly's 404s and 401s under a young app or machine.
	std::optional<Step> SettleIfYoung(const fly::Outcome &outcome);
	Step Settle(const fly::Outcome &outcome, double created_at);
	bool AppIsYoung() const;
	bool MachineIsYoung() const;
	Step OnWaitAppVisible(const fly::Outcome &outcome);

	// Provisioning (reconcile_provision.cpp): the steps, then one handler per phase.
	Step StartProvision();
	Step AppExists(Step step, const fly::Outcome &outcome, const char *event_type);
	Step AfterAppExists(Step step);
	Step FindMachine(Step step);
	Step UseMachine(Step step, const fly::Outcome &outcome);
	Step AdoptMachine(Step step);
	Step BringUp(Step step, const std::string &state);
	Step UpdateToSpec(Step step, const machine::MachineFacts &machine, const char *event_type, bool with_state);
	Step CreateMachine(Step step);
	Step NoCapacity(const fly::Outcome &outcome);
	bool AcceptableRegion(const std::string &region) const;
	const std::string &MachineRegion() const;
	Step Wait(Step step);
	fly::Request UserMachinesRequest() const;
	fly::MachineSpec Spec() const;
	const std::string &Image() const;
	Step OnCreateApp(const fly::Outcome &outcome);
	Step OnGetTakenApp(const fly::Outcome &outcome);
	Step CreateUnderName(Step step, const std::string &name, int attempt);
	Step OnSetSecrets(const fly::Outcome &outcome);
	Step OnFindMachine(const fly::Outcome &outcome); // kFindMachine and kFindCreatedMachine
	Step OnCreateMachine(const fly::Outcome &outcome);
	Step OnDeleteExtraMachine(const fly::Outcome &outcome);
	Step OnUpdateMachine(const fly::Outcome &outcome);
	Step OnStartMachine(const fly::Outcome &outcome);
	Step OnWaitStopped(const fly::Outcome &outcome);
	Step OnWaitStarted(const fly::Outcome &outcome);
	// Networks and public addresses (reconcile_provision.cpp).
	std::optional<std::string> AppNetwork() const;
	fly::Request AppCreateRequest() const;
	bool NeedsIpCheck() const;
	Step ListIps(Step step);
	Step AssignNextIp(Step step);
	Step OnListIps(const fly::Outcome &outcome);
	Step OnAssignIp(const fly::Outcome &outcome);
	// Adopting a machine the previous system left (reconcile_adopt.cpp).
	Step FindUnmarkedMachine(Step step, const fly::Outcome &user_list);
	Step OnFindUnmarkedMachine(const fly::Outcome &outcome);
	Step AdoptUnmarkedMachine(Step step);

	// Deprovisioning (reconcile_deprovision.cpp).
	Step StartDeprovision();
	Step StopNextOrDelete(Step step);
	Step OnLookUpOrphan(const fly::Outcome &outcome);
	Step OnListForStop(const fly::Outcome &outcome);
	Step OnStopMachine(const fly::Outcome &outcome);
	Step OnDeleteApp(const fly::Outcome &outcome);
	// Deletion (reconcile_deprovision.cpp): stopped machines first, then DELETE, then GET until 404.
	Step WaitNextStoppedOrDelete(Step step);
	Step DeleteApp(Step step);
	Step ConfirmAppGone(Step step);
	Step AppGone(Step step, bool already_gone);
	Step MoveOnToNextName(Step step, const fly::Outcome &outcome);
	Step OnWaitStoppedForDelete(const fly::Outcome &outcome);
	Step OnConfirmAppGone(const fly::Outcome &outcome);

	Target target_;
	std::optional<AppRecord> app_;
	Settings settings_;
	Phase phase_ = Phase::kFinished;
	int wait_round_ = 0;
	double now_ = 0;
	double started_at_ = 0;
	double create_settles_at_ = 0;
	// When the app and the recorded machine were created (or the app adopted), on now_'s clock; -1e18: unknown.
	double app_created_at_ = -1e18;
	double machine_created_at_ = -1e18;
	int settle_round_ = 0;
	bool settling_reported_ = false;
	double create_looked_since_ = 0;
	// Capacity: the region the next create goes to (index 0 is the policy's, then its fallbacks), how many of its
	// answers said "insufficient_capacity", and the region of the machine the operation uses.
	size_t create_region_index_ = 0;
	int capacity_failures_ = 0;
	std::string machine_region_;
	std::optional<fly::Request> last_request_;
	std::optional<int64_t> secrets_version_;
	std::vector<std::string> machines_to_stop_;
	std::vector<std::string> machines_to_wait_;
	bool force_delete_ = false;
	double delete_accepted_at_ = 0;
	double confirm_delay_ = 0;
	int confirm_polls_ = 0;
	std::vector<std::string> extra_machines_;
	std::optional<machine::MachineFacts> adopted_;
	// The app's addresses were listed in this operation; the types still to assign, and the one in flight.
	bool ips_checked_ = false;
	std::vector<std::string> ips_to_assign_;
	std::string assigning_ip_type_;
	// Adoption of machines without pg_fly's metadata: whether the app was there before this operation (only then
	// may it hold one), whether the app's whole machine list was read, the empty list of the user's machines
	// that led there, and whether adopted_ is such a machine.
	bool app_was_there_ = false;
	bool looked_for_unmarked_ = false;
	fly::Outcome user_list_;
	bool adopting_unmarked_ = false;
};

} // namespace reconcile
} // namespace pgfly

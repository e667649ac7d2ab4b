// Provisioning: create the app (or reuse ours, or move to the next name when another organization holds it),
// set its secrets, then find, create, update or start the user's one machine and wait until it is started.
// Each On* method handles Fly's answer to the request its phase sent.
#include "pgfly/core/reconcile.hpp"

#include <algorithm>
#include <utility>

#include "pgfly/core/app_naming.hpp"
#include "pgfly/core/json.hpp"
#include "pgfly/core/secrets.hpp"
#include "pgfly/core/text.hpp"

#include "pgfly/core/cpp_only.hpp"

namespace pgfly {
namespace reconcile {

namespace {

// After an ambiguous create: how long Fly's machine list may lag an answered create, and how often to look.
constexpr double kAnsweredCreateSettleSeconds = 2.0;
constexpr double kLookAgainSeconds = 0.5;
// Looking longer (an ambiguous answer: fly.request_timeout), after the first kAnsweredCreateSettleSeconds the list
// is asked less often, to stay within Fly's per-app rate limit.
constexpr double kLookAgainSlowSeconds = 2.0;

// An answer after which the create may still take effect: a timeout at Fly's end, a gateway that lost Fly's
// answer, or no answer at all.
bool
AmbiguousCreateAnswer(const fly::Outcome &outcome) {
	switch (outcome.http_status) {
	case 0:
	case 408:
	case 502:
	case 503:
	case 504:
		return true;
	default:
		return false;
	}
}

// The public addresses an app with a service gets (IPAssignmentType): a shared IPv4 (free) and an IPv6.
constexpr const char *kSharedV4 = "shared_v4";
constexpr const char *kV6 = "v6";
constexpr size_t kMaxIpLength = 64;

struct IpTypes {
	bool v4 = false;
	bool v6 = false;
	std::string problem;
};

// Which public address families an app already has, from listIPAssignmentsResponse. Its entries carry no type:
// an IPv4 (shared or dedicated) serves v4; an IPv6 outside fc00::/7 serves v6 (private_v6 addresses are
// unique-local, fdaa:...); egress addresses serve nothing inbound.
IpTypes
PublicIpTypes(const Json &body) {
	IpTypes types;
	const Json ips = body.Get("ips");
	if (!ips.HasValue() || ips.IsNull()) {
		return types; // no addresses yet
	}
	if (!ips.IsArray()) {
		types.problem = "the IP assignment list is not an array";
		return types;
	}
	for (size_t i = 0; i < ips.Size(); i++) {
		const Json entry = ips.At(i);
		const auto ip = entry.GetString("ip");
		if (!entry.IsObject() || !ip) {
			types.problem = "entry " + std::to_string(i + 1) + " of the IP assignment list has no ip";
			return types;
		}
		if (entry.GetBool("egress").value_or(false)) {
			continue;
		}
		if (ip->find(':') == std::string::npos) {
			types.v4 = true;
		} else {
			const bool unique_local = ip->size() > 2 && ((*ip)[0] == 'f' || (*ip)[0] == 'F') &&
			                          ((*ip)[1] == 'c' || (*ip)[1] == 'C' || (*ip)[1] == 'd' || (*ip)[1] == 'D');
			types.v6 = types.v6 || !unique_local;
		}
	}
	return types;
}

} // namespace

using fly::OutcomeKind;
using machine::GuestJson;
using machine::IsLiveMachine;
using machine::kUserMetadataKey;
using machine::MachineFacts;
using machine::MachineFromBody;
using machine::MachineList;
using machine::MachineNeedsStart;
using machine::MachineProblem;
using machine::MachinesFromList;
using machine::SameGuest;

// An app keeps the image it was given (only an image rollout changes it); a new one gets fly.image.
const std::string &
Operation::Image() const {
	return app_ && !app_->image.empty() ? app_->image : settings_.image;
}

fly::MachineSpec
Operation::Spec() const {
	const std::string &region =
		create_region_index_ == 0 ? target_.region : target_.fallback_regions.at(create_region_index_ - 1);
	fly::MachineSpec spec = machine::MachineSpecFor(settings_.env, target_.user_id, target_.guest, region, Image(),
	                                                target_.operation_id, secrets_version_);
	spec.service = settings_.service;
	return spec;
}

// A machine in the policy's region or in one of its fallback regions is where it should be.
bool
Operation::AcceptableRegion(const std::string &region) const {
	if (target_.region.empty() || region.empty() || region == target_.region) {
		return true;
	}
	for (const auto &fallback : target_.fallback_regions) {
		if (region == fallback) {
			return true;
		}
	}
	return false;
}

// The region of the machine this operation uses (created or adopted), else the policy's.
const std::string &
Operation::MachineRegion() const {
	return machine_region_.empty() ? target_.region : machine_region_;
}

// The app's machines that carry this user's id in their metadata.
fly::Request
Operation::UserMachinesRequest() const {
	return fly::ListMachinesRequest(app_->name, {{kUserMetadataKey, target_.user_id}});
}

Step
Operation::StartProvision() {
	Step step;
	if (settings_.image.empty()) {
		step.completion = Completion::kFailed;
		step.error = "fly.image is not set: there is no image to run";
		phase_ = Phase::kFinished;
		return step;
	}
	Json details = Json::Object();
	details.Set("tier", target_.tier ? Json::String(*target_.tier) : Json::Null());
	details.Set("region", Json::String(target_.region));
	details.Set("guest", GuestJson(target_.guest));
	details.Set("generation", Json::Integer(target_.generation));
	AppChange change;
	if (!app_) {
		auto name = AppNameCandidate(settings_.app_name_prefix, target_.user_id, target_.first_name_attempt);
		if (!name) {
			step.completion = Completion::kFailed;
			step.error = "no app name candidate is left for this user (fly.app_name_prefix too long?)";
			phase_ = Phase::kFinished;
			return step;
		}
		app_ = AppRecord{};
		app_->name = *name;
		app_->name_attempt = target_.first_name_attempt;
		change.insert = true;
		change.name = *name;
		change.name_attempt = target_.first_name_attempt;
		change.region = target_.region;
		change.guest = target_.guest;
		change.image = settings_.image;
	} else {
		details.Set("previous_status", Json::String(app_->status));
	}
	details.Set("app_name", Json::String(app_->name));
	if (!app_->app_created_age_seconds && !app_->delete_requested) {
		// The first create of this app: should its answer be lost, the app may appear all the same, and the
		// name_taken that follows must be read as young (consistency after create).
		change.app_create_sent = true;
		app_created_at_ = now_;
	}
	change.status = "provisioning";
	change.tier = target_.tier;
	app_->status = "provisioning";
	step.app = change;
	step.events.push_back(MakeEvent("provision_requested", details));
	if (app_->delete_requested) {
		// A deletion was sent: finish it, never reuse a dying app. Sent again with force=true: the first one
		// stopped the machines, or found one that would not stop; either way nothing is left to keep.
		force_delete_ = true;
		return DeleteApp(std::move(step));
	}
	step.request = AppCreateRequest();
	phase_ = Phase::kCreateApp;
	return step;
}

// The app is there (created now, or ours from before): record Fly's id for it; the caller goes on.
Step
Operation::AppExists(Step step, const fly::Outcome &outcome, const char *event_type) {
	AppChange change;
	if (auto id = outcome.body.GetString("id")) {
		change.fly_app_id = *id;
	}
	step.app = change;
	Json details = Json::Object();
	details.Set("app_name", Json::String(app_->name));
	step.events.push_back(MakeEvent(event_type, details));
	return step;
}

Step
Operation::AfterAppExists(Step step) {
	if (NeedsIpCheck()) {
		return ListIps(std::move(step)); // comes back here once the app has its addresses
	}
	if (!settings_.secrets.empty()) {
		std::map<std::string, std::optional<std::string>> values;
		for (const auto &secret : settings_.secrets) {
			values.emplace(secret.first, secret.second);
		}
		step.request = fly::SetSecretsRequest(app_->name, values);
		phase_ = Phase::kSetSecrets;
		return step;
	}
	return FindMachine(std::move(step));
}

Step
Operation::FindMachine(Step step) {
	step.request = UserMachinesRequest();
	phase_ = Phase::kFindMachine;
	return step;
}

// Adopts the machine that carries this user's metadata: duplicates (left by a creation whose answer was lost)
// are destroyed first, then the machine is updated when its guest or image differ, or started when stopped.
Step
Operation::UseMachine(Step step, const fly::Outcome &outcome) {
	MachineList list = MachinesFromList(outcome);
	if (!list.problem.empty()) {
		return Unexpected(Malformed(outcome, list.problem), "list_machines");
	}
	std::vector<MachineFacts> live;
	for (auto &machine : list.machines) {
		if (IsLiveMachine(machine.state)) {
			live.push_back(std::move(machine));
		}
	}
	if (live.empty()) {
		if (phase_ == Phase::kFindMachine && !app_->machine_id.empty() && MachineIsYoung()) {
			// The machine pg_fly created a moment ago may not be listed yet: look again, do not create another.
			return Settle(outcome, machine_created_at_);
		}
		if (phase_ == Phase::kFindMachine && app_was_there_ && !looked_for_unmarked_) {
			return FindUnmarkedMachine(std::move(step), outcome); // the previous system's machine, maybe
		}
		if (phase_ == Phase::kFindCreatedMachine) {
			if (now_ >= create_settles_at_) {
				return CreateMachine(std::move(step)); // long enough: that creation did not happen
			}
			// The ambiguous create left nothing behind yet (Fly's machine list lags its writes): look again.
			step.request = UserMachinesRequest();
			step.delay_seconds =
				now_ - create_looked_since_ < kAnsweredCreateSettleSeconds ? kLookAgainSeconds : kLookAgainSlowSeconds;
			return step;
		}
		// The recorded age was read when this operation started: it grows while we wait.
		const double pending_age = app_->pending_create_age_seconds + (now_ - started_at_);
		if (!app_->pending_create_operation.empty() && pending_age < settings_.create_settle_seconds) {
			// A creation sent by an earlier run may still land: wait for it rather than create a second machine.
			fly::Outcome pending = outcome;
			pending.message = "waiting for a machine creation sent before the worker restarted";
			Step waiting = Retry(pending, "create_machine");
			waiting.settle_seconds = settings_.create_settle_seconds - pending_age;
			return waiting;
		}
		return CreateMachine(std::move(step));
	}
	// A machine cannot move between regions: machines elsewhere are replaced by a new one in the target region.
	std::vector<MachineFacts> in_region;
	extra_machines_.clear();
	for (auto &machine : live) {
		if (AcceptableRegion(machine.region)) {
			in_region.push_back(machine);
		} else {
			extra_machines_.push_back(machine.id);
		}
	}
	if (in_region.empty()) {
		adopted_.reset();
		return AdoptMachine(std::move(step));
	}
	// Keep the machine the row records, else the first one Fly lists.
	size_t keep = 0;
	for (size_t i = 0; i < in_region.size(); i++) {
		if (in_region[i].id == app_->machine_id) {
			keep = i;
		}
	}
	adopted_ = in_region[keep];
	for (size_t i = 0; i < in_region.size(); i++) {
		if (i != keep) {
			extra_machines_.push_back(in_region[i].id);
		}
	}
	if (!app_->pending_create_operation.empty()) {
		AppChange change = step.app.value_or(AppChange{});
		change.pending_create = "";
		step.app = change;
		app_->pending_create_operation.clear();
	}
	return AdoptMachine(std::move(step));
}

Step
Operation::AdoptMachine(Step step) {
	if (!extra_machines_.empty()) {
		const std::string id = extra_machines_.back();
		extra_machines_.pop_back();
		Json details = Json::Object();
		details.Set("machine_id", Json::String(id));
		if (adopted_) {
			details.Set("kept_machine_id", Json::String(adopted_->id));
			step.events.push_back(MakeEvent("duplicate_machine_destroyed", details));
		} else {
			details.Set("target_region", Json::String(target_.region));
			step.events.push_back(MakeEvent("machine_replaced_for_region", details));
		}
		step.request = fly::DeleteMachineRequest(app_->name, id, true);
		phase_ = Phase::kDeleteExtraMachine;
		return step;
	}
	if (!adopted_) {
		app_->machine_id.clear();
		return CreateMachine(std::move(step));
	}
	if (adopting_unmarked_) {
		return AdoptUnmarkedMachine(std::move(step));
	}
	const MachineFacts &chosen = *adopted_;
	machine_region_ = chosen.region;
	if (app_->machine_id != chosen.id) {
		app_->machine_id = chosen.id;
		machine_created_at_ = -1e18;
		AppChange change = step.app.value_or(AppChange{});
		change.machine_id = chosen.id;
		change.machine_created = false;
		step.app = change;
		Json details = Json::Object();
		details.Set("machine_id", Json::String(chosen.id));
		details.Set("state", Json::String(chosen.state));
		step.events.push_back(MakeEvent("machine_reused", details));
	}
	if (!SameGuest(chosen.guest, target_.guest) || chosen.image != Image() ||
	    !machine::SameService(chosen.service, settings_.service)) {
		return UpdateToSpec(std::move(step), chosen, "machine_update_requested", false);
	}
	return BringUp(std::move(step), chosen.state);
}

// One update gives the machine this operation's whole config (Fly has no partial updates); the event says what
// changes (and, for an adopted machine, the state it was found in).
Step
Operation::UpdateToSpec(Step step, const MachineFacts &machine, const char *event_type, bool with_state) {
	Json details = Json::Object();
	details.Set("machine_id", Json::String(machine.id));
	if (with_state) {
		details.Set("state", Json::String(machine.state));
	}
	details.Set("from_guest", GuestJson(machine.guest));
	details.Set("to_guest", GuestJson(target_.guest));
	details.Set("from_image", Json::String(machine.image));
	details.Set("to_image", Json::String(Image()));
	step.events.push_back(MakeEvent(event_type, details));
	step.request = fly::UpdateMachineRequest(app_->name, machine.id, Spec());
	phase_ = Phase::kUpdateMachine;
	return step;
}

// The adopted machine, in `state`, is to end up started: start it if it is down, let a stop under way (sent by
// the deprovision this operation replaced) finish first, else wait for it.
Step
Operation::BringUp(Step step, const std::string &state) {
	if (MachineNeedsStart(state)) {
		step.request = fly::StartMachineRequest(app_->name, app_->machine_id);
		phase_ = Phase::kStartMachine;
		return step;
	}
	if (state == "stopping") {
		step.request = fly::WaitMachineRequest(app_->name, app_->machine_id, "stopped", settings_.wait_timeout_seconds);
		phase_ = Phase::kWaitStopped;
		return step;
	}
	wait_round_ = 0;
	return Wait(std::move(step));
}

Step
Operation::CreateMachine(Step step) {
	// Recorded before the request leaves, so that a restarted worker knows a machine may be on its way.
	AppChange change = step.app.value_or(AppChange{});
	change.pending_create = target_.operation_id;
	step.app = change;
	app_->pending_create_operation = target_.operation_id;
	step.request = fly::CreateMachineRequest(app_->name, Spec());
	phase_ = Phase::kCreateMachine;
	return step;
}

Step
Operation::Wait(Step step) {
	step.request = fly::WaitMachineRequest(app_->name, app_->machine_id, "started", settings_.wait_timeout_seconds);
	phase_ = Phase::kWaitStarted;
	return step;
}

Step
Operation::OnCreateApp(const fly::Outcome &outcome) {
	Step step;
	if (outcome.kind == OutcomeKind::kSuccess) {
		// Calls under a new app can answer 404 or 401 for a while: look it up until Fly shows it.
		step = AppExists(std::move(step), outcome, "app_created");
		step.app->app_created = true;
		app_created_at_ = now_;
		if (!app_->machine_id.empty()) {
			// A new app holds no machine: the one recorded went with the app deleted before (re-created here).
			app_->machine_id.clear();
			machine_created_at_ = -1e18;
			step.app->machine_id = "";
			step.app->machine_created = false;
		}
		step.request = fly::GetAppRequest(app_->name);
		phase_ = Phase::kWaitAppVisible;
		return step;
	}
	if (outcome.kind == OutcomeKind::kNameTaken) {
		step.request = fly::GetAppRequest(app_->name);
		phase_ = Phase::kGetTakenApp;
		return step;
	}
	return Unexpected(outcome, "create_app");
}

// The user's app moves to another of its deterministic names (the last one is taken, or still being deleted):
// record it and create the app under it, on its own network, with the visibility window of a new create.
Step
Operation::CreateUnderName(Step step, const std::string &name, int attempt) {
	AppChange change = step.app.value_or(AppChange{});
	change.name = name;
	change.name_attempt = attempt;
	change.app_created = true;
	app_created_at_ = now_;
	step.app = change;
	app_->name = name;
	app_->name_attempt = attempt;
	step.request = AppCreateRequest();
	phase_ = Phase::kCreateApp;
	return step;
}

Step
Operation::OnGetTakenApp(const fly::Outcome &outcome) {
	Step step;
	const std::optional<std::string> org = outcome.body.Get("organization").GetString("slug");
	if (outcome.kind == OutcomeKind::kSuccess && !org) {
		// Without an organization the app is neither provably ours nor another's: ask again.
		fly::Outcome unusable = outcome;
		unusable.kind = OutcomeKind::kMalformed;
		unusable.message += ": the app has no organization";
		return Retry(unusable, "get_app");
	}
	if (outcome.kind == OutcomeKind::kSuccess && org == settings_.org_slug) {
		app_was_there_ = true;
		step = AppExists(std::move(step), outcome, "app_reused");
		return AfterAppExists(std::move(step));
	}
	if (outcome.kind == OutcomeKind::kForbidden || outcome.kind == OutcomeKind::kSuccess) {
		// Another organization holds the name: take this user's next deterministic name.
		const int next_attempt = app_->name_attempt + 1;
		auto next = AppNameCandidate(settings_.app_name_prefix, target_.user_id, next_attempt);
		if (!next) {
			fly::Outcome exhausted = outcome;
			exhausted.message = "every app name candidate for this user is taken by another organization";
			return Fail(exhausted, "create_app");
		}
		Json details = Json::Object();
		details.Set("taken_name", Json::String(app_->name));
		details.Set("next_name", Json::String(*next));
		step.events.push_back(MakeEvent("app_name_taken", details));
		return CreateUnderName(std::move(step), *next, next_attempt);
	}
	if (outcome.kind == OutcomeKind::kNotFound) {
		// Taken a moment ago, gone now (a deletion finishing): create it again, after a pause.
		phase_ = Phase::kCreateApp;
		last_request_ = AppCreateRequest();
		return Retry(outcome, "get_app");
	}
	return Unexpected(outcome, "get_app");
}

Step
Operation::OnSetSecrets(const fly::Outcome &outcome) {
	Step step;
	if (outcome.kind == OutcomeKind::kSuccess) {
		auto version = outcome.body.GetInteger("version");
		if (!version) {
			version = outcome.body.GetInteger("Version");
		}
		AppChange change;
		change.secrets_version = version;
		// Recorded so that no secrets rollout sets them again (the machine is created or updated with them).
		if (!settings_.secrets_digest_key.empty()) {
			change.secrets_digest = secrets::Digest(settings_.secrets, settings_.secrets_digest_key);
		}
		change.secret_names = secrets::Names(settings_.secrets);
		step.app = change;
		Json details = Json::Object();
		Json names = Json::Array();
		for (const auto &secret : settings_.secrets) {
			names.Append(Json::String(secret.first));
		}
		details.Set("names", names);
		if (version) {
			details.Set("version", Json::Integer(*version));
		}
		step.events.push_back(MakeEvent("secrets_set", details));
		secrets_version_ = version;
		return FindMachine(std::move(step));
	}
	return Unexpected(outcome, "set_secrets");
}

Step
Operation::OnFindMachine(const fly::Outcome &outcome) {
	Step step;
	if (outcome.kind == OutcomeKind::kSuccess) {
		return UseMachine(std::move(step), outcome);
	}
	return Unexpected(outcome, "list_machines");
}

Step
Operation::OnCreateMachine(const fly::Outcome &outcome) {
	Step step;
	if (outcome.kind == OutcomeKind::kSuccess) {
		MachineFacts machine = MachineFromBody(outcome);
		if (auto problem = MachineProblem(outcome.body)) {
			// Unusable answer: the machine may exist all the same, so look for it before creating again.
			step.events.push_back(MakeEvent(
				"provision_attempt_failed",
				OutcomeDetails(Malformed(outcome, "the created machine is unusable: " + *problem), "create_machine")));
			create_settles_at_ = now_ + kAnsweredCreateSettleSeconds;
			create_looked_since_ = now_;
			step.request = UserMachinesRequest();
			phase_ = Phase::kFindCreatedMachine;
			return step;
		}
		app_->machine_id = machine.id;
		app_->pending_create_operation.clear();
		machine_created_at_ = now_;
		machine_region_ = machine.region.empty() ? Spec().region : machine.region;
		AppChange change;
		change.machine_id = machine.id;
		change.machine_created = true;
		change.pending_create = "";
		change.guest = target_.guest;
		change.image = Image();
		change.region = machine_region_; // the cost estimate follows the region actually used
		step.app = change;
		Json details = Json::Object();
		details.Set("machine_id", Json::String(machine.id));
		details.Set("region", Json::String(machine.region));
		details.Set("operation_id", Json::String(target_.operation_id));
		step.events.push_back(MakeEvent("machine_created", details));
		wait_round_ = 0;
		return Wait(std::move(step));
	}
	if (outcome.no_capacity) {
		return NoCapacity(outcome);
	}
	if (outcome.kind == OutcomeKind::kTransient || outcome.kind == OutcomeKind::kMalformed) {
		// A 408, 5xx or lost answer may still have created the machine: look before creating again. After an
		// ambiguous answer (a timeout, a gateway's error, none at all) the create may still be running on Fly's
		// side: look for as long as a request may take (fly.request_timeout). Other answers (a 429, a 500) leave
		// only the list's lag to wait for.
		step.events.push_back(MakeEvent("provision_attempt_failed", OutcomeDetails(outcome, "create_machine")));
		create_looked_since_ = now_;
		create_settles_at_ =
			now_ + (AmbiguousCreateAnswer(outcome) ? settings_.create_settle_seconds : kAnsweredCreateSettleSeconds);
		step.request = UserMachinesRequest();
		step.delay_seconds = kLookAgainSeconds;
		phase_ = Phase::kFindCreatedMachine;
		return step;
	}
	return Fail(outcome, "create_machine");
}

// Fly has no room for the machine in this region (nothing was created): retried with backoff up to
// capacity_retries times, then the next fallback region is tried; when none has room the operation is tried
// again later, from the policy's region. Never a permanent failure.
Step
Operation::NoCapacity(const fly::Outcome &outcome) {
	const std::string from_region = Spec().region;
	capacity_failures_++;
	if (capacity_failures_ < std::max(1, settings_.capacity_retries)) {
		Step retry = Retry(outcome, "create_machine");
		retry.no_capacity = true;
		return retry;
	}
	if (create_region_index_ < target_.fallback_regions.size()) {
		Step step;
		step.events.push_back(MakeEvent("provision_attempt_failed", OutcomeDetails(outcome, "create_machine")));
		const int attempts = capacity_failures_;
		create_region_index_++;
		capacity_failures_ = 0;
		Json details = Json::Object();
		details.Set("from_region", Json::String(from_region));
		details.Set("to_region", Json::String(Spec().region));
		details.Set("attempts", Json::Integer(attempts));
		step.events.push_back(MakeEvent("region_fallback", details));
		return CreateMachine(std::move(step));
	}
	fly::Outcome exhausted = outcome;
	std::string regions = target_.region;
	for (const auto &fallback : target_.fallback_regions) {
		regions += ", " + fallback;
	}
	exhausted.message =
		"no capacity for the machine in any region (" + regions + "); tried again later: " + outcome.message;
	last_request_.reset(); // start afresh later, from the policy's region
	Step later = Retry(exhausted, "create_machine");
	later.no_capacity = true;
	// Fly created nothing: the next run need not wait for this create to land.
	AppChange change;
	change.pending_create = "";
	later.app = change;
	app_->pending_create_operation.clear();
	return later;
}

Step
Operation::OnDeleteExtraMachine(const fly::Outcome &outcome) {
	Step step;
	if (outcome.kind == OutcomeKind::kSuccess || outcome.kind == OutcomeKind::kNotFound) {
		return AdoptMachine(std::move(step));
	}
	return Unexpected(outcome, "delete_machine");
}

Step
Operation::OnUpdateMachine(const fly::Outcome &outcome) {
	Step step;
	if (outcome.kind == OutcomeKind::kSuccess) {
		AppChange change;
		change.guest = target_.guest;
		change.image = Image();
		change.region = MachineRegion();
		step.app = change;
		Json details = Json::Object();
		details.Set("machine_id", Json::String(app_->machine_id));
		details.Set("guest", GuestJson(target_.guest));
		details.Set("image", Json::String(Image()));
		step.events.push_back(MakeEvent("machine_updated", details));
		std::string state = MachineFromBody(outcome).state;
		if (state.empty() && adopted_) {
			state = adopted_->state;
		}
		return BringUp(std::move(step), state); // Fly leaves a machine that was not running as it was
	}
	return Unexpected(outcome, "update_machine");
}

Step
Operation::OnStartMachine(const fly::Outcome &outcome) {
	Step step;
	if (outcome.kind == OutcomeKind::kSuccess) {
		wait_round_ = 0;
		return Wait(std::move(step));
	}
	if (outcome.http_status == 412) {
		// Not startable from its current state: a start whose answer was lost, or a stop, is under way. Look
		// at the machine again, as a failed attempt so that this cannot go round for ever.
		last_request_ = UserMachinesRequest();
		phase_ = Phase::kFindMachine;
		return Retry(outcome, "start_machine");
	}
	return Unexpected(outcome, "start_machine");
}

Step
Operation::OnWaitStopped(const fly::Outcome &outcome) {
	Step step;
	if (outcome.kind == OutcomeKind::kSuccess) {
		return FindMachine(std::move(step)); // stopped now: look again, and start it
	}
	return Unexpected(outcome, "wait_machine");
}

Step
Operation::OnWaitStarted(const fly::Outcome &outcome) {
	Step step;
	if (outcome.kind == OutcomeKind::kSuccess) {
		AppChange change;
		change.status = "active";
		change.provisioned = true;
		change.machine_id = app_->machine_id;
		change.region = MachineRegion();
		change.guest = target_.guest;
		change.image = Image();
		step.app = change;
		Json details = Json::Object();
		details.Set("app_name", Json::String(app_->name));
		details.Set("machine_id", Json::String(app_->machine_id));
		details.Set("region", Json::String(MachineRegion()));
		details.Set("guest", GuestJson(target_.guest));
		details.Set("image", Json::String(Image()));
		step.events.push_back(MakeEvent("provision_completed", details));
		app_->status = "active";
		return Finish(std::move(step));
	}
	if (outcome.kind == OutcomeKind::kTransient && outcome.http_status == 408) {
		if (++wait_round_ < settings_.wait_rounds) {
			return Wait(std::move(step)); // Fly's wait gives up after its timeout; ours is longer
		}
		// Still not started after every round: start over later (the machine may need replacing).
		last_request_.reset();
		return Retry(outcome, "wait_machine");
	}
	if (outcome.kind == OutcomeKind::kNotFound) {
		// The machine vanished (destroyed behind our back): find or create one again.
		app_->machine_id.clear();
		AppChange change;
		change.machine_id = "";
		change.machine_created = false;
		step.app = change;
		return FindMachine(std::move(step));
	}
	return Unexpected(outcome, "wait_machine");
}

// Each app on its own private network (named after it), so that no user's machine can reach another's; an app
// that already exists keeps the network it has (Fly cannot move an app).
std::optional<std::string>
Operation::AppNetwork() const {
	if (settings_.shared_network) {
		return std::nullopt;
	}
	return app_->name;
}

fly::Request
Operation::AppCreateRequest() const {
	return fly::CreateAppRequest(app_->name, settings_.org_slug, AppNetwork());
}

// Public addresses only matter when the machine offers a service; they are listed first so that a provision
// run again (or a lost answer) never assigns a second one.
bool
Operation::NeedsIpCheck() const {
	return settings_.service.internal_port > 0 && !ips_checked_;
}

Step
Operation::ListIps(Step step) {
	step.request = fly::ListIpAssignmentsRequest(app_->name);
	phase_ = Phase::kListIps;
	return step;
}

Step
Operation::AssignNextIp(Step step) {
	if (ips_to_assign_.empty()) {
		return AfterAppExists(std::move(step));
	}
	assigning_ip_type_ = ips_to_assign_.front();
	ips_to_assign_.erase(ips_to_assign_.begin());
	step.request = fly::AssignIpRequest(app_->name, assigning_ip_type_, AppNetwork());
	phase_ = Phase::kAssignIp;
	return step;
}

Step
Operation::OnListIps(const fly::Outcome &outcome) {
	Step step;
	if (outcome.kind != OutcomeKind::kSuccess) {
		return Unexpected(outcome, "list_ip_assignments");
	}
	const IpTypes present = PublicIpTypes(outcome.body);
	if (!present.problem.empty()) {
		return Unexpected(Malformed(outcome, present.problem), "list_ip_assignments");
	}
	ips_checked_ = true;
	ips_to_assign_.clear();
	if (!present.v4) {
		ips_to_assign_.push_back(kSharedV4);
	}
	if (!present.v6) {
		ips_to_assign_.push_back(kV6);
	}
	return AssignNextIp(std::move(step));
}

Step
Operation::OnAssignIp(const fly::Outcome &outcome) {
	Step step;
	if (outcome.kind == OutcomeKind::kSuccess) {
		Json details = Json::Object();
		details.Set("type", Json::String(assigning_ip_type_));
		const auto ip = outcome.body.GetString("ip");
		details.Set("ip", ip ? Json::String(TruncateUtf8(*ip, kMaxIpLength)) : Json::Null());
		step.events.push_back(MakeEvent("ip_assigned", details));
		return AssignNextIp(std::move(step));
	}
	if (outcome.kind == OutcomeKind::kTransient || outcome.kind == OutcomeKind::kMalformed) {
		// The address may have been assigned all the same: list again rather than assign a second one.
		ips_checked_ = false;
		phase_ = Phase::kListIps;
		last_request_ = fly::ListIpAssignmentsRequest(app_->name);
		return Retry(outcome, "assign_ip");
	}
	return Fail(outcome, "assign_ip");
}

} // namespace reconcile
} // namespace pgfly

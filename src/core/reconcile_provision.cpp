// Provisioning: create the app (or reuse ours, or move to the next name when another organization holds it),
// set its secrets, then find, create, update or start the user's one machine and wait until it is started.
// Each On* method handles Fly's answer to the request its phase sent.
#include "pgfly/core/reconcile.hpp"

#include <utility>

#include "pgfly/core/app_naming.hpp"
#include "pgfly/core/json.hpp"

#include "pgfly/core/cpp_only.hpp"

namespace pgfly {
namespace reconcile {

namespace {

// After an ambiguous create: how long Fly's machine list may lag an answered create, and how often to look.
constexpr double kAnsweredCreateSettleSeconds = 2.0;
constexpr double kLookAgainSeconds = 0.5;

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
	return machine::MachineSpecFor(settings_.env, target_.user_id, target_.guest, target_.region, Image(),
								   target_.operation_id, secrets_version_);
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
	change.status = "provisioning";
	change.tier = target_.tier;
	app_->status = "provisioning";
	step.app = change;
	step.events.push_back(MakeEvent("provision_requested", details));
	if (app_->delete_requested) {
		return DeleteApp(std::move(step)); // a deletion was sent: finish it, never reuse a dying app
	}
	step.request = fly::CreateAppRequest(app_->name, settings_.org_slug);
	phase_ = Phase::kCreateApp;
	return step;
}

// The app is there (created now, or ours from before): record Fly's id for it, then go on.
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
	return AfterAppExists(std::move(step));
}

Step
Operation::AfterAppExists(Step step) {
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
		if (phase_ == Phase::kFindCreatedMachine) {
			if (now_ >= create_settles_at_) {
				return CreateMachine(std::move(step)); // long enough: that creation did not happen
			}
			// The ambiguous create left nothing behind yet (Fly's machine list lags its writes): look again.
			step.request = UserMachinesRequest();
			step.delay_seconds = kLookAgainSeconds;
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
		if (target_.region.empty() || machine.region.empty() || machine.region == target_.region) {
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
	const MachineFacts &chosen = *adopted_;
	if (app_->machine_id != chosen.id) {
		app_->machine_id = chosen.id;
		AppChange change = step.app.value_or(AppChange{});
		change.machine_id = chosen.id;
		step.app = change;
		Json details = Json::Object();
		details.Set("machine_id", Json::String(chosen.id));
		details.Set("state", Json::String(chosen.state));
		step.events.push_back(MakeEvent("machine_reused", details));
	}
	if (!SameGuest(chosen.guest, target_.guest) || chosen.image != Image()) {
		Json details = Json::Object();
		details.Set("machine_id", Json::String(chosen.id));
		details.Set("from_guest", GuestJson(chosen.guest));
		details.Set("to_guest", GuestJson(target_.guest));
		details.Set("from_image", Json::String(chosen.image));
		details.Set("to_image", Json::String(Image()));
		step.events.push_back(MakeEvent("machine_update_requested", details));
		step.request = fly::UpdateMachineRequest(app_->name, chosen.id, Spec());
		phase_ = Phase::kUpdateMachine;
		return step;
	}
	return BringUp(std::move(step), chosen.state);
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
		return AppExists(std::move(step), outcome, "app_created");
	}
	if (outcome.kind == OutcomeKind::kNameTaken) {
		step.request = fly::GetAppRequest(app_->name);
		phase_ = Phase::kGetTakenApp;
		return step;
	}
	return Unexpected(outcome, "create_app");
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
		return AppExists(std::move(step), outcome, "app_reused");
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
		AppChange change;
		change.name = *next;
		change.name_attempt = next_attempt;
		step.app = change;
		app_->name = *next;
		app_->name_attempt = next_attempt;
		step.request = fly::CreateAppRequest(app_->name, settings_.org_slug);
		phase_ = Phase::kCreateApp;
		return step;
	}
	if (outcome.kind == OutcomeKind::kNotFound) {
		// Taken a moment ago, gone now (a deletion finishing): create it again, after a pause.
		phase_ = Phase::kCreateApp;
		last_request_ = fly::CreateAppRequest(app_->name, settings_.org_slug);
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
			step.request = UserMachinesRequest();
			phase_ = Phase::kFindCreatedMachine;
			return step;
		}
		app_->machine_id = machine.id;
		app_->pending_create_operation.clear();
		AppChange change;
		change.machine_id = machine.id;
		change.pending_create = "";
		change.guest = target_.guest;
		change.image = Image();
		step.app = change;
		Json details = Json::Object();
		details.Set("machine_id", Json::String(machine.id));
		details.Set("region", Json::String(machine.region));
		details.Set("operation_id", Json::String(target_.operation_id));
		step.events.push_back(MakeEvent("machine_created", details));
		wait_round_ = 0;
		return Wait(std::move(step));
	}
	if (outcome.kind == OutcomeKind::kTransient || outcome.kind == OutcomeKind::kMalformed) {
		// A 408, 5xx or lost answer may still have created the machine: look before creating again. Once
		// Fly has answered, its list catches up within moments; with no answer at all the request may still
		// be running, so wait as long as a request may take.
		step.events.push_back(MakeEvent("provision_attempt_failed", OutcomeDetails(outcome, "create_machine")));
		create_settles_at_ =
			now_ + (outcome.http_status != 0 ? kAnsweredCreateSettleSeconds : settings_.create_settle_seconds);
		step.request = UserMachinesRequest();
		step.delay_seconds = kLookAgainSeconds;
		phase_ = Phase::kFindCreatedMachine;
		return step;
	}
	return Fail(outcome, "create_machine");
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
		change.region = target_.region;
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
		change.region = target_.region;
		change.guest = target_.guest;
		change.image = Image();
		step.app = change;
		Json details = Json::Object();
		details.Set("app_name", Json::String(app_->name));
		details.Set("machine_id", Json::String(app_->machine_id));
		details.Set("region", Json::String(target_.region));
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
		step.app = change;
		return FindMachine(std::move(step));
	}
	return Unexpected(outcome, "wait_machine");
}

} // namespace reconcile
} // namespace pgfly

// Consistency after create: right after Fly creates an app, calls under it can answer 404 or 401 for a while,
// and a new machine can be missing from gets, waits and lists (docs/fly-api.md). Within
// fly.create_settle_time of the creation such answers are asked again with backoff, without counting as failed
// attempts or raising alerts; after it they mean what they say.
#include "pgfly/core/reconcile.hpp"

#include <algorithm>
#include <cmath>
#include <utility>

#include "pgfly/core/json.hpp"

#include "pgfly/core/cpp_only.hpp"

namespace pgfly {
namespace reconcile {

namespace {

// fly-go's WaitForApp starts at 100 ms and caps at 500 ms per try; we ask less often, for longer per call.
constexpr double kFirstSettleDelaySeconds = 0.5;
constexpr double kLastSettleDelaySeconds = 4.0;

bool
LooksInvisible(const fly::Outcome &outcome) {
	return outcome.http_status == 404 || outcome.http_status == 401;
}

} // namespace

bool
Operation::AppIsYoung() const {
	return now_ - app_created_at_ < settings_.visibility_window_seconds;
}

bool
Operation::MachineIsYoung() const {
	return now_ - machine_created_at_ < settings_.visibility_window_seconds;
}

// Which 404s and 401s may be Fly not showing yet what it has just created: any under a young app (including the
// look-up after a name_taken: a create whose answer was lost, before a restart say, makes that one too), and those
// about a young machine. After the window, a 404 to that look-up means the name is free again.
std::optional<Step>
Operation::SettleIfYoung(const fly::Outcome &outcome) {
	if (!LooksInvisible(outcome)) {
		return std::nullopt;
	}
	switch (phase_) {
	case Phase::kCreateApp:
	case Phase::kLookUpOrphan:
	case Phase::kDeleteExtraMachine:
	case Phase::kConfirmAppGone: // after our own DELETE, a 404 is what we wait for
	case Phase::kFinished:
		return std::nullopt;
	case Phase::kWaitAppVisible:
		return std::nullopt; // OnWaitAppVisible decides
	case Phase::kWaitStarted:
	case Phase::kWaitStopped:
	case Phase::kStartMachine:
	case Phase::kUpdateMachine:
	case Phase::kStopMachine:
	case Phase::kWaitStoppedForDelete:
		if (MachineIsYoung()) {
			return Settle(outcome, machine_created_at_);
		}
		break;
	default:
		break;
	}
	if (AppIsYoung()) {
		return Settle(outcome, app_created_at_);
	}
	return std::nullopt;
}

// Sends the same request again after 0.5, 1, 2, then every 4 seconds. The first time, an `app_settling` event
// says why the operation is waiting.
Step
Operation::Settle(const fly::Outcome &outcome, double created_at) {
	Step step;
	step.request = last_request_;
	step.delay_seconds =
		std::min(kLastSettleDelaySeconds, kFirstSettleDelaySeconds * std::pow(2.0, std::min(settle_round_, 8)));
	settle_round_++;
	if (!settling_reported_) {
		settling_reported_ = true;
		Json details = Json::Object();
		details.Set("app_name", Json::String(app_->name));
		details.Set("step", Json::String(last_request_ ? fly::EndpointName(last_request_->endpoint) : ""));
		details.Set("http_status", Json::Integer(outcome.http_status));
		details.Set("seconds_since_create", Json::Real(std::round((now_ - created_at) * 10) / 10));
		details.Set("create_settle_time_seconds", Json::Real(settings_.visibility_window_seconds));
		step.events.push_back(MakeEvent("app_settling", details));
	}
	return step;
}

// After POST /v1/apps: wait until GET /v1/apps/{name} answers 200 before any call under the app, as flyctl does.
Step
Operation::OnWaitAppVisible(const fly::Outcome &outcome) {
	Step step;
	if (outcome.kind == fly::OutcomeKind::kSuccess) {
		return AfterAppExists(std::move(step));
	}
	if (LooksInvisible(outcome)) {
		if (AppIsYoung()) {
			return Settle(outcome, app_created_at_);
		}
		// Fly accepted the create: keep asking, now as failed attempts, so that fly.max_attempts ends it.
		fly::Outcome invisible = outcome;
		invisible.message = "the app Fly created " + std::to_string(static_cast<long>(now_ - app_created_at_)) +
		                    " s ago still cannot be read (" + outcome.message + ")";
		return Retry(invisible, "get_app");
	}
	return Unexpected(outcome, "get_app");
}

} // namespace reconcile
} // namespace pgfly

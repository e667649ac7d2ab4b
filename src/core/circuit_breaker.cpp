#include "pgfly/core/circuit_breaker.hpp"

#include <algorithm>

#include "pgfly/core/cpp_only.hpp"

namespace pgfly {

CircuitBreaker::CircuitBreaker(CircuitBreakerSettings settings) : settings_(settings) {}

void
CircuitBreaker::Configure(CircuitBreakerSettings settings) {
	settings_ = settings;
}

CircuitBreaker::State
CircuitBreaker::state(double now) const {
	if (!open_) {
		return State::kClosed;
	}
	return now >= reopen_at_ ? State::kHalfOpen : State::kOpen;
}

bool
CircuitBreaker::CanSend(double now) const {
	const std::optional<double> at = SendableAt(now);
	return at && *at <= now;
}

std::optional<double>
CircuitBreaker::SendableAt(double now) const {
	switch (state(now)) {
	case State::kClosed:
		return now;
	case State::kOpen:
		return reopen_at_;
	case State::kHalfOpen:
		break;
	}
	return probe_in_flight_ ? std::nullopt : std::optional<double>(now);
}

void
CircuitBreaker::MarkSent(double now) {
	if (state(now) == State::kHalfOpen) {
		probe_in_flight_ = true;
	}
}

bool
CircuitBreaker::AllowRequest(double now) {
	if (!CanSend(now)) {
		return false;
	}
	MarkSent(now);
	return true;
}

void
CircuitBreaker::OnAnswer() {
	failures_ = 0;
	open_ = false;
	probe_in_flight_ = false;
	open_for_ = 0;
}

void
CircuitBreaker::OnTransientFailure(double now) {
	failures_++;
	if (open_) {
		if (probe_in_flight_ || now >= reopen_at_) {
			// The probe failed: pause again, for longer.
			probe_in_flight_ = false;
			open_for_ = std::min(settings_.max_open_seconds, open_for_ * 2);
			reopen_at_ = now + open_for_;
		}
		return;
	}
	if (failures_ >= settings_.failure_threshold) {
		open_ = true;
		open_for_ = settings_.open_seconds;
		reopen_at_ = now + open_for_;
	}
}

const char *
CircuitBreakerStateName(CircuitBreaker::State state) {
	switch (state) {
	case CircuitBreaker::State::kClosed:
		return "closed";
	case CircuitBreaker::State::kOpen:
		return "open";
	case CircuitBreaker::State::kHalfOpen:
		return "half-open";
	}
	return "unknown";
}

} // namespace pgfly

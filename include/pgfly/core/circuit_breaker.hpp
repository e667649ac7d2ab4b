// Stops the worker from burning every user's attempts while Fly is down: after a run of transient failures
// (across users) the breaker opens and no request goes out; when the pause is over one probe request may
// go (half-open); its success closes the breaker, its failure opens it again for twice as long.
#pragma once

#include <optional>

namespace pgfly {

struct CircuitBreakerSettings {
	int failure_threshold = 10;
	double open_seconds = 5;
	double max_open_seconds = 300;
};

class CircuitBreaker {
public:
	enum class State { kClosed, kOpen, kHalfOpen };

	explicit CircuitBreaker(CircuitBreakerSettings settings = {});
	void Configure(CircuitBreakerSettings settings);

	// Whether a request may be sent now (in half-open state: when no probe is out yet). No side effect.
	bool CanSend(double now) const;
	// A request was sent; in half-open state it is the probe.
	void MarkSent(double now);
	// The earliest time a request may be sent: now when closed, the end of the pause when open; nothing while a
	// half-open breaker's probe is out (its answer decides, and wakes the worker).
	std::optional<double> SendableAt(double now) const;
	// CanSend, then MarkSent.
	bool AllowRequest(double now);
	bool
	probe_in_flight() const {
		return probe_in_flight_;
	}
	// Fly answered (anything but a transient failure): it is up.
	void OnAnswer();
	void OnTransientFailure(double now);

	State state(double now) const;
	// When an open breaker lets a probe through.
	double
	reopen_at() const {
		return reopen_at_;
	}
	int
	consecutive_failures() const {
		return failures_;
	}

private:
	CircuitBreakerSettings settings_;
	int failures_ = 0;
	bool open_ = false;
	bool probe_in_flight_ = false;
	double open_for_ = 0;
	double reopen_at_ = 0;
};

const char *CircuitBreakerStateName(CircuitBreaker::State state);

} // namespace pgfly

#include "pgfly/core/wake_schedule.hpp"

#include <algorithm>
#include <cmath>

namespace pgfly {

WakeSchedule::WakeSchedule(double now, double longest_seconds)
	: now_(now), wake_at_(now + std::max(longest_seconds, kFloorSeconds)) {}

void
WakeSchedule::At(std::optional<double> at) {
	if (at && !std::isnan(*at)) {
		wake_at_ = std::min(wake_at_, std::max(*at, now_ + kFloorSeconds));
	}
}

void
WakeSchedule::At(double at, double not_before) {
	At(std::max(at, not_before));
}

long
WakeSchedule::SleepMs() const {
	if (now_ready_) {
		return 0;
	}
	return static_cast<long>(std::ceil((wake_at_ - now_) * 1000.0 - 1e-6));
}

} // namespace pgfly

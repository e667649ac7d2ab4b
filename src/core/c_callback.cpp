#include "pgfly/core/c_callback.hpp"

#include <atomic>
#include <new>

#include "pgfly/core/cpp_only.hpp"

namespace pgfly {

namespace {

constexpr int kCallbackKinds = static_cast<int>(CCallback::kJsonDump) + 1;
std::atomic<int> injected_faults[kCallbackKinds];

} // namespace

void
InjectCallbackFaultForTesting(CCallback callback, int count) {
	injected_faults[static_cast<int>(callback)].store(count);
}

void
MaybeThrowInjectedFault(CCallback callback) {
	std::atomic<int> &faults = injected_faults[static_cast<int>(callback)];
	int left = faults.load(std::memory_order_relaxed);
	while (left > 0) {
		if (faults.compare_exchange_weak(left, left - 1)) {
			throw std::bad_alloc();
		}
	}
}

} // namespace pgfly

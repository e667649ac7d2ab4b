// Functions handed to C libraries (libcurl's write, header, socket and timer callbacks, jansson's dump callback)
// are called from C frames. An exception (std::bad_alloc, say) unwinding through them ends in std::terminate,
// and a crashed worker restarts the whole cluster. Each such callback is noexcept and runs its body through
// GuardCCallback, which turns any exception into the callback's error value.
#pragma once

namespace pgfly {

enum class CCallback { kCurlWrite, kCurlHeader, kCurlSocket, kCurlTimer, kJsonDump };

// Test seam: the next `count` calls of that callback throw std::bad_alloc before their body runs.
void InjectCallbackFaultForTesting(CCallback callback, int count);
// Throws std::bad_alloc when a fault was injected for the callback; otherwise nothing.
void MaybeThrowInjectedFault(CCallback callback);

// Runs body() and returns its result; if it throws, runs on_error() (which must not throw) and returns
// its result instead.
template <typename Body, typename OnError>
auto
GuardCCallback(CCallback callback, Body &&body, OnError &&on_error) noexcept -> decltype(body()) {
	try {
		MaybeThrowInjectedFault(callback);
		return body();
	} catch (...) {
		return on_error();
	}
}

} // namespace pgfly

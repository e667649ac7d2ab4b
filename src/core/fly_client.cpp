#include "pgfly/core/fly_client.hpp"

#include <curl/curl.h>
#include <poll.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <unordered_map>

#include "pgfly/core/c_callback.hpp"
#include "pgfly/core/fly_auth.hpp"
#include "pgfly/core/text.hpp"
#include "pgfly/core/token_source.hpp"

#include "pgfly/core/cpp_only.hpp"

namespace pgfly {
namespace fly {

namespace {

using Clock = std::chrono::steady_clock;

// Fly holds a wait open for up to its timeout; give the answer this long to arrive on top of that.
constexpr long kWaitGraceMs = 5000;
constexpr size_t kMaxCapturedHeaderLength = 200;
constexpr int kMaxEventsPerDrive = 64;
// HTTP/2 streams one connection carries at once.
constexpr long kMaxConcurrentStreams = 100;
// Expired curl timers served back to back in one Drive, so that a chain of zero timeouts does not need a trip
// through the caller's wait loop for each link.
constexpr int kMaxTimerRoundsPerDrive = 8;

std::once_flag curl_init_once;
CURLcode curl_init_result = CURLE_OK;

// Lazily and once: curl_global_init is not thread-safe and must not run from a static initializer of a library
// loaded into the postmaster.
void
EnsureCurlGlobalInit() {
	std::call_once(curl_init_once, [] { curl_init_result = curl_global_init(CURL_GLOBAL_DEFAULT); });
	if (curl_init_result != CURLE_OK) {
		throw std::runtime_error(std::string("libcurl could not be initialised: ") +
		                         curl_easy_strerror(curl_init_result));
	}
}

bool
IsHttpToken(const std::string &method) {
	if (method.empty()) {
		return false;
	}
	for (char c : method) {
		if (!(c >= 'A' && c <= 'Z')) {
			return false;
		}
	}
	return true;
}

bool
Contains(const char *text, const char *needle) {
	return std::strstr(text, needle) != nullptr;
}

NetworkError
MapCurlError(CURLcode code, bool too_large, const char *detail) {
	switch (code) {
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_COULDNT_RESOLVE_PROXY:
		return NetworkError::kDns;
	case CURLE_COULDNT_CONNECT:
		return NetworkError::kConnect;
	case CURLE_OPERATION_TIMEDOUT:
		return NetworkError::kTimeout;
	case CURLE_SEND_ERROR:
	case CURLE_RECV_ERROR:
	case CURLE_GOT_NOTHING:
	case CURLE_PARTIAL_FILE:
	case CURLE_HTTP2:
	case CURLE_HTTP2_STREAM:
	case CURLE_HTTP3:
	case CURLE_QUIC_CONNECT_ERROR:
		return NetworkError::kReset;
	case CURLE_FILESIZE_EXCEEDED:
		return NetworkError::kTooLarge;
	case CURLE_WRITE_ERROR:
		return too_large ? NetworkError::kTooLarge : NetworkError::kOther;
	case CURLE_SSL_CONNECT_ERROR:
		// The handshake failed. A connection dropped in the middle of it is a network blip, not configuration.
		if (Contains(detail, "reset by peer") || Contains(detail, "SSL_ERROR_SYSCALL") ||
		    Contains(detail, "unexpected eof")) {
			return NetworkError::kReset;
		}
		return NetworkError::kTls;
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CERTPROBLEM:
	case CURLE_SSL_CIPHER:
	case CURLE_SSL_CACERT_BADFILE:
	case CURLE_SSL_CRL_BADFILE:
	case CURLE_SSL_ISSUER_ERROR:
	case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
	case CURLE_SSL_INVALIDCERTSTATUS:
	case CURLE_SSL_ENGINE_NOTFOUND:
	case CURLE_SSL_ENGINE_SETFAILED:
	case CURLE_SSL_ENGINE_INITFAILED:
	case CURLE_SSL_CLIENTCERT:
	case CURLE_USE_SSL_FAILED:
		return NetworkError::kTls;
	case CURLE_UNSUPPORTED_PROTOCOL:
	case CURLE_URL_MALFORMAT:
	case CURLE_NOT_BUILT_IN:
	case CURLE_BAD_FUNCTION_ARGUMENT:
	case CURLE_UNKNOWN_OPTION:
		return NetworkError::kConfig;
	default:
		return NetworkError::kOther;
	}
}

// One request in flight. Owns its easy handle and header list; the multi handle only borrows them.
struct Transfer {
	RequestId id = 0;
	Endpoint endpoint = Endpoint::kGetApp;
	Clock::time_point started;
	// Kept for scrubbing this transfer's texts even if the configured token or secrets change meanwhile.
	std::string token;
	std::vector<std::string> secret_values;
	CURL *easy = nullptr;
	curl_slist *headers = nullptr;
	// CURLOPT_POSTFIELDS does not copy: the body lives here until the transfer is gone.
	std::string request_body;
	std::string response_body;
	size_t max_response_bytes = 0;
	bool too_large = false;
	// A callback failed to allocate; the transfer was aborted.
	bool out_of_memory = false;
	std::string request_id;
	std::string retry_after;
	std::string location;
	char error[CURL_ERROR_SIZE] = {};

	Transfer() = default;
	Transfer(const Transfer &) = delete;
	Transfer &operator=(const Transfer &) = delete;
	~Transfer() {
		if (easy != nullptr) {
			curl_easy_cleanup(easy);
		}
		curl_slist_free_all(headers);
	}
};

// libcurl's callbacks are noexcept: an exception must not unwind through libcurl (c_callback.hpp). A failed
// callback returns something other than `bytes`, which makes curl abort the transfer with CURLE_WRITE_ERROR.
size_t
WriteBody(char *data, size_t size, size_t count, void *user) noexcept {
	auto *transfer = static_cast<Transfer *>(user);
	return GuardCCallback(
		CCallback::kCurlWrite,
		[&]() -> size_t {
			const size_t bytes = size * count;
			if (transfer->response_body.size() + bytes > transfer->max_response_bytes) {
				transfer->too_large = true;
				return 0;
			}
			transfer->response_body.append(data, bytes);
			return bytes;
		},
		[&]() -> size_t {
			transfer->out_of_memory = true;
			return 0;
		});
}

size_t
CaptureHeader(char *data, size_t size, size_t count, void *user) noexcept {
	auto *transfer = static_cast<Transfer *>(user);
	return GuardCCallback(
		CCallback::kCurlHeader,
		[&]() -> size_t {
			const size_t bytes = size * count;
			const std::string_view line(data, bytes);
			if (line.substr(0, 5) == "HTTP/") {
				// A new response begins (after a 100 Continue, for instance): only the final one's headers count.
				transfer->request_id.clear();
				transfer->retry_after.clear();
				transfer->location.clear();
				return bytes;
			}
			const size_t colon = line.find(':');
			if (colon == std::string_view::npos) {
				return bytes;
			}
			const std::string_view name = TrimView(line.substr(0, colon));
			const std::string_view value = TrimView(line.substr(colon + 1)).substr(0, kMaxCapturedHeaderLength);
			if (EqualsIgnoreCase(name, "fly-request-id")) {
				transfer->request_id.assign(value);
			} else if (EqualsIgnoreCase(name, "retry-after")) {
				transfer->retry_after.assign(value);
			} else if (EqualsIgnoreCase(name, "location")) {
				transfer->location.assign(value);
			}
			return bytes;
		},
		[&]() -> size_t {
			transfer->out_of_memory = true;
			return 0;
		});
}

} // namespace

std::string
BuildUrl(const std::string &base_url, const Request &request) {
	std::string url = base_url;
	while (!url.empty() && url.back() == '/') {
		url.pop_back();
	}
	url += request.path;
	char separator = '?';
	for (const auto &[name, value] : request.query) {
		url.push_back(separator);
		url += PercentEncode(name) + "=" + PercentEncode(value);
		separator = '&';
	}
	return url;
}

struct Client::Impl {
	ClientConfig config;
	CURLM *multi = nullptr;
	CURLSH *share = nullptr;
	int epoll_fd = -1;
	RequestId next_id = 1;
	std::unordered_map<RequestId, std::unique_ptr<Transfer>> transfers;
	std::optional<Clock::time_point> timer_deadline;
	std::vector<Answer> completed;
	// A socket or timer callback failed: curl's view of the sockets and timer can no longer be trusted, so every
	// transfer is aborted at the next Drive.
	bool callback_failed = false;

	explicit Impl(ClientConfig client_config) : config(std::move(client_config)) {
		EnsureCurlGlobalInit();
		epoll_fd = epoll_create1(EPOLL_CLOEXEC);
		if (epoll_fd < 0) {
			throw std::runtime_error(std::string("epoll_create1 failed: ") + std::strerror(errno));
		}
		share = curl_share_init();
		if (share == nullptr || !CreateMulti()) {
			Release();
			throw std::runtime_error("libcurl could not create a multi or share handle");
		}
		// DNS answers and TLS sessions survive individual transfers, so a new connection to the same host
		// skips the lookup and resumes the TLS session. Single-threaded: no lock callbacks needed.
		curl_share_setopt(share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
		curl_share_setopt(share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
	}

	bool
	CreateMulti() {
		multi = curl_multi_init();
		if (multi == nullptr) {
			return false;
		}
		curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, &Impl::OnSocket);
		curl_multi_setopt(multi, CURLMOPT_SOCKETDATA, this);
		curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, &Impl::OnTimer);
		curl_multi_setopt(multi, CURLMOPT_TIMERDATA, this);
		curl_multi_setopt(multi, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX);
		// Requests one HTTP/2 connection carries at once (the server's own cap applies when lower); more wait
		// for another connection, within the connection limits below.
		curl_multi_setopt(multi, CURLMOPT_MAX_CONCURRENT_STREAMS, kMaxConcurrentStreams);
		ApplyConnectionLimits();
		return true;
	}

	// After a socket or timer callback failed, libcurl refuses every later transfer on that multi handle: abort
	// what is in flight and start over with a fresh one (its cached connections close with the old one, which
	// also takes their sockets out of the epoll set).
	void
	RecoverFromCallbackFailure() {
		callback_failed = false;
		AbortAll(NetworkError::kOther, "a libcurl callback failed (out of memory)");
		curl_multi_cleanup(multi);
		multi = nullptr;
		timer_deadline.reset();
		CreateMulti(); // if this fails too, Submit tries again
	}

	~Impl() { Release(); }

	void
	Release() {
		for (auto &[id, transfer] : transfers) {
			curl_multi_remove_handle(multi, transfer->easy);
		}
		// Easy handles go before the share handle they use, and before the multi handle.
		transfers.clear();
		if (multi != nullptr) {
			curl_multi_cleanup(multi);
			multi = nullptr;
		}
		if (share != nullptr) {
			curl_share_cleanup(share);
			share = nullptr;
		}
		if (epoll_fd >= 0) {
			close(epoll_fd);
			epoll_fd = -1;
		}
	}

	void
	ApplyConnectionLimits() {
		const long total = std::max(0L, config.max_total_connections);
		long per_host = std::max(1L, config.max_host_connections);
		if (total > 0) {
			per_host = std::min(per_host, total);
		}
		curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, per_host);
		curl_multi_setopt(multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, total);
		// The idle-connection cache otherwise scales with the number of easy handles, which drops to zero
		// between bursts here; keep room for every connection we allow.
		curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, total > 0 ? total : per_host);
	}

	// -1 tells libcurl the callback failed; it then aborts the transfers concerned.
	static int
	OnSocket(CURL *, curl_socket_t socket, int what, void *user, void *) noexcept {
		auto *impl = static_cast<Impl *>(user);
		return GuardCCallback(
			CCallback::kCurlSocket,
			[&] {
				if (what == CURL_POLL_REMOVE) {
					// ENOENT/EBADF are fine: the socket may never have been added, or is already closed.
					epoll_ctl(impl->epoll_fd, EPOLL_CTL_DEL, socket, nullptr);
					return 0;
				}
				epoll_event event = {};
				event.events = ((what & CURL_POLL_IN) ? EPOLLIN : 0u) | ((what & CURL_POLL_OUT) ? EPOLLOUT : 0u);
				event.data.fd = socket;
				if (epoll_ctl(impl->epoll_fd, EPOLL_CTL_MOD, socket, &event) != 0 && errno == ENOENT) {
					epoll_ctl(impl->epoll_fd, EPOLL_CTL_ADD, socket, &event);
				}
				return 0;
			},
			[&] {
				impl->callback_failed = true;
				return -1;
			});
	}

	static int
	OnTimer(CURLM *, long timeout_ms, void *user) noexcept {
		auto *impl = static_cast<Impl *>(user);
		return GuardCCallback(
			CCallback::kCurlTimer,
			[&] {
				if (timeout_ms < 0) {
					impl->timer_deadline.reset();
				} else {
					impl->timer_deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
				}
				return 0;
			},
			[&] {
				impl->callback_failed = true;
				return -1;
			});
	}

	double
	ElapsedMs(Clock::time_point started) const {
		return std::chrono::duration<double, std::milli>(Clock::now() - started).count();
	}

	RequestId
	CompleteNow(RequestId id, Endpoint endpoint, NetworkError error, const std::string &detail) {
		RawResponse raw;
		raw.endpoint = endpoint;
		raw.network_error = error;
		raw.network_detail = detail;
		raw.request_sent = false;
		completed.push_back(Answer{id, endpoint, ClassifyScrubbed(raw, config.token, config.secret_values), 0.0});
		return id;
	}

	// Secrets are scrubbed from what came back before it is classified (and cut short), and from the result.
	static Outcome
	ClassifyScrubbed(RawResponse raw, const std::string &token, const std::vector<std::string> &secret_values) {
		if (!secret_values.empty()) {
			for (std::string *text : {&raw.body, &raw.network_detail, &raw.request_id, &raw.location}) {
				*text = RedactStrings(*text, secret_values);
			}
		}
		Outcome outcome = Classify(raw, token);
		RedactValues(outcome, secret_values);
		return outcome;
	}

	RequestId
	Submit(const Request &request) {
		const RequestId id = next_id++;
		if (auto problem = TokenProblem(config.token)) {
			return CompleteNow(id, request.endpoint, NetworkError::kConfig,
			                   "the Fly API token is unusable: " + *problem);
		}
		if (config.base_url.empty()) {
			return CompleteNow(id, request.endpoint, NetworkError::kConfig, "no Fly API URL is configured");
		}
		if (!IsHttpToken(request.method)) {
			return CompleteNow(id, request.endpoint, NetworkError::kConfig, "invalid HTTP method");
		}
		auto transfer = std::make_unique<Transfer>();
		transfer->id = id;
		transfer->endpoint = request.endpoint;
		transfer->started = Clock::now();
		transfer->token = config.token;
		transfer->secret_values = config.secret_values;
		// 0 would mean "no limit" to CURLOPT_MAXFILESIZE_LARGE; an unbounded body is never wanted.
		transfer->max_response_bytes =
			config.max_response_bytes > 0 ? config.max_response_bytes : kDefaultMaxResponseBytes;
		transfer->easy = curl_easy_init();
		if (transfer->easy == nullptr) {
			return CompleteNow(id, request.endpoint, NetworkError::kOther, "libcurl could not create a transfer");
		}
		if (!Configure(*transfer, request)) {
			return CompleteNow(id, request.endpoint, NetworkError::kConfig,
			                   std::string("libcurl refused an option: ") + transfer->error);
		}
		if (multi == nullptr && !CreateMulti()) {
			return CompleteNow(id, request.endpoint, NetworkError::kOther, "libcurl could not create a multi handle");
		}
		const CURLMcode added = curl_multi_add_handle(multi, transfer->easy);
		if (added != CURLM_OK) {
			return CompleteNow(id, request.endpoint, NetworkError::kOther,
			                   std::string("libcurl could not start the transfer: ") + curl_multi_strerror(added));
		}
		transfers.emplace(id, std::move(transfer));
		return id;
	}

	// Sets every option of a transfer; false (with transfer.error filled in) when libcurl refuses one.
	bool
	Configure(Transfer &transfer, const Request &request) {
		CURL *easy = transfer.easy;
		bool ok = true;
		auto set = [&](CURLcode code) {
			if (code != CURLE_OK && ok) {
				ok = false;
				std::snprintf(transfer.error, sizeof(transfer.error), "%s", curl_easy_strerror(code));
			}
		};
		const long connect_timeout =
			config.connect_timeout_ms > 0 ? config.connect_timeout_ms : kDefaultConnectTimeoutMs;
		long request_timeout = config.request_timeout_ms > 0 ? config.request_timeout_ms : kDefaultRequestTimeoutMs;
		if (request.endpoint == Endpoint::kWaitMachine) {
			request_timeout = WaitTimeoutSeconds(request) * 1000L + kWaitGraceMs;
		}

		set(curl_easy_setopt(easy, CURLOPT_PRIVATE, &transfer));
		const std::string url =
			request.absolute_url.empty() ? BuildUrl(config.base_url, request) : request.absolute_url;
		set(curl_easy_setopt(easy, CURLOPT_URL, url.c_str()));
#if LIBCURL_VERSION_NUM >= 0x075500
		set(curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https"));
		set(curl_easy_setopt(easy, CURLOPT_REDIR_PROTOCOLS_STR, "http,https"));
#else
		set(curl_easy_setopt(easy, CURLOPT_PROTOCOLS, static_cast<long>(CURLPROTO_HTTP | CURLPROTO_HTTPS)));
		set(curl_easy_setopt(easy, CURLOPT_REDIR_PROTOCOLS, static_cast<long>(CURLPROTO_HTTP | CURLPROTO_HTTPS)));
#endif
		// A redirect would carry the token to wherever it points; Fly's API never redirects.
		set(curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L));
		set(curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L));
		set(curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 1L));
		set(curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 2L));
		if (!config.ca_file.empty()) {
			set(curl_easy_setopt(easy, CURLOPT_CAINFO, config.ca_file.c_str()));
		}
		// "" switches libcurl's environment proxies off; NO_PROXY from the environment is overridden likewise.
		set(curl_easy_setopt(easy, CURLOPT_PROXY, config.proxy.c_str()));
		set(curl_easy_setopt(easy, CURLOPT_NOPROXY, ""));
		set(curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, connect_timeout));
		set(curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, request_timeout));
		set(curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L));
		// Over TLS, wait for a connection still in its handshake to say (by ALPN) whether it can multiplex
		// HTTP/2 rather than open another. Not over plain http: there curl only learns the answer from the
		// first response, so one long request (a 60 s wait) would hold back every other one.
		if (config.base_url.compare(0, 8, "https://") == 0) {
			set(curl_easy_setopt(easy, CURLOPT_PIPEWAIT, 1L));
			// HTTP/2 when the server offers it by ALPN (Fly's API does), HTTP/1.1 with keep-alive otherwise.
			set(curl_easy_setopt(easy, CURLOPT_HTTP_VERSION, static_cast<long>(CURL_HTTP_VERSION_2TLS)));
		}
		set(curl_easy_setopt(easy, CURLOPT_SHARE, share));
		if (!IsFlyApi(request.endpoint)) {
			// Each user app is a host of its own: its connection would only crowd Fly's out of the cache.
			set(curl_easy_setopt(easy, CURLOPT_FORBID_REUSE, 1L));
		}
		set(curl_easy_setopt(easy, CURLOPT_USERAGENT, config.user_agent.c_str()));
		set(curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, transfer.error));
		set(curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, &WriteBody));
		set(curl_easy_setopt(easy, CURLOPT_WRITEDATA, &transfer));
		set(curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, &CaptureHeader));
		set(curl_easy_setopt(easy, CURLOPT_HEADERDATA, &transfer));
		// Refuses a declared Content-Length over the limit before any body arrives; WriteBody catches the rest.
		set(curl_easy_setopt(easy, CURLOPT_MAXFILESIZE_LARGE, static_cast<curl_off_t>(transfer.max_response_bytes)));

		const bool has_body = request.body_json.has_value();
		if (has_body) {
			transfer.request_body = *request.body_json;
		}
		if (request.method == "GET" && !has_body) {
			set(curl_easy_setopt(easy, CURLOPT_HTTPGET, 1L));
		} else if (request.method == "DELETE" && !has_body) {
			set(curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, "DELETE"));
		} else {
			// Also for a POST without a body (stop, start), so that it carries "Content-Length: 0".
			set(curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE,
			                     static_cast<curl_off_t>(transfer.request_body.size())));
			set(curl_easy_setopt(easy, CURLOPT_POSTFIELDS, transfer.request_body.c_str()));
			if (request.method != "POST") {
				set(curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, request.method.c_str()));
			}
		}

		curl_slist *headers = nullptr;
		auto add = [&](const std::string &line) {
			curl_slist *extended = curl_slist_append(headers, line.c_str());
			if (extended == nullptr) {
				ok = false;
				std::snprintf(transfer.error, sizeof(transfer.error), "out of memory for headers");
				return;
			}
			headers = extended;
		};
		add("Accept: application/json");
		if (request.authenticated) {
			add("Authorization: " + AuthorizationHeader(config.token));
		}
		// "Name:" with no value removes a header curl would add: its form Content-Type on a body-less POST, and
		// Expect: 100-continue, which costs a round trip (or a 1 s stall with servers that ignore it).
		add(has_body ? "Content-Type: application/json" : "Content-Type:");
		add("Expect:");
		transfer.headers = headers;
		set(curl_easy_setopt(easy, CURLOPT_HTTPHEADER, headers));
		return ok;
	}

	void
	Finish(Transfer &transfer, CURLcode code) {
		CURL *easy = transfer.easy;
		RawResponse raw;
		raw.endpoint = transfer.endpoint;
		long status = 0;
		curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
		raw.http_status = status;
		raw.body = std::move(transfer.response_body);
		raw.request_id = transfer.request_id;
		raw.retry_after = transfer.retry_after;
		char *content_type = nullptr;
		if (curl_easy_getinfo(easy, CURLINFO_CONTENT_TYPE, &content_type) == CURLE_OK && content_type != nullptr) {
			raw.content_type = std::string(content_type).substr(0, kMaxCapturedHeaderLength);
		}
		char *redirect = nullptr;
		if (curl_easy_getinfo(easy, CURLINFO_REDIRECT_URL, &redirect) == CURLE_OK && redirect != nullptr) {
			raw.location = redirect;
		} else {
			raw.location = transfer.location;
		}
		long request_size = 0;
		curl_easy_getinfo(easy, CURLINFO_REQUEST_SIZE, &request_size);
		raw.request_sent = request_size > 0;
		if (code != CURLE_OK) {
			raw.network_error = MapCurlError(code, transfer.too_large, transfer.error);
			if (raw.network_error == NetworkError::kTooLarge) {
				raw.network_detail = "response larger than " + std::to_string(transfer.max_response_bytes) + " bytes";
			} else if (transfer.out_of_memory) {
				raw.network_detail = "out of memory while receiving the answer";
			} else {
				raw.network_detail = transfer.error[0] != '\0' ? transfer.error : curl_easy_strerror(code);
			}
			if (raw.network_error == NetworkError::kDns || raw.network_error == NetworkError::kConnect) {
				raw.request_sent = false;
			}
		}
		completed.push_back(Answer{transfer.id, transfer.endpoint,
		                           ClassifyScrubbed(std::move(raw), transfer.token, transfer.secret_values),
		                           ElapsedMs(transfer.started)});
	}

	void
	CollectFinished() {
		int remaining = 0;
		while (CURLMsg *message = curl_multi_info_read(multi, &remaining)) {
			if (message->msg != CURLMSG_DONE) {
				continue;
			}
			// Read everything from the message before removing the handle, which invalidates it.
			CURL *easy = message->easy_handle;
			const CURLcode code = message->data.result;
			Transfer *transfer = nullptr;
			curl_easy_getinfo(easy, CURLINFO_PRIVATE, &transfer);
			curl_multi_remove_handle(multi, easy);
			if (transfer == nullptr) {
				continue;
			}
			Finish(*transfer, code);
			transfers.erase(transfer->id);
		}
	}

	void
	Drive() {
		int running = 0;
		epoll_event events[kMaxEventsPerDrive];
		const int ready = epoll_wait(epoll_fd, events, kMaxEventsPerDrive, 0);
		for (int i = 0; i < ready; i++) {
			int mask = 0;
			if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLRDHUP)) {
				mask |= CURL_CSELECT_IN;
			}
			if (events[i].events & EPOLLOUT) {
				mask |= CURL_CSELECT_OUT;
			}
			if (events[i].events & EPOLLERR) {
				mask |= CURL_CSELECT_ERR;
			}
			curl_multi_socket_action(multi, events[i].data.fd, mask, &running);
		}
		for (int round = 0; round < kMaxTimerRoundsPerDrive; round++) {
			if (!timer_deadline || Clock::now() < *timer_deadline) {
				break;
			}
			// Cleared first: curl sets the next deadline from inside the call.
			timer_deadline.reset();
			curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);
		}
		CollectFinished();
		if (callback_failed) {
			RecoverFromCallbackFailure();
		}
	}

	long
	NextTimeoutMs() const {
		return completed.empty() && !callback_failed ? TimerTimeoutMs() : 0;
	}

	long
	TimerTimeoutMs() const {
		if (!timer_deadline) {
			return -1;
		}
		const auto left = *timer_deadline - Clock::now();
		if (left <= Clock::duration::zero()) {
			return 0;
		}
		// Rounded up, so that a caller sleeping this long finds the timer expired rather than spinning.
		return static_cast<long>(std::chrono::ceil<std::chrono::milliseconds>(left).count());
	}

	void
	AbortAll(NetworkError error, const std::string &detail) {
		for (auto &[id, transfer] : transfers) {
			curl_multi_remove_handle(multi, transfer->easy);
			long request_size = 0;
			curl_easy_getinfo(transfer->easy, CURLINFO_REQUEST_SIZE, &request_size);
			RawResponse raw;
			raw.endpoint = transfer->endpoint;
			raw.network_error = error;
			raw.network_detail = detail;
			raw.request_sent = request_size > 0;
			completed.push_back(Answer{id, transfer->endpoint,
			                           ClassifyScrubbed(raw, transfer->token, transfer->secret_values),
			                           ElapsedMs(transfer->started)});
		}
		transfers.clear();
	}
};

Client::Client(ClientConfig config) : impl_(std::make_unique<Impl>(std::move(config))) {}

Client::~Client() = default;
Client::Client(Client &&) noexcept = default;
Client &Client::operator=(Client &&) noexcept = default;

RequestId
Client::Submit(const Request &request) {
	return impl_->Submit(request);
}

int
Client::EventFd() const {
	return impl_->epoll_fd;
}

long
Client::NextTimeoutMs() const {
	return impl_->NextTimeoutMs();
}

void
Client::Drive() {
	impl_->Drive();
}

std::vector<Answer>
Client::TakeAnswers() {
	std::vector<Answer> taken;
	taken.swap(impl_->completed);
	return taken;
}

size_t
Client::InFlight() const {
	return impl_->transfers.size();
}

void
Client::CancelAll() {
	impl_->AbortAll(NetworkError::kCancelled, "");
}

void
Client::UpdateConfig(const ClientConfig &config) {
	impl_->config = config;
	impl_->ApplyConnectionLimits();
}

Outcome
Client::RunSync(const Request &request) {
	const RequestId id = Submit(request);
	// Polls at least once a second even if curl asked for no timer, so that nothing can hang here for good.
	constexpr long kMaxPollMs = 1000;
	for (;;) {
		auto &completed = impl_->completed;
		auto found =
			std::find_if(completed.begin(), completed.end(), [id](const Answer &answer) { return answer.id == id; });
		if (found != completed.end()) {
			Outcome outcome = std::move(found->outcome);
			completed.erase(found);
			return outcome;
		}
		// Only curl's timer counts here: completions of other requests may be waiting, and must not make this spin.
		long timeout = impl_->TimerTimeoutMs();
		if (timeout < 0 || timeout > kMaxPollMs) {
			timeout = kMaxPollMs;
		}
		pollfd descriptor = {EventFd(), POLLIN, 0};
		if (poll(&descriptor, 1, static_cast<int>(timeout)) < 0 && errno != EINTR) {
			timeout = 0;
		}
		Drive();
	}
}

} // namespace fly
} // namespace pgfly

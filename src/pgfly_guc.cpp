#include "pgfly/pg/postgres.hpp"

extern "C" {
#include "utils/guc.h"
}

#include <cstring>
#include <optional>
#include <string>

#include "pgfly/core/app_naming.hpp"
#include "pgfly/core/fly_auth.hpp"
#include "pgfly/core/fly_client.hpp"
#include "pgfly/pgfly_guc.hpp"

namespace pgfly::settings {

char *api_url = nullptr;
char *http_proxy = nullptr;
char *api_token = nullptr;
char *api_token_file = nullptr;
char *org_slug = nullptr;
char *default_region = nullptr;
char *image = nullptr;
char *app_name_prefix = nullptr;
char *database_name = nullptr;
int poll_interval_ms = 10000;
int max_concurrency = 16;
int health_check_concurrency = 64;
int connect_timeout_ms = fly::kDefaultConnectTimeoutMs;
int request_timeout_ms = fly::kDefaultRequestTimeoutMs;
int create_settle_time_ms = 60000;
int retry_base_delay_ms = 1000;
int retry_max_delay_ms = 300000;
char *machine_env = nullptr;
int max_attempts = 20;
int alert_after_attempts = 3;
int capacity_retries = 3;
bool rate_limits = true;
double rate_limit_per_second = 1.0;
int rate_limit_burst = 3;
double rate_limit_get_machine_per_second = 5.0;
int rate_limit_get_machine_burst = 10;
int rate_limit_app_deletes_per_minute = 100;
int breaker_failure_threshold = 10;
int breaker_open_time_ms = 5000;
int breaker_max_open_time_ms = 300000;
int health_check_interval_ms = 300000;
int drift_check_interval_ms = 900000;
int event_retention_s = 90 * 24 * 3600;
char *app_health_url = nullptr;
bool restart_stopped_machines = true;
bool reprovision_vanished_apps = true;
char *app_secrets_file = nullptr;
int notify_payload = kNotifyPayloadMinimal;
bool strict_tiers = false;
int app_network = kAppNetworkPerApp;
int app_internal_port = 0;
char *app_health_path = nullptr;

namespace {

const struct config_enum_entry kNotifyPayloadOptions[] = {
	{"minimal", kNotifyPayloadMinimal, false}, {"full", kNotifyPayloadFull, false}, {nullptr, 0, false}};

const struct config_enum_entry kAppNetworkOptions[] = {
	{"per_app", kAppNetworkPerApp, false}, {"shared", kAppNetworkShared, false}, {nullptr, 0, false}};

// The path of the machines' HTTP check: goes into every machine config, so an absolute path of visible ASCII.
bool
CheckHealthPath(char **newval, void **, GucSource) noexcept {
	const char *value = *newval;
	bool ok = value[0] == '/' && std::strlen(value) <= 200;
	for (const char *c = value; ok && *c; c++) {
		ok = *c > ' ' && *c < 0x7f;
	}
	if (!ok) {
		GUC_check_errdetail("fly.app_health_path is an absolute path (starting with /) of at most 200 visible "
		                    "ASCII characters.");
	}
	return ok;
}

// Settings whose value goes into a URL path: lower-case letters, digits and dashes only.
bool
IsSlug(const char *value) {
	for (const char *c = value; *c; c++) {
		if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '-')) {
			return false;
		}
	}
	return true;
}

// A check hook is a C-to-C++ entry point: it must not throw, and reports through GUC_check_errdetail.
// Checks the URL setting `name` with `problem`; with empty_means_off, an empty value (the setting is off) passes.
bool
CheckUrl(const char *name, const char *value, bool empty_means_off,
         std::optional<std::string> (*problem)(const std::string &)) noexcept {
	try {
		if (empty_means_off && value[0] == '\0') {
			return true;
		}
		if (const std::optional<std::string> found = problem(value)) {
			GUC_check_errdetail("%s: %s.", name, found->c_str());
			return false;
		}
		return true;
	} catch (...) {
		GUC_check_errdetail("%s could not be checked", name);
		return false;
	}
}

bool
CheckApiUrl(char **newval, void **, GucSource) noexcept {
	return CheckUrl("fly.api_url", *newval, false, fly::ApiUrlProblem);
}

// Empty (off) or an http(s) URL: the app's own endpoint gets no token, so plain http (to a .internal address on
// Fly's private network, say) is allowed to any host.
bool
CheckAppHealthUrl(char **newval, void **, GucSource) noexcept {
	return CheckUrl("fly.app_health_url", *newval, true, fly::PlainUrlProblem);
}

// Empty (no proxy, whatever the environment says) or a proxy URL without credentials.
bool
CheckProxy(char **newval, void **, GucSource) noexcept {
	return CheckUrl("fly.http_proxy", *newval, true, fly::ProxyUrlProblem);
}

// 0 (off) or at least a second: each pass reads the whole subscription table.
bool
CheckDriftInterval(int *newval, void **, GucSource) noexcept {
	if (*newval > 0 && *newval < 1000) {
		GUC_check_errdetail("fly.drift_check_interval is 0 (off) or at least 1s: each pass reads the whole "
		                    "subscription table.");
		return false;
	}
	return true;
}

bool
CheckSlug(char **newval, void **, GucSource) noexcept {
	if (!IsSlug(*newval) || (*newval)[0] == '\0') {
		GUC_check_errdetail("Only lower-case letters, digits and dashes are allowed, and it must not be empty.");
		return false;
	}
	return true;
}

bool
CheckImage(char **newval, void **, GucSource) noexcept {
	for (const char *c = *newval; *c; c++) {
		if (*c <= ' ' || *c == 0x7f || *c == '"' || *c == '\\') {
			GUC_check_errdetail("fly.image must be an image reference without spaces, quotes or control characters.");
			return false;
		}
	}
	return true;
}

const char *
ShowMaskedToken() noexcept {
	return (api_token != nullptr && api_token[0] != '\0') ? "********" : "";
}

bool
CheckPrefix(char **newval, void **, GucSource) noexcept {
	try {
		if (auto problem = AppNamePrefixProblem(*newval)) {
			GUC_check_errdetail("%s", problem->c_str());
			return false;
		}
		return true;
	} catch (...) {
		GUC_check_errdetail("the prefix could not be checked");
		return false;
	}
}

} // namespace

void
Define() {
	DefineCustomStringVariable("fly.api_url", "Base URL of the Fly Machines API.",
	                           "https://, or http:// to a loopback host only (a local simulator).", &api_url,
	                           "https://api.machines.dev", PGC_SIGHUP, GUC_SUPERUSER_ONLY, CheckApiUrl, nullptr,
	                           nullptr);
	// libcurl would otherwise follow http_proxy, https_proxy, ALL_PROXY and NO_PROXY from the postmaster's
	// environment, silently; only this setting decides.
	DefineCustomStringVariable("fly.http_proxy", "Proxy for every request of the pg_fly worker.",
	                           "Empty: no proxy, whatever the server's environment says. For example "
	                           "http://proxy.internal:3128; no user name or password.",
	                           &http_proxy, "", PGC_SIGHUP, GUC_SUPERUSER_ONLY, CheckProxy, nullptr, nullptr);
	// The token never shows: SHOW and current_setting() print a mask, even to superusers and members of
	// pg_read_all_settings, and it is absent from SHOW ALL and pg_settings. It takes effect at server start only,
	// because a reload that changes a setting makes the postmaster log the new value; fly.api_token_file (read
	// again on reload) is the place for a token that rotates.
	DefineCustomStringVariable(
		"fly.api_token", "Fly API token (secret).",
		"Takes effect at server start; fly.api_token_file or FLY_API_TOKEN are the safer places.", &api_token, "",
		PGC_POSTMASTER, GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE, nullptr, nullptr, ShowMaskedToken);
	DefineCustomStringVariable("fly.api_token_file", "File holding the Fly API token.",
	                           "Read by the worker at start and on reload; it must be readable by the server's user.",
	                           &api_token_file, "", PGC_SIGHUP, GUC_SUPERUSER_ONLY, nullptr, nullptr, nullptr);
	DefineCustomStringVariable("fly.org_slug", "Fly organization that owns the per-user apps.", nullptr, &org_slug,
	                           "personal", PGC_SIGHUP, GUC_SUPERUSER_ONLY, CheckSlug, nullptr, nullptr);
	DefineCustomStringVariable("fly.default_region", "Region for tiers whose policy names none.", nullptr,
	                           &default_region, "sjc", PGC_SIGHUP, GUC_SUPERUSER_ONLY, CheckSlug, nullptr, nullptr);
	DefineCustomStringVariable("fly.image", "Container image every per-user machine runs.",
	                           "For example registry.fly.io/vyx-app:deployment-01K9Y194AA56A6SFHTTD64KQ7Y.", &image, "",
	                           PGC_SIGHUP, GUC_SUPERUSER_ONLY, CheckImage, nullptr, nullptr);
	DefineCustomStringVariable("fly.app_name_prefix", "Prefix of per-user app names.",
	                           "App names are the prefix plus the first 8 hex digits of sha256(user_id).",
	                           &app_name_prefix, "vyx-user-", PGC_SIGHUP, GUC_SUPERUSER_ONLY, CheckPrefix, nullptr,
	                           nullptr);
	DefineCustomStringVariable("fly.database_name", "Database the pg_fly worker connects to.",
	                           "The extension must be created in this database.", &database_name, "postgres",
	                           PGC_POSTMASTER, GUC_SUPERUSER_ONLY, nullptr, nullptr, nullptr);
	DefineCustomIntVariable("fly.poll_interval", "Longest time the worker sleeps without being woken.",
	                        "Committed tier changes wake the worker at once; this timer is the safety net for "
	                        "work that arrives without a wake-up (direct inserts, COMMIT PREPARED).",
	                        &poll_interval_ms, 10000, 100, 3600 * 1000, PGC_SIGHUP, GUC_UNIT_MS, nullptr, nullptr,
	                        nullptr);
	DefineCustomIntVariable("fly.max_concurrency", "Users the worker reconciles at once.",
	                        "Each has at most one Fly request in flight.", &max_concurrency, 16, 1, 1024, PGC_SIGHUP, 0,
	                        nullptr, nullptr, nullptr);
	DefineCustomIntVariable("fly.health_check_concurrency", "Health checks the worker runs at once.",
	                        "Each has at most one request in flight; reconciles keep fly.max_concurrency of their own.",
	                        &health_check_concurrency, 64, 1, 1024, PGC_SIGHUP, 0, nullptr, nullptr, nullptr);
	DefineCustomIntVariable("fly.connect_timeout", "Longest wait to connect to the Fly API.", nullptr,
	                        &connect_timeout_ms, fly::kDefaultConnectTimeoutMs, 100, 600 * 1000, PGC_SIGHUP,
	                        GUC_UNIT_MS, nullptr, nullptr, nullptr);
	DefineCustomIntVariable("fly.request_timeout", "Longest wait for one Fly API answer.",
	                        "Wait-for-state calls get their own server-side timeout plus 5 seconds.",
	                        &request_timeout_ms, fly::kDefaultRequestTimeoutMs, 1000, 600 * 1000, PGC_SIGHUP,
	                        GUC_UNIT_MS, nullptr, nullptr, nullptr);
	DefineCustomIntVariable("fly.create_settle_time",
	                        "How long after creating an app or machine a 404 or 401 under it is taken as not yet.",
	                        "Fly's reads lag its writes: such answers are asked again with backoff, without alerts.",
	                        &create_settle_time_ms, 60000, 0, 3600 * 1000, PGC_SIGHUP, GUC_UNIT_MS, nullptr, nullptr,
	                        nullptr);
	DefineCustomIntVariable("fly.retry_base_delay", "First retry delay after a transient failure.",
	                        "Delays double per attempt, capped by fly.retry_max_delay, with full jitter.",
	                        &retry_base_delay_ms, 1000, 10, 3600 * 1000, PGC_SIGHUP, GUC_UNIT_MS, nullptr, nullptr,
	                        nullptr);
	DefineCustomIntVariable("fly.retry_max_delay", "Longest retry delay.", nullptr, &retry_max_delay_ms, 300000, 100,
	                        24 * 3600 * 1000, PGC_SIGHUP, GUC_UNIT_MS, nullptr, nullptr, nullptr);
	DefineCustomIntVariable("fly.max_attempts", "Attempts before a user's operation is marked failed.",
	                        "Only transient failures are retried; permanent ones fail at once.", &max_attempts, 20, 1,
	                        1000, PGC_SIGHUP, 0, nullptr, nullptr, nullptr);
	DefineCustomIntVariable("fly.capacity_retries",
	                        "Insufficient-capacity answers in one region before the tier's next fallback region.",
	                        "Each answer is a failed attempt, retried with backoff; with no room in any region the "
	                        "operation is tried again later and never fails for that reason.",
	                        &capacity_retries, 3, 1, 100, PGC_SIGHUP, 0, nullptr, nullptr, nullptr);
	DefineCustomIntVariable("fly.alert_after_attempts", "Failed attempts for one user that raise an alert.",
	                        "The alert is an alert_raised event and a NOTIFY on channel pg_fly_alerts, once per run "
	                        "of failures (or at a permanent failure, if that comes first).",
	                        &alert_after_attempts, 3, 1, 1000, PGC_SIGHUP, 0, nullptr, nullptr, nullptr);
	DefineCustomBoolVariable("fly.rate_limits", "Whether the worker paces its requests to Fly's documented limits.",
	                         "Off: requests go as fast as the concurrency allows (Retry-After is still honoured).",
	                         &rate_limits, true, PGC_SIGHUP, 0, nullptr, nullptr, nullptr);
	DefineCustomRealVariable("fly.rate_limit_per_second", "Requests per second per action and app or machine.",
	                         "Fly's documented limit is 1.", &rate_limit_per_second, 1.0, 0.01, 1000.0, PGC_SIGHUP, 0,
	                         nullptr, nullptr, nullptr);
	DefineCustomIntVariable("fly.rate_limit_burst", "Short-term burst per action and app or machine.",
	                        "Fly's documented burst is 3.", &rate_limit_burst, 3, 1, 10000, PGC_SIGHUP, 0, nullptr,
	                        nullptr, nullptr);
	DefineCustomRealVariable("fly.rate_limit_get_machine_per_second", "Get-machine requests per second per machine.",
	                         "Fly's documented limit is 5.", &rate_limit_get_machine_per_second, 5.0, 0.01, 1000.0,
	                         PGC_SIGHUP, 0, nullptr, nullptr, nullptr);
	DefineCustomIntVariable("fly.rate_limit_get_machine_burst", "Get-machine burst per machine.",
	                        "Fly's documented burst is 10.", &rate_limit_get_machine_burst, 10, 1, 10000, PGC_SIGHUP, 0,
	                        nullptr, nullptr, nullptr);
	DefineCustomIntVariable("fly.rate_limit_app_deletes_per_minute", "App deletions per minute per organization.",
	                        "Fly's documented limit is 100.", &rate_limit_app_deletes_per_minute, 100, 1, 100000,
	                        PGC_SIGHUP, 0, nullptr, nullptr, nullptr);
	DefineCustomIntVariable("fly.breaker_failure_threshold", "Transient failures in a row that pause all requests.",
	                        "Counted across users; any other answer from Fly resets the count.",
	                        &breaker_failure_threshold, 10, 1, 100000, PGC_SIGHUP, 0, nullptr, nullptr, nullptr);
	DefineCustomIntVariable("fly.breaker_open_time", "First pause of the circuit breaker before a probe request.",
	                        "Each failed probe doubles the pause, up to fly.breaker_max_open_time.",
	                        &breaker_open_time_ms, 5000, 10, 3600 * 1000, PGC_SIGHUP, GUC_UNIT_MS, nullptr, nullptr,
	                        nullptr);
	DefineCustomIntVariable("fly.breaker_max_open_time", "Longest pause of the circuit breaker.", nullptr,
	                        &breaker_max_open_time_ms, 300000, 10, 24 * 3600 * 1000, PGC_SIGHUP, GUC_UNIT_MS, nullptr,
	                        nullptr, nullptr);
	DefineCustomIntVariable("fly.health_check_interval", "How often the worker checks every active app.",
	                        "0 turns the periodic checks off; fly.check_fly_apps_health() runs a pass on demand.",
	                        &health_check_interval_ms, 300000, 0, 24 * 3600 * 1000, PGC_SIGHUP, GUC_UNIT_MS, nullptr,
	                        nullptr, nullptr);
	DefineCustomIntVariable("fly.drift_check_interval",
	                        "How often the worker compares the subscription table with pg_fly's records.",
	                        "It also runs at the worker's start; 0 turns it off (fly.check_drift() runs it on demand), "
	                        "else at least 1s.",
	                        &drift_check_interval_ms, 900000, 0, 7 * 24 * 3600 * 1000, PGC_SIGHUP,
	                        GUC_UNIT_MS | GUC_SUPERUSER_ONLY, CheckDriftInterval, nullptr, nullptr);
	DefineCustomIntVariable("fly.event_retention", "How long events, and app rows after their deletion, are kept.",
	                        "The worker deletes older ones in small batches; 0 keeps everything.", &event_retention_s,
	                        90 * 24 * 3600, 0, INT_MAX, PGC_SIGHUP, GUC_UNIT_S, nullptr, nullptr, nullptr);
	DefineCustomStringVariable("fly.app_health_url", "Each user app's own health endpoint, checked with its machine.",
	                           "{app} is replaced by the app's name, e.g. https://{app}.fly.dev/health. The app must "
	                           "report run_mode user_dedicated and its own user_id. No token is sent. Empty: off.",
	                           &app_health_url, "", PGC_SIGHUP, GUC_SUPERUSER_ONLY, CheckAppHealthUrl, nullptr,
	                           nullptr);
	DefineCustomBoolVariable("fly.restart_stopped_machines", "Whether a health check starts a machine that stopped.",
	                         nullptr, &restart_stopped_machines, true, PGC_SIGHUP, 0, nullptr, nullptr, nullptr);
	DefineCustomBoolVariable("fly.reprovision_vanished_apps",
	                         "Whether a health check re-provisions an app whose machine vanished outside pg_fly.",
	                         nullptr, &reprovision_vanished_apps, true, PGC_SIGHUP, 0, nullptr, nullptr, nullptr);
	DefineCustomStringVariable("fly.machine_env", "Extra environment variables of every machine (JSON object).",
	                           "RUN_MODE=user_dedicated and USER_ID are always set. Not for secrets.", &machine_env, "",
	                           PGC_SIGHUP, GUC_SUPERUSER_ONLY, nullptr, nullptr, nullptr);
	DefineCustomStringVariable("fly.app_secrets_file", "File of NAME=value app secrets set on every app.",
	                           "NAME:base64=value sends the value base64-encoded. Values never reach tables or logs.",
	                           &app_secrets_file, "", PGC_SIGHUP, GUC_SUPERUSER_ONLY, nullptr, nullptr, nullptr);
	// Not GUC_SUPERUSER_ONLY: the status trigger reads it in whichever role writes fly.user_fly_apps.
	DefineCustomEnumVariable("fly.notify_payload", "What the pg_fly_alerts and pg_fly_status notifications carry.",
	                         "minimal: kinds, statuses and row ids only, since any role may LISTEN; full: also user "
	                         "ids, app names and error messages.",
	                         &notify_payload, kNotifyPayloadMinimal, kNotifyPayloadOptions, PGC_SIGHUP, 0, nullptr,
	                         nullptr, nullptr);
	// PGC_SUSET rather than PGC_SIGHUP: set in postgresql.conf (reload) it applies everywhere, and a superuser may
	// also turn it on for one application role or database (ALTER ROLE ... SET), which no other role can change.
	DefineCustomBoolVariable("fly.strict_tiers",
	                         "Whether a subscription change pg_fly cannot act on fails the application's statement.",
	                         "off: a tier without a policy, or a user id that is not a uuid, is recorded in "
	                         "fly.needs_attention and alerted on, and the statement succeeds. on: it is an error.",
	                         &strict_tiers, false, PGC_SUSET, GUC_SUPERUSER_ONLY, nullptr, nullptr, nullptr);
	DefineCustomEnumVariable("fly.app_network", "Which private network a new app is created on.",
	                         "per_app: its own, named after the app (no other user's machine can reach it); shared: "
	                         "the organization's default network.",
	                         &app_network, kAppNetworkPerApp, kAppNetworkOptions, PGC_SIGHUP, GUC_SUPERUSER_ONLY,
	                         nullptr, nullptr, nullptr);
	DefineCustomIntVariable("fly.app_internal_port", "The port the user app listens on inside its machine.",
	                        "When set, machines get a public service (443 and 80) to it and an HTTP check on "
	                        "fly.app_health_path, and each app a shared IPv4 and an IPv6. 0: none of these.",
	                        &app_internal_port, 0, 0, 65535, PGC_SIGHUP, GUC_SUPERUSER_ONLY, nullptr, nullptr, nullptr);
	DefineCustomStringVariable("fly.app_health_path", "The path of the machines' HTTP health check.",
	                           "Used only when fly.app_internal_port is set.", &app_health_path, "/health", PGC_SIGHUP,
	                           GUC_SUPERUSER_ONLY, CheckHealthPath, nullptr, nullptr);
}

} // namespace pgfly::settings

// The fly.* settings (README, "Configuration reference"): one variable per setting, which PostgreSQL assigns when
// the configuration is loaded or reloaded. They live in their own namespace so that a use reads settings::image,
// never a bare global that looks like a local or a member.
#pragma once

namespace pgfly::settings {

extern char *api_url;
extern char *http_proxy;
extern char *api_token;
extern char *api_token_file;
extern char *org_slug;
extern char *default_region;
extern char *image;
extern char *app_name_prefix;
extern char *database_name;
extern int poll_interval_ms;
extern int max_concurrency;
extern int health_check_concurrency;
extern int connect_timeout_ms;
extern int request_timeout_ms;
extern int create_settle_time_ms;
extern int retry_base_delay_ms;
extern int retry_max_delay_ms;
extern char *machine_env;
extern int max_attempts;
extern int capacity_retries;
extern int alert_after_attempts;
extern bool rate_limits;
extern double rate_limit_per_second;
extern int rate_limit_burst;
extern double rate_limit_get_machine_per_second;
extern int rate_limit_get_machine_burst;
extern int rate_limit_app_deletes_per_minute;
extern int breaker_failure_threshold;
extern int breaker_open_time_ms;
extern int breaker_max_open_time_ms;
extern int health_check_interval_ms;
extern int drift_check_interval_ms;
// fly.event_retention, in seconds (0: keep everything).
extern int event_retention_s;
extern char *app_health_url;
extern bool restart_stopped_machines;
extern bool reprovision_vanished_apps;
extern char *app_secrets_file;
// fly.notify_payload
enum NotifyPayload { kNotifyPayloadMinimal = 0, kNotifyPayloadFull = 1 };
extern int notify_payload;
// fly.strict_tiers: the subscription trigger raises errors instead of recording waits.
extern bool strict_tiers;
// fly.app_network
enum AppNetwork { kAppNetworkPerApp = 0, kAppNetworkShared = 1 };
extern int app_network;
extern int app_internal_port;
extern char *app_health_path;

// Defines every fly.* setting; called from _PG_init.
void Define();

} // namespace pgfly::settings

// The fly.* settings (README, "Configuration reference").
#pragma once

namespace pgfly {

extern char *api_url;
extern char *api_token;
extern char *api_token_file;
extern char *org_slug;
extern char *default_region;
extern char *image;
extern char *app_name_prefix;
extern char *database_name;
extern int poll_interval_ms;
extern int max_concurrency;
extern int connect_timeout_ms;
extern int request_timeout_ms;
extern int retry_base_delay_ms;
extern int retry_max_delay_ms;
extern char *machine_env;
extern char *app_secrets_file;

// Defines every fly.* setting; called from _PG_init.
void DefineSettings();

} // namespace pgfly

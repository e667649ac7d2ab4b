-- Installing, dropping and re-creating the extension; what it creates; its settings.
CREATE EXTENSION pg_fly;
SELECT extname, extversion, extnamespace::regnamespace AS schema, extrelocatable FROM pg_extension
 WHERE extname = 'pg_fly';

-- Tables are logged (durable) and, with the views, all live in schema fly.
SELECT c.relname, c.relkind, c.relpersistence
  FROM pg_class c WHERE c.relnamespace = 'fly'::regnamespace AND c.relkind IN ('r', 'v')
 ORDER BY c.relname;

-- Default tier policy: pro and elite get a dedicated shared-cpu-1x 256 MB app in fly.default_region.
SELECT tier, dedicated_app, cpu_kind, cpus, memory_mb, region, fallback_regions FROM fly.tier_policies ORDER BY tier;

-- Every setting of the contract exists with its default; the token is hidden from pg_settings.
SELECT name, setting, context FROM pg_settings WHERE name LIKE 'fly.%' ORDER BY name;
SHOW fly.api_token;
SELECT count(*) AS token_rows_in_pg_settings FROM pg_settings WHERE name = 'fly.api_token';

-- The fly. prefix is reserved: a typo is an error, not a silent placeholder.
SET fly.app_name_prefx = 'x-';

-- Server settings cannot be changed for a session; values that go into URLs are checked.
SET fly.org_slug = 'other';
ALTER SYSTEM SET fly.org_slug = 'a/b';
ALTER SYSTEM SET fly.api_url = 'ftp://example.com';
-- The token never travels in clear text: http:// only to this machine.
ALTER SYSTEM SET fly.api_url = 'http://api.machines.dev';
ALTER SYSTEM SET fly.api_url = 'http://127.0.0.1@evil.example/';
ALTER SYSTEM SET fly.api_url = 'http://[::1]:4280';
ALTER SYSTEM RESET fly.api_url;
ALTER SYSTEM SET fly.app_health_url = 'gopher://{app}.internal/health';
-- A proxy is used only when fly.http_proxy names one; credentials would be logged on reload.
ALTER SYSTEM SET fly.http_proxy = 'http://user:secret@proxy.internal:3128';
ALTER SYSTEM SET fly.http_proxy = 'proxy.internal:3128';
ALTER SYSTEM SET fly.http_proxy = 'http://proxy.internal:3128';
ALTER SYSTEM RESET fly.http_proxy;
ALTER SYSTEM SET fly.app_name_prefix = 'a/b';

-- Drop and create again: nothing is left behind.
DROP EXTENSION pg_fly;
SELECT count(*) AS leftover_objects FROM pg_namespace WHERE nspname = 'fly';
CREATE EXTENSION pg_fly;
SELECT count(*) AS tier_policies FROM fly.tier_policies;

-- Inserting an existing tier replaces it (this is how pg_dump restores customised tiers).
INSERT INTO fly.tier_policies (tier, dedicated_app, cpu_kind, cpus, memory_mb) VALUES ('pro', true, 'shared', 1, 512);
SELECT tier, memory_mb FROM fly.tier_policies WHERE tier = 'pro';
UPDATE fly.tier_policies SET memory_mb = 256 WHERE tier = 'pro';

-- Guest sizes Fly would refuse are refused here.
\set VERBOSITY terse
INSERT INTO fly.tier_policies (tier, dedicated_app, cpu_kind, cpus, memory_mb) VALUES ('big', true, 'shared', 1, 4096);
INSERT INTO fly.tier_policies (tier, dedicated_app, cpu_kind, cpus, memory_mb) VALUES ('odd', true, 'shared', 3, 768);
INSERT INTO fly.tier_policies (tier, dedicated_app) VALUES ('half', true);
-- Fallback regions are region codes, like region.
UPDATE fly.tier_policies SET fallback_regions = '{ams,"a/b"}' WHERE tier = 'pro';
UPDATE fly.tier_policies SET fallback_regions = '{ams,NULL}' WHERE tier = 'pro';
UPDATE fly.tier_policies SET fallback_regions = '{{ams},{lhr}}' WHERE tier = 'pro';
UPDATE fly.tier_policies SET fallback_regions = '{""}' WHERE tier = 'pro';
UPDATE fly.tier_policies SET fallback_regions = '{ams,lhr}' WHERE tier = 'pro';
-- An upsert replaces them with the rest of the policy.
INSERT INTO fly.tier_policies (tier, dedicated_app, cpu_kind, cpus, memory_mb, fallback_regions)
    VALUES ('pro', true, 'shared', 1, 256, '{fra}');
SELECT tier, fallback_regions FROM fly.tier_policies WHERE tier = 'pro';
UPDATE fly.tier_policies SET fallback_regions = '{}' WHERE tier = 'pro';
\set VERBOSITY default

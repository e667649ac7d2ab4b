-- Cost tracking, and onboarding of users who had a paid tier before pg_fly was attached.
SET search_path = public, fly;

-- The estimate: preset price + memory beyond the preset, times the region's multiplier (USD per 30 days).
SELECT fly.monthly_cost_estimate('shared', 1, 256, 'ams') AS shared_1x_256mb,
       fly.monthly_cost_estimate('shared', 1, 1024, 'ams') AS shared_1x_1gb,
       fly.monthly_cost_estimate('shared', 1, 256, 'sjc') AS shared_1x_256mb_sjc,
       fly.monthly_cost_estimate('performance', 2, 4096, 'ams') AS performance_2x_4gb,
       fly.monthly_cost_estimate('performance', 3, 4096, 'ams') AS unknown_guest;

-- Every app row carries its estimate, kept current when its guest or region changes.
INSERT INTO fly.user_fly_apps (user_id, tier, fly_app_name, fly_org_slug, region, cpu_kind, cpus, memory_mb)
VALUES ('12121212-1212-4212-8212-121212121212', 'pro', 'vyx-user-costtest', 'personal', 'sjc', 'shared', 1, 256);
SELECT monthly_cost_estimate_usd FROM fly.user_fly_apps WHERE fly_app_name = 'vyx-user-costtest';
UPDATE fly.user_fly_apps SET memory_mb = 1024 WHERE fly_app_name = 'vyx-user-costtest';
SELECT monthly_cost_estimate_usd FROM fly.user_fly_apps WHERE fly_app_name = 'vyx-user-costtest';
UPDATE fly.user_fly_apps SET region = 'ams' WHERE fly_app_name = 'vyx-user-costtest';
SELECT monthly_cost_estimate_usd FROM fly.user_fly_apps WHERE fly_app_name = 'vyx-user-costtest';

-- Running time accumulates from status changes: active starts the clock, anything else stops it.
UPDATE fly.user_fly_apps SET status = 'active' WHERE fly_app_name = 'vyx-user-costtest';
SELECT running_since IS NOT NULL AS running, running_seconds FROM fly.user_fly_apps
 WHERE fly_app_name = 'vyx-user-costtest';
UPDATE fly.user_fly_apps SET running_since = now() - interval '2 hours' WHERE fly_app_name = 'vyx-user-costtest';
UPDATE fly.user_fly_apps SET status = 'deprovisioning' WHERE fly_app_name = 'vyx-user-costtest';
SELECT running_since IS NULL AS stopped, running_seconds BETWEEN 7199 AND 7201 AS two_hours_counted
  FROM fly.user_fly_apps WHERE fly_app_name = 'vyx-user-costtest';

-- The cost view: by tier and region, and a total row.
UPDATE fly.user_fly_apps SET status = 'active' WHERE fly_app_name = 'vyx-user-costtest';
SELECT tier, region, live_apps, running_apps, monthly_estimate_usd,
       month_to_date_usd >= 0 AS mtd_known, projected_month_usd >= month_to_date_usd AS projection_covers_mtd
  FROM fly.cost_summary ORDER BY tier NULLS LAST;
TRUNCATE fly.user_fly_apps CASCADE;

-- Onboarding: users on a paid tier before the trigger existed have no app; a dry run lists them, a real run
-- queues them (and SELECT fly.provision_user_app() is the same thing, returning the count).
SELECT fly.detach_tier_trigger();
INSERT INTO user_profiles VALUES ('13131313-1313-4313-8313-131313131313', 'o1@example.com'),
    ('14141414-1414-4414-8414-141414141414', 'o2@example.com'),
    ('15151515-1515-4515-8515-151515151515', 'o3@example.com');
INSERT INTO user_subscriptions VALUES ('13131313-1313-4313-8313-131313131313', 'pro'),
    ('14141414-1414-4414-8414-141414141414', 'elite'), ('15151515-1515-4515-8515-151515151515', 'free');
SELECT fly.attach_tier_trigger();
TRUNCATE fly.reconcile_queue, fly.tier_intents;
SELECT user_id, tier, queued FROM fly.onboard_existing_users();
SELECT count(*) AS queued_by_dry_run FROM fly.reconcile_queue;
SELECT fly.provision_user_app();
SELECT left(user_id::text, 8) AS user_id, desired, tier, reason FROM fly.reconcile_queue ORDER BY 1;
-- Running it again queues nobody twice.
SELECT fly.provision_user_app();
TRUNCATE fly.reconcile_queue, fly.tier_intents;

-- A text user column may hold ids that are not uuids (written while the trigger was detached): they are
-- skipped with a warning, the others are onboarded.
CREATE TABLE text_subscriptions (user_id text PRIMARY KEY, tier text NOT NULL);
INSERT INTO text_subscriptions VALUES ('not-a-uuid', 'pro'), ('16161616161646168616161616161616', 'pro'),
    ('{17171717-1717-4717-8717-171717171717}', 'free');
-- Written while the trigger was detached: an unbalanced brace on a free row, and on a paid one, are no uuids (the
-- trigger's rule, fly._as_uuid); a dash after every four digits is one. None of them makes onboarding fail.
INSERT INTO text_subscriptions VALUES ('{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'free'),
    ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12}', 'pro'), ('a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a13', 'pro');
SELECT fly.attach_tier_trigger('text_subscriptions');
SELECT * FROM fly.unusable_subscriptions() ORDER BY 1;
SELECT user_id, tier, queued FROM fly.onboard_existing_users();
SELECT fly.attach_tier_trigger();
DROP TABLE text_subscriptions;
DELETE FROM user_subscriptions WHERE user_id IN ('13131313-1313-4313-8313-131313131313',
    '14141414-1414-4414-8414-141414141414', '15151515-1515-4515-8515-151515151515');
TRUNCATE fly.reconcile_queue, fly.tier_intents;

-- What a non-superuser can and cannot do.
SET search_path = public, fly;
CREATE ROLE pgfly_app LOGIN;
GRANT USAGE ON SCHEMA public TO pgfly_app;
-- Even with USAGE on schema fly, every object in it needs its own grant.
GRANT USAGE ON SCHEMA fly TO pgfly_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON user_subscriptions TO pgfly_app;
GRANT SELECT ON user_profiles TO pgfly_app;
INSERT INTO user_profiles VALUES ('88888888-8888-4888-8888-888888888888', 'u8@example.com');

-- Nothing in schema fly is granted to PUBLIC.
SELECT count(*) AS public_function_grants
  FROM pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
 WHERE p.pronamespace = 'fly'::regnamespace AND a.grantee = 0;
SELECT count(*) AS public_table_grants
  FROM pg_class c, aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a
 WHERE c.relnamespace = 'fly'::regnamespace AND a.grantee = 0;
-- Every SECURITY DEFINER function pins its search_path.
SELECT p.proname, p.proconfig FROM pg_proc p
 WHERE p.pronamespace = 'fly'::regnamespace AND p.prosecdef ORDER BY p.proname;

SET ROLE pgfly_app;
-- The token cannot be read, by any means (integration tests check that even superusers and members of
-- pg_read_all_settings see only a mask when it is set).
SHOW fly.api_token;
SELECT current_setting('fly.api_token');
SELECT count(*) FROM pg_settings WHERE name = 'fly.api_token';
SELECT count(*) FROM pg_settings WHERE name = 'fly.api_url';
-- No fly.* setting can be changed: not for the session, not for the server.
SET fly.api_url = 'http://evil.example';
SET fly.api_token = 'stolen';
SET fly.org_slug = 'other';
SET fly.image = 'evil/image';
ALTER SYSTEM SET fly.api_url = 'http://evil.example';
SELECT set_config('fly.api_url', 'http://evil.example', false);
-- Tables, views and functions need grants.
SELECT count(*) FROM fly.user_fly_apps;
SELECT count(*) FROM fly.reconcile_queue;
INSERT INTO fly.reconcile_queue (user_id, desired, reason) VALUES ('88888888-8888-4888-8888-888888888888', 'present', 'x');
SELECT fly.provision_user_app('88888888-8888-4888-8888-888888888888');
SELECT fly._enqueue_reconcile('88888888-8888-4888-8888-888888888888', 'present', 'pro', 'x');
SELECT * FROM fly.get_user_fly_app_status('88888888-8888-4888-8888-888888888888');
SELECT fly.attach_tier_trigger('user_subscriptions');
-- But the application can change tiers: the trigger queues the work on its behalf.
INSERT INTO user_subscriptions VALUES ('88888888-8888-4888-8888-888888888888', 'pro');
RESET ROLE;
SELECT FROM fly.fold_intents();
SELECT desired, tier, reason FROM fly.reconcile_queue WHERE user_id = '88888888-8888-4888-8888-888888888888';

-- A DBA can grant read access to the admin views without exposing anything else.
CREATE ROLE pgfly_dashboard;
GRANT USAGE ON SCHEMA fly TO pgfly_dashboard;
GRANT SELECT ON fly.live_apps, fly.recent_events, fly.provision_success_rate TO pgfly_dashboard;
SET ROLE pgfly_dashboard;
SELECT count(*) FROM fly.live_apps;
SELECT count(*) FROM fly.user_fly_apps;
SHOW fly.api_token;
RESET ROLE;

-- An operator role gets the manual controls by EXECUTE grants alone; the functions act with the extension's
-- rights, yet only through their checks: the queue stays out of reach.
CREATE ROLE pgfly_operator;
GRANT USAGE ON SCHEMA fly TO pgfly_operator;
GRANT EXECUTE ON FUNCTION fly.provision_user_app(uuid), fly.deprovision_user_app(uuid),
    fly.get_user_fly_app_status(uuid), fly.retry_user_app(uuid) TO pgfly_operator;
SET ROLE pgfly_operator;
SELECT fly.provision_user_app('88888888-8888-4888-8888-888888888888');
SELECT pending_action FROM fly.get_user_fly_app_status('88888888-8888-4888-8888-888888888888');
SELECT fly.retry_user_app('88888888-8888-4888-8888-888888888888');
SELECT count(*) FROM fly.reconcile_queue;
SELECT fly._enqueue_reconcile('88888888-8888-4888-8888-888888888888', 'present', 'elite', 'x');
RESET ROLE;
REVOKE ALL ON FUNCTION fly.provision_user_app(uuid), fly.deprovision_user_app(uuid),
    fly.get_user_fly_app_status(uuid), fly.retry_user_app(uuid) FROM pgfly_operator;
REVOKE ALL ON SCHEMA fly FROM pgfly_operator;
DROP ROLE pgfly_operator;

-- TRUNCATE of the subscription table fires no row trigger; its statement trigger queues teardown for everyone.
TRUNCATE fly.reconcile_queue, fly.tier_intents;
INSERT INTO fly.user_fly_apps (user_id, fly_app_name, fly_org_slug, region, status)
VALUES ('88888888-8888-4888-8888-888888888888', 'vyx-user-truncated', 'personal', 'sjc', 'active');
CREATE TABLE subscriptions_backup AS SELECT * FROM user_subscriptions;
TRUNCATE user_subscriptions CASCADE;
SELECT FROM fly.fold_intents();
SELECT left(user_id::text, 8) AS user_id, desired, reason FROM fly.reconcile_queue ORDER BY 1;
INSERT INTO user_subscriptions SELECT * FROM subscriptions_backup;
DROP TABLE subscriptions_backup;
TRUNCATE fly.user_fly_apps CASCADE;

DELETE FROM user_subscriptions WHERE user_id = '88888888-8888-4888-8888-888888888888';
TRUNCATE fly.reconcile_queue, fly.tier_intents;
REVOKE ALL ON SCHEMA fly FROM pgfly_dashboard;
REVOKE ALL ON fly.live_apps, fly.recent_events, fly.provision_success_rate FROM pgfly_dashboard;
DROP ROLE pgfly_dashboard;
REVOKE ALL ON user_subscriptions, user_profiles FROM pgfly_app;
REVOKE ALL ON SCHEMA public, fly FROM pgfly_app;
DROP ROLE pgfly_app;

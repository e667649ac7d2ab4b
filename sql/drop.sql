-- Dropping the extension: the trigger on the application's table depends on it, so CASCADE is needed, and
-- afterwards the application's table works as before. The worker keeps idling.
SET search_path = public, fly;
DROP EXTENSION pg_fly;
DROP EXTENSION pg_fly CASCADE;
SELECT count(*) AS triggers_left FROM pg_trigger WHERE tgname = 'on_user_tier_change';
UPDATE user_subscriptions SET tier = 'pro';
SELECT pg_sleep(0.5);
SELECT backend_type FROM pg_stat_activity WHERE backend_type = 'pg_fly worker';
DROP TABLE user_subscriptions, user_profiles;

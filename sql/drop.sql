-- Dropping the extension: the trigger on the application's table depends on it, so CASCADE is needed, and
-- afterwards the application's table works as before. The worker keeps idling.
SET search_path = public, fly;
-- fly.worker_status() goes with the extension: to see the worker afterwards, this test declares the same C
-- function with the first columns of its result (heap_form_tuple takes as many as are declared).
CREATE FUNCTION worker_counters(OUT pid integer, OUT started_at timestamptz, OUT commit_wakes bigint,
                                OUT timer_wakes bigint, OUT iterations bigint)
    RETURNS record LANGUAGE c VOLATILE AS '$libdir/pg_fly', 'worker_status';
-- A barrier (as in worker_wake.sql): returns once the worker has started n more loop iterations than when it
-- was called, waking it through pg_reload_conf() (SIGHUP sets its latch; the poll timer is an hour here), and
-- fails the test if that takes more than 30 s. Iterations counted after the call started after the drop.
CREATE FUNCTION wait_worker_iterations(n int) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    target bigint := (SELECT iterations FROM worker_counters()) + n;
    reached bigint;
BEGIN
    FOR i IN 1..600 LOOP
        reached := (SELECT iterations FROM worker_counters());
        IF reached >= target THEN
            RETURN true;
        END IF;
        PERFORM pg_reload_conf();
        PERFORM pg_sleep(0.05);
    END LOOP;
    RAISE EXCEPTION 'the worker did not run % more iterations within 30 s (it reached % of %)', n,
        reached - (target - n), n;
END $$;
SELECT pid AS worker_pid FROM worker_counters() \gset
DROP EXTENSION pg_fly;
DROP EXTENSION pg_fly CASCADE;
SELECT count(*) AS triggers_left FROM pg_trigger WHERE tgname = 'on_user_tier_change';
UPDATE user_subscriptions SET tier = 'pro';
-- Two iterations: the first one counted after the drop begins after it, and the second begins once the first
-- has ended, so the worker has looked at a database without pg_fly at least once, and the same process
-- (not one the postmaster started again after a crash) goes on.
SELECT wait_worker_iterations(2) AS worker_looked_again;
SELECT pid = :worker_pid AS same_worker FROM worker_counters();
SELECT backend_type FROM pg_stat_activity WHERE backend_type = 'pg_fly worker';
DROP FUNCTION wait_worker_iterations(int), worker_counters();
DROP TABLE user_subscriptions, user_profiles;

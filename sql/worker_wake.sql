-- The worker: it runs, shows itself, counts committed tier changes (not rolled-back ones) and is woken by those
-- that queue work it can start and by requests for a pass,
-- reloads on SIGHUP and comes back after being terminated.
SET search_path = public, fly;

-- Waits (up to 30 s, or the seconds given) until the condition holds; returns whether it did. With wake, it wakes
-- the worker meanwhile (pg_reload_conf(), as the barrier below does).
CREATE FUNCTION wait_for(condition text, wake boolean DEFAULT false, seconds int DEFAULT 30) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    ok boolean;
BEGIN
    FOR i IN 1..seconds * 20 LOOP
        EXECUTE 'SELECT ' || condition INTO ok;
        IF ok THEN
            RETURN true;
        END IF;
        IF wake THEN
            PERFORM pg_reload_conf();
        END IF;
        PERFORM pg_sleep(0.05);
    END LOOP;
    RETURN false;
END $$;

-- A barrier: returns once the worker has started n more loop iterations than when it was called, and fails the
-- test if that takes more than 30 s. One iteration is one wake-up: look at the queue, drive the requests in
-- flight, publish the status, sleep. The poll timer is an hour here (test/regress.conf), so this wakes the
-- worker itself, through pg_reload_conf(): SIGHUP sets the worker's latch (and re-reads settings that did not
-- change) without counting as a commit wake. An iteration counted after the call started after everything
-- this session committed before it; n = 2 waits for that iteration to end.
CREATE FUNCTION wait_worker_iterations(n int) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    target bigint := (SELECT iterations FROM fly.worker_status()) + n;
    reached bigint;
BEGIN
    FOR i IN 1..600 LOOP
        reached := (SELECT iterations FROM fly.worker_status());
        IF reached >= target THEN
            RETURN true;
        END IF;
        PERFORM pg_reload_conf();
        PERFORM pg_sleep(0.05);
    END LOOP;
    RAISE EXCEPTION 'the worker did not run % more iterations within 30 s (it reached % of %)', n,
        reached - (target - n), n;
END $$;

-- Running, and back in its wait after the first pass (which looks at the queue).
SELECT wait_for('(SELECT pid IS NOT NULL AND iterations > 0 FROM fly.worker_status()) AND EXISTS (SELECT 1 '
                '  FROM pg_stat_activity WHERE backend_type = ''pg_fly worker'' AND wait_event_type IS NOT NULL)')
       AS worker_running;
SELECT backend_type, application_name, datname, wait_event_type
  FROM pg_stat_activity WHERE backend_type = 'pg_fly worker';
SELECT pid = (SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_fly worker') AS status_pid_matches,
       token_source, database
  FROM fly.worker_status();
SELECT database FROM fly.worker_overview;

-- In a database the worker does not work in, CREATE EXTENSION and attach_tier_trigger warn, and
-- worker_status() (shared memory is cluster-wide) names the worker's database.
CREATE DATABASE pgfly_elsewhere;
\c pgfly_elsewhere
CREATE EXTENSION pg_fly;
CREATE TABLE user_subscriptions (user_id uuid PRIMARY KEY, tier text);
SELECT fly.attach_tier_trigger();
SELECT pid IS NOT NULL AS worker_running, database FROM fly.worker_status();
\c contrib_regression
DROP DATABASE pgfly_elsewhere;
SET search_path = public, fly;

INSERT INTO user_profiles VALUES ('99999999-9999-4999-8999-999999999999', 'u9@example.com');
INSERT INTO user_subscriptions VALUES ('99999999-9999-4999-8999-999999999999', 'free');
SELECT commit_wakes AS wakes_before FROM fly.worker_status() \gset

-- A rolled-back tier change does not wake the worker.
BEGIN;
UPDATE user_subscriptions SET tier = 'pro' WHERE user_id = '99999999-9999-4999-8999-999999999999';
ROLLBACK;
-- Had the rollback asked for a wake, the first iteration after it would count a commit wake (RecordWake takes
-- the pending wake before anything else), so two iterations are enough to see it.
SELECT wait_worker_iterations(2) AS worker_looked_again;
SELECT commit_wakes = :wakes_before AS rollback_did_not_wake FROM fly.worker_status();

-- Nor does a tier change that changes nothing for the user's app.
UPDATE user_subscriptions SET tier = 'free' WHERE user_id = '99999999-9999-4999-8999-999999999999';
SELECT wait_worker_iterations(2) AS worker_looked_again;
SELECT commit_wakes = :wakes_before AS no_op_change_did_not_wake FROM fly.worker_status();

-- A committed one is counted (work_commits), but it wakes only a worker that waits for work it could start: this
-- one can start none (fly.image is not set here), so the commit leaves it asleep, and it sees the item the next
-- time it looks (here the barrier makes it look).
SELECT work_commits AS commits_before, wakes_sent AS sent_before FROM fly.worker_status() \gset
UPDATE user_subscriptions SET tier = 'pro' WHERE user_id = '99999999-9999-4999-8999-999999999999';
SELECT work_commits = :commits_before + 1 AS commit_counted, wakes_sent = :sent_before AS no_wake_sent
  FROM fly.worker_status();
SELECT wait_worker_iterations(2) AS worker_looked_again;
SELECT commit_wakes = :wakes_before AS unstartable_work_did_not_wake FROM fly.worker_status();
-- queue_ready is counted at most once a second (a status figure): wait for the count that includes the item.
SELECT wait_for('(SELECT queue_ready = 1 FROM fly.worker_status())', true) AS queued_item_seen;
SELECT fly.provision_user_app('99999999-9999-4999-8999-999999999999');
SELECT work_commits = :commits_before + 2 AS commit_counted, wakes_sent = :sent_before AS no_wake_sent
  FROM fly.worker_status();

-- A request for a pass wakes the worker every time: one commit, exactly one wake.
SELECT fly.check_fly_apps_health();
SELECT wait_for('(SELECT commit_wakes = ' || :wakes_before || ' + 1 FROM fly.worker_status())') AS one_wake_per_commit;
SELECT work_commits = :commits_before + 3 AS commit_counted, wakes_sent = :sent_before + 1 AS wake_sent
  FROM fly.worker_status();

-- SIGHUP: a new token file is picked up (the worker reports only where the token comes from). The file sits in
-- this instance's data directory: other instances may run this test at the same time.
SELECT current_setting('data_directory') || '/pg_fly_regress_token' AS token_path \gset
COPY (SELECT 'regress-token') TO :'token_path';
ALTER SYSTEM SET fly.api_token_file = :'token_path';
SELECT pg_reload_conf();
SELECT wait_for('(SELECT token_source = ''fly.api_token_file'' FROM fly.worker_status())') AS reloaded;
ALTER SYSTEM RESET fly.api_token_file;
SELECT pg_reload_conf();
SELECT wait_for('(SELECT token_source = ''none'' FROM fly.worker_status())') AS reloaded_again;

-- SIGTERM (pg_terminate_backend) ends the worker promptly; the postmaster starts a new one.
SELECT pid AS old_pid FROM fly.worker_status() \gset
SELECT pg_terminate_backend(:old_pid);
SELECT wait_for('(SELECT pid IS NOT NULL AND pid <> ' || :old_pid || ' FROM fly.worker_status())') AS restarted;
SELECT wait_for('NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = ' || :old_pid || ')') AS old_worker_gone;
-- The new worker looks at the queue when it starts, so nothing queued while it was away is stranded.
SELECT wait_for('(SELECT queue_ready = 1 FROM fly.worker_status())') AS queue_seen_after_restart;

-- DROP DATABASE of another database is not blocked by the worker.
CREATE DATABASE pg_fly_scratch;
DROP DATABASE pg_fly_scratch;

DELETE FROM user_subscriptions WHERE user_id = '99999999-9999-4999-8999-999999999999';
TRUNCATE fly.reconcile_queue, fly.tier_intents;
DROP FUNCTION wait_for(text, boolean, int), wait_worker_iterations(int);

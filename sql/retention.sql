-- Event retention (fly.event_retention): events older than the retention go, and app rows deleted longer ago than
-- that with the events they still have; recent events and live apps stay; 0 keeps everything; each call of
-- fly._retention_batch deletes at most the rows it is given. test/regress.conf turns the worker's own pass off
-- (0), so that only this test deletes, until it turns the pass on at the end.
SET search_path = public, fly;
SHOW fly.event_retention;

CREATE FUNCTION retention_wait_for(condition text) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    ok boolean;
BEGIN
    FOR i IN 1..600 LOOP
        EXECUTE 'SELECT ' || condition INTO ok;
        IF ok THEN
            RETURN true;
        END IF;
        PERFORM pg_sleep(0.05);
    END LOOP;
    RETURN false;
END $$;

-- A live app created long ago, an app deleted 100 days ago, one deleted 10 days ago.
INSERT INTO fly.user_fly_apps (user_id, fly_app_name, fly_org_slug, region, status, created_at, deleted_at)
VALUES ('ae000000-0000-4000-8000-000000000001', 'retention-live', 'personal', 'sjc', 'active',
        now() - interval '200 days', NULL),
       ('ae000000-0000-4000-8000-000000000002', 'retention-gone', 'personal', 'sjc', 'deleted',
        now() - interval '200 days', now() - interval '100 days'),
       ('ae000000-0000-4000-8000-000000000003', 'retention-recent', 'personal', 'sjc', 'deleted',
        now() - interval '200 days', now() - interval '10 days');
-- Each app: an event 150 days old and one a day old; 25 old events of no app.
INSERT INTO fly.user_fly_app_events (fly_app_id, user_id, event_type, created_at)
SELECT a.id, a.user_id, 'retention_test', now() - age
  FROM fly.user_fly_apps a, (VALUES (interval '150 days'), (interval '1 day')) AS t (age)
 WHERE a.fly_app_name LIKE 'retention-%';
INSERT INTO fly.user_fly_app_events (fly_app_id, user_id, event_type, created_at)
SELECT NULL, 'ae000000-0000-4000-8000-000000000009', 'retention_test', now() - i * interval '100 days'
  FROM generate_series(1, 25) AS i;

CREATE VIEW retention_left AS
SELECT (SELECT count(*) FROM fly.user_fly_app_events WHERE event_type = 'retention_test') AS events,
       (SELECT count(*) FROM fly.user_fly_app_events
         WHERE event_type = 'retention_test' AND created_at < now() - interval '90 days') AS old_events,
       (SELECT string_agg(fly_app_name, ', ' ORDER BY fly_app_name) FROM fly.user_fly_apps
         WHERE fly_app_name LIKE 'retention-%') AS apps;
SELECT * FROM retention_left;

-- 0 keeps everything: the setting (0 here), or an explicit retention of 0.
SELECT fly._retention_batch(100) AS deleted_with_setting_0;
SELECT fly._retention_batch(100, interval '0') AS deleted_with_0;
SELECT * FROM retention_left;

-- Batches are bounded: 28 old events, then the app deleted 100 days ago with its recent event, 10 rows at a time.
SELECT fly._retention_batch(10, interval '90 days') AS first_batch;
SELECT * FROM retention_left;
SELECT fly._retention_batch(10, interval '90 days') AS second_batch;
SELECT fly._retention_batch(10, interval '90 days') AS third_batch;
SELECT fly._retention_batch(10, interval '90 days') AS nothing_left;
-- Recent events and the live app stay, and so does the app deleted only 10 days ago; the app deleted 100 days
-- ago went with both its events.
SELECT * FROM retention_left;
SELECT a.fly_app_name, count(e.id) AS events
  FROM fly.user_fly_apps a LEFT JOIN fly.user_fly_app_events e ON e.fly_app_id = a.id
 WHERE a.fly_app_name LIKE 'retention-%' GROUP BY a.fly_app_name ORDER BY a.fly_app_name;

-- The app deleted 10 days ago goes once its deletion is older than the retention.
UPDATE fly.user_fly_apps SET deleted_at = now() - interval '100 days'
 WHERE fly_app_name = 'retention-recent';
SELECT fly._retention_batch(10, interval '90 days') AS deleted_app_and_event;
SELECT * FROM retention_left;

SELECT fly._retention_batch(0);
SELECT fly._retention_batch(NULL);

-- The worker's pass: with the setting at 90 days, it deletes the old events on its own, soon after the reload.
INSERT INTO fly.user_fly_app_events (fly_app_id, user_id, event_type, created_at)
SELECT NULL, 'ae000000-0000-4000-8000-000000000009', 'retention_test', now() - i * interval '100 days'
  FROM generate_series(1, 3) AS i;
SELECT * FROM retention_left;
ALTER SYSTEM SET fly.event_retention = '90d';
SELECT pg_reload_conf();
SELECT retention_wait_for('(SELECT old_events = 0 FROM retention_left)') AS worker_deleted_old_events;
SELECT * FROM retention_left;
ALTER SYSTEM RESET fly.event_retention;
SELECT pg_reload_conf();

DELETE FROM fly.user_fly_app_events WHERE event_type = 'retention_test';
DELETE FROM fly.user_fly_apps WHERE fly_app_name LIKE 'retention-%';
DROP VIEW retention_left;
DROP FUNCTION retention_wait_for(text);

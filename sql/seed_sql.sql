-- The SQL of the edge-function setup pg_fly replaces (its "What's Ready to Test" checks and "Admin Monitoring"
-- queries; see docs/architecture.md), run verbatim with schema fly on search_path. Only '<test-user-id>' is
-- replaced by a real id.
SET search_path = public, fly;

-- The application's tables, as that setup has them.
CREATE TABLE user_profiles (id uuid PRIMARY KEY, email text NOT NULL);
CREATE TABLE user_subscriptions (
    user_id uuid PRIMARY KEY REFERENCES user_profiles (id),
    tier    text NOT NULL DEFAULT 'free'
);
SELECT fly.attach_tier_trigger();
SELECT table_name, user_column, tier_column FROM fly.tier_source;
SELECT tgname, tgrelid::regclass, tgenabled FROM pg_trigger WHERE tgname = 'on_user_tier_change';

INSERT INTO user_profiles VALUES
    ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'ada@example.com'),
    ('b1ffcd88-8d1a-4ef8-bb6d-6bb9bd380a22', 'bob@example.com');
INSERT INTO user_subscriptions VALUES
    ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'free'),
    ('b1ffcd88-8d1a-4ef8-bb6d-6bb9bd380a22', 'free');
SELECT FROM fly.fold_intents();
SELECT count(*) AS queued_for_free_users FROM fly.reconcile_queue;

-- Test 1: Upgrade User to Pro
UPDATE user_subscriptions
SET tier = 'pro'
WHERE user_id = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11';

SELECT FROM fly.fold_intents();
SELECT user_id, desired, tier, reason, generation, attempts FROM fly.reconcile_queue;

-- Test 2: Check App Status (timestamps pinned so the output is stable)
UPDATE fly.reconcile_queue SET enqueued_at = '2025-11-14 07:59:00+00';
SELECT * FROM get_user_fly_app_status('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11');

-- Test 4: Downgrade User to Free
UPDATE user_subscriptions
SET tier = 'free'
WHERE user_id = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11';

SELECT FROM fly.fold_intents();
SELECT user_id, desired, tier, reason, generation, attempts FROM fly.reconcile_queue;

-- The Admin Monitoring queries, over rows shaped as the worker writes them.
INSERT INTO fly.user_fly_apps (user_id, tier, fly_app_name, fly_org_slug, fly_machine_id, status, health_status,
                               region, created_at, updated_at)
VALUES ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'pro', fly.app_name_for('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'),
        'personal', '3d8d9e1c2a4b58', 'active', 'healthy', 'sjc', '2025-11-14 08:00:00+00', '2025-11-14 08:01:00+00'),
       ('b1ffcd88-8d1a-4ef8-bb6d-6bb9bd380a22', 'pro', fly.app_name_for('b1ffcd88-8d1a-4ef8-bb6d-6bb9bd380a22'),
        'personal', NULL, 'failed', 'unknown', 'sjc', '2025-11-14 09:00:00+00', '2025-11-14 09:01:00+00');
INSERT INTO fly.user_fly_app_events (fly_app_id, user_id, event_type, status, created_at)
SELECT a.id, a.user_id, e.event_type, e.status, e.at
  FROM fly.user_fly_apps a
  JOIN (VALUES ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid, 'provision_requested', 'provisioning',
                '2025-11-14 08:00:00+00'::timestamptz),
               ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'provision_completed', 'active', '2025-11-14 08:01:00+00'),
               ('b1ffcd88-8d1a-4ef8-bb6d-6bb9bd380a22', 'provision_requested', 'provisioning', '2025-11-14 09:00:00+00'),
               ('b1ffcd88-8d1a-4ef8-bb6d-6bb9bd380a22', 'provision_failed', 'failed', '2025-11-14 09:01:00+00'))
       AS e (user_id, event_type, status, at) ON e.user_id = a.user_id;

-- View All User Apps
SELECT
  u.email,
  f.fly_app_name,
  f.status,
  f.health_status,
  f.region,
  f.created_at
FROM user_fly_apps f
JOIN user_profiles u ON u.id = f.user_id
WHERE f.deleted_at IS NULL
ORDER BY f.created_at DESC;

-- Check Recent Events
SELECT
  e.event_type,
  e.status,
  e.created_at,
  u.email,
  f.fly_app_name
FROM user_fly_app_events e
JOIN user_fly_apps f ON f.id = e.fly_app_id
JOIN user_profiles u ON u.id = e.user_id
ORDER BY e.created_at DESC
LIMIT 20;

-- Provision Success Rate
SELECT
  COUNT(*) FILTER (WHERE event_type = 'provision_completed') as success,
  COUNT(*) FILTER (WHERE event_type = 'provision_failed') as failed,
  ROUND(
    COUNT(*) FILTER (WHERE event_type = 'provision_completed') * 100.0 /
    NULLIF(COUNT(*), 0), 2
  ) as success_rate_pct
FROM user_fly_app_events
WHERE event_type IN ('provision_completed', 'provision_failed');

-- The same answers from pg_fly's own views.
SELECT fly_app_name, status, health_status, region FROM fly.live_apps ORDER BY created_at DESC;
SELECT event_type, status, fly_app_name FROM fly.recent_events ORDER BY created_at DESC LIMIT 20;
SELECT * FROM fly.provision_success_rate;

-- Test 2 again, now that the user has an app row.
SELECT * FROM get_user_fly_app_status('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11');

-- The schema's guarantees: one live app per user, unique live names, checked status values, append-only events.
\set VERBOSITY terse
INSERT INTO fly.user_fly_apps (user_id, fly_app_name, fly_org_slug, region)
VALUES ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'vyx-user-other', 'personal', 'sjc');
INSERT INTO fly.user_fly_apps (user_id, fly_app_name, fly_org_slug, region)
VALUES ('c2aade77-7e2b-4ef8-bb6d-6bb9bd380a33', fly.app_name_for('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'),
        'personal', 'sjc');
UPDATE fly.user_fly_apps SET status = 'running' WHERE user_id = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11';
UPDATE fly.user_fly_apps SET health_status = 'degraded' WHERE user_id = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11';
UPDATE fly.user_fly_apps SET status = 'deleted' WHERE user_id = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11';
UPDATE fly.user_fly_app_events SET status = 'active';
\set VERBOSITY default
-- A deleted app frees the user and the name for a new live app.
UPDATE fly.user_fly_apps SET status = 'deleted', deleted_at = '2025-11-15 00:00:00+00'
 WHERE user_id = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11';
INSERT INTO fly.user_fly_apps (user_id, fly_app_name, fly_org_slug, region)
VALUES ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', fly.app_name_for('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'),
        'personal', 'sjc');
SELECT fly_app_name, status, deleted_at IS NOT NULL AS deleted FROM fly.user_fly_apps
 WHERE user_id = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11' ORDER BY id;

-- Leave the tables empty for the next tests.
TRUNCATE fly.user_fly_app_events, fly.user_fly_apps, fly.reconcile_queue;

-- fly.check_drift(): what the subscription table grants vs what pg_fly recorded; every difference is queued.
SET search_path = public, fly;
SELECT table_name AS saved_table, user_column AS saved_user_column, tier_column AS saved_tier_column
  FROM fly.tier_source \gset
CREATE TABLE drift_subs (user_id uuid PRIMARY KEY, tier text NOT NULL);
SELECT fly.attach_tier_trigger('drift_subs');
TRUNCATE fly.reconcile_queue, fly.tier_intents;
TRUNCATE fly.user_fly_apps CASCADE;

-- A consistent database: nothing to queue.
SELECT fly.check_drift() AS queued_when_empty;

-- Rows the trigger never saw (as logical replication's apply writes them).
SET session_replication_role = replica;
INSERT INTO drift_subs VALUES ('d1000000-0000-4000-8000-000000000001', 'pro'),
                              ('d1000000-0000-4000-8000-000000000002', 'free'),
                              ('d1000000-0000-4000-8000-000000000003', 'elite');
RESET session_replication_role;
SELECT FROM fly.fold_intents();
SELECT count(*) AS queued_by_trigger FROM fly.reconcile_queue;
SELECT fly.check_drift() AS queued;
SELECT FROM fly.fold_intents();
SELECT user_id, desired, tier, reason, generation FROM fly.reconcile_queue ORDER BY user_id;
SELECT user_id, event_type, details->>'action' AS action, details->>'differed' AS differed
  FROM fly.user_fly_app_events WHERE event_type = 'drift_repaired' ORDER BY user_id;
-- Queued with the same desired state: not queued again.
SELECT fly.check_drift() AS queued_again;

-- pg_fly's records as if the worker had done the work: live apps, empty queue.
TRUNCATE fly.reconcile_queue, fly.tier_intents;
INSERT INTO fly.user_fly_apps (user_id, tier, fly_app_name, fly_org_slug, region, cpu_kind, cpus, memory_mb, status)
VALUES ('d1000000-0000-4000-8000-000000000001', 'pro', 'drift-a', 'personal', 'ams', 'shared', 1, 256, 'active'),
       ('d1000000-0000-4000-8000-000000000003', 'elite', 'drift-c', 'personal', 'ams', 'shared', 1, 256, 'active'),
       -- a live app whose user has no subscription row at all
       ('d1000000-0000-4000-8000-000000000004', 'pro', 'drift-d', 'personal', 'ams', 'shared', 1, 256, 'active');
TRUNCATE fly.user_fly_app_events;
-- Changes behind the trigger's back: a downgrade, and a live app whose guest is not its tier's policy (a policy
-- change queues the tier's live apps itself, so the app's record is what differs here).
ALTER TABLE drift_subs DISABLE TRIGGER USER;
UPDATE drift_subs SET tier = 'free' WHERE user_id = 'd1000000-0000-4000-8000-000000000001';
ALTER TABLE drift_subs ENABLE TRIGGER USER;
UPDATE fly.user_fly_apps SET memory_mb = 512 WHERE user_id = 'd1000000-0000-4000-8000-000000000003';
SELECT fly.check_drift() AS queued;
SELECT FROM fly.fold_intents();
SELECT user_id, desired, tier, reason FROM fly.reconcile_queue ORDER BY user_id;
SELECT user_id, details->>'action' AS action, details->>'differed' AS differed,
       fly_app_id IS NOT NULL AS has_app_row
  FROM fly.user_fly_app_events WHERE event_type = 'drift_repaired' ORDER BY user_id;
SELECT fly.check_drift() AS queued_again;

-- An app in one of its policy's fallback regions (the policy's own had no capacity) is where it should be; an app
-- in any other region differs. (The policy changes are dropped in their own transaction: only drift queues here.)
BEGIN;
UPDATE fly.tier_policies SET region = 'sjc', fallback_regions = '{lhr,ams}' WHERE tier = 'elite';
DELETE FROM fly.policy_changes;
COMMIT;
TRUNCATE fly.reconcile_queue, fly.tier_intents;
UPDATE fly.user_fly_apps SET memory_mb = 256 WHERE user_id = 'd1000000-0000-4000-8000-000000000003';
SELECT fly.check_drift() >= 0 AS checked;
SELECT FROM fly.fold_intents();
SELECT count(*) AS queued_in_fallback_region FROM fly.reconcile_queue
 WHERE user_id = 'd1000000-0000-4000-8000-000000000003';
UPDATE fly.user_fly_apps SET region = 'fra' WHERE user_id = 'd1000000-0000-4000-8000-000000000003';
SELECT fly.check_drift() >= 0 AS checked;
SELECT FROM fly.fold_intents();
SELECT desired, tier, reason FROM fly.reconcile_queue WHERE user_id = 'd1000000-0000-4000-8000-000000000003';
BEGIN;
UPDATE fly.tier_policies SET region = NULL, fallback_regions = '{}' WHERE tier = 'elite';
DELETE FROM fly.policy_changes;
COMMIT;

-- fly.deprovision_user_app() stands until the user's tier changes again: drift queues no provision for them.
TRUNCATE fly.reconcile_queue, fly.tier_intents;
TRUNCATE fly.user_fly_apps CASCADE;
SET session_replication_role = replica;
DELETE FROM drift_subs;
INSERT INTO drift_subs VALUES ('d1000000-0000-4000-8000-000000000006', 'pro');
RESET session_replication_role;
INSERT INTO fly.user_fly_apps (user_id, tier, fly_app_name, fly_org_slug, region, cpu_kind, cpus, memory_mb, status)
VALUES ('d1000000-0000-4000-8000-000000000006', 'pro', 'drift-f', 'personal', 'ams', 'shared', 1, 256, 'active');
SELECT fly.deprovision_user_app('d1000000-0000-4000-8000-000000000006');
SELECT user_id FROM fly.manual_teardowns WHERE user_id = 'd1000000-0000-4000-8000-000000000006';
SELECT fly.check_drift() AS queued_while_teardown_queued;
SELECT FROM fly.fold_intents();
SELECT user_id, desired, tier, reason FROM fly.reconcile_queue;
-- As if the worker had torn the app down.
TRUNCATE fly.reconcile_queue, fly.tier_intents;
TRUNCATE fly.user_fly_apps CASCADE;
SELECT fly.check_drift() AS queued_after_teardown;
SELECT count(*) AS onboarding_would_queue FROM fly.onboard_existing_users();
SELECT FROM fly.fold_intents();
SELECT count(*) AS queued FROM fly.reconcile_queue;
-- fly.provision_user_app() ends it.
SELECT fly.provision_user_app('d1000000-0000-4000-8000-000000000006');
SELECT count(*) AS teardowns_after_provision FROM fly.manual_teardowns
 WHERE user_id = 'd1000000-0000-4000-8000-000000000006';
-- So does a tier change through the trigger; a drift pass then decides as usual.
SELECT fly.deprovision_user_app('d1000000-0000-4000-8000-000000000006');
TRUNCATE fly.reconcile_queue, fly.tier_intents;
UPDATE drift_subs SET tier = 'free' WHERE user_id = 'd1000000-0000-4000-8000-000000000006';
SELECT FROM fly.fold_intents();
SELECT count(*) AS teardowns_after_tier_change FROM fly.manual_teardowns
 WHERE user_id = 'd1000000-0000-4000-8000-000000000006';
SELECT FROM fly.fold_intents();
SELECT user_id, desired, tier, reason FROM fly.reconcile_queue;
TRUNCATE fly.reconcile_queue, fly.tier_intents;
SET session_replication_role = replica;
UPDATE drift_subs SET tier = 'pro' WHERE user_id = 'd1000000-0000-4000-8000-000000000006';
RESET session_replication_role;
SELECT fly.check_drift() AS queued_after_tier_change;
SELECT FROM fly.fold_intents();
SELECT user_id, desired, tier, reason FROM fly.reconcile_queue;

-- A tier without a policy waits for one: not drift.
SET session_replication_role = replica;
INSERT INTO drift_subs VALUES ('d1000000-0000-4000-8000-000000000005', 'team');
RESET session_replication_role;
TRUNCATE fly.reconcile_queue, fly.tier_intents;
TRUNCATE fly.user_fly_apps CASCADE;
DELETE FROM drift_subs WHERE tier <> 'team';
SELECT fly.check_drift() AS queued_for_unknown_tier;

-- Batches: a user id column of type text, more rows than one batch reads, ids in several forms.
SELECT fly.detach_tier_trigger();
-- Collation "C": 'D…' and 'd…' spellings of one uuid sort far apart, into different batches.
CREATE TABLE drift_text_subs (user_id text COLLATE "C", tier text);
SELECT fly.attach_tier_trigger('drift_text_subs');
SET session_replication_role = replica;
INSERT INTO drift_text_subs
SELECT format('d2000000-0000-4000-8000-%s', lpad(i::text, 12, '0')), CASE WHEN i % 2 = 0 THEN 'pro' ELSE 'free' END
  FROM generate_series(1, 12000) i;
INSERT INTO drift_text_subs VALUES ('not-a-uuid', 'pro'), (NULL, 'pro'),
    ('D3000000-0000-4000-8000-000000000001', 'free');
RESET session_replication_role;
INSERT INTO fly.user_fly_apps (user_id, tier, fly_app_name, fly_org_slug, region, cpu_kind, cpus, memory_mb, status)
VALUES ('d3000000-0000-4000-8000-000000000001', 'pro', 'drift-upper', 'personal', 'ams', 'shared', 1, 256, 'active');
SELECT fly.check_drift() AS queued;
SELECT FROM fly.fold_intents();
SELECT desired, count(*) FROM fly.reconcile_queue GROUP BY desired ORDER BY desired;
SELECT fly.check_drift() AS queued_again;
-- One of the worker's batches queues at most fly._drift_max_repairs() differences (their queue rows stay locked
-- until it commits): it ends on the row before the first difference it leaves, and the next batch reads on from
-- there. Shown here with 500.
TRUNCATE fly.reconcile_queue, fly.tier_intents;
SELECT fly._drift_max_repairs() AS max_repairs, fly._drift_batch_size(5000) AS batch_size;
-- The upper-case user's live app and 499 paid users; the 501st difference is user ...1000.
SELECT * FROM fly._drift_table_batch(NULL, 5000, 500) \gset first_
SELECT :'first_last_user' AS last_user, :first_queued AS queued;
SELECT FROM fly.fold_intents();
SELECT count(*) AS queued FROM fly.reconcile_queue;
SELECT * FROM fly._drift_table_batch(:'first_last_user', 5000, 500);
SELECT FROM fly.fold_intents();
SELECT count(*) AS queued, min(user_id::text) FILTER (WHERE user_id::text > :'first_last_user') AS first_of_second,
       max(user_id::text) FILTER (WHERE user_id::text LIKE 'd2%') AS last_queued
  FROM fly.reconcile_queue;
-- The same for live apps whose users have no row: the batch ends on the last user it queued.
TRUNCATE fly.reconcile_queue, fly.tier_intents;
INSERT INTO fly.user_fly_apps (user_id, tier, fly_app_name, fly_org_slug, region, cpu_kind, cpus, memory_mb, status)
SELECT format('d4000000-0000-4000-8000-%s', lpad(i::text, 12, '0'))::uuid, 'pro', 'drift-gone-' || i, 'personal',
       'ams', 'shared', 1, 256, 'active'
  FROM generate_series(1, 600) i;
SELECT * FROM fly._drift_missing_batch(NULL, 5000, 500);
SELECT FROM fly.fold_intents();
SELECT count(*) AS queued FROM fly.reconcile_queue;
SELECT * FROM fly._drift_missing_batch('d4000000-0000-4000-8000-000000000500', 5000, 500);
SELECT FROM fly.fold_intents();
SELECT count(*) AS queued FROM fly.reconcile_queue;
DELETE FROM fly.user_fly_app_events;
DELETE FROM fly.user_fly_apps WHERE fly_app_name LIKE 'drift-gone-%';
-- check_drift() walks on through capped batches: every difference (6000 paid users, the upper-case user's app).
TRUNCATE fly.reconcile_queue, fly.tier_intents;
SELECT fly.check_drift() AS queued_after_capped_batches;

-- Every spelling of a uuid the trigger accepts (IsUuidText, as uuid_in): braces, mixed case, a dash after every
-- four digits. Those users keep their apps; a row with an unbalanced brace is no uuid and stops nothing. One user
-- has two rows in two spellings, in two batches: it is decided by both rows (the paid one), not batch by batch.
SET session_replication_role = replica;
UPDATE drift_text_subs SET tier = 'free';
INSERT INTO drift_text_subs VALUES
    ('{d5000000-0000-4000-8000-000000000001}', 'pro'),
    ('Da500000-0000-4000-8000-00000000000B', 'pro'),
    ('d500-0000-0000-4000-8000-0000-0000-0003', 'pro'),
    ('{d5000000-0000-4000-8000-000000000004', 'pro'),
    ('D5000000-0000-4000-8000-000000000005', 'free'),
    ('d5000000-0000-4000-8000-000000000005', 'pro'),
    ('d5000000-0000-4000-8000-000000000006', 'free');
RESET session_replication_role;
TRUNCATE fly.reconcile_queue, fly.tier_intents;
TRUNCATE fly.user_fly_apps CASCADE;
INSERT INTO fly.user_fly_apps (user_id, tier, fly_app_name, fly_org_slug, region, cpu_kind, cpus, memory_mb, status)
SELECT u::uuid, 'pro', 'drift-' || n, 'personal', 'ams', 'shared', 1, 256, 'active'
  FROM unnest(ARRAY['d5000000-0000-4000-8000-000000000001', 'da500000-0000-4000-8000-00000000000b',
                    'd5000000-0000-4000-8000-000000000003', 'd5000000-0000-4000-8000-000000000005'])
       WITH ORDINALITY AS a(u, n);
SELECT user_id, tier, uid FROM fly._subscription_batch('drift_text_subs', 'user_id', 'tier', NULL, 100000)
 WHERE user_id NOT LIKE 'd2%' ORDER BY user_id;
SELECT fly.check_drift() AS queued_for_spellings;
SELECT fly._subscription_user_indexed('drift_text_subs', 'user_id') AS indexed;
-- With an index the table is asked for the common spellings first, the others in one full read.
CREATE INDEX drift_text_subs_user ON drift_text_subs (user_id);
SELECT fly._subscription_user_indexed('drift_text_subs', 'user_id') AS indexed;
SELECT fly.check_drift() AS queued_for_spellings_indexed;
SELECT user_id, tier FROM fly._subscription_rows_of('drift_text_subs', 'user_id', 'tier',
    ARRAY['d5000000-0000-4000-8000-000000000001', 'da500000-0000-4000-8000-00000000000b',
          'd5000000-0000-4000-8000-000000000003', 'd5000000-0000-4000-8000-000000000005']::uuid[])
 ORDER BY user_id;
-- Rows gone behind the trigger's back, in any spelling, and a NULL tier (no app, as the trigger has it): torn down.
SET session_replication_role = replica;
DELETE FROM drift_text_subs WHERE user_id IN ('{d5000000-0000-4000-8000-000000000001}',
                                              'd500-0000-0000-4000-8000-0000-0000-0003');
UPDATE drift_text_subs SET tier = NULL WHERE user_id = 'Da500000-0000-4000-8000-00000000000B';
RESET session_replication_role;
SELECT fly.check_drift() AS queued;
SELECT FROM fly.fold_intents();
SELECT user_id, desired, tier, reason FROM fly.reconcile_queue ORDER BY user_id;
SELECT fly.check_drift() AS queued_again;

-- The queue item compared is matched exactly whatever the caller's DateStyle and TimeZone (an abbreviation such as
-- IST does not read back as the same instant).
TRUNCATE fly.reconcile_queue, fly.tier_intents, fly.user_fly_app_events;
DELETE FROM fly.user_fly_apps WHERE user_id <> 'd5000000-0000-4000-8000-000000000005';
INSERT INTO fly.reconcile_queue (user_id, desired, tier, reason)
VALUES ('d5000000-0000-4000-8000-000000000006', 'present', 'pro', 'tier_change');
SET DateStyle = 'SQL, DMY';
SET TimeZone = 'Asia/Kolkata';
SELECT fly.check_drift() AS queued_in_sql_dmy_kolkata;
RESET DateStyle;
RESET TimeZone;
SELECT FROM fly.fold_intents();
SELECT user_id, desired, tier, reason, generation FROM fly.reconcile_queue ORDER BY user_id;
DROP INDEX drift_text_subs_user;

-- 0 (off) or at least a second.
ALTER SYSTEM SET fly.drift_check_interval = '500ms';
ALTER SYSTEM SET fly.drift_check_interval = '1s';
ALTER SYSTEM RESET fly.drift_check_interval;

-- The batch reader reads the table as its owner and is pg_fly's own.
CREATE ROLE drift_operator;
GRANT USAGE ON SCHEMA fly TO drift_operator;
SET ROLE drift_operator;
SELECT fly.check_drift();
SELECT * FROM fly._subscription_batch('drift_text_subs', 'user_id', 'tier', NULL, 10);
RESET ROLE;
GRANT EXECUTE ON FUNCTION fly.check_drift() TO drift_operator;
SET ROLE drift_operator;
SELECT fly.check_drift() AS operator_queued;
RESET ROLE;
SELECT count(*) AS batch_rows
  FROM fly._subscription_batch('drift_text_subs', 'user_id', 'tier', NULL, 10);
SELECT fly._subscription_batch('drift_text_subs', 'user_id', 'tier', NULL, 0);

-- Clean up; the earlier tests' table is attached again.
REVOKE ALL ON FUNCTION fly.check_drift() FROM drift_operator;
REVOKE ALL ON SCHEMA fly FROM drift_operator;
DROP ROLE drift_operator;
SELECT fly.attach_tier_trigger(:'saved_table', :'saved_user_column', :'saved_tier_column');
DROP TABLE drift_subs, drift_text_subs;
TRUNCATE fly.reconcile_queue, fly.tier_intents;
TRUNCATE fly.user_fly_apps CASCADE;

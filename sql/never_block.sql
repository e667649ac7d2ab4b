-- Issue 13: a subscription change pg_fly cannot act on never fails the application's statement (unless
-- fly.strict_tiers = on): the user waits in fly.tier_waits / fly.needs_attention, with one alert.
SET search_path = public, fly;
-- The queue once the worker has folded the trigger's log into it (it does within 200 ms; here at once).
CREATE FUNCTION queue() RETURNS TABLE (user_id text, desired text, tier text, reason text, generation bigint)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM fly.fold_intents();
    RETURN QUERY SELECT left(q.user_id::text, 8), q.desired, q.tier, q.reason, q.generation FROM fly.reconcile_queue q
     ORDER BY q.user_id;
END $$;
CREATE FUNCTION waits() RETURNS TABLE (user_id text, tier text, reason text, detail text)
LANGUAGE sql AS $$
    SELECT left(n.user_id, 12), n.tier, n.reason, n.detail FROM fly.needs_attention n ORDER BY n.user_id
$$;
-- What the worker does once a policy change commits (fly._apply_policy_changes), until nothing is left to do. The
-- worker may be doing it at the same moment: either one queues each user, never both.
CREATE FUNCTION settle() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..200 LOOP
        PERFORM fly._apply_policy_changes(1000);
        EXIT WHEN NOT EXISTS (SELECT FROM fly.policy_changes)
              AND NOT EXISTS (SELECT FROM fly.tier_waits w JOIN fly.tier_policies p ON p.tier = w.tier
                               WHERE w.reason = 'unknown_tier');
        PERFORM pg_sleep(0.05);
    END LOOP;
END $$;
CREATE FUNCTION alerts() RETURNS TABLE (user_id text, app_row boolean, details jsonb)
LANGUAGE sql AS $$
    SELECT left(e.user_id::text, 8), e.fly_app_id IS NOT NULL, e.details - 'at' FROM fly.user_fly_app_events e
     WHERE e.event_type = 'alert_raised' ORDER BY e.id
$$;
TRUNCATE fly.reconcile_queue, fly.tier_intents;
INSERT INTO user_profiles VALUES
    ('a1111111-1111-4111-8111-111111111111', 'a1@example.com'),
    ('a2222222-2222-4222-8222-222222222222', 'a2@example.com'),
    ('a3333333-3333-4333-8333-333333333333', 'a3@example.com'),
    ('a4444444-4444-4444-8444-444444444444', 'a4@example.com');
INSERT INTO user_subscriptions VALUES ('a1111111-1111-4111-8111-111111111111', 'free'),
    ('a2222222-2222-4222-8222-222222222222', 'free'), ('a3333333-3333-4333-8333-333333333333', 'free');

-- A tier added in the payment provider before fly.tier_policies: the UPDATE succeeds, nothing is queued, the
-- user waits with the reason, and one alert_raised event holds the alert.
SHOW fly.strict_tiers;
UPDATE user_subscriptions SET tier = 'team' WHERE user_id = 'a1111111-1111-4111-8111-111111111111';
SELECT tier FROM user_subscriptions WHERE user_id = 'a1111111-1111-4111-8111-111111111111';
SELECT * FROM queue();
SELECT * FROM waits();
SELECT * FROM alerts();
-- The webhook retrying the same change, or a neighbouring column's change, raises no second alert.
UPDATE user_subscriptions SET tier = 'team' WHERE user_id = 'a1111111-1111-4111-8111-111111111111';
UPDATE user_subscriptions SET tier = 'free' WHERE user_id = 'a1111111-1111-4111-8111-111111111111';
UPDATE user_subscriptions SET tier = 'team' WHERE user_id = 'a1111111-1111-4111-8111-111111111111';
-- (team -> free cleared the wait and queued a harmless teardown, since an unknown old tier may have granted an
-- app; free -> team is a new wait, with a new alert.)
SELECT count(*) AS alerts FROM fly.user_fly_app_events WHERE event_type = 'alert_raised';
-- A second user on the same tier, and one on another unknown tier.
INSERT INTO user_subscriptions VALUES ('a4444444-4444-4444-8444-444444444444', 'team');
UPDATE user_subscriptions SET tier = 'enterprise' WHERE user_id = 'a2222222-2222-4222-8222-222222222222';
SELECT * FROM waits();
SELECT * FROM queue();

-- A later change to a known tier clears the wait.
UPDATE user_subscriptions SET tier = 'pro' WHERE user_id = 'a2222222-2222-4222-8222-222222222222';
SELECT * FROM waits();
SELECT * FROM queue();
TRUNCATE fly.reconcile_queue, fly.tier_intents;

-- fly.strict_tiers = on brings back the error, word for word; nothing is written.
SET fly.strict_tiers = on;
UPDATE user_subscriptions SET tier = 'platinum' WHERE user_id = 'a3333333-3333-4333-8333-333333333333';
RESET fly.strict_tiers;
SELECT * FROM waits();

-- Adding the policy writes no row the application's trigger writes (so the application never waits for the
-- policy's transaction): once the INSERT commits, the worker queues every user waiting for it and clears their
-- waits. Inside the policy's transaction the waits are no longer shown, and nothing is queued yet.
BEGIN;
INSERT INTO fly.tier_policies (tier, dedicated_app, cpu_kind, cpus, memory_mb) VALUES ('team', true, 'shared', 2, 512);
SELECT * FROM queue();
SELECT * FROM waits();
SELECT count(*) AS policy_changes FROM fly.policy_changes WHERE tier = 'team';
ROLLBACK;
SELECT * FROM queue();
INSERT INTO fly.tier_policies (tier, dedicated_app, cpu_kind, cpus, memory_mb) VALUES ('team', true, 'shared', 2, 512);
SELECT settle();
SELECT * FROM queue();
SELECT * FROM waits();
-- A tier without an app queues only waiting users who still have one to tear down (none here).
TRUNCATE fly.reconcile_queue, fly.tier_intents;
UPDATE user_subscriptions SET tier = 'basic' WHERE user_id = 'a3333333-3333-4333-8333-333333333333';
INSERT INTO fly.tier_policies (tier, dedicated_app) VALUES ('basic', false);
SELECT settle();
SELECT * FROM queue();
SELECT * FROM waits();

-- A user id that is not a uuid, or NULL, on a paid tier: the statement succeeds, with an alert naming the
-- problem; strict_tiers brings the errors back.
CREATE TABLE billing_accounts (account_owner text, plan_name text);
SELECT fly.attach_tier_trigger('billing_accounts', 'account_owner', 'plan_name');
INSERT INTO billing_accounts VALUES ('not-a-uuid', 'pro');
INSERT INTO billing_accounts VALUES (NULL, 'pro');
INSERT INTO billing_accounts VALUES (NULL, 'free');
INSERT INTO billing_accounts VALUES ('also-not-a-uuid', 'free');
INSERT INTO billing_accounts VALUES ('still-not-a-uuid', 'gold');
SELECT count(*) FROM billing_accounts;
SELECT * FROM waits();
SELECT * FROM queue();
-- Only an event can name a uuid user: these alerts went out as notifications alone.
SELECT count(*) AS alerts FROM fly.user_fly_app_events WHERE event_type = 'alert_raised';
-- The gold policy arrives: the id still cannot be used, and it now waits for that reason.
INSERT INTO fly.tier_policies (tier, dedicated_app, cpu_kind, cpus, memory_mb) VALUES ('gold', true, 'shared', 1, 256);
SELECT settle();
SELECT * FROM waits();
-- Moving the row to a free tier ends the wait.
UPDATE billing_accounts SET plan_name = 'free' WHERE account_owner = 'not-a-uuid';
DELETE FROM billing_accounts WHERE account_owner = 'still-not-a-uuid';
SELECT * FROM waits();
SET fly.strict_tiers = on;
INSERT INTO billing_accounts VALUES ('not-a-uuid-either', 'pro');
INSERT INTO billing_accounts VALUES (NULL, 'pro');
RESET fly.strict_tiers;
-- Megabyte values succeed too: a wait's key is the id as messages show it (quoted, cut after 64 bytes), and the
-- tier is not indexed; the alerts carry the shortened forms.
INSERT INTO billing_accounts SELECT string_agg(md5(i::text), ''), 'pro' FROM generate_series(1, 30000) i;
INSERT INTO billing_accounts SELECT 'big-tier-user', string_agg(md5(i::text), '') FROM generate_series(1, 30000) i;
SELECT left(user_id, 20) AS user_id, length(user_id), reason, length(tier) FROM fly.tier_waits ORDER BY 1;
DELETE FROM billing_accounts WHERE length(account_owner) > 100 OR length(plan_name) > 100;
SELECT count(*) AS waits FROM fly.tier_waits;
SELECT fly.attach_tier_trigger();
DROP TABLE billing_accounts;

-- "Is a uuid" is decided in one place, by what uuid_in reads (fly._as_uuid): braces, any case, a dash after any
-- group of four digits. The policy's INSERT queues those spellings, by the canonical uuid.
SELECT s, fly._as_uuid(s) FROM (VALUES ('{b1111111-1111-4111-8111-111111111111}'),
    ('Ab333333-3333-4333-8333-333333333333'), ('c444-4444-4444-4444-8444-4444-4444-4444'),
    ('D5555555555545558555555555555555'), ('{b1111111-1111-4111-8111-111111111111'),
    ('b1111111-1111-4111-8111-111111111111}'), ('b1111111-1111-4111-8111-11111111111'),
    ('b1111111-1111-4111-8111-1111111111111'), ('-b1111111-1111-4111-8111-111111111111'),
    ('b1111111--1111-4111-8111-111111111111'), ('g1111111-1111-4111-8111-111111111111'), (''), (NULL)) v(s);
SELECT fly._as_uuid(repeat('a', 1000000)) IS NULL AS long_text_is_no_uuid;
CREATE TABLE spelled_accounts (account_owner text, plan_name text);
SELECT fly.attach_tier_trigger('spelled_accounts', 'account_owner', 'plan_name');
TRUNCATE fly.reconcile_queue, fly.tier_intents;
INSERT INTO spelled_accounts VALUES ('{b1111111-1111-4111-8111-111111111111}', 'squad'),
    ('Ab333333-3333-4333-8333-333333333333', 'squad'), ('c444-4444-4444-4444-8444-4444-4444-4444', 'squad'),
    ('{b2222222-2222-4222-8222-222222222222', 'squad'), ('not-a-uuid', 'squad');
SELECT * FROM waits();
INSERT INTO fly.tier_policies (tier, dedicated_app, cpu_kind, cpus, memory_mb) VALUES ('squad', true, 'shared', 1, 256);
SELECT settle();
SELECT FROM fly.fold_intents();
SELECT q.user_id, q.desired, q.tier FROM fly.reconcile_queue q ORDER BY 1;
SELECT * FROM waits();
-- Deleting (or renaming) a policy that users are queued for is refused as for live apps: the worker would find no
-- policy and provision nothing.
DELETE FROM fly.tier_policies WHERE tier = 'squad';
UPDATE fly.tier_policies SET tier = 'squad2' WHERE tier = 'squad';
-- A NULL tier grants no app, as a tier without one does: the queued provision turns into a teardown, with no wait
-- and no alert.
SELECT count(*) AS alerts FROM fly.user_fly_app_events WHERE event_type = 'alert_raised' \gset
UPDATE spelled_accounts SET plan_name = NULL WHERE account_owner = 'Ab333333-3333-4333-8333-333333333333';
SELECT FROM fly.fold_intents();
SELECT q.desired, q.tier FROM fly.reconcile_queue q WHERE q.user_id = 'ab333333-3333-4333-8333-333333333333';
SELECT count(*) AS waits FROM fly.tier_waits WHERE user_id = 'Ab333333-3333-4333-8333-333333333333';
SELECT count(*) - :alerts AS new_alerts FROM fly.user_fly_app_events WHERE event_type = 'alert_raised';
TRUNCATE fly.reconcile_queue, fly.tier_intents;
DELETE FROM fly.tier_policies WHERE tier = 'squad';
SELECT fly.attach_tier_trigger();
DROP TABLE spelled_accounts;
TRUNCATE fly.tier_waits;

-- A wait left behind by a tier change that ran while the tier's policy was being added (neither saw the other:
-- the isolation spec policy_arrives shows how) is not shown once the tier has a policy. It goes at the user's next
-- tier change, or when the worker next looks (every few seconds). Made here by hand, in a transaction the worker
-- cannot see into until it commits.
BEGIN;
INSERT INTO fly.tier_waits (user_id, tier, reason) VALUES ('a3333333-3333-4333-8333-333333333333', 'basic', 'unknown_tier'),
    ('"left-behind"', 'gold', 'unknown_tier'), ('a4444444-4444-4444-8444-444444444444', 'gold', 'unknown_tier');
SELECT user_id, tier, reason FROM fly.tier_waits ORDER BY 1;
SELECT * FROM waits();
UPDATE user_subscriptions SET tier = 'free' WHERE user_id = 'a3333333-3333-4333-8333-333333333333';
SELECT user_id, tier, reason FROM fly.tier_waits ORDER BY 1;
DELETE FROM fly.reconcile_queue;
COMMIT;
SELECT settle();
SELECT user_id, tier, reason FROM fly.tier_waits ORDER BY 1;
SELECT * FROM queue();
TRUNCATE fly.tier_waits, fly.reconcile_queue;

-- A policy change of guest or region queues every live app of the tier (and queued provisions) for an
-- in-place update; other changes queue nothing.
TRUNCATE fly.reconcile_queue, fly.tier_intents;
INSERT INTO fly.user_fly_apps (user_id, tier, fly_app_name, fly_org_slug, status, region, cpu_kind, cpus, memory_mb)
VALUES ('a1111111-1111-4111-8111-111111111111', 'team', 'vyx-user-a1', 'personal', 'active', 'sjc', 'shared', 2, 512),
       ('a4444444-4444-4444-8444-444444444444', 'team', 'vyx-user-a4', 'personal', 'active', 'sjc', 'shared', 2, 512),
       ('a2222222-2222-4222-8222-222222222222', 'pro', 'vyx-user-a2', 'personal', 'active', 'sjc', 'shared', 1, 256),
       -- the first uuid of all is a user too
       ('00000000-0000-0000-0000-000000000000', 'team', 'vyx-user-00', 'personal', 'active', 'sjc', 'shared', 2, 512);
-- Provisions of the tier queued after the change: one the worker is carrying out (claimed, with the policy it read
-- then) is queued again; one not claimed yet will read the new policy.
INSERT INTO fly.reconcile_queue (user_id, desired, tier, reason, enqueued_at, claimed_at)
VALUES ('a5555555-5555-4555-8555-555555555555', 'present', 'team', 'tier_change', now() + interval '1 hour', now()),
       ('a6666666-6666-4666-8666-666666666666', 'present', 'team', 'tier_change', now() + interval '1 hour', NULL);
UPDATE fly.tier_policies SET updated_at = now() WHERE tier = 'team';
SELECT settle();
SELECT * FROM queue();
UPDATE fly.tier_policies SET cpus = 4, memory_mb = 1024 WHERE tier = 'team';
SELECT settle();
SELECT * FROM queue();
UPDATE fly.tier_policies SET region = 'ams' WHERE tier = 'team';
SELECT settle();
SELECT * FROM queue();
-- Inserting an existing tier replaces it (the upsert trigger), and counts as the same change.
INSERT INTO fly.tier_policies (tier, dedicated_app, cpu_kind, cpus, memory_mb, region)
VALUES ('team', true, 'shared', 4, 1024, 'ams');
SELECT settle();
SELECT * FROM queue();
-- dedicated_app true -> false tears the tier's apps down.
UPDATE fly.tier_policies SET dedicated_app = false, cpu_kind = NULL, cpus = NULL, memory_mb = NULL
 WHERE tier = 'team';
SELECT settle();
SELECT * FROM queue();

-- A user with a live app moving to an unknown tier keeps the app as it is; the event goes with the app.
TRUNCATE fly.reconcile_queue, fly.tier_intents;
UPDATE user_subscriptions SET tier = 'mystery' WHERE user_id = 'a2222222-2222-4222-8222-222222222222';
SELECT * FROM queue();
SELECT * FROM alerts() WHERE details->>'tier' = 'mystery';
UPDATE user_subscriptions SET tier = 'pro' WHERE user_id = 'a2222222-2222-4222-8222-222222222222';
SELECT * FROM waits();
SELECT * FROM queue();

-- A tier without an app, added for a waiting user who still has one, tears it down.
TRUNCATE fly.reconcile_queue, fly.tier_intents;
UPDATE user_subscriptions SET tier = 'hobby' WHERE user_id = 'a2222222-2222-4222-8222-222222222222';
INSERT INTO fly.tier_policies (tier, dedicated_app) VALUES ('hobby', false);
SELECT settle();
SELECT * FROM queue();
SELECT * FROM waits();
UPDATE user_subscriptions SET tier = 'pro' WHERE user_id = 'a2222222-2222-4222-8222-222222222222';
DELETE FROM fly.tier_policies WHERE tier = 'hobby';
-- ... but not when another of the user's rows still grants one (a table with several rows per user): the app
-- stays, and the wait ends.
CREATE TABLE plan_rows (account_owner text, plan_name text);
SELECT fly.attach_tier_trigger('plan_rows', 'account_owner', 'plan_name');
INSERT INTO plan_rows VALUES ('a2222222-2222-4222-8222-222222222222', 'pro'),
    ('a2222222-2222-4222-8222-222222222222', 'hobby3');
TRUNCATE fly.reconcile_queue, fly.tier_intents;
SELECT user_id, tier, reason FROM fly.tier_waits;
INSERT INTO fly.tier_policies (tier, dedicated_app) VALUES ('hobby3', false);
SELECT settle();
SELECT * FROM queue();
SELECT count(*) AS waits FROM fly.tier_waits;
-- A table pg_fly cannot read at that moment (here a column renamed behind its back) keeps the app too, with a
-- warning; the step goes on with the other users. In one transaction, so that the worker does not do it first.
INSERT INTO plan_rows VALUES ('a2222222-2222-4222-8222-222222222222', 'hobby4');
BEGIN;
ALTER TABLE plan_rows RENAME COLUMN plan_name TO plan;
INSERT INTO fly.tier_policies (tier, dedicated_app) VALUES ('hobby4', false);
SELECT queued FROM fly._apply_policy_changes(100);
SELECT * FROM queue();
SELECT count(*) AS waits FROM fly.tier_waits;
ROLLBACK;
DELETE FROM plan_rows WHERE plan_name = 'hobby4';
SELECT fly.attach_tier_trigger();
DROP TABLE plan_rows;
DELETE FROM fly.tier_policies WHERE tier = 'hobby3';

-- Deleting (or renaming) a policy live apps use is refused, with the count.
DELETE FROM fly.tier_policies WHERE tier = 'team';
UPDATE fly.tier_policies SET tier = 'team2' WHERE tier = 'team';
DELETE FROM fly.tier_policies WHERE tier = 'basic';
SELECT tier FROM fly.tier_policies ORDER BY tier;

-- Clean up for the following tests.
UPDATE user_subscriptions SET tier = 'free' WHERE user_id::text LIKE 'a%';
DELETE FROM user_subscriptions WHERE user_id::text LIKE 'a%';
DELETE FROM user_profiles WHERE id::text LIKE 'a%';
TRUNCATE fly.user_fly_apps CASCADE;
DELETE FROM fly.tier_policies WHERE tier IN ('team', 'gold');
TRUNCATE fly.reconcile_queue, fly.tier_intents, fly.tier_waits;
DROP FUNCTION queue(), waits(), alerts(), settle();

-- on_user_tier_change: it queues work only when a user's effective tier policy changes.
SET search_path = public, fly;
-- The queue once the worker has folded the trigger's log into it (it does within 200 ms; here at once).
CREATE FUNCTION queue() RETURNS TABLE (user_id text, desired text, tier text, reason text, generation bigint)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM fly.fold_intents();
    RETURN QUERY SELECT left(q.user_id::text, 8), q.desired, q.tier, q.reason, q.generation FROM fly.reconcile_queue q
     ORDER BY q.user_id;
END $$;
INSERT INTO user_profiles VALUES
    ('11111111-1111-4111-8111-111111111111', 'u1@example.com'),
    ('22222222-2222-4222-8222-222222222222', 'u2@example.com'),
    ('33333333-3333-4333-8333-333333333333', 'u3@example.com');

-- INSERT of a free subscription: nothing to do.
INSERT INTO user_subscriptions VALUES ('11111111-1111-4111-8111-111111111111', 'free');
SELECT * FROM queue();
-- free -> free: nothing.
UPDATE user_subscriptions SET tier = 'free' WHERE user_id = '11111111-1111-4111-8111-111111111111';
SELECT * FROM queue();
-- free -> pro: provision.
UPDATE user_subscriptions SET tier = 'pro' WHERE user_id = '11111111-1111-4111-8111-111111111111';
SELECT * FROM queue();
-- pro -> elite with the same policy: no new work (generation unchanged, the worker is not woken); the label follows.
UPDATE user_subscriptions SET tier = 'elite' WHERE user_id = '11111111-1111-4111-8111-111111111111';
SELECT * FROM queue();
-- pro -> free: deprovision; the one item per user now carries the latest desired state.
UPDATE user_subscriptions SET tier = 'free' WHERE user_id = '11111111-1111-4111-8111-111111111111';
SELECT * FROM queue();
-- An UPDATE that touches other columns, or sets the same tier, does not reach the queue.
ALTER TABLE user_subscriptions ADD COLUMN note text;
UPDATE user_subscriptions SET note = 'hello';
SELECT * FROM queue();

-- INSERT of a pro subscription provisions; DELETE deprovisions.
INSERT INTO user_subscriptions VALUES ('22222222-2222-4222-8222-222222222222', 'pro');
SELECT * FROM queue();
DELETE FROM user_subscriptions WHERE user_id = '22222222-2222-4222-8222-222222222222';
SELECT * FROM queue();

-- A rolled-back tier change leaves no work.
TRUNCATE fly.reconcile_queue, fly.tier_intents;
BEGIN;
INSERT INTO user_subscriptions VALUES ('33333333-3333-4333-8333-333333333333', 'elite');
SELECT count(*) AS queued_inside_transaction FROM fly.pending_work;
ROLLBACK;
SELECT * FROM queue();

-- Ten flips in one transaction leave one item with the last tier.
INSERT INTO user_subscriptions VALUES ('33333333-3333-4333-8333-333333333333', 'free');
DO $$
BEGIN
    FOR i IN 1..10 LOOP
        UPDATE user_subscriptions SET tier = CASE tier WHEN 'free' THEN 'pro' ELSE 'free' END
         WHERE user_id = '33333333-3333-4333-8333-333333333333';
    END LOOP;
    UPDATE user_subscriptions SET tier = 'pro' WHERE user_id = '33333333-3333-4333-8333-333333333333';
END $$;
SELECT tier FROM user_subscriptions WHERE user_id = '33333333-3333-4333-8333-333333333333';
SELECT * FROM queue();

-- A tier whose policy has a different guest is a change even when both are dedicated.
TRUNCATE fly.reconcile_queue, fly.tier_intents;
UPDATE fly.tier_policies SET memory_mb = 1024 WHERE tier = 'elite';
UPDATE user_subscriptions SET tier = 'elite' WHERE user_id = '33333333-3333-4333-8333-333333333333';
SELECT * FROM queue();
UPDATE fly.tier_policies SET memory_mb = 256 WHERE tier = 'elite';

-- With fly.strict_tiers = on, unknown tiers are refused, naming the tier; nothing is written. (Off, the default,
-- the statement succeeds and the user waits: sql/never_block.sql.)
TRUNCATE fly.reconcile_queue, fly.tier_intents;
SET fly.strict_tiers = on;
UPDATE user_subscriptions SET tier = 'platinum' WHERE user_id = '11111111-1111-4111-8111-111111111111';
RESET fly.strict_tiers;
SELECT * FROM queue();
-- An old tier that has left the policy table does not block changes away from it.
INSERT INTO fly.tier_policies (tier, dedicated_app, cpu_kind, cpus, memory_mb) VALUES ('legacy', true, 'shared', 1, 256);
UPDATE user_subscriptions SET tier = 'legacy' WHERE user_id = '11111111-1111-4111-8111-111111111111';
-- While a provision of the tier is queued its policy stays: the worker would find none and provision nothing.
DELETE FROM fly.tier_policies WHERE tier = 'legacy';
UPDATE fly.tier_policies SET tier = 'legacy2' WHERE tier = 'legacy';
SELECT FROM fly.fold_intents();
DELETE FROM fly.reconcile_queue WHERE tier = 'legacy';
DELETE FROM fly.tier_policies WHERE tier = 'legacy';
UPDATE user_subscriptions SET tier = 'free' WHERE user_id = '11111111-1111-4111-8111-111111111111';
SELECT * FROM queue();

-- A subscription row that moves to another user: the old user loses the app, the new one gains it.
TRUNCATE fly.reconcile_queue, fly.tier_intents;
INSERT INTO user_profiles VALUES ('44444444-4444-4444-8444-444444444444', 'u4@example.com');
UPDATE user_subscriptions SET user_id = '44444444-4444-4444-8444-444444444444'
 WHERE user_id = '33333333-3333-4333-8333-333333333333';
SELECT * FROM queue();

-- Any table and column names work, including a text user id; attaching moves the trigger.
TRUNCATE fly.reconcile_queue, fly.tier_intents;
CREATE TABLE billing_accounts (account_owner text, plan_name varchar(20));
SELECT fly.attach_tier_trigger('billing_accounts', 'account_owner', 'plan_name');
SELECT tgrelid::regclass FROM pg_trigger WHERE tgname = 'on_user_tier_change';
INSERT INTO billing_accounts VALUES ('55555555-5555-4555-8555-555555555555', 'pro');
SELECT * FROM queue();
-- With fly.strict_tiers = on, a malformed id in the application's table is an error that names it.
SET fly.strict_tiers = on;
INSERT INTO billing_accounts VALUES ('not-a-uuid', 'pro');
-- A NULL user id with a paid tier cannot be provisioned.
INSERT INTO billing_accounts VALUES (NULL, 'pro');
INSERT INTO billing_accounts VALUES (NULL, 'free');
RESET fly.strict_tiers;
SELECT count(*) FROM billing_accounts;
-- A user with a live pro app gains a second row on a tier without an app, which then changes to another such
-- tier: neither names the app's tier (only a row that grants the app does), so the pro policy stays in use.
INSERT INTO fly.user_fly_apps (user_id, tier, fly_app_name, fly_org_slug, region, cpu_kind, cpus, memory_mb, status)
VALUES ('55555555-5555-4555-8555-555555555555', 'pro', 'vyx-user-55', 'personal', 'sjc', 'shared', 1, 256, 'active');
TRUNCATE fly.reconcile_queue, fly.tier_intents;
INSERT INTO billing_accounts VALUES ('55555555-5555-4555-8555-555555555555', 'free');
UPDATE billing_accounts SET plan_name = 'trial' WHERE account_owner = '55555555-5555-4555-8555-555555555555'
   AND plan_name = 'free';
SELECT tier FROM fly.user_fly_apps WHERE user_id = '55555555-5555-4555-8555-555555555555';
SELECT * FROM queue();
-- A change between two tiers with the same app after fly.deprovision_user_app(): a tier change, so the teardown
-- ends and the app is queued again.
SELECT fly.deprovision_user_app('55555555-5555-4555-8555-555555555555');
UPDATE fly.user_fly_apps SET deleted_at = now(), status = 'deleted'
 WHERE user_id = '55555555-5555-4555-8555-555555555555';
TRUNCATE fly.reconcile_queue, fly.tier_intents;
UPDATE billing_accounts SET plan_name = 'elite' WHERE account_owner = '55555555-5555-4555-8555-555555555555'
   AND plan_name = 'pro';
SELECT FROM fly.fold_intents();
SELECT count(*) AS manual_teardowns FROM fly.manual_teardowns;
SELECT * FROM queue();
TRUNCATE fly.user_fly_apps CASCADE;
TRUNCATE fly.reconcile_queue, fly.tier_intents;
DELETE FROM billing_accounts WHERE plan_name = 'trial';

-- attach_tier_trigger errors name the problem.
SELECT fly.attach_tier_trigger('no_such_table');
SELECT fly.attach_tier_trigger('billing_accounts', 'owner', 'plan_name');
SELECT fly.attach_tier_trigger('billing_accounts', 'account_owner', 'plan');
CREATE TABLE wrong_types (user_id integer, tier text);
SELECT fly.attach_tier_trigger('wrong_types');
CREATE VIEW subscriptions_view AS SELECT * FROM user_subscriptions;
SELECT fly.attach_tier_trigger('subscriptions_view');
SELECT fly.attach_tier_trigger(NULL);

-- Back to the default table for the following tests.
SELECT fly.attach_tier_trigger();
SELECT tgrelid::regclass FROM pg_trigger WHERE tgname = 'on_user_tier_change';
-- Called outside a trigger, the function says so.
SELECT fly.on_user_tier_change();
DROP TABLE billing_accounts, wrong_types;
DROP VIEW subscriptions_view;
DROP FUNCTION queue();
TRUNCATE fly.reconcile_queue, fly.tier_intents;

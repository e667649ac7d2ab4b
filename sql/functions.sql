-- provision_user_app, deprovision_user_app, get_user_fly_app_status, app_name_for: behaviour and errors.
SET search_path = public, fly;
INSERT INTO user_profiles VALUES ('66666666-6666-4666-8666-666666666666', 'u6@example.com');
INSERT INTO user_subscriptions VALUES ('66666666-6666-4666-8666-666666666666', 'free');

-- Enqueueing returns at once and is idempotent: calling twice leaves one item.
UPDATE user_subscriptions SET tier = 'pro' WHERE user_id = '66666666-6666-4666-8666-666666666666';
SELECT fly.provision_user_app('66666666-6666-4666-8666-666666666666');
SELECT fly.provision_user_app('66666666-6666-4666-8666-666666666666');
SELECT desired, tier, reason, generation FROM fly.reconcile_queue;
SELECT user_id, fly_app_name, status, tier, pending_action FROM fly.get_user_fly_app_status('66666666-6666-4666-8666-666666666666');

SELECT fly.deprovision_user_app('66666666-6666-4666-8666-666666666666');
SELECT fly.deprovision_user_app('66666666-6666-4666-8666-666666666666');
SELECT desired, tier, reason, generation FROM fly.reconcile_queue;
SELECT pending_action FROM fly.get_user_fly_app_status('66666666-6666-4666-8666-666666666666');

-- A user pg_fly never saw has no status row.
TRUNCATE fly.reconcile_queue, fly.tier_intents;
SELECT count(*) FROM fly.get_user_fly_app_status('77777777-7777-4777-8777-777777777777');
-- Deprovisioning a user without a live app is still queued (the worker checks Fly), with a notice.
SELECT fly.deprovision_user_app('77777777-7777-4777-8777-777777777777');
SELECT pending_action FROM fly.get_user_fly_app_status('77777777-7777-4777-8777-777777777777');
TRUNCATE fly.reconcile_queue, fly.tier_intents;

-- Bad input gets a clear error naming the problem, and nothing is queued.
SELECT fly.provision_user_app(NULL);
SELECT fly.deprovision_user_app(NULL);
SELECT fly.provision_user_app('not-a-uuid');
SELECT fly.provision_user_app('77777777-7777-4777-8777-777777777777');
UPDATE user_subscriptions SET tier = 'free' WHERE user_id = '66666666-6666-4666-8666-666666666666';
TRUNCATE fly.reconcile_queue, fly.tier_intents;
SELECT fly.provision_user_app('66666666-6666-4666-8666-666666666666');
INSERT INTO fly.tier_policies (tier, dedicated_app) VALUES ('trial', false);
UPDATE user_subscriptions SET tier = 'trial' WHERE user_id = '66666666-6666-4666-8666-666666666666';
DELETE FROM fly.tier_policies WHERE tier = 'trial';
SELECT fly.provision_user_app('66666666-6666-4666-8666-666666666666');
UPDATE user_subscriptions SET tier = 'free' WHERE user_id = '66666666-6666-4666-8666-666666666666';
TRUNCATE fly.reconcile_queue, fly.tier_intents;
SELECT fly._enqueue_reconcile('66666666-6666-4666-8666-666666666666', 'sideways', NULL, 'manual');
SELECT count(*) AS queued_after_errors FROM fly.reconcile_queue;

-- Without an attached subscription table, provisioning says what to do.
SELECT fly.detach_tier_trigger();
SELECT fly.provision_user_app('66666666-6666-4666-8666-666666666666');
SELECT fly.detach_tier_trigger();
SELECT fly.attach_tier_trigger();

-- App names: the contract's <prefix><first 8 hex of sha256(user_id text)>, then deterministic fallbacks.
SELECT fly.app_name_for('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11') =
       'vyx-user-' || left(encode(sha256('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::bytea), 'hex'), 8) AS contract_name;
SELECT fly.app_name_for('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', n) FROM generate_series(0, 2) AS n;
-- The prefix is server configuration (postgresql.conf / ALTER SYSTEM), not a session setting.
SET fly.app_name_prefix = 'acme-';
SELECT fly.app_name_for('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', -1);
SELECT fly.app_name_for(NULL);

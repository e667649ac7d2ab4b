-- The tier-change log (fly.tier_intents): the subscription trigger appends one row per change, and the worker
-- (or fly.fold_intents(), or any other writer of the user's queue item) folds the rows into fly.reconcile_queue.
-- The worker runs in this database and folds committed rows within 200 ms: what the log holds is looked at inside
-- the transaction that wrote it, where no one else sees it.
SET search_path = public, fly;
CREATE TABLE intent_subs (user_id uuid PRIMARY KEY, tier text);
SELECT fly.attach_tier_trigger('intent_subs');
CREATE FUNCTION log_rows() RETURNS TABLE (user_id text, kind "char", tier text, reason text)
LANGUAGE sql AS $$
    SELECT left(i.user_id::text, 8), i.kind, i.tier, i.reason FROM fly.tier_intents i ORDER BY i.seq
$$;

-- A row whose tier grants nothing, a no-op update: nothing logged. A policy change logs 'p' (present) or 'a'
-- (absent); a change between two tiers with the same policy logs 'r' (relabel).
BEGIN;
INSERT INTO intent_subs VALUES ('e1111111-1111-4111-8111-111111111111', 'free');
UPDATE intent_subs SET tier = 'free';
SELECT * FROM log_rows();
UPDATE intent_subs SET tier = 'pro';
UPDATE intent_subs SET tier = 'elite';
UPDATE intent_subs SET tier = 'free';
UPDATE intent_subs SET tier = 'pro';
SELECT * FROM log_rows();
-- Not folded yet, the changes are pending work all the same, and the user's pending action.
SELECT left(user_id::text, 8) AS user_id, desired, tier, reason, attempts, in_flight FROM fly.pending_work
 ORDER BY enqueued_at, desired;
SELECT tier, pending_action FROM fly.get_user_fly_app_status('e1111111-1111-4111-8111-111111111111');
-- Folded, they leave one item with the last desired state; one generation per change of desired state, as
-- one enqueue each would have left.
SELECT fly.fold_intents() AS folded;
SELECT * FROM log_rows();
SELECT left(user_id::text, 8) AS user_id, desired, tier, reason, generation FROM fly.reconcile_queue;
COMMIT;

-- A relabel after a change: the item is present with the last tier; a relabel alone renames the item's tier.
BEGIN;
UPDATE intent_subs SET tier = 'free';
UPDATE intent_subs SET tier = 'elite';
UPDATE intent_subs SET tier = 'pro';
SELECT fly.fold_intents() AS folded;
SELECT desired, tier, reason, generation FROM fly.reconcile_queue;
UPDATE intent_subs SET tier = 'elite';
SELECT fly.fold_intents() AS folded;
SELECT desired, tier, reason, generation FROM fly.reconcile_queue;
COMMIT;

-- Any other writer of the user's item folds the user's logged changes first, so the newer intent wins:
-- here fly.deprovision_user_app() after a tier change in the same transaction.
BEGIN;
UPDATE intent_subs SET tier = 'free';
UPDATE intent_subs SET tier = 'pro';
SELECT fly.deprovision_user_app('e1111111-1111-4111-8111-111111111111');
SELECT count(*) AS logged FROM fly.tier_intents;
SELECT desired, tier, reason, generation FROM fly.reconcile_queue;
ROLLBACK;

-- The worker folds committed changes on its own.
CREATE FUNCTION folded_within(seconds int) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..seconds * 20 LOOP
        IF NOT EXISTS (SELECT 1 FROM fly.tier_intents) THEN
            RETURN true;
        END IF;
        PERFORM pg_sleep(0.05);
    END LOOP;
    RETURN false;
END $$;
UPDATE intent_subs SET tier = 'free';
SELECT folded_within(30);
SELECT desired, tier, reason FROM fly.reconcile_queue;

-- A log someone gave an index (or a trigger, a rule, row security) is never written behind the executor's back:
-- the trigger queues the change itself, as before the log existed.
CREATE INDEX tier_intents_by_user ON fly.tier_intents (user_id);
UPDATE intent_subs SET tier = 'pro';
SELECT count(*) AS logged FROM fly.tier_intents;
SELECT desired, tier, reason FROM fly.reconcile_queue;
DROP INDEX fly.tier_intents_by_user;
BEGIN;
UPDATE intent_subs SET tier = 'free';
SELECT * FROM log_rows();
ROLLBACK;

-- A publication of every table (change data capture, say) does not stop the fold: the log's replica identity is
-- the whole row.
BEGIN;
SET LOCAL client_min_messages = error;
CREATE PUBLICATION every_table FOR ALL TABLES;
UPDATE intent_subs SET tier = 'free';
SELECT fly.fold_intents() AS folded;
ROLLBACK;

-- The log's rows cannot be read or written by anyone pg_fly did not grant them to.
CREATE ROLE intent_reader;
GRANT USAGE ON SCHEMA fly TO intent_reader;
SET ROLE intent_reader;
SELECT count(*) FROM fly.tier_intents;
INSERT INTO fly.tier_intents VALUES (1, 'e1111111-1111-4111-8111-111111111111', 'a', NULL, 'x', now());
SELECT fly.fold_intents();
RESET ROLE;
REVOKE USAGE ON SCHEMA fly FROM intent_reader;
DROP ROLE intent_reader;

-- Back to the table the following tests use.
SELECT fly.attach_tier_trigger();
DROP TABLE intent_subs;
DROP FUNCTION log_rows(), folded_within(int);
TRUNCATE fly.reconcile_queue, fly.tier_intents;

-- pg_fly 0.1.0: schema fly. Loaded by CREATE EXTENSION pg_fly.
\echo Use "CREATE EXTENSION pg_fly" to load this file. \quit

-- The schema belongs to the extension, so DROP EXTENSION removes it. Nothing in it is for PUBLIC unless
-- granted; administrators grant what their roles need.
CREATE SCHEMA fly;
REVOKE ALL ON SCHEMA fly FROM PUBLIC;

--------------------------------------------------------------------------------------------------------------
-- Tier policy: which tiers get a dedicated app, with which guest and region. Data, not code.
--------------------------------------------------------------------------------------------------------------
CREATE TABLE fly.tier_policies (
    tier          text PRIMARY KEY CHECK (tier <> ''),
    dedicated_app boolean NOT NULL,
    cpu_kind      text CHECK (cpu_kind IN ('shared', 'performance')),
    cpus          integer CHECK (cpus IN (1, 2, 4, 8, 16)),
    memory_mb     integer CHECK (memory_mb > 0 AND memory_mb % 256 = 0),
    region        text CHECK (region ~ '^[a-z0-9-]+$'),  -- NULL: fly.default_region
    updated_at    timestamptz NOT NULL DEFAULT now(),
    -- A dedicated tier needs a complete guest whose memory Fly accepts for that many CPUs.
    CONSTRAINT tier_policies_guest_complete CHECK (
        NOT dedicated_app OR (cpu_kind IS NOT NULL AND cpus IS NOT NULL AND memory_mb IS NOT NULL)),
    CONSTRAINT tier_policies_guest_memory CHECK (
        cpu_kind IS NULL OR cpus IS NULL OR memory_mb IS NULL
        OR (cpu_kind = 'shared' AND memory_mb BETWEEN 256 * cpus AND 2048 * cpus)
        OR (cpu_kind = 'performance' AND memory_mb BETWEEN 2048 * cpus AND 8192 * cpus))
);
COMMENT ON TABLE fly.tier_policies IS
    'Which subscription tiers get a dedicated Fly app, and with what guest (cpu kind, cpus, memory) and region';

INSERT INTO fly.tier_policies (tier, dedicated_app, cpu_kind, cpus, memory_mb, region) VALUES
    ('free',  false, NULL,     NULL, NULL, NULL),
    ('pro',   true,  'shared', 1,    256,  NULL),
    ('elite', true,  'shared', 1,    256,  NULL);

-- Inserting an existing tier replaces it. This is what lets pg_dump restore customised default tiers: the
-- restore's CREATE EXTENSION inserts the defaults, then its COPY brings the customised rows.
CREATE FUNCTION fly._tier_policies_upsert() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE fly.tier_policies
       SET dedicated_app = NEW.dedicated_app, cpu_kind = NEW.cpu_kind, cpus = NEW.cpus,
           memory_mb = NEW.memory_mb, region = NEW.region, updated_at = now()
     WHERE tier = NEW.tier;
    IF FOUND THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER tier_policies_upsert BEFORE INSERT ON fly.tier_policies
    FOR EACH ROW EXECUTE FUNCTION fly._tier_policies_upsert();

--------------------------------------------------------------------------------------------------------------
-- Apps and their event log. One row per app lifecycle; at most one live (not deleted) app per user.
--------------------------------------------------------------------------------------------------------------
CREATE TABLE fly.user_fly_apps (
    id                        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id                   uuid NOT NULL,
    tier                      text,
    fly_app_name              text NOT NULL CHECK (fly_app_name ~ '^[A-Za-z0-9._-]{1,100}$'),  -- Fly itself judges the rest
    name_attempt              integer NOT NULL DEFAULT 0 CHECK (name_attempt >= 0),
    fly_app_id                text,
    fly_org_slug              text NOT NULL,
    fly_machine_id            text,
    status                    text NOT NULL DEFAULT 'provisioning'
                              CHECK (status IN ('provisioning', 'active', 'deprovisioning', 'deleted', 'failed')),
    health_status             text NOT NULL DEFAULT 'unknown'
                              CHECK (health_status IN ('healthy', 'unhealthy', 'unknown')),
    region                    text NOT NULL,
    cpu_kind                  text CHECK (cpu_kind IN ('shared', 'performance')),
    cpus                      integer CHECK (cpus > 0),
    memory_mb                 integer CHECK (memory_mb > 0),
    image                     text,
    secrets_version           bigint,
    pending_machine_operation text,        -- a create-machine request sent but not yet answered
    pending_machine_since     timestamptz,
    monthly_cost_estimate_usd numeric(10, 2) CHECK (monthly_cost_estimate_usd >= 0),
    attempts                  integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error                text,
    last_health_check_at      timestamptz,
    provisioned_at            timestamptz,
    created_at                timestamptz NOT NULL DEFAULT now(),
    updated_at                timestamptz NOT NULL DEFAULT now(),
    deleted_at                timestamptz,
    CONSTRAINT user_fly_apps_deleted_at CHECK ((status = 'deleted') = (deleted_at IS NOT NULL))
);
CREATE UNIQUE INDEX user_fly_apps_one_live_per_user ON fly.user_fly_apps (user_id)
    WHERE deleted_at IS NULL;
CREATE UNIQUE INDEX user_fly_apps_live_name ON fly.user_fly_apps (fly_app_name)
    WHERE deleted_at IS NULL;
CREATE INDEX user_fly_apps_created_at ON fly.user_fly_apps (created_at);
COMMENT ON TABLE fly.user_fly_apps IS 'One row per dedicated Fly app lifecycle (provisioning to deleted)';

CREATE TABLE fly.user_fly_app_events (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    fly_app_id bigint REFERENCES fly.user_fly_apps (id),
    user_id    uuid NOT NULL,
    event_type text NOT NULL CHECK (event_type ~ '^[a-z][a-z_]*$'),
    status     text,        -- the app's status once the event happened
    details    jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX user_fly_app_events_user ON fly.user_fly_app_events (user_id, created_at);
CREATE INDEX user_fly_app_events_app ON fly.user_fly_app_events (fly_app_id);
CREATE INDEX user_fly_app_events_created_at ON fly.user_fly_app_events (created_at);
COMMENT ON TABLE fly.user_fly_app_events IS 'Append-only audit log of everything pg_fly did to each app';

-- Append-only: events are never rewritten (old ones may be deleted for retention).
CREATE FUNCTION fly._events_append_only() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'user_fly_app_events is append-only'
        USING ERRCODE = 'insufficient_privilege', HINT = 'Events can be deleted for retention, not changed.';
END $$;
CREATE TRIGGER user_fly_app_events_append_only BEFORE UPDATE ON fly.user_fly_app_events
    FOR EACH ROW EXECUTE FUNCTION fly._events_append_only();

--------------------------------------------------------------------------------------------------------------
-- The reconcile queue the worker consumes: durable (logged), one item per user carrying the latest desired
-- state. Enqueueing bumps `generation`; the worker records an outcome only for the generation it claimed.
--------------------------------------------------------------------------------------------------------------
CREATE TABLE fly.reconcile_queue (
    user_id     uuid PRIMARY KEY,
    desired     text NOT NULL CHECK (desired IN ('present', 'absent')),
    tier        text,
    reason      text NOT NULL,
    generation  bigint NOT NULL DEFAULT 1,
    attempts    integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    run_after   timestamptz NOT NULL DEFAULT now(),
    claimed_at  timestamptz,            -- set while the worker works on the item
    lease_until timestamptz,            -- a claim older than this is abandoned and may be taken again
    last_error  text,
    alerted     boolean NOT NULL DEFAULT false,  -- an alert was raised for this run of failures
    enqueued_at timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
-- The worker's claim query: due items, oldest first (FOR UPDATE SKIP LOCKED).
CREATE INDEX reconcile_queue_due ON fly.reconcile_queue (run_after);
COMMENT ON TABLE fly.reconcile_queue IS 'Users whose Fly app must be reconciled with their tier';

--------------------------------------------------------------------------------------------------------------
-- The application's subscription table pg_fly watches (set by attach_tier_trigger).
--------------------------------------------------------------------------------------------------------------
CREATE TABLE fly.tier_source (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    table_name  regclass NOT NULL,
    user_column name NOT NULL,
    tier_column name NOT NULL,
    attached_at timestamptz NOT NULL DEFAULT now()
);

-- pg_dump keeps the contents of every table above (extension tables are otherwise left out of dumps).
SELECT pg_catalog.pg_extension_config_dump('fly.tier_policies', '');
SELECT pg_catalog.pg_extension_config_dump('fly.user_fly_apps', '');
SELECT pg_catalog.pg_extension_config_dump('fly.user_fly_apps_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('fly.user_fly_app_events', '');
SELECT pg_catalog.pg_extension_config_dump('fly.user_fly_app_events_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('fly.reconcile_queue', '');
SELECT pg_catalog.pg_extension_config_dump('fly.tier_source', '');

--------------------------------------------------------------------------------------------------------------
-- C functions
--------------------------------------------------------------------------------------------------------------
CREATE FUNCTION fly.on_user_tier_change() RETURNS trigger
    LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'on_user_tier_change';
COMMENT ON FUNCTION fly.on_user_tier_change() IS
    'Trigger on the subscription table: queues a reconcile when a user''s effective tier policy changes';

CREATE FUNCTION fly._enqueue_reconcile(user_id uuid, desired text, tier text, reason text) RETURNS void
    LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', '_enqueue_reconcile';

CREATE FUNCTION fly.app_name_for(user_id uuid, attempt integer DEFAULT 0) RETURNS text
    LANGUAGE c STABLE AS 'MODULE_PATHNAME', 'app_name_for';
COMMENT ON FUNCTION fly.app_name_for(uuid, integer) IS
    'The app name candidate pg_fly uses for a user (attempt 0 is <prefix><8 hex of sha256(user_id)>)';

CREATE FUNCTION fly.worker_status(
    OUT pid integer, OUT started_at timestamptz, OUT commit_wakes bigint, OUT timer_wakes bigint,
    OUT iterations bigint, OUT last_wake_at timestamptz, OUT queue_ready bigint, OUT token_source text,
    OUT in_flight integer, OUT rate_limited integer, OUT breaker_state text, OUT breaker_reopens_at timestamptz,
    OUT last_error text, OUT last_error_at timestamptz)
    RETURNS record LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'worker_status';

CREATE FUNCTION fly._guard_selftest(kind text) RETURNS text
    LANGUAGE c AS 'MODULE_PATHNAME', '_guard_selftest';

--------------------------------------------------------------------------------------------------------------
-- Attaching the trigger to the application's subscription table
--------------------------------------------------------------------------------------------------------------
CREATE FUNCTION fly._drop_tier_trigger(tbl regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = tbl AND t.tgname = 'on_user_tier_change') THEN
        EXECUTE format('DROP TRIGGER on_user_tier_change ON %s', tbl);
    END IF;
    IF EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = tbl AND t.tgname = 'on_user_tier_truncate') THEN
        EXECUTE format('DROP TRIGGER on_user_tier_truncate ON %s', tbl);
    END IF;
END $$;

-- TRUNCATE fires no row triggers: a truncated subscription table leaves nobody with a tier, so every user with
-- a live or queued app is queued for teardown.
CREATE FUNCTION fly.on_user_tier_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM fly._enqueue_reconcile(u.user_id, 'absent', NULL, 'truncate')
       FROM (SELECT a.user_id FROM fly.user_fly_apps a WHERE a.deleted_at IS NULL
             UNION SELECT q.user_id FROM fly.reconcile_queue q WHERE q.desired = 'present') AS u;
    RETURN NULL;
END $$;

CREATE FUNCTION fly.attach_tier_trigger(
    tbl regclass DEFAULT 'public.user_subscriptions'::text::regclass,  -- resolved at call time
    user_column name DEFAULT 'user_id',
    tier_column name DEFAULT 'tier')
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    kind      "char";
    user_type regtype;
    previous  regclass;
BEGIN
    IF tbl IS NULL OR user_column IS NULL OR tier_column IS NULL THEN
        RAISE EXCEPTION 'attach_tier_trigger: table and column names must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT c.relkind INTO kind FROM pg_class c WHERE c.oid = tbl;
    IF kind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'attach_tier_trigger: "%" is not a table', tbl USING ERRCODE = 'wrong_object_type';
    END IF;
    SELECT a.atttypid::regtype INTO user_type FROM pg_attribute a
     WHERE a.attrelid = tbl AND a.attname = user_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'attach_tier_trigger: column "%" of table "%" does not exist', user_column, tbl
            USING ERRCODE = 'undefined_column', HINT = 'Name the column that holds the user id (a uuid).';
    END IF;
    IF user_type NOT IN ('uuid'::regtype, 'text'::regtype, 'character varying'::regtype) THEN
        RAISE EXCEPTION 'attach_tier_trigger: column "%" of table "%" is of type %, not uuid',
            user_column, tbl, user_type
            USING ERRCODE = 'datatype_mismatch', HINT = 'The user id column must be uuid (or text holding uuids).';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = tbl AND a.attname = tier_column
                   AND a.attnum > 0 AND NOT a.attisdropped) THEN
        RAISE EXCEPTION 'attach_tier_trigger: column "%" of table "%" does not exist', tier_column, tbl
            USING ERRCODE = 'undefined_column', HINT = 'Name the column that holds the subscription tier.';
    END IF;

    SELECT s.table_name INTO previous FROM fly.tier_source s;
    IF previous IS NOT NULL AND previous <> tbl THEN
        PERFORM fly._drop_tier_trigger(previous);
        RAISE NOTICE 'pg_fly now watches % instead of %', tbl, previous;
    END IF;
    PERFORM fly._drop_tier_trigger(tbl);
    EXECUTE format('CREATE TRIGGER on_user_tier_change AFTER INSERT OR UPDATE OF %I, %I OR DELETE ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION fly.on_user_tier_change(%L, %L)',
                   user_column, tier_column, tbl, user_column, tier_column);
    EXECUTE format('CREATE TRIGGER on_user_tier_truncate AFTER TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION fly.on_user_tier_truncate()', tbl);
    INSERT INTO fly.tier_source (table_name, user_column, tier_column)
    VALUES (tbl, user_column, tier_column)
    ON CONFLICT (singleton) DO UPDATE
       SET table_name = excluded.table_name, user_column = excluded.user_column,
           tier_column = excluded.tier_column, attached_at = now();
END $$;
COMMENT ON FUNCTION fly.attach_tier_trigger(regclass, name, name) IS
    'Installs on_user_tier_change on the subscription table (one table at a time)';

CREATE FUNCTION fly.detach_tier_trigger() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    previous regclass;
BEGIN
    DELETE FROM fly.tier_source RETURNING table_name INTO previous;
    IF previous IS NULL THEN
        RAISE EXCEPTION 'detach_tier_trigger: no subscription table is attached'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    PERFORM fly._drop_tier_trigger(previous);
END $$;

--------------------------------------------------------------------------------------------------------------
-- Manual control. Both only enqueue and return: no HTTP happens in the caller's transaction.
--------------------------------------------------------------------------------------------------------------

-- The attached subscription table, or an error that says how to attach one.
CREATE FUNCTION fly._tier_source() RETURNS fly.tier_source
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    src fly.tier_source;
BEGIN
    SELECT * INTO src FROM fly.tier_source;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no subscription table is attached to pg_fly'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Run SELECT fly.attach_tier_trigger(''public.user_subscriptions'', ''user_id'', ''tier'').';
    END IF;
    RETURN src;
END $$;

-- The user's current tier from the attached subscription table; errors name what is missing.
CREATE FUNCTION fly._subscription_tier(p_user_id uuid) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    src       fly.tier_source;
    user_type text;
    tiers     text[];
BEGIN
    src := fly._tier_source();
    SELECT format_type(a.atttypid, a.atttypmod) INTO user_type FROM pg_attribute a
     WHERE a.attrelid = src.table_name AND a.attname = src.user_column;
    EXECUTE format('SELECT array_agg(%I::text) FROM %s WHERE %I = $1::text::%s',
                   src.tier_column, src.table_name, src.user_column, user_type)
       INTO tiers USING p_user_id;
    IF tiers IS NULL THEN
        RAISE EXCEPTION 'user % has no subscription in %', p_user_id, src.table_name
            USING ERRCODE = 'no_data_found';
    END IF;
    IF cardinality(tiers) > 1 THEN
        RAISE EXCEPTION 'user % has % subscription rows in %; pg_fly expects one', p_user_id,
            cardinality(tiers), src.table_name USING ERRCODE = 'cardinality_violation';
    END IF;
    RETURN tiers[1];
END $$;

CREATE FUNCTION fly.provision_user_app(user_id uuid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_tier      text;
    v_dedicated boolean;
BEGIN
    IF user_id IS NULL THEN
        RAISE EXCEPTION 'provision_user_app: user_id must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    v_tier := fly._subscription_tier(user_id);
    SELECT p.dedicated_app INTO v_dedicated FROM fly.tier_policies p WHERE p.tier = v_tier;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tier "%" of user % has no policy in fly.tier_policies', v_tier, user_id
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT v_dedicated THEN
        RAISE EXCEPTION 'user % is on tier "%", which has no dedicated app', user_id, v_tier
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Change the user''s tier, or the tier''s policy in fly.tier_policies.';
    END IF;
    PERFORM fly._enqueue_reconcile(user_id, 'present', v_tier, 'manual');
END $$;
COMMENT ON FUNCTION fly.provision_user_app(uuid) IS
    'Queues (re)provisioning of the user''s app per their tier; returns at once';

CREATE FUNCTION fly.deprovision_user_app(user_id uuid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF user_id IS NULL THEN
        RAISE EXCEPTION 'deprovision_user_app: user_id must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    -- Queued even when no live app is known: the worker then makes sure nothing is left on Fly, and a
    -- provisioning that has not committed yet cannot slip past a deprovision that came after it.
    IF NOT EXISTS (SELECT 1 FROM fly.user_fly_apps a
                    WHERE a.user_id = deprovision_user_app.user_id AND a.deleted_at IS NULL) THEN
        RAISE NOTICE 'user % has no live app; the worker will only check that none is left on Fly', user_id;
    END IF;
    PERFORM fly._enqueue_reconcile(user_id, 'absent', NULL, 'manual');
END $$;
COMMENT ON FUNCTION fly.deprovision_user_app(uuid) IS
    'Queues teardown of the user''s app (until their tier changes again); returns at once';

-- The seed's "manual retry button": a failed user's app is reconciled again, with fresh attempts, toward what
-- their tier says now.
CREATE FUNCTION fly.retry_user_app(user_id uuid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_status    text;
    v_tier      text;
    v_dedicated boolean := false;
BEGIN
    IF user_id IS NULL THEN
        RAISE EXCEPTION 'retry_user_app: user_id must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT a.status INTO v_status FROM fly.user_fly_apps a
     WHERE a.user_id = retry_user_app.user_id AND a.deleted_at IS NULL;
    IF v_status IS DISTINCT FROM 'failed' THEN
        IF EXISTS (SELECT 1 FROM fly.reconcile_queue q WHERE q.user_id = retry_user_app.user_id) THEN
            RAISE EXCEPTION 'user % is not failed: work for them is already queued', user_id
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'See fly.pending_work and fly.get_user_fly_app_status().';
        END IF;
        RAISE EXCEPTION 'user % has nothing to retry: %', user_id,
            coalesce('their app is ' || v_status, 'pg_fly has no live app for them')
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Only failed apps can be retried; fly.provision_user_app() queues a user afresh.';
    END IF;
    BEGIN
        v_tier := fly._subscription_tier(user_id);
    EXCEPTION WHEN no_data_found THEN
        v_tier := NULL;  -- no subscription any more: the app goes away
    END;
    IF v_tier IS NOT NULL THEN
        SELECT p.dedicated_app INTO v_dedicated FROM fly.tier_policies p WHERE p.tier = v_tier;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'tier "%" of user % has no policy in fly.tier_policies', v_tier, user_id
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;
    INSERT INTO fly.user_fly_app_events (fly_app_id, user_id, event_type, status, details)
    SELECT a.id, a.user_id, 'retry_requested', a.status,
           jsonb_build_object('desired', CASE WHEN v_dedicated THEN 'present' ELSE 'absent' END, 'tier', v_tier)
      FROM fly.user_fly_apps a WHERE a.user_id = retry_user_app.user_id AND a.deleted_at IS NULL;
    PERFORM fly._enqueue_reconcile(user_id, CASE WHEN coalesce(v_dedicated, false) THEN 'present' ELSE 'absent' END,
                                   CASE WHEN coalesce(v_dedicated, false) THEN v_tier END, 'retry');
END $$;
COMMENT ON FUNCTION fly.retry_user_app(uuid) IS
    'Re-queues a failed user with fresh attempts toward what their tier says now (the manual retry button)';

--------------------------------------------------------------------------------------------------------------
-- Status and admin views
--------------------------------------------------------------------------------------------------------------
CREATE FUNCTION fly.get_user_fly_app_status(user_id uuid)
RETURNS TABLE (
    user_id uuid, fly_app_name text, fly_machine_id text, status text, health_status text, region text,
    tier text, monthly_cost_estimate_usd numeric, attempts integer, last_error text,
    pending_action text, pending_since timestamptz, created_at timestamptz, updated_at timestamptz,
    deleted_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH app AS (
        SELECT a.* FROM fly.user_fly_apps a
         WHERE a.user_id = $1
         ORDER BY a.deleted_at IS NULL DESC, a.created_at DESC, a.id DESC
         LIMIT 1
    )
    SELECT $1, app.fly_app_name, app.fly_machine_id, app.status, app.health_status, app.region,
           coalesce(q.tier, app.tier), app.monthly_cost_estimate_usd, coalesce(q.attempts, app.attempts),
           coalesce(q.last_error, app.last_error),
           CASE q.desired WHEN 'present' THEN 'provision' WHEN 'absent' THEN 'deprovision' END,
           q.enqueued_at, app.created_at, app.updated_at, app.deleted_at
      FROM (SELECT 1) AS one
      LEFT JOIN app ON true
      LEFT JOIN fly.reconcile_queue q ON q.user_id = $1
     WHERE app.id IS NOT NULL OR q.user_id IS NOT NULL
$$;
COMMENT ON FUNCTION fly.get_user_fly_app_status(uuid) IS
    'The user''s current (or last) app and any pending reconcile; no row if pg_fly never saw the user';

-- "View All User Apps" from the seed, without the application's user_profiles join.
CREATE VIEW fly.live_apps AS
SELECT a.user_id, a.fly_app_name, a.status, a.health_status, a.region, a.tier, a.fly_machine_id,
       a.monthly_cost_estimate_usd, a.last_health_check_at, a.created_at, a.updated_at
  FROM fly.user_fly_apps a
 WHERE a.deleted_at IS NULL;

-- "Check Recent Events" from the seed.
CREATE VIEW fly.recent_events AS
SELECT e.id, e.created_at, e.event_type, e.status, e.user_id, a.fly_app_name, e.details
  FROM fly.user_fly_app_events e
  LEFT JOIN fly.user_fly_apps a ON a.id = e.fly_app_id;

-- "Provision Success Rate" from the seed.
CREATE VIEW fly.provision_success_rate AS
SELECT count(*) FILTER (WHERE event_type = 'provision_completed') AS success,
       count(*) FILTER (WHERE event_type = 'provision_failed') AS failed,
       round(count(*) FILTER (WHERE event_type = 'provision_completed') * 100.0 / nullif(count(*), 0), 2)
           AS success_rate_pct
  FROM fly.user_fly_app_events
 WHERE event_type IN ('provision_completed', 'provision_failed');

-- The worker at a glance: queue, failures, breaker, rate-limit waits, last error, pid and uptime.
CREATE VIEW fly.worker_overview AS
SELECT w.pid, now() - w.started_at AS uptime, w.token_source,
       (SELECT count(*) FROM fly.reconcile_queue q WHERE q.claimed_at IS NULL AND q.run_after <= now()) AS pending,
       (SELECT count(*) FROM fly.reconcile_queue q WHERE q.claimed_at IS NOT NULL) AS in_progress,
       w.in_flight AS requests_in_flight,
       (SELECT count(*) FROM fly.reconcile_queue q WHERE q.claimed_at IS NULL AND q.run_after > now())
           AS waiting_for_retry,
       (SELECT min(q.run_after) FROM fly.reconcile_queue q WHERE q.claimed_at IS NULL AND q.run_after > now())
           AS next_retry_at,
       (SELECT count(*) FROM fly.user_fly_apps a WHERE a.status = 'failed' AND a.deleted_at IS NULL) AS failed,
       w.breaker_state, w.breaker_reopens_at, w.rate_limited AS requests_rate_limited,
       w.last_error, w.last_error_at
  FROM fly.worker_status() w;

-- What the worker has to do.
CREATE VIEW fly.pending_work AS
SELECT q.user_id, q.desired, q.tier, q.reason, q.attempts, q.run_after, q.claimed_at IS NOT NULL AS in_flight,
       q.last_error, q.enqueued_at, now() - q.enqueued_at AS waiting_for
  FROM fly.reconcile_queue q;

--------------------------------------------------------------------------------------------------------------
-- Cost: a price table kept as data, an estimate on every app row, running time from status changes.
--------------------------------------------------------------------------------------------------------------
-- Fly's preset prices per 30 days in the cheapest region (api-reference §7; check Fly's calculator and update).
CREATE TABLE fly.guest_prices (
    cpu_kind          text NOT NULL CHECK (cpu_kind IN ('shared', 'performance')),
    cpus              integer NOT NULL CHECK (cpus > 0),
    preset_memory_mb  integer NOT NULL CHECK (preset_memory_mb > 0),
    usd_per_30_days   numeric(10, 4) NOT NULL CHECK (usd_per_30_days >= 0),
    PRIMARY KEY (cpu_kind, cpus)
);
INSERT INTO fly.guest_prices VALUES
    ('shared', 1, 256, 1.94), ('shared', 2, 512, 3.88), ('shared', 4, 1024, 7.76), ('shared', 8, 2048, 15.52),
    ('performance', 1, 2048, 31.00), ('performance', 2, 4096, 62.00), ('performance', 4, 8192, 124.00),
    ('performance', 8, 16384, 248.00), ('performance', 16, 32768, 496.00);

-- Settings of the estimate: memory beyond the preset, and regional markups (regions not listed cost 1.0x).
CREATE TABLE fly.price_settings (
    singleton                boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    extra_memory_usd_per_gb  numeric(10, 4) NOT NULL DEFAULT 5.00 CHECK (extra_memory_usd_per_gb >= 0)
);
INSERT INTO fly.price_settings DEFAULT VALUES;
CREATE TABLE fly.region_price_multipliers (
    region     text PRIMARY KEY CHECK (region ~ '^[a-z0-9-]+$'),
    multiplier numeric(6, 4) NOT NULL CHECK (multiplier > 0)
);
-- sjc: shared-1x 256 MB costs $2.32 there against $1.94 baseline (api-reference §7).
INSERT INTO fly.region_price_multipliers VALUES ('sjc', 1.1959);

-- US dollars per 30 days for a started machine of this guest in this region; NULL when the guest has no price.
CREATE FUNCTION fly.monthly_cost_estimate(cpu_kind text, cpus integer, memory_mb integer, region text)
RETURNS numeric LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT round((p.usd_per_30_days
                  + greatest(0, $3 - p.preset_memory_mb) / 1024.0 * s.extra_memory_usd_per_gb)
                 * coalesce((SELECT m.multiplier FROM fly.region_price_multipliers m WHERE m.region = $4), 1.0), 2)
      FROM fly.guest_prices p, fly.price_settings s
     WHERE p.cpu_kind = $1 AND p.cpus = $2
$$;
COMMENT ON FUNCTION fly.monthly_cost_estimate(text, integer, integer, text) IS
    'USD per 30 days for a started machine: preset price + extra memory, times the region''s multiplier';

ALTER TABLE fly.user_fly_apps
    ADD COLUMN running_seconds       bigint NOT NULL DEFAULT 0 CHECK (running_seconds >= 0),
    ADD COLUMN running_since         timestamptz,
    ADD COLUMN month_running_seconds bigint NOT NULL DEFAULT 0 CHECK (month_running_seconds >= 0),
    ADD COLUMN month_start           date;

-- Keeps the estimate and the running time current from the row's own changes (the worker writes guest, region
-- and status; operators may too).
CREATE FUNCTION fly._track_app_cost() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    this_month date := date_trunc('month', now())::date;
    stint      bigint;
BEGIN
    IF TG_OP = 'INSERT' OR NEW.cpu_kind IS DISTINCT FROM OLD.cpu_kind OR NEW.cpus IS DISTINCT FROM OLD.cpus
       OR NEW.memory_mb IS DISTINCT FROM OLD.memory_mb OR NEW.region IS DISTINCT FROM OLD.region THEN
        NEW.monthly_cost_estimate_usd := fly.monthly_cost_estimate(NEW.cpu_kind, NEW.cpus, NEW.memory_mb, NEW.region);
    END IF;
    IF NEW.month_start IS DISTINCT FROM this_month THEN
        NEW.month_start := this_month;
        NEW.month_running_seconds := 0;
    END IF;
    IF NEW.status = 'active' AND NEW.running_since IS NULL THEN
        NEW.running_since := now();
    ELSIF NEW.status <> 'active' AND NEW.running_since IS NOT NULL THEN
        stint := floor(extract(epoch FROM now() - NEW.running_since));
        NEW.running_seconds := NEW.running_seconds + stint;
        NEW.month_running_seconds := NEW.month_running_seconds
            + floor(extract(epoch FROM now() - greatest(NEW.running_since, this_month::timestamptz)));
        NEW.running_since := NULL;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER user_fly_apps_cost BEFORE INSERT OR UPDATE ON fly.user_fly_apps
    FOR EACH ROW EXECUTE FUNCTION fly._track_app_cost();

-- Cost by tier and region, and in total (tier and region NULL): month to date and projected to month's end.
CREATE VIEW fly.cost_summary AS
WITH apps AS (
    SELECT a.tier, a.region, a.monthly_cost_estimate_usd AS per_30_days,
           coalesce(CASE WHEN a.month_start = date_trunc('month', now())::date THEN a.month_running_seconds END, 0)
           + CASE WHEN a.running_since IS NOT NULL
                  THEN extract(epoch FROM now() - greatest(a.running_since, date_trunc('month', now())))
                  ELSE 0 END AS seconds_this_month,
           a.running_since IS NOT NULL AS running,
           a.deleted_at IS NULL AS live
      FROM fly.user_fly_apps a
     WHERE a.deleted_at IS NULL OR a.deleted_at >= date_trunc('month', now())
), rated AS (
    SELECT tier, region, live, running, per_30_days,
           coalesce(per_30_days, 0) / (30 * 86400.0) AS per_second, seconds_this_month
      FROM apps
)
SELECT tier, region,
       count(*) FILTER (WHERE live) AS live_apps,
       count(*) FILTER (WHERE running) AS running_apps,
       round(sum(per_30_days) FILTER (WHERE live), 2) AS monthly_estimate_usd,
       round(sum(per_second * seconds_this_month), 2) AS month_to_date_usd,
       round(sum(per_second * seconds_this_month)
             + sum(per_second * extract(epoch FROM date_trunc('month', now()) + interval '1 month' - now()))
               FILTER (WHERE running), 2) AS projected_month_usd
  FROM rated
 GROUP BY GROUPING SETS ((tier, region), ());
COMMENT ON VIEW fly.cost_summary IS
    'Dedicated-app cost by tier and region, and in total (the row with NULL tier and region)';

SELECT pg_catalog.pg_extension_config_dump('fly.guest_prices', '');
SELECT pg_catalog.pg_extension_config_dump('fly.price_settings', '');
SELECT pg_catalog.pg_extension_config_dump('fly.region_price_multipliers', '');

--------------------------------------------------------------------------------------------------------------
-- Real-time status for dashboards: every status or health change of an app, as JSON on channel pg_fly_status.
--------------------------------------------------------------------------------------------------------------
CREATE FUNCTION fly._notify_status_change() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_notify('pg_fly_status', json_build_object(
        'user_id', NEW.user_id, 'fly_app_name', NEW.fly_app_name, 'status', NEW.status,
        'previous_status', CASE WHEN TG_OP = 'UPDATE' THEN OLD.status END,
        'health_status', NEW.health_status,
        'previous_health_status', CASE WHEN TG_OP = 'UPDATE' THEN OLD.health_status END,
        'at', now())::text);
    RETURN NULL;
END $$;
CREATE TRIGGER user_fly_apps_notify_insert AFTER INSERT ON fly.user_fly_apps
    FOR EACH ROW EXECUTE FUNCTION fly._notify_status_change();
CREATE TRIGGER user_fly_apps_notify_update AFTER UPDATE OF status, health_status ON fly.user_fly_apps
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.health_status IS DISTINCT FROM NEW.health_status)
    EXECUTE FUNCTION fly._notify_status_change();

--------------------------------------------------------------------------------------------------------------
-- Onboarding existing users (the seed's migration script): queue everyone whose tier needs an app and who has
-- none. The worker's rate limiter paces the work; the queue makes it resumable across restarts.
--------------------------------------------------------------------------------------------------------------
CREATE FUNCTION fly.onboard_existing_users(dry_run boolean DEFAULT true)
RETURNS TABLE (user_id uuid, tier text, queued boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    src fly.tier_source;
BEGIN
    src := fly._tier_source();
    FOR user_id, tier IN EXECUTE format(
        'SELECT s.%1$I::uuid, s.%2$I::text FROM %3$s s '
        'JOIN fly.tier_policies p ON p.tier = s.%2$I::text AND p.dedicated_app '
        'WHERE s.%1$I IS NOT NULL '
        'AND NOT EXISTS (SELECT 1 FROM fly.user_fly_apps a WHERE a.user_id = s.%1$I::uuid AND a.deleted_at IS NULL '
        '                AND a.status <> ''failed'') '
        'AND NOT EXISTS (SELECT 1 FROM fly.reconcile_queue q WHERE q.user_id = s.%1$I::uuid) '
        'ORDER BY 1', src.user_column, src.tier_column, src.table_name)
    LOOP
        IF NOT dry_run THEN
            PERFORM fly._enqueue_reconcile(user_id, 'present', tier, 'onboarding');
        END IF;
        queued := NOT dry_run;
        RETURN NEXT;
    END LOOP;
END $$;
COMMENT ON FUNCTION fly.onboard_existing_users(boolean) IS
    'Users whose tier needs an app and who have none; with dry_run => false they are queued';

-- The design card's spelling: SELECT provision_user_app(); queues every user who needs an app and has none.
CREATE FUNCTION fly.provision_user_app() RETURNS bigint
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT count(*) FROM fly.onboard_existing_users(dry_run => false)
$$;
COMMENT ON FUNCTION fly.provision_user_app() IS
    'Queues every user whose tier needs an app and who has none (onboarding); returns how many';

--------------------------------------------------------------------------------------------------------------
-- Health checks: the worker checks every active app each fly.health_check_interval; this runs a pass now.
--------------------------------------------------------------------------------------------------------------
CREATE FUNCTION fly._request_health_pass() RETURNS void
    LANGUAGE c AS 'MODULE_PATHNAME', '_request_health_pass';

CREATE FUNCTION fly.check_fly_apps_health() RETURNS bigint
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT fly._request_health_pass();
    SELECT count(*) FROM fly.user_fly_apps WHERE deleted_at IS NULL AND status = 'active';
$$;
COMMENT ON FUNCTION fly.check_fly_apps_health() IS
    'Asks the worker for a health pass over every active app once this transaction commits; returns how many';

--------------------------------------------------------------------------------------------------------------
-- Orphans: apps in the organization with pg_fly's prefix that no live row owns (left by a lost database, a
-- restore, a manual create). Reported; deleted only when asked.
--------------------------------------------------------------------------------------------------------------
CREATE TABLE fly.orphan_apps (
    fly_app_name     text PRIMARY KEY,
    fly_org_slug     text NOT NULL,
    fly_app_id       text,
    found_at         timestamptz NOT NULL DEFAULT now(),
    last_seen_at     timestamptz NOT NULL DEFAULT now(),
    delete_requested boolean NOT NULL DEFAULT false,
    deleted_at       timestamptz,          -- deleted by pg_fly, or gone from Fly
    last_error       text
);
SELECT pg_catalog.pg_extension_config_dump('fly.orphan_apps', '');

CREATE FUNCTION fly._request_orphan_pass() RETURNS void
    LANGUAGE c AS 'MODULE_PATHNAME', '_request_orphan_pass';

CREATE FUNCTION fly.find_orphan_apps() RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT fly._request_orphan_pass();
$$;
COMMENT ON FUNCTION fly.find_orphan_apps() IS
    'Asks the worker to list the organization''s apps and record those with pg_fly''s prefix that no live row owns '
    '(see fly.orphan_apps)';

CREATE FUNCTION fly.delete_orphan_apps(app_name text DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    marked bigint;
BEGIN
    UPDATE fly.orphan_apps o SET delete_requested = true
     WHERE o.deleted_at IS NULL AND (app_name IS NULL OR o.fly_app_name = app_name);
    GET DIAGNOSTICS marked = ROW_COUNT;
    IF app_name IS NOT NULL AND marked = 0 THEN
        RAISE EXCEPTION 'no reported orphan app is named "%"', app_name
            USING ERRCODE = 'no_data_found', HINT = 'Run SELECT fly.find_orphan_apps() and see fly.orphan_apps.';
    END IF;
    PERFORM fly._request_orphan_pass();
    RETURN marked;
END $$;
COMMENT ON FUNCTION fly.delete_orphan_apps(text) IS
    'Marks one reported orphan app (or all) for deletion; the worker deletes them after checking again that no '
    'live row owns them';

--------------------------------------------------------------------------------------------------------------
-- Privileges: functions are executable by PUBLIC by default; take that back from everything here.
--------------------------------------------------------------------------------------------------------------
REVOKE ALL ON ALL TABLES IN SCHEMA fly FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA fly FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA fly FROM PUBLIC;

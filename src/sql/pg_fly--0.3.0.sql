-- pg_fly 0.3.0: schema fly, installed in one step. Loaded by CREATE EXTENSION pg_fly (PostgreSQL prefers this
-- script to the chain 0.1.0 → 0.2.0 → 0.3.0). An installation of an earlier version gets the same schema from
-- ALTER EXTENSION pg_fly UPDATE, and test/integration/test_upgrade.py holds the two equal, fact by fact.
-- Hence three rules for this file:
-- - Columns that a release added come last in their table, in the order the upgrade scripts add them, so that
--   SELECT * and COPY see the same columns in both installations.
-- - A function's body is the text of its last definition in the upgrade scripts, byte for byte (the catalog keeps
--   it as written, and the test compares it).
-- - Privileges are what the updated schema holds: PUBLIC gets nothing anywhere.
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
    -- 0.3.0: regions tried in order when the policy's region has no capacity for a new machine (codes checked
    -- like region's). Last, as ALTER EXTENSION UPDATE adds it.
    fallback_regions text[] NOT NULL DEFAULT '{}'
        CONSTRAINT tier_policies_fallback_regions CHECK (
            cardinality(fallback_regions) = 0
            OR (array_ndims(fallback_regions) = 1 AND array_position(fallback_regions, NULL) IS NULL
                AND array_to_string(fallback_regions, ',') ~ '^[a-z0-9-]+(,[a-z0-9-]+)*$')),
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
COMMENT ON COLUMN fly.tier_policies.fallback_regions IS
    'Regions tried in order when the policy''s region has no capacity for a new machine';

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
           memory_mb = NEW.memory_mb, region = NEW.region, fallback_regions = NEW.fallback_regions,
           updated_at = now()
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
    -- Added by later releases, last and in this order as ALTER EXTENSION UPDATE adds them.
    -- Cost (0.1.0's cost section): running time, kept by fly._track_app_cost().
    running_seconds           bigint NOT NULL DEFAULT 0 CHECK (running_seconds >= 0),
    running_since             timestamptz,
    month_running_seconds     bigint NOT NULL DEFAULT 0 CHECK (month_running_seconds >= 0),
    month_start               date,
    -- 0.3.0, consistency after create: when pg_fly created (or first adopted) the app and created the recorded
    -- machine. For fly.create_settle_time after either, a 404 or 401 under it is asked again rather than believed,
    -- also by an operation that starts after a worker restart, and by the health pass.
    fly_app_created_at        timestamptz CHECK (isfinite(fly_app_created_at)),
    fly_machine_created_at    timestamptz CHECK (isfinite(fly_machine_created_at)),
    -- 0.3.0, secrets that change: the keyed digest of the secrets set the machine runs with, and the names last set.
    secrets_digest            text CHECK (secrets_digest ~ '^[0-9a-f]{64}$'),
    secret_names              text[],
    -- 0.3.0, deletion: set when a DELETE of the app is about to be sent. Fly deletes asynchronously, so from then
    -- on the app may be dying and is never reused; the row is marked deleted only once Fly answers 404 for it.
    delete_requested_at       timestamptz,
    CONSTRAINT user_fly_apps_deleted_at CHECK ((status = 'deleted') = (deleted_at IS NOT NULL))
);
CREATE UNIQUE INDEX user_fly_apps_one_live_per_user ON fly.user_fly_apps (user_id)
    WHERE deleted_at IS NULL;
CREATE UNIQUE INDEX user_fly_apps_live_name ON fly.user_fly_apps (fly_app_name)
    WHERE deleted_at IS NULL;
CREATE INDEX user_fly_apps_created_at ON fly.user_fly_apps (created_at);
COMMENT ON TABLE fly.user_fly_apps IS 'One row per dedicated Fly app lifecycle (provisioning to deleted)';
COMMENT ON COLUMN fly.user_fly_apps.fly_app_created_at IS
    'When pg_fly created this app on Fly, or first asked to (a create whose answer was lost may still take effect)';
COMMENT ON COLUMN fly.user_fly_apps.fly_machine_created_at IS
    'When pg_fly created the recorded machine; NULL when the machine was found rather than created';
COMMENT ON COLUMN fly.user_fly_apps.secrets_digest IS
    'HMAC-SHA-256 (hex, keyed with fly.secrets_digest_key) of the whole secrets set the app''s machine was last '
    'created or updated with; never a value';
COMMENT ON COLUMN fly.user_fly_apps.secret_names IS 'The secret names pg_fly last set on the app (names only)';
COMMENT ON COLUMN fly.user_fly_apps.delete_requested_at IS
    'When pg_fly recorded a DELETE of this app as sent (NULL: never, or the name is in use again)';

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
-- The tier-change log (issue 16). The subscription trigger appends one row per change here, in the
-- application's transaction: a heap insert into a table without any index, the cheapest durable write. The
-- worker folds the rows into fly.reconcile_queue in batches, in seq order (fly.fold_intents() does it on demand);
-- every other writer of a user's queue item folds that user's rows first. seq is taken after the subscription
-- row's lock, so a row's changes are in commit order. No index, constraint or trigger may be added: the trigger
-- would then write the queue itself, as before 0.3.0.
--------------------------------------------------------------------------------------------------------------
CREATE SEQUENCE fly.tier_intents_seq;
CREATE TABLE fly.tier_intents (
    seq     bigint NOT NULL,
    user_id uuid NOT NULL,
    kind    "char" NOT NULL,
    tier    text,
    reason  text NOT NULL,
    at      timestamptz NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000);
COMMENT ON TABLE fly.tier_intents IS
    'Tier changes the subscription trigger logged and the worker has not folded into fly.reconcile_queue yet '
    '(kind p: present, a: absent, r: the tier renamed between two with the same policy)';
-- A publication of every table (logical replication, change data capture) must not refuse the fold's DELETE:
-- without an index, the whole row identifies it.
ALTER TABLE fly.tier_intents REPLICA IDENTITY FULL;
REVOKE ALL ON fly.tier_intents FROM PUBLIC;
REVOKE ALL ON SEQUENCE fly.tier_intents_seq FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('fly.tier_intents', '');
SELECT pg_catalog.pg_extension_config_dump('fly.tier_intents_seq', '');

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

-- The worker's state from shared memory; `database` is the database it works in (shared memory is cluster-wide,
-- the queue is per database).
CREATE FUNCTION fly.worker_status(
    OUT pid integer, OUT started_at timestamptz, OUT commit_wakes bigint, OUT timer_wakes bigint,
    OUT iterations bigint, OUT last_wake_at timestamptz, OUT queue_ready bigint, OUT token_source text,
    OUT in_flight integer, OUT rate_limited integer, OUT breaker_state text, OUT breaker_reopens_at timestamptz,
    OUT last_error text, OUT last_error_at timestamptz, OUT database text, OUT work_commits bigint,
    OUT wakes_sent bigint)
    RETURNS record LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'worker_status';

CREATE FUNCTION fly._guard_selftest(kind text) RETURNS text
    LANGUAGE c AS 'MODULE_PATHNAME', '_guard_selftest';

--------------------------------------------------------------------------------------------------------------
-- Reading the subscription table safely. The application's subscription table belongs to an ordinary role,
-- which decides what reading it runs: casts and domain checks of its column types, a view's rules, RLS
-- policies, index and statistics expressions the planner folds, foreign partitions. pg_fly's SECURITY DEFINER
-- functions (the extension owner's rights) read it only through fly._subscription_rows(), which checks the
-- table at every call and reads it as its owner inside a security-restricted operation, through the types'
-- output functions.
--------------------------------------------------------------------------------------------------------------
CREATE FUNCTION fly._check_tier_source(tbl regclass, user_column name, tier_column name) RETURNS void
    LANGUAGE c AS 'MODULE_PATHNAME', '_check_tier_source';
CREATE FUNCTION fly._subscription_rows(tbl regclass, user_column name, tier_column name, user_id uuid)
RETURNS TABLE (user_id text, tier text)
    LANGUAGE c AS 'MODULE_PATHNAME', '_subscription_rows';
REVOKE ALL ON FUNCTION fly._check_tier_source(regclass, name, name),
    fly._subscription_rows(regclass, name, name, uuid) FROM PUBLIC;

-- pg_fly's state-changing SECURITY DEFINER functions refuse to run inside a security-restricted operation: there
-- they would be called by code a table's owner chose, on a superuser's behalf (and session_user would name the
-- superuser). fly._enqueue_reconcile() and the worker wake-up requests check it too.
CREATE FUNCTION fly._refuse_in_restricted_operation() RETURNS void
    LANGUAGE c AS 'MODULE_PATHNAME', '_refuse_in_restricted_operation';
REVOKE ALL ON FUNCTION fly._refuse_in_restricted_operation() FROM PUBLIC;

-- A relation's name for DDL, schema-qualified and quoted (regclass output depends on the search_path).
CREATE FUNCTION fly._relation_name(tbl regclass) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT format('%I.%I', n.nspname, c.relname)
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1
$$;
REVOKE ALL ON FUNCTION fly._relation_name(regclass) FROM PUBLIC;

-- Whether a subscription's user id is a uuid, and which: the trigger's own rule (what uuid_in reads: braces, any
-- case, a dash after any group of four digits), NULL for anything else, never an error. All of pg_fly's SQL that
-- decides "is a uuid" asks this.
-- Not STRICT: the planner would fold a call with a NULL constant without checking EXECUTE.
CREATE FUNCTION fly._as_uuid(user_id text) RETURNS uuid
    LANGUAGE c IMMUTABLE PARALLEL SAFE AS 'MODULE_PATHNAME', '_as_uuid';
REVOKE ALL ON FUNCTION fly._as_uuid(text) FROM PUBLIC;

--------------------------------------------------------------------------------------------------------------
-- Attaching the trigger to the application's subscription table
--------------------------------------------------------------------------------------------------------------
-- pg_fly's triggers are found by their function, not their name: the table's owner may rename them, and a
-- partition detached from the table keeps its clone. Cloned triggers go with their parent.
-- Removes pg_fly's triggers from every table, found by function (a renamed one too), and takes back EXECUTE on
-- the row trigger from every table owner it was granted to. A table whose owner holds a lock on it is skipped
-- with a warning after lock_timeout instead of blocking the superuser: the trigger does nothing there anyway.
CREATE FUNCTION fly._drop_tier_triggers() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET lock_timeout = '5s' AS $$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT tg.tgname, tg.tgrelid FROM pg_trigger tg
              WHERE tg.tgfoid IN ('fly.on_user_tier_change()'::regprocedure, 'fly.on_user_tier_truncate()'::regprocedure)
                AND NOT tg.tgisinternal AND tg.tgparentid = 0
    LOOP
        BEGIN
            EXECUTE format('DROP TRIGGER %I ON %s', t.tgname, fly._relation_name(t.tgrelid));
        EXCEPTION WHEN lock_not_available THEN
            RAISE WARNING 'pg_fly could not remove trigger "%" from %: the table is locked', t.tgname,
                          fly._relation_name(t.tgrelid)
                USING HINT = 'It does nothing there. Drop it when the table is free: DROP TRIGGER ... ON ...;';
        END;
    END LOOP;
    FOR t IN SELECT DISTINCT a.grantee::regrole AS grantee
               FROM pg_proc p, aclexplode(p.proacl) a
              WHERE p.oid = 'fly.on_user_tier_change()'::regprocedure
                AND a.grantee <> p.proowner AND a.grantee <> 0
    LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION fly.on_user_tier_change() FROM %s', t.grantee);
    END LOOP;
END $$;
REVOKE ALL ON FUNCTION fly._drop_tier_triggers() FROM PUBLIC;

-- TRUNCATE fires no row triggers: a truncated subscription table leaves nobody with a tier, so every user with
-- a live or queued app is queued for teardown. Only the attached table (or a partition of it) does that.
CREATE FUNCTION fly.on_user_tier_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM fly.tier_source s
                    WHERE s.table_name = TG_RELID
                       OR s.table_name IN (SELECT a.relid FROM pg_partition_ancestors(TG_RELID) a)) THEN
        RAISE WARNING 'pg_fly trigger "%" on "%" ignored this TRUNCATE: the table is not the subscription table '
                      'pg_fly is attached to', TG_NAME, TG_TABLE_NAME
            USING HINT = 'Drop the trigger, or attach this table with fly.attach_tier_trigger().';
        RETURN NULL;
    END IF;
    PERFORM fly.fold_intents();  -- the changes logged before the TRUNCATE count
    PERFORM fly._enqueue_reconcile(u.user_id, 'absent', NULL, 'truncate')
       FROM (SELECT a.user_id FROM fly.user_fly_apps a WHERE a.deleted_at IS NULL
             UNION SELECT q.user_id FROM fly.reconcile_queue q WHERE q.desired = 'present') AS u;
    RETURN NULL;
END $$;

-- pg_fly's worker works in fly.database_name only: a subscription table elsewhere queues work nobody does.
-- NULL when the caller may not read the setting (pg_settings hides it).
CREATE FUNCTION fly._warn_if_not_worker_database(what text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    worker_database text := (SELECT s.setting FROM pg_settings s WHERE s.name = 'fly.database_name');
BEGIN
    IF worker_database IS NOT NULL AND worker_database <> current_database() THEN
        RAISE WARNING 'pg_fly''s worker works in database "%", not in "%": % here is never provisioned',
            worker_database, current_database(), what
            USING HINT = format('Set fly.database_name = %L in postgresql.conf and restart the server, or use '
                                'pg_fly in database %I.', current_database(), worker_database);
    END IF;
END $$;
REVOKE ALL ON FUNCTION fly._warn_if_not_worker_database(text) FROM PUBLIC;

DO $$ BEGIN PERFORM fly._warn_if_not_worker_database('work queued'); END $$;
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
    -- The tier column's type, partitions and children: what pg_fly's functions check again at every read.
    PERFORM fly._check_tier_source(tbl, user_column, tier_column);
    PERFORM fly._warn_if_not_worker_database('a tier change');

    SELECT s.table_name INTO previous FROM fly.tier_source s;
    IF previous IS NOT NULL AND previous <> tbl THEN
        RAISE NOTICE 'pg_fly now watches % instead of %', tbl, previous;
    END IF;
    PERFORM fly._drop_tier_triggers();
    EXECUTE format('CREATE TRIGGER on_user_tier_change AFTER INSERT OR UPDATE OF %I, %I OR DELETE ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION fly.on_user_tier_change(%L, %L)',
                   user_column, tier_column, fly._relation_name(tbl), user_column, tier_column);
    EXECUTE format('CREATE TRIGGER on_user_tier_truncate AFTER TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION fly.on_user_tier_truncate()', fly._relation_name(tbl));
    INSERT INTO fly.tier_source (table_name, user_column, tier_column)
    VALUES (tbl, user_column, tier_column)
    ON CONFLICT (singleton) DO UPDATE
       SET table_name = excluded.table_name, user_column = excluded.user_column,
           tier_column = excluded.tier_column, attached_at = now();
    -- Creating or attaching a partition clones the row trigger, which needs EXECUTE on its function. The
    -- trigger does nothing on any table but this one and its partitions, so the owner gains nothing else.
    EXECUTE format('GRANT EXECUTE ON FUNCTION fly.on_user_tier_change() TO %I',
                   (SELECT r.rolname FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner WHERE c.oid = tbl));
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
    PERFORM fly._drop_tier_triggers();
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
    src   fly.tier_source;
    tiers text[];
BEGIN
    src := fly._tier_source();
    SELECT array_agg(s.tier) INTO tiers
      FROM fly._subscription_rows(src.table_name, src.user_column, src.tier_column, p_user_id) s;
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
    -- After the enqueue (which clears the record): drift leaves the user alone until their tier changes again.
    INSERT INTO fly.manual_teardowns AS t (user_id) VALUES (deprovision_user_app.user_id)
    ON CONFLICT ON CONSTRAINT manual_teardowns_pkey DO UPDATE SET since = pg_catalog.now();
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
    ),
    -- The user's last logged change of desired state, and last logged tier (a relabel renames it).
    changed AS (
        SELECT i.kind, i.at FROM fly.tier_intents i WHERE i.user_id = $1 AND i.kind <> 'r' ORDER BY i.seq DESC LIMIT 1
    ),
    renamed AS (
        SELECT i.kind, i.tier FROM fly.tier_intents i WHERE i.user_id = $1 ORDER BY i.seq DESC LIMIT 1
    )
    SELECT $1, app.fly_app_name, app.fly_machine_id, app.status, app.health_status, app.region,
           CASE WHEN renamed.kind IS NOT NULL THEN renamed.tier ELSE coalesce(q.tier, app.tier) END,
           app.monthly_cost_estimate_usd,
           CASE WHEN changed.kind IS NOT NULL THEN 0 ELSE coalesce(q.attempts, app.attempts) END,
           CASE WHEN changed.kind IS NOT NULL THEN NULL ELSE coalesce(q.last_error, app.last_error) END,
           CASE coalesce(CASE changed.kind WHEN 'p' THEN 'present' WHEN 'a' THEN 'absent' END, q.desired)
               WHEN 'present' THEN 'provision' WHEN 'absent' THEN 'deprovision' END,
           coalesce(q.enqueued_at, changed.at), app.created_at, app.updated_at, app.deleted_at
      FROM (SELECT 1) AS one
      LEFT JOIN app ON true
      LEFT JOIN fly.reconcile_queue q ON q.user_id = $1
      LEFT JOIN changed ON true
      LEFT JOIN renamed ON true
     WHERE app.id IS NOT NULL OR q.user_id IS NOT NULL OR renamed.kind IS NOT NULL
$$;
COMMENT ON FUNCTION fly.get_user_fly_app_status(uuid) IS
    'The user''s current (or last) app and any pending reconcile; no row if pg_fly never saw the user';

-- "View All User Apps" from the seed, without the application's user_profiles join.
CREATE VIEW fly.live_apps AS
SELECT a.user_id, a.fly_app_name, a.status, a.health_status, a.region, a.tier, a.fly_machine_id,
       a.monthly_cost_estimate_usd, a.last_health_check_at, a.created_at, a.updated_at, a.id AS app_row_id
  FROM fly.user_fly_apps a
 WHERE a.deleted_at IS NULL;

-- "Check Recent Events" from the seed.
CREATE VIEW fly.recent_events AS
SELECT e.id, e.created_at, e.event_type, e.status, e.user_id, a.fly_app_name, e.details,
       e.fly_app_id AS app_row_id
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

-- The worker at a glance: queue, failures, breaker, rate-limit waits, last error, pid, uptime, database.
CREATE VIEW fly.worker_overview AS
SELECT w.pid, now() - w.started_at AS uptime, w.token_source,
       (SELECT count(*) FROM fly.reconcile_queue q WHERE q.claimed_at IS NULL AND q.run_after <= now())
           AS pending,
       (SELECT count(*) FROM fly.reconcile_queue q WHERE q.claimed_at IS NOT NULL) AS in_progress,
       w.in_flight AS requests_in_flight,
       (SELECT count(*) FROM fly.reconcile_queue q WHERE q.claimed_at IS NULL AND q.run_after > now())
           AS waiting_for_retry,
       (SELECT min(q.run_after) FROM fly.reconcile_queue q WHERE q.claimed_at IS NULL AND q.run_after > now())
           AS next_retry_at,
       (SELECT count(*) FROM fly.user_fly_apps a WHERE a.status = 'failed' AND a.deleted_at IS NULL) AS failed,
       w.breaker_state, w.breaker_reopens_at, w.rate_limited AS requests_rate_limited,
       w.last_error, w.last_error_at, w.database
  FROM fly.worker_status() w;

-- What the worker has to do.
CREATE VIEW fly.pending_work AS
SELECT q.user_id, q.desired, q.tier, q.reason, q.attempts, q.run_after, q.claimed_at IS NOT NULL AS in_flight,
       q.last_error, q.enqueued_at, now() - q.enqueued_at AS waiting_for
  FROM fly.reconcile_queue q
UNION ALL
SELECT i.user_id, CASE WHEN i.kind = 'a' THEN 'absent' ELSE 'present' END, i.tier, i.reason, 0, i.at, false,
       NULL, i.at, now() - i.at
  FROM fly.tier_intents i;

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

-- The running-time columns are in fly.user_fly_apps above (running_seconds, running_since, month_running_seconds,
-- month_start).
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
-- Only when what it reads changes: a tier relabel (the subscription trigger's pro -> elite with equal policies)
-- does not pay for it.
CREATE TRIGGER user_fly_apps_cost
    BEFORE INSERT OR UPDATE OF cpu_kind, cpus, memory_mb, region, status, running_since, month_start
    ON fly.user_fly_apps
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
-- LISTEN takes no privilege: unless fly.notify_payload = full, a notification carries only what a role without
-- grants may see, and the row ids a granted role looks the rest up by (fly.live_apps and fly.recent_events show
-- the app row's id).
--------------------------------------------------------------------------------------------------------------
CREATE FUNCTION fly._notify_status_change() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    payload jsonb := jsonb_build_object(
        'app_row_id', NEW.id, 'status', NEW.status,
        'previous_status', CASE WHEN TG_OP = 'UPDATE' THEN OLD.status END,
        'health_status', NEW.health_status,
        'previous_health_status', CASE WHEN TG_OP = 'UPDATE' THEN OLD.health_status END,
        'at', now());
BEGIN
    IF current_setting('fly.notify_payload', true) IS NOT DISTINCT FROM 'full' THEN
        payload := payload || jsonb_build_object('user_id', NEW.user_id, 'fly_app_name', NEW.fly_app_name);
    END IF;
    PERFORM pg_notify('pg_fly_status', payload::text);
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
-- Paid-tier subscription rows whose user id is not a uuid (onboarding skips them), read as the table's owner:
-- a query on the table itself, run by a superuser, would run whatever code its owner chose.
CREATE FUNCTION fly.unusable_subscriptions() RETURNS TABLE (user_id text, tier text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    src fly.tier_source;
BEGIN
    src := fly._tier_source();
    -- "Is a uuid" as the trigger decides it (fly._as_uuid), so this agrees with fly.needs_attention.
    RETURN QUERY
    SELECT r.user_id, r.tier
      FROM fly._subscription_rows(src.table_name, src.user_column, src.tier_column, NULL) r
      JOIN fly.tier_policies p ON p.tier = r.tier AND p.dedicated_app
     WHERE r.user_id IS NOT NULL AND fly._as_uuid(r.user_id) IS NULL;
END $$;
REVOKE ALL ON FUNCTION fly.unusable_subscriptions() FROM PUBLIC;
COMMENT ON FUNCTION fly.unusable_subscriptions() IS
    'Paid-tier subscription rows whose user id is not a uuid: onboarding skips them';

-- The dry run also says which app each user would get and what happens to a machine the previous system left
-- there. SQL does not call Fly: what the organization holds is known only from the last orphan pass
-- (fly.find_orphan_apps(), which lists the apps of pg_fly's prefix no live row owns).
-- The body keeps the indentation it has in pg_fly--0.2.0--0.3.0.sql, where it sits in a DO block: the catalog
-- stores a body as written, and an updated installation must hold the same text.
CREATE FUNCTION fly.onboard_existing_users(dry_run boolean DEFAULT true)
RETURNS TABLE (user_id uuid, tier text, queued boolean, app_name text, on_fly text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
    DECLARE
        src fly.tier_source;
        skipped bigint;
        seen timestamptz;
    BEGIN
        PERFORM fly._refuse_in_restricted_operation();
        src := fly._tier_source();
        SELECT count(*) INTO skipped FROM fly.unusable_subscriptions();
        IF skipped > 0 THEN
            RAISE WARNING '% subscription row(s) on a paid tier have a user id that is not a uuid; they are skipped',
                skipped USING HINT = 'Find them with: SELECT * FROM fly.unusable_subscriptions();';
        END IF;
        -- Paid-tier subscriptions; uid is NULL for an id that is not a uuid (fly._as_uuid, the trigger's rule: it
        -- never fails, wherever the planner evaluates it).
        FOR user_id, tier IN
            SELECT s.uid, s.tier
              FROM (SELECT fly._as_uuid(r.user_id) AS uid, r.tier
                      FROM fly._subscription_rows(src.table_name, src.user_column, src.tier_column, NULL) r
                      JOIN fly.tier_policies p ON p.tier = r.tier AND p.dedicated_app) s
             WHERE s.uid IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM fly.user_fly_apps a WHERE a.user_id = s.uid AND a.deleted_at IS NULL
                               AND a.status <> 'failed')
               AND NOT EXISTS (SELECT 1 FROM fly.reconcile_queue q WHERE q.user_id = s.uid)
               AND NOT EXISTS (SELECT 1 FROM fly.manual_teardowns t WHERE t.user_id = s.uid)
             ORDER BY 1
        LOOP
            IF NOT dry_run THEN
                PERFORM fly._enqueue_reconcile(user_id, 'present', tier, 'onboarding');
            END IF;
            queued := NOT dry_run;
            -- The worker's choice: the user's live (failed) row's name, else (FirstFreeNameAttempt) the first
            -- candidate no other user's live app holds.
            SELECT a.fly_app_name INTO app_name FROM fly.user_fly_apps a
             WHERE a.user_id = onboard_existing_users.user_id AND a.deleted_at IS NULL;
            IF app_name IS NULL THEN
                SELECT c.name INTO app_name
                  FROM generate_series(0, 12) n, LATERAL (SELECT fly.app_name_for(user_id, n) AS name) c
                 WHERE c.name IS NOT NULL
                   AND NOT EXISTS (SELECT 1 FROM fly.user_fly_apps a WHERE a.deleted_at IS NULL
                                      AND a.fly_app_name = c.name AND a.user_id <> onboard_existing_users.user_id)
                 ORDER BY n LIMIT 1;
            END IF;
            SELECT o.last_seen_at INTO seen FROM fly.orphan_apps o
             WHERE o.fly_app_name = onboard_existing_users.app_name AND o.deleted_at IS NULL;
            on_fly := CASE
                WHEN seen IS NOT NULL THEN format(
                    'the app exists (orphan pass of %s): it is reused, and its machine whose env USER_ID is this user '
                    'is adopted (machine_adopted) instead of a second one being created', seen)
                ELSE 'not checked: SQL does not call Fly (run fly.find_orphan_apps() first to see the organization''s '
                     'apps); if the app exists it is reused, and its machine whose env USER_ID is this user is '
                     'adopted (machine_adopted) instead of a second one being created' END;
            RETURN NEXT;
        END LOOP;
    END $fn$;
COMMENT ON FUNCTION fly.onboard_existing_users(boolean) IS
    'Users whose tier needs an app and who have none, the app each would get and what happens on Fly; with '
    'dry_run => false they are queued';

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
-- Adopting the previous system's apps (0.3.0)
-- Users moved over from the previous system have an app of pg_fly's name whose machine carries their id in its
-- env (USER_ID) but none of pg_fly's metadata. Provisioning adopts that machine (machine_adopted) instead of
-- creating a second one. A machine found in a user's app that belongs to nobody (another USER_ID, or none) is
-- reported here, with an orphan_machine_found event the first time, and deleted only when asked. Provisioning
-- finds them when it reads an app's whole machine list; so does the orphan pass (fly.find_orphan_apps()), for
-- every live app.
--------------------------------------------------------------------------------------------------------------
CREATE TABLE fly.orphan_machines (
    fly_app_name     text NOT NULL,
    fly_machine_id   text NOT NULL,
    user_id_env      text,                 -- the machine's env USER_ID; NULL when it has none
    app_user_id      uuid,                 -- the user whose app it was found in
    found_at         timestamptz NOT NULL DEFAULT now(),
    last_seen_at     timestamptz NOT NULL DEFAULT now(),
    delete_requested boolean NOT NULL DEFAULT false,
    deleted_at       timestamptz,          -- deleted by pg_fly, or gone from Fly
    last_error       text,
    PRIMARY KEY (fly_app_name, fly_machine_id)
);
SELECT pg_catalog.pg_extension_config_dump('fly.orphan_machines', '');
COMMENT ON TABLE fly.orphan_machines IS
    'Machines found in a user''s app that belong to nobody (neither pg_fly''s metadata nor the env''s USER_ID names '
    'the user); left running until fly.delete_orphan_machines() asks for their deletion';

CREATE FUNCTION fly.delete_orphan_machines(app_name text DEFAULT NULL, machine_id text DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    marked bigint;
BEGIN
    PERFORM fly._refuse_in_restricted_operation();
    UPDATE fly.orphan_machines o SET delete_requested = true
     WHERE o.deleted_at IS NULL AND (app_name IS NULL OR o.fly_app_name = app_name)
       AND (machine_id IS NULL OR o.fly_machine_id = machine_id);
    GET DIAGNOSTICS marked = ROW_COUNT;
    IF (app_name IS NOT NULL OR machine_id IS NOT NULL) AND marked = 0 THEN
        RAISE EXCEPTION 'no reported orphan machine matches app "%" and machine "%"',
            coalesce(app_name, '*'), coalesce(machine_id, '*')
            USING ERRCODE = 'no_data_found', HINT = 'See fly.orphan_machines.';
    END IF;
    PERFORM fly._request_orphan_pass();
    RETURN marked;
END $$;
COMMENT ON FUNCTION fly.delete_orphan_machines(text, text) IS
    'Marks reported orphan machines (one, an app''s, or all) for deletion; the worker destroys them at its next '
    'orphan pass (now). Returns how many were marked';
REVOKE ALL ON fly.orphan_machines FROM PUBLIC;
REVOKE ALL ON FUNCTION fly.delete_orphan_machines(text, text) FROM PUBLIC;

--------------------------------------------------------------------------------------------------------------
-- Image rollouts. fly.image is the image new apps get; an app that runs keeps its image until a rollout moves
-- it (machine update in place), canary apps first, paced by the worker's rate limiter.
--------------------------------------------------------------------------------------------------------------
CREATE TABLE fly.image_rollouts (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    image           text CHECK (image ~ '^[^[:space:][:cntrl:]]+$' AND length(image) <= 500),  -- NULL: secrets
    status          text NOT NULL DEFAULT 'canary'
                    CHECK (status IN ('canary', 'canary_check', 'rolling', 'completed', 'halted', 'cancelled')),
    canary_count    integer NOT NULL CHECK (canary_count >= 0),
    canary_wait     interval NOT NULL CHECK (canary_wait > interval '0'),
    max_failures    integer NOT NULL CHECK (max_failures >= 0),
    canary_deadline timestamptz,   -- set when the canaries' health check begins
    halted_reason   text,
    -- The session's user: current_user inside the SECURITY DEFINER function is always the extension's owner.
    started_by      name NOT NULL DEFAULT session_user,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    -- 0.3.0, secrets that change (last, as ALTER EXTENSION UPDATE adds them). Each app records a digest of the
    -- secrets set its machine runs with (HMAC-SHA-256 under fly.secrets_digest_key over every name and value
    -- together, never one value alone) and the names last set on Fly, so that a name removed from
    -- fly.app_secrets_file can be unset. When the file changes the worker starts a rollout of kind 'secrets': per
    -- app it sets the secrets again (removed names as null), then updates the machine to the new
    -- min_secrets_version, canary first, halting on failure, seen and resumed or cancelled like an image rollout.
    kind            text NOT NULL DEFAULT 'image' CHECK (kind IN ('image', 'secrets')),
    secrets_digest  text CHECK (secrets_digest ~ '^[0-9a-f]{64}$'),
    CONSTRAINT image_rollouts_kind_target
        CHECK (CASE kind WHEN 'image' THEN image IS NOT NULL ELSE image IS NULL AND secrets_digest IS NOT NULL END)
);
-- One rollout moves machines at a time.
CREATE UNIQUE INDEX image_rollouts_one_running ON fly.image_rollouts ((true))
    WHERE status IN ('canary', 'canary_check', 'rolling');
COMMENT ON TABLE fly.image_rollouts IS 'Image rollouts: one row per fly.start_image_rollout() call';
COMMENT ON COLUMN fly.image_rollouts.kind IS
    'image: fly.start_image_rollout(); secrets: started by the worker when fly.app_secrets_file changed';
COMMENT ON COLUMN fly.image_rollouts.secrets_digest IS 'For a secrets rollout: the digest of the set it was started for';

CREATE TABLE fly.image_rollout_apps (
    rollout_id      bigint NOT NULL REFERENCES fly.image_rollouts (id) ON DELETE CASCADE,
    fly_app_id      bigint NOT NULL,      -- fly.user_fly_apps.id (no foreign key: TRUNCATE of the apps must work)
    user_id         uuid NOT NULL,
    fly_app_name    text NOT NULL,
    canary          boolean NOT NULL,
    position        integer NOT NULL,     -- the order apps are updated in
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'updating', 'updated', 'healthy', 'failed', 'skipped')),
    from_image      text,
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error      text,
    last_checked_at timestamptz,          -- a canary's last health check
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (rollout_id, fly_app_id)
);
CREATE INDEX image_rollout_apps_todo ON fly.image_rollout_apps (rollout_id, canary, position)
    WHERE status IN ('pending', 'updating', 'updated');
COMMENT ON TABLE fly.image_rollout_apps IS
    'The apps of each image rollout and how far each got (a canary is healthy once seen healthy after its update)';

SELECT pg_catalog.pg_extension_config_dump('fly.image_rollouts', '');
SELECT pg_catalog.pg_extension_config_dump('fly.image_rollouts_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('fly.image_rollout_apps', '');

-- Inside a security-restricted operation session_user is the superuser whose call ran the owner's code:
-- start_image_rollout() (which asks the worker for nothing when no app needs the image) is refused there too.
CREATE FUNCTION fly._refuse_rollout_in_restricted_operation() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM fly._refuse_in_restricted_operation();
    RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION fly._refuse_rollout_in_restricted_operation() FROM PUBLIC;
CREATE TRIGGER refuse_in_restricted_operation BEFORE INSERT ON fly.image_rollouts
    FOR EACH STATEMENT EXECUTE FUNCTION fly._refuse_rollout_in_restricted_operation();

CREATE FUNCTION fly._request_rollout_pass() RETURNS void
    LANGUAGE c AS 'MODULE_PATHNAME', '_request_rollout_pass';

CREATE FUNCTION fly.start_image_rollout(image text DEFAULT NULL, canary_count integer DEFAULT 1,
                                        max_failures integer DEFAULT 0,
                                        canary_wait interval DEFAULT interval '5 minutes')
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    new_image   text := COALESCE(image, NULLIF(current_setting('fly.image', true), ''));
    running     fly.image_rollouts;
    rollout_id  bigint;
    app_count   bigint;
    already_current bigint;
BEGIN
    IF new_image IS NULL THEN
        RAISE EXCEPTION 'no image to roll out: pass one, or set fly.image'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF new_image !~ '^[^[:space:][:cntrl:]]+$' OR length(new_image) > 500 THEN
        RAISE EXCEPTION 'image "%" is not an image reference (1 to 500 characters, no spaces or control characters)',
            left(new_image, 100) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF canary_count IS NULL OR canary_count < 0 THEN
        RAISE EXCEPTION 'canary_count must be 0 or more, not %', canary_count USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF max_failures IS NULL OR max_failures < 0 THEN
        RAISE EXCEPTION 'max_failures must be 0 or more, not %', max_failures USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF canary_wait IS NULL OR canary_wait <= interval '0' OR canary_wait > interval '1 day' THEN
        RAISE EXCEPTION 'canary_wait must be more than 0 and at most 1 day, not %', canary_wait
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Two concurrent starts: the second waits here, then sees the first.
    LOCK TABLE fly.image_rollouts IN SHARE ROW EXCLUSIVE MODE;
    SELECT * INTO running FROM fly.image_rollouts r WHERE r.status IN ('canary', 'canary_check', 'rolling');
    IF FOUND THEN
        RAISE EXCEPTION 'image rollout % (%) is still running', running.id, running.image
            USING ERRCODE = 'object_in_use',
                  HINT = format('Wait for it, or stop it with SELECT fly.cancel_image_rollout(%s).', running.id);
    END IF;

    INSERT INTO fly.image_rollouts (image, canary_count, canary_wait, max_failures)
    VALUES (new_image, canary_count, canary_wait, max_failures)
    RETURNING id INTO rollout_id;
    INSERT INTO fly.image_rollout_apps (rollout_id, fly_app_id, user_id, fly_app_name, canary, position, from_image)
    SELECT rollout_id, a.id, a.user_id, a.fly_app_name, n <= canary_count, n, a.image
      FROM (SELECT a.*, row_number() OVER (ORDER BY a.id) AS n
              FROM fly.user_fly_apps a
             WHERE a.deleted_at IS NULL AND a.status = 'active' AND a.fly_machine_id IS NOT NULL
               AND a.image IS DISTINCT FROM new_image) a;
    GET DIAGNOSTICS app_count = ROW_COUNT;
    SELECT count(*) INTO already_current FROM fly.user_fly_apps a
     WHERE a.deleted_at IS NULL AND a.status = 'active' AND a.image = new_image;
    IF app_count = 0 THEN
        UPDATE fly.image_rollouts r SET status = 'completed', finished_at = now() WHERE r.id = rollout_id;
        RAISE NOTICE 'no active app needs image % (% already run it)', new_image, already_current;
    ELSE
        RAISE NOTICE 'rolling image % out to % app(s), % canary first (% already run it)',
            new_image, app_count, LEAST(canary_count, app_count), already_current;
        IF new_image IS DISTINCT FROM NULLIF(current_setting('fly.image', true), '') THEN
            RAISE NOTICE 'fly.image is still %: apps provisioned from now on get that image',
                COALESCE(NULLIF(current_setting('fly.image', true), ''), '(not set)');
        END IF;
        PERFORM fly._request_rollout_pass();
    END IF;
    RETURN rollout_id;
END $$;
COMMENT ON FUNCTION fly.start_image_rollout(text, integer, integer, interval) IS
    'Rolls an image (default fly.image) out to every active app: canary_count apps first, then a pause until they '
    'are healthy (at most canary_wait), then the rest; halts when more than max_failures updates fail';

CREATE FUNCTION fly.cancel_image_rollout(rollout_id bigint) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM fly._refuse_in_restricted_operation();
    UPDATE fly.image_rollouts r SET status = 'cancelled', updated_at = now(), finished_at = now()
     WHERE r.id = rollout_id AND r.status IN ('canary', 'canary_check', 'rolling', 'halted');
    IF NOT FOUND THEN
        RAISE EXCEPTION 'image rollout % is not running or halted', rollout_id
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'See fly.image_rollout_progress.';
    END IF;
    -- Updates already sent finish and are recorded; the rest are not sent.
    UPDATE fly.image_rollout_apps a SET status = 'skipped', last_error = 'rollout cancelled', updated_at = now()
     WHERE a.rollout_id = cancel_image_rollout.rollout_id AND a.status = 'pending';
END $$;
COMMENT ON FUNCTION fly.cancel_image_rollout(bigint) IS
    'Stops a running or halted image rollout: apps not yet updated are skipped';

CREATE FUNCTION fly.resume_image_rollout(rollout_id bigint) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    canaries_left boolean;
BEGIN
    LOCK TABLE fly.image_rollouts IN SHARE ROW EXCLUSIVE MODE;
    PERFORM 1 FROM fly.image_rollouts r WHERE r.id = rollout_id AND r.status = 'halted' FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'image rollout % is not halted', rollout_id
            USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'See fly.image_rollout_progress.';
    END IF;
    IF EXISTS (SELECT 1 FROM fly.image_rollouts r WHERE r.status IN ('canary', 'canary_check', 'rolling')) THEN
        RAISE EXCEPTION 'another image rollout is running' USING ERRCODE = 'object_in_use';
    END IF;
    -- Failed apps are tried again; canaries not yet seen healthy get a new canary_wait.
    UPDATE fly.image_rollout_apps a SET status = 'pending', attempts = 0, updated_at = now()
     WHERE a.rollout_id = resume_image_rollout.rollout_id AND a.status = 'failed';
    SELECT EXISTS (SELECT 1 FROM fly.image_rollout_apps a
                    WHERE a.rollout_id = resume_image_rollout.rollout_id AND a.canary
                      AND a.status NOT IN ('healthy', 'skipped'))
      INTO canaries_left;
    UPDATE fly.image_rollouts r
       SET status = CASE WHEN canaries_left THEN 'canary' ELSE 'rolling' END, halted_reason = NULL,
           canary_deadline = NULL, finished_at = NULL, updated_at = now()
     WHERE r.id = rollout_id;
    PERFORM fly._request_rollout_pass();
END $$;
COMMENT ON FUNCTION fly.resume_image_rollout(bigint) IS
    'Continues a halted image rollout: failed apps are tried again, canaries are checked again';

-- The kind and a short prefix of the (keyed) digest to tell secrets rollouts apart, after the columns 0.2.0's view
-- had. The whole digest stays in fly.image_rollouts.
CREATE VIEW fly.image_rollout_progress AS
SELECT r.id, r.image, r.status,
       count(a.*) AS apps,
       count(a.*) FILTER (WHERE a.canary) AS canaries,
       count(a.*) FILTER (WHERE a.status IN ('pending', 'updating')) AS pending,
       count(a.*) FILTER (WHERE a.status IN ('updated', 'healthy')) AS updated,
       count(a.*) FILTER (WHERE a.canary AND a.status = 'healthy') AS canaries_healthy,
       count(a.*) FILTER (WHERE a.status = 'failed') AS failed,
       count(a.*) FILTER (WHERE a.status = 'skipped') AS skipped,
       CASE WHEN count(a.*) = 0 THEN 100
            ELSE round(100.0 * count(a.*) FILTER (WHERE a.status IN ('updated', 'healthy', 'failed', 'skipped'))
                       / count(a.*), 1) END AS percent_done,
       r.max_failures, r.canary_deadline, r.halted_reason, r.started_by, r.created_at, r.finished_at,
       r.kind, left(r.secrets_digest, 8) AS secrets_digest_prefix
  FROM fly.image_rollouts r
  LEFT JOIN fly.image_rollout_apps a ON a.rollout_id = r.id
 GROUP BY r.id;
COMMENT ON VIEW fly.image_rollout_progress IS 'Each image rollout with how many apps are pending, updated, failed';

REVOKE ALL ON fly.image_rollouts, fly.image_rollout_apps, fly.image_rollout_progress FROM PUBLIC;
REVOKE ALL ON SEQUENCE fly.image_rollouts_id_seq FROM PUBLIC;

--------------------------------------------------------------------------------------------------------------
-- Never block the application (0.3.0). The subscription trigger no longer fails the application's write for
-- a tier without a policy or a user id pg_fly cannot use (unless fly.strict_tiers = on): it records the user as
-- waiting in fly.tier_waits and raises one alert. Adding the tier's policy queues every user waiting for it; a
-- change of a policy's guest or region queues the tier's live apps; a policy live apps use cannot be deleted.
--------------------------------------------------------------------------------------------------------------
CREATE TABLE fly.tier_waits (
    -- A uuid as the subscription table spells it; any other id quoted and cut after 64 bytes, as messages show it.
    user_id text PRIMARY KEY,
    tier    text,
    reason  text NOT NULL CHECK (reason IN ('unknown_tier', 'invalid_user_id')),
    since   timestamptz NOT NULL DEFAULT now(),
    id      bigint GENERATED ALWAYS AS IDENTITY UNIQUE  -- what a minimal pg_fly_alerts notification names
);
-- The worker looks for waits whose tier has a policy now (fly._apply_policy_changes) every few seconds: by tier,
-- which the trigger cuts to 64 bytes, so an index entry always fits.
CREATE INDEX tier_waits_unknown_tier ON fly.tier_waits (tier) WHERE reason = 'unknown_tier';
COMMENT ON TABLE fly.tier_waits IS
    'Subscription rows pg_fly could not act on: a tier without a policy, or a paid tier''s user id that is not a uuid';
SELECT pg_catalog.pg_extension_config_dump('fly.tier_waits', '');
SELECT pg_catalog.pg_extension_config_dump('fly.tier_waits_id_seq', '');

-- What an operator has to fix: the waits, with the reason in words, judged by the policies as they are now. The
-- subscription trigger never waits for a policy's transaction, so a policy committed while a tier change ran can
-- leave a wait behind that no longer applies (the drift pass provisions that user); it is not shown, and goes at
-- the user's next tier change. A key is a uuid as the trigger found it (fly._as_uuid), or a quoted id otherwise:
-- the view reads that from the key, so that a role granted the view needs no function grant.
CREATE VIEW fly.needs_attention AS
SELECT w.user_id, w.tier, r.reason,
       CASE r.reason
           WHEN 'unknown_tier' THEN pg_catalog.format('tier %L has no policy in fly.tier_policies', w.tier)
           WHEN 'invalid_user_id'
               THEN pg_catalog.format('user id is not a uuid; tier %L grants a dedicated app', w.tier)
       END AS detail,
       w.since, pg_catalog.now() OPERATOR(pg_catalog.-) w.since AS waiting_for, w.id AS wait_id
  FROM fly.tier_waits w
  LEFT JOIN fly.tier_policies p ON p.tier OPERATOR(pg_catalog.=) w.tier
 CROSS JOIN LATERAL (SELECT CASE WHEN p.tier IS NULL THEN 'unknown_tier'
                                 WHEN p.dedicated_app AND w.user_id LIKE '"%' THEN 'invalid_user_id'
                            END AS reason) r
 WHERE r.reason IS NOT NULL;
COMMENT ON VIEW fly.needs_attention IS
    'Users pg_fly is waiting on an operator for: a tier without a policy, or a user id that is not a uuid';

-- A policy that live apps use, or that users are queued to get an app of, cannot be deleted or renamed: their users
-- would keep an app no policy describes, or the worker would find no policy and silently provision nothing.
CREATE FUNCTION fly._tier_policy_in_use() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    live bigint;
    queued bigint;
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.tier = OLD.tier THEN
        RETURN NEW;
    END IF;
    SELECT count(*) INTO live FROM fly.user_fly_apps a WHERE a.tier = OLD.tier AND a.deleted_at IS NULL;
    SELECT count(*) INTO queued FROM fly.reconcile_queue q WHERE q.tier = OLD.tier AND q.desired = 'present';
    -- and changes logged but not folded yet (fly.tier_intents)
    queued := queued + (SELECT count(DISTINCT i.user_id) FROM fly.tier_intents i
                         WHERE i.tier = OLD.tier AND i.kind <> 'a');
    IF live > 0 OR queued > 0 THEN
        RAISE EXCEPTION 'cannot % the policy of tier "%": % live app(s) and % queued provision(s) use it',
                        CASE TG_OP WHEN 'DELETE' THEN 'delete' ELSE 'rename' END, OLD.tier, live, queued
            USING ERRCODE = 'dependent_objects_still_exist',
                  HINT = 'Move those users to another tier first (SELECT user_id FROM fly.live_apps WHERE tier = '
                         || quote_literal(OLD.tier) || ' UNION SELECT user_id FROM fly.reconcile_queue WHERE tier = '
                         || quote_literal(OLD.tier)
                         || '), or set dedicated_app = false to deprovision them.';
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END $$;
REVOKE ALL ON FUNCTION fly._tier_policy_in_use() FROM PUBLIC;
CREATE TRIGGER tier_policy_in_use BEFORE DELETE OR UPDATE OF tier ON fly.tier_policies
    FOR EACH ROW EXECUTE FUNCTION fly._tier_policy_in_use();

-- A policy added or changed writes no row the subscription trigger also writes (a queue item, a wait): the
-- application's write never waits for a policy's transaction, and cannot deadlock with one. The policy's
-- transaction records what its live apps need (fly.policy_changes) and wakes the worker when it commits; the worker
-- queues the work in short transactions of its own (fly._apply_policy_changes), paced by the queue like any other.
CREATE TABLE fly.policy_changes (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tier          text NOT NULL,
    -- How far the worker's walk over the tier's users has come, and the users another transaction held then
    -- (tried again at the next sweep).
    after_user    uuid,
    skipped_users uuid[] NOT NULL DEFAULT '{}',
    changed_at    timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE fly.policy_changes IS
    'Policy changes (guest, region, dedicated_app) whose live apps the worker has still to queue';
SELECT pg_catalog.pg_extension_config_dump('fly.policy_changes', '');
SELECT pg_catalog.pg_extension_config_dump('fly.policy_changes_id_seq', '');

-- Wakes the worker when the caller's transaction commits, to queue the work policy changes need.
CREATE FUNCTION fly._request_policy_pass() RETURNS void
    LANGUAGE c AS 'MODULE_PATHNAME', '_request_policy_pass';
REVOKE ALL ON FUNCTION fly._request_policy_pass() FROM PUBLIC;

CREATE FUNCTION fly._tier_policy_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    default_region constant text := current_setting('fly.default_region', true);
BEGIN
    IF TG_OP = 'INSERT' OR NEW.tier <> OLD.tier THEN
        -- The users waiting for the tier are queued by the worker once this commits: it finds every wait whose
        -- tier has a policy, including one a tier change recorded while this transaction ran.
        PERFORM fly._request_policy_pass();
        -- Not a policy being added: the upsert trigger turns the INSERT of an existing tier into this UPDATE.
        IF TG_OP = 'INSERT' THEN
            RETURN NULL;
        END IF;
    END IF;
    -- dedicated_app true -> false: the tier no longer grants an app, so its live apps and queued provisions are
    -- torn down. A changed guest or region: the reconcile updates a machine whose guest differs in place and
    -- replaces one in another region.
    IF OLD.dedicated_app AND (NOT NEW.dedicated_app
        OR (OLD.cpu_kind, OLD.cpus, OLD.memory_mb, coalesce(OLD.region, default_region), OLD.fallback_regions)
           IS DISTINCT FROM (NEW.cpu_kind, NEW.cpus, NEW.memory_mb, coalesce(NEW.region, default_region),
                             NEW.fallback_regions)) THEN
        INSERT INTO fly.policy_changes (tier) VALUES (NEW.tier);
        PERFORM fly._request_policy_pass();
    END IF;
    -- dedicated_app false -> true: which users have the tier only the subscription table knows; nothing is
    -- queued here (the drift pass provisions them; see the README).
    RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION fly._tier_policy_changed() FROM PUBLIC;
CREATE TRIGGER tier_policy_changed AFTER INSERT OR UPDATE ON fly.tier_policies
    FOR EACH ROW EXECUTE FUNCTION fly._tier_policy_changed();

--------------------------------------------------------------------------------------------------------------
-- A manual teardown stays in force until the user's tier changes again (0.3.0).
-- fly.deprovision_user_app() records the user here; the drift pass then queues no provision (nor resize) for
-- them. The enqueue path (EnqueueReconcile: a tier change through the trigger, fly.provision_user_app(),
-- fly.retry_user_app(), onboarding, a policy change) removes the row in the same statement that queues, so the
-- trigger's path gains no query. Drift's own queuing (fly._enqueue_if_unchanged) leaves it.
--------------------------------------------------------------------------------------------------------------
CREATE TABLE fly.manual_teardowns (
    user_id uuid PRIMARY KEY,
    since   timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE fly.manual_teardowns IS
    'Users torn down by fly.deprovision_user_app(): drift does not provision them until their tier changes again';
SELECT pg_catalog.pg_extension_config_dump('fly.manual_teardowns', '');

-- fly.deprovision_user_app() (under "Manual control" above) records its users here.

-- Queues one user of a changed policy again, in a subtransaction that never waits for a queue item another
-- transaction holds: 'queued', 'skipped' (nothing to do: the user is no longer this tier's, or was queued after
-- the change, or the app already has the policy's guest) or 'held' (another transaction is changing the user, or
-- did since it was read: tried again later).
CREATE FUNCTION fly._policy_change_user(tier text, changed_at timestamptz, uid uuid) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    q record;
    app record;
    p fly.tier_policies;
BEGIN
    SELECT * INTO p FROM fly.tier_policies x WHERE x.tier = _policy_change_user.tier;
    -- A queue item another transaction holds (a tier change in progress) fails at once (lock_not_available).
    SELECT x.generation, x.enqueued_at, x.desired, x.tier, x.claimed_at INTO q
      FROM fly.reconcile_queue x WHERE x.user_id = uid FOR UPDATE NOWAIT;
    -- The live app too: a relabel in progress (pro -> elite) holds it, and would be undone by an item for the
    -- old tier.
    SELECT a.id, a.tier, a.cpu_kind, a.cpus, a.memory_mb, a.region INTO app
      FROM fly.user_fly_apps a WHERE a.user_id = uid AND a.deleted_at IS NULL FOR UPDATE NOWAIT;
    -- Only a user whose intent is still this tier's (one moved to another tier since has its own queue item), and
    -- whose provision was queued before the change or is being carried out (the worker reads the policy when it
    -- claims an item; one queued since and not claimed yet gets the new policy), or whose app differs from it.
    IF NOT ((q.desired = 'present' AND q.tier = _policy_change_user.tier
             AND (q.enqueued_at <= changed_at OR q.claimed_at IS NOT NULL OR NOT p.dedicated_app))
            OR (q.desired IS NULL AND app.tier = _policy_change_user.tier
                AND (NOT p.dedicated_app
                     OR (app.cpu_kind, app.cpus, app.memory_mb) IS DISTINCT FROM (p.cpu_kind, p.cpus, p.memory_mb)
                     -- an app in one of the policy's fallback regions (no capacity in its own) is where it should be
                     OR (app.region IS DISTINCT FROM coalesce(p.region, current_setting('fly.default_region', true))
                         AND NOT coalesce(app.region = ANY (p.fallback_regions), false))))) THEN
        RETURN 'skipped';
    END IF;
    IF fly._enqueue_if_unchanged(uid, CASE WHEN p.dedicated_app THEN 'present' ELSE 'absent' END,
                                 _policy_change_user.tier, 'policy_change',
                                 q.generation, q.enqueued_at, app.id) THEN
        RETURN 'queued';
    END IF;
    RETURN 'held';
EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
    RETURN 'held';
END $$;
REVOKE ALL ON FUNCTION fly._policy_change_user(text, timestamptz, uuid) FROM PUBLIC;

-- Settles one wait whose tier has a policy now (`w`: a row of the query in fly._apply_policy_changes), in a
-- subtransaction that gives up on any lock after 20 ms: 'queued', 'settled' or 'held' (tried again later).
CREATE FUNCTION fly._settle_stale_wait(wait_id bigint, tier text, since timestamptz, uid uuid,
                                       dedicated_app boolean) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    q record;
    app_id bigint;
    torn_down_at timestamptz;
    src fly.tier_source;
    result text := 'settled';
BEGIN
    -- The user's queue item and live app first, then the wait locked and checked unchanged: a tier change that
    -- committed in between replaced or removed the wait, and its own queue item stands.
    SELECT x.generation, x.enqueued_at, x.desired INTO q FROM fly.reconcile_queue x WHERE x.user_id = uid;
    SELECT a.id INTO app_id FROM fly.user_fly_apps a WHERE a.user_id = uid AND a.deleted_at IS NULL;
    PERFORM FROM fly.tier_waits x
      WHERE x.id = wait_id AND x.tier = _settle_stale_wait.tier AND x.reason = 'unknown_tier' FOR UPDATE NOWAIT;
    IF NOT FOUND THEN
        RETURN 'settled';
    END IF;
    -- Then the queue item, if any: one another transaction holds fails at once too.
    PERFORM FROM fly.reconcile_queue x WHERE x.user_id = uid FOR UPDATE NOWAIT;
    IF uid IS NULL THEN
        IF dedicated_app THEN
            UPDATE fly.tier_waits x SET reason = 'invalid_user_id', since = now() WHERE x.id = wait_id;
        ELSE
            DELETE FROM fly.tier_waits x WHERE x.id = wait_id;  -- a tier without an app takes any user id
        END IF;
        RETURN 'settled';
    END IF;
    SELECT t.since INTO torn_down_at FROM fly.manual_teardowns t WHERE t.user_id = uid;
    IF NOT dedicated_app AND (app_id IS NOT NULL OR q.desired = 'present') THEN
        -- A tier without an app: the app goes only if none of the user's other rows grants one or may (a tier
        -- without a policy yet), as the drift pass decides. The rows are read as the table's owner
        -- (fly._subscription_rows_of). A table that cannot be read (its owner's row security failing, a column
        -- renamed) keeps the app: the wait ends, and the drift pass decides once the table reads again.
        SELECT * INTO src FROM fly.tier_source s;
        IF FOUND THEN
            BEGIN
                IF EXISTS (SELECT FROM fly._subscription_rows_of(src.table_name, src.user_column, src.tier_column,
                                                                 ARRAY[uid]) r
                             LEFT JOIN fly.tier_policies p ON p.tier = r.tier
                            WHERE r.tier IS NOT NULL AND coalesce(p.dedicated_app, true)) THEN
                    DELETE FROM fly.tier_waits x WHERE x.id = wait_id;
                    RETURN 'settled';
                END IF;
            EXCEPTION
                WHEN lock_not_available OR deadlock_detected THEN
                    RETURN 'held';
                WHEN OTHERS THEN
                    RAISE WARNING 'pg_fly: the subscription table could not be read to settle a wait: %', SQLERRM;
                    DELETE FROM fly.tier_waits x WHERE x.id = wait_id;
                    RETURN 'settled';
            END;
        END IF;
    END IF;
    IF dedicated_app AND torn_down_at > since THEN
        NULL;  -- torn down by an operator after the tier change: that stands until the next one
    ELSIF dedicated_app OR app_id IS NOT NULL OR q.desired = 'present' THEN
        IF NOT fly._enqueue_if_unchanged(uid, CASE WHEN dedicated_app THEN 'present' ELSE 'absent' END,
                                         _settle_stale_wait.tier, 'policy_added',
                                         q.generation, q.enqueued_at, app_id) THEN
            RETURN 'held';  -- queued by someone else meanwhile: decided again with what is queued then
        END IF;
        DELETE FROM fly.manual_teardowns t WHERE t.user_id = uid;  -- the tier change came after it
        result := 'queued';
    END IF;
    DELETE FROM fly.tier_waits x WHERE x.id = wait_id;
    RETURN result;
EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
    RETURN 'held';
END $$;
REVOKE ALL ON FUNCTION fly._settle_stale_wait(bigint, text, timestamptz, uuid, boolean) FROM PUBLIC;

-- Run by the worker (JobRunner::PolicyStep), in short transactions of its own, at start, when a policy change
-- commits and every 10 seconds: queues the work policies ask for, at most max_users users and about 200 ms per
-- call; `more` says whether it stopped at a limit with work left. Each user is handled in a subtransaction that
-- takes the user's rows with NOWAIT (and gives up any other lock after 20 ms): a user an application transaction
-- is changing is left to that change, and looked at again later. So an application never waits on this for
-- longer than one call and never deadlocks with it, and users held by open transactions hold up no one else.
-- 1. A wait whose tier has a policy now (added since, or committed while the tier change ran): the user is queued
--    (or, for a tier without an app, torn down if pg_fly keeps one and no other row of theirs grants one), unless
--    fly.deprovision_user_app() came after the tier change; a paid tier's user id pg_fly cannot use waits on for
--    that reason instead. Waits another transaction holds are skipped.
-- 2. A policy change recorded in fly.policy_changes: the tier's live apps and queued provisions are queued again
--    (for removal, when the tier no longer grants an app); users held are kept in skipped_users and tried again
--    at the next call.
CREATE FUNCTION fly._apply_policy_changes(max_users integer, OUT queued integer, OUT more boolean)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET lock_timeout = '20ms' AS $$
DECLARE
    started constant timestamptz := clock_timestamp();
    budget integer;
    -- Something moved on: a user settled or queued, a walk advanced, a row went. `more` is asked for only then,
    -- so that users held by open transactions cannot keep the worker calling this in a loop.
    progress boolean := false;
    limited boolean := false;  -- stopped at a limit with work left
    outcome text;
    pol record;
    waiting record;
    c record;
    u record;
    uid uuid;
    held_in_walk uuid[];
    retry uuid[];
    walk_done boolean;
BEGIN
    queued := 0;
    -- Tier changes logged but not folded yet are compared too (a relabel makes a user another tier's).
    BEGIN
        PERFORM fly.fold_intents();
    EXCEPTION WHEN lock_not_available THEN
        NULL;  -- another fold holds them; a user changed since it was read is held below
    END;
    -- 1. Waits whose tier has a policy now, tier by tier (the index tier_waits_unknown_tier finds them however
    --    many waits there are for tiers without one). Waits another transaction holds are skipped.
    budget := greatest(max_users, 1);
    <<waits>>
    FOR pol IN SELECT p.tier, p.dedicated_app FROM fly.tier_policies p ORDER BY p.tier LOOP
        FOR waiting IN
            SELECT w.id, w.since, fly._as_uuid(w.user_id) AS uid FROM fly.tier_waits w
             WHERE w.tier = pol.tier AND w.reason = 'unknown_tier'
             ORDER BY w.id LIMIT budget + 1
               FOR UPDATE SKIP LOCKED
        LOOP
            IF budget = 0 OR clock_timestamp() > started + interval '100 milliseconds' THEN
                limited := true;
                EXIT waits;
            END IF;
            budget := budget - 1;
            outcome := fly._settle_stale_wait(waiting.id, pol.tier, waiting.since, waiting.uid, pol.dedicated_app);
            IF outcome <> 'held' THEN
                progress := true;
                queued := queued + (outcome = 'queued')::integer;
            END IF;
        END LOOP;
    END LOOP;

    -- 2. Policy changes, with a budget of their own: each tier's walk over its live apps and queued provisions,
    --    then the users another transaction held at an earlier call (after_user NULL: the walk starts; the
    --    largest uuid: it is done).
    budget := greatest(max_users, 1);
    FOR c IN
        SELECT pc.id, pc.tier, pc.after_user, pc.skipped_users, pc.changed_at,
               p.tier IS NULL OR EXISTS (SELECT FROM fly.policy_changes n WHERE n.tier = pc.tier AND n.id > pc.id)
                   AS superseded
          FROM fly.policy_changes pc LEFT JOIN fly.tier_policies p ON p.tier = pc.tier
         ORDER BY pc.id
    LOOP
        IF c.superseded THEN
            -- The policy is gone (only possible once no app uses it), or changed again: the newer row walks anew.
            DELETE FROM fly.policy_changes pc WHERE pc.id = c.id;
            progress := true;
            CONTINUE;
        END IF;
        IF budget = 0 OR clock_timestamp() > started + interval '200 milliseconds' THEN
            limited := true;
            EXIT;
        END IF;
        held_in_walk := '{}';
        walk_done := coalesce(c.after_user = 'ffffffff-ffff-ffff-ffff-ffffffffffff', false);
        IF NOT walk_done THEN
            walk_done := true;
            FOR u IN
                SELECT x.user_id FROM (
                    SELECT a.user_id FROM fly.user_fly_apps a
                     WHERE a.tier = c.tier AND a.deleted_at IS NULL
                       AND (c.after_user IS NULL OR a.user_id > c.after_user)
                    UNION
                    SELECT x.user_id FROM fly.reconcile_queue x
                     WHERE x.tier = c.tier AND x.desired = 'present'
                       AND (c.after_user IS NULL OR x.user_id > c.after_user)) x
                 ORDER BY x.user_id LIMIT budget + 1
            LOOP
                IF budget = 0 OR clock_timestamp() > started + interval '200 milliseconds' THEN
                    walk_done := false;
                    limited := true;
                    EXIT;
                END IF;
                budget := budget - 1;
                c.after_user := u.user_id;
                progress := true;  -- the walk moved on, past a held user too
                outcome := fly._policy_change_user(c.tier, c.changed_at, u.user_id);
                IF outcome = 'held' THEN
                    held_in_walk := held_in_walk || u.user_id;
                ELSE
                    queued := queued + (outcome = 'queued')::integer;
                END IF;
            END LOOP;
        END IF;
        -- Once the walk is done, the users held before are tried again; those held now wait for a later call.
        retry := '{}';
        FOREACH uid IN ARRAY c.skipped_users LOOP
            IF NOT walk_done OR budget = 0 OR clock_timestamp() > started + interval '200 milliseconds' THEN
                retry := retry || uid;
                limited := limited OR walk_done;
                CONTINUE;
            END IF;
            budget := budget - 1;
            outcome := fly._policy_change_user(c.tier, c.changed_at, uid);
            IF outcome = 'held' THEN
                retry := retry || uid;
            ELSE
                progress := true;
                queued := queued + (outcome = 'queued')::integer;
            END IF;
        END LOOP;
        retry := retry || held_in_walk;
        IF walk_done AND cardinality(retry) = 0 THEN
            DELETE FROM fly.policy_changes pc WHERE pc.id = c.id;
        ELSE
            UPDATE fly.policy_changes pc
               SET after_user = CASE WHEN walk_done THEN 'ffffffff-ffff-ffff-ffff-ffffffffffff'::uuid
                                     ELSE c.after_user END,
                   skipped_users = retry
             WHERE pc.id = c.id;
        END IF;
        EXIT WHEN limited;
    END LOOP;
    more := limited AND progress;
END $$;
REVOKE ALL ON FUNCTION fly._apply_policy_changes(integer) FROM PUBLIC;

--------------------------------------------------------------------------------------------------------------
-- Drift repair (0.3.0).
-- The subscription table is the truth. Changes the trigger never sees (logical replication's apply, a trigger
-- disabled for a bulk load, session_replication_role = replica, TRUNCATE or DROP of one partition, a restore)
-- are found by comparing, user by user, what the table grants with what pg_fly recorded, and queued.
-- The table is read in batches through pgfly_tier_source.cpp (as its owner, checked at every call); each batch
-- is compared in the same statement (one snapshot). Each difference is then confirmed against the user's rows
-- read again after waiting for the user's queue item (fly._drift_repair_all), and queued only if the user's
-- queue item and live app are still those compared (fly._enqueue_if_unchanged): a tier change committed
-- meanwhile wins, even one the worker has already carried out.
--------------------------------------------------------------------------------------------------------------
CREATE FUNCTION fly._subscription_batch(tbl regclass, user_column name, tier_column name, after_user text,
                                        batch_size integer)
RETURNS TABLE (user_id text, tier text, uid uuid)  -- uid: the user id as a uuid, NULL when it is not one
    LANGUAGE c AS 'MODULE_PATHNAME', '_subscription_batch' ROWS 5000;
-- The rows of these users, whatever spelling of the uuid a text column holds (IsUuidText, the trigger's rule).
CREATE FUNCTION fly._subscription_rows_of(tbl regclass, user_column name, tier_column name, user_ids uuid[])
RETURNS TABLE (user_id text, tier text, uid uuid)
    LANGUAGE c AS 'MODULE_PATHNAME', '_subscription_rows_of' ROWS 5000;
-- Whether every member has an index that can serve a batch's order (UserColumnIndexed): without one, every batch
-- is a full read.
CREATE FUNCTION fly._subscription_user_indexed(tbl regclass, user_column name) RETURNS boolean
    LANGUAGE c AS 'MODULE_PATHNAME', '_subscription_user_indexed';
CREATE FUNCTION fly._enqueue_if_unchanged(user_id uuid, desired text, tier text, reason text,
                                          seen_generation bigint, seen_enqueued_at timestamptz, seen_app_id bigint)
RETURNS boolean
    LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', '_enqueue_if_unchanged';
REVOKE ALL ON FUNCTION fly._subscription_batch(regclass, name, name, text, integer),
    fly._subscription_rows_of(regclass, name, name, uuid[]),
    fly._subscription_user_indexed(regclass, name),
    fly._enqueue_if_unchanged(uuid, text, text, text, bigint, timestamptz, bigint) FROM PUBLIC;

-- Queues one difference and records it. `d` is a row of the comparison below.
CREATE FUNCTION fly._drift_repair(uid uuid, action text, differed text, subscription_tier text,
                                  q_generation bigint, q_enqueued_at timestamptz, q_desired text, q_tier text,
                                  app_id bigint, app_status text, app_tier text)
RETURNS boolean LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- A queue item another transaction holds (a tier change in progress) fails at once (lock_not_available).
    PERFORM FROM fly.reconcile_queue q WHERE q.user_id = uid FOR UPDATE NOWAIT;
    IF NOT fly._enqueue_if_unchanged(uid, CASE WHEN action = 'deprovision' THEN 'absent' ELSE 'present' END,
                                     CASE WHEN action = 'deprovision' THEN NULL ELSE subscription_tier END, 'drift',
                                     q_generation, q_enqueued_at, app_id) THEN
        RETURN false;  -- changed since it was compared: the newer intent stands
    END IF;
    INSERT INTO fly.user_fly_app_events (fly_app_id, user_id, event_type, status, details)
    VALUES (app_id, uid, 'drift_repaired', app_status,
            jsonb_build_object('action', action, 'differed', differed, 'subscription_tier', subscription_tier,
                               'queued_before', CASE WHEN q_generation IS NOT NULL THEN
                                   jsonb_build_object('desired', q_desired, 'tier', q_tier) END,
                               'app_tier', app_tier));
    RETURN true;
END $$;
REVOKE ALL ON FUNCTION fly._drift_repair(uuid, text, text, text, bigint, timestamptz, text, text, bigint, text, text)
    FROM PUBLIC;

-- The batch size a walk reads: a table without an index on the user column is read in full by every batch, so
-- its batches are large (fewer full reads: a walk over n rows reads the table about n / 100,000 times).
CREATE FUNCTION fly._drift_batch_size(requested integer) RETURNS integer
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN fly._subscription_user_indexed(s.table_name, s.user_column) THEN requested
                ELSE greatest(requested, 100000) END
      FROM fly._tier_source() s
$$;
REVOKE ALL ON FUNCTION fly._drift_batch_size(integer) FROM PUBLIC;

-- Drift repair confirms each decision against a fresh read of the user's rows: a transaction snapshot (REPEATABLE
-- READ, SERIALIZABLE) would hide a tier change committed meanwhile.
CREATE FUNCTION fly._drift_require_read_committed() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'fly.check_drift() runs only at the READ COMMITTED isolation level'
            USING ERRCODE = 'invalid_transaction_state',
                  DETAIL = format('The transaction is %s: it would not see a tier change committed while it runs, '
                                  'and could queue a decision that change made stale.',
                                  upper(current_setting('transaction_isolation'))),
                  HINT = 'Call it outside an explicit transaction, or in one started with BEGIN ISOLATION LEVEL '
                         'READ COMMITTED.';
    END IF;
END $$;
REVOKE ALL ON FUNCTION fly._drift_require_read_committed() FROM PUBLIC;

-- Queues the differences a batch found (`diffs`: a jsonb array of the comparison's rows, at most
-- the batch's max_repairs), each only if it still holds. Each is queued (fly._drift_repair: only if the user's
-- queue item and live app are still those compared) in a subtransaction that gives up on any lock after 20 ms: a
-- transaction changing that user is in progress, its own intent stands, and the user is left to the next pass.
-- So neither the application nor the worker waits on the other for long, and they cannot deadlock. Then, in a
-- statement of its own (under READ COMMITTED a snapshot taken after every such wait), the users queued have
-- their rows read again, in every spelling, and the decision is made again per user from all of them. If any no
-- longer holds, all of this batch's queuing is undone and done again without those users. So a tier change that
-- committed since the batch was read wins, even one the worker already carried out (its queue item gone); one
-- that commits later found the user's queue item held by this transaction and overrides it when this one
-- commits. A user whose rows fell into two batches (two spellings of one uuid in a text column) is decided by all
-- its rows.
CREATE FUNCTION fly._drift_repair_all(diffs jsonb) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET lock_timeout = '20ms' AS $$
DECLARE
    src fly.tier_source;
    -- Time spent in lock waits that gave up (a queue item another transaction is inserting): this batch's queue
    -- rows are held meanwhile. A queue item held already costs nothing (NOWAIT).
    waited interval := '0';
    attempt timestamptz;
    left_out uuid[] := '{}';
    held uuid[] := '{}';
    queued_users uuid[];
    stale uuid[];
    d record;
BEGIN
    IF diffs IS NULL OR jsonb_array_length(diffs) = 0 THEN
        RETURN 0;
    END IF;
    PERFORM fly._drift_require_read_committed();
    src := fly._tier_source();
    LOOP
        BEGIN
            queued_users := '{}';
            FOR d IN
                SELECT * FROM jsonb_to_recordset(diffs) AS x(uid uuid, action text, differed text, tier text,
                                                            generation bigint, enqueued_at timestamptz,
                                                            q_desired text, q_tier text, app_id bigint,
                                                            app_status text, app_tier text)
                 WHERE x.uid <> ALL (left_out) AND x.uid <> ALL (held)
                 ORDER BY x.uid
            LOOP
                IF waited > interval '100 milliseconds' THEN
                    -- Many queue items being inserted by open transactions: give up on each at once from now on.
                    PERFORM set_config('lock_timeout', '1ms', true);
                END IF;
                attempt := clock_timestamp();
                BEGIN
                    IF fly._drift_repair(d.uid, d.action, d.differed, d.tier, d.generation, d.enqueued_at,
                                         d.q_desired, d.q_tier, d.app_id, d.app_status, d.app_tier) THEN
                        queued_users := queued_users || d.uid;
                    END IF;
                EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
                    held := held || d.uid;  -- not tried again in this batch's later rounds either
                    waited := waited + (clock_timestamp() - attempt);
                END;
            END LOOP;
            IF cardinality(queued_users) = 0 THEN
                EXIT;
            END IF;
            -- The users' rows now. As the batch decides: a user gets an app if any row grants one; a NULL tier
            -- grants none.
            stale := ARRAY(
                WITH x AS (
                    SELECT * FROM jsonb_to_recordset(diffs) AS x(uid uuid, action text, tier text)
                     WHERE x.uid = ANY (queued_users)),
                n AS (
                    SELECT DISTINCT ON (s.uid) s.uid, s.tier, p.tier IS NOT NULL OR s.tier IS NULL AS known,
                           coalesce(p.dedicated_app, false) AS paid
                      FROM fly._subscription_rows_of(src.table_name, src.user_column, src.tier_column,
                                                     queued_users) s
                      LEFT JOIN fly.tier_policies p ON p.tier = s.tier
                     ORDER BY s.uid, coalesce(p.dedicated_app, false) DESC, s.tier)
                SELECT x.uid FROM x LEFT JOIN n ON n.uid = x.uid
                 WHERE NOT CASE WHEN x.action = 'deprovision' THEN n.uid IS NULL OR (n.known AND NOT n.paid)
                                ELSE coalesce(n.known AND n.paid AND n.tier = x.tier, false) END);
            IF cardinality(stale) = 0 THEN
                EXIT;
            END IF;
            RAISE EXCEPTION USING ERRCODE = 'PFD01';  -- undoes this batch's queuing and events
        EXCEPTION WHEN SQLSTATE 'PFD01' THEN
            left_out := left_out || stale;
        END;
    END LOOP;
    IF cardinality(held) > 0 THEN
        RAISE NOTICE 'drift repair left % user(s) to the next pass: other transactions were changing them',
                     cardinality(held);
    END IF;
    RETURN cardinality(queued_users);
END $$;
REVOKE ALL ON FUNCTION fly._drift_repair_all(jsonb) FROM PUBLIC;

-- At most this many differences are queued by one of the worker's batches: their queue rows stay locked until it
-- commits. A batch that finds more ends before the first it leaves, and the next batch reads on from there.
-- fly.check_drift() holds every row lock until its caller commits anyway, so its batches are not capped (each cut
-- would cost another read of a table without an index).
CREATE FUNCTION fly._drift_max_repairs() RETURNS integer
    LANGUAGE sql IMMUTABLE AS 'SELECT 1000';
REVOKE ALL ON FUNCTION fly._drift_max_repairs() FROM PUBLIC;

-- One batch of the subscription table, in user id order after after_user: queues what differs. last_user is
-- NULL when the table has no rows after after_user.
CREATE FUNCTION fly._drift_table_batch(after_user text, batch_size integer, max_repairs integer,
                                       OUT last_user text, OUT queued integer)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    src fly.tier_source := fly._tier_source();
    size constant integer := fly._drift_batch_size(batch_size);
    diffs jsonb;
BEGIN
    -- One statement: the batch and pg_fly's records of its users are seen as of the same moment. Set-based:
    -- the reader gives each user id as a uuid already (NULL when it is not one, as the trigger judges it); pg_fly's
    -- rows are read by index within the batch's uuid range; only the rows that differ reach the loop.
    -- Batches follow the column's order, in which two spellings of one uuid (a text column) may fall into two
    -- batches: each batch decides on what it saw, and fly._drift_repair_all decides again from all the user's rows.
    WITH b AS MATERIALIZED (
            SELECT s.user_id, s.tier, s.uid, s.n
              FROM fly._subscription_batch(src.table_name, src.user_column, src.tier_column, after_user,
                                           size) WITH ORDINALITY AS s(user_id, tier, uid, n)),
        -- One row per user; a user with several rows gets an app if any of them grants one. A NULL tier grants
        -- none, as in the trigger.
        -- pos: where the user's first row is in the batch.
        w AS MATERIALIZED (
            SELECT DISTINCT ON (b.uid) b.uid, b.tier, p.tier IS NOT NULL OR b.tier IS NULL AS known,
                   coalesce(p.dedicated_app, false) AS paid, p.cpu_kind, p.cpus, p.memory_mb, p.region,
                   p.fallback_regions, min(b.n) OVER (PARTITION BY b.uid) AS pos
              FROM b LEFT JOIN fly.tier_policies p ON p.tier = b.tier
             WHERE b.uid IS NOT NULL
             ORDER BY b.uid, coalesce(p.dedicated_app, false) DESC, b.tier),
        -- The batch's uuid range (a uuid column's batch is one range; a text column's is covered by it).
        r AS (SELECT (SELECT w.uid FROM w ORDER BY w.uid LIMIT 1) AS lo,
                     (SELECT w.uid FROM w ORDER BY w.uid DESC LIMIT 1) AS hi),
        q AS (SELECT q.* FROM r, fly.reconcile_queue q WHERE q.user_id BETWEEN r.lo AND r.hi),
        a AS (SELECT a.* FROM r, fly.user_fly_apps a
               WHERE a.user_id BETWEEN r.lo AND r.hi AND a.deleted_at IS NULL),
        c AS (
            SELECT w.uid, w.pos, w.tier, q.generation, q.enqueued_at, q.desired AS q_desired, q.tier AS q_tier,
                   a.id AS app_id, a.status AS app_status, a.tier AS app_tier,
                   CASE
                   WHEN NOT w.known THEN NULL  -- a tier without a policy waits for one
                   -- fly.deprovision_user_app() stands until the user's tier changes again
                   WHEN w.paid AND mt.user_id IS NOT NULL THEN NULL
                   WHEN w.paid THEN CASE
                       WHEN q.desired = 'absent' THEN 'provision'
                       WHEN q.desired = 'present' THEN CASE
                           WHEN qp.tier IS NULL OR qp.cpu_kind IS DISTINCT FROM w.cpu_kind
                                OR qp.cpus IS DISTINCT FROM w.cpus OR qp.memory_mb IS DISTINCT FROM w.memory_mb
                                OR qp.region IS DISTINCT FROM w.region THEN 'resize' END
                       WHEN a.id IS NULL THEN 'provision'
                       WHEN a.status = 'failed' THEN NULL  -- fly.retry_user_app() decides
                       WHEN a.cpu_kind IS DISTINCT FROM w.cpu_kind OR a.cpus IS DISTINCT FROM w.cpus
                            OR a.memory_mb IS DISTINCT FROM w.memory_mb
                            OR (w.region IS NOT NULL AND a.region IS DISTINCT FROM w.region
                                AND NOT coalesce(a.region = ANY (w.fallback_regions), false)) THEN 'resize'
                       END
                   WHEN q.desired = 'present' THEN 'deprovision'
                   WHEN q.desired IS NULL AND a.id IS NOT NULL THEN 'deprovision'
                   END AS action
              FROM w
              LEFT JOIN q ON q.user_id = w.uid
              LEFT JOIN fly.tier_policies qp ON qp.tier = q.tier
              LEFT JOIN a ON a.user_id = w.uid
              LEFT JOIN fly.manual_teardowns mt ON mt.user_id = w.uid),
        d AS (
        SELECT c.*,
               CASE c.action
               WHEN 'provision' THEN CASE WHEN c.q_desired = 'absent'
                   THEN 'queued for removal, but the subscription''s tier grants an app'
                   ELSE 'no app, but the subscription''s tier grants one' END
               WHEN 'resize' THEN CASE WHEN c.q_desired = 'present'
                   THEN 'the queued tier''s guest or region differs from the subscription tier''s policy'
                   ELSE 'the app''s guest or region differs from the subscription tier''s policy' END
               WHEN 'deprovision' THEN CASE WHEN c.q_desired = 'present'
                   THEN 'queued for an app, but the subscription''s tier grants none'
                   ELSE 'a live app, but the subscription''s tier grants none' END
               END AS differed
          FROM c WHERE c.action IS NOT NULL),
        kept AS (SELECT d.* FROM d ORDER BY d.pos LIMIT max_repairs),
        -- The first difference left for the next batch: this one ends on the row before it.
        cut AS (SELECT d.pos FROM d WHERE max_repairs IS NOT NULL ORDER BY d.pos OFFSET max_repairs LIMIT 1)
    SELECT coalesce((SELECT b.user_id FROM b, cut WHERE b.n < cut.pos ORDER BY b.n DESC LIMIT 1),
                    (SELECT b.user_id FROM b ORDER BY b.n DESC LIMIT 1)),
           (SELECT jsonb_agg(to_jsonb(kept)) FROM kept)
      INTO last_user, diffs;
    queued := fly._drift_repair_all(diffs);
END $$;
REVOKE ALL ON FUNCTION fly._drift_table_batch(text, integer, integer) FROM PUBLIC;

-- One batch of the users pg_fly keeps an app for (a live app, or a queued 'present'), in user id order after
-- after_user: those the subscription table no longer has (a deleted row, a truncated or dropped partition) are
-- queued for removal. last_user is NULL when there are no more.
CREATE FUNCTION fly._drift_missing_batch(after_user uuid, batch_size integer, max_repairs integer, OUT last_user uuid,
                                         OUT queued integer)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    src fly.tier_source := fly._tier_source();
    size constant integer := fly._drift_batch_size(batch_size);
    after constant uuid := after_user;  -- NULL: from the start (the all-zero uuid is a user id too)
    diffs jsonb;
BEGIN
    -- pg_fly's side read by index from after onwards, size at most; the table asked for those users, in every
    -- spelling (fly._subscription_rows_of).
    WITH k AS MATERIALIZED (
            SELECT u.user_id FROM (
                (SELECT a.user_id FROM fly.user_fly_apps a
                  WHERE a.deleted_at IS NULL AND (after IS NULL OR a.user_id > after) ORDER BY a.user_id LIMIT size)
                 UNION
                (SELECT q.user_id FROM fly.reconcile_queue q
                  WHERE q.desired = 'present' AND (after IS NULL OR q.user_id > after) ORDER BY q.user_id LIMIT size)
            ) u ORDER BY u.user_id LIMIT size),
        r AS (SELECT (SELECT k.user_id FROM k ORDER BY k.user_id LIMIT 1) AS lo,
                     (SELECT k.user_id FROM k ORDER BY k.user_id DESC LIMIT 1) AS hi),
        found AS (
            SELECT DISTINCT f.uid
              FROM fly._subscription_rows_of(src.table_name, src.user_column, src.tier_column,
                                             ARRAY(SELECT k.user_id FROM k)) f),
        c AS (
            SELECT k.user_id AS uid, q.generation, q.enqueued_at, q.desired AS q_desired, q.tier AS q_tier,
                   a.id AS app_id, a.status AS app_status, a.tier AS app_tier
              FROM k
              LEFT JOIN (SELECT q.* FROM r, fly.reconcile_queue q WHERE q.user_id BETWEEN r.lo AND r.hi) q
                ON q.user_id = k.user_id
              LEFT JOIN (SELECT a.* FROM r, fly.user_fly_apps a
                          WHERE a.user_id BETWEEN r.lo AND r.hi AND a.deleted_at IS NULL) a
                ON a.user_id = k.user_id
             WHERE NOT EXISTS (SELECT 1 FROM found WHERE found.uid = k.user_id)
               AND q.desired IS DISTINCT FROM 'absent'),
        d AS (
            SELECT c.*, 'deprovision' AS action, NULL::text AS tier,
                   CASE WHEN c.app_id IS NOT NULL THEN 'a live app, but the user has no subscription row'
                        ELSE 'queued for an app, but the user has no subscription row' END AS differed
              FROM c),
        kept AS (SELECT d.* FROM d ORDER BY d.uid LIMIT max_repairs),
        -- More differences than one batch queues: it ends on the last it queues, and the next reads on from there.
        cut AS (SELECT 1 FROM d WHERE max_repairs IS NOT NULL ORDER BY d.uid OFFSET max_repairs LIMIT 1)
    SELECT CASE WHEN EXISTS (SELECT FROM cut) THEN (SELECT kept.uid FROM kept ORDER BY kept.uid DESC LIMIT 1)
                ELSE (SELECT k.user_id FROM k ORDER BY k.user_id DESC LIMIT 1) END,
           (SELECT jsonb_agg(to_jsonb(kept)) FROM kept)
      INTO last_user, diffs;
    queued := fly._drift_repair_all(diffs);
END $$;
REVOKE ALL ON FUNCTION fly._drift_missing_batch(uuid, integer, integer) FROM PUBLIC;

-- Compares every user's subscription with what pg_fly recorded and queues each difference; returns how many
-- users it queued. The worker runs the same batches, each in a transaction of its own and one per pass of its
-- loop (JobRunner::DriftStep), at start and a fly.drift_check_interval after each pass ends; this function runs
-- them all in the caller's transaction, so it holds ACCESS SHARE on the subscription table, and the row locks of
-- every queue item it touched, until the caller commits: the worker's pass is the way to repair a large table.
-- Only at READ COMMITTED: each difference is confirmed against a fresh read of the user's rows.
CREATE FUNCTION fly.check_drift() RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    batch constant integer := 5000;
    after_text text;
    after_uuid uuid;
    r record;
    total integer := 0;
BEGIN
    PERFORM fly._refuse_in_restricted_operation();
    PERFORM fly._tier_source();  -- an error that says how to attach a table, when none is
    PERFORM fly._drift_require_read_committed();
    PERFORM fly.fold_intents();  -- compared with the changes the trigger logged, not only the queue
    LOOP
        SELECT * INTO r FROM fly._drift_table_batch(after_text, batch, NULL);
        total := total + r.queued;
        EXIT WHEN r.last_user IS NULL;
        after_text := r.last_user;
    END LOOP;
    LOOP
        SELECT * INTO r FROM fly._drift_missing_batch(after_uuid, batch, NULL);
        total := total + r.queued;
        EXIT WHEN r.last_user IS NULL;
        after_uuid := r.last_user;
    END LOOP;
    RETURN total;
END $$;
REVOKE ALL ON FUNCTION fly.check_drift() FROM PUBLIC;
COMMENT ON FUNCTION fly.check_drift() IS
    'Queues every user whose subscription and pg_fly''s records differ (provision, deprovision, resize); returns how '
    'many. Runs the whole pass in the caller''s transaction (READ COMMITTED only), holding ACCESS SHARE on the '
    'subscription table and the queue items it touched until that transaction ends: on a large table let the '
    'worker''s pass (fly.drift_check_interval) do it, one short transaction per batch';

--------------------------------------------------------------------------------------------------------------
-- Secrets digest key (0.3.0). The secrets digest is an HMAC-SHA-256 under this per-database key, so that a
-- role that can read a digest (or a dump without this table) cannot test guesses of a short secret against it.
-- Made once, here (or by ALTER EXTENSION UPDATE to 0.3.0), from gen_random_uuid()'s strong randomness (two v4
-- uuids: 244 random bits); read only by the worker (a superuser), granted to nobody. It is dumped with the other
-- fly tables, so that a restore keeps it and the restored digests still match: a restore's CREATE EXTENSION
-- makes a new key, which the dump's row then replaces. A superuser changing it makes every app differ from the
-- file: each then gets one secrets rollout.
--------------------------------------------------------------------------------------------------------------
CREATE TABLE fly.secrets_digest_key (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    key       text NOT NULL CHECK (length(key) >= 32)
);
COMMENT ON TABLE fly.secrets_digest_key IS
    'The key of the secrets digest (HMAC-SHA-256); one row, made at CREATE or ALTER EXTENSION. Grant it to nobody';
INSERT INTO fly.secrets_digest_key (key)
    SELECT replace(gen_random_uuid()::text, '-', '') || replace(gen_random_uuid()::text, '-', '');
CREATE FUNCTION fly._secrets_digest_key_upsert() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE fly.secrets_digest_key SET key = NEW.key WHERE singleton;
    IF FOUND THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER secrets_digest_key_upsert BEFORE INSERT ON fly.secrets_digest_key
    FOR EACH ROW EXECUTE FUNCTION fly._secrets_digest_key_upsert();
REVOKE ALL ON fly.secrets_digest_key FROM PUBLIC;
REVOKE ALL ON FUNCTION fly._secrets_digest_key_upsert() FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('fly.secrets_digest_key', '');

--------------------------------------------------------------------------------------------------------------
-- The subscription trigger's cache (0.3.0): each backend keeps the tier policies, the attached table and
-- whether tier_waits and manual_teardowns hold rows; a change of any of them invalidates every backend's copy.
--------------------------------------------------------------------------------------------------------------
CREATE FUNCTION fly._invalidate_trigger_cache() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', '_invalidate_trigger_cache';
REVOKE ALL ON FUNCTION fly._invalidate_trigger_cache() FROM PUBLIC;
-- Row triggers: a statement that changes no row (the trigger's DELETE of a teardown the user does not have) sends
-- nothing. ALWAYS: changes applied by logical replication or with session_replication_role = replica count too.
CREATE TRIGGER invalidate_trigger_cache AFTER INSERT OR UPDATE OR DELETE ON fly.tier_policies
    FOR EACH ROW EXECUTE FUNCTION fly._invalidate_trigger_cache();
CREATE TRIGGER invalidate_trigger_cache_truncate AFTER TRUNCATE ON fly.tier_policies
    FOR EACH STATEMENT EXECUTE FUNCTION fly._invalidate_trigger_cache();
CREATE TRIGGER invalidate_trigger_cache AFTER INSERT OR UPDATE OR DELETE ON fly.tier_source
    FOR EACH ROW EXECUTE FUNCTION fly._invalidate_trigger_cache();
CREATE TRIGGER invalidate_trigger_cache_truncate AFTER TRUNCATE ON fly.tier_source
    FOR EACH STATEMENT EXECUTE FUNCTION fly._invalidate_trigger_cache();
CREATE TRIGGER invalidate_trigger_cache AFTER INSERT OR UPDATE OR DELETE ON fly.tier_waits
    FOR EACH ROW EXECUTE FUNCTION fly._invalidate_trigger_cache();
CREATE TRIGGER invalidate_trigger_cache_truncate AFTER TRUNCATE ON fly.tier_waits
    FOR EACH STATEMENT EXECUTE FUNCTION fly._invalidate_trigger_cache();
CREATE TRIGGER invalidate_trigger_cache AFTER INSERT OR UPDATE OR DELETE ON fly.manual_teardowns
    FOR EACH ROW EXECUTE FUNCTION fly._invalidate_trigger_cache();
CREATE TRIGGER invalidate_trigger_cache_truncate AFTER TRUNCATE ON fly.manual_teardowns
    FOR EACH STATEMENT EXECUTE FUNCTION fly._invalidate_trigger_cache();
ALTER TABLE fly.tier_policies ENABLE ALWAYS TRIGGER invalidate_trigger_cache,
    ENABLE ALWAYS TRIGGER invalidate_trigger_cache_truncate;
ALTER TABLE fly.tier_source ENABLE ALWAYS TRIGGER invalidate_trigger_cache,
    ENABLE ALWAYS TRIGGER invalidate_trigger_cache_truncate;
ALTER TABLE fly.tier_waits ENABLE ALWAYS TRIGGER invalidate_trigger_cache,
    ENABLE ALWAYS TRIGGER invalidate_trigger_cache_truncate;
ALTER TABLE fly.manual_teardowns ENABLE ALWAYS TRIGGER invalidate_trigger_cache,
    ENABLE ALWAYS TRIGGER invalidate_trigger_cache_truncate;

--------------------------------------------------------------------------------------------------------------
-- Privileges: functions are executable by PUBLIC by default; take that back from everything here. Tables,
-- views and sequences grant PUBLIC nothing by default either; the REVOKE writes their ACL out explicitly for
-- 0.1.0's objects, as 0.1.0 did. Later objects are revoked where they are created, and tier_waits,
-- policy_changes, manual_teardowns and needs_attention keep the default ACL: the ACLs read as after ALTER
-- EXTENSION UPDATE.
--------------------------------------------------------------------------------------------------------------
REVOKE ALL ON fly.tier_policies, fly.user_fly_apps, fly.user_fly_app_events, fly.reconcile_queue, fly.tier_source,
    fly.live_apps, fly.recent_events, fly.provision_success_rate, fly.worker_overview, fly.pending_work,
    fly.guest_prices, fly.price_settings, fly.region_price_multipliers, fly.cost_summary, fly.orphan_apps
    FROM PUBLIC;
REVOKE ALL ON SEQUENCE fly.user_fly_apps_id_seq, fly.user_fly_app_events_id_seq FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA fly FROM PUBLIC;
--------------------------------------------------------------------------------------------------------------
-- Issue 16: 100,000 users. The worker's claim and its per-pass look at the queue read these two partial indexes
-- in order with a LIMIT, so that their cost does not grow with the backlog: unclaimed items by (run_after,
-- user_id), the claim order; claimed ones by lease_until, for abandoned claims and the next lease to run out.
--------------------------------------------------------------------------------------------------------------
CREATE INDEX reconcile_queue_claim ON fly.reconcile_queue (run_after, user_id) WHERE claimed_at IS NULL;
CREATE INDEX reconcile_queue_lease ON fly.reconcile_queue (lease_until) WHERE claimed_at IS NOT NULL;

--------------------------------------------------------------------------------------------------------------
-- Issue 16: event retention (fly.event_retention). Events older than the retention, and app rows deleted longer
-- ago than that with the events they still have, go in small batches: the worker calls fly._retention_batch()
-- one short transaction at a time (JobRunner::RetentionStep), skipping rows another transaction holds.
--------------------------------------------------------------------------------------------------------------
-- Only deleted rows: the retention's walk over app rows, oldest deletion first.
CREATE INDEX user_fly_apps_deleted_at ON fly.user_fly_apps (deleted_at) WHERE deleted_at IS NOT NULL;

CREATE FUNCTION fly._retention_batch(max integer, retention interval DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET lock_timeout = '1s' AS $$
DECLARE
    keep interval := coalesce(retention, current_setting('fly.event_retention')::interval);
    cutoff timestamptz;
    removed integer;
    n integer;
    apps bigint[];
BEGIN
    IF max IS NULL OR max < 1 THEN
        RAISE EXCEPTION 'fly._retention_batch: max must be at least 1' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF keep <= interval '0' THEN
        RETURN 0;  -- 0 keeps everything
    END IF;
    cutoff := now() - keep;
    -- Old events, oldest first (user_fly_app_events_created_at).
    WITH gone AS (
        DELETE FROM fly.user_fly_app_events e WHERE e.id IN (
            SELECT o.id FROM fly.user_fly_app_events o WHERE o.created_at < cutoff
             ORDER BY o.created_at LIMIT max FOR UPDATE SKIP LOCKED)
        RETURNING 1)
    SELECT count(*) INTO removed FROM gone;
    IF removed >= max THEN
        RETURN removed;
    END IF;
    -- App rows deleted before the cutoff, with the events they still have (the foreign key has no ON DELETE). An
    -- app whose events do not all fit in this batch stays for the next one.
    SELECT array_agg(d.id) INTO apps
      FROM (SELECT a.id FROM fly.user_fly_apps a WHERE a.deleted_at < cutoff
             ORDER BY a.deleted_at LIMIT max - removed FOR UPDATE SKIP LOCKED) d;
    IF apps IS NULL THEN
        RETURN removed;
    END IF;
    WITH gone AS (
        DELETE FROM fly.user_fly_app_events e WHERE e.id IN (
            SELECT o.id FROM fly.user_fly_app_events o WHERE o.fly_app_id = ANY (apps)
             LIMIT max - removed FOR UPDATE SKIP LOCKED)
        RETURNING 1)
    SELECT count(*) INTO n FROM gone;
    removed := removed + n;
    WITH gone AS (
        DELETE FROM fly.user_fly_apps a WHERE a.id IN (
            SELECT x.id FROM fly.user_fly_apps x
             WHERE x.id = ANY (apps)
               AND NOT EXISTS (SELECT 1 FROM fly.user_fly_app_events e WHERE e.fly_app_id = x.id)
             ORDER BY x.deleted_at LIMIT max - removed)
        RETURNING 1)
    SELECT count(*) INTO n FROM gone;
    RETURN removed + n;
END $$;
COMMENT ON FUNCTION fly._retention_batch(integer, interval) IS
    'Deletes at most max rows: events older than retention (NULL: fly.event_retention; 0 keeps everything), then '
    'app rows deleted longer ago than that, with their remaining events. Returns how many rows it deleted; the '
    'worker calls it in batches';
REVOKE ALL ON FUNCTION fly._retention_batch(integer, interval) FROM PUBLIC;

-- Health passes (issue 16): the worker pages through the active apps by their last check, never checked first
-- (a keyset over this index), instead of loading them all.
CREATE INDEX user_fly_apps_health_order ON fly.user_fly_apps
    ((COALESCE(last_health_check_at, '-infinity'::timestamptz)), id)
    WHERE deleted_at IS NULL AND status = 'active';
--------------------------------------------------------------------------------------------------------------
-- Folding the tier-change log (fly.tier_intents, above) on demand (issue 16).
--------------------------------------------------------------------------------------------------------------
CREATE FUNCTION fly.fold_intents() RETURNS bigint
    LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'fold_intents';
REVOKE ALL ON FUNCTION fly.fold_intents() FROM PUBLIC;
COMMENT ON FUNCTION fly.fold_intents() IS
    'Folds every committed tier change in fly.tier_intents into fly.reconcile_queue now (the worker does within '
    '200 ms); returns how many it folded';
-- Room on each page for a row's next version: a relabel (and most status updates) then stays on its page, a
-- heap-only update that writes no index entry; so does a fold that replaces a due item's intent.
ALTER TABLE fly.user_fly_apps SET (fillfactor = 80);
ALTER TABLE fly.reconcile_queue SET (fillfactor = 80);

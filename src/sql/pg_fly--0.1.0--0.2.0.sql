-- pg_fly 0.1.0 → 0.2.0. CREATE EXTENSION pg_fly installs 0.1.0 and runs this script; ALTER EXTENSION pg_fly
-- UPDATE runs it on an existing 0.1.0 installation. Never edit a released script: add a new upgrade script.
\echo Use "ALTER EXTENSION pg_fly UPDATE" to load this file. \quit

--------------------------------------------------------------------------------------------------------------
-- Image rollouts. fly.image is the image new apps get; an app that runs keeps its image until a rollout moves
-- it (machine update in place), canary apps first, paced by the worker's rate limiter.
--------------------------------------------------------------------------------------------------------------
CREATE TABLE fly.image_rollouts (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    image           text NOT NULL CHECK (image ~ '^[^[:space:][:cntrl:]]+$' AND length(image) <= 500),
    status          text NOT NULL DEFAULT 'canary'
                    CHECK (status IN ('canary', 'canary_check', 'rolling', 'completed', 'halted', 'cancelled')),
    canary_count    integer NOT NULL CHECK (canary_count >= 0),
    canary_wait     interval NOT NULL CHECK (canary_wait > interval '0'),
    max_failures    integer NOT NULL CHECK (max_failures >= 0),
    canary_deadline timestamptz,   -- set when the canaries' health check begins
    halted_reason   text,
    started_by      name NOT NULL DEFAULT current_user,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);
-- One rollout moves machines at a time.
CREATE UNIQUE INDEX image_rollouts_one_running ON fly.image_rollouts ((true))
    WHERE status IN ('canary', 'canary_check', 'rolling');
COMMENT ON TABLE fly.image_rollouts IS 'Image rollouts: one row per fly.start_image_rollout() call';

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
       r.max_failures, r.canary_deadline, r.halted_reason, r.started_by, r.created_at, r.finished_at
  FROM fly.image_rollouts r
  LEFT JOIN fly.image_rollout_apps a ON a.rollout_id = r.id
 GROUP BY r.id;
COMMENT ON VIEW fly.image_rollout_progress IS 'Each image rollout with how many apps are pending, updated, failed';

REVOKE ALL ON fly.image_rollouts, fly.image_rollout_apps, fly.image_rollout_progress FROM PUBLIC;
REVOKE ALL ON SEQUENCE fly.image_rollouts_id_seq FROM PUBLIC;
REVOKE ALL ON FUNCTION fly._request_rollout_pass(), fly.start_image_rollout(text, integer, integer, interval),
    fly.cancel_image_rollout(bigint), fly.resume_image_rollout(bigint) FROM PUBLIC;

--------------------------------------------------------------------------------------------------------------
-- Onboarding: a subscription table with a text user column may hold ids that are not uuids (rows written while
-- the trigger was detached). They are skipped with a warning instead of failing the whole onboarding.
--------------------------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION fly.onboard_existing_users(dry_run boolean DEFAULT true)
RETURNS TABLE (user_id uuid, tier text, queued boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    src fly.tier_source;
    skipped bigint;
    -- What uuid_in accepts: 32 hex digits, optionally in braces, with or without the dashes.
    uuid_pattern constant text := '^\{?[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}\}?$';
    -- Paid-tier subscriptions; uid is NULL for an id that is not a uuid (CASE keeps the cast from failing).
    paid constant text := 'SELECT CASE WHEN s.%1$I::text ~* $1 THEN s.%1$I::text::uuid END AS uid, '
                          's.%1$I IS NOT NULL AS has_id, s.%2$I::text AS tier FROM %3$s s '
                          'JOIN fly.tier_policies p ON p.tier = s.%2$I::text AND p.dedicated_app';
BEGIN
    src := fly._tier_source();
    EXECUTE format('SELECT count(*) FROM (' || paid || ') s WHERE s.has_id AND s.uid IS NULL',
                   src.user_column, src.tier_column, src.table_name)
       INTO skipped USING uuid_pattern;
    IF skipped > 0 THEN
        RAISE WARNING '% subscription row(s) on a paid tier have a user id that is not a uuid; they are skipped',
            skipped USING HINT = format('Find them with: SELECT * FROM %s WHERE %I::text !~* %L',
                                        src.table_name, src.user_column, uuid_pattern);
    END IF;
    FOR user_id, tier IN EXECUTE format(
        'SELECT s.uid, s.tier FROM (' || paid || ') s WHERE s.uid IS NOT NULL '
        'AND NOT EXISTS (SELECT 1 FROM fly.user_fly_apps a WHERE a.user_id = s.uid AND a.deleted_at IS NULL '
        '                AND a.status <> ''failed'') '
        'AND NOT EXISTS (SELECT 1 FROM fly.reconcile_queue q WHERE q.user_id = s.uid) '
        'ORDER BY 1', src.user_column, src.tier_column, src.table_name) USING uuid_pattern
    LOOP
        IF NOT dry_run THEN
            PERFORM fly._enqueue_reconcile(user_id, 'present', tier, 'onboarding');
        END IF;
        queued := NOT dry_run;
        RETURN NEXT;
    END LOOP;
END $$;

--------------------------------------------------------------------------------------------------------------
-- The cost trigger runs only when what it reads changes: a tier relabel (the subscription trigger's pro ->
-- elite with equal policies) no longer pays for it. cost_summary ignores a month_start from an earlier month.
--------------------------------------------------------------------------------------------------------------
DROP TRIGGER user_fly_apps_cost ON fly.user_fly_apps;
CREATE TRIGGER user_fly_apps_cost
    BEFORE INSERT OR UPDATE OF cpu_kind, cpus, memory_mb, region, status, running_since, month_start
    ON fly.user_fly_apps
    FOR EACH ROW EXECUTE FUNCTION fly._track_app_cost();

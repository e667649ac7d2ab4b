-- Image rollouts: the SQL surface (the worker side runs against the simulator in the integration tests; here
-- fly.image is unset, so the worker leaves rollouts alone).
SET search_path = public, fly;

-- Nothing to roll out without an image, and bad arguments are named.
SELECT fly.start_image_rollout();
SELECT fly.start_image_rollout('registry.fly.io/vyx:v2 --privileged');
SELECT fly.start_image_rollout(repeat('x', 501));
SELECT fly.start_image_rollout('registry.fly.io/vyx:v2', canary_count => -1);
SELECT fly.start_image_rollout('registry.fly.io/vyx:v2', max_failures => NULL);
SELECT fly.start_image_rollout('registry.fly.io/vyx:v2', canary_wait => interval '0');
SELECT fly.start_image_rollout('registry.fly.io/vyx:v2', canary_wait => interval '2 days');

-- Three active apps on v1, one already on v2, one still provisioning, one deleted.
INSERT INTO fly.user_fly_apps (user_id, tier, fly_app_name, fly_org_slug, fly_machine_id, status, region, image,
                               provisioned_at, deleted_at)
VALUES ('a1a1a1a1-0000-4000-8000-000000000001', 'pro', 'vyx-user-roll0001', 'personal', 'm1', 'active', 'sjc', 'registry.fly.io/vyx:v1', now(), NULL),
       ('a1a1a1a1-0000-4000-8000-000000000002', 'pro', 'vyx-user-roll0002', 'personal', 'm2', 'active', 'sjc', 'registry.fly.io/vyx:v1', now(), NULL),
       ('a1a1a1a1-0000-4000-8000-000000000003', 'pro', 'vyx-user-roll0003', 'personal', 'm3', 'active', 'sjc', 'registry.fly.io/vyx:v1', now(), NULL),
       ('a1a1a1a1-0000-4000-8000-000000000004', 'pro', 'vyx-user-roll0004', 'personal', 'm4', 'active', 'sjc', 'registry.fly.io/vyx:v2', now(), NULL),
       ('a1a1a1a1-0000-4000-8000-000000000005', 'pro', 'vyx-user-roll0005', 'personal', NULL, 'provisioning', 'sjc', NULL, NULL, NULL),
       ('a1a1a1a1-0000-4000-8000-000000000006', 'pro', 'vyx-user-roll0006', 'personal', 'm6', 'deleted', 'sjc', 'registry.fly.io/vyx:v1', now(), now());

-- Two canaries, then the rest; apps already on the image are left out.
SELECT fly.start_image_rollout('registry.fly.io/vyx:v2', canary_count => 2) AS rollout_id \gset
SELECT fly_app_name, canary, position, status, from_image FROM fly.image_rollout_apps
 WHERE rollout_id = :rollout_id ORDER BY position;
SELECT image, status, apps, canaries, pending, updated, failed, skipped, percent_done, max_failures, started_by
  FROM fly.image_rollout_progress WHERE id = :rollout_id;

-- One rollout at a time; a running one cannot be resumed.
SELECT fly.start_image_rollout('registry.fly.io/vyx:v3');
SELECT fly.resume_image_rollout(:rollout_id);

-- Cancelling skips what was not sent; a cancelled rollout can be neither cancelled nor resumed again.
SELECT fly.cancel_image_rollout(:rollout_id);
SELECT status, finished_at IS NOT NULL AS finished FROM fly.image_rollouts WHERE id = :rollout_id;
SELECT fly_app_name, status, last_error FROM fly.image_rollout_apps WHERE rollout_id = :rollout_id ORDER BY position;
SELECT fly.cancel_image_rollout(:rollout_id);
SELECT fly.resume_image_rollout(:rollout_id);

-- A halted rollout resumes: failed apps are tried again, and canaries not yet seen healthy are checked again.
SELECT fly.start_image_rollout('registry.fly.io/vyx:v2', canary_count => 1, max_failures => 1) AS rollout_id \gset
UPDATE fly.image_rollout_apps SET status = CASE position WHEN 1 THEN 'updated' WHEN 2 THEN 'failed' ELSE status END,
       attempts = 3 WHERE rollout_id = :rollout_id;
UPDATE fly.image_rollouts SET status = 'halted', halted_reason = 'test', finished_at = now() WHERE id = :rollout_id;
SELECT fly.resume_image_rollout(:rollout_id);
SELECT status, halted_reason, finished_at FROM fly.image_rollouts WHERE id = :rollout_id;
SELECT position, canary, status, attempts FROM fly.image_rollout_apps WHERE rollout_id = :rollout_id ORDER BY position;
SELECT fly.cancel_image_rollout(:rollout_id);

-- Nothing to do: every active app already runs the image.
UPDATE fly.user_fly_apps SET image = 'registry.fly.io/vyx:v2' WHERE deleted_at IS NULL AND status = 'active';
SELECT fly.start_image_rollout('registry.fly.io/vyx:v2') AS rollout_id \gset
SELECT status, apps, percent_done FROM fly.image_rollout_progress WHERE id = :rollout_id;

-- started_by is the session's user, not the extension's owner the SECURITY DEFINER function runs as.
CREATE ROLE pgfly_rollout_admin;
GRANT USAGE ON SCHEMA fly TO pgfly_rollout_admin;
GRANT EXECUTE ON FUNCTION fly.start_image_rollout(text, integer, integer, interval) TO pgfly_rollout_admin;
UPDATE fly.user_fly_apps SET image = 'registry.fly.io/vyx:v1' WHERE fly_app_name = 'vyx-user-roll0001';
SET SESSION AUTHORIZATION pgfly_rollout_admin;
SELECT fly.start_image_rollout('registry.fly.io/vyx:v2') AS rollout_id \gset
RESET SESSION AUTHORIZATION;
SELECT started_by, apps FROM fly.image_rollout_progress WHERE id = :rollout_id;
SELECT fly.cancel_image_rollout(:rollout_id);
REVOKE ALL ON FUNCTION fly.start_image_rollout(text, integer, integer, interval) FROM pgfly_rollout_admin;
REVOKE ALL ON SCHEMA fly FROM pgfly_rollout_admin;
DROP ROLE pgfly_rollout_admin;

TRUNCATE fly.image_rollouts, fly.image_rollout_apps, fly.user_fly_apps CASCADE;

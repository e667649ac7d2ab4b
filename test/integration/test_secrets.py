"""Secrets that change: when fly.app_secrets_file changes and the server reloads, the worker sets every live app's
secrets again (a removed name unset with null), then updates the machines to the new min_secrets_version through
the rollout machinery: one canary first, halting on a failed update, resumable by the admin. An unchanged file
makes no call. Assertions are made on what the simulator received and holds; no secret value may appear in the
tables, the events, the server log or the simulator's request log."""

import hashlib
import hmac
import os
import re
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_failures import fly_requests, users  # noqa: E402
from test_provisioning import ProvisioningTestCase, app_name  # noqa: E402

FIRST = {"ALPHA_KEY": "alpha-value-first-5150", "BRAVO_KEY": "bravo-value-gone-8086", "CHARLIE_KEY": "charlie-value-6502"}
SECOND = {"ALPHA_KEY": "alpha-value-second-6809", "CHARLIE_KEY": "charlie-value-6502", "DELTA_KEY": "delta-value-z80"}
ALL_VALUES = set(FIRST.values()) | set(SECOND.values())
# The README's grants for a dashboard role, and the rollout view an admin may add to them.
DASHBOARD_GRANTS = ("GRANT USAGE ON SCHEMA fly TO {role}; GRANT SELECT ON fly.live_apps, fly.recent_events, "
                    "fly.provision_success_rate, fly.image_rollout_progress TO {role};")


def public_encoding(values):
    """The digest's input format (src/core/secrets.cpp), which anyone can read in the source."""
    encoded = b"pg_fly secrets v1\n"
    for name in sorted(values):
        name_bytes, value_bytes = name.encode(), values[name].encode()
        encoded += str(len(name_bytes)).encode() + b":" + name_bytes + str(len(value_bytes)).encode() + b":" + value_bytes
    return encoded


class SecretsRolloutTest(ProvisioningTestCase):
    cluster_settings = {"fly.request_timeout": "'5s'", "fly.rate_limits": "off"}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.secrets_path = os.path.join(cls.pg.workdir, "app_secrets")
        cls.write_secrets(FIRST)
        cls.pg.write_settings({"fly.app_secrets_file": f"'{cls.secrets_path}'"})
        cls.pg.reload()
        time.sleep(0.5)

    @classmethod
    def write_secrets(cls, values):
        with open(cls.secrets_path, "w") as f:
            f.write("# operator secrets\n" + "".join(f"{name}={value}\n" for name, value in values.items()))
        os.chmod(cls.secrets_path, 0o600)
        if os.geteuid() == 0:
            import pwd
            pw = pwd.getpwnam("postgres")
            os.chown(cls.secrets_path, pw.pw_uid, pw.pw_gid)

    def setUp(self):
        super().setUp()
        self.pg.sql("TRUNCATE fly.image_rollouts, fly.image_rollout_apps")
        self.sim.configure(faults=[])
        self.write_secrets(FIRST)
        self.pg.reload()
        time.sleep(0.5)

    def provision(self, count, seed):
        group = users(count, seed)
        self.pg.sql("INSERT INTO user_subscriptions VALUES " + ",".join(f"('{u}', 'pro')" for u in group))
        self.settle(timeout=120)
        self.assertEqual(self.pg.value("SELECT count(*) FROM fly.user_fly_apps WHERE status = 'active'"), str(count))
        return group

    def secrets_rollout(self, timeout=30):
        self.assertTrue(self.pg.wait_for("SELECT count(*) = 1 FROM fly.image_rollouts WHERE kind = 'secrets'",
                                         timeout, interval=0.2), "no secrets rollout started")
        return self.pg.value("SELECT id FROM fly.image_rollouts WHERE kind = 'secrets'")

    def wait_for_rollout(self, rollout_id, statuses, timeout=120):
        self.assertTrue(
            self.pg.wait_for(f"SELECT status IN ({statuses}) FROM fly.image_rollouts WHERE id = {rollout_id}", timeout,
                             interval=0.2),
            repr(self.pg.sql(f"SELECT * FROM fly.image_rollout_progress WHERE id = {rollout_id}")))

    def assert_no_secret_value_anywhere(self):
        tables = repr(self.pg.sql("SELECT a::text FROM fly.user_fly_apps a")) + repr(
            self.pg.sql("SELECT e::text FROM fly.user_fly_app_events e")) + repr(
            self.pg.sql("SELECT r::text FROM fly.image_rollouts r")) + repr(
            self.pg.sql("SELECT r::text FROM fly.image_rollout_apps r"))
        log = self.pg.server_log()
        requests = repr(self.sim.requests())
        for value in ALL_VALUES:
            self.assertNotIn(value, tables)
            self.assertNotIn(value, log)
            self.assertNotIn(value, requests)

    def test_changed_file_sets_secrets_again_and_rolls_machines_canary_first(self):
        group = self.provision(3, 81)
        names = {app_name(u) for u in group}
        # A fresh provision records the set it created the machine with: no rollout follows it.
        self.assertEqual(self.pg.sql("SELECT DISTINCT secret_names::text FROM fly.user_fly_apps"),
                         [["{ALPHA_KEY,BRAVO_KEY,CHARLIE_KEY}"]])
        self.assertEqual(self.pg.value("SELECT count(DISTINCT secrets_digest) FROM fly.user_fly_apps"), "1")
        first_digest = self.pg.value("SELECT secrets_digest FROM fly.user_fly_apps LIMIT 1")

        # An unchanged file, reloaded: nothing is sent.
        before = len(fly_requests(self.sim))
        self.pg.reload()
        time.sleep(3)
        self.assertEqual([r["endpoint"] for r in fly_requests(self.sim)[before:]], [])
        self.assertEqual(self.pg.value("SELECT count(*) FROM fly.image_rollouts"), "0")

        # ALPHA_KEY changes, BRAVO_KEY goes, DELTA_KEY comes.
        before = len(fly_requests(self.sim))
        self.write_secrets(SECOND)
        self.pg.reload()
        rollout_id = self.secrets_rollout()
        self.wait_for_rollout(rollout_id, "'completed'")
        log = fly_requests(self.sim)[before:]
        sets = [r for r in log if r["endpoint"] == "set_secrets"]
        updates = [r for r in log if r["endpoint"] == "update_machine"]
        self.assertEqual(sorted(r["path"].split("/")[3] for r in sets), sorted(names), "each app set once")
        self.assertTrue(all(r["status"] == 200 for r in sets + updates))
        # The log holds names and nulls only: the removed name is unset with null.
        self.assertTrue(all(r["body"]["values"]["BRAVO_KEY"] is None for r in sets), sets)
        self.assertTrue(all(sorted(r["body"]["values"]) == ["ALPHA_KEY", "BRAVO_KEY", "CHARLIE_KEY", "DELTA_KEY"]
                            for r in sets))
        state = self.sim.state()["apps"]
        for name in names:
            app = state[name]
            self.assertEqual(sorted(app["secrets"]["names"]), ["ALPHA_KEY", "CHARLIE_KEY", "DELTA_KEY"])
            live = [m for m in app["machines"].values() if m["state"] not in ("destroyed", "destroying")]
            self.assertEqual(len(live), 1)
            self.assertEqual(live[0]["min_secrets_version"], app["secrets"]["version"])
            revealed = self.sim.control("GET", f"secrets/{name}?reveal=1")["secrets"]
            self.assertEqual(revealed["ALPHA_KEY"], SECOND["ALPHA_KEY"])
        # Canary first: its secrets set and its machine updated and seen healthy before any other app's secrets.
        canary = self.pg.value(f"SELECT fly_app_name FROM fly.image_rollout_apps WHERE rollout_id = {rollout_id} "
                               "AND canary AND status = 'healthy'")
        self.assertEqual(sets[0]["path"].split("/")[3], canary)
        self.assertEqual(updates[0]["path"].split("/")[3], canary)
        self.assertTrue(all(r["t_mono"] > updates[0]["t_mono"] for r in sets[1:]))
        self.assertEqual(self.pg.sql(f"SELECT kind, apps, updated, failed, percent_done FROM fly.image_rollout_progress "
                                     f"WHERE id = {rollout_id}"), [["secrets", "3", "3", "0", "100.0"]])
        # Each app now records the new set: names only, and one digest for the whole set.
        self.assertEqual(self.pg.sql("SELECT DISTINCT secret_names::text FROM fly.user_fly_apps"),
                         [["{ALPHA_KEY,CHARLIE_KEY,DELTA_KEY}"]])
        digests = self.pg.sql("SELECT DISTINCT secrets_digest FROM fly.user_fly_apps")
        self.assertEqual(len(digests), 1)
        self.assertNotEqual(digests[0][0], first_digest)
        self.assertEqual(self.pg.value(f"SELECT secrets_digest FROM fly.image_rollouts WHERE id = {rollout_id}"),
                         digests[0][0])
        self.assertEqual(self.pg.value("SELECT count(*) FROM fly.user_fly_app_events WHERE event_type = 'secrets_set' "
                                       "AND details->'unset' = '[\"BRAVO_KEY\"]' AND details->'names' = "
                                       "'[\"ALPHA_KEY\", \"CHARLIE_KEY\", \"DELTA_KEY\"]' "
                                       f"AND (details->>'rollout_id')::bigint = {rollout_id} "
                                       "AND details ? 'version'"), "3")
        self.assertEqual(self.pg.value("SELECT count(*) FROM fly.user_fly_app_events "
                                       "WHERE event_type = 'secrets_rollout_updated'"), "3")
        for name in names:
            version = self.pg.value(f"SELECT secrets_version FROM fly.user_fly_apps WHERE fly_app_name = '{name}'")
            self.assertEqual(int(version), state[name]["secrets"]["version"])

        # Reloaded again without a change: no call.
        before = len(fly_requests(self.sim))
        self.pg.reload()
        time.sleep(3)
        self.assertEqual([r["endpoint"] for r in fly_requests(self.sim)[before:]], [])
        self.assertEqual(self.pg.value("SELECT count(*) FROM fly.image_rollouts"), "1")
        self.assert_no_secret_value_anywhere()

    def test_a_failed_update_halts_the_secrets_rollout_until_the_admin_resumes_it(self):
        group = self.provision(3, 82)
        names = {app_name(u) for u in group}
        self.sim.configure(faults=[{"endpoint": "update_machine", "always": True, "kind": "status", "status": 422,
                                    "body": {"error": "invalid config"}}])
        before = len(fly_requests(self.sim))
        self.write_secrets(SECOND)
        self.pg.reload()
        rollout_id = self.secrets_rollout()
        self.wait_for_rollout(rollout_id, "'halted'", timeout=60)
        time.sleep(2)  # nothing more goes out after the halt
        log = fly_requests(self.sim)[before:]
        sets = [r for r in log if r["endpoint"] == "set_secrets"]
        updates = [r for r in log if r["endpoint"] == "update_machine"]
        # Only the canary was touched: its secrets set, its machine update refused.
        self.assertEqual(len(sets), 1)
        self.assertEqual(len(updates), 1)
        canary = sets[0]["path"].split("/")[3]
        self.assertEqual(self.pg.sql(f"SELECT canary, status, count(*) FROM fly.image_rollout_apps WHERE rollout_id = "
                                     f"{rollout_id} GROUP BY 1, 2 ORDER BY 1, 2"),
                         [["f", "pending", "2"], ["t", "failed", "1"]])
        self.assertIn("failed to update", self.pg.value(f"SELECT halted_reason FROM fly.image_rollout_progress "
                                                        f"WHERE id = {rollout_id} AND kind = 'secrets'"))
        state = self.sim.state()["apps"]
        self.assertEqual(sorted(state[canary]["secrets"]["names"]), ["ALPHA_KEY", "CHARLIE_KEY", "DELTA_KEY"])
        for name in names - {canary}:
            self.assertEqual(sorted(state[name]["secrets"]["names"]), ["ALPHA_KEY", "BRAVO_KEY", "CHARLIE_KEY"])
        # The canary's digest is not recorded: its machine does not run the new set.
        self.assertEqual(self.pg.value("SELECT count(DISTINCT secrets_digest) FROM fly.user_fly_apps"), "1")
        self.assertEqual(self.pg.value("SELECT count(*) FROM fly.user_fly_app_events "
                                       "WHERE event_type = 'secrets_rollout_failed'"), "1")
        # A reload does not start another rollout for the same set while this one is halted.
        self.pg.reload()
        time.sleep(2)
        self.assertEqual(self.pg.value("SELECT count(*) FROM fly.image_rollouts"), "1")

        # The admin fixes the cause and resumes it, as with an image rollout.
        self.sim.configure(faults=[])
        self.pg.sql(f"SELECT fly.resume_image_rollout({rollout_id})")
        self.wait_for_rollout(rollout_id, "'completed'")
        state = self.sim.state()["apps"]
        for name in names:
            app = state[name]
            self.assertEqual(sorted(app["secrets"]["names"]), ["ALPHA_KEY", "CHARLIE_KEY", "DELTA_KEY"])
            live = [m for m in app["machines"].values() if m["state"] not in ("destroyed", "destroying")]
            self.assertEqual(live[0]["min_secrets_version"], app["secrets"]["version"])
        self.assertEqual(self.pg.value("SELECT count(DISTINCT secrets_digest) FROM fly.user_fly_apps"), "1")
        self.assert_no_secret_value_anywhere()

    def test_a_dashboard_role_cannot_confirm_a_guessed_secret(self):
        role = "i14_dashboard"
        self.pg.sql(f"DROP ROLE IF EXISTS {role}; CREATE ROLE {role}; " + DASHBOARD_GRANTS.format(role=role))
        self.addCleanup(self.pg.psql, f"DROP OWNED BY {role}; DROP ROLE {role}", check=False)
        self.provision(2, 83)
        # A rollout for SECOND: secrets_rollout_* events and a row in fly.image_rollout_progress for it.
        self.write_secrets(SECOND)
        self.pg.reload()
        rollout_id = self.secrets_rollout()
        self.wait_for_rollout(rollout_id, "'completed'")
        recorded = self.pg.value("SELECT DISTINCT secrets_digest FROM fly.user_fly_apps")
        self.assertRegex(recorded, "^[0-9a-f]{64}$")

        def as_dashboard(sql):
            return self.pg.psql(f"SET ROLE {role}; {sql}", check=False)

        # The key is the superuser's alone.
        refused = as_dashboard("SELECT key FROM fly.secrets_digest_key")
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn("permission denied", refused.stderr)
        self.assertIn("permission denied", as_dashboard("SELECT secrets_digest FROM fly.user_fly_apps").stderr)
        # Everything the dashboard can read.
        seen = ""
        for view in ("fly.live_apps", "fly.recent_events", "fly.provision_success_rate",
                     "fly.image_rollout_progress"):
            result = as_dashboard(f"SELECT v::text FROM {view} v")
            self.assertEqual(result.returncode, 0, result.stderr)
            seen += result.stdout
        self.assertIn("secrets_rollout_updated", seen)
        self.assertIn(f"({rollout_id},", seen)
        # Neither the unkeyed hash of the true set (what a guesser would compute and compare) nor the recorded
        # digest is visible: at most a short prefix of the keyed one.
        unkeyed = hashlib.sha256(public_encoding(SECOND)).hexdigest()
        self.assertNotEqual(recorded, unkeyed)
        self.assertNotIn(unkeyed, seen)
        self.assertNotIn(unkeyed[:8], seen)
        self.assertNotIn(recorded, seen)
        self.assertEqual(re.findall(r"[0-9a-f]{64}", seen), [])
        # The recorded digest is HMAC-SHA-256 under the database's key.
        key = self.pg.value("SELECT key FROM fly.secrets_digest_key")
        self.assertGreaterEqual(len(key), 32)
        self.assertEqual(recorded, hmac.new(key.encode(), public_encoding(SECOND), hashlib.sha256).hexdigest())
        self.assert_no_secret_value_anywhere()


if __name__ == "__main__":
    unittest.main()

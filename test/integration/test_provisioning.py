"""The provisioning worker end to end: a real PostgreSQL with pg_fly preloaded, real libcurl, and the Fly API
simulator on loopback. Assertions are made on what the simulator actually received and holds."""

import hashlib
import itertools
import os
import signal
import sys
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import TEST_TOKEN, Cluster, Simulator  # noqa: E402

USER = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
SECRET_VALUES = {"GEMINI_API_KEY": "gemini-secret-value-4711", "SUPABASE_SERVICE_KEY_B64": "eyJhbGciOi.jwt-secret"}


def app_name(user_id, prefix="vyx-user-"):
    return prefix + hashlib.sha256(user_id.encode()).hexdigest()[:8]


class ProvisioningTestCase(unittest.TestCase):
    """One simulator and one cluster per class; tables and simulator state are reset between tests."""

    # A create-machine request whose answer was lost may still take effect this long (the default is 30 s).
    cluster_settings = {"fly.request_timeout": "'5s'"}

    @classmethod
    def setUpClass(cls):
        cls.sim = Simulator()
        cls.pg = Cluster(cls.sim.url, cls.cluster_settings)
        cls.pg.sql("CREATE TABLE user_subscriptions (user_id uuid PRIMARY KEY, tier text NOT NULL DEFAULT 'free')")
        cls.pg.sql("SELECT fly.attach_tier_trigger()")

    @classmethod
    def tearDownClass(cls):
        cls.pg.destroy()
        cls.sim.stop()

    def setUp(self):
        self.pg.sql("TRUNCATE user_subscriptions, fly.reconcile_queue, fly.user_fly_app_events, fly.user_fly_apps")
        self.sim.control("POST", "reset")

    def settle(self, timeout=60):
        """Waits until the queue is empty and no operation is in flight, and (from 0.3.0 on) the worker has queued
        what policy changes ask for."""
        done = "NOT EXISTS (SELECT 1 FROM fly.pending_work)"
        if self.pg.value("SELECT to_regclass('fly.policy_changes') IS NOT NULL") == "t":
            done += (" AND NOT EXISTS (SELECT 1 FROM fly.policy_changes)"
                     " AND NOT EXISTS (SELECT 1 FROM fly.tier_waits w JOIN fly.tier_policies p ON p.tier = w.tier"
                     " WHERE w.reason = 'unknown_tier')")
        self.assertTrue(self.pg.wait_for("SELECT " + done, timeout),
                        "queue did not drain: " + repr(self.pg.sql("SELECT * FROM fly.pending_work")))

    def live_apps_on_fly(self):
        return self.sim.state()["apps"]

    def events(self, user_id=USER):
        return [row[0] for row in self.pg.sql(
            f"SELECT event_type FROM fly.user_fly_app_events WHERE user_id = '{user_id}' ORDER BY id")]


class SeedFlowTest(ProvisioningTestCase):
    def test_seed_tests_1_to_4(self):
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{USER}', 'free')")
        # Test 1: Upgrade User to Pro
        self.pg.sql(f"UPDATE user_subscriptions SET tier = 'pro' WHERE user_id = '{USER}'")
        self.settle()
        name = app_name(USER)
        row = self.pg.sql(f"SELECT fly_app_name, status, region, fly_machine_id, cpu_kind, cpus, memory_mb, image "
                          f"FROM fly.user_fly_apps WHERE user_id = '{USER}'")
        self.assertEqual(len(row), 1)
        self.assertEqual(row[0][:3], [name, "active", "sjc"])
        self.assertEqual(row[0][4:7], ["shared", "1", "256"])
        self.assertEqual(self.events(), ["provision_requested", "app_created", "machine_created",
                                         "provision_completed"])
        # Test 2: Check App Status
        status = self.pg.sql(f"SELECT fly_app_name, status, pending_action FROM fly.get_user_fly_app_status('{USER}')")
        self.assertEqual(status, [[name, "active", ""]])
        # Test 3: Verify Trader Isolation, on the machine's env as Fly holds it
        apps = self.live_apps_on_fly()
        self.assertEqual(list(apps), [name])
        machines = list(apps[name]["machines"].values())
        self.assertEqual(len(machines), 1)
        self.assertEqual(machines[0]["id"], row[0][3])
        self.assertEqual(machines[0]["state"], "started")
        env = machines[0]["config"]["env"]
        self.assertEqual(env["RUN_MODE"], "user_dedicated")
        self.assertEqual(env["USER_ID"], USER)
        self.assertEqual(machines[0]["config"]["metadata"]["pg_fly_user_id"], USER)
        self.assertEqual(self.sim.control("GET", f"apps/{name}/health")["run_mode"], "user_dedicated")
        # Test 4: Downgrade User to Free
        self.pg.sql(f"UPDATE user_subscriptions SET tier = 'free' WHERE user_id = '{USER}'")
        self.settle()
        self.assertEqual(self.live_apps_on_fly(), {})
        row = self.pg.sql(f"SELECT status, deleted_at IS NOT NULL FROM fly.user_fly_apps WHERE user_id = '{USER}'")
        self.assertEqual(row, [["deleted", "t"]])
        self.assertEqual(self.events()[-5:], ["deprovision_requested", "machines_stopped", "app_delete_requested",
                                              "app_delete_confirmed", "deprovision_completed"])
        # Both create_app keys were sent, and every request was authenticated.
        fly_requests = [r for r in self.sim.requests()["requests"] if r["path"].startswith("/v1/")]
        creates = [r for r in fly_requests if r["endpoint"] == "create_app"]
        self.assertEqual(creates[0]["body"], {"name": name, "app_name": name, "org_slug": "personal", "network": name})
        self.assertTrue(all(r["headers"].get("authorization") == "Bearer <redacted>" for r in fly_requests))

    def test_hundred_users_in_one_transaction(self):
        users = [str(uuid.UUID(int=i + 1, version=4)) for i in range(100)]
        values = ",".join(f"('{u}', 'pro')" for u in users)
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES {values}")
        self.settle(timeout=120)
        self.assertEqual(self.pg.value("SELECT count(*) FROM fly.user_fly_apps WHERE status = 'active'"), "100")
        apps = self.live_apps_on_fly()
        self.assertEqual(len(apps), 100)
        self.assertTrue(all(len(app["machines"]) == 1 for app in apps.values()))
        self.assertEqual(set(apps), {app_name(u) for u in users})

    def test_rapid_flips_converge_on_the_last_tier(self):
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{USER}', 'free')")
        for tier in itertools.islice(itertools.cycle(["pro", "free"]), 49):
            self.pg.sql(f"UPDATE user_subscriptions SET tier = '{tier}' WHERE user_id = '{USER}'")
            time.sleep(0.02)
        self.settle()
        self.assertEqual(list(self.live_apps_on_fly()), [app_name(USER)])  # the 49th change was to pro
        self.assertEqual(self.pg.value(f"SELECT count(*) FROM fly.user_fly_apps WHERE user_id = '{USER}' "
                                       f"AND deleted_at IS NULL AND status = 'active'"), "1")
        # Never more than one app for the user existed: creates and deletes alternate.
        live = 0
        for request in self.sim.requests()["requests"]:
            if request["endpoint"] == "create_app" and request["status"] == 201:
                live += 1
            elif request["endpoint"] == "delete_app" and request["status"] == 202:
                live -= 1
            self.assertLessEqual(live, 1)
        self.pg.sql(f"UPDATE user_subscriptions SET tier = 'free' WHERE user_id = '{USER}'")
        self.settle()
        self.assertEqual(self.live_apps_on_fly(), {})

    def test_resize_in_place_when_the_tier_policy_differs(self):
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{USER}', 'pro')")
        self.settle()
        machine_id = self.pg.value(f"SELECT fly_machine_id FROM fly.user_fly_apps WHERE user_id = '{USER}'")
        self.pg.sql("UPDATE fly.tier_policies SET memory_mb = 1024 WHERE tier = 'elite'")
        try:
            self.pg.sql(f"UPDATE user_subscriptions SET tier = 'elite' WHERE user_id = '{USER}'")
            self.settle()
            machine = self.live_apps_on_fly()[app_name(USER)]["machines"][machine_id]
            self.assertEqual(machine["config"]["guest"]["memory_mb"], 1024)
            self.assertIn("machine_updated", self.events())
            self.assertEqual(self.pg.sql(f"SELECT memory_mb, tier, status FROM fly.user_fly_apps "
                                         f"WHERE user_id = '{USER}'"), [["1024", "elite", "active"]])
        finally:
            # Changing the policy back resizes the elite app back too (issue 13): let that finish.
            self.pg.sql("UPDATE fly.tier_policies SET memory_mb = 256 WHERE tier = 'elite'")
            self.settle()


class NameCollisionTest(ProvisioningTestCase):
    def test_name_taken_by_another_org_moves_to_the_next_name(self):
        taken = app_name(USER)
        self.sim.control("POST", "foreign_apps", {"names": [taken], "org": "rival-org"})
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{USER}', 'pro')")
        self.settle()
        recorded = self.pg.sql(f"SELECT fly_app_name, name_attempt, status FROM fly.user_fly_apps "
                               f"WHERE user_id = '{USER}'")
        expected = taken + "-" + hashlib.sha256(USER.encode()).hexdigest()[8:12]
        self.assertEqual(recorded, [[expected, "1", "active"]])
        self.assertIn("app_name_taken", self.events())
        self.assertEqual(self.pg.value(f"SELECT fly.app_name_for('{USER}', 1)"), expected)

    def test_two_users_whose_names_collide_get_distinct_names(self):
        seen = {}
        for i in itertools.count():
            user = str(uuid.UUID(int=(0x5EED << 64) + i, version=4))
            name = app_name(user)
            if name in seen:
                first, second = seen[name], user
                break
            seen[name] = user
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{first}', 'pro')")
        self.settle()
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{second}', 'pro')")
        self.settle()
        names = dict(self.pg.sql("SELECT user_id, fly_app_name FROM fly.user_fly_apps WHERE status = 'active'"))
        self.assertEqual(names[first], app_name(first))
        self.assertNotEqual(names[second], names[first])
        self.assertTrue(names[second].startswith(app_name(second) + "-"))
        self.assertEqual(set(self.live_apps_on_fly()), set(names.values()))


class AmbiguousCreateTest(ProvisioningTestCase):
    def test_408_after_creating_the_machine_leaves_exactly_one(self):
        self.sim.configure(faults=[{"endpoint": "create_machine", "nth": [1], "kind": "status_after", "status": 408}])
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{USER}', 'pro')")
        self.settle()
        machines = self.live_apps_on_fly()[app_name(USER)]["machines"]
        self.assertEqual(len(machines), 1)
        creates = [r for r in self.sim.requests()["requests"] if r["endpoint"] == "create_machine"]
        self.assertEqual([r["status"] for r in creates], [408])
        self.assertEqual(self.pg.value(f"SELECT fly_machine_id FROM fly.user_fly_apps WHERE user_id = '{USER}'"),
                         list(machines)[0])
        self.assertIn("machine_reused", self.events())


class CrashTest(ProvisioningTestCase):
    """kill -9 of the worker, and an immediate restart of the whole server, while a step is in flight."""

    provision_steps = ["create_app", "list_machines", "create_machine", "wait_machine"]
    deprovision_steps = ["list_machines", "stop_machine", "wait_machine", "delete_app", "get_app"]

    def crash_during(self, endpoint, tier, how):
        self.sim.configure(latency={endpoint: {"fixed_ms": 1500, "jitter_ms": 0}})
        self.pg.sql(f"UPDATE user_subscriptions SET tier = '{tier}' WHERE user_id = '{USER}'")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pending = [r for r in self.sim.requests()["requests"] if r["endpoint"] == endpoint and r["status"] is None]
            if pending:
                break
            time.sleep(0.02)
        else:
            self.fail(f"{endpoint} was never called")
        if how == "kill -9":
            os.kill(int(self.pg.value("SELECT pid FROM fly.worker_status()")), signal.SIGKILL)
            time.sleep(0.5)
            self.assertTrue(self.pg.wait_for("SELECT pid IS NOT NULL FROM fly.worker_status()", timeout=30))
        else:
            self.pg.stop("immediate")
            self.pg.start()
        self.sim.configure(latency={endpoint: None})
        self.settle()

    def check_converged(self, present):
        apps = self.live_apps_on_fly()
        if present:
            self.assertEqual(list(apps), [app_name(USER)])
            self.assertEqual(len(apps[app_name(USER)]["machines"]), 1)
            self.assertEqual(self.pg.value(f"SELECT status FROM fly.user_fly_apps WHERE user_id = '{USER}' "
                                           f"AND deleted_at IS NULL"), "active")
        else:
            self.assertEqual(apps, {})
            self.assertEqual(self.pg.value(f"SELECT count(*) FROM fly.user_fly_apps WHERE user_id = '{USER}' "
                                           f"AND deleted_at IS NULL"), "0")

    def run_crashes(self, how, steps_provision, steps_deprovision):
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{USER}', 'free')")
        for step in steps_provision:
            with self.subTest(how=how, step=step, flow="provision"):
                self.crash_during(step, "pro", how)
                self.check_converged(True)
                self.assertEqual(self.events().count("provision_completed"), 1)
                self.pg.sql(f"UPDATE user_subscriptions SET tier = 'free' WHERE user_id = '{USER}'")
                self.settle()
                self.pg.sql("TRUNCATE fly.user_fly_app_events")
        for step in steps_deprovision:
            with self.subTest(how=how, step=step, flow="deprovision"):
                self.pg.sql(f"UPDATE user_subscriptions SET tier = 'pro' WHERE user_id = '{USER}'")
                self.settle()
                self.pg.sql("TRUNCATE fly.user_fly_app_events")
                self.crash_during(step, "free", how)
                self.check_converged(False)
                self.assertEqual(self.events().count("deprovision_completed"), 1)

    def test_kill_9_of_the_worker_at_each_step(self):
        self.run_crashes("kill -9", self.provision_steps, self.deprovision_steps)

    def test_server_restart_at_each_step(self):
        self.run_crashes("restart", self.provision_steps, self.deprovision_steps)


class WorkerLifecycleTest(ProvisioningTestCase):
    def test_sigterm_with_a_request_in_flight_exits_within_a_second(self):
        self.sim.configure(latency={"create_app": {"fixed_ms": 20000, "jitter_ms": 0}})
        try:
            self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{USER}', 'pro')")
            deadline = time.monotonic() + 10
            while not any(r["endpoint"] == "create_app" and r["status"] is None
                          for r in self.sim.requests()["requests"]):
                self.assertLess(time.monotonic(), deadline, "create_app was never sent")
                time.sleep(0.02)
            pid = self.pg.value("SELECT pid FROM fly.worker_status()")
            started = time.monotonic()
            self.pg.sql(f"SELECT pg_terminate_backend({pid})")
            self.assertTrue(self.pg.wait_for(f"SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = {pid})",
                                             timeout=5, interval=0.01))
            self.assertLess(time.monotonic() - started, 1.0)
        finally:
            self.sim.configure(latency={"create_app": None})
        # The restarted worker finishes the job.
        self.settle()
        self.assertEqual(list(self.live_apps_on_fly()), [app_name(USER)])

    def test_idle_worker_sleeps(self):
        self.settle()
        before = int(self.pg.value("SELECT iterations FROM fly.worker_status()"))
        time.sleep(3)
        after = int(self.pg.value("SELECT iterations FROM fly.worker_status()"))
        # Only the poll timer (fly.poll_interval = 2 s here) wakes an idle worker.
        self.assertLessEqual(after - before, 3)
        self.assertEqual(self.pg.value("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_fly worker' "
                                       "AND state = 'idle'"), "1")

    def test_reload_while_a_request_is_in_flight(self):
        self.sim.configure(latency={"wait_machine": {"fixed_ms": 1500, "jitter_ms": 0}})
        try:
            self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{USER}', 'pro')")
            time.sleep(0.5)
            self.pg.reload()
            self.settle()
        finally:
            self.sim.configure(latency={"wait_machine": None})
        self.assertEqual(self.pg.value(f"SELECT status FROM fly.user_fly_apps WHERE user_id = '{USER}'"), "active")


class SecretsTest(ProvisioningTestCase):
    @classmethod
    def setUpClass(cls):
        cls.secrets_path = None
        super().setUpClass()
        cls.secrets_path = os.path.join(cls.pg.workdir, "app_secrets")
        with open(cls.secrets_path, "w") as f:
            f.write("# operator secrets\nGEMINI_API_KEY=%s\nSUPABASE_SERVICE_KEY_B64:base64=%s\n"
                    % (SECRET_VALUES["GEMINI_API_KEY"], SECRET_VALUES["SUPABASE_SERVICE_KEY_B64"]))
        os.chmod(cls.secrets_path, 0o600)
        if os.geteuid() == 0:
            import pwd
            pw = pwd.getpwnam("postgres")
            os.chown(cls.secrets_path, pw.pw_uid, pw.pw_gid)
        cls.pg.write_settings({"fly.app_secrets_file": f"'{cls.secrets_path}'",
                               "fly.machine_env": "'{\"SUPABASE_URL\": \"https://example.supabase.co\"}'"})
        cls.pg.reload()
        time.sleep(0.5)

    def test_secrets_reach_fly_and_nowhere_else(self):
        import base64
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{USER}', 'pro')")
        self.settle()
        name = app_name(USER)
        revealed = self.sim.control("GET", f"secrets/{name}?reveal=1")
        values = revealed["secrets"]
        self.assertEqual(values["GEMINI_API_KEY"], SECRET_VALUES["GEMINI_API_KEY"])
        self.assertEqual(values["SUPABASE_SERVICE_KEY_B64"],
                         base64.b64encode(SECRET_VALUES["SUPABASE_SERVICE_KEY_B64"].encode()).decode())
        machine = list(self.live_apps_on_fly()[name]["machines"].values())[0]
        self.assertEqual(machine["config"]["env"]["SUPABASE_URL"], "https://example.supabase.co")
        self.assertGreaterEqual(self.pg.value(f"SELECT secrets_version FROM fly.user_fly_apps WHERE user_id = '{USER}'"),
                                "1")
        self.assertIn("secrets_set", self.events())
        self.pg.sql(f"UPDATE user_subscriptions SET tier = 'free' WHERE user_id = '{USER}'")
        self.settle()

        secrets = [TEST_TOKEN] + list(SECRET_VALUES.values()) + [
            base64.b64encode(SECRET_VALUES["SUPABASE_SERVICE_KEY_B64"].encode()).decode()]
        tables = self.pg.psql("SELECT t::text FROM fly.user_fly_apps t UNION ALL SELECT t::text FROM "
                              "fly.user_fly_app_events t UNION ALL SELECT t::text FROM fly.reconcile_queue t "
                              "UNION ALL SELECT t::text FROM fly.tier_intents t").stdout
        log = self.pg.server_log()
        requests = str(self.sim.requests())
        for secret in secrets:
            self.assertNotIn(secret, tables)
            self.assertNotIn(secret, log)
            self.assertNotIn(secret, requests)




class TokenSettingTest(unittest.TestCase):
    """fly.api_token set in postgresql.conf: it works, and nobody can read it back."""

    def test_token_setting_is_masked_for_everyone_and_never_logged(self):
        sim = Simulator()
        pg = Cluster(sim.url, {"fly.api_token": f"'{TEST_TOKEN}'"})
        try:
            self.assertTrue(pg.wait_for("SELECT token_source = 'fly.api_token' FROM fly.worker_status()", 30))
            self.assertEqual(pg.value("SHOW fly.api_token"), "********")
            self.assertEqual(pg.value("SELECT current_setting('fly.api_token')"), "********")
            pg.sql("CREATE ROLE monitor LOGIN IN ROLE pg_monitor")
            masked = pg.psql("SET ROLE monitor; SHOW fly.api_token; SELECT current_setting('fly.api_token')").stdout
            self.assertNotIn(TEST_TOKEN, masked)
            self.assertIn("********", masked)
            # The token is in use all the same.
            pg.sql("CREATE TABLE user_subscriptions (user_id uuid PRIMARY KEY, tier text NOT NULL)")
            pg.sql("SELECT fly.attach_tier_trigger()")
            pg.sql(f"INSERT INTO user_subscriptions VALUES ('{USER}', 'pro')")
            self.assertTrue(pg.wait_for("SELECT EXISTS (SELECT 1 FROM fly.user_fly_apps WHERE status = 'active')", 30))
            pg.reload()
            time.sleep(0.5)
            self.assertNotIn(TEST_TOKEN, pg.server_log())
        finally:
            pg.destroy()
            sim.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)

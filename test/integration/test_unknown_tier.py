"""Issue 13, "never block the application": a tier the payment provider added before fly.tier_policies knows it
does not fail the application's UPDATE. The user waits (fly.needs_attention), one alert goes out on pg_fly_alerts,
and inserting the policy provisions the app on the simulator, once. A policy's guest change resizes live apps."""

import os
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_failures import Listener, fly_requests  # noqa: E402
from harness import PG_BIN  # noqa: E402
from test_provisioning import USER, ProvisioningTestCase, app_name  # noqa: E402


class UnknownTierTest(ProvisioningTestCase):
    cluster_settings = {"fly.request_timeout": "'5s'", "fly.rate_limits": "off"}

    def tearDown(self):
        self.pg.sql("UPDATE user_subscriptions SET tier = 'free'")
        self.settle()
        self.pg.sql("DELETE FROM fly.tier_policies WHERE tier = 'team'; TRUNCATE fly.tier_waits")

    def listen(self, seconds):
        listener = Listener(self.pg, "pg_fly_alerts", seconds)
        listener.start()
        listener.ready.wait()
        time.sleep(0.5)  # psql has connected and run LISTEN
        return listener

    def test_unknown_tier_waits_alerts_once_and_is_provisioned_when_its_policy_arrives(self):
        self.pg.sql("ALTER SYSTEM SET fly.notify_payload = 'full'")
        self.pg.reload()
        listener = self.listen(6)
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{USER}', 'free')")
        # The application's write succeeds, twice (a webhook retrying), and nothing is sent to Fly.
        self.pg.sql(f"UPDATE user_subscriptions SET tier = 'team' WHERE user_id = '{USER}'")
        self.pg.sql(f"UPDATE user_subscriptions SET tier = 'team' WHERE user_id = '{USER}'")
        self.assertEqual(self.pg.sql(f"SELECT tier FROM user_subscriptions WHERE user_id = '{USER}'"), [["team"]])
        self.assertEqual(self.pg.sql("SELECT user_id, tier, reason FROM fly.needs_attention"),
                         [[USER, "team", "unknown_tier"]])
        listener.join(timeout=30)
        self.pg.sql("ALTER SYSTEM RESET fly.notify_payload")
        self.pg.reload()
        alerts = [p for p in listener.payloads if p.get("kind") == "unknown_tier"]
        self.assertEqual(len(alerts), 1, listener.payloads)
        self.assertEqual((alerts[0]["user_id"], alerts[0]["tier"]), (USER, "team"))
        wait_id = self.pg.value("SELECT wait_id FROM fly.needs_attention")
        self.assertEqual(alerts[0]["wait_id"], int(wait_id))
        self.assertEqual(self.pg.value(f"SELECT event_type FROM fly.user_fly_app_events WHERE id = "
                                       f"{alerts[0]['event_id']}"), "alert_raised")
        time.sleep(1)
        self.assertEqual(fly_requests(self.sim), [])
        self.assertEqual(self.pg.value("SELECT count(*) FROM fly.reconcile_queue"), "0")

        # The policy arrives: the waiting user is queued when the INSERT commits, without touching the
        # subscription, and the worker provisions the app, with one create of each kind.
        self.pg.sql("INSERT INTO fly.tier_policies (tier, dedicated_app, cpu_kind, cpus, memory_mb) "
                    "VALUES ('team', true, 'shared', 2, 512)")
        self.assertEqual(self.pg.sql("SELECT * FROM fly.needs_attention"), [])
        self.settle()
        self.assertEqual(self.pg.sql(f"SELECT status, tier, cpus, memory_mb FROM fly.user_fly_apps "
                                     f"WHERE user_id = '{USER}'"), [["active", "team", "2", "512"]])
        creates = [r["endpoint"] for r in fly_requests(self.sim) if r["endpoint"].startswith("create_")]
        self.assertEqual(creates, ["create_app", "create_machine"])
        machines = list(self.live_apps_on_fly()[app_name(USER)]["machines"].values())
        self.assertEqual(len(machines), 1)
        self.assertEqual(machines[0]["config"]["guest"]["memory_mb"], 512)

    def test_minimal_payload_names_no_user_or_tier(self):
        listener = self.listen(5)
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{USER}', 'team')")
        listener.join(timeout=30)
        alerts = [p for p in listener.payloads if p.get("kind") == "unknown_tier"]
        self.assertEqual(len(alerts), 1, listener.payloads)
        self.assertEqual(set(alerts[0]), {"kind", "event_id", "wait_id"})

    def test_policy_guest_change_resizes_live_apps_in_place(self):
        self.pg.sql("INSERT INTO fly.tier_policies (tier, dedicated_app, cpu_kind, cpus, memory_mb) "
                    "VALUES ('team', true, 'shared', 1, 256)")
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{USER}', 'team')")
        self.settle()
        machine_id = self.pg.value(f"SELECT fly_machine_id FROM fly.user_fly_apps WHERE user_id = '{USER}'")
        self.pg.sql("UPDATE fly.tier_policies SET cpus = 2, memory_mb = 1024 WHERE tier = 'team'")
        self.settle()
        machines = self.live_apps_on_fly()[app_name(USER)]["machines"]
        self.assertEqual(list(machines), [machine_id])  # the same machine, updated in place
        self.assertEqual((machines[machine_id]["config"]["guest"]["cpus"],
                          machines[machine_id]["config"]["guest"]["memory_mb"]), (2, 1024))
        self.assertIn("machine_updated", self.events())
        self.assertEqual(self.pg.sql(f"SELECT cpus, memory_mb, status FROM fly.user_fly_apps WHERE user_id = '{USER}'"),
                         [["2", "1024", "active"]])
        # The tier's policy cannot go while the app uses it.
        result = self.pg.psql("DELETE FROM fly.tier_policies WHERE tier = 'team'", check=False)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn('cannot delete the policy of tier "team": 1 live app(s) and 0 queued provision(s) use it', result.stderr)

    def test_policy_transaction_never_blocks_the_application_and_drift_provisions_the_user_it_missed(self):
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{USER}', 'free')")
        # An operator's transaction adds the policy and stays open for 3 s.
        command = [os.path.join(PG_BIN, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", self.pg.workdir,
                   "-p", str(self.pg.port), "-U", "postgres", "-d", self.pg.database, "-c",
                   "BEGIN; INSERT INTO fly.tier_policies (tier, dedicated_app, cpu_kind, cpus, memory_mb) "
                   "VALUES ('team', true, 'shared', 1, 256); SELECT pg_sleep(3); COMMIT;"]
        admin = subprocess.Popen(command, cwd=self.pg.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 text=True, user="postgres" if os.geteuid() == 0 else None)
        time.sleep(1)
        # The application, which gives up on any lock wait, changes the user to the tier meanwhile: no wait.
        started = time.monotonic()
        self.pg.sql(f"SET lock_timeout = '200ms'; UPDATE user_subscriptions SET tier = 'team' WHERE user_id = '{USER}'")
        self.assertLess(time.monotonic() - started, 1.0)
        _, errors = admin.communicate(timeout=30)
        self.assertEqual(admin.returncode, 0, errors)
        # Neither saw the other: the wait is left behind, not shown, and nothing is queued.
        self.assertEqual(self.pg.sql("SELECT user_id, reason FROM fly.tier_waits"), [[USER, "unknown_tier"]])
        self.assertEqual(self.pg.sql("SELECT * FROM fly.needs_attention"), [])
        self.assertEqual(self.pg.value("SELECT count(*) FROM fly.reconcile_queue"), "0")
        # The worker's drift pass provisions the user, once.
        self.pg.sql("ALTER SYSTEM SET fly.drift_check_interval = '1h'")
        self.pg.reload()
        try:
            self.settle()
            deadline = time.monotonic() + 30
            while self.pg.value(f"SELECT count(*) FROM fly.user_fly_apps WHERE user_id = '{USER}' "
                                "AND status = 'active'") != "1" and time.monotonic() < deadline:
                time.sleep(0.2)
                self.settle()
        finally:
            self.pg.sql("ALTER SYSTEM RESET fly.drift_check_interval")
            self.pg.reload()
        self.assertEqual(self.pg.sql(f"SELECT status, tier FROM fly.user_fly_apps WHERE user_id = '{USER}'"),
                         [["active", "team"]])
        creates = [r["endpoint"] for r in fly_requests(self.sim) if r["endpoint"].startswith("create_")]
        self.assertEqual(creates, ["create_app", "create_machine"])


if __name__ == "__main__":
    unittest.main()

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
from test_locks import IdleSession  # noqa: E402
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
        self.assertEqual(self.pg.value("SELECT count(*) FROM fly.pending_work"), "0")

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

    def hold(self, statement, seconds=3):
        """Runs `statement` in an operator's transaction that stays open for `seconds`."""
        command = [os.path.join(PG_BIN, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", self.pg.workdir,
                   "-p", str(self.pg.port), "-U", "postgres", "-d", self.pg.database, "-c",
                   f"BEGIN; {statement}; SELECT pg_sleep({seconds}); COMMIT;"]
        admin = subprocess.Popen(command, cwd=self.pg.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 text=True, user="postgres" if os.geteuid() == 0 else None)
        # Its statement has run once the session sleeps.
        self.assertTrue(self.pg.wait_for("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE state = 'active' "
                                         "AND wait_event = 'PgSleep')", timeout=30))
        return admin

    def app_write(self, statement):
        """The application's statement, which gives up on any lock wait; returns how long it took."""
        started = time.monotonic()
        self.pg.sql(f"SET lock_timeout = '200ms'; {statement}")
        return time.monotonic() - started

    def test_tier_change_racing_the_policy_is_provisioned_without_drift(self):
        # The harness runs with fly.drift_check_interval = 0: only the worker's periodic policy sweep can find this
        # user. A REPEATABLE READ transaction whose snapshot predates the policy changes the user's tier after the
        # policy committed (and after the worker's wake-up at that commit found nothing): the trigger records a
        # wait for a tier that has a policy, and nothing wakes the worker for it.
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{USER}', 'free')")
        app = IdleSession(self.pg, "rr_app", "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ; "
                                             "SELECT count(*) FROM user_subscriptions;")
        app.wait_idle(self)
        self.pg.sql("INSERT INTO fly.tier_policies (tier, dedicated_app, cpu_kind, cpus, memory_mb) "
                    "VALUES ('team', true, 'shared', 1, 256)")
        app.run(f"UPDATE user_subscriptions SET tier = 'team' WHERE user_id = '{USER}';")
        app.wait_idle(self)
        app.end("COMMIT")
        self.assertEqual(self.pg.sql("SELECT * FROM fly.needs_attention"), [])
        # The worker's sweep (every 10 s) finds the wait whose tier has a policy now, queues the user and provisions
        # the app, once.
        deadline = time.monotonic() + 30
        while self.pg.value(f"SELECT count(*) FROM fly.user_fly_apps WHERE user_id = '{USER}' "
                            "AND status = 'active'") != "1" and time.monotonic() < deadline:
            time.sleep(0.2)
        self.settle()
        self.assertEqual(self.pg.sql(f"SELECT status, tier FROM fly.user_fly_apps WHERE user_id = '{USER}'"),
                         [["active", "team"]])
        self.assertEqual(self.pg.value("SELECT count(*) FROM fly.tier_waits"), "0")
        creates = [r["endpoint"] for r in fly_requests(self.sim) if r["endpoint"].startswith("create_")]
        self.assertEqual(creates, ["create_app", "create_machine"])

    def test_a_waiting_users_write_never_waits_for_the_policy_transaction(self):
        other = "bbbbbbbb-2222-4222-8222-222222222222"
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{USER}', 'team'), ('{other}', 'team')")
        self.assertEqual(self.pg.value("SELECT count(*) FROM fly.needs_attention"), "2")
        admin = self.hold("INSERT INTO fly.tier_policies (tier, dedicated_app, cpu_kind, cpus, memory_mb) "
                          "VALUES ('team', true, 'shared', 1, 256)")
        # Before the fix the policy's INSERT locked the waiting users' queue and wait rows until it committed, and
        # this statement failed with a lock timeout.
        self.assertLess(self.app_write(f"UPDATE user_subscriptions SET tier = 'free' WHERE user_id = '{USER}'"), 1.0)
        _, errors = admin.communicate(timeout=30)
        self.assertEqual(admin.returncode, 0, errors)
        self.settle()
        # The user the application moved to free gets nothing; the other waiting user gets the app.
        self.assertEqual(self.pg.sql("SELECT user_id, status FROM fly.user_fly_apps WHERE deleted_at IS NULL"),
                         [[other, "active"]])
        self.assertEqual(self.pg.value("SELECT count(*) FROM fly.tier_waits"), "0")

    def test_a_live_apps_write_never_waits_for_a_guest_change(self):
        self.pg.sql("INSERT INTO fly.tier_policies (tier, dedicated_app, cpu_kind, cpus, memory_mb) "
                    "VALUES ('team', true, 'shared', 1, 256)")
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{USER}', 'team')")
        self.settle()
        admin = self.hold("UPDATE fly.tier_policies SET memory_mb = 512 WHERE tier = 'team'")
        # Before the fix the policy's UPDATE locked every live app's queue row of the tier until it committed.
        self.assertLess(self.app_write(f"UPDATE user_subscriptions SET tier = 'free' WHERE user_id = '{USER}'"), 1.0)
        _, errors = admin.communicate(timeout=30)
        self.assertEqual(admin.returncode, 0, errors)
        self.settle()
        # The application's change stands: the app is gone, and the guest change did not bring it back.
        self.assertEqual(self.pg.value(f"SELECT count(*) FROM fly.user_fly_apps WHERE user_id = '{USER}' "
                                       "AND deleted_at IS NULL"), "0")
        self.assertEqual(self.pg.value("SELECT count(*) FROM fly.policy_changes"), "0")

if __name__ == "__main__":
    unittest.main()

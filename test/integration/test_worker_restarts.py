"""The worker's own lifecycle: pg_terminate_backend in the middle of the work, DROP DATABASE of another database
while it runs, and DROP DATABASE ... WITH (FORCE) of the database it works in."""

import collections
import os
import sys
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Cluster, Simulator  # noqa: E402
from test_provisioning import ProvisioningTestCase, app_name  # noqa: E402


def users(count, seed):
    return [str(uuid.UUID(int=(seed << 64) + i + 1, version=4)) for i in range(count)]


class WorkerRestartTest(ProvisioningTestCase):
    cluster_settings = {"fly.request_timeout": "'5s'", "fly.rate_limits": "off"}

    def setUp(self):
        super().setUp()
        self.sim.configure(boot_delay_ms=300, latency={"*": {"fixed_ms": 100, "jitter_ms": 150}})

    def terminate_worker_mid_flight(self):
        """pg_terminate_backend on the worker while it has requests out; returns once a new worker runs."""
        self.assertTrue(self.pg.wait_for("SELECT in_flight > 0 FROM fly.worker_status()", timeout=30, interval=0.02),
                        "no request was in flight")
        pid = self.pg.worker_pid()
        self.assertEqual(self.pg.value(f"SELECT pg_terminate_backend({pid})"), "t")
        self.assertTrue(self.pg.wait_for(
            f"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_fly worker' AND pid <> {pid}",
            timeout=30), "the worker did not come back")
        return pid

    def completions(self, event_type):
        return collections.Counter(u for (u,) in self.pg.sql(
            f"SELECT user_id FROM fly.user_fly_app_events WHERE event_type = '{event_type}'"))

    def test_terminated_mid_flight_three_times_each_way_converges_without_duplicates(self):
        group = users(30, 80)
        self.pg.sql("INSERT INTO user_subscriptions VALUES " + ",".join(f"('{u}', 'pro')" for u in group))
        terminated = [self.terminate_worker_mid_flight() for _ in range(3)]
        self.settle(timeout=120)
        self.assertEqual(len(set(terminated)), 3)
        apps = self.live_apps_on_fly()
        self.assertEqual(sorted(apps), sorted(app_name(u) for u in group))
        rows = dict(self.pg.sql("SELECT user_id, fly_machine_id FROM fly.user_fly_apps WHERE status = 'active'"))
        self.assertEqual(sorted(rows), sorted(group))
        for user in group:
            self.assertEqual(list(apps[app_name(user)]["machines"]), [rows[user]], user)
        self.assertEqual(self.completions("provision_completed"), collections.Counter(group))
        created = collections.Counter(r["body"]["name"] for r in self.sim.requests()["requests"]
                                      if r["endpoint"] == "create_app" and r["status"] == 201)
        self.assertEqual(set(created.values()), {1})

        self.pg.sql("UPDATE user_subscriptions SET tier = 'free'")
        for _ in range(3):
            self.terminate_worker_mid_flight()
        self.settle(timeout=120)
        self.assertEqual(self.live_apps_on_fly(), {})
        self.assertEqual(self.pg.sql("SELECT DISTINCT status FROM fly.user_fly_apps"), [["deleted"]])
        self.assertEqual(self.completions("deprovision_completed"), collections.Counter(group))

    def test_cancel_requests_inside_and_outside_transactions_leave_the_same_worker_working(self):
        # pg_cancel_backend raises an ERROR wherever the worker next checks for interrupts: inside a transaction,
        # or between them, where the loop's own error cleanup (locks, wait events, memory context) must do what
        # a transaction abort would. The worker must neither restart nor leave anything held.
        group = users(20, 83)
        self.assertTrue(self.pg.wait_for(
            "SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_fly worker'", timeout=30))
        pid = self.pg.worker_pid()
        log_before = len(self.pg.server_log())
        self.pg.sql("INSERT INTO user_subscriptions VALUES " + ",".join(f"('{u}', 'pro')" for u in group))
        for _ in range(60):
            self.pg.value(f"SELECT pg_cancel_backend({pid})")
            time.sleep(0.03)
        self.settle(timeout=120)
        self.assertIn("canceling statement due to user request", self.pg.server_log()[log_before:])
        self.assertEqual(self.pg.worker_pid(), pid, "the worker restarted")
        apps = self.live_apps_on_fly()
        self.assertEqual(sorted(apps), sorted(app_name(u) for u in group))
        self.assertTrue(all(len(app["machines"]) == 1 for app in apps.values()))
        self.assertEqual(self.completions("provision_completed"), collections.Counter(group))
        # Back in its wait, holding nothing but its own virtual transaction id lock (if any).
        self.assertTrue(self.pg.wait_for(
            f"SELECT wait_event_type = 'Extension' FROM pg_stat_activity WHERE pid = {pid}", timeout=15))
        self.assertEqual(self.pg.value(
            f"SELECT count(*) FROM pg_locks WHERE pid = {pid} AND locktype <> 'virtualxid'"), "0")
        # And it still works.
        self.pg.sql("UPDATE user_subscriptions SET tier = 'free'")
        self.settle(timeout=120)
        self.assertEqual(self.live_apps_on_fly(), {})

    def test_drop_database_of_another_database_is_not_blocked_by_the_worker(self):
        self.pg.psql("CREATE DATABASE scratch", database="postgres")
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{users(1, 81)[0]}', 'pro')")
        self.assertTrue(self.pg.wait_for("SELECT in_flight > 0 FROM fly.worker_status()", timeout=30, interval=0.02))
        pid = self.pg.worker_pid()
        # DROP DATABASE gives up after 5 s if any session is connected to that database.
        self.pg.psql("DROP DATABASE scratch", database="postgres")
        self.assertEqual(self.pg.worker_pid(), pid, "the worker was terminated to make way")
        self.settle()
        self.assertEqual(list(self.live_apps_on_fly()), [app_name(users(1, 81)[0])])


class KillAfterFirstSendTest(unittest.TestCase):
    """kill -9 of the postmaster right after Fly has seen a provisioning's create-app (recorded before it left),
    before its answer: after the restart the user is provisioned once, the app found ours and reused."""

    def test_kill_after_first_send(self):
        # Fly takes a second to answer create-app (it creates the app then), so the worker cannot have seen the
        # answer when it is killed.
        sim = Simulator({"latency": {"create_app": {"fixed_ms": 1000, "jitter_ms": 0}}})
        self.addCleanup(sim.stop)
        pg = Cluster(sim.url, {"fly.request_timeout": "'5s'", "fly.rate_limits": "off",
                               "fly.health_check_interval": "0"})
        self.addCleanup(pg.destroy)
        pg.sql("CREATE TABLE user_subscriptions (user_id uuid PRIMARY KEY, tier text NOT NULL)")
        pg.sql("SELECT fly.attach_tier_trigger()")
        user = users(1, 84)[0]
        pg.sql(f"INSERT INTO user_subscriptions VALUES ('{user}', 'pro')")
        deadline = time.monotonic() + 30
        while not [r for r in sim.requests()["requests"] if r["endpoint"] == "create_app"]:
            self.assertLess(time.monotonic(), deadline, "create-app never reached Fly")
            time.sleep(0.002)
        pg.kill_postmaster()
        deadline = time.monotonic() + 30
        while app_name(user) not in sim.state()["apps"]:
            self.assertLess(time.monotonic(), deadline, "Fly did not create the app")
            time.sleep(0.05)
        pg.start()
        self.assertTrue(pg.wait_for("SELECT NOT EXISTS (SELECT 1 FROM fly.pending_work)", timeout=60),
                        pg.sql("SELECT * FROM fly.pending_work"))
        events = [e for (e,) in pg.sql(
            f"SELECT event_type FROM fly.user_fly_app_events WHERE user_id = '{user}' ORDER BY id")]
        self.assertIn("app_reused", events)
        self.assertNotIn("app_created", events)
        self.assertEqual(events.count("provision_completed"), 1, events)
        apps = sim.state()["apps"]
        self.assertEqual(list(apps), [app_name(user)])
        row = pg.sql(f"SELECT fly_app_name, status, fly_machine_id FROM fly.user_fly_apps WHERE user_id = '{user}'")
        self.assertEqual(len(row), 1)
        self.assertEqual(row[0][:2], [app_name(user), "active"])
        self.assertEqual(list(apps[app_name(user)]["machines"]), [row[0][2]])
        creates = [r["status"] for r in sim.requests()["requests"] if r["endpoint"] == "create_app"]
        self.assertEqual(len(creates), 2, creates)  # the one the kill cut off, and the name_taken after it
        self.assertEqual(creates[1], 422, creates)


class DropWorkerDatabaseTest(unittest.TestCase):
    def test_drop_database_with_force_of_the_workers_own_database_leaves_a_working_server(self):
        sim = Simulator({"latency": {"*": {"fixed_ms": 300, "jitter_ms": 0}}})
        self.addCleanup(sim.stop)
        pg = Cluster(sim.url, {"fly.request_timeout": "'5s'", "fly.rate_limits": "off"})
        self.addCleanup(pg.destroy)
        subscriptions = "CREATE TABLE user_subscriptions (user_id uuid PRIMARY KEY, tier text NOT NULL)"
        pg.sql(subscriptions)
        pg.sql("SELECT fly.attach_tier_trigger()")
        first, second = users(2, 82)
        pg.sql(f"INSERT INTO user_subscriptions VALUES ('{first}', 'pro')")
        self.assertTrue(pg.wait_for("SELECT in_flight > 0 FROM fly.worker_status()", timeout=30, interval=0.02))

        # Like any session connected to it, the worker keeps a plain DROP DATABASE from going through...
        refused = pg.psql(f"DROP DATABASE {pg.database}", database="postgres", check=False)
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn("is being accessed by other users", refused.stderr)
        # ... and WITH (FORCE) terminates it like the others.
        pg.psql(f"DROP DATABASE {pg.database} WITH (FORCE)", database="postgres")
        log_before = len(pg.server_log())
        deadline = time.monotonic() + 15
        while pg.server_log()[log_before:].count(f'database "{pg.database}" does not exist') < 2:
            self.assertLess(time.monotonic(), deadline, "the worker is not trying to come back")
            time.sleep(0.2)
        # The server goes on serving, creating and dropping databases, and stops and starts promptly.
        self.assertEqual(pg.psql("SELECT 1", database="postgres").stdout.strip(), "1")
        pg.psql("CREATE DATABASE other", database="postgres")
        pg.psql("DROP DATABASE other", database="postgres")
        pg.stop("fast", check=True)
        pg.start()

        # Once the database and the extension are back, the worker picks up work again.
        pg.psql(f"CREATE DATABASE {pg.database}", database="postgres")
        self.assertTrue(pg.wait_for("SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_fly worker'",
                                    timeout=30))
        pg.sql("CREATE EXTENSION pg_fly")
        pg.sql(subscriptions)
        pg.sql("SELECT fly.attach_tier_trigger()")
        sim.configure(latency={"*": None})
        pg.sql(f"INSERT INTO user_subscriptions VALUES ('{first}', 'pro'), ('{second}', 'pro')")
        self.assertTrue(pg.wait_for("SELECT count(*) = 2 FROM fly.user_fly_apps WHERE status = 'active'", timeout=60),
                        repr(pg.sql("SELECT * FROM fly.pending_work")))
        apps = sim.state()["apps"]
        self.assertEqual(sorted(apps), sorted([app_name(first), app_name(second)]))
        self.assertTrue(all(len(app["machines"]) == 1 for app in apps.values()))


if __name__ == "__main__":
    unittest.main(verbosity=2)

"""One lock must not stall everyone: rows that other transactions hold (an application's uncommitted tier change on
a running user's queue item, an operator's uncommitted cancel_image_rollout) delay only themselves; everybody
else's tier changes complete meanwhile."""

import os
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import PG_BIN  # noqa: E402
from test_failures import users  # noqa: E402
from test_provisioning import ProvisioningTestCase, app_name  # noqa: E402

BAD = "registry.fly.io/vyx-app:deployment-03CRASHES"
HOLD_SECONDS = 30


class IdleSession:
    """A psql session that runs `sql` in a transaction it leaves open, idle, until end() is called."""

    def __init__(self, pg, name, sql):
        self.pg = pg
        self.name = name
        command = [os.path.join(PG_BIN, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", pg.workdir, "-p",
                   str(pg.port), "-U", "postgres", "-d", f"dbname={pg.database} application_name={name}"]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, cwd=pg.workdir,
                                        user="postgres" if os.geteuid() == 0 else None)
        self.process.stdin.write(f"BEGIN;\n{sql}\n")
        self.process.stdin.flush()

    def run(self, sql):
        """Runs more statements in the open transaction; wait_idle() again to know they ran."""
        self.process.stdin.write(f"{sql}\n")
        self.process.stdin.flush()

    def wait_idle(self, test):
        test.assertTrue(self.pg.wait_for(f"SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = "
                                         f"'{self.name}' AND state = 'idle in transaction')", timeout=30),
                        f"session {self.name} did not reach idle in transaction")

    def end(self, command):
        if self.process.poll() is None:
            self.process.stdin.write(f"{command};\n")
            self.process.stdin.close()
            self.process.wait(timeout=30)
        output = self.process.stdout.read()
        self.process.stdout.close()
        return output


def start_slow_user(test, seed, delay_ms):
    """A new pro user whose machine takes delay_ms to create; returns once its create request is at Fly, so that
    the user's operation is in flight."""
    slow = users(1, seed)[0]
    test.sim.configure(faults=[{"endpoint": "create_machine", "app": app_name(slow), "kind": "latency",
                                "delay_ms": delay_ms}])
    test.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{slow}', 'pro')")
    deadline = time.monotonic() + 30
    while not [r for r in test.sim.requests()["requests"] if r["endpoint"] == "create_machine"]:
        test.assertLess(time.monotonic(), deadline, "the slow user's machine was never requested")
        time.sleep(0.05)
    return slow


class LockTest(ProvisioningTestCase):
    cluster_settings = {"fly.request_timeout": "'10s'", "fly.rate_limits": "off"}

    def active(self, group):
        return int(self.pg.value("SELECT count(*) FROM fly.user_fly_apps WHERE status = 'active' AND user_id = ANY "
                                 "('{" + ",".join(group) + "}'::uuid[])"))

    def test_rows_held_by_idle_transactions_delay_only_themselves(self):
        self.pg.sql("TRUNCATE fly.image_rollouts, fly.image_rollout_apps")
        canary = users(1, 80)[0]
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{canary}', 'pro')")
        self.settle()
        # A rollout that keeps running: its canary stays unhealthy for a canary_wait of 10 minutes.
        self.sim.configure(unhealthy_images=[BAD])
        rollout = self.pg.value(f"SELECT fly.start_image_rollout('{BAD}', canary_wait => '10 minutes')")
        self.assertTrue(self.pg.wait_for(f"SELECT status = 'canary_check' FROM fly.image_rollouts WHERE id = {rollout}",
                                         timeout=60))
        # A user whose operation is in flight (its machine takes 6 s to create) ...
        slow = start_slow_user(self, 81, 6000)
        # ... is downgraded by an application transaction that then sits idle (the trigger's upsert holds the
        # user's queue item), while an operator sits idle in a transaction around cancel_image_rollout.
        holders = [IdleSession(self.pg, "holds_queue_item",
                               f"UPDATE user_subscriptions SET tier = 'free' WHERE user_id = '{slow}';"),
                   IdleSession(self.pg, "holds_rollout", f"SELECT fly.cancel_image_rollout({rollout});")]
        try:
            for holder in holders:
                holder.wait_idle(self)
            held_since = time.monotonic()
            # Everybody else's tier changes complete within seconds, again and again while the locks are held.
            seed = 82
            while time.monotonic() - held_since < HOLD_SECONDS:
                group = users(3, seed)
                seed += 1
                started = time.monotonic()
                self.pg.sql("INSERT INTO user_subscriptions VALUES " + ",".join(f"('{u}', 'pro')" for u in group))
                while self.active(group) < len(group):
                    self.assertLess(time.monotonic() - started, 10,
                                    "users were not provisioned while another transaction held a row: " +
                                    repr(self.pg.sql("SELECT * FROM fly.pending_work")))
                    time.sleep(0.1)
                print(f"\n  3 users provisioned in {time.monotonic() - started:.1f} s while rows were held",
                      file=sys.stderr)
                time.sleep(1)
            self.assertGreaterEqual(seed - 82, 3)
            self.assertIn(self.pg.value("SELECT state FROM pg_stat_activity "
                                        "WHERE application_name = 'holds_queue_item'"), ["idle in transaction"])
        finally:
            outputs = [holder.end("COMMIT") for holder in holders]
        self.assertNotIn("ERROR", "".join(outputs))
        # The held rows are taken up once they are free: the downgrade wins, the rollout is cancelled.
        self.settle(timeout=60)
        self.assertEqual(self.pg.value(f"SELECT status FROM fly.user_fly_apps WHERE user_id = '{slow}' "
                                       "ORDER BY id DESC LIMIT 1"), "deleted")
        self.assertNotIn(app_name(slow), self.live_apps_on_fly())
        self.assertEqual(self.pg.value(f"SELECT status FROM fly.image_rollouts WHERE id = {rollout}"), "cancelled")
        self.sim.configure(unhealthy_images=[], faults=[])


class RolledBackLockTest(ProvisioningTestCase):
    # Nothing but the rollback itself can hand the item back: no poll or health pass comes soon.
    cluster_settings = {"fly.request_timeout": "'10s'", "fly.rate_limits": "off", "fly.poll_interval": "'60s'",
                        "fly.health_check_interval": "0", "fly.max_attempts": "2"}

    def test_a_rolled_back_lock_neither_stalls_the_user_nor_costs_an_attempt(self):
        slow = start_slow_user(self, 90, 4000)
        # An operator deprovisions the user by hand and sits idle: the worker's next step for the user finds the
        # queue item held and cannot record itself. (A tier change holds no queue item: the trigger only logs it.)
        holder = IdleSession(self.pg, "holds_then_rolls_back", f"SELECT fly.deprovision_user_app('{slow}');")
        holder.wait_idle(self)
        deadline = time.monotonic() + 30
        while f"reconciling user {slow} failed" not in self.pg.server_log():
            self.assertLess(time.monotonic(), deadline, "the worker never met the held item")
            time.sleep(0.1)
        # Its next attempt fails once at Fly: with fly.max_attempts = 2 it must still have one to spare.
        self.sim.configure(faults=[{"endpoint": "*", "app": app_name(slow), "nth": [1], "kind": "status",
                                    "status": 503}])
        self.assertNotIn("ERROR", holder.end("ROLLBACK"))
        rolled_back = time.monotonic()
        self.assertTrue(self.pg.wait_for(f"SELECT status = 'active' FROM fly.user_fly_apps WHERE user_id = '{slow}'",
                                         timeout=20),
                        repr(self.pg.sql("SELECT * FROM fly.pending_work")) +
                        repr(self.pg.sql(f"SELECT status, last_error FROM fly.user_fly_apps WHERE user_id = '{slow}'")))
        print(f"\n  provisioned {time.monotonic() - rolled_back:.1f} s after the rollback", file=sys.stderr)
        events = self.events(slow)
        self.assertIn("provision_attempt_failed", events)  # the 503 was met
        self.assertNotIn("provision_failed", events)
        self.sim.configure(faults=[])


class HeldAppRowTest(ProvisioningTestCase):
    cluster_settings = {"fly.request_timeout": "'10s'", "fly.rate_limits": "off", "fly.health_check_interval": "'1s'"}

    def last_check(self, user):
        return self.pg.value(f"SELECT last_health_check_at FROM fly.user_fly_apps WHERE user_id = '{user}' "
                             "AND deleted_at IS NULL")

    def test_a_held_app_row_does_not_stall_health_passes(self):
        held, other = users(2, 95)
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{held}', 'pro'), ('{other}', 'pro')")
        self.settle()
        self.assertTrue(self.pg.wait_for("SELECT count(*) = 2 FROM fly.user_fly_apps "
                                         "WHERE last_health_check_at IS NOT NULL", timeout=30))
        # An operator touches one user's app row and sits idle in the transaction.
        holder = IdleSession(self.pg, "holds_app_row",
                             f"UPDATE fly.user_fly_apps SET updated_at = now() WHERE user_id = '{held}';")
        holder.wait_idle(self)
        try:
            held_check = self.last_check(held)
            # Several health passes go by (the other app is checked again and again) ...
            seen = {self.last_check(other)}
            seed = 97
            deadline = time.monotonic() + 60
            while len(seen) < 5:
                self.assertLess(time.monotonic(), deadline, "health passes stopped")
                # ... while other users are provisioned at their usual pace.
                group = users(2, seed)
                seed += 1
                self.pg.sql("INSERT INTO user_subscriptions VALUES " + ",".join(f"('{u}', 'pro')" for u in group))
                self.assertTrue(self.pg.wait_for("SELECT count(*) = 2 FROM fly.user_fly_apps WHERE status = 'active' "
                                                 "AND user_id = ANY ('{" + ",".join(group) + "}'::uuid[])", 30, 0.02))
                seen.add(self.last_check(other))
            # The held row's result waited instead of the loop: no statement ran into lock_timeout.
            stalls = [line for line in self.pg.server_log().splitlines() if "lock timeout" in line]
            self.assertEqual(stalls, [])
            self.assertEqual(self.last_check(held), held_check)
        finally:
            self.assertNotIn("ERROR", holder.end("ROLLBACK"))
        # Once the row is free its health is recorded again, in the next passes.
        self.assertTrue(self.pg.wait_for(f"SELECT last_health_check_at > '{held_check}' FROM fly.user_fly_apps "
                                         f"WHERE user_id = '{held}' AND deleted_at IS NULL", timeout=30))


if __name__ == "__main__":
    unittest.main()

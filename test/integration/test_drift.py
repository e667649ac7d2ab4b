"""Drift repair end to end: changes the trigger never sees (session_replication_role = replica, a disabled
trigger, TRUNCATE of one partition, a user id spelled any way uuid_in reads) are found by fly.check_drift() or the
worker's periodic pass, and end as the
subscription table says on the Fly simulator, with no operation done twice."""

import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Cluster, Simulator  # noqa: E402
from test_locks import IdleSession  # noqa: E402

USERS = [f"d{i}000000-0000-4000-8000-00000000000{i}" for i in range(1, 7)]


class DriftTestCase(unittest.TestCase):
    cluster_settings = {"fly.request_timeout": "'5s'"}
    table_sql = "CREATE TABLE user_subscriptions (user_id uuid PRIMARY KEY, tier text NOT NULL DEFAULT 'free')"

    @classmethod
    def setUpClass(cls):
        cls.sim = Simulator()
        cls.pg = Cluster(cls.sim.url, cls.cluster_settings)
        cls.pg.sql(cls.table_sql)
        cls.pg.sql("SELECT fly.attach_tier_trigger()")

    @classmethod
    def tearDownClass(cls):
        cls.pg.destroy()
        cls.sim.stop()

    def setUp(self):
        self.pg.sql("TRUNCATE user_subscriptions, fly.reconcile_queue, fly.user_fly_app_events, fly.user_fly_apps")
        self.sim.control("POST", "reset")

    def settle(self, timeout=60):
        self.assertTrue(self.pg.wait_for("SELECT NOT EXISTS (SELECT 1 FROM fly.pending_work)", timeout),
                        "queue did not drain: " + repr(self.pg.sql("SELECT * FROM fly.pending_work")))

    def behind_the_trigger(self, sql):
        self.pg.sql(f"SET session_replication_role = replica; {sql}; RESET session_replication_role")

    def check_drift(self):
        return int(self.pg.value("SELECT fly.check_drift()"))

    def assert_as_table_says(self):
        """Every paid user has exactly one active app on Fly, every other user none."""
        paid = {r[0] for r in self.pg.sql("SELECT s.user_id FROM user_subscriptions s JOIN fly.tier_policies p "
                                          "ON p.tier = s.tier AND p.dedicated_app")}
        live = {r[0] for r in self.pg.sql("SELECT user_id FROM fly.user_fly_apps WHERE status = 'active'")}
        self.assertEqual(live, paid)
        self.assertEqual(len(self.sim.state()["apps"]), len(paid))
        self.assertEqual(self.check_drift(), 0)

    def operations(self, event):
        return int(self.pg.value(f"SELECT count(*) FROM fly.user_fly_app_events WHERE event_type = '{event}'"))


class CheckDriftTest(DriftTestCase):
    def test_consistent_database_queues_nothing(self):
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{USERS[0]}', 'pro'), ('{USERS[1]}', 'free')")
        self.settle()
        self.assertEqual(self.check_drift(), 0)
        self.assertEqual(self.operations("drift_repaired"), 0)
        self.assert_as_table_says()

    def test_session_replication_role_replica(self):
        self.behind_the_trigger(f"INSERT INTO user_subscriptions VALUES ('{USERS[0]}', 'pro'), ('{USERS[1]}', 'elite'),"
                                f" ('{USERS[2]}', 'free')")
        self.assertEqual(self.pg.value("SELECT count(*) FROM fly.pending_work"), "0")
        self.assertEqual(self.check_drift(), 2)
        self.settle()
        self.assert_as_table_says()
        self.behind_the_trigger(f"UPDATE user_subscriptions SET tier = 'free' WHERE user_id = '{USERS[0]}'")
        self.behind_the_trigger(f"DELETE FROM user_subscriptions WHERE user_id = '{USERS[1]}'")
        self.assertEqual(self.check_drift(), 2)
        self.assertEqual(self.check_drift(), 0)  # queued already: not again
        self.settle()
        self.assert_as_table_says()
        self.assertEqual(self.operations("drift_repaired"), 4)
        self.assertEqual(self.operations("provision_completed"), 2)
        self.assertEqual(self.operations("deprovision_completed"), 2)

    def test_trigger_disabled_around_bulk_update(self):
        self.pg.sql("INSERT INTO user_subscriptions SELECT u::uuid, 'free' FROM unnest(%s) u"
                    % ("ARRAY[" + ",".join(f"'{u}'" for u in USERS) + "]"))
        self.pg.sql("ALTER TABLE user_subscriptions DISABLE TRIGGER on_user_tier_change; "
                    f"UPDATE user_subscriptions SET tier = 'pro' WHERE user_id <> '{USERS[5]}'; "
                    "ALTER TABLE user_subscriptions ENABLE TRIGGER on_user_tier_change")
        self.assertEqual(self.check_drift(), 5)
        self.settle()
        self.assert_as_table_says()
        self.assertEqual(self.operations("provision_completed"), 5)
        self.assertEqual(self.operations("drift_repaired"), 5)


class PartitionTruncateTest(DriftTestCase):
    table_sql = ("CREATE TABLE user_subscriptions (user_id uuid NOT NULL, tier text NOT NULL DEFAULT 'free', "
                 "region text NOT NULL, PRIMARY KEY (user_id, region)) PARTITION BY LIST (region); "
                 "CREATE TABLE subs_eu PARTITION OF user_subscriptions FOR VALUES IN ('eu'); "
                 "CREATE TABLE subs_us PARTITION OF user_subscriptions FOR VALUES IN ('us')")

    def test_truncate_one_partition(self):
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{USERS[0]}', 'pro', 'eu'), ('{USERS[1]}', 'pro', 'eu'),"
                    f" ('{USERS[2]}', 'pro', 'us')")
        self.settle()
        self.assert_as_table_says()
        # The statement-level TRUNCATE trigger is not cloned to partitions: pg_fly does not see this one.
        self.pg.sql("TRUNCATE subs_eu")
        self.assertEqual(self.pg.value("SELECT count(*) FROM fly.pending_work"), "0")
        self.assertEqual(self.check_drift(), 2)
        self.settle()
        self.assert_as_table_says()
        self.assertEqual(self.operations("provision_completed"), 3)
        self.assertEqual(self.operations("deprovision_completed"), 2)


class TextUserIdTest(DriftTestCase):
    """A text user id column holds uuids in any spelling uuid_in reads (the trigger accepts them all): the drift
    pass finds each user under its canonical uuid, so it never tears down an app the trigger made, and a row that
    is no uuid (an unbalanced brace) stops nothing."""
    table_sql = "CREATE TABLE user_subscriptions (user_id text, tier text)"
    SPELLED = {  # the row's spelling: the user's uuid
        "{b1111111-1111-4111-8111-111111111111}": "b1111111-1111-4111-8111-111111111111",
        "Ab333333-3333-4333-8333-333333333333": "ab333333-3333-4333-8333-333333333333",
        "c444-4444-4444-4444-8444-4444-4444-4444": "c4444444-4444-4444-8444-444444444444",
        "E5555555555545558555555555555555": "e5555555-5555-4555-8555-555555555555",
    }

    def live(self):
        return {r[0] for r in self.pg.sql("SELECT user_id FROM fly.user_fly_apps WHERE status = 'active'")}

    def test_every_spelling_keeps_its_app(self):
        self.pg.sql("INSERT INTO user_subscriptions VALUES " +
                    ", ".join(f"('{spelled}', 'pro')" for spelled in self.SPELLED))
        self.settle()
        self.assertEqual(self.live(), set(self.SPELLED.values()))
        self.pg.sql("INSERT INTO user_subscriptions VALUES ('{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'free')")
        for indexed in (False, True):
            self.assertEqual(self.check_drift(), 0, f"indexed: {indexed}")
            self.pg.sql("CREATE INDEX IF NOT EXISTS subs_user ON user_subscriptions (user_id)")
        self.assertEqual(self.operations("drift_repaired"), 0)
        # Gone behind the trigger's back: torn down, whatever the spelling.
        self.behind_the_trigger("DELETE FROM user_subscriptions WHERE user_id IN "
                                "('{b1111111-1111-4111-8111-111111111111}', 'c444-4444-4444-4444-8444-4444-4444-4444')")
        self.assertEqual(self.check_drift(), 2)
        self.settle()
        self.assertEqual(self.live(), {"ab333333-3333-4333-8333-333333333333", "e5555555-5555-4555-8555-555555555555"})
        self.assertEqual(len(self.sim.state()["apps"]), 2)
        self.assertEqual(self.check_drift(), 0)
        self.pg.sql("DROP INDEX subs_user")


class ConcurrentChangeTest(DriftTestCase):
    """check_drift() never waits for a tier change in progress: a user another transaction is changing is left to
    that change (and to the next pass), so the application and drift repair cannot wait on each other or deadlock.
    (Before, drift waited for the change, and a change carried out meanwhile had to be guarded against.)"""
    A = "a0000001-0000-4000-8000-000000000001"
    U = "b0000001-0000-4000-8000-000000000001"

    def test_check_drift_leaves_a_user_being_changed_and_never_waits(self):
        self.behind_the_trigger(f"INSERT INTO user_subscriptions VALUES ('{self.A}', 'pro'), ('{self.U}', 'pro')")
        holder = IdleSession(self.pg, "drift_holder",
                             f"UPDATE user_subscriptions SET tier = 'free' WHERE user_id = '{self.A}';")
        holder.wait_idle(self)
        # The holder stays open until the end: check_drift() returning at all shows it did not wait for it.
        queued = self.check_drift()
        self.assertEqual(queued, 1)  # U; A is the holder's
        holder.end("COMMIT")
        self.settle()
        self.assertEqual(self.live_users(), {self.U})
        self.assertEqual(self.operations("drift_repaired"), 1)
        self.assertEqual(self.check_drift(), 0)

    def live_users(self):
        return {r[0] for r in self.pg.sql("SELECT user_id FROM fly.user_fly_apps WHERE deleted_at IS NULL")}


class WorkerDriftPassTest(DriftTestCase):
    cluster_settings = {"fly.request_timeout": "'5s'", "fly.drift_check_interval": "'1s'"}

    def test_periodic_pass_repairs_on_its_own(self):
        self.behind_the_trigger(f"INSERT INTO user_subscriptions VALUES ('{USERS[0]}', 'pro'), ('{USERS[1]}', 'pro')")
        self.assertTrue(self.pg.wait_for("SELECT count(*) = 2 FROM fly.user_fly_apps WHERE status = 'active'", 30),
                        self.pg.server_log()[-3000:])
        self.settle()
        self.assertIn("drift repair queued 2 user(s)", self.pg.server_log())
        time.sleep(2.5)  # further passes find nothing more to do
        self.assertEqual(self.operations("drift_repaired"), 2)
        self.assertEqual(self.operations("provision_requested"), 2)
        self.assert_as_table_says()


class LongPassTest(DriftTestCase):
    """A pass over a large table runs one batch per pass of the worker's loop: a tier change made meanwhile is
    provisioned about as fast as without a pass (the old worker ran the whole pass in one go and made it wait
    until the pass ended), and the pass still finds every difference."""
    CONSISTENT = 300000  # free users the worker has nothing to do for: the walk before the drifting ones
    DRIFTING = 50000     # paid users added behind the trigger's back, at the end of the user id order
    BOUND = 3.0          # seconds: generous; the old worker made the change wait for the whole pass (~10 s here)

    def provision_latency(self, user):
        started = time.monotonic()
        self.pg.sql(f"UPDATE user_subscriptions SET tier = 'pro' WHERE user_id = '{user}'")
        self.assertTrue(self.pg.wait_for(f"SELECT EXISTS (SELECT 1 FROM fly.user_fly_apps WHERE user_id = '{user}' "
                                         "AND status = 'active')", 120, interval=0.02))
        return time.monotonic() - started

    def test_tier_change_served_during_a_long_pass(self):
        self.behind_the_trigger(
            f"INSERT INTO user_subscriptions SELECT lpad(to_hex(n), 32, '0')::uuid, 'free' "
            f"FROM generate_series(1, {self.CONSISTENT}) n; "
            f"INSERT INTO user_subscriptions SELECT ('ffff0000-0000-4000-8000-' || lpad(to_hex(n), 12, '0'))::uuid, "
            f"'pro' FROM generate_series(1, {self.DRIFTING}) n")
        self.pg.sql("ANALYZE user_subscriptions")
        without_pass = self.provision_latency("00000000-0000-0000-0000-000000000001")
        # Passes on (none ran yet: the first starts at once), one per hour: this one only.
        log_from = len(self.pg.server_log())
        self.pg.sql("ALTER SYSTEM SET fly.drift_check_interval = '1h'")
        self.pg.reload()
        deadline = time.monotonic() + 30
        while "drift pass started" not in self.pg.server_log()[log_from:]:
            self.assertLess(time.monotonic(), deadline, "the drift pass did not start")
            time.sleep(0.01)
        time.sleep(0.2)
        during_pass = self.provision_latency("00000000-0000-0000-0000-000000000002")
        print(f"\nprovisioning latency: {without_pass:.2f} s without a pass, {during_pass:.2f} s during one",
              file=sys.stderr)
        self.assertLess(during_pass, max(self.BOUND, 3 * without_pass))
        self.assertNotIn("drift pass ended", self.pg.server_log()[log_from:], "the pass ended too soon to tell")
        deadline = time.monotonic() + 300
        while "drift pass ended" not in self.pg.server_log()[log_from:]:
            self.assertLess(time.monotonic(), deadline, "the drift pass did not end")
            time.sleep(0.1)
        self.assertIn(f"drift repair queued {self.DRIFTING} user(s)", self.pg.server_log()[log_from:])
        self.assertEqual(self.check_drift(), 0)


if __name__ == "__main__":
    unittest.main()

"""Failover: a primary and a streaming-replication standby, both throwaway. The standby's worker does nothing
while it is a standby; the primary is killed (kill -9 of the postmaster) in the middle of provisioning and
deprovisioning; the promoted standby finishes the work with no duplicate app and no lost event."""

import os
import sys
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Cluster, Simulator  # noqa: E402
from test_provisioning import app_name  # noqa: E402

PAID = ("pro", "elite")


def users(count, seed):
    return [str(uuid.UUID(int=(seed << 64) + i + 1, version=4)) for i in range(count)]


class FailoverTest(unittest.TestCase):
    def setUp(self):
        # Slow enough answers that the second round of tier changes is still being worked on at the crash.
        self.sim = Simulator({"boot_delay_ms": 300, "latency": {"*": {"fixed_ms": 150, "jitter_ms": 100}}})
        self.addCleanup(self.sim.stop)
        # The standby points here while it is a standby: any request it makes shows up in this log.
        self.canary = Simulator()
        self.addCleanup(self.canary.stop)
        # Four users at a time, so that the crash finds some operations in flight and others still queued.
        self.primary = Cluster(self.sim.url, {"fly.request_timeout": "'5s'", "fly.rate_limits": "off",
                                              "fly.max_concurrency": "4",
                                              "wal_level": "replica", "hot_standby": "on"})
        self.addCleanup(self.primary.destroy)
        self.primary.sql("CREATE TABLE user_subscriptions (user_id uuid PRIMARY KEY, tier text NOT NULL)")
        self.primary.sql("SELECT fly.attach_tier_trigger()")
        self.standby = self.primary.standby({"fly.api_url": f"'{self.canary.url}'"})
        self.addCleanup(self.standby.destroy)
        # "Committed" means replicated: a commit returns (and becomes visible to other sessions on the primary)
        # only once the standby has flushed its WAL. Every row this test sees on the primary, and every tier
        # change it made, must therefore be on the standby after promotion.
        self.primary.sql("ALTER SYSTEM SET synchronous_standby_names = '*'")
        self.primary.reload()
        self.assertTrue(self.primary.wait_for("SELECT sync_state = 'sync' FROM pg_stat_replication", timeout=30))

    def set_tiers(self, tiers, changes):
        """Applies the changes in one transaction."""
        statements = []
        for user, tier in changes.items():
            if user in tiers:
                statements.append(f"UPDATE user_subscriptions SET tier = '{tier}' WHERE user_id = '{user}'")
            else:
                statements.append(f"INSERT INTO user_subscriptions VALUES ('{user}', '{tier}')")
            tiers[user] = tier
        self.primary.sql(";".join(statements))

    def test_promoted_standby_finishes_the_work_of_a_primary_killed_mid_work(self):
        group = users(30, 70)
        tiers = {}
        # Round 1, completed on the primary: 12 paid users, 6 free ones.
        self.set_tiers(tiers, {u: PAID[i % 2] for i, u in enumerate(group[:12])})
        self.set_tiers(tiers, {u: "free" for u in group[12:18]})
        self.assertTrue(self.primary.wait_for("SELECT NOT EXISTS (SELECT 1 FROM fly.pending_work)", timeout=90))
        self.assertEqual(self.primary.value("SELECT count(*) FROM fly.user_fly_apps WHERE status = 'active'"), "12")

        # Round 2: downgrades, upgrades and new users; the crash comes in the middle of it.
        round_two = {u: "free" for u in group[:6]}
        round_two.update({u: "pro" for u in group[12:18]})
        round_two.update({u: "elite" for u in group[18:30]})
        self.set_tiers(tiers, round_two)
        deadline = time.monotonic() + 30
        while True:
            self.assertLess(time.monotonic(), deadline, "round 2 never got under way")
            done = int(self.primary.value("SELECT count(*) FROM fly.user_fly_app_events "
                                          "WHERE event_type IN ('provision_completed', 'deprovision_completed')"))
            if done >= 12 + 6:
                break
            time.sleep(0.05)
        seen_events = self.primary.sql("SELECT id, user_id, event_type FROM fly.user_fly_app_events ORDER BY id")
        pending = int(self.primary.value("SELECT count(*) FROM fly.pending_work"))
        self.assertGreater(pending, 0, "the work was over before the crash: slow the simulator down")

        # While it is a standby, its worker does not run and calls nobody.
        self.assertEqual(self.standby.value("SELECT pg_is_in_recovery()"), "t")
        self.assertIsNone(self.standby.worker_pid())
        self.assertEqual(self.standby.value("SELECT pid IS NULL FROM fly.worker_status()"), "t")
        self.assertEqual(self.canary.requests()["requests"], [])

        self.primary.kill_postmaster()
        print(f"\nfailover: primary killed with {pending} of 30 users still queued", file=sys.stderr)

        self.standby.write_settings({"fly.api_url": f"'{self.sim.url}'"})
        self.standby.reload()
        self.assertTrue(self.standby.wait_for(f"SELECT current_setting('fly.api_url') = '{self.sim.url}'", timeout=10))
        self.assertEqual(self.canary.requests()["requests"], [])
        self.standby.promote()
        self.assertEqual(self.standby.value("SELECT pg_is_in_recovery()"), "f")
        self.assertTrue(self.standby.wait_for(
            "SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_fly worker'", timeout=30))
        self.assertTrue(self.standby.wait_for("SELECT NOT EXISTS (SELECT 1 FROM fly.pending_work)", timeout=120),
                        repr(self.standby.sql("SELECT * FROM fly.pending_work")))

        # No lost tier change, no lost event.
        self.assertEqual(dict(self.standby.sql("SELECT user_id, tier FROM user_subscriptions")), tiers)
        after = {row[0]: row[1:] for row in self.standby.sql("SELECT id, user_id, event_type "
                                                              "FROM fly.user_fly_app_events")}
        for event_id, user, event_type in seen_events:
            self.assertEqual(after.get(event_id), [user, event_type], f"event {event_id} was lost in the failover")

        # Every user in the state their tier asks for, on Fly and in the tables; nothing else on Fly.
        paid = sorted(u for u, t in tiers.items() if t in PAID)
        apps = self.sim.state()["apps"]
        self.assertEqual(sorted(apps), sorted(app_name(u) for u in paid))
        live = {row[0]: row[1:] for row in self.standby.sql(
            "SELECT user_id, fly_app_name, status, tier, fly_machine_id FROM fly.user_fly_apps "
            "WHERE deleted_at IS NULL")}
        self.assertEqual(sorted(live), paid)
        for user in paid:
            name, status, tier, machine = live[user]
            self.assertEqual((name, status, tier), (app_name(user), "active", tiers[user]), user)
            self.assertEqual(list(apps[name]["machines"]), [machine], user)
            self.assertEqual(apps[name]["machines"][machine]["state"], "started", user)
        # One completion per app lifecycle: nothing was done twice over.
        completions = self.standby.sql(
            "SELECT a.id, a.status, count(*) FILTER (WHERE e.event_type = 'provision_completed'), "
            "count(*) FILTER (WHERE e.event_type = 'deprovision_completed') "
            "FROM fly.user_fly_apps a JOIN fly.user_fly_app_events e ON e.fly_app_id = a.id GROUP BY a.id, a.status")
        for app_id, status, provisioned, deprovisioned in completions:
            self.assertEqual(provisioned, "1", f"app row {app_id}")
            self.assertEqual(deprovisioned, "1" if status == "deleted" else "0", f"app row {app_id}")
        self.assertEqual(self.standby.value("SELECT count(*) FROM fly.user_fly_apps WHERE status = 'failed'"), "0")
        # The standby never called the simulator it was given while it was one.
        self.assertEqual(self.canary.requests()["requests"], [])


if __name__ == "__main__":
    unittest.main(verbosity=2)

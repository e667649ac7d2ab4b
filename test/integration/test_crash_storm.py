"""Crash storm: 100 users provisioning while the postmaster is killed with kill -9 three times, at moments drawn
from a seed. Every user converges, and Fly ends up with exactly one app and one machine per paid user.

The seed is printed; replay a run with
    PGFLY_CRASH_SEED=<seed> python3 -m unittest discover -s test/integration -p test_crash_storm.py -v
"""

import collections
import os
import random
import sys
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Cluster, Simulator  # noqa: E402
from test_provisioning import app_name  # noqa: E402

KILLS = 3


class CrashStormTest(unittest.TestCase):
    maxDiff = None

    def setUp(self):
        self.seed = int(os.environ.get("PGFLY_CRASH_SEED") or random.SystemRandom().randrange(1, 1 << 31))
        print(f"\ncrash storm seed: {self.seed} (replay: PGFLY_CRASH_SEED={self.seed})", file=sys.stderr)
        self.sim = Simulator({"seed": self.seed, "boot_delay_ms": 500,
                              "latency": {"*": {"fixed_ms": 50, "jitter_ms": 100}}})
        self.addCleanup(self.sim.stop)
        self.pg = Cluster(self.sim.url, {"fly.request_timeout": "'5s'", "fly.rate_limits": "off"})
        self.addCleanup(self.pg.destroy)
        self.pg.sql("CREATE TABLE user_subscriptions (user_id uuid PRIMARY KEY, tier text NOT NULL)")
        self.pg.sql("SELECT fly.attach_tier_trigger()")

    def test_hundred_users_provisioning_through_three_postmaster_kills(self):
        rng = random.Random(self.seed)
        replay = f"(seed {self.seed}; replay with PGFLY_CRASH_SEED={self.seed})"
        group = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(100)]
        self.pg.sql("INSERT INTO user_subscriptions VALUES " + ",".join(f"('{u}', 'pro')" for u in group))
        # The moments are drawn as points of progress (users still queued), then a little time, so that every
        # kill lands while provisioning is under way however fast this machine is.
        queued_at_kill = []
        for threshold in sorted(rng.sample(range(10, 96), KILLS), reverse=True):
            self.assertTrue(self.pg.wait_for(f"SELECT count(*) <= {threshold} FROM fly.pending_work", timeout=120,
                                             interval=0.02), f"no progress {replay}")
            time.sleep(rng.uniform(0, 0.3))
            queued_at_kill.append(int(self.pg.value("SELECT count(*) FROM fly.pending_work")))
            self.pg.kill_postmaster()
            self.pg.start()
        print(f"crash storm: users still queued at each kill: {queued_at_kill}", file=sys.stderr)
        self.assertGreater(queued_at_kill[-1], 0, f"the last kill came after the work was done {replay}")
        self.assertTrue(self.pg.wait_for("SELECT NOT EXISTS (SELECT 1 FROM fly.pending_work)", timeout=180),
                        f"queue did not drain {replay}: {self.pg.sql('SELECT * FROM fly.pending_work')!r}")

        failed = self.pg.sql("SELECT e.user_id, e.event_type, e.details FROM fly.user_fly_app_events e JOIN "
                             "fly.user_fly_apps a ON a.id = e.fly_app_id WHERE a.status = 'failed' ORDER BY e.id")
        self.assertEqual(failed, [], f"failed users' events {replay}")
        rows = {row[0]: row[1:] for row in self.pg.sql(
            "SELECT user_id, fly_app_name, status, fly_machine_id, deleted_at IS NULL FROM fly.user_fly_apps")}
        self.assertEqual(sorted(rows), sorted(group), f"one app row per user {replay}")
        apps = self.sim.state()["apps"]
        self.assertEqual(sorted(apps), sorted(app_name(u) for u in group), replay)
        for user in group:
            name, status, machine, live = rows[user]
            self.assertEqual((name, status, live), (app_name(user), "active", "t"), f"{user} {replay}")
            self.assertEqual(list(apps[name]["machines"]), [machine], f"{user} {replay}")
            self.assertEqual(apps[name]["machines"][machine]["state"], "started", f"{user} {replay}")
        completed = collections.Counter(u for (u,) in self.pg.sql(
            "SELECT user_id FROM fly.user_fly_app_events WHERE event_type = 'provision_completed'"))
        self.assertEqual(set(completed.values()), {1}, f"one completion per user {replay}")
        self.assertEqual(len(completed), 100, replay)
        # Fly created each app once; a create interrupted by a crash was found again, not repeated.
        created = collections.Counter(r["body"]["name"] for r in self.sim.requests()["requests"]
                                      if r["endpoint"] == "create_app" and r["status"] == 201)
        self.assertEqual(set(created.values()), {1}, replay)


if __name__ == "__main__":
    unittest.main(verbosity=2)

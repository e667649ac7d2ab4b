"""Wake gating (issue 16): a commit that queues work wakes the worker only while it waits for work it could start
now. An idle worker picks a committed change up at once; a worker held back by Fly's rate limits is not woken by
every commit, and still starts the new work as soon as the limiter lets it (not at fly.poll_interval)."""

import os
import sys
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_provisioning import ProvisioningTestCase, app_name  # noqa: E402


def users(count, seed):
    return [str(uuid.UUID(int=(seed << 64) + i + 1, version=4)) for i in range(count)]


class WakeGatingTest(ProvisioningTestCase):
    # Fly's default limits on the worker's side (create-app: 1 per second per organization, burst 3); the poll
    # timer is an hour, so that only a wake, an answer or the limiter's own timer can start work in these tests
    # (the policy sweep still looks every 10 s: the bounds below are well under that).
    cluster_settings = {"fly.request_timeout": "'5s'", "fly.poll_interval": "'1h'", "fly.max_concurrency": "64",
                        "fly.health_check_interval": "0", "fly.drift_check_interval": "0"}

    def counters(self):
        row = self.pg.sql("SELECT work_commits, wakes_sent, commit_wakes, rate_limited FROM fly.worker_status()")[0]
        return [int(v) for v in row]

    def wait_idle(self):
        self.pg.wait_worker_iterations(2, idle=True)
        self.assertTrue(self.pg.wait_for(
            "SELECT wait_event_type = 'Extension' FROM pg_stat_activity WHERE backend_type = 'pg_fly worker'",
            timeout=15))

    def create_app_times(self):
        return sorted(r["t_wall"] for r in self.sim.requests()["requests"] if r["endpoint"] == "create_app")

    def test_a_commit_wakes_an_idle_worker_at_once(self):
        self.wait_idle()
        commits, sent, wakes, _ = self.counters()
        user = users(1, 160)[0]
        committed = float(self.pg.value(
            f"INSERT INTO user_subscriptions VALUES ('{user}', 'pro') RETURNING extract(epoch FROM now())"))
        self.assertTrue(self.pg.wait_for(
            "SELECT EXISTS (SELECT 1 FROM fly.user_fly_app_events WHERE event_type = 'app_created')", timeout=30))
        first = self.create_app_times()[0]
        # The wake path takes milliseconds; without the wake, nothing but the 10 s policy sweep would look.
        self.assertLess(first - committed, 2.0)
        after = self.counters()
        self.assertGreaterEqual(after[0], commits + 1)
        self.assertGreaterEqual(after[1], sent + 1, "the commit did not wake the idle worker")
        self.assertGreaterEqual(after[2], wakes + 1)
        self.settle()
        self.assertEqual(list(self.live_apps_on_fly()), [app_name(user)])

    def test_commits_do_not_wake_a_rate_limited_worker_and_its_work_still_gets_done(self):
        self.wait_idle()
        batch = users(14, 161)
        late = users(6, 162)
        # One commit: 14 create-app requests, of which the limiter lets 3 go and holds the others back for
        # about a second each.
        self.pg.sql("INSERT INTO user_subscriptions VALUES " + ",".join(f"('{u}', 'pro')" for u in batch))
        self.assertTrue(self.pg.wait_for("SELECT rate_limited >= 5 FROM fly.worker_status()", timeout=15),
                        self.pg.sql("SELECT * FROM fly.worker_status()"))
        commits, sent, wakes, _ = self.counters()
        for user in late:
            self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{user}', 'pro')")
        after = self.counters()
        # Still held back by the limiter after the last commit: it was held back throughout.
        self.assertGreater(after[3], 0, "the limiter no longer held anything back: the test proves nothing")
        self.assertEqual(after[0] - commits, len(late), "each commit is counted")
        self.assertEqual(after[1] - sent, 0, "a commit woke a worker that could not start anything")
        self.assertEqual(after[2] - wakes, 0)
        self.settle(timeout=120)
        everyone = batch + late
        self.assertEqual(sorted(self.live_apps_on_fly()), sorted(app_name(u) for u in everyone))
        # The late users were started as soon as the limiter allowed: create-app went out at its pace (1 per
        # second), with no gap where the worker sat on work it had not been woken for.
        times = self.create_app_times()
        self.assertEqual(len(times), len(everyone))
        gaps = [b - a for a, b in zip(times, times[1:])]
        self.assertLess(max(gaps), 2.5, gaps)


if __name__ == "__main__":
    unittest.main()

"""The worker never spins: in every state where it can do nothing (no extension, no token, no image, Fly down with
the breaker open, every request held back by rate limits, a rollout waiting for its canary) it sleeps until
something can change, and it picks the work up again once that state ends. CPU time is read from /proc."""

import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Cluster, Simulator  # noqa: E402
from test_failures import users  # noqa: E402
from test_provisioning import ProvisioningTestCase  # noqa: E402

BAD = "registry.fly.io/vyx-app:deployment-03CRASHES"
WINDOW = 10.0
# Of one core; a worker that sleeps as it should uses well under 0.5 %.
MAX_CPU_SHARE = 0.02


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of the line; fields[0] here is field 3 (state).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class LivenessAssertions:
    def assert_worker_sleeps(self, pg, what):
        pid = pg.worker_pid()
        self.assertIsNotNone(pid, "no worker running")
        before, started = cpu_seconds(pid), time.monotonic()
        time.sleep(WINDOW)
        share = (cpu_seconds(pid) - before) / (time.monotonic() - started)
        self.assertEqual(pg.worker_pid(), pid, "the worker restarted during the measurement")
        print(f"\n  {what}: worker CPU {share * 100:.2f} % of a core over {WINDOW:.0f} s", file=sys.stderr)
        self.assertLess(share, MAX_CPU_SHARE, f"{what}: the worker used {share * 100:.1f} % of a core")


class NoExtensionTest(LivenessAssertions, unittest.TestCase):
    """fly.database_name left at its default: the worker's database has no pg_fly."""

    def test_no_extension_in_the_workers_database(self):
        sim = Simulator()
        pg = Cluster(sim.url, {"fly.database_name": "'postgres'"})
        try:
            self.assertTrue(pg.wait_for("SELECT EXISTS (SELECT 1 FROM pg_stat_activity "
                                        "WHERE backend_type = 'pg_fly worker' AND datname = 'postgres')", 30))
            self.assert_worker_sleeps(pg, "no extension")
            # Created there later, it is used without a restart.
            pg.psql("CREATE EXTENSION pg_fly", database="postgres")
            pg.psql("CREATE TABLE user_subscriptions (user_id uuid PRIMARY KEY, tier text NOT NULL); "
                    "SELECT fly.attach_tier_trigger()", database="postgres")
            user = users(1, 90)[0]
            pg.psql(f"INSERT INTO user_subscriptions VALUES ('{user}', 'pro')", database="postgres")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if pg.psql(f"SELECT status FROM fly.user_fly_apps WHERE user_id = '{user}'",
                           database="postgres").stdout.strip() == "active":
                    break
                time.sleep(0.1)
            else:
                self.fail("the worker did not provision once the extension was created")
        finally:
            pg.destroy()
            sim.stop()


class LivenessTest(LivenessAssertions, ProvisioningTestCase):
    cluster_settings = {"fly.request_timeout": "'5s'", "fly.rate_limits": "off", "fly.breaker_failure_threshold": "3",
                        "fly.breaker_open_time": "'5s'", "fly.breaker_max_open_time": "'20s'"}

    def set_settings(self, **settings):
        for name, value in settings.items():
            self.pg.sql(f"ALTER SYSTEM {'RESET fly.' + name if value is None else f'SET fly.{name} = {value}'}")
        self.pg.reload()
        time.sleep(1.0)

    def active_count(self, group):
        return int(self.pg.value("SELECT count(*) FROM fly.user_fly_apps WHERE status = 'active' AND "
                                 "user_id = ANY ('{" + ",".join(group) + "}'::uuid[])"))

    def assert_provisions(self, seed, count=1, timeout=60):
        group = users(count, seed)
        self.pg.sql("INSERT INTO user_subscriptions VALUES " + ",".join(f"('{u}', 'pro')" for u in group))
        self.settle(timeout=timeout)
        self.assertEqual(self.active_count(group), count)
        return group

    def test_extension_dropped_while_the_worker_runs(self):
        self.assert_provisions(91)
        self.pg.sql("DROP EXTENSION pg_fly CASCADE")
        try:
            self.assert_worker_sleeps(self.pg, "extension dropped")
        finally:
            self.pg.sql("CREATE EXTENSION pg_fly")
            self.pg.sql("SELECT fly.attach_tier_trigger()")
        self.pg.sql("TRUNCATE user_subscriptions")
        self.assert_provisions(92)

    def assert_sleeps_while_unconfigured(self, what, setting, unusable, usable, seed):
        """With `setting` unusable, queued users wait and the worker sleeps; once it is usable they are served."""
        self.set_settings(**{setting: unusable})
        try:
            self.pg.sql("INSERT INTO user_subscriptions VALUES " + ",".join(f"('{u}', 'pro')" for u in users(3, seed)))
            self.assert_worker_sleeps(self.pg, what)
        finally:
            self.set_settings(**{setting: usable})
        self.settle()
        self.assert_provisions(seed + 1)

    def test_no_token(self):
        self.assert_sleeps_while_unconfigured("no token", "api_token_file", "'/nonexistent/pg_fly_token'",
                                              f"'{self.pg.token_file}'", 93)

    def test_no_image(self):
        self.assert_sleeps_while_unconfigured("no image", "image", "''", f"'{self.pg.value('SHOW fly.image')}'", 95)

    def test_fly_down_with_the_breaker_open(self):
        self.sim.configure(faults=[{"endpoint": "*", "always": True, "kind": "status", "status": 503}])
        self.pg.sql("INSERT INTO user_subscriptions VALUES " + ",".join(f"('{u}', 'pro')" for u in users(6, 97)))
        self.assertTrue(self.pg.wait_for("SELECT breaker_state = 'open' FROM fly.worker_status()", timeout=30))
        self.assert_worker_sleeps(self.pg, "breaker open")
        self.sim.configure(faults=[])
        self.settle(timeout=90)
        self.assertEqual(self.pg.value("SELECT count(*) FROM fly.user_fly_apps WHERE status = 'active'"), "6")

    def test_every_request_held_back_by_rate_limits(self):
        # Fly answers 429 with a long Retry-After to everything, and the client's own buckets are nearly empty.
        self.sim.configure(faults=[{"endpoint": "*", "always": True, "kind": "rate_limit", "retry_after": 30}])
        self.set_settings(rate_limits="on", rate_limit_per_second="0.01", rate_limit_burst="1")
        try:
            self.pg.sql("INSERT INTO user_subscriptions VALUES " + ",".join(f"('{u}', 'pro')" for u in users(8, 98)))
            self.assertTrue(self.pg.wait_for("SELECT rate_limited > 0 FROM fly.worker_status()", timeout=30))
            self.assert_worker_sleeps(self.pg, "rate limited")
        finally:
            self.sim.configure(faults=[])
            self.set_settings(rate_limits="off", rate_limit_per_second=None, rate_limit_burst=None)
        # Held requests wait out their Retry-After (30 s) at most.
        self.settle(timeout=120)
        self.assertEqual(self.pg.value("SELECT count(*) FROM fly.user_fly_apps WHERE status = 'active'"), "8")

    def test_paced_by_the_client_limiter_at_flys_limits(self):
        # Create-app is paced per organization (1/s, burst 3): most users wait for a token, one at a time.
        self.set_settings(rate_limits="on")
        try:
            group = users(40, 101)
            self.pg.sql("INSERT INTO user_subscriptions VALUES " + ",".join(f"('{u}', 'pro')" for u in group))
            self.assertTrue(self.pg.wait_for("SELECT rate_limited > 0 FROM fly.worker_status()", timeout=30))
            iterations = "SELECT iterations FROM fly.worker_status()"
            before, started = int(self.pg.value(iterations)), time.monotonic()
            self.assert_worker_sleeps(self.pg, "paced at Fly's limits")
            rate = (int(self.pg.value(iterations)) - before) / (time.monotonic() - started)
            print(f"  paced at Fly's limits: {rate:.0f} loop passes/s", file=sys.stderr)
            # About one user a second, each a handful of requests: tens of passes a second at most.
            self.assertLess(rate, 50)
            self.settle(timeout=180)
        finally:
            self.set_settings(rate_limits="off")
        self.assertEqual(self.active_count(group), len(group))

    def test_rollout_waiting_for_its_canary(self):
        self.pg.sql("TRUNCATE fly.image_rollouts, fly.image_rollout_apps")
        self.assert_provisions(99, count=2)
        self.sim.configure(unhealthy_images=[BAD])
        rollout = self.pg.value(f"SELECT fly.start_image_rollout('{BAD}', canary_count => 1, "
                                "canary_wait => '10 minutes')")
        self.assertTrue(self.pg.wait_for(f"SELECT status = 'canary_check' FROM fly.image_rollouts WHERE id = {rollout}",
                                         timeout=60))
        self.assertTrue(self.pg.wait_for(f"SELECT last_checked_at IS NOT NULL FROM fly.image_rollout_apps "
                                         f"WHERE rollout_id = {rollout} AND canary", timeout=30))
        self.assert_worker_sleeps(self.pg, "canary wait")
        self.assertEqual(self.pg.value(f"SELECT status FROM fly.image_rollouts WHERE id = {rollout}"), "canary_check")
        self.pg.sql(f"SELECT fly.cancel_image_rollout({rollout})")
        self.sim.configure(unhealthy_images=[])
        self.assert_provisions(100)


class ClaimPassTest(ProvisioningTestCase):
    """A claim costs one pass of the loop, not a second one straight after (the queue summary must see the claims
    its own transaction made). Each user's first request is held back by the client's rate limiter for minutes,
    and the poll timer is long, so that nothing else wakes the worker."""

    cluster_settings = {"fly.request_timeout": "'30s'", "fly.rate_limits": "on", "fly.rate_limit_per_second": "0.01",
                        "fly.rate_limit_burst": "1", "fly.poll_interval": "'60s'", "fly.health_check_interval": "0"}

    def iterations(self):
        return int(self.pg.value("SELECT iterations FROM fly.worker_status()"))

    def test_one_pass_per_claim(self):
        first, *group = users(6, 60)
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{first}', 'pro')")  # takes the organization's burst
        self.settle()
        time.sleep(1)
        passes = []
        for number, user in enumerate(group, start=1):
            before = self.iterations()
            self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{user}', 'pro')")
            self.assertTrue(self.pg.wait_for(f"SELECT rate_limited = {number} FROM fly.worker_status()", timeout=30))
            time.sleep(1.5)
            passes.append(self.iterations() - before)
        self.assertLessEqual(sum(passes), len(group) + 1, passes)


if __name__ == "__main__":
    unittest.main()

"""Chaos: seeded runs of random simulator faults of every kind over mixed tier changes (free, pro and elite, up
and down, repeated, some while earlier changes are still being worked on). Each run must converge: an app with
one machine of the right size for exactly the paid users, and rows that say so.

One cluster and one simulator serve every run; both are reset in between. The seeds are printed, and a run is
replayed alone with
    PGFLY_CHAOS_SEED=<seed> python3 -m unittest discover -s test/integration -p test_chaos.py -v
(PGFLY_CHAOS_RUNS sets how many runs, from a random first seed, when no seed is given.)
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

FAULT_KINDS = ("status", "status_after", "reset", "hang", "malformed_json", "html_500", "rate_limit", "latency")
ENDPOINTS = ("create_app", "get_app", "delete_app", "list_machines", "create_machine", "update_machine",
             "stop_machine", "wait_machine")
TIERS = ("free", "pro", "elite")
# Elite gets a bigger guest than pro, so that pro <-> elite resizes the machine in place.
MEMORY_MB = {"pro": 256, "elite": 512}
USERS_PER_RUN = 8


def random_faults(rng):
    """One rule of every kind, each on every endpoint or on a few, at a low probability (latency more often)."""
    faults = []
    for kind in FAULT_KINDS:
        rule = {"kind": kind,
                "endpoint": "*" if rng.random() < 0.4 else rng.sample(ENDPOINTS, rng.randint(2, 5)),
                "probability": round(rng.uniform(0.15, 0.4) if kind == "latency" else rng.uniform(0.02, 0.07), 3)}
        if kind in ("status", "status_after"):
            rule["status"] = rng.choice((408, 500, 502, 503, 504))
        elif kind == "hang":
            rule["hang_s"] = rng.choice((0.3, 0.8, 1.5))
        elif kind == "rate_limit":
            rule["retry_after"] = rng.choice((0, 1))
        elif kind == "latency":
            rule["delay_ms"] = rng.randint(20, 200)
            rule["jitter_ms"] = rng.randint(0, 200)
        faults.append(rule)
    rng.shuffle(faults)  # the first rule that fires wins: vary which one that is
    return faults


class ChaosTest(unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.sim = Simulator()
        cls.pg = Cluster(cls.sim.url, {
            "fly.request_timeout": "'3s'", "fly.rate_limits": "off", "fly.max_attempts": "100",
            "fly.retry_base_delay": "'100ms'", "fly.retry_max_delay": "'1s'",
            "fly.breaker_open_time": "'500ms'", "fly.breaker_max_open_time": "'2s'",
            # Health checks are tested elsewhere; here they would only add requests between runs.
            "fly.health_check_interval": "0"})
        cls.pg.sql("CREATE TABLE user_subscriptions (user_id uuid PRIMARY KEY, tier text NOT NULL)")
        cls.pg.sql("SELECT fly.attach_tier_trigger()")
        cls.pg.sql(f"UPDATE fly.tier_policies SET memory_mb = {MEMORY_MB['elite']} WHERE tier = 'elite'")

    @classmethod
    def tearDownClass(cls):
        cls.pg.destroy()
        cls.sim.stop()

    def seeds(self):
        if os.environ.get("PGFLY_CHAOS_SEED"):
            return [int(os.environ["PGFLY_CHAOS_SEED"])]
        first = random.SystemRandom().randrange(1, 1 << 30)
        return list(range(first, first + int(os.environ.get("PGFLY_CHAOS_RUNS", "20"))))

    def test_seeded_fault_runs_converge(self):
        seeds = self.seeds()
        self.assertTrue(seeds, "no runs")
        print(f"\nchaos: seeds {seeds[0]}..{seeds[-1]}", file=sys.stderr)
        fired = collections.Counter()
        started = time.monotonic()
        for seed in seeds:
            run_started = time.monotonic()
            fired.update(self.run_once(seed))
            print(f"chaos: seed {seed} converged in {time.monotonic() - run_started:.1f} s", file=sys.stderr)
        print(f"chaos: {len(seeds)} runs in {time.monotonic() - started:.0f} s; faults fired: {dict(fired)}",
              file=sys.stderr)
        if len(seeds) >= 10:
            self.assertEqual(set(k for k in fired if fired[k]), set(FAULT_KINDS), "some fault kind never fired")

    def test_new_size_while_a_downgrade_is_stopping_the_machine(self):
        """A case the seeded runs found, made deterministic: the deprovision has stopped the machine and cannot
        delete the app yet (it waits for the slow stop to finish) when the user comes back on a tier of another
        size. Once a DELETE has been sent the app is never reused (test_deletion.py); before, it is."""
        self.pg.sql("TRUNCATE user_subscriptions, fly.reconcile_queue, fly.user_fly_app_events, fly.user_fly_apps")
        self.sim.control("POST", "reset", {"seed": 5, "boot_delay_ms": 50, "stop_delay_ms": 3000,
                                           "rate_limits": {"mode": "off"}})
        user = str(uuid.UUID(int=0x57095 << 64, version=4))
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{user}', 'pro')")
        self.assertTrue(self.pg.wait_for("SELECT NOT EXISTS (SELECT 1 FROM fly.pending_work)", timeout=30))
        self.pg.sql(f"UPDATE user_subscriptions SET tier = 'free' WHERE user_id = '{user}'")
        self.assertTrue(self.pg.wait_for("SELECT EXISTS (SELECT 1 FROM fly.user_fly_app_events "
                                         "WHERE event_type = 'machines_stopped')", timeout=30))
        self.pg.sql(f"UPDATE user_subscriptions SET tier = 'elite' WHERE user_id = '{user}'")
        self.assertTrue(self.pg.wait_for("SELECT EXISTS (SELECT 1 FROM fly.user_fly_app_events WHERE "
                                         "event_type = 'provision_requested' AND details->>'tier' = 'elite')", 30))
        if not self.pg.wait_for("SELECT NOT EXISTS (SELECT 1 FROM fly.pending_work)", timeout=60):
            self.fail(f"the queue did not drain\n{self.diagnosis()}")
        self.check_converged({user: "elite"}, self.sim.state()["apps"], "stopping machine")
        # The deprovision's DELETE, decided as the new tier came, was dropped: the app was never condemned.
        self.assertEqual([r for r in self.sim.requests()["requests"] if r["endpoint"] == "delete_app"], [])
        self.assertIn(["machine_updated"], self.pg.sql("SELECT event_type FROM fly.user_fly_app_events"),
                      self.pg.table("SELECT event_type, details FROM fly.user_fly_app_events ORDER BY id"))

    def run_once(self, seed):
        rng = random.Random(seed)
        replay = f"chaos seed {seed}: replay with PGFLY_CHAOS_SEED={seed}"
        self.pg.sql("TRUNCATE user_subscriptions, fly.reconcile_queue, fly.user_fly_app_events, fly.user_fly_apps")
        self.sim.control("POST", "reset", {"seed": seed, "boot_delay_ms": rng.choice((0, 50, 200)),
                                           "rate_limits": {"mode": "off"}, "faults": random_faults(rng)})
        group = [str(uuid.UUID(int=(seed << 64) + i + 1, version=4)) for i in range(USERS_PER_RUN)]
        tiers = {u: rng.choice(TIERS) for u in group}
        self.pg.sql("INSERT INTO user_subscriptions VALUES " + ",".join(f"('{u}', '{t}')" for u, t in tiers.items()))
        for _ in range(3):
            time.sleep(rng.uniform(0.05, 1.0))
            changes = {u: rng.choice([t for t in TIERS if t != tiers[u]])
                       for u in rng.sample(group, rng.randint(2, USERS_PER_RUN))}
            tiers.update(changes)
            values = ",".join(f"('{u}'::uuid, '{t}')" for u, t in changes.items())
            self.pg.sql(f"UPDATE user_subscriptions s SET tier = v.tier FROM (VALUES {values}) v(user_id, tier) "
                        "WHERE s.user_id = v.user_id")
        if not self.pg.wait_for("SELECT NOT EXISTS (SELECT 1 FROM fly.pending_work)", timeout=120):
            self.fail(f"{replay}: the queue did not drain\n{self.diagnosis()}")
        state = self.sim.state()
        self.check_converged(tiers, state["apps"], replay)
        return {rule["kind"]: rule["fired"] for rule in state["faults"]}

    def diagnosis(self):
        """What the worker, the queue, the stuck users' events and Fly's log of their apps say."""
        lines = [self.pg.table("SELECT * FROM fly.worker_status()"), self.pg.table("SELECT * FROM fly.pending_work")]
        names = [name for (name,) in self.pg.sql(
            "SELECT a.fly_app_name FROM fly.user_fly_apps a JOIN fly.reconcile_queue q USING (user_id) "
            "WHERE a.deleted_at IS NULL")]
        lines.append(self.pg.table("SELECT e.id, e.user_id, e.event_type, left(e.details::text, 200) "
                                   "FROM fly.user_fly_app_events e JOIN fly.reconcile_queue q USING (user_id) "
                                   "ORDER BY e.id"))
        for request in self.sim.requests()["requests"]:
            app = request["body"].get("name") if request["endpoint"] == "create_app" else request["path"]
            if any(name in str(app) for name in names):
                lines.append(" ".join(str(request[k]) for k in ("seq", "t_mono", "endpoint", "method", "path",
                                                                 "query", "status", "fault")))
        return "\n".join(lines)

    def check_converged(self, tiers, apps, replay):
        failed = self.pg.sql("SELECT a.user_id, e.event_type, e.details FROM fly.user_fly_apps a JOIN "
                             "fly.user_fly_app_events e ON e.fly_app_id = a.id WHERE a.status = 'failed' ORDER BY e.id")
        self.assertEqual(failed, [], f"{replay}: failed users and their events")
        paid = {u for u, t in tiers.items() if t != "free"}
        self.assertEqual(sorted(apps), sorted(app_name(u) for u in paid), replay)
        rows = {row[0]: row[1:] for row in self.pg.sql(
            "SELECT user_id, fly_app_name, status, tier, fly_machine_id, memory_mb FROM fly.user_fly_apps "
            "WHERE deleted_at IS NULL")}
        self.assertEqual(sorted(rows), sorted(paid), f"{replay}: live rows")
        for user in paid:
            name, status, tier, machine, memory_mb = rows[user]
            self.assertEqual((name, status, tier, memory_mb), (app_name(user), "active", tiers[user],
                                                               str(MEMORY_MB[tiers[user]])), f"{replay}: {user}")
            machines = apps[name]["machines"]
            self.assertEqual(list(machines), [machine], f"{replay}: {user}'s machines")
            self.assertEqual(machines[machine]["state"], "started", f"{replay}: {user}")
            self.assertEqual(machines[machine]["config"]["guest"]["memory_mb"], MEMORY_MB[tiers[user]],
                             f"{replay}: {user}")
        self.assertEqual(self.pg.value("SELECT count(*) FROM fly.user_fly_apps WHERE deleted_at IS NOT NULL AND "
                                       "status <> 'deleted'"), "0", replay)
        # An alert belongs to a failure, not to the success that ends a run of failures.
        self.assertEqual(self.pg.sql("SELECT details FROM fly.user_fly_app_events WHERE event_type = 'alert_raised' "
                                     "AND status IN ('active', 'deleted')"), [], replay)


if __name__ == "__main__":
    unittest.main(verbosity=2)

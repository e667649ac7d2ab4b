"""Health checks built into the worker: health follows the machine's checks, a stopped machine is started
again, an app deleted behind pg_fly's back is provisioned again, and check_fly_apps_health() runs a pass now."""

import json
import os
import sys
import time
import unittest
import urllib.request
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import TEST_TOKEN  # noqa: E402
from test_provisioning import USER, ProvisioningTestCase, app_name  # noqa: E402


class HealthTest(ProvisioningTestCase):
    # Apps here vanish seconds after they were made: past fly.create_settle_time, a 404 is believed (a young
    # machine's 404 is "unknown": test_consistency.py).
    cluster_settings = {"fly.request_timeout": "'5s'", "fly.health_check_interval": "'1s'", "fly.rate_limits": "off",
                        "fly.create_settle_time": "'1s'"}

    def provision(self):
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{USER}', 'pro')")
        self.settle()
        self.assertTrue(self.pg.wait_for(f"SELECT health_status = 'healthy' FROM fly.user_fly_apps "
                                         f"WHERE user_id = '{USER}'", timeout=15))

    def test_health_follows_the_machines_checks_with_one_event_per_change(self):
        self.provision()
        self.sim.control("POST", f"apps/{app_name(USER)}/health", {"checks": "critical"})
        self.assertTrue(self.pg.wait_for(f"SELECT health_status = 'unhealthy' FROM fly.user_fly_apps "
                                         f"WHERE user_id = '{USER}'", timeout=15))
        # More passes: no more events while nothing changes. Each pass is asked for, and the barrier returns once
        # the worker has run it and recorded its answer (an event commits with last_health_check_at).
        checked = self.pg.value(f"SELECT last_health_check_at FROM fly.user_fly_apps WHERE user_id = '{USER}'")
        for _ in range(2):
            self.assertEqual(self.pg.value("SELECT fly.check_fly_apps_health()"), "1")
            self.pg.wait_worker_iterations(2, idle=True)
        self.assertEqual(self.pg.value(f"SELECT last_health_check_at > '{checked}' FROM fly.user_fly_apps "
                                       f"WHERE user_id = '{USER}'"), "t")
        self.assertEqual(self.events().count("health_changed"), 2)  # unknown -> healthy, healthy -> unhealthy
        detail = self.pg.value(f"SELECT details->>'detail' FROM fly.user_fly_app_events WHERE user_id = '{USER}' "
                               "AND event_type = 'health_changed' ORDER BY id DESC LIMIT 1")
        self.assertIn("critical", detail)
        self.sim.control("POST", f"apps/{app_name(USER)}/health", {"checks": "passing"})
        self.assertTrue(self.pg.wait_for(f"SELECT health_status = 'healthy' FROM fly.user_fly_apps "
                                         f"WHERE user_id = '{USER}'", timeout=15))
        self.assertEqual(self.events().count("health_changed"), 3)
        self.assertIsNotNone(self.pg.value(f"SELECT last_health_check_at FROM fly.user_fly_apps "
                                           f"WHERE user_id = '{USER}'"))

    def test_a_stopped_machine_is_started_again(self):
        self.provision()
        machine = self.pg.value(f"SELECT fly_machine_id FROM fly.user_fly_apps WHERE user_id = '{USER}'")
        self.sim.control("POST", f"machines/{app_name(USER)}/{machine}/state", {"state": "stopped"})
        self.assertTrue(self.pg.wait_for(f"SELECT EXISTS (SELECT 1 FROM fly.user_fly_app_events WHERE user_id = "
                                         f"'{USER}' AND event_type = 'machine_restarted')", timeout=15))
        self.assertIn("machine_restart_requested", self.events())
        self.assertTrue(self.pg.wait_for(f"SELECT health_status = 'healthy' FROM fly.user_fly_apps "
                                         f"WHERE user_id = '{USER}'", timeout=15))
        self.assertEqual(self.live_apps_on_fly()[app_name(USER)]["machines"][machine]["state"], "started")

    def test_an_app_deleted_behind_pg_flys_back_is_provisioned_again(self):
        self.provision()
        self.sim.control("DELETE", f"apps/{app_name(USER)}")
        self.assertTrue(self.pg.wait_for(f"SELECT EXISTS (SELECT 1 FROM fly.user_fly_app_events WHERE user_id = "
                                         f"'{USER}' AND event_type = 'app_vanished')", timeout=15))
        self.settle()
        self.assertTrue(self.pg.wait_for(f"SELECT status = 'active' FROM fly.user_fly_apps WHERE user_id = '{USER}' "
                                         f"AND deleted_at IS NULL", timeout=15))
        apps = self.live_apps_on_fly()
        self.assertEqual(list(apps), [app_name(USER)])
        self.assertEqual(len(apps[app_name(USER)]["machines"]), 1)
        self.assertEqual(self.pg.value(f"SELECT fly_machine_id FROM fly.user_fly_apps WHERE user_id = '{USER}'"),
                         list(apps[app_name(USER)]["machines"])[0])

    def test_a_downgrade_queued_when_the_app_vanished_is_not_overwritten(self):
        self.provision()
        # The downgrade is queued but not due yet (as an item waiting out a retry delay is) when a health check
        # finds the app gone: the newer intent must win over re-provisioning from the row's old tier.
        self.pg.sql(f"BEGIN; UPDATE user_subscriptions SET tier = 'free' WHERE user_id = '{USER}'; "
                    "SELECT fly.fold_intents(); "
                    f"UPDATE fly.reconcile_queue SET run_after = now() + interval '1 hour' WHERE user_id = '{USER}'; "
                    "COMMIT")
        generation = self.pg.value(f"SELECT generation FROM fly.reconcile_queue WHERE user_id = '{USER}'")
        self.sim.control("DELETE", f"apps/{app_name(USER)}")
        vanished_at = self.sim.requests()["last_seq"]
        self.assertTrue(self.pg.wait_for(f"SELECT EXISTS (SELECT 1 FROM fly.user_fly_app_events WHERE user_id = "
                                         f"'{USER}' AND event_type = 'app_vanished')", timeout=15))
        self.assertEqual(self.pg.sql(f"SELECT desired, generation FROM fly.reconcile_queue WHERE user_id = '{USER}'"),
                         [["absent", generation]])
        self.pg.sql(f"UPDATE fly.reconcile_queue SET run_after = now() WHERE user_id = '{USER}'")
        self.settle()
        self.assertEqual(self.pg.value(f"SELECT status FROM fly.user_fly_apps WHERE user_id = '{USER}' "
                                       "ORDER BY id DESC LIMIT 1"), "deleted")
        self.assertEqual(self.live_apps_on_fly(), {})
        self.assertEqual([r for r in self.sim.requests(since=vanished_at)["requests"]
                          if r["endpoint"] in ("create_app", "create_machine")], [])


class AppHealthEndpointTest(ProvisioningTestCase):
    """The trader-isolation test of the setup pg_fly replaces (docs/architecture.md), automated: the app's own
    endpoint must report user_dedicated and the app's own user."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.pg.write_settings({"fly.app_health_url": f"'{cls.sim.url}/__flysim/apps/{{app}}/health'",
                               "fly.health_check_interval": "'1s'", "fly.rate_limits": "off"})
        cls.pg.reload()

    def test_an_app_reporting_another_user_is_flagged(self):
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{USER}', 'pro')")
        self.settle()
        self.assertTrue(self.pg.wait_for(f"SELECT health_status = 'healthy' FROM fly.user_fly_apps "
                                         f"WHERE user_id = '{USER}'", timeout=15))
        probes = [r for r in self.sim.requests()["requests"] if r["endpoint"] == "app_health"]
        self.assertTrue(probes)
        self.assertTrue(all("authorization" not in r["headers"] for r in probes))  # no token leaves for the app
        # Someone redeploys the machine with another user's id: the app now serves the wrong user's traders.
        name = app_name(USER)
        machine_id, machine = next(iter(self.live_apps_on_fly()[name]["machines"].items()))
        config = dict(machine["config"])
        config["env"] = dict(config["env"], USER_ID="00000000-0000-4000-8000-000000000bad")
        body = json.dumps({"config": config}).encode()
        request = urllib.request.Request(f"{self.sim.url}/v1/apps/{name}/machines/{machine_id}", data=body,
                                         method="POST", headers={"Authorization": f"Bearer {TEST_TOKEN}",
                                                                 "Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=10).read()
        self.assertTrue(self.pg.wait_for(f"SELECT health_status = 'unhealthy' FROM fly.user_fly_apps "
                                         f"WHERE user_id = '{USER}'", timeout=15))
        detail = self.pg.value(f"SELECT details->>'detail' FROM fly.user_fly_app_events WHERE user_id = '{USER}' "
                               "AND event_type = 'health_changed' ORDER BY id DESC LIMIT 1")
        self.assertIn("reports user_id", detail)


class SlowAppHealthEndpointsTest(ProvisioningTestCase):
    """Users' apps answering their own health endpoint slowly and with errors say nothing about Fly: they must
    not open Fly's circuit breaker, which would pause all provisioning."""

    cluster_settings = {"fly.request_timeout": "'5s'", "fly.health_check_interval": "'1s'",
                        "fly.breaker_failure_threshold": "3", "fly.breaker_open_time": "'60s'",
                        "fly.breaker_max_open_time": "'60s'"}
    USERS = [f"00000000-0000-4000-8000-{i:012d}" for i in range(1, 9)]

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.pg.write_settings({"fly.app_health_url": f"'{cls.sim.url}/__flysim/apps/{{app}}/health'"})
        cls.pg.reload()

    def breaker_state(self):
        return self.pg.value("SELECT breaker_state FROM fly.worker_status()")

    def test_failing_app_health_endpoints_leave_the_breaker_closed(self):
        values = ",".join(f"('{u}', 'pro')" for u in self.USERS)
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES {values}")
        self.settle()
        self.assertTrue(self.pg.wait_for("SELECT count(*) = 8 FROM fly.user_fly_apps WHERE health_status = "
                                         "'healthy'", timeout=30))
        # Every app's own endpoint now answers late, and with an error: bursts of failures, one per app and pass.
        self.sim.configure(faults=[{"endpoint": "app_health", "always": True, "kind": "latency", "delay_ms": 800},
                                   {"endpoint": "app_health", "always": True, "kind": "status", "status": 503}])
        states = set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            states.add(self.breaker_state())
            if self.pg.value("SELECT count(*) FROM fly.user_fly_apps WHERE health_status = 'unhealthy'") == "8":
                break
            time.sleep(0.05)
        self.assertEqual(self.pg.value("SELECT count(*) FROM fly.user_fly_apps WHERE health_status = 'unhealthy'"),
                         "8")
        failed = [r for r in self.sim.requests()["requests"] if r["endpoint"] == "app_health" and r["status"] == 503]
        self.assertGreaterEqual(len(failed), 8)
        # A tier change still provisions its user promptly, while the endpoints keep failing.
        started = time.monotonic()
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{USER}', 'pro')")
        while time.monotonic() - started < 20:
            states.add(self.breaker_state())
            if self.pg.value(f"SELECT status FROM fly.user_fly_apps WHERE user_id = '{USER}'") == "active":
                break
            time.sleep(0.05)
        self.assertEqual(self.pg.value(f"SELECT status FROM fly.user_fly_apps WHERE user_id = '{USER}'"), "active")
        self.assertLess(time.monotonic() - started, 10)
        states.add(self.breaker_state())
        self.assertEqual(states, {"closed"})


class BreakerAndHealthTest(ProvisioningTestCase):
    cluster_settings = {"fly.request_timeout": "'5s'", "fly.breaker_failure_threshold": "2",
                        "fly.breaker_open_time": "'2s'", "fly.breaker_max_open_time": "'4s'",
                        "fly.health_check_interval": "'2s'", "fly.rate_limits": "off"}

    def provision(self, count):
        users = [str(uuid.UUID(int=0x7000 + i, version=4)) for i in range(count)]
        self.pg.sql("INSERT INTO user_subscriptions VALUES " + ",".join(f"('{u}', 'pro')" for u in users))
        self.settle()
        self.assertTrue(self.pg.wait_for(f"SELECT count(*) = {count} FROM fly.user_fly_apps "
                                         "WHERE last_health_check_at IS NOT NULL", timeout=30))
        return users

    def test_health_checks_close_the_breaker_once_fly_is_back(self):
        self.provision(4)
        self.sim.configure(faults=[{"endpoint": "*", "always": True, "kind": "status", "status": 503}])
        self.assertTrue(self.pg.wait_for("SELECT breaker_state = 'open' FROM fly.worker_status()", timeout=30))
        self.sim.configure(faults=[])
        # No tier changes: the health checks alone must carry the half-open breaker's probe.
        self.assertTrue(self.pg.wait_for("SELECT breaker_state = 'closed' FROM fly.worker_status()", timeout=20),
                        self.pg.sql("SELECT breaker_state FROM fly.worker_status()"))
        self.assertTrue(self.pg.wait_for("SELECT now() - max(last_health_check_at) < interval '4 seconds' "
                                         "FROM fly.user_fly_apps", timeout=20))

    def test_machines_failing_to_start_leave_the_breaker_closed(self):
        users = self.provision(2)
        for user in users:
            machine = self.pg.value(f"SELECT fly_machine_id FROM fly.user_fly_apps WHERE user_id = '{user}'")
            self.sim.control("POST", f"machines/{app_name(user)}/{machine}/state", {"state": "stopped"})
        # A bad image: every start is answered 200 with status "error". A per-app problem, not Fly failing.
        self.sim.configure(faults=[{"endpoint": "start_machine", "always": True, "kind": "status", "status": 200,
                                    "body": {"status": "error", "message": "failed to start: bad image"}}])
        self.assertTrue(self.pg.wait_for("SELECT count(*) >= 4 FROM fly.user_fly_app_events "
                                         "WHERE event_type = 'machine_restart_failed'", timeout=30))
        self.assertEqual(self.pg.value("SELECT breaker_state FROM fly.worker_status()"), "closed")


class OnDemandHealthTest(ProvisioningTestCase):
    cluster_settings = {"fly.request_timeout": "'5s'", "fly.health_check_interval": "0", "fly.rate_limits": "off"}

    def test_check_fly_apps_health_runs_a_pass_now(self):
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{USER}', 'pro')")
        self.settle()
        # The worker has looked again with the app in place, and finished whatever it sent.
        self.pg.wait_worker_iterations(2, idle=True)
        self.assertEqual(self.pg.value(f"SELECT health_status FROM fly.user_fly_apps WHERE user_id = '{USER}'"),
                         "unknown")  # periodic checks are off
        self.assertIsNone(self.pg.value(f"SELECT last_health_check_at FROM fly.user_fly_apps "
                                        f"WHERE user_id = '{USER}'") or None)
        self.assertEqual(self.pg.value("SELECT fly.check_fly_apps_health()"), "1")
        self.assertTrue(self.pg.wait_for(f"SELECT health_status = 'healthy' FROM fly.user_fly_apps "
                                         f"WHERE user_id = '{USER}'", timeout=15))


class ConcurrentHealthTest(ProvisioningTestCase):
    # Reconciles get 2 slots, health checks 32 of their own.
    cluster_settings = {"fly.request_timeout": "'10s'", "fly.health_check_interval": "0", "fly.rate_limits": "off",
                        "fly.max_concurrency": "2", "fly.health_check_concurrency": "32"}
    APPS = 40
    LATENCY_MS = 400

    def fly(self, method, path, body):
        request = urllib.request.Request(self.sim.url + path, data=json.dumps(body).encode(), method=method,
                                         headers={"Authorization": f"Bearer {TEST_TOKEN}",
                                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read().decode() or "null")

    def test_checks_run_concurrently_beyond_max_concurrency_one_request_each(self):
        values = []
        for i in range(self.APPS):
            user = str(uuid.UUID(int=(0xC0C0 << 64) + i, version=4))
            name = f"conc-{i:03d}"
            self.fly("POST", "/v1/apps", {"name": name, "app_name": name, "org_slug": "personal"})
            machine = self.fly("POST", f"/v1/apps/{name}/machines",
                               {"region": "sjc", "config": {"image": "registry.fly.io/x:1",
                                                            "metadata": {"pg_fly_user_id": user}}})
            values.append(f"('{user}', 'pro', '{name}', 'personal', '{machine['id']}', 'active', 'sjc')")
        self.pg.sql("INSERT INTO fly.user_fly_apps (user_id, tier, fly_app_name, fly_org_slug, fly_machine_id, "
                    "status, region) VALUES " + ", ".join(values))
        self.sim.configure(latency={"*": {"fixed_ms": self.LATENCY_MS, "jitter_ms": 0}})
        since = self.sim.requests()["last_seq"]
        started = time.monotonic()
        self.assertEqual(self.pg.value("SELECT fly.check_fly_apps_health()"), str(self.APPS))
        self.assertTrue(self.pg.wait_for("SELECT count(*) = 0 FROM fly.user_fly_apps WHERE health_status "
                                         "IS DISTINCT FROM 'healthy'", timeout=60))
        elapsed = time.monotonic() - started
        requests = [r for r in self.sim.requests(since)["requests"] if r["endpoint"] != "unknown"]
        # One request per app: the list by the user's metadata, no GET machine, no second list.
        self.assertEqual(sorted(r["endpoint"] for r in requests), ["list_machines"] * self.APPS, requests)
        # At fly.max_concurrency (2) the pass would take 40 x 0.4 s / 2 = 8 s; at 32 about a second.
        self.assertLess(elapsed, 5.0)
        spans = sorted((r["t_mono"], r["t_mono"] + r["duration_ms"] / 1000) for r in requests)
        most = max(sum(1 for other in spans if other[0] <= start < other[1]) for start, _ in spans)
        self.assertGreaterEqual(most, 16, spans)
        self.assertLessEqual(most, 32)


if __name__ == "__main__":
    unittest.main(verbosity=2)

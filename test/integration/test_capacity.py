"""Capacity and ambiguous creates against the simulator's Fly behaviours: a region without capacity makes the worker
retry, then use the tier's fallback region (event, row, cost, views); no capacity anywhere is retried, never failed;
a machine whose create answered 504 but that lands later is found and adopted, not created twice; a duplicate made
behind pg_fly's back is destroyed by the next health pass."""

import json
import os
import sys
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import TEST_TOKEN  # noqa: E402
from test_provisioning import USER, ProvisioningTestCase, app_name  # noqa: E402


class CapacityTest(ProvisioningTestCase):
    cluster_settings = {"fly.request_timeout": "'8s'", "fly.health_check_interval": "'1s'", "fly.rate_limits": "off",
                        "fly.max_attempts": "3", "fly.capacity_retries": "2", "fly.retry_base_delay": "'100ms'",
                        "fly.retry_max_delay": "'1s'"}

    def setUp(self):
        super().setUp()
        self.pg.sql("UPDATE fly.tier_policies SET fallback_regions = '{ams}' WHERE tier = 'pro'")

    def tearDown(self):
        self.pg.sql("UPDATE fly.tier_policies SET fallback_regions = '{}' WHERE tier = 'pro'")

    def creates(self):
        return [r for r in self.sim.requests()["requests"] if r["endpoint"] == "create_machine"]

    def machines_on_fly(self):
        machines = self.live_apps_on_fly()[app_name(USER)]["machines"].values()
        return [m for m in machines if m["state"] not in ("destroyed", "destroying")]

    def event_details(self, event_type):
        return [json.loads(row[0]) if isinstance(row[0], str) else row[0] for row in self.pg.sql(
            f"SELECT details FROM fly.user_fly_app_events WHERE user_id = '{USER}' AND event_type = '{event_type}' "
            "ORDER BY id")]

    def test_no_capacity_in_the_policys_region_falls_back(self):
        self.sim.configure(no_capacity_regions=["sjc"])
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{USER}', 'pro')")
        self.settle()
        row = self.pg.sql(f"SELECT status, region, monthly_cost_estimate_usd, "
                          f"fly.monthly_cost_estimate(cpu_kind, cpus, memory_mb, 'ams'), "
                          f"fly.monthly_cost_estimate(cpu_kind, cpus, memory_mb, 'sjc') "
                          f"FROM fly.user_fly_apps WHERE user_id = '{USER}'")
        self.assertEqual(row[0][:2], ["active", "ams"])
        self.assertEqual(row[0][2], row[0][3])      # the cost of the region actually used
        self.assertNotEqual(row[0][2], row[0][4])   # not the policy region's (sjc costs more)
        self.assertEqual(self.event_details("region_fallback"),
                         [{"from_region": "sjc", "to_region": "ams", "attempts": 2}])
        self.assertNotIn("provision_failed", self.events())
        self.assertEqual([(r["status"], r["body"].get("region")) for r in self.creates()],
                         [(412, "sjc"), (412, "sjc"), (200, "ams")])
        machines = self.machines_on_fly()
        self.assertEqual([(m["region"], m["state"]) for m in machines], [("ams", "started")])
        self.assertEqual(self.pg.value(f"SELECT region FROM fly.live_apps WHERE user_id = '{USER}'"), "ams")
        self.assertEqual(self.pg.value("SELECT region FROM fly.cost_summary WHERE tier = 'pro'"), "ams")
        # A later reconcile keeps the machine where it is: a fallback region is not "the wrong region".
        self.sim.configure(no_capacity_regions=[])
        self.pg.sql(f"SELECT fly.provision_user_app('{USER}')")
        self.settle()
        self.assertNotIn("machine_replaced_for_region", self.events())
        self.assertEqual([m["id"] for m in self.machines_on_fly()], [machines[0]["id"]])
        self.assertEqual(self.pg.value(f"SELECT region FROM fly.user_fly_apps WHERE user_id = '{USER}'"), "ams")
        self.assertEqual(len(self.creates()), 3)

    def test_no_capacity_anywhere_is_retried_not_failed(self):
        self.sim.configure(no_capacity_regions=["sjc", "ams"])
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{USER}', 'pro')")
        # Twice fly.max_attempts worth of refusals, in both regions, and the user is still not failed.
        deadline = time.time() + 60
        while time.time() < deadline and len(self.creates()) < 8:
            time.sleep(0.2)
        creates = self.creates()
        self.assertGreaterEqual(len(creates), 8)
        self.assertEqual({r["status"] for r in creates}, {412})
        self.assertEqual({r["body"].get("region") for r in creates}, {"sjc", "ams"})
        status, error = self.pg.sql(f"SELECT a.status, q.last_error FROM fly.user_fly_apps a "
                                    f"JOIN fly.reconcile_queue q USING (user_id) WHERE a.user_id = '{USER}'")[0]
        self.assertNotEqual(status, "failed")
        self.assertIn("no capacity for the machine in any region (sjc, ams)", error)
        self.assertNotIn("provision_failed", self.events())
        # The refusals spent no attempt (fly.max_attempts is 3): one ordinary failure after capacity comes back
        # must not fail the user. One alert said that no region had room.
        attempts = self.pg.value(f"SELECT attempts FROM fly.reconcile_queue WHERE user_id = '{USER}'")
        self.assertLessEqual(int(attempts), 1)
        self.assertEqual(self.events().count("alert_raised"), 1)
        # Capacity comes back, and Fly answers one wait with a 503: the user gets an app in the policy's region.
        self.sim.configure(no_capacity_regions=[], faults=[{"endpoint": "wait_machine", "times": 1, "always": True,
                                                            "kind": "status", "status": 503}])
        self.settle()
        self.assertIn(503, [r["status"] for r in self.sim.requests()["requests"] if r["endpoint"] == "wait_machine"])
        self.assertEqual(self.pg.sql(f"SELECT status, region FROM fly.user_fly_apps WHERE user_id = '{USER}'"),
                         [["active", "sjc"]])
        self.assertEqual([m["region"] for m in self.machines_on_fly()], ["sjc"])


class AmbiguousCreateTest(ProvisioningTestCase):
    cluster_settings = {"fly.request_timeout": "'8s'", "fly.health_check_interval": "'1s'", "fly.rate_limits": "off"}

    def live_machines(self):
        machines = self.live_apps_on_fly()[app_name(USER)]["machines"].values()
        return [m["id"] for m in machines if m["state"] not in ("destroyed", "destroying")]

    def test_a_machine_that_lands_late_is_found_not_created_twice(self):
        # Every create answers 504 and its machine appears 3 s later, within fly.request_timeout (8 s).
        self.sim.configure(create_lands_late_ms=3000, create_lands_late_status=504)
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{USER}', 'pro')")
        self.settle()
        creates = [r for r in self.sim.requests()["requests"] if r["endpoint"] == "create_machine"]
        self.assertEqual([r["status"] for r in creates], [504])
        machines = self.live_machines()
        self.assertEqual(len(machines), 1)
        self.assertEqual(self.pg.sql(f"SELECT status, fly_machine_id FROM fly.user_fly_apps WHERE user_id = '{USER}'"),
                         [["active", machines[0]]])
        self.assertIn("machine_reused", self.events())
        # Health passes go on: the one machine is no duplicate.
        time.sleep(2.5)
        self.assertNotIn("duplicate_machine_destroyed", self.events())
        self.assertEqual(self.live_machines(), machines)

    def test_a_duplicate_made_behind_pg_flys_back_is_destroyed_by_the_next_health_pass(self):
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{USER}', 'pro')")
        self.settle()
        kept = self.pg.value(f"SELECT fly_machine_id FROM fly.user_fly_apps WHERE user_id = '{USER}'")
        body = {"region": "sjc", "config": {"image": "registry.fly.io/other:v1", "metadata": {"pg_fly_user_id": USER}}}
        request = urllib.request.Request(f"{self.sim.url}/v1/apps/{app_name(USER)}/machines", method="POST",
                                         data=json.dumps(body).encode(),
                                         headers={"Authorization": f"Bearer {TEST_TOKEN}",
                                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            duplicate = json.loads(response.read())["id"]
        self.assertTrue(self.pg.wait_for(f"SELECT EXISTS (SELECT 1 FROM fly.user_fly_app_events WHERE user_id = "
                                         f"'{USER}' AND event_type = 'duplicate_machine_destroyed')", timeout=15))
        details = self.pg.value(f"SELECT details FROM fly.user_fly_app_events WHERE user_id = '{USER}' "
                                "AND event_type = 'duplicate_machine_destroyed'")
        details = json.loads(details)
        self.assertEqual((details["machine_id"], details["kept_machine_id"]), (duplicate, kept))
        deadline = time.time() + 10
        while time.time() < deadline and duplicate in self.live_machines():
            time.sleep(0.2)
        self.assertEqual(self.live_machines(), [kept])
        self.assertEqual(self.pg.sql(f"SELECT status, fly_machine_id FROM fly.user_fly_apps WHERE user_id = '{USER}'"),
                         [["active", kept]])


if __name__ == "__main__":
    unittest.main()

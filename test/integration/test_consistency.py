"""Issue 14, point 1: consistency after create. Right after Fly creates an app, calls under it can answer 404 or 401
for a while, and a new machine can be missing from gets, waits and lists (api-reference 2.1). pg_fly waits for a new
app to be visible, and within fly.create_settle_time of a creation asks such answers again instead of failing the
user and raising an alert; after that window they mean what they say. The simulator's app_visible_after_ms and
machine_visible_after_ms reproduce the lag."""

import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_failures import fly_requests  # noqa: E402
from test_provisioning import USER, ProvisioningTestCase, app_name  # noqa: E402

BAD_OUTCOMES = ("provision_failed", "alert_raised", "provision_attempt_failed")


class ConsistencyAfterCreateTest(ProvisioningTestCase):
    cluster_settings = {"fly.request_timeout": "'5s'", "fly.rate_limits": "off", "fly.health_check_interval": "0"}

    def tearDown(self):
        self.sim.configure(app_visible_after_ms=0, machine_visible_after_ms=0, app_invisible_status=404)
        self.pg.sql("ALTER SYSTEM RESET fly.create_settle_time")
        self.pg.sql("ALTER SYSTEM RESET fly.max_attempts")
        self.pg.sql("ALTER SYSTEM RESET fly.health_check_interval")
        self.pg.reload()

    def upgrade(self):
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{USER}', 'pro')")

    def status(self):
        return self.pg.value(f"SELECT status FROM fly.user_fly_apps WHERE user_id = '{USER}' AND deleted_at IS NULL")

    def settled_cleanly(self):
        """Waits for the provision; it must end active with no failure, no failed attempt and no alert."""
        self.settle(timeout=60)
        self.assertEqual(self.status(), "active")
        events = self.events()
        for bad in BAD_OUTCOMES:
            self.assertNotIn(bad, events)
        return events

    def test_a_new_app_answering_404_and_401_is_waited_for_not_failed(self):
        self.sim.configure(app_visible_after_ms=3000, app_invisible_status="alternate")
        self.upgrade()
        events = self.settled_cleanly()
        self.assertEqual(events.count("app_settling"), 1, events)
        requests = fly_requests(self.sim)
        endpoints = [r["endpoint"] for r in requests]
        self.assertEqual(endpoints.count("create_app"), 1)
        self.assertEqual(endpoints.count("create_machine"), 1)
        # Nothing is asked under the app before Fly shows it: the first call after the create is its look-up,
        # and the invisible answers (both kinds) were all to that look-up.
        first_get = endpoints.index("get_app")
        self.assertEqual(endpoints[endpoints.index("create_app") + 1], "get_app")
        invisible = [r for r in requests if r["status"] in (401, 404)]
        self.assertEqual({r["status"] for r in invisible}, {401, 404})
        self.assertTrue(all(r["endpoint"] == "get_app" for r in invisible), invisible)
        self.assertLess(first_get, endpoints.index("list_machines"))

    def test_a_new_machine_not_found_yet_is_waited_for_not_created_twice(self):
        self.sim.configure(machine_visible_after_ms=4000)
        self.upgrade()
        events = self.settled_cleanly()
        self.assertIn("app_settling", events)
        endpoints = [r["endpoint"] for r in fly_requests(self.sim)]
        self.assertEqual(endpoints.count("create_machine"), 1, endpoints)
        self.assertEqual(len(self.live_apps_on_fly()[app_name(USER)]["machines"]), 1)

    def test_the_window_is_bounded(self):
        # An app that never becomes visible: nothing counts as a failure until fly.create_settle_time has passed;
        # then each look-up is a failed attempt, and fly.max_attempts ends it.
        self.pg.sql("ALTER SYSTEM SET fly.create_settle_time = '3s'")
        self.pg.sql("ALTER SYSTEM SET fly.max_attempts = 3")
        self.pg.reload()
        self.sim.configure(app_visible_after_ms=600000)
        started = time.monotonic()
        self.upgrade()
        self.assertTrue(self.pg.wait_for(
            f"SELECT status = 'failed' FROM fly.user_fly_apps WHERE user_id = '{USER}'", timeout=60))
        self.assertGreaterEqual(time.monotonic() - started, 3.0)
        error = self.pg.value(f"SELECT last_error FROM fly.user_fly_apps WHERE user_id = '{USER}'")
        self.assertIn("still cannot be read", error)
        first_failure = self.pg.value(
            f"SELECT extract(epoch FROM min(f.created_at) - min(r.created_at)) FROM fly.user_fly_app_events f, "
            f"fly.user_fly_app_events r WHERE f.event_type = 'provision_attempt_failed' "
            f"AND r.event_type = 'provision_requested' AND f.user_id = '{USER}' AND r.user_id = '{USER}'")
        self.assertGreaterEqual(float(first_failure), 3.0)
        self.pg.sql(f"UPDATE user_subscriptions SET tier = 'free' WHERE user_id = '{USER}'")
        self.sim.configure(app_visible_after_ms=0)
        self.settle()

    def restart_worker_once(self, event_type):
        """Terminates the worker once `event_type` is recorded for the user, and waits for the new one."""
        self.assertTrue(self.pg.wait_for(
            f"SELECT EXISTS (SELECT 1 FROM fly.user_fly_app_events WHERE user_id = '{USER}' "
            f"AND event_type = '{event_type}')", timeout=30))
        pid = self.pg.worker_pid()
        self.assertEqual(self.pg.value(f"SELECT pg_terminate_backend({pid})"), "t")
        self.assertTrue(self.pg.wait_for(
            f"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_fly worker' AND pid <> {pid}",
            timeout=30), "the worker did not come back")

    def assert_settled_after_restart(self, events):
        # The new worker's operation met the invisible answer too, and waited.
        second = [i for i, e in enumerate(events) if e == "provision_requested"]
        self.assertEqual(len(second), 2, events)
        self.assertIn("app_settling", events[second[1]:], events)

    def test_a_worker_restarted_inside_the_window_does_not_create_a_second_machine(self):
        # The machine is created and recorded; the worker dies while Fly does not show it yet. The new worker's
        # operation finds the list empty and must not take that for "no machine".
        self.sim.configure(machine_visible_after_ms=12000)
        self.upgrade()
        self.restart_worker_once("machine_created")
        events = self.settled_cleanly()
        self.assert_settled_after_restart(events)
        endpoints = [r["endpoint"] for r in fly_requests(self.sim)]
        self.assertEqual(endpoints.count("create_machine"), 1, endpoints)
        self.assertEqual(len(self.live_apps_on_fly()[app_name(USER)]["machines"]), 1)

    def test_a_worker_restarted_while_the_new_app_is_invisible_waits_for_it(self):
        # The new worker's create meets name_taken, and the app's look-up still answers 401: our own app, not yet
        # visible, not a bad token nor someone else's app.
        self.sim.configure(app_visible_after_ms=12000, app_invisible_status=401)
        self.upgrade()
        self.restart_worker_once("app_created")
        events = self.settled_cleanly()
        self.assert_settled_after_restart(events)
        self.assertIn("app_reused", events)
        endpoints = [r["endpoint"] for r in fly_requests(self.sim)]
        self.assertEqual(endpoints.count("create_machine"), 1, endpoints)

    def test_the_health_pass_does_not_take_a_young_machine_for_vanished(self):
        self.upgrade()
        self.settle()
        app = app_name(USER)
        # The app goes behind pg_fly's back: GET machine answers 404.
        self.sim.control("DELETE", f"apps/{app}")
        # Within the window a 404 for the machine says nothing yet: health stays unknown, nothing is queued.
        self.pg.sql("ALTER SYSTEM SET fly.health_check_interval = '1s'")
        self.pg.reload()
        checked = f"SELECT last_health_check_at > now() - interval '1 s' FROM fly.user_fly_apps WHERE user_id = '{USER}'"
        self.assertTrue(self.pg.wait_for(checked, timeout=20))
        time.sleep(2)
        self.assertNotIn("app_vanished", self.events())
        self.assertEqual(self.pg.value("SELECT count(*) FROM fly.pending_work"), "0")
        # Once the machine is older than fly.create_settle_time, the same 404 means it is gone.
        self.pg.sql(f"UPDATE fly.user_fly_apps SET fly_machine_created_at = now() - interval '1 hour' "
                    f"WHERE user_id = '{USER}'")
        self.assertTrue(self.pg.wait_for(
            f"SELECT EXISTS (SELECT 1 FROM fly.user_fly_app_events WHERE user_id = '{USER}' "
            f"AND event_type = 'app_vanished')", timeout=20))
        self.pg.sql("ALTER SYSTEM RESET fly.health_check_interval")
        self.pg.reload()
        self.settle()


if __name__ == "__main__":
    unittest.main()

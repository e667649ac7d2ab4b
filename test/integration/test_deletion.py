"""Deleting a user's app the way Fly asks (issue 14, point 5): machines stopped before DELETE, the app recorded gone
only once Fly answers 404 for it (DELETE is asynchronous: 202), and an app being deleted is never reused by a
provision that comes soon after. The simulator's app_delete_lag_ms keeps a deleted app (GET 200, create 422
name_taken) for a while after the 202, as Fly may."""

import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_provisioning import USER, ProvisioningTestCase, app_name  # noqa: E402


class DeletionTest(ProvisioningTestCase):
    def provision(self):
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{USER}', 'pro')")
        self.settle()
        self.assertEqual(self.pg.value(f"SELECT status FROM fly.user_fly_apps WHERE user_id = '{USER}'"), "active")

    def fly_requests(self, endpoint):
        return [r for r in self.sim.requests()["requests"] if r["endpoint"] == endpoint]

    def wait_until_deleted_on_fly(self, timeout=30):
        deadline = time.monotonic() + timeout
        while self.sim.state()["apps_being_deleted"]:
            self.assertLess(time.monotonic(), deadline, "the simulator never finished the deletion")
            time.sleep(0.1)

    def test_machines_are_stopped_before_the_app_is_deleted(self):
        self.sim.configure(stop_delay_ms=1500)  # a stop takes a while: DELETE must wait for it
        self.provision()
        self.pg.sql(f"UPDATE user_subscriptions SET tier = 'free' WHERE user_id = '{USER}'")
        self.settle()
        deletions = self.sim.state()["app_deletions"]
        self.assertEqual([(d["app"], d["force"], d["machines_not_stopped"]) for d in deletions],
                         [(app_name(USER), False, [])])
        requests = self.sim.requests()["requests"]
        stops = [r["seq"] for r in requests if r["endpoint"] == "stop_machine"]
        waits = [r["seq"] for r in requests if r["endpoint"] == "wait_machine" and r["query"].get("state") == "stopped"]
        delete = [r["seq"] for r in requests if r["endpoint"] == "delete_app"]
        self.assertEqual(len(stops), 1)
        self.assertTrue(waits and stops[0] < waits[0] and waits[-1] < delete[0], (stops, waits, delete))
        self.assertEqual(self.live_apps_on_fly(), {})

    def test_the_app_is_recorded_gone_only_after_fly_answers_404(self):
        self.sim.configure(app_delete_lag_ms=2500)
        self.provision()
        self.pg.sql(f"UPDATE user_subscriptions SET tier = 'free' WHERE user_id = '{USER}'")
        self.settle()
        name = app_name(USER)
        self.assertEqual(self.sim.state()["apps_being_deleted"], [])
        deleted = self.fly_requests("delete_app")
        gets = [r for r in self.fly_requests("get_app") if r["seq"] > deleted[0]["seq"]]
        self.assertEqual([r["status"] for r in deleted], [202])
        self.assertEqual(gets[-1]["status"], 404)
        self.assertTrue(all(r["status"] == 200 for r in gets[:-1]) and len(gets) > 1, [r["status"] for r in gets])
        # The row was marked deleted after that 404 was answered, not at the 202.
        row = self.pg.sql(f"SELECT status, extract(epoch FROM deleted_at), delete_requested_at IS NOT NULL "
                          f"FROM fly.user_fly_apps WHERE user_id = '{USER}'")
        self.assertEqual((row[0][0], row[0][2]), ("deleted", "t"))
        self.assertGreaterEqual(float(row[0][1]), gets[-1]["t_wall"])
        self.assertGreaterEqual(float(row[0][1]) - deleted[0]["t_wall"], 2.0)
        self.assertEqual(self.events()[-5:], ["deprovision_requested", "machines_stopped", "app_delete_requested",
                                              "app_delete_confirmed", "deprovision_completed"])
        confirmed = self.pg.value(f"SELECT details->>'app_name' FROM fly.user_fly_app_events WHERE user_id = '{USER}' "
                                  f"AND event_type = 'app_delete_confirmed'")
        self.assertEqual(confirmed, name)

    def test_an_upgrade_right_after_a_deletion_never_reuses_the_dying_app(self):
        self.sim.configure(app_delete_lag_ms=3000)
        self.provision()
        name = app_name(USER)
        self.pg.sql(f"UPDATE user_subscriptions SET tier = 'free' WHERE user_id = '{USER}'")
        deadline = time.monotonic() + 30
        while not any(r["status"] == 202 for r in self.fly_requests("delete_app")):
            self.assertLess(time.monotonic(), deadline, "the app was never deleted")
            time.sleep(0.05)
        # Upgraded again while Fly is still deleting the app (it answers 200, and create says name_taken).
        self.pg.sql(f"UPDATE user_subscriptions SET tier = 'pro' WHERE user_id = '{USER}'")
        self.settle()
        self.wait_until_deleted_on_fly()
        self.assertNotIn("app_reused", self.events())
        row = self.pg.sql(f"SELECT fly_app_name, status, fly_machine_id FROM fly.user_fly_apps "
                          f"WHERE user_id = '{USER}' AND deleted_at IS NULL")
        self.assertEqual(len(row), 1)
        live_name, status, machine_id = row[0]
        self.assertEqual(status, "active")
        # The user's app is a new one, alive on Fly once the old deletion is over, with the recorded machine started.
        apps = self.live_apps_on_fly()
        self.assertEqual(list(apps), [live_name])
        self.assertEqual([(m["id"], m["state"]) for m in apps[live_name]["machines"].values()],
                         [(machine_id, "started")])
        self.assertEqual(self.sim.control("GET", f"apps/{live_name}/health")["status"], "ok")
        created = [r for r in self.fly_requests("create_app") if r["status"] == 201]
        self.assertEqual(len(created), 2)  # the first provision's, and the new app's
        self.assertIn("app_delete_confirmed", self.events())
        if live_name == name:
            # Created again only after Fly answered 404 for the dying app.
            gone = [r for r in self.fly_requests("get_app") if r["status"] == 404]
            self.assertTrue(gone and gone[0]["seq"] < created[1]["seq"])
        else:
            self.assertIn("app_name_moved_on", self.events())


if __name__ == "__main__":
    unittest.main()

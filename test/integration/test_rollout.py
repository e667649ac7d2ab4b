"""Image rollouts end to end: fly.start_image_rollout() moves every active app's machine to a new image in place,
canaries first, and halts on an unhealthy canary or on failed updates. Assertions are made on what the simulator
received and holds."""

import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_failures import Listener, fly_requests, users  # noqa: E402
from test_provisioning import ProvisioningTestCase  # noqa: E402

V1 = "registry.fly.io/vyx-app:deployment-01K9Y194AA56A6SFHTTD64KQ7Y"  # the harness's fly.image
V2 = "registry.fly.io/vyx-app:deployment-02NEWIMAGE"
BAD = "registry.fly.io/vyx-app:deployment-03CRASHES"


class ImageRolloutTest(ProvisioningTestCase):
    # Provisioning is not what is tested here: Fly's create-app limit (1/s) would make it slow. The rollouts
    # themselves run with the limiter on.
    cluster_settings = {"fly.request_timeout": "'5s'", "fly.rate_limits": "off"}

    def setUp(self):
        super().setUp()
        self.pg.sql("TRUNCATE fly.image_rollouts, fly.image_rollout_apps")
        self.set_settings(rate_limits="off", image=f"'{V1}'")

    def set_settings(self, **settings):
        for name, value in settings.items():
            self.pg.sql(f"ALTER SYSTEM SET fly.{name} = {value}")
        self.pg.reload()
        time.sleep(0.5)

    def provision(self, count, seed):
        group = users(count, seed)
        self.pg.sql("INSERT INTO user_subscriptions VALUES " + ",".join(f"('{u}', 'pro')" for u in group))
        self.settle(timeout=120)
        self.assertEqual(self.pg.value("SELECT count(*) FROM fly.user_fly_apps WHERE status = 'active'"), str(count))
        return group

    def wait_for_rollout(self, rollout_id, statuses, timeout=120):
        self.assertTrue(
            self.pg.wait_for(f"SELECT status IN ({statuses}) FROM fly.image_rollouts WHERE id = {rollout_id}", timeout,
                             interval=0.2),
            repr(self.pg.sql(f"SELECT * FROM fly.image_rollout_progress WHERE id = {rollout_id}")))

    def machine_images(self):
        return {name: [m["config"]["image"] for m in app["machines"].values()
                       if m["state"] not in ("destroyed", "destroying")]
                for name, app in self.sim.state()["apps"].items()}

    def test_rollout_to_50_apps_updates_each_machine_once_and_halts_on_an_unhealthy_canary(self):
        self.provision(50, 70)
        machines = {row[0]: row[1] for row in self.pg.sql("SELECT fly_machine_id, fly_app_name FROM fly.user_fly_apps")}
        self.sim.control("POST", "config", {"unhealthy_images": [BAD]})
        self.set_settings(rate_limits="on", image=f"'{V2}'")
        # fly.image is for new apps: the running ones keep V1 until the rollout.
        self.assertEqual(self.pg.value("SELECT count(*) FROM fly.user_fly_apps WHERE image = "
                                       f"'{V1}' AND status = 'active'"), "50")
        before = len(self.sim.requests()["requests"])

        rollout_id = self.pg.value("SELECT fly.start_image_rollout(canary_count => 3, canary_wait => '30 s')")
        self.wait_for_rollout(rollout_id, "'completed'")
        log = [r for r in self.sim.requests()["requests"][before:] if r["path"].startswith("/v1/")]
        updates = [r for r in log if r["endpoint"] == "update_machine"]
        updated_machines = [r["path"].rsplit("/", 1)[1] for r in updates]
        self.assertEqual(sorted(updated_machines), sorted(machines), "each machine is updated exactly once")
        self.assertTrue(all(r["status"] == 200 for r in updates))
        self.assertTrue(all(r["body"]["config"]["image"] == V2 for r in updates))
        # The update sends the whole config pg_fly manages, not just the image.
        self.assertTrue(all(r["body"]["config"]["env"]["RUN_MODE"] == "user_dedicated" for r in updates))
        self.assertTrue(all(images == [V2] for images in self.machine_images().values()))
        # Canaries first: the other apps were updated only after the canaries were seen healthy.
        canaries = {row[0] for row in self.pg.sql(
            f"SELECT a.fly_machine_id FROM fly.image_rollout_apps r JOIN fly.user_fly_apps a ON a.id = r.fly_app_id "
            f"WHERE r.rollout_id = {rollout_id} AND r.canary AND r.status = 'healthy'")}
        self.assertEqual(len(canaries), 3)
        self.assertEqual(set(updated_machines[:3]), canaries)
        canary_health_reads = [r for r in log if r["endpoint"] == "get_machine"
                               and r["path"].rsplit("/", 1)[1] in canaries
                               and r["t_mono"] > max(u["t_mono"] for u in updates[:3])]
        self.assertTrue(canary_health_reads)
        self.assertLess(max(r["t_mono"] for r in canary_health_reads[:3]), updates[3]["t_mono"])
        self.assertEqual(self.pg.sql(f"SELECT apps, updated, failed, skipped, percent_done FROM "
                                     f"fly.image_rollout_progress WHERE id = {rollout_id}"),
                         [["50", "50", "0", "0", "100.0"]])
        self.assertEqual(self.pg.value(f"SELECT count(*) FROM fly.user_fly_apps WHERE image = '{V2}'"), "50")
        self.assertEqual(self.pg.value("SELECT count(*) FROM fly.user_fly_app_events WHERE event_type = 'image_updated' "
                                       f"AND details->>'to_image' = '{V2}' AND details->>'from_image' = '{V1}'"), "50")
        # A second rollout of the same image has nothing to do.
        again = self.pg.value(f"SELECT fly.start_image_rollout('{V2}')")
        self.assertEqual(self.pg.value(f"SELECT status FROM fly.image_rollouts WHERE id = {again}"), "completed")

        # An image whose machines fail their health checks: the rollout stops after its canaries.
        listener = Listener(self.pg, "pg_fly_alerts", 40)
        listener.start()
        listener.ready.wait()
        time.sleep(0.5)
        before = len(self.sim.requests()["requests"])
        bad_rollout = self.pg.value(f"SELECT fly.start_image_rollout('{BAD}', canary_count => 2, "
                                    "canary_wait => '4 s')")
        self.wait_for_rollout(bad_rollout, "'halted'", timeout=60)
        # Nothing more goes out after the halt: the worker has looked at the halted rollout again (the barrier's
        # SIGHUP also makes the next iteration run a rollout pass) and every request it sent has been answered.
        self.pg.wait_worker_iterations(2, idle=True)
        log = [r for r in self.sim.requests()["requests"][before:] if r["path"].startswith("/v1/")]
        self.assertEqual(len([r for r in log if r["endpoint"] == "update_machine"]), 2)
        images = [image for per_app in self.machine_images().values() for image in per_app]
        self.assertEqual((images.count(BAD), images.count(V2)), (2, 48))
        self.assertEqual(self.pg.value(f"SELECT halted_reason FROM fly.image_rollouts WHERE id = {bad_rollout}"),
                         "2 canary app(s) not healthy within canary_wait")
        self.assertEqual(self.pg.sql(f"SELECT canary, status, count(*) FROM fly.image_rollout_apps WHERE rollout_id = "
                                     f"{bad_rollout} GROUP BY 1, 2 ORDER BY 1, 2"),
                         [["f", "pending", "48"], ["t", "updated", "2"]])
        # The health checks flagged the canaries, and an alert went out.
        self.assertEqual(self.pg.value("SELECT count(*) FROM fly.user_fly_apps WHERE health_status = 'unhealthy'"), "2")
        listener.join()
        halts = [p for p in listener.payloads if p.get("kind") == "image_rollout_halted"]
        self.assertEqual(len(halts), 1)
        self.assertEqual(halts[0]["rollout_id"], int(bad_rollout))

        # Rolling back is a rollout of the good image: only the two canaries need it.
        back = self.pg.value(f"SELECT fly.start_image_rollout('{V2}', canary_count => 1, canary_wait => '30 s')")
        self.wait_for_rollout(back, "'completed'")
        self.assertEqual(self.pg.value(f"SELECT apps FROM fly.image_rollout_progress WHERE id = {back}"), "2")
        self.assertTrue(all(images == [V2] for images in self.machine_images().values()))

    def test_failed_updates_beyond_the_threshold_halt_the_rollout(self):
        group = self.provision(30, 71)
        self.set_settings(rate_limits="on")
        self.sim.control("POST", "config", {"faults": [{"endpoint": "update_machine", "always": True, "kind": "status",
                                                        "status": 422, "body": {"error": "image not found"}}]})
        rollout_id = self.pg.value(f"SELECT fly.start_image_rollout('{V2}', canary_count => 0, max_failures => 2)")
        self.wait_for_rollout(rollout_id, "'halted'", timeout=60)
        # The updates in flight at the halt are answered and recorded; the worker then looks at the halted rollout
        # again (a rollout pass) without sending more.
        self.pg.wait_worker_iterations(2, idle=True)
        progress = self.pg.sql(f"SELECT failed, pending FROM fly.image_rollout_progress WHERE id = {rollout_id}")[0]
        self.assertGreater(int(progress[0]), 2)
        self.assertGreater(int(progress[1]), 0, "the rollout stopped before it tried every app")
        attempted = len([r for r in fly_requests(self.sim) if r["endpoint"] == "update_machine"])
        self.assertEqual(attempted, int(progress[0]))
        # Updates already sent when it halted finish (and may fail too); nothing is sent after.
        reason = self.pg.value(f"SELECT halted_reason FROM fly.image_rollouts WHERE id = {rollout_id}")
        self.assertRegex(reason, r"^\d+ app\(s\) failed to update, more than max_failures \(2\)$")
        self.assertLessEqual(int(reason.split()[0]), int(progress[0]))
        failures = self.pg.sql("SELECT details->>'error' FROM fly.user_fly_app_events "
                               "WHERE event_type = 'image_update_failed'")
        self.assertEqual(len(failures), int(progress[0]))
        self.assertTrue(all("image not found" in error for (error,) in failures))
        # Every app still runs, on its old image, and is still active.
        self.assertEqual(self.pg.value(f"SELECT count(*) FROM fly.user_fly_apps WHERE status = 'active' "
                                       f"AND image = '{V1}'"), str(len(group)))

        # Once Fly accepts the image, resuming retries the failed apps and finishes the rest.
        self.sim.control("POST", "config", {"faults": []})
        self.pg.sql(f"SELECT fly.resume_image_rollout({rollout_id})")
        self.wait_for_rollout(rollout_id, "'completed'")
        self.assertEqual(self.pg.value(f"SELECT count(*) FROM fly.user_fly_apps WHERE image = '{V2}'"), "30")
        updated = [r["path"].rsplit("/", 1)[1] for r in fly_requests(self.sim)
                   if r["endpoint"] == "update_machine" and r["status"] == 200]
        self.assertEqual(len(updated), 30)
        self.assertEqual(len(set(updated)), 30)


if __name__ == "__main__":
    unittest.main()

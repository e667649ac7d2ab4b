"""Adopting the previous system's apps: users moved over from it have an app of pg_fly's name whose machine carries
RUN_MODE=user_dedicated and USER_ID=<their id> in its env but none of pg_fly's metadata. Onboarding adopts that
machine (one started machine, pg_fly's metadata, the tier's guest and the current image) instead of creating a
second one; a machine in the app that belongs to nobody is reported and left running until deletion is asked for."""

import json
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_provisioning import USER, ProvisioningTestCase, app_name  # noqa: E402

OTHER_USER = "b1ffcd00-1d1c-4ef9-ac7e-7cc0ce491b22"
LEGACY_IMAGE = "registry.fly.io/vyx-app:deployment-legacy"
LEGACY_GUEST = {"cpu_kind": "shared", "cpus": 2, "memory_mb": 512}


class AdoptionTest(ProvisioningTestCase):
    cluster_settings = {"fly.request_timeout": "'5s'", "fly.rate_limits": "off"}

    def setUp(self):
        super().setUp()
        self.pg.sql("TRUNCATE fly.orphan_apps")
        if self.pg.value("SELECT to_regclass('fly.orphan_machines') IS NOT NULL") == "t":
            self.pg.sql("TRUNCATE fly.orphan_machines")

    def seed_previous_system(self, machines):
        """The user's app as the previous system left it, and their paid subscription written before pg_fly was
        attached (the trigger does not fire: onboarding is what finds them)."""
        self.pg.sql(f"SET session_replication_role = replica; "
                    f"INSERT INTO user_subscriptions VALUES ('{USER}', 'pro'); RESET session_replication_role")
        seeded = self.sim.control("POST", "seeded_apps", {"name": app_name(USER), "machines": machines})
        return [m["id"] for m in seeded["machines"]]

    def fly_machines(self):
        """The app's machines on Fly, waiting (a few seconds at most) for destroys under way to finish."""
        for _ in range(50):
            machines = self.live_apps_on_fly()[app_name(USER)]["machines"]
            if all(m["state"] != "destroying" for m in machines.values()):
                break
            time.sleep(0.1)
        return {k: m for k, m in machines.items() if m["state"] != "destroyed"}

    def event_details(self, event_type):
        return [json.loads(row[0]) for row in self.pg.sql(
            f"SELECT details FROM fly.user_fly_app_events WHERE user_id = '{USER}' AND event_type = '{event_type}' "
            f"ORDER BY id")]

    def test_onboarding_adopts_the_users_machine_and_reports_the_others(self):
        legacy, foreign, unnamed = self.seed_previous_system([
            {"env": {"RUN_MODE": "user_dedicated", "USER_ID": USER}, "image": LEGACY_IMAGE, "guest": LEGACY_GUEST},
            {"env": {"RUN_MODE": "user_dedicated", "USER_ID": OTHER_USER}, "image": LEGACY_IMAGE},
            {"env": {"RUN_MODE": "shared_backend"}, "image": LEGACY_IMAGE}])

        # The dry run names the app the user would get, and says what happens to a machine there.
        rows = self.pg.sql("SELECT user_id, queued, app_name, on_fly FROM fly.onboard_existing_users(dry_run => true)")
        self.assertEqual([row[:3] for row in rows], [[USER, "f", app_name(USER)]])
        self.assertIn("not checked: SQL does not call Fly", rows[0][3])
        self.assertIn("env USER_ID is this user is adopted", rows[0][3])
        # After an orphan pass has listed the organization's apps, it knows the app is there.
        self.pg.sql("SELECT fly.find_orphan_apps()")
        self.assertTrue(self.pg.wait_for("SELECT EXISTS (SELECT 1 FROM fly.orphan_apps)", timeout=15))
        on_fly = self.pg.value("SELECT on_fly FROM fly.onboard_existing_users(dry_run => true)")
        self.assertTrue(on_fly.startswith("the app exists (orphan pass of "), on_fly)
        self.assertEqual(set(self.fly_machines()), {legacy, foreign, unnamed})  # the dry run changed nothing

        self.assertEqual(self.pg.value("SELECT count(*) FROM fly.onboard_existing_users(dry_run => false)"), "1")
        self.settle()

        # One started machine for the user: the one the previous system left, now pg_fly's.
        machines = self.fly_machines()
        users = [m for m in machines.values() if m["config"]["env"].get("USER_ID") == USER]
        self.assertEqual([m["id"] for m in users], [legacy])
        adopted = machines[legacy]
        self.assertEqual(adopted["state"], "started")
        self.assertEqual(adopted["config"]["metadata"]["pg_fly_user_id"], USER)
        self.assertEqual(adopted["config"]["guest"], {"cpu_kind": "shared", "cpus": 1, "memory_mb": 256})
        image = self.pg.value("SHOW fly.image")
        self.assertEqual(adopted["config"]["image"], image)
        self.assertEqual(adopted["config"]["env"]["RUN_MODE"], "user_dedicated")
        self.assertEqual(self.pg.sql(f"SELECT status, fly_machine_id, image FROM fly.user_fly_apps "
                                     f"WHERE user_id = '{USER}' AND deleted_at IS NULL"),
                         [["active", legacy, image]])
        events = self.events()
        self.assertNotIn("machine_created", events)
        self.assertEqual(self.event_details("machine_adopted"), [{
            "machine_id": legacy, "state": "started", "from_guest": LEGACY_GUEST,
            "to_guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 256},
            "from_image": LEGACY_IMAGE, "to_image": image}])
        self.assertEqual(events.index("app_reused") < events.index("machine_adopted")
                         < events.index("provision_completed"), True)

        # The machines that belong to nobody: reported once each, left running.
        self.assertEqual(machines[foreign]["state"], "started")
        self.assertEqual(machines[unnamed]["state"], "started")
        self.assertEqual(self.pg.sql("SELECT fly_app_name, fly_machine_id, coalesce(user_id_env, '<none>'), app_user_id, "
                                     "delete_requested, deleted_at IS NULL FROM fly.orphan_machines ORDER BY 3"),
                         sorted([[app_name(USER), unnamed, "<none>", USER, "f", "t"],
                                 [app_name(USER), foreign, OTHER_USER, USER, "f", "t"]], key=lambda r: r[2]))
        found = self.event_details("orphan_machine_found")
        self.assertEqual(sorted((d["machine_id"], d["user_id_env"]) for d in found),
                         sorted([(foreign, OTHER_USER), (unnamed, None)]))
        self.assertTrue(all(d["app_name"] == app_name(USER) for d in found))

        # Deleted only on request, one at a time if asked so.
        result = self.pg.psql(f"SELECT fly.delete_orphan_machines('{app_name(USER)}', 'nosuchmachine')", check=False)
        self.assertIn("no reported orphan machine matches", result.stderr)
        self.assertEqual(self.pg.value(f"SELECT fly.delete_orphan_machines('{app_name(USER)}', '{foreign}')"), "1")
        self.assertTrue(self.pg.wait_for(f"SELECT deleted_at IS NOT NULL FROM fly.orphan_machines "
                                         f"WHERE fly_machine_id = '{foreign}'", timeout=15),
                        self.pg.server_log()[-3000:])
        machines = self.fly_machines()
        self.assertNotIn(foreign, machines)
        self.assertEqual(machines[unnamed]["state"], "started")
        self.assertEqual(machines[legacy]["state"], "started")
        self.assertEqual(self.pg.value(f"SELECT deleted_at IS NULL FROM fly.orphan_machines "
                                       f"WHERE fly_machine_id = '{unnamed}'"), "t")

    def test_of_two_machines_of_the_user_the_started_one_is_adopted_and_the_other_reported(self):
        stopped, started = self.seed_previous_system([
            {"env": {"RUN_MODE": "user_dedicated", "USER_ID": USER}, "state": "stopped"},
            {"env": {"RUN_MODE": "user_dedicated", "USER_ID": USER}}])
        self.pg.sql("SELECT count(*) FROM fly.onboard_existing_users(dry_run => false)")
        self.settle()
        # The user's other machine may hold state of its own: it is reported, left as it is, deleted on request.
        machines = self.fly_machines()
        self.assertEqual(sorted(machines), sorted([started, stopped]), machines)
        self.assertEqual((machines[started]["state"], machines[stopped]["state"]), ("started", "stopped"))
        self.assertEqual(self.event_details("duplicate_machine_destroyed"), [])
        self.assertEqual(len(self.event_details("machine_adopted")), 1)
        self.assertEqual(self.pg.sql("SELECT fly_machine_id, user_id_env FROM fly.orphan_machines"),
                         [[stopped, USER]])
        self.assertEqual(self.pg.value(f"SELECT fly_machine_id FROM fly.user_fly_apps WHERE user_id = '{USER}'"),
                         started)

    def test_a_machine_in_another_region_is_adopted_where_it_runs(self):
        # The policy's region is sjc; the previous system ran the user in ams. Destroying it to move it would lose
        # what it holds: it is adopted in ams, and the row (and the cost) say ams.
        (machine,) = self.seed_previous_system([{"env": {"RUN_MODE": "user_dedicated", "USER_ID": USER},
                                                 "region": "ams"}])
        self.pg.sql("SELECT count(*) FROM fly.onboard_existing_users(dry_run => false)")
        self.settle()
        machines = self.fly_machines()
        self.assertEqual(list(machines), [machine], machines)
        self.assertEqual(machines[machine]["region"], "ams")
        self.assertEqual(machines[machine]["config"]["metadata"].get("pg_fly_user_id"), USER)
        self.assertEqual(self.pg.sql(f"SELECT fly_machine_id, region, status FROM fly.user_fly_apps "
                                     f"WHERE user_id = '{USER}'"), [[machine, "ams", "active"]])
        events = self.events()
        self.assertIn("machine_adopted", events)
        self.assertNotIn("machine_replaced_for_region", events)
        self.assertNotIn("machine_created", events)

    def test_the_orphan_pass_reports_machines_of_nobody_in_live_apps(self):
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{USER}', 'pro')")
        self.settle()
        ours = self.pg.value(f"SELECT fly_machine_id FROM fly.user_fly_apps WHERE user_id = '{USER}'")
        # Machines that appear in the user's app later (a manual `fly machine run`, the previous system's deployer).
        stray, gone = [m["id"] for m in self.sim.control("POST", "seeded_apps", {"name": app_name(USER), "machines": [
            {"env": {"RUN_MODE": "user_dedicated", "USER_ID": OTHER_USER}}, {"env": {}}]})["machines"]]
        for _ in range(2):  # a second pass reports nothing new
            self.pg.sql("SELECT fly.find_orphan_apps()")
            self.assertTrue(self.pg.wait_for("SELECT count(*) = 2 FROM fly.orphan_machines", timeout=15),
                            self.pg.server_log()[-3000:])
            self.assertTrue(self.pg.wait_for(
                "SELECT count(*) = 2 FROM fly.user_fly_app_events WHERE event_type = 'orphan_machine_found'",
                timeout=5))
        found = self.event_details("orphan_machine_found")
        self.assertEqual(sorted((d["machine_id"], d["user_id_env"]) for d in found),
                         sorted([(stray, OTHER_USER), (gone, None)]))
        machines = self.fly_machines()
        self.assertEqual(sorted(machines), sorted([ours, stray, gone]))
        self.assertTrue(all(m["state"] == "started" for m in machines.values()))

        # One disappears from Fly: the next pass says so. The other goes on request, the app's own machine stays.
        self.sim.control("POST", f"machines/{app_name(USER)}/{gone}/state", {"state": "destroyed"})
        self.pg.sql("SELECT fly.find_orphan_apps()")
        self.assertTrue(self.pg.wait_for(f"SELECT deleted_at IS NOT NULL FROM fly.orphan_machines "
                                         f"WHERE fly_machine_id = '{gone}'", timeout=15))
        self.assertEqual(self.pg.value(f"SELECT fly.delete_orphan_machines('{app_name(USER)}')"), "1")
        self.assertTrue(self.pg.wait_for(f"SELECT deleted_at IS NOT NULL FROM fly.orphan_machines "
                                         f"WHERE fly_machine_id = '{stray}'", timeout=15))
        self.assertEqual(list(self.fly_machines()), [ours])
        self.assertEqual(self.pg.value(f"SELECT status FROM fly.user_fly_apps WHERE user_id = '{USER}'"), "active")
        self.assertEqual(self.events().count("orphan_machine_found"), 2)


if __name__ == "__main__":
    unittest.main(verbosity=2)

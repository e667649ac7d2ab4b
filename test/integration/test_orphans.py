"""Orphan apps: apps with pg_fly's prefix in the organization that no live row owns are reported, and deleted
only when asked."""

import json
import os
import sys
import urllib.request
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import TEST_TOKEN  # noqa: E402
from test_provisioning import USER, ProvisioningTestCase, app_name  # noqa: E402


class OrphanTest(ProvisioningTestCase):
    cluster_settings = {"fly.request_timeout": "'5s'", "fly.rate_limits": "off"}

    def create_app_directly(self, name):
        body = json.dumps({"name": name, "app_name": name, "org_slug": "personal"}).encode()
        request = urllib.request.Request(self.sim.url + "/v1/apps", data=body, method="POST",
                                         headers={"Authorization": f"Bearer {TEST_TOKEN}",
                                                  "Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=10).read()

    def test_orphans_are_reported_then_deleted_only_when_asked(self):
        self.pg.sql("TRUNCATE fly.orphan_apps")
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{USER}', 'pro')")
        self.settle()
        self.create_app_directly("vyx-user-0rphan01")
        self.create_app_directly("someone-elses-app")
        self.pg.sql("SELECT fly.find_orphan_apps()")
        self.assertTrue(self.pg.wait_for("SELECT EXISTS (SELECT 1 FROM fly.orphan_apps)", timeout=15))
        self.assertEqual(self.pg.sql("SELECT fly_app_name, delete_requested, deleted_at IS NULL FROM fly.orphan_apps"),
                         [["vyx-user-0rphan01", "f", "t"]])
        # Reporting deletes nothing.
        self.assertIn("vyx-user-0rphan01", self.live_apps_on_fly())
        self.assertIn(app_name(USER), self.live_apps_on_fly())

        result = self.pg.psql("SELECT fly.delete_orphan_apps('no-such-app')", check=False)
        self.assertIn('no reported orphan app is named "no-such-app"', result.stderr)
        self.assertEqual(self.pg.value("SELECT fly.delete_orphan_apps('vyx-user-0rphan01')"), "1")
        self.assertTrue(self.pg.wait_for("SELECT deleted_at IS NOT NULL FROM fly.orphan_apps", timeout=15))
        apps = self.live_apps_on_fly()
        self.assertNotIn("vyx-user-0rphan01", apps)
        self.assertIn("someone-elses-app", apps)
        self.assertIn(app_name(USER), apps)

    def test_app_names_and_ids_that_could_alter_the_recording_are_skipped(self):
        self.pg.sql("TRUNCATE fly.orphan_apps")
        apps = [{"name": "vyx-user-0rphan01", "id": "NULL"},
                {"name": "vyx-user-0rphan02", "id": "abc,def"},
                {"name": "vyx-user-0rphan03", "id": "id}3"},
                {"name": "vyx-user-0rphan04", "id": 'i"d4'},
                {"name": "vyx-user-bad,name", "id": "x5"},
                {"name": 'vyx-user-q"}', "id": "x6"},
                {"name": "vyx-user-0rphan07", "id": "z4k69dxd8r31p5mx"},
                {"name": "vyx-user-0rphan08"}]
        body = {"total_apps": len(apps), "apps": [dict(app, status="deployed") for app in apps]}
        self.sim.configure(faults=[{"endpoint": "list_apps", "always": True, "kind": "status", "status": 200,
                                    "body": body}])
        self.pg.sql("SELECT fly.find_orphan_apps()")
        self.assertTrue(self.pg.wait_for("SELECT EXISTS (SELECT 1 FROM fly.orphan_apps)", timeout=15),
                        self.pg.server_log()[-3000:])
        self.assertEqual(self.pg.sql("SELECT fly_app_name, coalesce(fly_app_id, '<null>') FROM fly.orphan_apps "
                                     "ORDER BY fly_app_name"),
                         [["vyx-user-0rphan01", "NULL"], ["vyx-user-0rphan07", "z4k69dxd8r31p5mx"],
                          ["vyx-user-0rphan08", "<null>"]])
        log = self.pg.server_log()
        for text in ['app id "abc,def" is not', 'app id "id}3" is not', 'app id "i"d4" is not',
                     'app name "vyx-user-bad,name" contains']:
            self.assertIn(text, log)


if __name__ == "__main__":
    unittest.main(verbosity=2)

"""A health pass pages through the active apps (2,000 at a time) with a keyset cursor. The cursor's instants must
read back exactly whatever the server's DateStyle and TimeZone: with a non-ISO DateStyle and a zone whose
abbreviation PostgreSQL does not know (Asia/Jakarta prints WIB), a cursor carried as timestamptz text failed at the
second page, inside the claim's transaction, so no queue item was claimed any more (found by review, issue 16)."""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_provisioning import USER, ProvisioningTestCase  # noqa: E402


class HealthPagingTest(ProvisioningTestCase):
    cluster_settings = {"fly.request_timeout": "'5s'", "fly.health_check_interval": "0", "fly.rate_limits": "off",
                        "fly.reprovision_vanished_apps": "off", "fly.restart_stopped_machines": "off",
                        "datestyle": "'Postgres, MDY'", "timezone": "'Asia/Jakarta'"}

    def test_every_page_of_a_pass_is_checked_and_claims_go_on(self):
        self.pg.sql("INSERT INTO fly.user_fly_apps (user_id, tier, fly_app_name, fly_org_slug, fly_machine_id, "
                    "status, region) SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid, 'pro', "
                    "'hp-' || i, 'personal', 'm' || i, 'active', 'sjc' FROM generate_series(1, 2100) i")
        self.assertEqual(self.pg.value("SELECT fly.check_fly_apps_health()"), "2100")
        self.assertTrue(self.pg.wait_for("SELECT count(*) = 2100 FROM fly.user_fly_apps "
                                         "WHERE last_health_check_at IS NOT NULL", timeout=90),
                        self.pg.value("SELECT count(*) FROM fly.user_fly_apps WHERE last_health_check_at IS NOT NULL"))
        self.assertNotIn("invalid input syntax for type timestamp", self.pg.server_log())
        # The worker still claims work: a new subscriber is provisioned.
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{USER}', 'pro')")
        self.assertTrue(self.pg.wait_for(f"SELECT EXISTS (SELECT 1 FROM fly.user_fly_apps WHERE user_id = '{USER}' "
                                         "AND status = 'active')", timeout=60),
                        self.pg.sql("SELECT * FROM fly.pending_work"))


if __name__ == "__main__":
    unittest.main(verbosity=2)

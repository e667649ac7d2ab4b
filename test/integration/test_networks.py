"""Issue 14, points 3 and 4: each app on its own private network, and apps reachable at their own URL only when
they serve something (fly.app_internal_port: a service, an HTTP check, a shared IPv4 and an IPv6).

The simulator runs with health_needs_service_and_ip, so an app's own health URL answers only for an app with a
public IP whose started machine has services, as {app}.fly.dev does on Fly."""

import json
import os
import sys
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import TEST_TOKEN, Cluster, Simulator  # noqa: E402
from test_provisioning import USER, ProvisioningTestCase, app_name  # noqa: E402

OTHER_USER = "b1ffcd88-8d1a-4ef8-bb6d-6bb9bd380a22"
THIRD_USER = "c2aade77-7e2b-4ef8-bb6d-6bb9bd380a33"


class ReachableAppsTestCase(ProvisioningTestCase):
    """A cluster whose health passes also ask each app's own URL, routed to the simulator."""

    settings = {}

    @classmethod
    def setUpClass(cls):
        cls.sim = Simulator({"health_needs_service_and_ip": True})
        settings = {"fly.request_timeout": "'5s'", "fly.health_check_interval": "'1s'", "fly.rate_limits": "off",
                    "fly.app_health_url": f"'{cls.sim.url}/__flysim/apps/{{app}}/health'"}
        settings.update(cls.settings)
        cls.pg = Cluster(cls.sim.url, settings)
        cls.pg.sql("CREATE TABLE user_subscriptions (user_id uuid PRIMARY KEY, tier text NOT NULL DEFAULT 'free')")
        cls.pg.sql("SELECT fly.attach_tier_trigger()")

    def use_settings(self, settings, undo):
        self.pg.write_settings(settings)
        self.pg.reload()
        self.addCleanup(self.pg.reload)
        self.addCleanup(self.pg.write_settings, undo)

    def provision(self, user):
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{user}', 'pro') "
                    "ON CONFLICT (user_id) DO UPDATE SET tier = 'pro'")
        self.settle()
        self.assertEqual(self.pg.value(f"SELECT status FROM fly.user_fly_apps WHERE user_id = '{user}' "
                                       "AND deleted_at IS NULL"), "active")

    def health_after_a_pass(self, user):
        """(status, detail) once a health pass has judged the app (not 'unknown' any more)."""
        self.assertTrue(self.pg.wait_for(f"SELECT health_status <> 'unknown' FROM fly.user_fly_apps "
                                         f"WHERE user_id = '{user}' AND deleted_at IS NULL", timeout=20))
        status = self.pg.value(f"SELECT health_status FROM fly.user_fly_apps "
                               f"WHERE user_id = '{user}' AND deleted_at IS NULL")
        detail = self.pg.value(f"SELECT details->>'detail' FROM fly.user_fly_app_events WHERE user_id = '{user}' "
                               "AND event_type = 'health_changed' ORDER BY id DESC LIMIT 1")
        return status, detail

    def machine_config(self, user):
        machines = self.live_apps_on_fly()[app_name(user)]["machines"]
        self.assertEqual(len(machines), 1)
        return next(iter(machines.values()))["config"]

    def requests_to(self, endpoint, user):
        return [r for r in self.sim.requests()["requests"]
                if r["endpoint"] == endpoint and r["path"].startswith(f"/v1/apps/{app_name(user)}")]


class NetworkTest(ReachableAppsTestCase):
    def test_each_app_gets_its_own_network_unless_shared_and_a_reused_app_keeps_its_own(self):
        self.provision(USER)
        self.provision(OTHER_USER)
        apps = self.live_apps_on_fly()
        for user in (USER, OTHER_USER):
            self.assertEqual(apps[app_name(user)]["network"], app_name(user))
            creates = [r for r in self.sim.requests()["requests"]
                       if r["endpoint"] == "create_app" and r["body"]["name"] == app_name(user)]
            self.assertEqual(creates[0]["body"]["network"], app_name(user))
        # Fly's GET shows it too, and the two users' machines cannot reach each other.
        request = urllib.request.Request(f"{self.sim.url}/v1/apps/{app_name(USER)}",
                                         headers={"Authorization": f"Bearer {TEST_TOKEN}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            self.assertEqual(json.loads(response.read())["network"], app_name(USER))
        reach = self.sim.control("GET", f"reachable?from={app_name(USER)}&to={app_name(OTHER_USER)}")
        self.assertFalse(reach["reachable"])

        # An app pg_fly made earlier on the organization's network (name_taken, ours) is reused as it is.
        name = app_name(THIRD_USER)
        body = json.dumps({"name": name, "app_name": name, "org_slug": "personal"}).encode()
        request = urllib.request.Request(f"{self.sim.url}/v1/apps", data=body, method="POST",
                                         headers={"Authorization": f"Bearer {TEST_TOKEN}",
                                                  "Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=10).read()
        self.provision(THIRD_USER)
        self.assertIn("app_reused", self.events(THIRD_USER))
        self.assertEqual(self.live_apps_on_fly()[name]["network"], "default")

        # With fly.app_network = 'shared', a new app goes on the organization's default network.
        self.use_settings({"fly.app_network": "'shared'"}, {"fly.app_network": "'per_app'"})
        self.pg.sql(f"UPDATE user_subscriptions SET tier = 'free' WHERE user_id = '{USER}'")
        self.settle()
        self.assertNotIn(app_name(USER), self.live_apps_on_fly())
        self.provision(USER)
        self.assertEqual(self.live_apps_on_fly()[app_name(USER)]["network"], "default")
        creates = [r for r in self.sim.requests()["requests"]
                   if r["endpoint"] == "create_app" and r["body"]["name"] == app_name(USER)]
        self.assertNotIn("network", creates[-1]["body"])
        self.assertTrue(self.sim.control("GET", f"reachable?from={app_name(USER)}&to={name}")["reachable"])


class ServedAppTest(ReachableAppsTestCase):
    settings = {"fly.app_internal_port": "8080", "fly.app_health_path": "'/healthz'"}

    def test_a_served_app_has_a_service_a_check_one_address_of_each_kind_and_answers_at_its_url(self):
        self.provision(USER)
        config = self.machine_config(USER)
        self.assertEqual(config["services"], [{
            "protocol": "tcp", "internal_port": 8080,
            "ports": [{"port": 443, "handlers": ["tls", "http"]},
                      {"port": 80, "handlers": ["http"], "force_https": True}],
            "autostop": "off", "autostart": True, "min_machines_running": 1}])
        self.assertEqual(config["checks"]["pg_fly_health"]["path"], "/healthz")
        self.assertEqual(config["checks"]["pg_fly_health"]["port"], 8080)
        self.assertEqual(config["checks"]["pg_fly_health"]["type"], "http")
        machine = next(iter(self.live_apps_on_fly()[app_name(USER)]["machines"].values()))
        self.assertEqual([c["name"] for c in machine["checks"]], ["pg_fly_health"])

        # Provisioned again: the addresses are listed first, and none is added.
        self.pg.sql(f"SELECT fly.provision_user_app('{USER}')")
        self.settle()
        ips = self.live_apps_on_fly()[app_name(USER)]["ips"]
        self.assertEqual(sorted(ip["type"] for ip in ips), ["shared_v4", "v6"])
        self.assertTrue(all(ip["network"] == app_name(USER) for ip in ips))
        self.assertEqual(len(self.requests_to("assign_ip", USER)), 2)
        self.assertEqual([r["body"].get("network") for r in self.requests_to("assign_ip", USER)],
                         [app_name(USER)] * 2)
        self.assertEqual(len(self.requests_to("list_ip_assignments", USER)), 2)
        assigned = self.pg.sql(f"SELECT details->>'type', details->>'ip' FROM fly.user_fly_app_events "
                               f"WHERE user_id = '{USER}' AND event_type = 'ip_assigned' ORDER BY id")
        self.assertEqual(assigned, [[ip["type"], ip["ip"]] for ip in ips])

        # The health pass reaches the app through its own URL.
        status, detail = self.health_after_a_pass(USER)
        self.assertEqual(status, "healthy", detail)
        self.assertIn("user_dedicated", detail)
        probes = [r for r in self.sim.requests()["requests"] if r["endpoint"] == "app_health"]
        self.assertTrue(probes and all(r["status"] == 200 for r in probes))

    def test_a_refused_assignment_fails_the_provision_and_a_lost_one_is_not_repeated(self):
        self.sim.configure(faults=[
            {"endpoint": "assign_ip", "nth": [1], "kind": "status_after", "status": 503},
            {"endpoint": "assign_ip", "app": app_name(OTHER_USER), "always": True, "kind": "status", "status": 422,
             "body": {"error": "ip assignment refused"}}])
        self.provision(USER)
        self.assertEqual(sorted(ip["type"] for ip in self.live_apps_on_fly()[app_name(USER)]["ips"]),
                         ["shared_v4", "v6"])
        self.assertIn("provision_attempt_failed", self.events(USER))
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{OTHER_USER}', 'pro')")
        self.settle()
        self.assertEqual(self.pg.value(f"SELECT status FROM fly.user_fly_apps WHERE user_id = '{OTHER_USER}'"),
                         "failed")
        self.assertIn("provision_failed", self.events(OTHER_USER))
        self.assertEqual(self.requests_to("create_machine", OTHER_USER), [])


class UnservedAppTest(ReachableAppsTestCase):
    def test_without_a_port_the_app_url_is_unreachable_and_with_one_it_answers(self):
        self.provision(USER)
        config = self.machine_config(USER)
        self.assertNotIn("services", config)
        self.assertNotIn("checks", config)
        self.assertEqual(self.live_apps_on_fly()[app_name(USER)]["ips"], [])
        self.assertEqual(self.requests_to("list_ip_assignments", USER), [])
        status, detail = self.health_after_a_pass(USER)
        self.assertEqual(status, "unhealthy")
        self.assertIn("did not answer", detail)
        # The operator sets the port: the next app is served, and its URL answers.
        self.use_settings({"fly.app_internal_port": "8080"}, {"fly.app_internal_port": "0"})
        self.provision(OTHER_USER)
        self.assertEqual(self.machine_config(OTHER_USER)["services"][0]["internal_port"], 8080)
        status, detail = self.health_after_a_pass(OTHER_USER)
        self.assertEqual(status, "healthy", detail)
        # The first user's next provision updates its machine in place and gives its app the addresses.
        machine_id = self.pg.value(f"SELECT fly_machine_id FROM fly.user_fly_apps WHERE user_id = '{USER}'")
        self.pg.sql(f"SELECT fly.provision_user_app('{USER}')")
        self.settle()
        self.assertIn("machine_updated", self.events(USER))
        self.assertEqual(list(self.live_apps_on_fly()[app_name(USER)]["machines"]), [machine_id])
        self.assertEqual(self.machine_config(USER)["services"][0]["internal_port"], 8080)
        self.assertEqual(sorted(ip["type"] for ip in self.live_apps_on_fly()[app_name(USER)]["ips"]),
                         ["shared_v4", "v6"])
        self.assertTrue(self.pg.wait_for(f"SELECT health_status = 'healthy' FROM fly.user_fly_apps "
                                         f"WHERE user_id = '{USER}'", timeout=20))


if __name__ == "__main__":
    unittest.main()

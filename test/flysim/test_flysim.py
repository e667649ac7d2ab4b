#!/usr/bin/env python3
"""Tests for the Fly Machines API simulator (stdlib unittest).

    python3 -m unittest discover -s test/flysim -p 'test_*.py' -v     (from the repo root)
    python3 test/flysim/test_flysim.py
"""
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import flysim  # noqa: E402
import flysim_policy  # noqa: E402
import flysim_schemas  # noqa: E402

REPO = os.path.dirname(os.path.dirname(HERE))
# Fly's Machines API spec, https://docs.fly.io/api/machines/openapi.json: a copy named by FLYSIM_OPENAPI, or one
# kept next to the checkout.
OPENAPI_PATH = os.environ.get("FLYSIM_OPENAPI") or os.path.normpath(
    os.path.join(REPO, "..", "shared", "fly", "openapi.json"))

TOKEN = "test-token"
OTHER_TOKEN = "other-token"
BASE_CONFIG = {
    "seed": 1,
    "boot_delay_ms": 40,
    "stop_delay_ms": 20,
    "rate_limits": {"mode": "off"},
    "foreign_apps": {"foreign-taken": "foreign-org"},
    "tokens": {TOKEN: "personal", OTHER_TOKEN: "other-org", "fm2_macaroonpart": "personal"},
}
IMAGE = "registry.fly.io/vyx-app:deployment-01K9Y194AA56A6SFHTTD64KQ7Y"
SERVER = None


def setUpModule():
    global SERVER
    SERVER, _ = flysim.start_server(BASE_CONFIG)


def tearDownModule():
    flysim.shutdown(SERVER)


class Result:
    def __init__(self, response, body):
        self.status = response.status
        self.headers = response.headers
        self.body = body

    def json(self):
        return json.loads(self.body)

    @property
    def error(self):
        return self.json().get("error")


class Api:
    """Keep-alive client; `token=None` sends no Authorization header."""

    def __init__(self, token=TOKEN, scheme="Bearer", timeout=10, port=None):
        self.token = token
        self.scheme = scheme
        self.conn = http.client.HTTPConnection("127.0.0.1", port or SERVER.port, timeout=timeout)

    def call(self, method, path, body=None, raw=None, headers=None):
        sent = dict(headers or {})
        if self.token is not None:
            sent["Authorization"] = f"{self.scheme} {self.token}"
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        if data is not None:
            sent.setdefault("Content-Type", "application/json")
        try:
            self.conn.request(method, path, body=data, headers=sent)
            response = self.conn.getresponse()
            return Result(response, response.read())
        except (OSError, http.client.HTTPException):
            self.conn.close()
            raise

    def get(self, path, **kw):
        return self.call("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.call("POST", path, body, **kw)

    def delete(self, path, **kw):
        return self.call("DELETE", path, **kw)

    def close(self):
        self.conn.close()


def machine_config(**extra):
    config = {"image": IMAGE, "env": {"RUN_MODE": "user_dedicated", "USER_ID": "u-1"},
              "guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 256}}
    config.update(extra)
    return config


class SimTestCase(unittest.TestCase):
    config = {}

    def setUp(self):
        self.reset(**self.config)
        self.api = Api()
        self.ctl_api = Api(token=None)

    def tearDown(self):
        self.api.close()
        self.ctl_api.close()

    def client(self, *args, **kwargs):
        """An extra connection, closed when the test ends."""
        api = Api(*args, **kwargs)
        self.addCleanup(api.close)
        return api

    def reset(self, **overrides):
        config = dict(BASE_CONFIG, **overrides)
        api = Api(token=None)
        result = api.post("/__flysim/reset", config)
        api.close()
        self.assertEqual(result.status, 200, result.body)

    def ctl(self, method, path, body=None):
        result = self.ctl_api.call(method, "/__flysim/" + path, body)
        self.assertLess(result.status, 300, result.body)
        return result.json()

    def set_faults(self, *rules):
        self.ctl("POST", "config", {"faults": list(rules)})

    def requests_log(self, **filters):
        query = "&".join(f"{k}={v}" for k, v in filters.items())
        return self.ctl("GET", "requests" + ("?" + query if query else ""))["requests"]

    def create_app(self, name="vyx-user-0001", api=None, org="personal"):
        result = (api or self.api).post("/v1/apps", {"name": name, "app_name": name, "org_slug": org})
        self.assertEqual(result.status, 201, result.body)
        return result.json()

    def create_machine(self, app="vyx-user-0001", api=None, **body):
        body.setdefault("config", machine_config())
        result = (api or self.api).post(f"/v1/apps/{app}/machines", body)
        self.assertEqual(result.status, 200, result.body)
        return result.json()

    def wait(self, app, machine_id, state="started", timeout=5):
        return self.api.get(f"/v1/apps/{app}/machines/{machine_id}/wait?state={state}&timeout={timeout}")

    def machine(self, app, machine_id):
        result = self.api.get(f"/v1/apps/{app}/machines/{machine_id}")
        self.assertEqual(result.status, 200, result.body)
        return result.json()


class AppTests(SimTestCase):
    def test_create_accepts_name_app_name_or_both(self):
        for index, keys in enumerate((("name",), ("app_name",), ("name", "app_name"))):
            name = f"app-{index}"
            body = dict({key: name for key in keys}, org_slug="personal")
            result = self.api.post("/v1/apps", body)
            self.assertEqual(result.status, 201, result.body)
            self.assertEqual(set(result.json()), {"id", "created_at"})
            self.assertIsInstance(result.json()["created_at"], int)
            self.assertEqual(self.api.get(f"/v1/apps/{name}").json()["name"], name)

    def test_create_rejects_differing_name_and_app_name(self):
        result = self.api.post("/v1/apps", {"name": "a-one", "app_name": "a-two", "org_slug": "personal"})
        self.assertEqual(result.status, 400)
        self.assertIn("differ", result.error)

    def test_create_rejects_invalid_names(self):
        for name in ("Upper", "9starts-with-digit", "under_score", "x" * 63):
            result = self.api.post("/v1/apps", {"name": name, "org_slug": "personal"})
            self.assertEqual(result.status, 422, name)
            self.assertEqual(result.json(), {
                "error": "Validation failed: Name under 63 chars using numbers, lowercase letters and dashes"})
        self.assertEqual(self.api.post("/v1/apps", {"name": "x" * 62, "org_slug": "personal"}).status, 201)

    def test_create_for_another_org_is_forbidden(self):
        result = self.api.post("/v1/apps", {"name": "not-mine", "org_slug": "other-org"})
        self.assertEqual((result.status, result.json()), (403, {"error": "unauthorized"}))

    def test_name_taken_in_own_org_then_get_answers_200(self):
        self.create_app("mine")
        result = self.api.post("/v1/apps", {"name": "mine", "org_slug": "personal"})
        self.assertEqual(result.status, 422)
        self.assertEqual(result.json(), {"error": "Validation failed: Name has already been taken",
                                         "status": "name_taken"})
        self.assertEqual(self.api.get("/v1/apps/mine").status, 200)

    def test_names_are_global_across_orgs(self):
        other = self.client(OTHER_TOKEN)
        self.create_app("shared-name", api=other, org="other-org")
        result = self.api.post("/v1/apps", {"name": "shared-name", "org_slug": "personal"})
        self.assertEqual((result.status, result.json().get("status")), (422, "name_taken"))
        got = self.api.get("/v1/apps/shared-name")
        self.assertEqual((got.status, got.json()), (403, {"error": "unauthorized"}))
        # The foreign org configured at start-up holds its name the same way.
        self.assertEqual(self.api.post("/v1/apps", {"name": "foreign-taken", "org_slug": "personal"}).status, 422)
        self.assertEqual(self.api.get("/v1/apps/foreign-taken").status, 403)

    def test_get_free_name_is_404(self):
        result = self.api.get("/v1/apps/nobody-has-this")
        self.assertEqual((result.status, result.json()), (404, {"error": 'Could not find App "nobody-has-this"'}))

    def test_get_app_body(self):
        created = self.create_app("shape-app")
        app = self.api.get("/v1/apps/shape-app").json()
        self.assertEqual(app["id"], created["id"])
        self.assertEqual(app["organization"]["slug"], "personal")
        self.assertEqual((app["status"], app["machine_count"]), ("pending", 0))
        self.create_machine("shape-app")
        app = self.api.get("/v1/apps/shape-app").json()
        self.assertEqual((app["status"], app["machine_count"]), ("deployed", 1))

    def test_create_with_wait_returns_the_app(self):
        result = self.api.post("/v1/apps?wait=true", {"name": "waited", "org_slug": "personal"})
        self.assertEqual(result.status, 201)
        self.assertEqual(result.json()["name"], "waited")

    def test_list_apps_shows_only_the_token_org(self):
        self.create_app("mine-1")
        self.create_app("theirs-1", api=self.client(OTHER_TOKEN), org="other-org")
        listing = self.api.get("/v1/apps?org_slug=personal").json()
        self.assertEqual(listing["total_apps"], 1)
        self.assertEqual([a["name"] for a in listing["apps"]], ["mine-1"])
        self.assertEqual(self.api.get("/v1/apps?org_slug=other-org").status, 403)
        self.assertEqual(self.api.get("/v1/apps").status, 400)

    def test_delete_cascades_and_frees_the_name(self):
        self.create_app("doomed")
        self.api.post("/v1/apps/doomed/secrets", {"values": {"K": "v"}})
        machines = [self.create_machine("doomed")["id"] for _ in range(2)]
        result = self.api.delete("/v1/apps/doomed")
        self.assertEqual((result.status, result.body), (202, b""))
        self.assertEqual(result.headers["Content-Length"], "0")
        self.assertEqual(self.api.get("/v1/apps/doomed").status, 404)
        state = self.ctl("GET", "state")
        self.assertNotIn("doomed", state["apps"])
        for machine_id in machines:
            self.assertNotIn(machine_id, json.dumps(state))
        self.create_app("doomed")
        self.assertEqual(self.api.get("/v1/apps/doomed/secrets").json(), {"secrets": []})
        self.assertEqual(self.api.get("/v1/apps/doomed/machines").json(), [])
        self.assertEqual(self.api.delete("/v1/apps/never-existed").status, 404)

    def test_delete_wakes_waiters_for_destroyed(self):
        self.create_app("doomed-2")
        machine_id = self.create_machine("doomed-2", skip_launch=True)["id"]
        answers = []
        thread = threading.Thread(target=lambda: answers.append(self.wait("doomed-2", machine_id, "destroyed")))
        thread.start()
        time.sleep(0.1)
        self.assertEqual(self.client().delete("/v1/apps/doomed-2").status, 202)
        thread.join(5)
        self.assertEqual(answers[0].status, 200)
        self.assertEqual(answers[0].json()["state"], "destroyed")

    def test_name_reuse_delay(self):
        self.reset(name_reuse_delay_ms=300)
        self.create_app("slow-free")
        self.api.delete("/v1/apps/slow-free")
        self.assertEqual(self.api.get("/v1/apps/slow-free").status, 404)
        self.assertEqual(self.api.post("/v1/apps", {"name": "slow-free", "org_slug": "personal"}).status, 422)
        time.sleep(0.35)
        self.assertEqual(self.api.post("/v1/apps", {"name": "slow-free", "org_slug": "personal"}).status, 201)

    def test_control_can_delete_an_app_behind_the_clients_back(self):
        self.create_app("gone-behind")
        self.ctl("DELETE", "apps/gone-behind")
        self.assertEqual(self.api.get("/v1/apps/gone-behind").status, 404)

    def test_control_takes_foreign_names_at_run_time(self):
        taken = self.ctl("POST", "foreign_apps", {"names": ["late-foreign"], "org": "rival-org"})
        self.assertEqual(taken["taken"], ["late-foreign"])
        self.assertEqual(self.api.get("/v1/apps/late-foreign").status, 403)
        self.assertEqual(self.api.post("/v1/apps", {"name": "late-foreign", "org_slug": "personal"}).status, 422)
        self.ctl("POST", "reset")  # without a body: back to the start-up config, which lacks the name
        self.assertEqual(self.api.get("/v1/apps/late-foreign").status, 404)


class AsynchronousDeletionTests(SimTestCase):
    """DELETE /v1/apps/{name} answers 202 and Fly finishes later (api-reference 2.5); whether the name can be taken
    again meanwhile is undocumented (2.5, 10.10): with app_delete_lag_ms the app stays until the lag ends."""

    def test_the_app_stays_until_the_lag_ends(self):
        self.reset(app_delete_lag_ms=300)
        self.create_app("dying")
        machine_id = self.create_machine("dying", skip_launch=True)["id"]
        self.assertEqual(self.api.delete("/v1/apps/dying").status, 202)
        answer = self.api.get("/v1/apps/dying")
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.json()["organization"]["slug"], "personal")
        taken = self.api.post("/v1/apps", {"name": "dying", "org_slug": "personal"})
        self.assertEqual((taken.status, taken.json().get("status")), (422, "name_taken"))
        self.assertEqual(self.api.get("/v1/apps/dying/machines").status, 200)
        self.assertEqual(self.api.delete("/v1/apps/dying").status, 202)  # again: still accepted, same end
        self.assertEqual(self.ctl("GET", "state")["apps_being_deleted"], ["dying"])
        time.sleep(0.4)
        self.assertEqual(self.api.get("/v1/apps/dying").status, 404)
        self.assertEqual(self.api.get(f"/v1/apps/dying/machines/{machine_id}").status, 404)
        self.assertEqual(self.api.post("/v1/apps", {"name": "dying", "org_slug": "personal"}).status, 201)
        self.assertEqual(self.ctl("GET", "state")["apps_being_deleted"], [])

    def test_without_a_lag_the_app_goes_at_once(self):
        self.create_app("quick")
        self.assertEqual(self.api.delete("/v1/apps/quick").status, 202)
        self.assertEqual(self.api.get("/v1/apps/quick").status, 404)

    def test_deletions_record_force_and_machines_not_stopped(self):
        self.create_app("with-running")
        self.create_machine("with-running")
        self.create_machine("with-running", skip_launch=True)  # never ran: nothing to stop
        stopped = self.create_machine("with-running")["id"]
        self.assertEqual(self.wait("with-running", stopped).status, 200)
        self.assertEqual(self.api.post(f"/v1/apps/with-running/machines/{stopped}/stop").status, 200)
        self.assertEqual(self.wait("with-running", stopped, "stopped").status, 200)
        self.assertEqual(self.api.delete("/v1/apps/with-running?force=true").status, 202)
        self.create_app("all-stopped")
        self.assertEqual(self.api.delete("/v1/apps/all-stopped").status, 202)
        deletions = self.ctl("GET", "state")["app_deletions"]
        self.assertEqual([(d["app"], d["force"]) for d in deletions], [("with-running", True), ("all-stopped", False)])
        self.assertEqual(deletions[0]["machines_not_stopped"], ["started"])
        self.assertEqual(deletions[1]["machines_not_stopped"], [])

    def test_the_lag_is_checked(self):
        answer = Api(token=None)
        result = answer.post("/__flysim/reset", dict(BASE_CONFIG, app_delete_lag_ms=-5))
        answer.close()
        self.assertEqual(result.status, 400)


class ConsistencyAfterCreateTests(SimTestCase):
    """Fly's reads lag its writes (api-reference 2.1, 6): a new app answers 404 or 401 for a while, and a new machine
    is not found and not listed; flyctl polls GET /v1/apps/{name} until it answers 200."""

    def test_a_new_app_is_not_found_then_is(self):
        self.reset(app_visible_after_ms=300)
        self.create_app("settling")
        self.assertEqual(self.api.get("/v1/apps/settling").json(), {"error": 'Could not find App "settling"'})
        self.assertEqual(self.api.get("/v1/apps/settling/machines").status, 404)
        self.assertEqual(self.api.post("/v1/apps/settling/machines", {"config": machine_config()}).status, 404)
        # Another org's calls answer as they would anyway; the name is taken at once.
        self.assertEqual(self.client(OTHER_TOKEN).get("/v1/apps/settling").status, 403)
        self.assertEqual(self.api.post("/v1/apps", {"name": "settling", "org_slug": "personal"}).status, 422)
        time.sleep(0.35)
        self.assertEqual(self.api.get("/v1/apps/settling").status, 200)
        self.assertEqual(self.api.get("/v1/apps/settling/machines").json(), [])

    def test_unauthorized_or_alternating_answers(self):
        self.reset(app_visible_after_ms=300, app_invisible_status=401)
        self.create_app("settling-401")
        answer = self.api.get("/v1/apps/settling-401/secrets")
        self.assertEqual((answer.status, answer.error), (401, "Authenticate: token validation error"))
        self.reset(app_visible_after_ms=300, app_invisible_status="alternate")
        self.create_app("settling-both")
        statuses = [self.api.get("/v1/apps/settling-both").status for _ in range(4)]
        self.assertEqual(statuses, [404, 401, 404, 401])
        time.sleep(0.35)
        self.assertEqual(self.api.get("/v1/apps/settling-both").status, 200)

    def test_a_new_machine_is_not_found_nor_listed_then_is(self):
        self.reset(machine_visible_after_ms=300)
        self.create_app("vyx-user-0001")
        machine_id = self.create_machine()["id"]
        for suffix in ("", "/wait?state=started&timeout=1"):
            answer = self.api.get(f"/v1/apps/vyx-user-0001/machines/{machine_id}{suffix}")
            self.assertEqual((answer.status, answer.error), (404, "machine not found"), suffix)
        self.assertEqual(self.api.post(f"/v1/apps/vyx-user-0001/machines/{machine_id}/start").status, 404)
        self.assertEqual(self.api.get("/v1/apps/vyx-user-0001/machines").json(), [])
        time.sleep(0.35)
        self.assertEqual([m["id"] for m in self.api.get("/v1/apps/vyx-user-0001/machines").json()], [machine_id])
        self.assertEqual(self.wait("vyx-user-0001", machine_id).status, 200)

    def test_the_settings_are_checked(self):
        for bad in ({"app_invisible_status": 500}, {"app_visible_after_ms": -1}, {"machine_visible_after_ms": "x"}):
            answer = Api(token=None)
            result = answer.post("/__flysim/reset", dict(BASE_CONFIG, **bad))
            answer.close()
            self.assertEqual(result.status, 400, bad)


class CapacityTests(SimTestCase):
    """Create can fail for lack of capacity (api-reference 3.1): Fly's ErrorResponse with status
    "insufficient_capacity" (spec main.statusCode); nothing is created."""

    def test_a_region_without_capacity_refuses_creates(self):
        self.reset(no_capacity_regions=["sjc", "ams"])
        self.create_app("vyx-user-0001")
        for region in (None, "ams"):
            body = {"config": machine_config()}
            if region:
                body["region"] = region
            answer = self.api.post("/v1/apps/vyx-user-0001/machines", body)
            self.assertEqual(answer.status, 412)
            self.assertEqual(answer.json()["status"], "insufficient_capacity")
            self.assertTrue(answer.json()["error"].startswith("insufficient resources available"))
        self.assertEqual(self.api.get("/v1/apps/vyx-user-0001/machines").json(), [])
        machine = self.create_machine(region="lhr")
        self.assertEqual(machine["region"], "lhr")
        # Run-time change: capacity comes back.
        self.ctl("POST", "config", {"no_capacity_regions": []})
        self.assertEqual(self.create_machine(region="ams")["region"], "ams")


class AmbiguousCreateTests(SimTestCase):
    """A create whose answer is a timeout or a gateway's error may still take effect (api-reference 5, 6):
    the machine lands later."""

    def test_the_machine_lands_after_the_error(self):
        self.reset(create_lands_late_ms=300, create_lands_late_status=503)
        self.create_app("vyx-user-0001")
        answer = self.api.post("/v1/apps/vyx-user-0001/machines",
                               {"config": machine_config(metadata={"pg_fly_user_id": "u-1"})})
        self.assertEqual((answer.status, answer.json()), (503, {"error": "service unavailable"}))
        self.assertEqual(self.api.get("/v1/apps/vyx-user-0001/machines").json(), [])
        time.sleep(0.4)
        machines = self.api.get("/v1/apps/vyx-user-0001/machines?metadata.pg_fly_user_id=u-1").json()
        self.assertEqual(len(machines), 1)
        self.assertEqual(self.wait("vyx-user-0001", machines[0]["id"]).status, 200)

    def test_a_deleted_app_gets_no_late_machine(self):
        self.reset(create_lands_late_ms=200)
        self.create_app("vyx-user-0001")
        self.assertEqual(self.api.post("/v1/apps/vyx-user-0001/machines", {"config": machine_config()}).status, 504)
        self.assertEqual(self.api.delete("/v1/apps/vyx-user-0001").status, 202)
        time.sleep(0.3)
        self.assertNotIn("vyx-user-0001", self.ctl("GET", "state")["apps"])

    def test_the_settings_are_checked(self):
        for bad in ({"create_lands_late_status": 500}, {"create_lands_late_ms": -1}, {"no_capacity_regions": "sjc"}):
            answer = Api(token=None)
            result = answer.post("/__flysim/reset", dict(BASE_CONFIG, **bad))
            answer.close()
            self.assertEqual(result.status, 400, bad)


class NetworkAndIpTests(SimTestCase):
    """Private networks (api-reference 2.1 `network`) and IP assignments (2.6; openapi
    /v1/apps/{app_name}/ip_assignments), and an app's own endpoint reachable only with a service and an IP."""

    def test_an_app_keeps_its_network_and_other_networks_are_unreachable(self):
        self.api.post("/v1/apps", {"name": "net-a", "org_slug": "personal", "network": "net-a"})
        self.api.post("/v1/apps", {"name": "net-b", "org_slug": "personal", "network": "net-b"})
        self.api.post("/v1/apps", {"name": "plain-c", "org_slug": "personal"})
        self.api.post("/v1/apps", {"name": "plain-d", "org_slug": "personal"})
        self.assertEqual(self.api.get("/v1/apps/net-a").json()["network"], "net-a")
        self.assertEqual(self.api.get("/v1/apps/plain-c").json()["network"], "default")
        self.assertEqual(self.ctl("GET", "state")["apps"]["net-b"]["network"], "net-b")
        self.assertFalse(self.ctl("GET", "reachable?from=net-a&to=net-b")["reachable"])
        self.assertFalse(self.ctl("GET", "reachable?from=net-a&to=plain-c")["reachable"])
        self.assertTrue(self.ctl("GET", "reachable?from=plain-c&to=plain-d")["reachable"])
        self.assertTrue(self.ctl("GET", "reachable?from=net-a&to=net-a")["reachable"])
        self.assertEqual(self.ctl_api.get("/__flysim/reachable?from=net-a&to=nope").status, 404)

    def test_assign_list_and_delete(self):
        self.api.post("/v1/apps", {"name": "ips", "org_slug": "personal", "network": "ips"})
        self.assertEqual(self.api.get("/v1/apps/ips/ip_assignments").json(), {"ips": []})
        v4 = self.api.post("/v1/apps/ips/ip_assignments", {"type": "shared_v4", "network": "ips"})
        self.assertEqual(v4.status, 200, v4.body)
        self.assertTrue(v4.json()["shared"])
        self.assertTrue(v4.json()["ip"].startswith("192.0.2."))
        v6 = self.api.post("/v1/apps/ips/ip_assignments", {"type": "v6"}).json()
        self.assertTrue(v6["ip"].startswith("2001:db8:"))
        self.assertFalse(v6["shared"])
        # Every request assigns another address: only listing first keeps a client to one of each.
        self.api.post("/v1/apps/ips/ip_assignments", {"type": "v6"})
        listed = self.api.get("/v1/apps/ips/ip_assignments").json()["ips"]
        self.assertEqual(len(listed), 3)
        self.assertEqual(set(listed[0]), {"ip", "region", "shared", "egress", "service_name", "created_at"})
        self.assertEqual([e["type"] for e in self.ctl("GET", "state")["apps"]["ips"]["ips"]], ["shared_v4", "v6", "v6"])
        self.assertEqual(self.api.delete(f"/v1/apps/ips/ip_assignments/{v6['ip']}").status, 204)
        self.assertEqual(self.api.delete(f"/v1/apps/ips/ip_assignments/{v6['ip']}").status, 404)
        self.assertEqual(len(self.api.get("/v1/apps/ips/ip_assignments").json()["ips"]), 2)
        # Another network than the app's, a type Fly does not know, another org's app.
        self.assertEqual(self.api.post("/v1/apps/ips/ip_assignments", {"type": "v6", "network": "x"}).status, 400)
        self.assertEqual(self.api.post("/v1/apps/ips/ip_assignments", {"type": "v5"}).status, 400)
        self.assertEqual(self.client(OTHER_TOKEN).get("/v1/apps/ips/ip_assignments").status, 403)
        self.assertEqual(self.api.get("/v1/apps/nope/ip_assignments").status, 404)

    def test_health_needs_a_service_and_an_ip_when_configured(self):
        self.reset(health_needs_service_and_ip=True, boot_delay_ms=0)
        service = [{"protocol": "tcp", "internal_port": 8080,
                    "ports": [{"port": 443, "handlers": ["tls", "http"]},
                              {"port": 80, "handlers": ["http"], "force_https": True}],
                    "autostop": "off", "autostart": True, "min_machines_running": 1}]
        checks = {"pg_fly_health": {"type": "http", "port": 8080, "path": "/health", "interval": "15s"}}
        for name, config in (("bare", machine_config()),
                             ("served", machine_config(services=service, checks=checks))):
            self.create_app(name)
            machine = self.create_machine(name, config=config)
            self.wait(name, machine["id"])
        self.assertEqual([c["name"] for c in self.machine("served", machine["id"])["checks"]], ["pg_fly_health"])

        def probe(name):
            api = Api(token=None)
            try:
                return api.get(f"/__flysim/apps/{name}/health").status
            except (OSError, http.client.HTTPException):
                return "unreachable"
            finally:
                api.close()

        self.assertEqual(probe("served"), "unreachable")  # a service, but no IP yet
        for name in ("bare", "served"):
            self.api.post(f"/v1/apps/{name}/ip_assignments", {"type": "shared_v4"})
        self.assertEqual(probe("bare"), "unreachable")    # an IP, but nothing to route to
        self.assertEqual(probe("served"), 200)
        self.reset(boot_delay_ms=0)                        # off by default
        self.create_app("bare")
        machine = self.create_machine("bare")
        self.wait("bare", machine["id"])
        self.assertEqual(probe("bare"), 200)


class SeededAppTests(SimTestCase):
    """The control API seeds an app as the previous system left it: machines with env RUN_MODE/USER_ID and flyctl's
    metadata, none of pg_fly's; the API then serves them like any other."""

    def test_a_seeded_machine_is_listed_without_a_metadata_filter_only(self):
        seeded = self.ctl("POST", "seeded_apps", {"name": "vyx-user-5eed0001", "machines": [
            {"env": {"RUN_MODE": "user_dedicated", "USER_ID": "u-1"}},
            {"env": {"RUN_MODE": "user_dedicated"}, "state": "stopped", "region": "ams"}]})
        self.assertEqual(seeded["org"], "personal")
        first, second = seeded["machines"]
        self.assertEqual((first["state"], second["state"], second["region"]), ("started", "stopped", "ams"))
        self.assertEqual(first["config"]["metadata"], {"fly_platform_version": "v2", "fly_process_group": "app"})
        listed = self.api.get("/v1/apps/vyx-user-5eed0001/machines").json()
        self.assertEqual([m["id"] for m in listed], [first["id"], second["id"]])
        self.assertEqual(listed[0]["config"]["env"]["USER_ID"], "u-1")
        self.assertEqual(self.api.get("/v1/apps/vyx-user-5eed0001/machines?metadata.pg_fly_user_id=u-1").json(), [])
        self.assertEqual(self.api.get("/v1/apps/vyx-user-5eed0001").json()["organization"]["slug"], "personal")
        # The name is taken like any app's, and the machine is updated like any other.
        answer = self.api.post("/v1/apps", {"name": "vyx-user-5eed0001", "org_slug": "personal"})
        self.assertEqual(answer.status, 422)
        config = dict(first["config"], metadata={"pg_fly_user_id": "u-1"})
        self.assertEqual(self.api.post(f"/v1/apps/vyx-user-5eed0001/machines/{first['id']}", {"config": config}).status,
                         200)
        self.assertEqual(self.wait("vyx-user-5eed0001", first["id"]).status, 200)
        self.assertEqual([m["id"] for m in self.api.get(
            "/v1/apps/vyx-user-5eed0001/machines?metadata.pg_fly_user_id=u-1").json()], [first["id"]])

    def test_bad_seeds_are_refused(self):
        self.create_app("vyx-user-5eed0002", api=self.client(OTHER_TOKEN), org="other-org")
        for body in ({"name": "Bad_Name"}, {"name": "vyx-user-5eed0003", "machines": [{"state": "destroyed"}]},
                     {"name": "vyx-user-5eed0003", "machines": [{"guest": {"cpu_kind": "shared", "cpus": 3,
                                                                           "memory_mb": 256}}]},
                     {"name": "vyx-user-5eed0002"}):
            result = self.ctl_api.call("POST", "/__flysim/seeded_apps", body)
            self.assertIn(result.status, (400, 409), body)


class AuthTests(SimTestCase):
    def test_missing_or_invalid_token_is_401_with_flys_body(self):
        self.create_app("authed")
        for api in (self.client(token=None), self.client("wrong-token"), self.client(TOKEN, scheme="Basic")):
            for method, path in (("GET", "/v1/apps/authed"), ("POST", "/v1/apps"), ("GET", "/v1/apps/authed/machines")):
                result = api.call(method, path, {} if method == "POST" else None)
                self.assertEqual(result.status, 401)
                self.assertEqual(result.json(), {"error": "Authenticate: token validation error"})

    def test_accepted_schemes(self):
        self.create_app("schemes")
        for scheme, token in (("Bearer", TOKEN), ("FlyV1", TOKEN), ("Bearer", f"FlyV1 {TOKEN}"),
                              ("FlyV1", "fm2_macaroonpart"), ("Bearer", "fm2_macaroonpart"),
                              ("Bearer", "FlyV1 fm2_macaroonpart")):
            self.assertEqual(self.client(token, scheme=scheme).get("/v1/apps/schemes").status, 200, (scheme, token))

    def test_token_is_bound_to_its_org(self):
        self.create_app("bound")
        other = self.client(OTHER_TOKEN)
        self.assertEqual(other.get("/v1/apps/bound").status, 403)
        self.assertEqual(other.get("/v1/apps/bound/machines").status, 403)
        self.assertEqual(other.post("/v1/apps/bound/secrets", {"values": {"A": "b"}}).status, 403)
        self.assertEqual(other.delete("/v1/apps/bound").status, 403)
        self.assertEqual(other.get("/v1/orgs/personal/machines").status, 403)

    def test_unknown_paths_and_methods(self):
        result = self.api.get("/v1/nope")
        self.assertEqual((result.status, result.body), (404, b"404 page not found\n"))
        result = self.api.call("PUT", "/v1/apps/x")
        self.assertEqual(result.status, 405)
        self.assertEqual(result.headers["Allow"], "GET, DELETE")


class MachineTests(SimTestCase):
    def setUp(self):
        super().setUp()
        self.create_app("vyx-user-0001")

    def test_create_returns_a_machine_then_it_boots(self):
        machine = self.create_machine(region="ams", config=machine_config(metadata={"op": "1"}))
        self.assertRegex(machine["id"], r"^[0-9a-f]{14}$")
        self.assertRegex(machine["instance_id"], r"^01[0-9A-HJKMNP-TV-Z]{24}$")
        self.assertEqual((machine["state"], machine["region"], machine["host_status"]), ("created", "ams", "ok"))
        self.assertEqual(machine["config"]["metadata"], {"op": "1"})
        self.assertEqual(machine["image_ref"]["repository"], "vyx-app")
        self.assertRegex(machine["created_at"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        self.assertEqual(machine["events"][0]["status"], "created")
        waited = self.wait("vyx-user-0001", machine["id"])
        self.assertEqual(waited.status, 200)
        self.assertEqual(waited.json()["state"], "started")
        self.assertEqual(waited.json()["version"], machine["instance_id"])
        got = self.machine("vyx-user-0001", machine["id"])
        self.assertEqual(got["state"], "started")
        self.assertEqual([e["status"] for e in got["events"]], ["started", "starting", "created"])
        self.assertEqual(got["checks"], [{"name": "servicecheck-00-http-8080", "status": "passing",
                                          "output": "Success", "updated_at": got["checks"][0]["updated_at"]}])

    def test_boot_passes_through_starting(self):
        self.reset(boot_delay_ms=1000)
        self.create_app("vyx-user-0001")
        machine_id = self.create_machine()["id"]
        state = "created"
        while state == "created":  # `starting` lasts 500 ms; polling every 20 ms cannot miss it
            time.sleep(0.02)
            state = self.machine("vyx-user-0001", machine_id)["state"]
        self.assertEqual(state, "starting")
        self.assertEqual(self.wait("vyx-user-0001", machine_id).status, 200)

    def test_boot_delay_zero_is_started_at_once(self):
        self.ctl("POST", "config", {"boot_delay_ms": 0})  # changed at run time
        machine = self.create_machine()
        self.assertEqual(machine["state"], "created")
        self.assertEqual(self.machine("vyx-user-0001", machine["id"])["state"], "started")

    def test_checks_follow_configured_services(self):
        config = machine_config(services=[{"protocol": "tcp", "internal_port": 9000,
                                           "checks": [{"type": "tcp", "interval": "15s", "timeout": "2s"}]}],
                                checks={"alive": {"type": "http", "port": 9000, "path": "/health"}})
        machine_id = self.create_machine(config=config)["id"]
        self.wait("vyx-user-0001", machine_id)
        names = [c["name"] for c in self.machine("vyx-user-0001", machine_id)["checks"]]
        self.assertEqual(names, ["servicecheck-00-tcp-9000", "alive"])

    def test_skip_launch_then_start(self):
        machine_id = self.create_machine(skip_launch=True)["id"]
        time.sleep(0.1)
        self.assertEqual(self.machine("vyx-user-0001", machine_id)["state"], "created")
        result = self.api.post(f"/v1/apps/vyx-user-0001/machines/{machine_id}/start")
        self.assertEqual(result.json(), {"previous_state": "created", "migrated": False, "new_host": ""})
        self.assertEqual(self.wait("vyx-user-0001", machine_id).status, 200)
        result = self.api.post(f"/v1/apps/vyx-user-0001/machines/{machine_id}/start")
        self.assertEqual(result.status, 412)
        self.assertIn("unable to start machine from current state: 'started'", result.error)

    def test_stop_and_start(self):
        machine_id = self.create_machine()["id"]
        self.wait("vyx-user-0001", machine_id)
        result = self.api.post(f"/v1/apps/vyx-user-0001/machines/{machine_id}/stop", {"signal": "SIGTERM",
                                                                                     "timeout": "5s"})
        self.assertEqual((result.status, result.json()), (200, {"ok": True}))
        self.assertEqual(self.machine("vyx-user-0001", machine_id)["state"], "stopping")
        self.assertEqual(self.wait("vyx-user-0001", machine_id, "stopped").json()["state"], "stopped")
        self.assertEqual(self.api.post(f"/v1/apps/vyx-user-0001/machines/{machine_id}/stop").status, 200)
        start = self.api.post(f"/v1/apps/vyx-user-0001/machines/{machine_id}/start")
        self.assertEqual(start.json()["previous_state"], "stopped")
        self.assertEqual(self.wait("vyx-user-0001", machine_id).status, 200)

    def test_update_replaces_config_and_version(self):
        machine = self.create_machine()
        self.wait("vyx-user-0001", machine["id"])
        path = f"/v1/apps/vyx-user-0001/machines/{machine['id']}"
        new_config = machine_config(env={"RUN_MODE": "user_dedicated", "USER_ID": "u-2"})
        result = self.api.post(path, {"config": new_config, "current_version": machine["instance_id"]})
        self.assertEqual(result.status, 200, result.body)
        updated = result.json()
        self.assertEqual(updated["state"], "replacing")
        self.assertNotEqual(updated["instance_id"], machine["instance_id"])
        self.assertEqual(updated["config"]["env"]["USER_ID"], "u-2")
        self.assertEqual(self.wait("vyx-user-0001", machine["id"]).json()["version"], updated["instance_id"])
        stale = self.api.post(path, {"config": new_config, "current_version": machine["instance_id"]})
        self.assertEqual(stale.status, 412)
        renamed = self.api.post(path, {"config": new_config, "name": "another-name"})
        self.assertEqual(renamed.status, 400)

    def test_update_of_a_stopped_machine_leaves_it_stopped(self):
        machine_id = self.create_machine(skip_launch=True)["id"]
        result = self.api.post(f"/v1/apps/vyx-user-0001/machines/{machine_id}", {"config": machine_config()})
        self.assertEqual(result.json()["state"], "created")

    def test_delete_needs_force_while_running(self):
        machine_id = self.create_machine()["id"]
        self.wait("vyx-user-0001", machine_id)
        path = f"/v1/apps/vyx-user-0001/machines/{machine_id}"
        refused = self.api.delete(path)
        self.assertEqual(refused.status, 412)
        self.assertTrue(refused.error.startswith("failed_precondition: unable to destroy machine"))
        self.assertEqual(self.api.delete(path + "?force=true").json(), {"ok": True})
        self.assertEqual(self.machine("vyx-user-0001", machine_id)["state"], "destroyed")
        self.assertEqual(self.api.get("/v1/apps/vyx-user-0001/machines").json(), [])
        deleted = self.api.get("/v1/apps/vyx-user-0001/machines?include_deleted=true").json()
        self.assertEqual([m["id"] for m in deleted], [machine_id])
        self.assertEqual(self.api.delete(path + "?force=true").json(), {"error": "machine not found"})
        other = self.create_machine()["id"]
        self.wait("vyx-user-0001", other)
        self.assertEqual(self.api.delete(f"/v1/apps/vyx-user-0001/machines/{other}?kill=true").status, 200)

    def test_delete_of_a_stopped_machine_needs_no_force(self):
        machine_id = self.create_machine(skip_launch=True)["id"]
        self.assertEqual(self.api.delete(f"/v1/apps/vyx-user-0001/machines/{machine_id}").status, 200)

    def test_unknown_machine_is_404(self):
        for method, suffix in (("GET", ""), ("DELETE", ""), ("POST", "/stop"), ("POST", "/start"), ("GET", "/wait")):
            result = self.api.call(method, f"/v1/apps/vyx-user-0001/machines/0123456789abcd{suffix}")
            self.assertEqual((result.status, result.json()), (404, {"error": "machine not found"}), method + suffix)

    def test_list_filters(self):
        first = self.create_machine(config=machine_config(metadata={"user": "a", "op": "1"}))["id"]
        second = self.create_machine(region="ams", skip_launch=True,
                                     config=machine_config(metadata={"user": "a", "op": "2"}))["id"]
        self.wait("vyx-user-0001", first)

        def ids(query):
            result = self.api.get("/v1/apps/vyx-user-0001/machines" + query)
            self.assertEqual(result.status, 200)
            return [m["id"] for m in result.json()]

        self.assertEqual(ids(""), [first, second])
        self.assertEqual(ids("?metadata.user=a"), [first, second])
        self.assertEqual(ids("?metadata.user=a&metadata.op=2"), [second])
        self.assertEqual(ids("?metadata.op=3"), [])
        self.assertEqual(ids("?state=started"), [first])
        self.assertEqual(ids("?state=created,started"), [first, second])
        self.assertEqual(ids("?region=ams"), [second])
        summary = self.api.get("/v1/apps/vyx-user-0001/machines?summary=true").json()[0]
        self.assertNotIn("config", summary)
        self.assertNotIn("checks", summary)

    def test_wait_times_out_with_408(self):
        machine_id = self.create_machine(skip_launch=True)["id"]
        began = time.monotonic()
        result = self.wait("vyx-user-0001", machine_id, timeout=1)
        elapsed = time.monotonic() - began
        self.assertEqual(result.status, 408)
        self.assertTrue(result.error.startswith(f"deadline_exceeded: machine {machine_id} did not reach state "
                                                f"started within 1s"), result.error)
        self.assertGreaterEqual(elapsed, 0.95)
        self.assertLess(elapsed, 2.0)

    def test_wait_blocks_until_the_state_and_does_not_block_others(self):
        self.reset(boot_delay_ms=500)
        self.create_app("vyx-user-0001")
        machine_id = self.create_machine()["id"]
        answers = []
        began = time.monotonic()
        thread = threading.Thread(target=lambda: answers.append(self.wait("vyx-user-0001", machine_id)))
        thread.start()
        time.sleep(0.05)
        other = self.client()
        quick = time.monotonic()
        self.assertEqual(other.get(f"/v1/apps/vyx-user-0001/machines/{machine_id}").status, 200)
        self.assertLess(time.monotonic() - quick, 0.2)
        thread.join(5)
        self.assertEqual(answers[0].status, 200)
        self.assertGreaterEqual(time.monotonic() - began, 0.4)

    def test_wait_accepts_several_states_and_rejects_unknown(self):
        machine_id = self.create_machine(skip_launch=True)["id"]
        base = f"/v1/apps/vyx-user-0001/machines/{machine_id}/wait"
        self.assertEqual(self.api.get(base + "?state=stopped&state=settled&timeout=1").status, 200)
        self.assertEqual(self.api.get(base + "?state=started,settled&timeout=1").status, 200)
        self.assertEqual(self.api.get(base + "?state=sleeping").status, 400)
        self.assertEqual(self.api.get(base + "?timeout=soon").status, 400)

    def test_min_secrets_version(self):
        result = self.api.post("/v1/apps/vyx-user-0001/machines", {"config": machine_config(),
                                                                   "min_secrets_version": 1})
        self.assertEqual(result.status, 400)
        self.assertIn("min_secrets_version 1", result.error)
        version = self.api.post("/v1/apps/vyx-user-0001/secrets", {"values": {"K": "v"}}).json()["version"]
        self.create_machine(min_secrets_version=version)

    def test_control_state_shows_each_machine_min_secrets_version(self):
        first = self.api.post("/v1/apps/vyx-user-0001/secrets", {"values": {"K": "v"}}).json()["version"]
        machine_id = self.create_machine(min_secrets_version=first)["id"]
        # Fly's Machine object has no such field; only the control API shows it.
        self.assertNotIn("min_secrets_version", self.machine("vyx-user-0001", machine_id))
        state = self.ctl("GET", "state")["apps"]["vyx-user-0001"]["machines"][machine_id]
        self.assertEqual(state["min_secrets_version"], first)
        second = self.api.post("/v1/apps/vyx-user-0001/secrets", {"values": {"K": None, "L": "w"}}).json()["version"]
        self.assertEqual(second, first + 1)
        result = self.api.post(f"/v1/apps/vyx-user-0001/machines/{machine_id}",
                               {"config": machine_config(), "min_secrets_version": second})
        self.assertEqual(result.status, 200, result.body)
        state = self.ctl("GET", "state")["apps"]["vyx-user-0001"]
        self.assertEqual(state["machines"][machine_id]["min_secrets_version"], second)
        self.assertEqual(sorted(state["secrets"]["names"]), ["L"])

    def test_guest_sizes_are_checked(self):
        for guest in ({"cpu_kind": "shared", "cpus": 1, "memory_mb": 4096},
                      {"cpu_kind": "shared", "cpus": 1, "memory_mb": 300},
                      {"cpu_kind": "performance", "cpus": 1, "memory_mb": 1024}):
            result = self.api.post("/v1/apps/vyx-user-0001/machines", {"config": machine_config(guest=guest)})
            self.assertEqual(result.status, 400, guest)
            self.assertIn("config.guest", result.error)
        self.create_machine(config=machine_config(guest={"cpu_kind": "performance", "cpus": 2, "memory_mb": 4096}))

    def test_health_flip_and_app_health_endpoint(self):
        machine_id = self.create_machine(config=machine_config(env={"RUN_MODE": "user_dedicated",
                                                                    "USER_ID": "u-77", "TRADER_COUNT": "3"}))["id"]
        self.assertEqual(self.ctl_api.get("/__flysim/apps/vyx-user-0001/health").status, 503)
        self.wait("vyx-user-0001", machine_id)
        health = self.ctl_api.get("/__flysim/apps/vyx-user-0001/health")
        self.assertEqual((health.status, health.json()), (200, {"status": "ok", "run_mode": "user_dedicated",
                                                                "user_id": "u-77", "trader_count": 3}))
        self.ctl("POST", "apps/vyx-user-0001/health", {"checks": "critical"})
        self.assertEqual(self.machine("vyx-user-0001", machine_id)["checks"][0]["status"], "critical")
        self.assertEqual(self.ctl_api.get("/__flysim/apps/vyx-user-0001/health").status, 503)
        self.ctl("POST", "apps/vyx-user-0001/health", {"checks": "passing"})
        self.assertEqual(self.machine("vyx-user-0001", machine_id)["checks"][0]["status"], "passing")
        by_host = self.ctl_api.get("/health", headers={"Host": "vyx-user-0001.fly.dev"})
        self.assertEqual(by_host.json()["user_id"], "u-77")

    def test_checks_pass_after_grace(self):
        self.reset(checks_pass_after_ms=300)
        self.create_app("vyx-user-0001")
        machine_id = self.create_machine()["id"]
        self.wait("vyx-user-0001", machine_id)
        self.assertEqual(self.machine("vyx-user-0001", machine_id)["checks"][0]["status"], "warning")
        time.sleep(0.35)
        self.assertEqual(self.machine("vyx-user-0001", machine_id)["checks"][0]["status"], "passing")

    def test_unhealthy_images_fail_their_checks(self):
        self.reset(unhealthy_images=["registry.fly.io/vyx:bad"])
        self.create_app("vyx-user-0001")
        machine_id = self.create_machine()["id"]
        self.wait("vyx-user-0001", machine_id)
        self.assertEqual(self.machine("vyx-user-0001", machine_id)["checks"][0]["status"], "passing")
        config = self.machine("vyx-user-0001", machine_id)["config"]
        config["image"] = "registry.fly.io/vyx:bad"
        updated = self.api.post(f"/v1/apps/vyx-user-0001/machines/{machine_id}", {"config": config})
        self.assertEqual(updated.status, 200, updated.body)
        self.wait("vyx-user-0001", machine_id)
        self.assertEqual(self.machine("vyx-user-0001", machine_id)["checks"][0]["status"], "critical")
        self.assertEqual(self.ctl_api.get("/__flysim/apps/vyx-user-0001/health").status, 503)

    def test_forced_state_simulates_an_unexpected_stop(self):
        machine_id = self.create_machine()["id"]
        self.wait("vyx-user-0001", machine_id)
        self.ctl("POST", f"machines/vyx-user-0001/{machine_id}/state", {"state": "stopped"})
        self.assertEqual(self.machine("vyx-user-0001", machine_id)["state"], "stopped")
        self.assertEqual(self.ctl_api.get("/__flysim/apps/vyx-user-0001/health").status, 503)

    def test_org_machine_listing(self):
        self.create_app("vyx-user-0002")
        self.create_app("theirs", api=self.client(OTHER_TOKEN), org="other-org")
        self.create_machine("theirs", api=self.client(OTHER_TOKEN))
        made = [self.create_machine(app)["id"] for app in ("vyx-user-0001", "vyx-user-0002", "vyx-user-0001")]
        listing = self.api.get("/v1/orgs/personal/machines").json()
        self.assertEqual(sorted(m["id"] for m in listing["machines"]), sorted(made))
        self.assertEqual({m["app_name"] for m in listing["machines"]}, {"vyx-user-0001", "vyx-user-0002"})
        self.assertEqual(listing["next_cursor"], "")
        page = self.api.get("/v1/orgs/personal/machines?limit=2").json()
        self.assertEqual(len(page["machines"]), 2)
        rest = self.api.get(f"/v1/orgs/personal/machines?limit=2&cursor={page['next_cursor']}").json()
        self.assertEqual(len(rest["machines"]), 1)
        self.assertEqual(sorted(m["id"] for m in page["machines"] + rest["machines"]), sorted(made))
        self.assertEqual(self.api.get("/v1/orgs/other-org/machines").status, 403)


class SecretTests(SimTestCase):
    def setUp(self):
        super().setUp()
        self.create_app("vyx-user-0001")

    def test_set_list_unset_and_versions(self):
        first = self.api.post("/v1/apps/vyx-user-0001/secrets", {"values": {"API_KEY": "s3cret-1", "OTHER": "x"}})
        self.assertEqual(first.status, 200)
        body = first.json()
        self.assertEqual((body["version"], body["Version"]), (1, 1))
        names = {s["name"]: s for s in body["secrets"]}
        self.assertEqual(set(names), {"API_KEY", "OTHER"})
        self.assertNotIn("value", names["API_KEY"])
        self.assertEqual(len(names["API_KEY"]["digest"]), 64)
        second = self.api.post("/v1/apps/vyx-user-0001/secrets", {"values": {"OTHER": None}}).json()
        self.assertEqual(second["version"], 2)
        self.assertEqual([s["name"] for s in second["secrets"]], ["API_KEY"])
        listed = self.api.get("/v1/apps/vyx-user-0001/secrets").json()
        self.assertEqual([s["name"] for s in listed["secrets"]], ["API_KEY"])
        self.assertNotIn("s3cret-1", json.dumps(listed))
        shown = self.api.get("/v1/apps/vyx-user-0001/secrets?show_secrets=true").json()
        self.assertEqual(shown["secrets"][0]["value"], "s3cret-1")

    def test_values_only_via_reveal(self):
        self.api.post("/v1/apps/vyx-user-0001/secrets", {"values": {"API_KEY": "s3cret-2"}})
        state_text = json.dumps(self.ctl("GET", "state"))
        self.assertNotIn("s3cret-2", state_text)
        self.assertIn("API_KEY", state_text)
        hidden = self.ctl("GET", "secrets/vyx-user-0001")
        self.assertNotEqual(hidden["secrets"]["API_KEY"], "s3cret-2")
        revealed = self.ctl("GET", "secrets/vyx-user-0001?reveal=1")
        self.assertEqual((revealed["secrets"], revealed["version"]), ({"API_KEY": "s3cret-2"}, 1))

    def test_bad_secret_bodies(self):
        for body in ({"values": {"bad-name": "x"}}, {"values": {"K": 5}}, {"values": ["K"]}, {}):
            self.assertEqual(self.api.post("/v1/apps/vyx-user-0001/secrets", body).status, 400, body)


class StrictnessTests(SimTestCase):
    def setUp(self):
        super().setUp()
        self.create_app("vyx-user-0001")

    def assert_rejected(self, path, body, *fragments, raw=None):
        result = self.api.post(path, body, raw=raw)
        self.assertEqual(result.status, 400, result.body)
        for fragment in fragments:
            self.assertIn(fragment, result.error)

    def test_unknown_fields(self):
        path = "/v1/apps/vyx-user-0001/machines"
        self.assert_rejected(path, {"config": machine_config(), "regoin": "sjc"}, 'unknown field "regoin"')
        self.assert_rejected(path, {"config": machine_config(enviroment={})}, 'unknown field "enviroment" in config')
        guest = {"cpu_kind": "shared", "cpus": 1, "memory_mb": 256, "ram": 1}
        self.assert_rejected(path, {"config": machine_config(guest=guest)}, 'unknown field "ram" in config.guest')
        self.assert_rejected("/v1/apps", {"name": "x-app", "org_slug": "personal", "org": "personal"},
                             'unknown field "org"')

    def test_wrong_types(self):
        path = "/v1/apps/vyx-user-0001/machines"
        guest = {"cpu_kind": "shared", "cpus": "1", "memory_mb": 256}
        self.assert_rejected(path, {"config": machine_config(guest=guest)}, '"config.guest.cpus" must be integer')
        self.assert_rejected(path, {"config": machine_config(env={"N": 1})}, '"config.env.N" must be string')
        self.assert_rejected(path, {"config": machine_config(), "skip_launch": "yes"}, '"skip_launch" must be boolean')
        self.assert_rejected(path, {"config": machine_config(services=[{"internal_port": 8080.5}])},
                             '"config.services[0].internal_port" must be integer')
        self.assert_rejected(path, {"config": machine_config(restart={"policy": "sometimes"})},
                             '"config.restart.policy" must be one of')
        self.assert_rejected(path, ["config"], "must be object")

    def test_missing_required_fields(self):
        path = "/v1/apps/vyx-user-0001/machines"
        self.assert_rejected(path, {"region": "sjc"}, 'missing required field "config"')
        self.assert_rejected(path, {"config": {"env": {}}}, 'missing required field "config.image"')
        self.assert_rejected("/v1/apps", {"name": "x-app"}, 'missing required field "org_slug"')
        self.assert_rejected("/v1/apps", {"org_slug": "personal"}, 'missing required field "name"')
        self.assert_rejected(path, None, "JSON object is required")

    def test_invalid_json(self):
        self.assert_rejected("/v1/apps/vyx-user-0001/machines", None, "not valid JSON", raw="{config: nope")

    def test_stop_body_is_optional_but_checked(self):
        machine_id = self.create_machine()["id"]
        path = f"/v1/apps/vyx-user-0001/machines/{machine_id}/stop"
        self.assert_rejected(path, {"signal": "SIGFOO"}, '"signal" must be one of')
        self.assert_rejected(path, {"timeout": 10}, '"timeout" must be string')
        self.assertEqual(self.api.post(path).status, 200)


class SchemaConformanceTests(unittest.TestCase):
    """Every field the simulator accepts exists in the official spec, with the same type."""

    @classmethod
    def setUpClass(cls):
        cls.spec = None
        if os.path.exists(OPENAPI_PATH):
            with open(OPENAPI_PATH, encoding="utf-8") as handle:
                cls.spec = json.load(handle)

    def setUp(self):
        if self.spec is None:
            reason = f"openapi.json not found at {OPENAPI_PATH}; schema conformance not checked"
            if os.environ.get("CI") == "true":
                self.fail(f"{reason} (CI=true: a missing input fails the run instead of skipping)")
            self.skipTest(reason)
        self.schemas = self.spec["components"]["schemas"]

    def resolve(self, node):
        """(schema name or None, schema) after following $ref and single-element allOf."""
        name = None
        while True:
            if "$ref" in node:
                name = node["$ref"].rsplit("/", 1)[1]
                node = self.schemas[name]
            elif len(node.get("allOf", ())) == 1:
                node = node["allOf"][0]
            else:
                return name, node

    def compare(self, ours, node, where, owner, problems):
        name, node = self.resolve(node)
        S = flysim_schemas
        if isinstance(ours, S.Obj):
            if name is not None and name != ours.spec_name:
                problems.append(f"{where}: simulator calls it {ours.spec_name}, spec uses {name}")
            props = node.get("properties", {})
            for field, sub in ours.props.items():
                if field in props:
                    self.compare(sub, props[field], f"{where}.{field}", (ours.spec_name, field), problems)
                elif (ours.spec_name, field) not in S.DOCUMENTED_EXTRAS:
                    problems.append(f"{where}.{field}: not in spec schema {ours.spec_name}")
        elif isinstance(ours, S.MapOf):
            if node.get("type") != "object" or "additionalProperties" not in node:
                problems.append(f"{where}: spec has no map here ({node.get('type')})")
            else:
                self.compare(ours.value, node["additionalProperties"], where + ".*", owner, problems)
        elif isinstance(ours, S.ArrayOf):
            if node.get("type") != "array":
                problems.append(f"{where}: spec type {node.get('type')}, simulator array")
            else:
                self.compare(ours.item, node["items"], where + "[]", owner, problems)
        elif isinstance(ours, S.Opaque):
            spec_type = node.get("type", "object" if "properties" in node else None)
            if spec_type != ours.kind:
                problems.append(f"{where}: spec type {spec_type}, simulator {ours.kind}")
        else:
            spec_type = node.get("type")
            if spec_type not in ours.types:
                problems.append(f"{where}: spec type {spec_type}, simulator {ours.types}")
            for extra in set(ours.types) - {spec_type}:
                if owner + (extra,) not in S.DOCUMENTED_EXTRAS:
                    problems.append(f"{where}: type {extra} accepted but not in spec")
            if ours.enum and node.get("enum") and not set(ours.enum) <= set(node["enum"]):
                problems.append(f"{where}: enum {ours.enum} not within spec {node['enum']}")

    def test_request_schemas_match_the_spec(self):
        problems = []
        for endpoint, schema in flysim_schemas.REQUEST_SCHEMAS.items():
            self.assertIn(schema.spec_name, self.schemas, endpoint)
            self.compare(schema, {"$ref": f"#/components/schemas/{schema.spec_name}"}, schema.spec_name,
                         (schema.spec_name,), problems)
        self.assertEqual(problems, [])

    def test_routes_exist_in_the_spec(self):
        for shape, methods in flysim.ROUTES.items():
            names = iter(("{org_slug}" if shape[0] == "orgs" else "{app_name}",
                          "{ip}" if "ip_assignments" in shape else "{machine_id}"))
            path = "/v1/" + "/".join(next(names) if seg == "*" else seg for seg in shape)
            self.assertIn(path, self.spec["paths"])
            for method in methods:
                self.assertIn(method.lower(), self.spec["paths"][path], path)

    def test_response_fields_exist_in_the_spec(self):
        server, port = flysim.start_server(dict(BASE_CONFIG, boot_delay_ms=0))
        try:
            api = Api(port=port)
            api.post("/v1/apps", {"name": "conform", "org_slug": "personal"})
            secrets = api.post("/v1/apps/conform/secrets", {"values": {"K": "v"}}).json()
            created = api.post("/v1/apps/conform/machines", {"config": machine_config()}).json()
            machine = api.get(f"/v1/apps/conform/machines/{created['id']}").json()
            samples = {
                "App": api.get("/v1/apps/conform").json(),
                "ListAppsResponse": api.get("/v1/apps?org_slug=personal").json(),
                "Machine": machine,
                "CheckStatus": machine["checks"][0],
                "MachineEvent": machine["events"][0],
                "ImageRef": machine["image_ref"],
                "WaitMachineResponse": api.get(f"/v1/apps/conform/machines/{created['id']}/wait").json(),
                "AppSecretsUpdateResp": secrets,
                "AppSecret": secrets["secrets"][0],
                "OrgMachinesResponse": api.get("/v1/orgs/personal/machines").json(),
                "OrgMachine": api.get("/v1/orgs/personal/machines").json()["machines"][0],
                "ErrorResponse": api.get("/v1/apps/nope").json(),
                "AssignIPResponse": api.post("/v1/apps/conform/ip_assignments", {"type": "v6"}).json(),
                "listIPAssignmentsResponse": api.get("/v1/apps/conform/ip_assignments").json(),
                "IPAssignment": api.get("/v1/apps/conform/ip_assignments").json()["ips"][0],
            }
            for name, sample in samples.items():
                allowed = set(self.schemas[name]["properties"])
                self.assertLessEqual(set(sample), allowed, name)
            api.close()
        finally:
            server.shutdown()


class RateLimitTests(SimTestCase):
    config = {"rate_limits": {"mode": "fly"}}

    def test_flys_documented_limit_one_per_second_burst_three(self):
        answers = [self.api.post("/v1/apps", {"name": f"burst-{i}", "org_slug": "personal"}) for i in range(4)]
        self.assertEqual([a.status for a in answers], [201, 201, 201, 429])
        self.assertEqual(answers[3].json(), {"error": "rate limit exceeded"})
        self.assertEqual(answers[3].headers["Retry-After"], "1")
        time.sleep(1.05)
        self.assertEqual(self.api.post("/v1/apps", {"name": "burst-4", "org_slug": "personal"}).status, 201)
        stats = self.ctl("GET", "stats")
        self.assertEqual(stats["rate_limited"], 1)
        self.assertEqual(stats["by_endpoint"]["create_app"]["by_status"]["429"], 1)

    def test_get_machine_five_per_second_burst_ten_per_machine(self):
        self.reset(rate_limits={"mode": "custom", "actions": {"create_app": None, "create_machine": None}})
        self.create_app("limited")
        first, second = (self.create_machine("limited", skip_launch=True)["id"] for _ in range(2))
        statuses = [self.api.get(f"/v1/apps/limited/machines/{first}").status for _ in range(11)]
        self.assertEqual(statuses, [200] * 10 + [429])
        self.assertEqual(self.api.get(f"/v1/apps/limited/machines/{second}").status, 200)
        time.sleep(0.25)  # 5/s refills one request in 200 ms
        self.assertEqual(self.api.get(f"/v1/apps/limited/machines/{first}").status, 200)

    def test_app_scoped_actions_are_counted_per_app(self):
        self.reset(rate_limits={"mode": "custom", "actions": {"create_app": None}})
        for name in ("app-a", "app-b"):
            self.create_app(name)
        statuses = [self.api.post("/v1/apps/app-a/secrets", {"values": {"K": str(i)}}).status for i in range(4)]
        self.assertEqual(statuses, [200, 200, 200, 429])
        self.assertEqual(self.api.post("/v1/apps/app-b/secrets", {"values": {"K": "x"}}).status, 200)

    def test_app_deletes_are_limited_to_one_hundred_per_minute(self):
        self.reset(rate_limits={"mode": "custom", "actions": {"create_app": None}})
        for index in range(101):
            self.create_app(f"del-{index}")
        statuses = [self.api.delete(f"/v1/apps/del-{index}").status for index in range(101)]
        self.assertEqual(statuses, [202] * 100 + [429])

    def test_custom_limits_and_no_retry_after(self):
        self.reset(rate_limits={"mode": "custom", "retry_after": False,
                                "actions": {"get_app": {"rate": 0.5, "burst": 2}}})
        self.create_app("custom")
        answers = [self.api.get("/v1/apps/custom") for _ in range(3)]
        self.assertEqual([a.status for a in answers], [200, 200, 429])
        self.assertIsNone(answers[2].headers["Retry-After"])

    def test_off_never_limits(self):
        self.reset(rate_limits={"mode": "off"})
        self.create_app("free-for-all")
        self.assertEqual({self.api.get("/v1/apps/free-for-all").status for _ in range(30)}, {200})

    def test_retry_after_reflects_the_refill_time(self):
        self.reset(rate_limits={"mode": "custom", "actions": {"get_app": {"rate": 0.25, "burst": 1}}})
        self.create_app("slow-refill")
        self.api.get("/v1/apps/slow-refill")
        self.assertEqual(self.api.get("/v1/apps/slow-refill").headers["Retry-After"], "4")


class FaultTests(SimTestCase):
    def setUp(self):
        super().setUp()
        self.create_app("vyx-user-0001")

    def post_machine(self, api=None):
        return (api or self.api).post("/v1/apps/vyx-user-0001/machines", {"config": machine_config()})

    def test_nth_call_answers_503(self):
        self.set_faults({"endpoint": "create_machine", "nth": [2], "kind": "status", "status": 503})
        statuses = [self.post_machine() for _ in range(3)]
        self.assertEqual([r.status for r in statuses], [200, 503, 200])
        self.assertEqual(statuses[1].json(), {"error": "service unavailable"})
        self.assertEqual(len(self.api.get("/v1/apps/vyx-user-0001/machines").json()), 2)
        rule = self.ctl("GET", "state")["faults"][0]
        self.assertEqual((rule["calls"], rule["fired"]), (3, 1))
        self.assertEqual([e["fault"] for e in self.requests_log(endpoint="create_machine")], [None, "status", None])

    def test_status_with_custom_body(self):
        self.set_faults({"endpoint": "create_machine", "always": True, "kind": "status", "status": 412,
                         "body": {"error": "insufficient capacity", "status": "insufficient_capacity"}})
        result = self.post_machine()
        self.assertEqual((result.status, result.json()["status"]), (412, "insufficient_capacity"))
        self.set_faults({"endpoint": "create_machine", "always": True, "kind": "status", "status": 502,
                         "body": "Bad Gateway", "headers": {"Via": "1.1 fly.io"}})
        result = self.post_machine()
        self.assertEqual((result.status, result.body, result.headers["Via"]), (502, b"Bad Gateway", "1.1 fly.io"))
        self.assertTrue(result.headers["Content-Type"].startswith("text/plain"))

    def test_408_after_the_machine_was_created(self):
        self.set_faults({"endpoint": "create_machine", "nth": 1, "kind": "status_after", "status": 408})
        body = {"config": machine_config(metadata={"pg_fly_op": "op-42"})}
        result = self.api.post("/v1/apps/vyx-user-0001/machines", body)
        self.assertEqual(result.status, 408)
        self.assertTrue(result.error.startswith("deadline_exceeded"))
        found = self.api.get("/v1/apps/vyx-user-0001/machines?metadata.pg_fly_op=op-42").json()
        self.assertEqual(len(found), 1)

    def test_connection_reset(self):
        self.set_faults({"endpoint": "get_app", "nth": [1], "kind": "reset"})
        with self.assertRaises((ConnectionError, http.client.HTTPException)):
            self.api.get("/v1/apps/vyx-user-0001")
        self.assertEqual(self.client().get("/v1/apps/vyx-user-0001").status, 200)
        entry = self.requests_log(endpoint="get_app")[0]
        self.assertEqual((entry["status"], entry["fault"]), (None, "reset"))

    def test_hang_until_the_client_gives_up_without_blocking_others(self):
        self.set_faults({"endpoint": "get_app", "nth": [1], "kind": "hang", "hang_s": 3})
        hanging = self.client(timeout=0.5)
        began = time.monotonic()
        with self.assertRaises(TimeoutError):
            hanging.get("/v1/apps/vyx-user-0001")
        self.assertGreaterEqual(time.monotonic() - began, 0.45)
        self.assertEqual(self.client().get("/v1/apps/vyx-user-0001").status, 200)
        self.assertEqual(self.requests_log(endpoint="get_app")[0]["fault"], "hang")

    def test_malformed_json(self):
        self.set_faults({"endpoint": "create_machine", "nth": [1], "kind": "malformed_json"})
        result = self.post_machine()
        self.assertEqual(result.status, 200)
        self.assertEqual(result.headers["Content-Type"], "application/json")
        with self.assertRaises(ValueError):
            result.json()
        # The action itself happened (perform defaults to true for malformed_json).
        self.assertEqual(len(self.api.get("/v1/apps/vyx-user-0001/machines").json()), 1)

    def test_html_500(self):
        self.set_faults({"endpoint": "*", "nth": [1], "kind": "html_500"})
        result = self.api.get("/v1/apps/vyx-user-0001")
        self.assertEqual(result.status, 500)
        self.assertTrue(result.headers["Content-Type"].startswith("text/html"))
        self.assertTrue(result.body.startswith(b"<!DOCTYPE html>"))

    def test_rate_limit_fault_with_retry_after(self):
        self.set_faults({"endpoint": "list_machines", "always": True, "times": 2, "kind": "rate_limit",
                         "retry_after": 7})
        answers = [self.api.get("/v1/apps/vyx-user-0001/machines") for _ in range(3)]
        self.assertEqual([a.status for a in answers], [429, 429, 200])
        self.assertEqual(answers[0].headers["Retry-After"], "7")

    def test_latency_fault_and_per_endpoint_latency(self):
        self.set_faults({"endpoint": "get_app", "always": True, "kind": "latency", "delay_ms": 200})
        began = time.monotonic()
        self.assertEqual(self.api.get("/v1/apps/vyx-user-0001").status, 200)
        self.assertGreaterEqual(time.monotonic() - began, 0.19)
        self.set_faults()
        self.ctl("POST", "config", {"latency": {"list_machines": {"fixed_ms": 300, "jitter_ms": 0}}})
        answers = []
        began = time.monotonic()
        slow = threading.Thread(target=lambda: answers.append(self.client().get("/v1/apps/vyx-user-0001/machines")))
        slow.start()
        time.sleep(0.05)
        self.assertEqual(self.api.get("/v1/apps/vyx-user-0001").status, 200)
        self.assertLess(time.monotonic() - began, 0.25)  # the slow call does not block this one
        slow.join(5)
        self.assertGreaterEqual(time.monotonic() - began, 0.29)
        self.assertEqual(self.requests_log(endpoint="list_machines")[0]["latency_ms"], 300)

    def test_matchers_app_and_path_regex(self):
        self.create_app("vyx-user-0002")
        self.set_faults({"app": "vyx-user-0002", "always": True, "kind": "status", "status": 502},
                        {"path_regex": "/secrets$", "method": "GET", "always": True, "kind": "status", "status": 504})
        self.assertEqual(self.api.get("/v1/apps/vyx-user-0001").status, 200)
        self.assertEqual(self.api.get("/v1/apps/vyx-user-0002").status, 502)
        self.assertEqual(self.api.get("/v1/apps/vyx-user-0001/secrets").status, 504)
        self.assertEqual(self.api.post("/v1/apps/vyx-user-0001/secrets", {"values": {}}).status, 200)

    def test_probability_fires_sometimes(self):
        self.set_faults({"endpoint": "get_app", "probability": 0.5, "kind": "status", "status": 503})
        statuses = [self.api.get("/v1/apps/vyx-user-0001").status for _ in range(40)]
        self.assertTrue(5 < statuses.count(503) < 35, statuses)

    def test_faults_from_start_up_config(self):
        self.reset(faults=[{"endpoint": "create_app", "nth": [1], "kind": "status", "status": 500}])
        self.assertEqual(self.api.post("/v1/apps", {"name": "first-try", "org_slug": "personal"}).status, 500)
        self.assertEqual(self.api.post("/v1/apps", {"name": "first-try", "org_slug": "personal"}).status, 201)

    def test_bad_fault_config_is_rejected_with_the_reason(self):
        for rule, fragment in (({"kind": "explode"}, "kind must be one of"),
                               ({"kind": "status"}, "status must be an HTTP status code"),
                               ({"kind": "reset", "endpoint": "create_machin"}, "unknown endpoint"),
                               ({"kind": "reset", "nth": 0}, "nth must be"),
                               ({"kind": "reset", "always": True, "nth": [1]}, "only one of")):
            result = self.ctl_api.post("/__flysim/config", {"faults": [rule]})
            self.assertEqual(result.status, 400, rule)
            self.assertIn(fragment, result.error)
        self.assertEqual(self.ctl_api.post("/__flysim/config", {"colour": 1}).status, 400)


class HostileAnswerTests(SimTestCase):
    """Fault kinds that answer like a broken proxy or a malicious endpoint would."""

    def setUp(self):
        super().setUp()
        self.create_app("vyx-user-0001")

    def raw_get(self, path, read_limit=None, timeout=10):
        """The head and (up to read_limit bytes of) the body of one GET, read from a plain socket."""
        sock = socket.create_connection(("127.0.0.1", SERVER.port), timeout=timeout)
        self.addCleanup(sock.close)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        return sock, head.decode("latin-1"), body

    def test_huge_body_with_and_without_content_length(self):
        size = 3 * 1024 * 1024 + 7
        self.set_faults({"endpoint": "get_app", "nth": [1], "kind": "huge_body", "bytes": size},
                        {"endpoint": "get_app", "nth": [2], "kind": "huge_body", "bytes": size, "chunked": True})
        declared = self.api.get("/v1/apps/vyx-user-0001")
        self.assertEqual((declared.status, len(declared.body)), (200, size))
        self.assertEqual(declared.headers["Content-Length"], str(size))
        self.assertEqual(declared.json()["id"], "flysim-huge")
        chunked = self.api.get("/v1/apps/vyx-user-0001")
        self.assertEqual(chunked.headers["Transfer-Encoding"], "chunked")
        self.assertIsNone(chunked.headers["Content-Length"])
        self.assertEqual(chunked.body, declared.body)
        # The connection stays usable, and the fault is logged with the status that went out.
        self.assertEqual(self.api.get("/v1/apps/vyx-user-0001").json()["name"], "vyx-user-0001")
        self.assertEqual([(e["fault"], e["status"]) for e in self.requests_log(endpoint="get_app")],
                         [("huge_body", 200), ("huge_body", 200), (None, 200)])

    def test_a_client_that_stops_reading_a_50_mb_answer_holds_nothing_up(self):
        self.set_faults({"endpoint": "get_app", "nth": [1], "kind": "huge_body"})
        before = self.ctl("GET", "stats")["open_connections"]
        sock, head, _ = self.raw_get("/v1/apps/vyx-user-0001")
        self.assertIn(f"Content-Length: {50 * 1024 * 1024}", head)
        time.sleep(0.2)  # the simulator has filled the socket buffers and waits
        other = Api()
        self.assertEqual(other.get("/v1/apps/vyx-user-0001").status, 200)
        other.close()
        sock.close()
        deadline = time.monotonic() + 5
        while self.ctl("GET", "stats")["open_connections"] > before and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(self.ctl("GET", "stats")["open_connections"], before)

    def test_deeply_nested_json(self):
        self.set_faults({"endpoint": "list_machines", "nth": [1], "kind": "deep_json"},
                        {"endpoint": "list_machines", "nth": [2], "kind": "deep_json", "depth": 3, "status": 500})
        result = self.api.get("/v1/apps/vyx-user-0001/machines")
        self.assertEqual(result.status, 200)
        self.assertEqual(result.body, b"[" * 100000 + b"]" * 100000)
        result = self.api.get("/v1/apps/vyx-user-0001/machines")
        self.assertEqual((result.status, result.body), (500, b"[[[]]]"))

    def test_invalid_utf8_inside_the_real_answer(self):
        self.set_faults({"endpoint": ["get_app", "list_machines"], "always": True, "kind": "invalid_utf8"})
        for path, expected in (("/v1/apps/vyx-user-0001", {"name": "vyx-user-0001"}),
                               ("/v1/apps/vyx-user-0001/machines", [])):
            result = self.api.get(path)
            self.assertEqual(result.status, 200)
            self.assertIn(flysim_policy.INVALID_UTF8, result.body)
            with self.assertRaises(UnicodeDecodeError):
                result.body.decode("utf-8")
            repaired = json.loads(result.body.replace(flysim_policy.INVALID_UTF8, b"x"))
            if isinstance(expected, dict):
                self.assertEqual(repaired["name"], expected["name"])
                self.assertEqual(repaired["flysim_note"], "x")
            else:
                self.assertEqual(repaired, ["x"])

    def test_wrong_types(self):
        machine = self.create_machine()
        path = "/v1/apps/vyx-user-0001/machines"
        cases = {
            "string_for_object": lambda listed: isinstance(listed[0], str)
            and json.loads(listed[0])["id"] == machine["id"],
            "array_for_string": lambda listed: listed[0]["id"] == [machine["id"]] and listed[0]["state"][0] in
            ("created", "starting", "started"),
            "null_ids": lambda listed: listed[0]["id"] is None and listed[0]["config"]["image"] == IMAGE,
            "number_ids": lambda listed: listed[0]["id"] == 1234567890123,
        }
        for mutation, check in cases.items():
            with self.subTest(mutation=mutation):
                self.set_faults({"endpoint": "list_machines", "always": True, "kind": "wrong_types",
                                 "mutation": mutation})
                listed = self.api.get(path).json()
                self.assertEqual(len(listed), 1)
                self.assertTrue(check(listed), listed)
        self.set_faults({"endpoint": "get_app", "always": True, "kind": "wrong_types", "mutation": "string_for_object"})
        self.assertIsInstance(self.api.get("/v1/apps/vyx-user-0001").json()["organization"], str)

    def test_redirect_to_another_host(self):
        target = "http://127.0.0.1:9/v1/apps"
        self.set_faults({"endpoint": "create_app", "always": True, "kind": "redirect", "location": target},
                        {"endpoint": "get_app", "always": True, "kind": "redirect", "location": target, "status": 307})
        result = self.api.post("/v1/apps", {"name": "redirected", "org_slug": "personal"})
        self.assertEqual((result.status, result.headers["Location"]), (302, target))
        self.assertEqual(self.api.get("/v1/apps/vyx-user-0001").status, 307)
        self.set_faults()
        # Nothing was created behind the redirect (perform defaults to false).
        self.assertEqual(self.api.get("/v1/apps/redirected").status, 404)

    def test_slow_body_drips_the_real_answer(self):
        self.set_faults({"endpoint": "get_app", "nth": [1], "kind": "slow_body", "drip_bytes": 40, "drip_ms": 50},
                        {"endpoint": "get_app", "nth": [2], "kind": "slow_body", "drip_ms": 400})
        began = time.monotonic()
        result = self.api.get("/v1/apps/vyx-user-0001")
        pieces = -(-len(result.body) // 40)
        self.assertGreaterEqual(time.monotonic() - began, (pieces - 1) * 0.05 * 0.9)
        self.assertEqual(result.json()["name"], "vyx-user-0001")
        # A client with a short timeout gives up; others are served meanwhile.
        with self.assertRaises(TimeoutError):
            self.client(timeout=0.12).get("/v1/apps/vyx-user-0001")
        self.assertEqual(self.client().get("/v1/apps/vyx-user-0001").status, 200)

    def test_wrong_content_type_on_the_real_answer(self):
        self.set_faults({"endpoint": "get_app", "nth": [1], "kind": "content_type", "content_type": "text/html"})
        result = self.api.get("/v1/apps/vyx-user-0001")
        self.assertEqual((result.status, result.headers["Content-Type"]), (200, "text/html"))
        self.assertEqual(result.json()["name"], "vyx-user-0001")

    def test_bad_hostile_rules_are_rejected_with_the_reason(self):
        for rule, fragment in (({"kind": "wrong_types"}, "mutation must be one of"),
                               ({"kind": "wrong_types", "mutation": "flip"}, "mutation must be one of"),
                               ({"kind": "redirect"}, "location must be"),
                               ({"kind": "redirect", "location": "http://x/", "status": 200}, "must be a 3xx"),
                               ({"kind": "huge_body", "bytes": 0}, "bytes must be an integer"),
                               ({"kind": "deep_json", "depth": "deep"}, "depth must be an integer"),
                               ({"kind": "slow_body", "drip_ms": -1}, "drip_ms must be"),
                               ({"kind": "content_type"}, "content_type must be a string")):
            result = self.ctl_api.post("/__flysim/config", {"faults": [rule]})
            self.assertEqual(result.status, 400, rule)
            self.assertIn(fragment, result.error)


class DeterminismTests(SimTestCase):
    def run_sequence(self, seed):
        self.reset(seed=seed, latency={"list_machines": {"fixed_ms": 0, "jitter_ms": 4}},
                   faults=[{"endpoint": "get_app", "probability": 0.5, "kind": "status", "status": 503}])
        api = self.client()
        app = self.create_app("det-app", api=api)
        machines = [self.create_machine("det-app", api=api, skip_launch=True) for _ in range(3)]
        update = api.post(f"/v1/apps/det-app/machines/{machines[0]['id']}", {"config": machine_config()}).json()
        statuses = [api.get("/v1/apps/det-app").status for _ in range(16)]
        for _ in range(5):
            api.get("/v1/apps/det-app/machines")
        jitter = [e["latency_ms"] for e in self.requests_log(endpoint="list_machines")]
        api.close()
        keys = ("id", "name", "instance_id", "private_ip")
        return {"app": app["id"], "machines": [[m[k] for k in keys] for m in machines],
                "update": update["instance_id"], "events": [e["id"] for e in update["events"]],
                "faults": statuses, "jitter": jitter}

    def test_same_seed_same_everything(self):
        first = self.run_sequence(7)
        second = self.run_sequence(7)
        self.assertEqual(first, second)
        self.assertIn(503, first["faults"])
        self.assertIn(200, first["faults"])
        self.assertEqual(len(set(first["jitter"])), 5)
        other = self.run_sequence(8)
        self.assertNotEqual(first["app"], other["app"])
        self.assertNotEqual(first["machines"], other["machines"])


class RequestLogTests(SimTestCase):
    def test_entries_record_what_was_sent(self):
        self.create_app("logged")
        self.api.get("/v1/apps/logged/machines?metadata.user=a&state=started")
        entries = self.requests_log()
        self.assertEqual([e["endpoint"] for e in entries], ["create_app", "list_machines"])
        create, listing = entries
        self.assertEqual(create["body"], {"name": "logged", "app_name": "logged", "org_slug": "personal"})
        self.assertEqual((create["method"], create["path"], create["status"]), ("POST", "/v1/apps", 201))
        self.assertEqual(listing["query"], {"metadata.user": "a", "state": "started"})
        self.assertEqual(listing["headers"]["authorization"], "Bearer <redacted>")
        self.assertEqual(listing["headers"]["content-type"] if "content-type" in listing["headers"] else None, None)
        for key in ("seq", "t_mono", "t_wall", "duration_ms", "conn", "latency_ms", "fault"):
            self.assertIn(key, listing)
        self.assertEqual(create["conn"], listing["conn"])  # keep-alive: one connection
        self.assertGreater(listing["seq"], create["seq"])

    def test_tokens_and_secret_values_never_reach_the_log(self):
        self.create_app("leaky")
        for scheme, token in (("Bearer", TOKEN), ("FlyV1", TOKEN), ("Bearer", "FlyV1 fm2_macaroonpart")):
            self.client(token, scheme=scheme).post("/v1/apps/leaky/secrets", {"values": {"DB_PASSWORD": "hunter2-value"}})
        self.client("not-a-valid-token").get("/v1/apps/leaky")
        log_text = self.ctl_api.get("/__flysim/requests").body.decode()
        for needle in (TOKEN, "fm2_macaroonpart", "not-a-valid-token", "hunter2-value"):
            self.assertNotIn(needle, log_text)
        for text in (self.ctl_api.get("/__flysim/state").body, self.ctl_api.get("/__flysim/config").body):
            self.assertNotIn(TOKEN, text.decode())
        headers = [e["headers"]["authorization"] for e in self.requests_log()]
        self.assertEqual(headers, ["Bearer <redacted>", "Bearer <redacted>", "FlyV1 <redacted>",
                                   "Bearer FlyV1 <redacted>", "Bearer <redacted>"])
        secrets_body = self.requests_log(endpoint="set_secrets")[0]["body"]
        self.assertEqual(secrets_body, {"values": {"DB_PASSWORD": "<redacted>"}})

    def test_since_cap_reset_and_control_not_logged(self):
        self.reset(request_log_cap=3)
        for index in range(5):
            self.api.get(f"/v1/apps/app-{index}")
        self.ctl("GET", "state")
        entries = self.requests_log()
        self.assertEqual([e["path"] for e in entries], ["/v1/apps/app-2", "/v1/apps/app-3", "/v1/apps/app-4"])
        self.assertEqual([e["seq"] for e in self.requests_log(since=entries[1]["seq"])], [entries[2]["seq"]])
        self.reset()
        self.assertEqual(self.requests_log(), [])

    def test_stats_count_per_endpoint_and_status(self):
        self.create_app("counted")
        self.api.get("/v1/apps/counted")
        self.api.get("/v1/apps/missing")
        stats = self.ctl("GET", "stats")
        self.assertEqual(stats["by_endpoint"]["get_app"], {"count": 2, "by_status": {"200": 1, "404": 1}})
        self.assertEqual(stats["total"], 3)


class ProtocolTests(SimTestCase):
    def raw_exchange(self, payload, answers=1):
        with socket.create_connection(("127.0.0.1", SERVER.port), timeout=5) as sock:
            sock.sendall(payload)
            data = b""
            while data.count(b"HTTP/1.1 ") < answers or not data.endswith((b"}", b"\n", b"]")):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            return data.decode()

    def test_pipelined_requests_answer_in_order(self):
        self.create_app("piped")
        auth = f"Authorization: Bearer {TOKEN}\r\nHost: x\r\n"
        text = self.raw_exchange((f"GET /v1/apps/piped HTTP/1.1\r\n{auth}\r\n"
                                  f"GET /v1/apps/nope HTTP/1.1\r\n{auth}\r\n").encode(), answers=2)
        self.assertLess(text.index("200 OK"), text.index("404 Not Found"))

    def test_chunked_body_and_expect_continue(self):
        auth = f"Authorization: Bearer {TOKEN}\r\nHost: x\r\nContent-Type: application/json\r\n"
        body = json.dumps({"name": "chunky", "org_slug": "personal"}).encode()
        chunked = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
        text = self.raw_exchange(f"POST /v1/apps HTTP/1.1\r\n{auth}Transfer-Encoding: chunked\r\n\r\n".encode()
                                 + chunked)
        self.assertIn("201 Created", text)
        with socket.create_connection(("127.0.0.1", SERVER.port), timeout=5) as sock:
            body = json.dumps({"name": "expecting", "org_slug": "personal"}).encode()
            sock.sendall(f"POST /v1/apps HTTP/1.1\r\n{auth}Expect: 100-continue\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode())
            self.assertTrue(sock.recv(100).startswith(b"HTTP/1.1 100 Continue"))
            sock.sendall(body)
            self.assertIn(b"201 Created", sock.recv(4096))

    def test_every_answer_has_content_length_and_close_is_honoured(self):
        text = self.raw_exchange(b"GET /v1/apps/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertIn("401 Unauthorized", text)
        head, _, body = text.partition("\r\n\r\n")
        self.assertIn(f"Content-Length: {len(body)}\r\n", head)
        self.assertIn("Connection: close", text)
        self.assertIn("400 Bad Request", self.raw_exchange(b"NONSENSE\r\n\r\n"))


class CommandLineTests(unittest.TestCase):
    def test_prints_the_port_and_serves(self):
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
            json.dump({"boot_delay_ms": 0, "foreign_apps": ["from-file"]}, handle)
        command = [sys.executable, os.path.join(HERE, "flysim.py"), "--port", "0", "--seed", "3",
                   "--config", handle.name, "--tokens", "cli-token=cli-org", "--foreign-app", "from-flag"]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = process.stdout.readline()
            match = re.fullmatch(r"FLYSIM_LISTENING port=(\d+)\n", line)
            self.assertIsNotNone(match, line)
            api = Api("cli-token", port=int(match.group(1)))
            self.assertEqual(api.post("/v1/apps", {"name": "cli-app", "org_slug": "cli-org"}).status, 201)
            self.assertEqual(api.get("/v1/apps/from-file").status, 403)
            self.assertEqual(api.get("/v1/apps/from-flag").status, 403)
            foreign = Api(TOKEN, port=int(match.group(1)))
            self.assertEqual(foreign.get("/v1/apps/cli-app").status, 401)
            foreign.close()
            api.close()
        finally:
            process.terminate()
            self.assertEqual(process.wait(timeout=10), 0)
            process.stdout.close()
            process.stderr.close()
            os.unlink(handle.name)

    def test_rejects_a_bad_config(self):
        result = subprocess.run([sys.executable, os.path.join(HERE, "flysim.py"), "--tokens", "no-equals-sign"],
                                capture_output=True, text=True, timeout=30)
        self.assertNotEqual(result.returncode, 0)


class PolicyUnitTests(unittest.TestCase):
    def test_token_bucket(self):
        limiter = flysim_policy.RateLimiter()
        limiter.configure({"mode": "fly", "retry_after": True, "actions": {}})
        now = 100.0
        self.assertEqual([limiter.check("start_machine", "m1", now) for _ in range(4)], [None, None, None, 1])
        self.assertIsNone(limiter.check("start_machine", "m1", now + 1.0))
        self.assertIsNone(limiter.check("start_machine", "m2", now))

    def test_schema_validator_messages(self):
        with self.assertRaisesRegex(flysim_schemas.SchemaError, r'unknown field "x" in config'):
            flysim_schemas.validate(flysim_schemas.CREATE_MACHINE_REQUEST, {"config": {"image": "i", "x": 1}})


if __name__ == "__main__":
    unittest.main(verbosity=2)

"""When Fly fails: retries with backoff, alerts, the 429 and Retry-After path, the circuit breaker, client-side
rate limits and the manual retry, against the simulator's faults."""

import json
import os
import subprocess
import sys
import threading
import time
import unittest
import urllib.request
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import PG_BIN, TEST_TOKEN  # noqa: E402
from test_provisioning import ProvisioningTestCase, app_name  # noqa: E402


def users(count, seed):
    return [str(uuid.UUID(int=(seed << 64) + i + 1, version=4)) for i in range(count)]


def fly_requests(sim):
    return [r for r in sim.requests()["requests"] if r["path"].startswith("/v1/")]


class Listener(threading.Thread):
    """A session that LISTENs on a channel for `seconds` and collects the payloads it received."""

    def __init__(self, pg, channel, seconds, role="postgres"):
        super().__init__(daemon=True)
        self.command = [os.path.join(PG_BIN, "psql"), "-X", "-h", pg.workdir, "-p", str(pg.port), "-U", role,
                        "-d", pg.database, "-c", f"LISTEN {channel}", "-c", f"SELECT pg_sleep({seconds})"]
        self.workdir = pg.workdir
        self.payloads = []
        self.ready = threading.Event()

    def run(self):
        process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   cwd=self.workdir, user="postgres" if os.geteuid() == 0 else None)
        self.ready.set()
        for line in process.stdout:
            if line.startswith("Asynchronous notification"):
                self.payloads.append(json.loads(line.split('with payload "', 1)[1].rsplit('" received', 1)[0]))
        process.stdout.close()
        process.wait()


class RetryTest(ProvisioningTestCase):
    cluster_settings = {"fly.request_timeout": "'5s'", "fly.max_attempts": "5", "fly.rate_limits": "off"}

    def test_random_transient_failures_converge_and_are_all_logged(self):
        self.sim.control("POST", "reset", {"seed": 30, "boot_delay_ms": 20, "rate_limits": {"mode": "off"},
                                           "faults": [{"endpoint": "*", "probability": 0.3, "kind": "status",
                                                       "status": 503}]})
        self.pg.sql("ALTER SYSTEM SET fly.max_attempts = 20")
        self.pg.reload()
        try:
            group = users(50, 30)
            self.pg.sql("INSERT INTO user_subscriptions VALUES " + ",".join(f"('{u}', 'pro')" for u in group))
            self.settle(timeout=180)
        finally:
            self.pg.sql("ALTER SYSTEM RESET fly.max_attempts")
            self.pg.reload()
        self.assertEqual(self.pg.value("SELECT count(*) FROM fly.user_fly_apps WHERE status = 'active'"), "50")
        apps = self.live_apps_on_fly()
        self.assertEqual(set(apps), {app_name(u) for u in group})
        self.assertTrue(all(len(app["machines"]) == 1 for app in apps.values()))
        failed_answers = [r for r in fly_requests(self.sim) if r["status"] == 503]
        self.assertGreater(len(failed_answers), 20)
        attempt_events = self.pg.sql("SELECT details->>'http_status', details->>'fly_request_id' IS NOT NULL "
                                     "FROM fly.user_fly_app_events WHERE event_type = 'provision_attempt_failed'")
        self.assertEqual(len(attempt_events), len(failed_answers))
        self.assertTrue(all(status == "503" for status, _ in attempt_events))
        # Spacing: each failed request goes again after a delay drawn from [0, min(cap, base * 2^(n-1))] for the
        # user's n-th failure (base 200 ms, cap 2 s here): never later than that ceiling, and not all at once.
        # (The worker may send it a little later when the rate limiter or breaker holds it, both off here.)
        log = fly_requests(self.sim)
        failures_per_app = {}
        gaps = []
        for i, request in enumerate(log):
            app = request["body"].get("name") if request["endpoint"] == "create_app" else request["path"].split("/")[3]
            if request["status"] != 503:
                continue
            failures_per_app[app] = failures_per_app.get(app, 0) + 1
            if request["endpoint"] == "create_machine":
                continue  # not retried blindly: the machine is looked up first (tested elsewhere)
            again = next((r for r in log[i + 1:] if r["endpoint"] == request["endpoint"]
                          and r["path"] == request["path"] and r["body"] == request["body"]), None)
            if again is not None:
                ceiling = min(2.0, 0.2 * 2 ** (failures_per_app[app] - 1))
                gaps.append((again["t_mono"] - request["t_mono"], ceiling))
        self.assertGreater(len(gaps), 20)
        for gap, ceiling in gaps:
            self.assertLessEqual(gap, ceiling + 0.5)
        self.assertGreater(sorted(g for g, _ in gaps)[len(gaps) // 2], 0.02)

    def test_permanent_500s_fail_one_user_after_max_attempts_with_one_alert(self):
        doomed, *others = users(4, 31)
        self.sim.configure(faults=[{"endpoint": "list_machines", "app": app_name(doomed), "always": True,
                                    "kind": "status", "status": 500}])
        listener = Listener(self.pg, "pg_fly_alerts", 12)
        listener.start()
        listener.ready.wait()
        time.sleep(0.5)
        self.pg.sql("INSERT INTO user_subscriptions VALUES " + ",".join(f"('{u}', 'pro')" for u in [doomed] + others))
        self.settle(timeout=60)
        self.assertEqual(self.pg.sql(f"SELECT status, attempts FROM fly.user_fly_apps WHERE user_id = '{doomed}'"),
                         [["failed", "5"]])
        self.assertEqual(self.pg.value(f"SELECT last_error FROM fly.user_fly_apps WHERE user_id = '{doomed}'")[:22],
                         "list_machines: HTTP 50")
        self.assertEqual(self.events(doomed).count("provision_attempt_failed"), 5)
        self.assertEqual(self.events(doomed).count("provision_failed"), 1)
        self.assertEqual(self.events(doomed).count("alert_raised"), 1)
        for user in others:
            self.assertEqual(self.pg.value(f"SELECT status FROM fly.user_fly_apps WHERE user_id = '{user}'"), "active")
        listener.join(timeout=30)
        # The notification names the event; the details are read from it (fly.recent_events for a granted role).
        alerts = [(p, self.pg.sql(f"SELECT user_id, fly_app_name, details->>'kind', details->>'attempts' "
                                  f"FROM fly.recent_events WHERE id = {p['event_id']}")[0])
                  for p in listener.payloads]
        alerts = [(p, event) for p, event in alerts if event[0] == doomed]
        self.assertEqual(len(alerts), 1, listener.payloads)
        payload, event = alerts[0]
        self.assertEqual((payload["kind"], payload["attempts"]), ("repeated_failures", 3))
        self.assertEqual(event[1:], [app_name(doomed), "repeated_failures", "3"])

        # retry_user_app: explains why not for a healthy user, succeeds for the failed one once faults stop.
        result = self.pg.psql(f"SELECT fly.retry_user_app('{others[0]}')", check=False)
        self.assertIn("has nothing to retry: their app is active", result.stderr)
        self.sim.configure(faults=[])
        self.pg.sql(f"SELECT fly.retry_user_app('{doomed}')")
        self.settle()
        self.assertEqual(self.pg.value(f"SELECT status FROM fly.user_fly_apps WHERE user_id = '{doomed}'"), "active")
        self.assertIn("retry_requested", self.events(doomed))

    def test_422_on_create_app_fails_at_once_with_the_reason(self):
        self.pg.sql("ALTER SYSTEM SET fly.app_name_prefix = 'Bad_Prefix-'")
        self.pg.reload()
        try:
            time.sleep(0.5)
            user = users(1, 32)[0]
            self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{user}', 'pro')")
            self.settle()
        finally:
            self.pg.sql("ALTER SYSTEM RESET fly.app_name_prefix")
            self.pg.reload()
        row = self.pg.sql(f"SELECT status, attempts, last_error FROM fly.user_fly_apps WHERE user_id = '{user}'")
        self.assertEqual(row[0][:2], ["failed", "1"])
        self.assertIn("422", row[0][2])
        self.assertIn("Name", row[0][2])
        self.assertEqual(len([r for r in fly_requests(self.sim) if r["endpoint"] == "create_app"]), 1)
        self.assertEqual(self.events(user), ["provision_requested", "provision_failed", "alert_raised"])

    def test_429_with_retry_after_holds_back_that_scope(self):
        user = users(1, 33)[0]
        self.sim.configure(faults=[{"endpoint": "list_machines", "nth": [1], "kind": "rate_limit", "retry_after": 2}])
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{user}', 'pro')")
        self.settle()
        scope = [r for r in fly_requests(self.sim) if r["endpoint"] == "list_machines"]
        self.assertEqual(scope[0]["status"], 429)
        self.assertGreaterEqual(scope[1]["t_mono"] - scope[0]["t_mono"], 2.0)
        # Nothing at all about this app went out during the pause.
        app_requests = [r for r in fly_requests(self.sim) if app_name(user) in r["path"]
                        and scope[0]["t_mono"] < r["t_mono"] < scope[0]["t_mono"] + 2.0]
        self.assertEqual(app_requests, [])
        self.assertEqual(self.pg.value(f"SELECT status FROM fly.user_fly_apps WHERE user_id = '{user}'"), "active")


    def test_an_app_without_organization_and_a_start_reporting_error_are_retried(self):
        user = users(1, 31)[0]
        name = app_name(user)
        # The user's app already exists (ours): create_app answers name_taken, and get_app first answers an app
        # without an organization, which proves nothing about whose it is.
        request = urllib.request.Request(self.sim.url + "/v1/apps", method="POST",
                                         data=json.dumps({"name": name, "org_slug": "personal"}).encode(),
                                         headers={"Authorization": f"Bearer {TEST_TOKEN}",
                                                  "Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=10).read()
        self.sim.configure(faults=[{"endpoint": "get_app", "nth": [1], "kind": "status", "status": 200,
                                    "body": {"id": "x1", "name": name, "status": "deployed"}}])
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{user}', 'pro')")
        self.settle()
        self.assertEqual(self.pg.value(f"SELECT status FROM fly.user_fly_apps WHERE user_id = '{user}'"), "active")
        events = self.pg.sql(f"SELECT event_type, details::text FROM fly.user_fly_app_events WHERE user_id = "
                             f"'{user}' ORDER BY id")
        failed = [details for event, details in events if event == "provision_attempt_failed"]
        self.assertEqual(len(failed), 1, events)
        self.assertIn("no organization", failed[0])
        self.assertIn("app_reused", [event for event, _ in events])
        # A start Fly answers 200 with "status": "error" did not start the machine: it is retried.
        machine = self.pg.value(f"SELECT fly_machine_id FROM fly.user_fly_apps WHERE user_id = '{user}'")
        self.sim.control("POST", f"machines/{name}/{machine}/state", {"state": "stopped"})
        self.sim.configure(faults=[{"endpoint": "start_machine", "nth": [1], "kind": "status", "status": 200,
                                    "body": {"status": "error", "message": "failed to start: no capacity"}}])
        self.pg.sql(f"SELECT fly.provision_user_app('{user}')")
        self.settle()
        starts = [r for r in fly_requests(self.sim) if r["endpoint"] == "start_machine"]
        self.assertEqual([r["status"] for r in starts], [200, 200])
        failed = self.pg.sql(f"SELECT details::text FROM fly.user_fly_app_events WHERE user_id = '{user}' AND "
                             "event_type = 'provision_attempt_failed' ORDER BY id")
        self.assertEqual(len(failed), 2)
        self.assertIn("failed to start: no capacity", failed[-1][0])
        self.assertEqual(self.sim.state()["apps"][name]["machines"][machine]["state"], "started")
        self.assertEqual(self.pg.value(f"SELECT status FROM fly.user_fly_apps WHERE user_id = '{user}'"), "active")


class BreakerTest(ProvisioningTestCase):
    cluster_settings = {"fly.request_timeout": "'5s'", "fly.rate_limits": "off", "fly.breaker_failure_threshold": "10",
                        "fly.breaker_open_time": "'1s'", "fly.breaker_max_open_time": "'4s'"}

    def test_fly_down_for_20_seconds_opens_the_breaker_then_everything_converges(self):
        self.sim.configure(faults=[{"endpoint": "*", "always": True, "kind": "status", "status": 503}])
        group = users(12, 34)
        self.pg.sql("INSERT INTO user_subscriptions VALUES " + ",".join(f"('{u}', 'pro')" for u in group))
        self.assertTrue(self.pg.wait_for("SELECT breaker_state <> 'closed' FROM fly.worker_status()", timeout=15))
        down_since = time.monotonic()
        seen = self.pg.value("SELECT breaker_state FROM fly.worker_overview")
        self.assertIn(seen, ("open", "half-open"))
        time.sleep(max(0.0, 20 - (time.monotonic() - down_since)))
        sent_while_down = len(fly_requests(self.sim))
        self.sim.configure(faults=[])
        self.settle(timeout=90)
        self.assertEqual(self.pg.value("SELECT count(*) FROM fly.user_fly_apps WHERE status = 'active'"), "12")
        self.assertEqual(self.pg.value("SELECT breaker_state FROM fly.worker_status()"), "closed")
        # Ten failures open it; then only probes, about one per pause (1 s doubling to 4 s) over 20 s.
        self.assertLessEqual(sent_while_down, 10 + 12, sent_while_down)
        # Users' attempts were not burned while it was open.
        self.assertEqual(self.pg.value("SELECT max(attempts) FROM fly.user_fly_apps"), "0")


class RateLimitTest(ProvisioningTestCase):
    cluster_settings = {"fly.request_timeout": "'5s'"}

    def test_30_users_at_flys_limits_see_no_429_and_take_the_time_the_limits_allow(self):
        self.sim.control("POST", "reset", {"seed": 35, "boot_delay_ms": 50, "rate_limits": {"mode": "fly"}})
        group = users(30, 35)
        self.pg.sql("INSERT INTO user_subscriptions VALUES " + ",".join(f"('{u}', 'pro')" for u in group))
        self.settle(timeout=120)
        requests = fly_requests(self.sim)
        self.assertEqual([r for r in requests if r["status"] == 429], [])
        self.assertEqual(self.pg.value("SELECT count(*) FROM fly.user_fly_apps WHERE status = 'active'"), "30")
        creates = [r["t_mono"] for r in requests if r["endpoint"] == "create_app"]
        elapsed = max(r["t_mono"] for r in requests) - min(creates)
        # create_app is limited per organization: a burst of 3, then 1 per second.
        allowed = (30 - 3) / 1.0
        self.assertLessEqual(elapsed, allowed * 1.2, f"{elapsed:.1f} s for what the limits allow in {allowed} s")
        self.assertGreaterEqual(elapsed, allowed * 0.95)


class BulkOnboardingTest(ProvisioningTestCase):
    cluster_settings = {"fly.request_timeout": "'5s'"}

    def test_onboarding_200_existing_pro_users_at_flys_limits(self):
        self.sim.control("POST", "reset", {"seed": 38, "boot_delay_ms": 20, "rate_limits": {"mode": "fly"},
                                           "request_log_cap": 5000})
        group = users(200, 38)
        self.pg.sql("SELECT fly.detach_tier_trigger()")
        try:
            self.pg.sql("INSERT INTO user_subscriptions VALUES " + ",".join(f"('{u}', 'pro')" for u in group))
        finally:
            self.pg.sql("SELECT fly.attach_tier_trigger()")
        self.assertEqual(self.pg.value("SELECT count(*) FROM fly.onboard_existing_users(dry_run => true)"), "200")
        self.assertEqual(self.pg.value("SELECT count(*) FROM fly.pending_work"), "0")
        self.assertEqual(self.pg.value("SELECT fly.provision_user_app()"), "200")
        # create_app is limited per organization (1/s after a burst of 3): about 200 s.
        self.settle(timeout=400)
        self.assertEqual(self.pg.value("SELECT count(*) FROM fly.user_fly_apps WHERE status = 'active'"), "200")
        stats = self.sim.control("GET", "stats")
        self.assertEqual(stats["rate_limited"], 0)
        self.assertNotIn("429", stats["by_status"])


class NotifyPayloadTest(ProvisioningTestCase):
    """LISTEN takes no privilege: what pg_fly_alerts and pg_fly_status carry reaches any role that can connect."""

    cluster_settings = {"fly.request_timeout": "'5s'", "fly.max_attempts": "3", "fly.alert_after_attempts": "2",
                        "fly.rate_limits": "off"}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.pg.sql("CREATE ROLE snoop LOGIN")  # no grant at all

    def listen_while_one_fails_and_one_is_provisioned(self, seed):
        """Payloads an unprivileged role received on both channels, and the two users (failed, provisioned)."""
        doomed, fine = users(2, seed)
        self.sim.configure(faults=[{"endpoint": "list_machines", "app": app_name(doomed), "always": True,
                                    "kind": "status", "status": 500}])
        listeners = [Listener(self.pg, channel, 20, role="snoop") for channel in ("pg_fly_alerts", "pg_fly_status")]
        for listener in listeners:
            listener.start()
            listener.ready.wait()
        time.sleep(0.5)
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{doomed}', 'pro'), ('{fine}', 'pro')")
        self.settle(timeout=90)
        self.assertEqual(self.status_of(doomed), "failed")
        self.assertEqual(self.status_of(fine), "active")
        for listener in listeners:
            listener.join(timeout=60)
        alerts, statuses = (listener.payloads for listener in listeners)
        self.assertTrue(alerts and statuses, (alerts, statuses))
        return alerts, statuses, doomed, fine

    def status_of(self, user):
        return self.pg.value(f"SELECT status FROM fly.user_fly_apps WHERE user_id = '{user}'")

    def set_notify_payload(self, value):
        before = int(self.pg.value("SELECT iterations FROM fly.worker_status()"))
        self.pg.sql(f"ALTER SYSTEM SET fly.notify_payload = '{value}'")
        self.pg.reload()
        # The worker reloads at the top of its next pass (the status trigger runs in its transactions too).
        self.assertTrue(self.pg.wait_for(f"SELECT iterations >= {before + 2} FROM fly.worker_status()", 30))

    def test_payloads_name_no_user_app_or_error_unless_opted_in(self):
        alerts, statuses, doomed, fine = self.listen_while_one_fails_and_one_is_provisioned(81)
        secrets = [doomed, fine, app_name(doomed), app_name(fine), "list_machines", "HTTP 500"]
        for payload in alerts + statuses:
            text = json.dumps(payload)
            for secret in secrets:
                self.assertNotIn(secret, text)
        self.assertEqual([set(p) for p in alerts], [{"kind", "event_id", "status", "attempts"}])
        self.assertTrue(all("user_id" not in p and "fly_app_name" not in p for p in statuses), statuses)
        # A role granted the views finds the whole record by the ids the notifications carry.
        event = self.pg.sql(f"SELECT user_id, event_type, fly_app_name, details->>'error' FROM fly.recent_events "
                            f"WHERE id = {alerts[0]['event_id']}")[0]
        self.assertEqual(event[:3], [doomed, "alert_raised", app_name(doomed)])
        self.assertIn("list_machines", event[3])
        apps = {row[0]: row[1] for row in self.pg.sql("SELECT app_row_id, user_id FROM fly.live_apps")}
        self.assertEqual({apps[str(p["app_row_id"])] for p in statuses}, {doomed, fine})

        self.set_notify_payload("full")
        try:
            self.pg.sql("TRUNCATE user_subscriptions, fly.reconcile_queue, fly.user_fly_app_events, fly.user_fly_apps")
            alerts, statuses, doomed, fine = self.listen_while_one_fails_and_one_is_provisioned(82)
        finally:
            self.pg.sql("ALTER SYSTEM RESET fly.notify_payload")
            self.pg.reload()
        self.assertEqual([(p["user_id"], p["fly_app_name"], p["kind"]) for p in alerts],
                         [(doomed, app_name(doomed), "repeated_failures")])
        self.assertIn("list_machines", alerts[0]["error"])
        self.assertIn("event_id", alerts[0])
        self.assertEqual({(p["user_id"], p["fly_app_name"]) for p in statuses},
                         {(doomed, app_name(doomed)), (fine, app_name(fine))})


if __name__ == "__main__":
    unittest.main(verbosity=2)


class OnboardingTest(ProvisioningTestCase):
    cluster_settings = {"fly.request_timeout": "'5s'"}

    def test_onboarding_existing_users_at_flys_limits_with_live_status_notifications(self):
        self.sim.control("POST", "reset", {"seed": 36, "boot_delay_ms": 50, "rate_limits": {"mode": "fly"}})
        group = users(20, 36)
        self.pg.sql("SELECT fly.detach_tier_trigger()")
        try:
            self.pg.sql("INSERT INTO user_subscriptions VALUES " + ",".join(f"('{u}', 'pro')" for u in group)
                        + ", ('" + users(1, 37)[0] + "', 'free')")
        finally:
            self.pg.sql("SELECT fly.attach_tier_trigger()")
        dry_run = self.pg.sql("SELECT user_id, queued FROM fly.onboard_existing_users(dry_run => true)")
        self.assertEqual(sorted(u for u, _ in dry_run), sorted(group))
        self.assertTrue(all(queued == "f" for _, queued in dry_run))
        self.assertEqual(self.pg.value("SELECT count(*) FROM fly.pending_work"), "0")
        listener = Listener(self.pg, "pg_fly_status", 25)
        listener.start()
        listener.ready.wait()
        time.sleep(0.5)
        self.assertEqual(self.pg.value("SELECT fly.provision_user_app()"), "20")
        self.settle(timeout=90)
        self.assertEqual(self.pg.value("SELECT count(*) FROM fly.user_fly_apps WHERE status = 'active'"), "20")
        self.assertEqual([r for r in fly_requests(self.sim) if r["status"] == 429], [])
        listener.join(timeout=60)
        owners = dict(self.pg.sql("SELECT id, user_id FROM fly.user_fly_apps"))
        for user in group:
            changes = [(p["previous_status"], p["status"]) for p in listener.payloads
                       if owners.get(str(p["app_row_id"])) == user]
            self.assertEqual(changes, [(None, "provisioning"), ("provisioning", "active")], user)
        costs = self.pg.sql("SELECT monthly_estimate_usd FROM fly.cost_summary WHERE tier IS NULL")
        self.assertEqual(costs, [[f"{20 * 2.32:.2f}"]])

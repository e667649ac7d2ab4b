"""The security suite: what a role without privileges can reach, hostile input through the application's table
and the SQL functions, hostile answers from Fly, and a final scan of every table, the server log and the Fly
request log for the token and the secrets. A real PostgreSQL, real libcurl and the Fly API simulator on loopback."""

import base64
import json
import os
import re
import secrets
import subprocess
import sys
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import PG_BIN, TEST_TOKEN, Cluster, Simulator  # noqa: E402
from test_provisioning import app_name  # noqa: E402

MB = 1024 * 1024
# The worker's peak resident memory may grow by this much while Fly answers with 50 MB bodies and the like.
MEMORY_HEADROOM_KB = 64 * 1024

# Every path pg_fly sends to Fly, by endpoint; app names and machine ids as pg_fly and Fly make them.
APP = r"vyx-user-[0-9a-f]{8}(?:-[0-9a-f]{4})*"
MACHINE = r"[0-9a-f]{14}"
FLY_PATHS = {
    "create_app": r"/v1/apps", "list_apps": r"/v1/apps", "get_app": rf"/v1/apps/{APP}",
    "delete_app": rf"/v1/apps/{APP}", "set_secrets": rf"/v1/apps/{APP}/secrets",
    "list_machines": rf"/v1/apps/{APP}/machines", "create_machine": rf"/v1/apps/{APP}/machines",
    "get_machine": rf"/v1/apps/{APP}/machines/{MACHINE}", "update_machine": rf"/v1/apps/{APP}/machines/{MACHINE}",
    "delete_machine": rf"/v1/apps/{APP}/machines/{MACHINE}",
    "stop_machine": rf"/v1/apps/{APP}/machines/{MACHINE}/stop",
    "start_machine": rf"/v1/apps/{APP}/machines/{MACHINE}/start",
    "wait_machine": rf"/v1/apps/{APP}/machines/{MACHINE}/wait",
    "app_health": rf"/__flysim/apps/{APP}/health",
}
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def users(count, seed):
    return [str(uuid.UUID(int=(seed << 64) + i + 1, version=4)) for i in range(count)]


def malformed_requests(requests):
    """What is wrong with each request pg_fly sent: an unknown route, a path off the API's shapes, an app name
    pg_fly would not make, a missing token, a create_machine whose USER_ID is not a uuid."""
    problems = []
    for r in requests:
        shape = FLY_PATHS.get(r["endpoint"])
        if shape is None or not re.fullmatch(shape, r["path"]):
            problems.append(f"{r['method']} {r['path']} ({r['endpoint']})")
            continue
        if r["endpoint"] != "app_health" and r["headers"].get("authorization") != "Bearer <redacted>":
            problems.append(f"{r['method']} {r['path']} without the token")
        if r["endpoint"] == "create_app" and not (
                re.fullmatch(APP, str(r["body"].get("name"))) and r["body"].get("name") == r["body"].get("app_name")):
            problems.append(f"create_app body {r['body']!r}")
        if r["endpoint"] == "create_machine":
            env = r["body"]["config"]["env"]
            if not UUID.match(env.get("USER_ID", "")) or env.get("RUN_MODE") != "user_dedicated":
                problems.append(f"create_machine env {env!r}")
    return problems


class SecurityTestCase(unittest.TestCase):
    """Helpers shared by the classes below: psql as another role, the worker's process, waiting."""

    @classmethod
    def as_role(cls, role, sql, database=None):
        """psql -U role: (exit code, stdout, stderr)."""
        command = [os.path.join(PG_BIN, "psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", cls.pg.workdir,
                   "-p", str(cls.pg.port), "-U", role, "-d", database or cls.pg.database, "-c", sql]
        result = subprocess.run(command, capture_output=True, text=True, cwd=cls.pg.workdir,
                                user="postgres" if os.geteuid() == 0 else None)
        return result.returncode, result.stdout, result.stderr

    def refused(self, role, sql, fragment):
        """The statement fails for role with an error containing fragment."""
        code, out, err = self.as_role(role, sql)
        self.assertNotEqual(code, 0, f"{role} was allowed: {sql}\n{out}")
        self.assertIn(fragment, err, sql)
        return err

    def worker_pid(self):
        pid = self.pg.value("SELECT pid FROM fly.worker_status()")
        self.assertTrue(pid, "the worker is not running")
        return int(pid)

    @staticmethod
    def peak_memory_kb(pid):
        with open(f"/proc/{pid}/status") as f:
            return int(next(line for line in f if line.startswith("VmHWM:")).split()[1])

    def assert_no_crash(self):
        log = self.pg.server_log()
        self.assertNotIn("terminated by signal", log)
        self.assertNotIn("server process (PID", log)

    def settle(self, timeout=60):
        self.assertTrue(self.pg.wait_for("SELECT NOT EXISTS (SELECT 1 FROM fly.pending_work)", timeout),
                        "queue did not drain: " + repr(self.pg.sql("SELECT * FROM fly.pending_work")))

    def status(self, user):
        return self.pg.value(f"SELECT status FROM fly.user_fly_apps WHERE user_id = '{user}' AND deleted_at IS NULL")


class PrivilegeTest(SecurityTestCase):
    """A LOGIN role without privileges, connected as itself, against a server whose postgresql.conf holds a token."""

    @classmethod
    def setUpClass(cls):
        cls.conf_token = "pgfly-conf-token-" + secrets.token_hex(12)
        cls.sim = Simulator({"tokens": {TEST_TOKEN: "personal", cls.conf_token: "personal"}})
        cls.addClassCleanup(cls.sim.stop)
        cls.elsewhere = Simulator()  # stands for any host the worker must never be sent to
        cls.addClassCleanup(cls.elsewhere.stop)
        cls.pg = Cluster(cls.sim.url, {"fly.api_token": f"'{cls.conf_token}'", "fly.request_timeout": "'5s'"})
        cls.addClassCleanup(cls.pg.destroy)
        cls.pg.sql("CREATE TABLE user_subscriptions (user_id uuid PRIMARY KEY, tier text NOT NULL DEFAULT 'free')")
        cls.pg.sql("SELECT fly.attach_tier_trigger()")
        cls.pg.sql("CREATE ROLE mallory LOGIN")
        cls.pg.sql("CREATE ROLE settings_reader LOGIN IN ROLE pg_read_all_settings, pg_monitor")
        cls.pg.sql("CREATE DATABASE mallory_db OWNER mallory")


    def test_the_token_cannot_be_read(self):
        self.assertTrue(self.pg.wait_for("SELECT token_source = 'fly.api_token' FROM fly.worker_status()", 30))
        attempts = ["SHOW fly.api_token", "SELECT current_setting('fly.api_token')",
                    "SELECT current_setting('fly.api_token', true)",
                    "SELECT name, setting, reset_val, boot_val FROM pg_settings WHERE name LIKE 'fly.%'",
                    "SELECT * FROM pg_show_all_settings() WHERE name LIKE 'fly.%'", "SHOW ALL",
                    "SELECT * FROM pg_file_settings", "SELECT pg_read_file('postgresql.conf')",
                    f"SELECT pg_read_file('{self.pg.token_file}')", "SHOW fly.api_token_file",
                    "SELECT * FROM pg_db_role_setting", "COPY (SELECT 1) TO PROGRAM 'cat postgresql.conf'",
                    "SELECT query FROM pg_stat_activity"]
        for role in ("mallory", "settings_reader"):
            for sql in attempts:
                with self.subTest(role=role, sql=sql):
                    _, out, err = self.as_role(role, sql)
                    self.assertNotIn(self.conf_token, out + err)
                    self.assertNotIn(TEST_TOKEN, out + err)
        self.refused("mallory", "SHOW fly.api_token",
                     'must be superuser or have privileges of pg_read_all_settings to examine "fly.api_token"')
        self.refused("mallory", "SELECT pg_read_file('postgresql.conf')", "permission denied for function pg_read_file")
        self.refused("mallory", "SELECT * FROM pg_file_settings", "permission denied for view pg_file_settings")
        self.assertEqual(self.as_role("mallory", "SELECT count(*) FROM pg_settings WHERE name = 'fly.api_token'")[1],
                         "0\n")
        # Members of pg_read_all_settings, and superusers, see a mask.
        self.assertEqual(self.as_role("settings_reader", "SHOW fly.api_token")[1], "********\n")
        self.assertEqual(self.pg.value("SELECT current_setting('fly.api_token')"), "********")
        self.pg.reload()
        time.sleep(0.5)
        self.assertNotIn(self.conf_token, self.pg.server_log())

    def test_no_fly_setting_can_be_changed(self):
        settings = dict((name, (vartype, setting)) for name, vartype, setting in self.pg.sql(
            "SELECT name, vartype, setting FROM pg_settings WHERE name LIKE 'fly.%'"))
        settings["fly.api_token"] = ("string", "")  # hidden from pg_settings altogether
        self.assertGreaterEqual(len(settings), 30, sorted(settings))
        before = self.pg.sql("SELECT name, setting FROM pg_settings WHERE name LIKE 'fly.%' ORDER BY 1")
        for name, (vartype, setting) in sorted(settings.items()):
            if vartype == "string":
                value = "'" + (self.elsewhere.url if "url" in name else "evil") + "'"
            else:
                value = "'" + (setting or "1") + "'"
            for sql in (f"SET {name} = {value}", f"BEGIN; SET LOCAL {name} = {value}; COMMIT",
                        f"SELECT set_config('{name}', {value}, false)", f"SELECT set_config('{name}', {value}, true)",
                        f"ALTER ROLE mallory SET {name} = {value}",
                        f"ALTER ROLE mallory IN DATABASE {self.pg.database} SET {name} = {value}",
                        f"ALTER DATABASE mallory_db SET {name} = {value}", f"ALTER SYSTEM SET {name} = {value}"):
                with self.subTest(sql=sql):
                    code, out, err = self.as_role("mallory", sql)
                    self.assertNotEqual(code, 0, f"allowed: {sql}")
                    self.assertRegex(err, r"cannot be changed|permission denied to set parameter|must be superuser")
        # Nothing was stored anywhere, and nothing changed.
        self.assertEqual(self.pg.value("SELECT count(*) FROM pg_db_role_setting, unnest(setconfig) AS c "
                                       "WHERE c LIKE 'fly.%'"), "0")
        with open(os.path.join(self.pg.datadir, "postgresql.auto.conf")) as f:
            self.assertNotIn("fly.", f.read())
        self.assertEqual(self.pg.sql("SELECT name, setting FROM pg_settings WHERE name LIKE 'fly.%' ORDER BY 1"),
                         before)
        # Settings under the reserved prefix cannot be invented either.
        self.refused("mallory", "SET fly.api_urls = 'x'", '"fly" is a reserved prefix')

    def fly_objects(self):
        """Every function (with a call that passes NULLs) and every relation in schema fly."""
        functions = self.pg.sql(
            "SELECT p.proname, p.prokind, p.prorettype = 'trigger'::regtype, "
            "'fly.' || quote_ident(p.proname) || '(' || coalesce((SELECT string_agg('NULL::' || format_type(t, NULL), "
            "', ' ORDER BY i) FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY AS a (t, i)), '') || ')' "
            "FROM pg_proc p WHERE p.pronamespace = 'fly'::regnamespace ORDER BY 1")
        relations = self.pg.sql(
            "SELECT c.relname, c.relkind, (SELECT quote_ident(a.attname) FROM pg_attribute a WHERE a.attrelid = c.oid "
            "AND a.attnum > 0 AND NOT a.attisdropped AND a.attidentity = '' AND a.attgenerated = '' "
            "ORDER BY a.attnum LIMIT 1) FROM pg_class c "
            "WHERE c.relnamespace = 'fly'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S') ORDER BY 1")
        return functions, relations

    def test_functions_and_tables_need_grants(self):
        functions, relations = self.fly_objects()
        self.assertGreaterEqual(len(functions), 25)
        self.assertGreaterEqual(len(relations), 15)
        self.refused("mallory", "SELECT * FROM fly.worker_status()", "permission denied for schema fly")
        self.refused("mallory", "SELECT count(*) FROM fly.user_fly_apps", "permission denied for schema fly")
        self.pg.sql("GRANT USAGE ON SCHEMA fly TO mallory")
        self.pg.sql("CREATE TABLE mallory_table (user_id uuid, tier text); ALTER TABLE mallory_table OWNER TO mallory")
        try:
            for name, kind, is_trigger, call in functions:
                with self.subTest(function=name):
                    if is_trigger == "t":
                        # Attaching pg_fly's SECURITY DEFINER trigger to one's own table would queue any user.
                        self.refused("mallory", f"CREATE TRIGGER t AFTER INSERT ON mallory_table FOR EACH ROW "
                                     f"EXECUTE FUNCTION fly.{name}('user_id', 'tier')",
                                     f"permission denied for function fly.{name}")
                    elif kind == "p":
                        self.refused("mallory", f"CALL {call}", f"permission denied for procedure {name}")
                    else:
                        self.refused("mallory", f"SELECT * FROM {call}", f"permission denied for function {name}")
            for name, kind, column in relations:
                with self.subTest(relation=name):
                    if kind == "S":
                        self.refused("mallory", f"SELECT nextval('fly.{name}')",
                                     f"permission denied for sequence {name}")
                        continue
                    noun = "view" if kind == "v" else "materialized view" if kind == "m" else "table"
                    statements = [f"SELECT * FROM fly.{name} LIMIT 1"]
                    if kind in ("r", "p"):
                        statements += [f"INSERT INTO fly.{name} DEFAULT VALUES",
                                       f"UPDATE fly.{name} SET {column} = {column}", f"DELETE FROM fly.{name}",
                                       f"TRUNCATE fly.{name}"]
                    for sql in statements:
                        self.refused("mallory", sql, f"permission denied for {noun} {name}")
            self.refused("mallory", "CREATE FUNCTION fly.now() RETURNS int LANGUAGE sql AS 'SELECT 1'",
                         "permission denied for schema fly")
            self.refused("mallory", "ALTER TABLE fly.reconcile_queue DISABLE TRIGGER ALL", "must be owner of table")

            # Unless granted: an operator's grants work, and only for what they name.
            user = users(1, 71)[0]
            self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{user}', 'free')")
            self.pg.sql("GRANT EXECUTE ON FUNCTION fly.deprovision_user_app(uuid), fly.get_user_fly_app_status(uuid) "
                        "TO mallory; GRANT SELECT ON fly.live_apps TO mallory")
            code, _, err = self.as_role("mallory", f"SELECT fly.deprovision_user_app('{user}')")
            self.assertEqual(code, 0, err)
            self.assertIn("has no live app; the worker will only check that none is left on Fly", err)
            code, _, err = self.as_role("mallory", f"SELECT * FROM fly.get_user_fly_app_status('{user}')")
            self.assertEqual(code, 0, err)
            self.assertEqual(self.as_role("mallory", "SELECT count(*) FROM fly.live_apps")[0], 0)
            self.refused("mallory", f"SELECT fly.provision_user_app('{user}')",
                         "permission denied for function provision_user_app")
            self.refused("mallory", "SELECT count(*) FROM fly.user_fly_apps",
                         "permission denied for table user_fly_apps")
            self.refused("mallory", f"SELECT fly._enqueue_reconcile('{user}', 'present', 'pro', 'x')",
                         "permission denied for function _enqueue_reconcile")
            self.settle()
        finally:
            self.pg.sql("REVOKE ALL ON FUNCTION fly.deprovision_user_app(uuid), fly.get_user_fly_app_status(uuid) "
                        "FROM mallory; REVOKE ALL ON fly.live_apps FROM mallory; "
                        "REVOKE USAGE ON SCHEMA fly FROM mallory")
            self.pg.sql("DROP TABLE mallory_table")

    def test_the_worker_cannot_be_sent_elsewhere(self):
        # The application's role may change tiers, and nothing more.
        self.pg.sql("GRANT SELECT, INSERT, UPDATE, DELETE ON user_subscriptions TO mallory")
        self.pg.sql("GRANT USAGE ON SCHEMA fly TO mallory")
        health_url = f"{self.sim.url}/__flysim/apps/{{app}}/health"
        self.pg.sql(f"ALTER SYSTEM SET fly.app_health_url = '{health_url}'")
        self.pg.reload()
        try:
            for sql, fragment in (
                    (f"SET fly.api_url = '{self.elsewhere.url}'", "cannot be changed now"),
                    (f"ALTER SYSTEM SET fly.app_health_url = '{self.elsewhere.url}/{{app}}'",
                     "permission denied to set parameter"),
                    (f"ALTER ROLE mallory SET fly.api_url = '{self.elsewhere.url}'", "cannot be changed now"),
                    ("UPDATE fly.user_fly_apps SET fly_machine_id = '../../x', fly_app_name = 'evil.example'",
                     "permission denied for table user_fly_apps"),
                    ("INSERT INTO fly.user_fly_apps (user_id, fly_app_name, fly_org_slug, region) VALUES "
                     "(gen_random_uuid(), 'evil', 'personal', 'sjc')", "permission denied for table user_fly_apps"),
                    ("UPDATE fly.tier_policies SET region = 'evil'", "permission denied for table tier_policies"),
                    ("UPDATE fly.orphan_apps SET delete_requested = true", "permission denied for table orphan_apps"),
                    ("SELECT fly._request_health_pass()", "permission denied for function _request_health_pass")):
                with self.subTest(sql=sql):
                    self.refused("mallory", sql, fragment)
            user, other, third = users(3, 72)
            self.assertEqual(self.as_role("mallory", f"INSERT INTO user_subscriptions VALUES ('{user}', 'pro')")[0], 0)
            self.settle()
            self.assertEqual(self.status(user), "active")

            # Even rows crafted by someone who may write the table (a superuser here) keep the worker on the API's
            # host, inside the API's paths: ids travel percent-encoded, and odd app names never reach the health URL.
            real_machine = self.pg.value(f"SELECT fly_machine_id FROM fly.user_fly_apps WHERE user_id = '{user}'")
            since = self.sim.requests()["last_seq"]
            # (Not a machine created moments ago: a young machine's 404 would be "not visible yet".)
            self.pg.sql(f"UPDATE fly.user_fly_apps SET fly_machine_id = '../../../../v1/orgs/personal/machines?x=1#y', "
                        f"fly_machine_created_at = NULL WHERE user_id = '{user}'")
            self.pg.sql(f"INSERT INTO fly.user_fly_apps (user_id, fly_app_name, fly_org_slug, region, status, "
                        f"fly_machine_id) VALUES ('{other}', 'evil.example', 'personal', 'sjc', 'active', 'abc'), "
                        f"('{third}', '..', 'personal', 'sjc', 'active', '..')")
            self.pg.sql("SELECT fly.check_fly_apps_health()")
            self.assertTrue(self.pg.wait_for(
                f"SELECT count(*) = 3 FROM fly.user_fly_app_events WHERE user_id IN ('{user}', '{other}', '{third}') "
                f"AND event_type = 'app_vanished'", 30), self.pg.sql("SELECT * FROM fly.recent_events"))
            self.settle()
            # The real user's row healed itself from what Fly lists; the crafted ones were wound down.
            self.assertEqual(self.pg.sql(f"SELECT status, fly_machine_id FROM fly.user_fly_apps "
                                         f"WHERE user_id = '{user}' AND deleted_at IS NULL"),
                             [["active", real_machine]])
            requests = self.sim.requests(since)["requests"]
            for r in requests:
                self.assertNotIn("/../", r["path"] + "/")
                self.assertTrue(r["path"] == "/v1/apps" or r["path"].startswith(("/v1/apps/", "/__flysim/apps/")),
                                r["path"])
                self.assertNotEqual(r["endpoint"], "unknown", r["path"])
            crafted = [r["path"] for r in requests if r["endpoint"] == "get_machine"]
            self.assertIn(f"/v1/apps/{app_name(user)}/machines/"
                          f"..%2F..%2F..%2F..%2Fv1%2Forgs%2Fpersonal%2Fmachines%3Fx%3D1%23y", crafted)
            self.assertIn("/v1/apps/%2E%2E/machines/%2E%2E", crafted)
            self.assertIn("/v1/apps/evil.example/machines/abc", crafted)
            health = [r["path"] for r in requests if r["endpoint"] == "app_health"]
            self.assertTrue(all(re.fullmatch(FLY_PATHS["app_health"], path) for path in health), health)
            self.assertEqual(self.elsewhere.requests()["requests"], [])
            self.assertEqual(self.elsewhere.control("GET", "stats")["requests_received"], 0)
        finally:
            self.pg.sql("ALTER SYSTEM RESET fly.app_health_url")
            self.pg.reload()
            self.pg.sql("REVOKE ALL ON user_subscriptions FROM mallory; REVOKE USAGE ON SCHEMA fly FROM mallory")
        self.assert_no_crash()


class HostileInputTest(SecurityTestCase):
    """Hostile values written by the application's role into its subscription table (a text user column, so that
    anything can reach the trigger), and passed to the SQL functions."""

    @classmethod
    def setUpClass(cls):
        cls.sim = Simulator()
        cls.addClassCleanup(cls.sim.stop)
        cls.pg = Cluster(cls.sim.url, {"fly.request_timeout": "'5s'"})
        cls.addClassCleanup(cls.pg.destroy)
        cls.pg.sql("CREATE TABLE user_subscriptions (user_id text, tier text)")
        cls.pg.sql("SELECT fly.attach_tier_trigger()")
        cls.pg.sql("CREATE ROLE app_writer LOGIN")
        cls.pg.sql("GRANT SELECT, INSERT, UPDATE, DELETE ON user_subscriptions TO app_writer")
        # app_writer's writes fail on rows pg_fly cannot act on (a superuser's per-role setting); app_relaxed's,
        # with the default fly.strict_tiers = off, succeed.
        cls.pg.sql("ALTER ROLE app_writer SET fly.strict_tiers = on")
        cls.pg.sql("CREATE ROLE app_relaxed LOGIN")
        cls.pg.sql("GRANT SELECT, INSERT, UPDATE, DELETE ON user_subscriptions TO app_relaxed")
        cls.pg.sql("INSERT INTO fly.tier_policies (tier, dedicated_app, cpu_kind, cpus, memory_mb) "
                   "VALUES ('💎 diamond', true, 'shared', 1, 256)")
        assert cls.pg.wait_for("SELECT pid IS NOT NULL FROM fly.worker_status()", 30)
        cls.pid = int(cls.pg.value("SELECT pid FROM fly.worker_status()"))


    def test_hostile_rows_get_clear_errors_or_safe_handling(self):
        good, other, upper, braced, bare, diamond = users(6, 73)
        refused = [
            (f"INSERT INTO user_subscriptions VALUES ('{good}', 'pro''); DROP TABLE fly.reconcile_queue; --')",
             'tier "pro\'); DROP TABLE fly.reconcile_queue; --" has no policy in fly.tier_policies'),
            (f"INSERT INTO user_subscriptions VALUES ('{good}', repeat('x', {MB}))",
             'tier "' + "x" * 64 + '..." (1048576 bytes) has no policy in fly.tier_policies'),
            (f"INSERT INTO user_subscriptions VALUES ('{good}', 'platinum')", 'tier "platinum" has no policy'),
            (f"INSERT INTO user_subscriptions VALUES ('{good}', E'pro\\nLOG:  forged\\t\\x01')",
             'tier "pro\\nLOG:  forged\\t\\x01" has no policy'),
            (f"INSERT INTO user_subscriptions VALUES ('{good}', '💎 platinum')",
             'tier "💎 platinum" has no policy'),
            (f"INSERT INTO user_subscriptions VALUES ('{good}', '')", 'tier "" has no policy'),
            (f"INSERT INTO user_subscriptions VALUES ('{good}', 'PRO')", 'tier "PRO" has no policy'),
            ("INSERT INTO user_subscriptions VALUES ('not-a-uuid', 'pro')",
             'user id "not-a-uuid" in column "user_id" of "user_subscriptions" is not a uuid'),
            ("INSERT INTO user_subscriptions VALUES ('''); DELETE FROM fly.user_fly_apps; --', 'pro')",
             'user id "\'); DELETE FROM fly.user_fly_apps; --" in column "user_id"'),
            (f"INSERT INTO user_subscriptions VALUES (repeat('a', {MB}), 'elite')",
             'user id "' + "a" * 64 + '..." (1048576 bytes) in column "user_id" of "user_subscriptions" is not a uuid'),
            (f"INSERT INTO user_subscriptions VALUES ('{good}x', 'pro')", f'user id "{good}x" in column "user_id"'),
            (f"INSERT INTO user_subscriptions VALUES (' {good}', 'pro')", "is not a uuid"),
            (f"INSERT INTO user_subscriptions VALUES (E'{good}\\n', 'pro')", f'user id "{good}\\n" in column'),
            ("INSERT INTO user_subscriptions VALUES (NULL, 'pro')",
             "cannot provision an app for a subscription whose user id is NULL"),
        ]
        for sql, fragment in refused:
            with self.subTest(sql=sql[:80]):
                err = self.refused("app_writer", sql, fragment)
                self.assertLess(len(err), 1000)  # a megabyte value is not repeated back
        # Safely accepted: rows that ask for no app, and odd but valid spellings of uuids.
        accepted = [
            "INSERT INTO user_subscriptions VALUES (NULL, 'free'), (NULL, NULL)",
            f"INSERT INTO user_subscriptions VALUES ('{other}', NULL)",
            "INSERT INTO user_subscriptions VALUES ('not-a-uuid', 'free'), ('''; DROP TABLE x; --', 'free')",
            f"INSERT INTO user_subscriptions VALUES (repeat('b', {MB}), 'free')",
            "UPDATE user_subscriptions SET tier = NULL WHERE user_id = 'not-a-uuid'",
            "DELETE FROM user_subscriptions WHERE user_id = '''; DROP TABLE x; --'",
            f"INSERT INTO user_subscriptions VALUES ('{upper.upper()}', 'pro'), ('{{{braced}}}', 'elite'), "
            f"('{bare.replace('-', '')}', 'pro'), ('{diamond}', '💎 diamond')",
        ]
        for sql in accepted:
            with self.subTest(sql=sql[:80]):
                code, _, err = self.as_role("app_writer", sql)
                self.assertEqual(code, 0, err)
        self.refused("app_writer", "UPDATE user_subscriptions SET tier = 'pro' WHERE user_id = 'not-a-uuid'",
                     'user id "not-a-uuid" in column "user_id" of "user_subscriptions" is not a uuid')
        # Only the valid users got apps, under their canonical ids; the tables are all there.
        self.settle()
        self.assertEqual(sorted(row[0] for row in self.pg.sql("SELECT user_id FROM fly.user_fly_apps")),
                         sorted([upper, braced, bare, diamond]))
        for user in (upper, braced, bare, diamond):
            self.assertEqual(self.status(user), "active", user)
        self.assertEqual(sorted(self.sim.state()["apps"]), sorted(app_name(u) for u in (upper, braced, bare, diamond)))
        self.assertEqual(self.pg.value("SELECT count(*) FROM fly.user_fly_apps "
                                       "WHERE user_id::text !~ '^[0-9a-f-]{36}$'"), "0")
        self.assertEqual(self.malformed(), [])
        self.assertEqual(self.worker_pid(), self.pid)
        self.assert_no_crash()

    def test_hostile_rows_never_fail_the_write_unless_strict(self):
        good = users(1, 76)[0]
        rows = [f"('{good}', 'pro''); DROP TABLE fly.reconcile_queue; --')", f"('{good}', repeat('x', {MB}))",
                "('not-a-uuid', 'pro')", "('''); DELETE FROM fly.user_fly_apps; --', 'pro')",
                f"(repeat('a', {MB}), 'elite')", "(NULL, 'pro')", f"('{good}x', 'pro')",
                f"('{good}', E'pro\\nLOG:  forged\\t\\x01')"]
        for row in rows:
            with self.subTest(row=row[:80]):
                code, _, err = self.as_role("app_relaxed", f"INSERT INTO user_subscriptions VALUES {row}")
                self.assertEqual(code, 0, err)
        # The application cannot change the setting to get around it, or to make pg_fly strict for others.
        self.refused("app_relaxed", "SET fly.strict_tiers = on", "permission denied to set parameter")
        try:
            waits = {row[0]: row[1:] for row in self.pg.sql(
                "SELECT user_id, reason, length(user_id), length(tier) FROM fly.needs_attention")}
            self.assertEqual(waits[good][:1], ["unknown_tier"])  # its last row's tier
            self.assertEqual(waits['"not-a-uuid"'][:1], ["invalid_user_id"])
            self.assertEqual(waits['"a' + "a" * 63 + '..." (1048576 bytes)'][:1], ["invalid_user_id"])
            self.assertEqual(len(waits), 5, waits)
            self.assertTrue(all(int(length) < 100 for _, length, _ in waits.values()), waits)
            self.assertEqual(self.pg.value(f"SELECT count(*) FROM fly.pending_work WHERE user_id = '{good}'"), "0")
            self.assertEqual(self.pg.value("SELECT count(*) FROM fly.user_fly_app_events WHERE event_type = "
                                           f"'alert_raised' AND user_id = '{good}' AND length(details::text) < 400"),
                             "3")  # one per change of its tier, each cut short
            self.assertEqual(self.worker_pid(), self.pid)
        finally:
            self.pg.sql(f"DELETE FROM user_subscriptions WHERE user_id IN ('{good}', '{good}x', 'not-a-uuid') "
                        f"OR user_id IS NULL OR length(user_id) > 30; TRUNCATE fly.tier_waits")
        self.assert_no_crash()

    def test_sql_functions_refuse_hostile_arguments_clearly(self):
        user = users(1, 74)[0]
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{user}', 'free')")
        cases = [
            ("SELECT fly.provision_user_app('not-a-uuid')", 'invalid input syntax for type uuid: "not-a-uuid"'),
            ("SELECT fly.provision_user_app(''' OR 1=1 --')", "invalid input syntax for type uuid"),
            ("SELECT fly.provision_user_app(NULL::uuid)", "provision_user_app: user_id must not be NULL"),
            ("SELECT fly.deprovision_user_app(NULL)", "deprovision_user_app: user_id must not be NULL"),
            ("SELECT fly.retry_user_app(NULL)", "retry_user_app: user_id must not be NULL"),
            (f"SELECT fly.provision_user_app('{users(1, 75)[0]}')", "has no subscription in public.user_subscriptions"),
            (f"SELECT fly.provision_user_app('{user}')", 'is on tier "free", which has no dedicated app'),
            (f"SELECT fly.app_name_for('{user}', -1)", "attempt must be 0 or more"),
            ("SELECT fly.delete_orphan_apps(''' OR true; --')", "no reported orphan app is named \"' OR true; --\""),
            ("SELECT fly.attach_tier_trigger('user_subscriptions', 'user_id\"; DROP TABLE user_subscriptions; --', "
             "'tier')", 'column "user_id"; DROP TABLE user_subscriptions; --" of table "public.user_subscriptions" '
             'does not exist'),
            ("SELECT fly.attach_tier_trigger('user_subscriptions; DROP TABLE user_subscriptions')",
             "invalid name syntax"),
            ("SELECT fly.attach_tier_trigger(NULL, NULL, NULL)", "table and column names must not be NULL"),
            (f"SELECT fly._enqueue_reconcile('{user}', 'present''; --', 'pro', 'x')",
             "desired state must be 'present' or 'absent'"),
            (f"SELECT fly._guard_selftest(repeat('x', {MB}))", "unknown selftest kind"),
        ]
        for sql, fragment in cases:
            with self.subTest(sql=sql[:80]):
                self.refused("postgres", sql, fragment)
        self.assertEqual(self.pg.value(f"SELECT fly.app_name_for('{user}', 2147483647) IS NULL"), "t")
        self.assertEqual(self.pg.value("SELECT fly.monthly_cost_estimate(''' OR 1=1 --', 1, 256, repeat('x', 100000)) "
                                       "IS NULL"), "t")
        self.assertEqual(self.pg.value("SELECT count(*) FROM fly.get_user_fly_app_status(NULL)"), "0")
        # Rows the trigger let through (ids that are no uuid, with tiers that need no app) do not trouble onboarding.
        self.pg.sql("INSERT INTO user_subscriptions VALUES ('not-a-uuid-either', 'free')")
        self.assertEqual(self.pg.value("SELECT count(*) FROM fly.onboard_existing_users(dry_run => true)"), "0")
        # The trigger still watches the same columns, and the tables are all there.
        self.assertEqual(self.pg.sql("SELECT user_column, tier_column FROM fly.tier_source"), [["user_id", "tier"]])
        self.assertEqual(self.pg.value("SELECT to_regclass('fly.reconcile_queue') IS NOT NULL AND to_regclass("
                                       "'fly.user_fly_apps') IS NOT NULL AND to_regclass('user_subscriptions') IS "
                                       "NOT NULL"), "t")
        # Nothing was queued (the earlier tests' teardowns may still be waiting for Fly to confirm a deletion).
        self.assertTrue(self.pg.wait_for("SELECT count(*) = 0 FROM fly.pending_work", 30),
                        self.pg.sql("SELECT * FROM fly.reconcile_queue"))
        self.assertEqual(self.worker_pid(), self.pid)
        self.assert_no_crash()

    def malformed(self):
        return malformed_requests(self.sim.requests()["requests"])


class HostileFlyTest(SecurityTestCase):
    """Fly answering like a broken proxy or a malicious server. Every such answer is an error recorded for the
    user, the worker goes on (same process, memory bounded), and provisioning succeeds once Fly behaves."""

    @classmethod
    def setUpClass(cls):
        cls.sim = Simulator()
        cls.addClassCleanup(cls.sim.stop)
        cls.elsewhere = Simulator()
        cls.addClassCleanup(cls.elsewhere.stop)
        cls.pg = Cluster(cls.sim.url, {"fly.request_timeout": "'3s'", "fly.rate_limits": "off",
                                       "fly.max_attempts": "100", "fly.alert_after_attempts": "100",
                                       "fly.retry_max_delay": "'1s'"})
        cls.addClassCleanup(cls.pg.destroy)
        cls.pg.sql("CREATE TABLE user_subscriptions (user_id uuid PRIMARY KEY, tier text NOT NULL DEFAULT 'free')")
        cls.pg.sql("SELECT fly.attach_tier_trigger()")
        cls.seed = iter(range(80, 200))
        # One ordinary provisioning first, so that the baseline includes libcurl's and the worker's working set.
        warm_up = users(1, next(cls.seed))[0]
        cls.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{warm_up}', 'pro')")
        assert cls.pg.wait_for("SELECT NOT EXISTS (SELECT 1 FROM fly.pending_work)", 60)
        cls.pid = int(cls.pg.value("SELECT pid FROM fly.worker_status()"))
        with open(f"/proc/{cls.pid}/status") as f:
            cls.baseline_kb = int(next(line for line in f if line.startswith("VmHWM:")).split()[1])


    def tearDown(self):
        self.sim.configure(faults=[])

    def survive(self, faults, expected, user=None, change=None, failed_for_good=False):
        """Sets the faults, makes the change (by default a new pro user), waits for the failure naming `expected`
        to be recorded, removes the faults and checks that the user ends with exactly one app and one machine."""
        user = user or users(1, next(self.seed))[0]
        since = self.sim.requests()["last_seq"]
        iterations = int(self.pg.value("SELECT iterations FROM fly.worker_status()"))
        self.sim.configure(faults=faults)
        self.pg.sql(change or f"INSERT INTO user_subscriptions VALUES ('{user}', 'pro')")
        event = "provision_failed" if failed_for_good else "provision_attempt_failed"
        recorded = (f"SELECT EXISTS (SELECT 1 FROM fly.user_fly_app_events WHERE user_id = '{user}' "
                    f"AND event_type = '{event}' AND strpos(details->>'message', $${expected}$$) > 0)")
        self.assertTrue(self.pg.wait_for(recorded, 30),
                        self.pg.sql(f"SELECT event_type, details FROM fly.user_fly_app_events "
                                    f"WHERE user_id = '{user}'"))
        self.sim.configure(faults=[])
        if failed_for_good:
            self.assertTrue(self.pg.wait_for(f"SELECT status = 'failed' FROM fly.user_fly_apps WHERE user_id = "
                                             f"'{user}' AND deleted_at IS NULL", 10))
            self.pg.sql(f"SELECT fly.retry_user_app('{user}')")
        self.settle()
        self.assertEqual(self.status(user), "active")
        machines = self.sim.state()["apps"][app_name(user)]["machines"]
        self.assertEqual([m["state"] for m in machines.values()], ["started"], "exactly one machine")
        # The same worker process, still answering, its peak memory within bounds.
        self.assertEqual(self.worker_pid(), self.pid)
        self.assertGreater(int(self.pg.value("SELECT iterations FROM fly.worker_status()")), iterations)
        growth = self.peak_memory_kb(self.pid) - self.baseline_kb
        self.assertLess(growth, MEMORY_HEADROOM_KB, f"worker peak memory grew by {growth} kB")
        self.assertEqual(malformed_requests(self.sim.requests(since)["requests"]), [])
        self.assert_no_crash()
        return user

    def test_huge_bodies_are_cut_off(self):
        for chunked in (False, True):
            with self.subTest(chunked=chunked):
                self.survive([{"endpoint": ["create_app", "list_machines"], "always": True, "kind": "huge_body",
                               "bytes": 50 * MB, "chunked": chunked}],
                             "response too large: response larger than 1048576 bytes")

    def test_deeply_nested_json(self):
        self.survive([{"endpoint": "list_machines", "always": True, "kind": "deep_json", "depth": 100000}],
                     "the body is not valid JSON (JSON nested deeper than 64 levels)")

    def test_invalid_utf8(self):
        # The machine was created all the same: it is looked up and adopted, never created twice.
        user = self.survive([{"endpoint": "create_machine", "always": True, "kind": "invalid_utf8"}],
                            "the body is not valid JSON (unable to decode byte 0xff")
        creates = [r for r in self.sim.requests()["requests"] if r["endpoint"] == "create_machine"
                   and r["path"] == f"/v1/apps/{app_name(user)}/machines" and r["status"] == 200]
        self.assertEqual(len(self.sim.state()["apps"][app_name(user)]["machines"]), 1)
        self.assertGreaterEqual(len(creates), 1)

    def test_duplicated_members_make_an_answer_unusable(self):
        # A machine list entry naming its state twice would be read last-wins: it is refused, and asked again.
        user = users(1, next(self.seed))[0]
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{user}', 'pro')")
        self.settle()
        body = '[{"id": "0000000000d0b1", "state": "stopped", "state": "started"}]'
        self.survive([{"endpoint": "list_machines", "always": True, "kind": "status", "status": 200, "body": body,
                       "content_type": "application/json"}],
                     "the body is not valid JSON (duplicate object key", user=user,
                     change=f"SELECT fly.provision_user_app('{user}')")

    def test_wrong_types_in_the_machine_list(self):
        # Listing an existing user's machines with their types confused must not make pg_fly create another.
        for mutation, expected in (("string_for_object", "it is a string, not an object"),
                                   ("array_for_string", "its id is an array, not a string"),
                                   ("null_ids", "its id is null, not a string"),
                                   ("number_ids", "its id is a number, not a string")):
            with self.subTest(mutation=mutation):
                user = users(1, next(self.seed))[0]
                self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{user}', 'pro')")
                self.settle()
                self.survive([{"endpoint": "list_machines", "always": True, "kind": "wrong_types",
                               "mutation": mutation}],
                             "entry 1 of the machine list is unusable: " + expected, user=user,
                             change=f"SELECT fly.provision_user_app('{user}')")

    def test_wrong_types_in_other_answers_are_survived(self):
        # Confused types in every answer of a provisioning: whatever pg_fly makes of them, it ends well.
        for mutation in ("string_for_object", "array_for_string", "null_ids", "number_ids"):
            with self.subTest(mutation=mutation):
                user = users(1, next(self.seed))[0]
                self.sim.configure(faults=[{"endpoint": "*", "always": True, "kind": "wrong_types",
                                            "mutation": mutation}])
                self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{user}', 'pro')")
                time.sleep(1.5)
                self.sim.configure(faults=[])
                if self.status(user) == "failed":
                    self.pg.sql(f"SELECT fly.retry_user_app('{user}')")
                self.settle()
                self.assertEqual(self.status(user), "active")
                self.assertEqual(len(self.sim.state()["apps"][app_name(user)]["machines"]), 1)
                self.assertEqual(self.worker_pid(), self.pid)

    def test_redirect_to_another_host_is_not_followed(self):
        target = f"{self.elsewhere.url}/v1/apps"
        self.survive([{"endpoint": "create_app", "always": True, "kind": "redirect", "location": target},
                      {"endpoint": "get_app", "always": True, "kind": "redirect", "location": target, "status": 307}],
                     "create_app: HTTP 302 (found): unexpected redirect to 127.0.0.1", failed_for_good=True)
        self.assertEqual(self.elsewhere.control("GET", "stats")["requests_received"], 0)

    def test_slow_drip_body_times_out(self):
        # The app is created, but its answer trickles in a byte every 400 ms: the request gives up after 3 s, and the
        # retry finds the app already there (name taken, ours) and carries on.
        user = self.survive([{"endpoint": "create_app", "nth": [1], "kind": "slow_body", "drip_ms": 400}],
                            "create_app: network error (timed out)")
        self.assertIn("app_reused", [row[0] for row in self.pg.sql(
            f"SELECT event_type FROM fly.user_fly_app_events WHERE user_id = '{user}'")])

    def test_wrong_content_type(self):
        self.survive([{"endpoint": "list_machines", "always": True, "kind": "content_type",
                       "content_type": "text/html; charset=utf-8"}],
                     "the body is labelled text/html; charset=utf-8, not JSON")


class FinalScanTest(SecurityTestCase):
    """After a workload with successes, failures, hostile answers that echo the token and the secrets, health
    checks, a deprovision and an orphan pass: no table, no line of the server log (debug1) and no request in
    Fly's log holds the token or a secret value."""

    @classmethod
    def setUpClass(cls):
        cls.token = "pgfly-scan-token-" + secrets.token_hex(12)
        cls.secrets = {"GEMINI_API_KEY": "scan-secret-" + secrets.token_hex(8),
                       "SUPABASE_SERVICE_KEY_B64": "scan-jwt-" + secrets.token_hex(8)}
        cls.sim = Simulator({"tokens": {cls.token: "personal"}})
        cls.addClassCleanup(cls.sim.stop)
        cls.pg = Cluster(cls.sim.url, {"fly.request_timeout": "'5s'", "fly.rate_limits": "off"}, token=cls.token)
        cls.addClassCleanup(cls.pg.destroy)
        path = os.path.join(cls.pg.workdir, "app_secrets")
        with open(path, "w") as f:
            f.write("GEMINI_API_KEY=%s\nSUPABASE_SERVICE_KEY_B64:base64=%s\n"
                    % (cls.secrets["GEMINI_API_KEY"], cls.secrets["SUPABASE_SERVICE_KEY_B64"]))
        os.chmod(path, 0o600)
        if os.geteuid() == 0:
            import pwd
            postgres = pwd.getpwnam("postgres")
            os.chown(path, postgres.pw_uid, postgres.pw_gid)
        cls.pg.write_settings({"fly.app_secrets_file": f"'{path}'",
                               "fly.app_health_url": f"'{cls.sim.url}/__flysim/apps/{{app}}/health'"})
        cls.pg.reload()
        cls.pg.sql("CREATE TABLE user_subscriptions (user_id uuid PRIMARY KEY, tier text NOT NULL DEFAULT 'free')")
        cls.pg.sql("SELECT fly.attach_tier_trigger()")


    def test_no_token_or_secret_anywhere(self):
        self.assertTrue(self.pg.wait_for("SELECT token_source = 'fly.api_token_file' FROM fly.worker_status()", 30))
        encoded = base64.b64encode(self.secrets["SUPABASE_SERVICE_KEY_B64"].encode()).decode()
        needles = [TEST_TOKEN, self.token, encoded] + list(self.secrets.values())
        echo = f"token {self.token} secret {self.secrets['GEMINI_API_KEY']} b64 {encoded}"
        plain, echoed, doomed = users(3, 90)
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{plain}', 'pro'), ('{doomed}', 'pro')")
        self.settle()
        # Fly echoes the token and the secrets back: in an error body, an HTML page, a request id, a redirect.
        self.sim.configure(faults=[
            {"endpoint": "set_secrets", "nth": [1], "kind": "status", "status": 400,
             "body": {"error": echo, "status": echo}, "headers": {"Fly-Request-Id": self.token}},
            {"endpoint": "list_machines", "nth": [1], "kind": "status", "status": 503,
             "body": f"<html>{echo}</html>", "content_type": "text/html"},
            {"endpoint": "wait_machine", "nth": [1], "kind": "redirect",
             "location": f"http://{self.token}:{self.secrets['GEMINI_API_KEY']}@127.0.0.1:9/?{echo}"}])
        self.pg.sql(f"INSERT INTO user_subscriptions VALUES ('{echoed}', 'pro')")
        for failures in (1, 2):  # the 400 on set_secrets, then the redirect on wait
            self.assertTrue(self.pg.wait_for(f"SELECT count(*) = {failures} FROM fly.user_fly_app_events WHERE "
                                             f"user_id = '{echoed}' AND event_type = 'provision_failed'", 30))
            self.assertTrue(self.pg.wait_for(f"SELECT status = 'failed' FROM fly.user_fly_apps WHERE user_id = "
                                             f"'{echoed}' AND deleted_at IS NULL", 10))
            self.pg.sql(f"SELECT fly.retry_user_app('{echoed}')")
        self.settle()
        self.sim.configure(faults=[])
        self.pg.sql("SELECT fly.check_fly_apps_health()")
        self.assertTrue(self.pg.wait_for("SELECT count(*) = 0 FROM fly.user_fly_apps WHERE deleted_at IS NULL "
                                         "AND last_health_check_at IS NULL", 30))
        self.pg.sql(f"UPDATE user_subscriptions SET tier = 'free' WHERE user_id = '{doomed}'")
        self.settle()
        self.pg.sql("SELECT fly.find_orphan_apps()")
        time.sleep(1)
        self.pg.reload()
        time.sleep(0.5)
        self.assertEqual(self.pg.value("SELECT count(*) FROM fly.user_fly_apps WHERE status = 'active'"), "2")

        dump = subprocess.run([os.path.join(PG_BIN, "pg_dump"), "--data-only", "-h", self.pg.workdir, "-p",
                               str(self.pg.port), "-U", "postgres", "-d", self.pg.database],
                              capture_output=True, text=True, check=True, cwd=self.pg.workdir,
                              user="postgres" if os.geteuid() == 0 else None).stdout
        log = self.pg.server_log()
        requests = json.dumps(self.sim.requests())
        # The scan is not vacuous: the dump holds the apps, the echoed failures and the secrets' names; the log
        # holds the worker's own lines; Fly received every secret.
        self.assertIn(app_name(echoed), dump)
        self.assertIn("<redacted>", dump)
        self.assertIn("GEMINI_API_KEY", dump)
        self.assertIn("unexpected redirect to 127.0.0.1", dump)
        self.assertIn("pg_fly worker", log)
        self.assertIn("DEBUG:", log)
        revealed = self.sim.control("GET", f"secrets/{app_name(plain)}?reveal=1")["secrets"]
        self.assertEqual(revealed["GEMINI_API_KEY"], self.secrets["GEMINI_API_KEY"])
        for needle in needles:
            with self.subTest(needle=needle[:12]):
                self.assertNotIn(needle, dump)
                self.assertNotIn(needle, log)
                self.assertNotIn(needle, requests)
        self.assert_no_crash()


if __name__ == "__main__":
    unittest.main(verbosity=2)

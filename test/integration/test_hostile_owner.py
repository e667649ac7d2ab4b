"""The subscription table's owner is an ordinary role, and pg_fly's SECURITY DEFINER functions read its table
with the extension owner's (a superuser's) rights. Connected as itself, the owner tries every way it has to make
that reading run its own code: an enum with a cast to text, domains with CHECK functions, the table turned into a
view, row-level security, index/statistics/CHECK expressions the planner folds, a foreign partition, the table
dropped and a view made under its name. Then it calls every function an operator may call, and writes to fire the
trigger. Its code must never run as a superuser: each route either works (the code running as the owner, at
most) or is refused with an error that names the problem.

The owner holds what the README's operator role holds (USAGE on schema fly, EXECUTE on provision_user_app(uuid),
deprovision_user_app(uuid), retry_user_app(uuid), get_user_fly_app_status(uuid)) plus what an onboarding operator
needs (EXECUTE on provision_user_app() and onboard_existing_users(boolean)); a superuser attached the trigger."""

import os
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import PG_BIN, Cluster, Simulator  # noqa: E402

U_PRO = "11111111-1111-4111-8111-111111111111"
U_FAILED = "22222222-2222-4222-8222-222222222222"
U_NEW = "33333333-3333-4333-8333-333333333333"

# Records who it runs as, and tries to make its owner a superuser. The WARNING reaches the client even when the
# transaction is rolled back afterwards.
MARKER = """
CREATE TABLE hostile.marks (route text, who name, superuser boolean, at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION hostile.mark(route text) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    su boolean := (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user);
BEGIN
    RAISE WARNING 'PGFLY-MARK route=% user=% superuser=%', route, current_user, su;
    INSERT INTO hostile.marks (route, who, superuser) VALUES (route, current_user, su);
    BEGIN
        ALTER ROLE hostile SUPERUSER;
    EXCEPTION WHEN OTHERS THEN
        NULL;
    END;
    RETURN true;
END $$;
CREATE FUNCTION hostile.imm(value text, route text) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    PERFORM hostile.mark(route);
    RETURN value;
END $$;
"""

# Each route: the table's definition, what the owner does after the superuser attached the trigger, and the
# fragment the refusal must contain (None: pg_fly must keep working, the owner's code running as the owner).
ROUTES = [
    ("enum_cast", "(user_id uuid PRIMARY KEY, tier text)", """
        CREATE TYPE hostile.tiers AS ENUM ('free', 'pro', 'elite');
        CREATE FUNCTION hostile.tiers_text(hostile.tiers) RETURNS text LANGUAGE plpgsql AS $$
        BEGIN PERFORM hostile.mark('enum_cast'); RETURN format('%s', $1); END $$;
        CREATE CAST (hostile.tiers AS text) WITH FUNCTION hostile.tiers_text(hostile.tiers);
        DROP TRIGGER on_user_tier_change ON hostile.t_enum_cast;
        ALTER TABLE hostile.t_enum_cast ALTER COLUMN tier TYPE hostile.tiers USING tier::hostile.tiers;
     """, None),
    ("domain_user", "(user_id uuid PRIMARY KEY, tier text)", """
        CREATE FUNCTION hostile.check_uid(uuid) RETURNS boolean LANGUAGE plpgsql AS $$
        BEGIN RETURN hostile.mark('domain_user'); END $$;
        CREATE DOMAIN hostile.uid AS uuid CHECK (hostile.check_uid(VALUE));
        DROP TRIGGER on_user_tier_change ON hostile.t_domain_user;
        ALTER TABLE hostile.t_domain_user ALTER COLUMN user_id TYPE hostile.uid;
     """, 'column "user_id" of table hostile.t_domain_user is of type hostile.uid'),
    ("domain_tier", "(user_id uuid PRIMARY KEY, tier text)", """
        CREATE FUNCTION hostile.check_tier(text) RETURNS boolean LANGUAGE plpgsql AS $$
        BEGIN RETURN hostile.mark('domain_tier'); END $$;
        CREATE DOMAIN hostile.tier_name AS text CHECK (hostile.check_tier(VALUE));
        DROP TRIGGER on_user_tier_change ON hostile.t_domain_tier;
        ALTER TABLE hostile.t_domain_tier ALTER COLUMN tier TYPE hostile.tier_name;
     """, 'column "tier" of table hostile.t_domain_tier is of type hostile.tier_name'),
    ("view_rule", "(user_id uuid, tier text)", f"""
        DROP TRIGGER on_user_tier_change ON hostile.t_view_rule;
        DROP TRIGGER on_user_tier_truncate ON hostile.t_view_rule;
        DELETE FROM hostile.t_view_rule;
        --
        VACUUM hostile.t_view_rule;
        --
        CREATE RULE "_RETURN" AS ON SELECT TO hostile.t_view_rule DO INSTEAD
            SELECT u::uuid AS user_id, 'pro'::text AS tier FROM (VALUES ('{U_PRO}'), ('{U_FAILED}')) v (u)
             WHERE hostile.mark('view_rule');
     """, "hostile.t_view_rule is a view, not a table"),
    ("rls_force", "(user_id uuid PRIMARY KEY, tier text)", """
        ALTER TABLE hostile.t_rls_force ENABLE ROW LEVEL SECURITY;
        ALTER TABLE hostile.t_rls_force FORCE ROW LEVEL SECURITY;
        CREATE POLICY everything ON hostile.t_rls_force USING (hostile.mark('rls_force'))
            WITH CHECK (hostile.mark('rls_force'));
     """, None),
    ("planner_folds", "(user_id uuid PRIMARY KEY, tier text)", """
        CREATE INDEX ON hostile.t_planner_folds ((tier || hostile.imm('x', 'planner_folds')));
        CREATE INDEX ON hostile.t_planner_folds (tier) WHERE hostile.imm('y', 'planner_folds') = 'y';
        CREATE STATISTICS hostile.folds ON (tier || hostile.imm('z', 'planner_folds')) FROM hostile.t_planner_folds;
        CREATE TABLE hostile.t_planner_folds_child (
            CHECK (hostile.imm('c', 'planner_folds') = 'c')) INHERITS (hostile.t_planner_folds);
     """, None),
    ("foreign_partition", "(user_id uuid, tier text) PARTITION BY LIST (tier)", """
        CREATE TABLE hostile.t_foreign_partition_paid PARTITION OF hostile.t_foreign_partition
            FOR VALUES IN ('pro', 'elite');
        CREATE TABLE hostile.t_foreign_partition_free PARTITION OF hostile.t_foreign_partition DEFAULT;
     """, "hostile.t_foreign_partition_f, a partition or child table of hostile.t_foreign_partition, "
          "is a foreign table"),
    ("dropped", "(user_id uuid PRIMARY KEY, tier text)", f"""
        DROP TABLE hostile.t_dropped;
        CREATE VIEW hostile.t_dropped AS
            SELECT '{U_PRO}'::uuid AS user_id, 'pro'::text AS tier WHERE hostile.mark('dropped');
     """, "no longer exists"),
]

# The calls whose work reads the subscription table.
READING_CALLS = [
    f"SELECT fly.provision_user_app('{U_PRO}')",
    f"SELECT fly.retry_user_app('{U_FAILED}')",
    "SELECT * FROM fly.onboard_existing_users(true)",
    "SELECT * FROM fly.onboard_existing_users(false)",
    "SELECT fly.provision_user_app()",
]
OTHER_CALLS = [
    f"SELECT fly.deprovision_user_app('{U_PRO}')",
    f"SELECT * FROM fly.get_user_fly_app_status('{U_PRO}')",
]


def _create_hostile_role(pg):
    """The attacker: an ordinary role with its own schema, USAGE on fly and the README's operator functions."""
    pg.sql("CREATE ROLE hostile LOGIN; CREATE SCHEMA hostile AUTHORIZATION hostile; "
           "GRANT USAGE ON SCHEMA fly TO hostile; "
           "GRANT EXECUTE ON FUNCTION fly.provision_user_app(uuid), fly.deprovision_user_app(uuid), "
           "fly.retry_user_app(uuid), fly.get_user_fly_app_status(uuid), fly.provision_user_app(), "
           "fly.onboard_existing_users(boolean) TO hostile")


class HostileOwnerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.sim = Simulator()
        cls.addClassCleanup(cls.sim.stop)
        # No token: the worker stays idle, so the queue and app rows stay as the calls leave them.
        cls.pg = Cluster(cls.sim.url, token="")
        cls.addClassCleanup(cls.pg.destroy)
        _create_hostile_role(cls.pg)
        cls.pg.sql("CREATE EXTENSION file_fdw; CREATE SERVER files FOREIGN DATA WRAPPER file_fdw; "
                   "GRANT USAGE ON FOREIGN SERVER files TO hostile")
        code, _, err = cls.as_hostile(MARKER)
        assert code == 0, err

    @classmethod
    def as_hostile(cls, sql):
        command = [os.path.join(PG_BIN, "psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", cls.pg.workdir,
                   "-p", str(cls.pg.port), "-U", "hostile", "-d", cls.pg.database, "-c", sql]
        result = subprocess.run(command, capture_output=True, text=True, cwd=cls.pg.workdir,
                                user="postgres" if os.geteuid() == 0 else None)
        return result.returncode, result.stdout, result.stderr

    def run_route(self, route, columns, attack, refusal):
        """Returns the route's outputs (for the marker check) and the problems found."""
        table = f"hostile.t_{route}"
        outputs, problems = [], []
        self.pg.psql("SELECT fly.detach_tier_trigger()", check=False)
        self.pg.sql("TRUNCATE fly.reconcile_queue, fly.tier_intents, fly.user_fly_app_events, fly.user_fly_apps")
        code, _, err = self.as_hostile(f"CREATE TABLE {table} {columns}")
        self.assertEqual(code, 0, err)
        if route == "foreign_partition":
            attack = attack.strip()
            code, _, err = self.as_hostile(attack)
            self.assertEqual(code, 0, err)
            attack = ""
        code, _, err = self.as_hostile(f"INSERT INTO {table} VALUES ('{U_PRO}', 'pro'), ('{U_FAILED}', 'pro')")
        self.assertEqual(code, 0, err)
        self.pg.sql(f"SELECT fly.attach_tier_trigger('{table}', 'user_id', 'tier')")
        self.pg.sql(f"INSERT INTO fly.user_fly_apps (user_id, fly_app_name, fly_org_slug, region, status) "
                    f"VALUES ('{U_FAILED}', 'vyx-user-failed', 'personal', 'sjc', 'failed')")
        if route == "foreign_partition":
            # The owner cannot make a foreign table read a file; an administrator can, and pg_fly must then
            # refuse to read through it rather than run the wrapper with a superuser's rights.
            foreign = (f"CREATE FOREIGN TABLE {table}_f PARTITION OF {table} FOR VALUES IN ('enterprise') "
                       "SERVER files OPTIONS (filename '/dev/null')")
            code, _, err = self.as_hostile(foreign)
            outputs.append(err)
            self.assertNotEqual(code, 0, "the owner made a foreign table read a file")
            self.pg.sql(foreign + f"; ALTER FOREIGN TABLE {table}_f OWNER TO hostile")
            code, _, err = self.as_hostile(f"CREATE VIEW hostile.v AS SELECT * FROM {table}_paid; "
                                           f"ALTER TABLE {table} ATTACH PARTITION hostile.v FOR VALUES IN ('x')")
            outputs.append(err)
            self.assertNotEqual(code, 0, "a view became a partition")
        else:
            for statement in attack.split("\n        --\n"):  # VACUUM runs on its own
                code, _, err = self.as_hostile(statement)
                outputs.append(err)
                self.assertEqual(code, 0, f"{route}: the owner's preparation failed: {err}")

        def call(sql, expect, role="hostile"):
            """expect: "ok" (must work), or "reads" (must work, or be refused naming the problem if the route is
            one pg_fly refuses)."""
            if role == "hostile":
                code, out, err = self.as_hostile(sql)
            else:
                result = self.pg.psql(sql, check=False)
                code, out, err = result.returncode, result.stdout, result.stderr
            outputs.append(out + err)
            if expect == "ok" or refusal is None:
                if code != 0:
                    problems.append(f"{route}: {sql} failed: {err.strip()}")
            elif code == 0 or refusal not in err:
                problems.append(f"{route}: {sql} was not refused naming the problem: {code} {err.strip()}")

        for sql in READING_CALLS:
            call(sql, "reads")
        for sql in OTHER_CALLS:
            call(sql, "ok")
        # An onboarding administrator.
        call("SELECT fly.provision_user_app()", "reads", role="postgres")
        # A superuser repairing the trigger: attaching works, or is refused naming the table.
        result = self.pg.psql(f"SELECT fly.attach_tier_trigger('{table}', 'user_id', 'tier')", check=False)
        outputs.append(result.stderr)
        if (result.returncode == 0) != (refusal is None) or (refusal is not None and table not in result.stderr):
            problems.append(f"{route}: attach_tier_trigger: {result.returncode} {result.stderr.strip()}")
        # Writes fire the trigger where there is one; their outcome is the owner's business, not pg_fly's.
        for sql in (f"INSERT INTO {table} VALUES ('{U_NEW}', 'pro')",
                    f"UPDATE {table} SET tier = 'free' WHERE user_id = '{U_NEW}'",
                    f"DELETE FROM {table} WHERE user_id = '{U_NEW}'"):
            outputs.append(self.as_hostile(sql)[2])
        if self.pg.value("SELECT rolsuper FROM pg_roles WHERE rolname = 'hostile'") == "t":
            problems.append(f"{route}: the owner became a superuser")
            self.pg.sql("ALTER ROLE hostile NOSUPERUSER")
        self.pg.psql("SELECT fly.detach_tier_trigger()", check=False)
        self.pg.sql("TRUNCATE fly.reconcile_queue, fly.tier_intents, fly.user_fly_app_events, fly.user_fly_apps")
        return outputs, problems

    def test_the_owners_code_never_runs_as_a_superuser(self):
        problems, outputs = [], []
        for route, columns, attack, refusal in ROUTES:
            with self.subTest(route=route):
                route_outputs, route_problems = self.run_route(route, columns, attack, refusal)
                outputs += route_outputs
                problems += route_problems
        escalated = sorted({line.strip() for text in outputs for line in text.splitlines()
                            if "PGFLY-MARK" in line and "superuser=t" in line})
        self.maxDiff = None
        self.assertEqual(problems, [])
        self.assertEqual(escalated, [])
        self.assertEqual(self.pg.sql("SELECT route, who FROM hostile.marks WHERE superuser"), [])
        self.assertEqual(self.pg.value("SELECT rolsuper FROM pg_roles WHERE rolname = 'hostile'"), "f")
        # The routes that keep working did run the owner's code, as the owner: the test exercised them.
        ran = {route for route, who in self.pg.sql("SELECT DISTINCT route, who FROM hostile.marks")
               if who == "hostile"}
        self.assertTrue({"rls_force", "planner_folds"} <= ran, ran)


U_A = "44444444-4444-4444-8444-444444444444"
U_B = "55555555-5555-4555-8555-555555555555"
U_C = "66666666-6666-4666-8666-666666666666"


class HostileOwnerFollowUpTest(unittest.TestCase):
    """The review of the hardening above: pg_fly's triggers left behind, a hint that leads a superuser into the
    owner's code, owner code calling pg_fly's functions on a superuser's behalf."""

    @classmethod
    def setUpClass(cls):
        cls.sim = Simulator()
        cls.addClassCleanup(cls.sim.stop)
        cls.pg = Cluster(cls.sim.url, token="")  # the worker stays idle: the queue stays as the writes leave it
        cls.addClassCleanup(cls.pg.destroy)
        _create_hostile_role(cls.pg)
        code, _, err = cls.as_hostile(MARKER)
        assert code == 0, err

    as_hostile = classmethod(HostileOwnerTest.as_hostile.__func__)

    def hostile(self, sql):
        code, out, err = self.as_hostile(sql)
        self.assertEqual(code, 0, f"{sql}: {err}")
        return out + err

    def queued(self):
        self.pg.sql("SELECT fly.fold_intents()")  # what the worker does within 200 ms
        return {tuple(row) for row in self.pg.sql("SELECT user_id, desired FROM fly.reconcile_queue")}

    def pg_fly_triggers(self):
        return self.pg.sql("SELECT tgrelid::regclass, tgname FROM pg_trigger WHERE tgfoid IN "
                           "('fly.on_user_tier_change()'::regprocedure, 'fly.on_user_tier_truncate()'::regprocedure) "
                           "ORDER BY 1, 2")

    def setUp(self):
        self.pg.psql("SELECT fly.detach_tier_trigger()", check=False)
        self.pg.sql("TRUNCATE fly.reconcile_queue, fly.tier_intents, fly.user_fly_app_events, fly.user_fly_apps")

    def attach_partitioned(self):
        self.hostile("CREATE TABLE hostile.psubs (user_id uuid, tier text) PARTITION BY LIST (tier); "
                     "CREATE TABLE hostile.psubs_pro PARTITION OF hostile.psubs FOR VALUES IN ('pro'); "
                     "CREATE TABLE hostile.psubs_rest PARTITION OF hostile.psubs DEFAULT; "
                     "CREATE TABLE hostile.other (user_id uuid, tier text)")
        self.pg.sql("SELECT fly.attach_tier_trigger('hostile.psubs', 'user_id', 'tier')")

    def tearDown(self):
        self.pg.sql("ALTER ROLE hostile NOSUPERUSER")  # the marker's attempt, if the owner's code ran as one
        self.pg.psql("SELECT fly.detach_tier_trigger()", check=False)
        self.hostile("DROP TABLE IF EXISTS hostile.psubs, hostile.psubs_pro, hostile.other")

    def test_the_owner_adds_partitions_after_the_attach(self):
        self.attach_partitioned()
        # Cloning the row trigger needs EXECUTE on its function.
        self.hostile("CREATE TABLE hostile.psubs_elite PARTITION OF hostile.psubs FOR VALUES IN ('elite'); "
                     f"INSERT INTO hostile.psubs VALUES ('{U_A}', 'elite')")
        self.assertEqual(self.queued(), {(U_A, "present")})
        # PostgreSQL drops the clone from a partition detached since.
        self.hostile("ALTER TABLE hostile.psubs DETACH PARTITION hostile.psubs_pro")
        self.assertNotIn("hostile.psubs_pro", [row[0] for row in self.pg_fly_triggers()])

    def test_pg_flys_triggers_elsewhere_do_nothing(self):
        self.attach_partitioned()
        # As detaching used to leave renamed ones.
        self.pg.sql("CREATE TRIGGER keep_row AFTER INSERT OR UPDATE OR DELETE ON hostile.other "
                    "FOR EACH ROW EXECUTE FUNCTION fly.on_user_tier_change('user_id', 'tier'); "
                    "CREATE TRIGGER keep_trunc AFTER TRUNCATE ON hostile.other "
                    "FOR EACH STATEMENT EXECUTE FUNCTION fly.on_user_tier_truncate()")
        self.pg.sql(f"SELECT fly._enqueue_reconcile('{U_A}', 'present', 'pro', 'manual')")
        out = self.hostile(f"INSERT INTO hostile.other VALUES ('{U_C}', 'pro')")
        self.assertIn('pg_fly trigger "keep_row" on "other" ignored this change', out)
        out = self.hostile("TRUNCATE hostile.other")
        self.assertIn('pg_fly trigger "keep_trunc" on "other" ignored this TRUNCATE', out)
        # One naming other columns than fly.tier_source does nothing either, and fails no write.
        self.pg.sql("CREATE TRIGGER swapped AFTER INSERT ON hostile.psubs "
                    "FOR EACH ROW EXECUTE FUNCTION fly.on_user_tier_change('tier', 'user_id')")
        self.hostile(f"INSERT INTO hostile.psubs VALUES ('{U_B}', 'pro')")
        self.assertEqual(self.queued(), {(U_A, "present"), (U_B, "present")})

    def test_detaching_and_reattaching_drop_renamed_triggers(self):
        self.attach_partitioned()
        self.hostile("ALTER TRIGGER on_user_tier_change ON hostile.psubs RENAME TO keep_row; "
                     "ALTER TRIGGER on_user_tier_truncate ON hostile.psubs RENAME TO keep_trunc")
        self.pg.sql("SELECT fly.attach_tier_trigger('hostile.other', 'user_id', 'tier')")
        self.assertEqual(self.pg_fly_triggers(), [["hostile.other", "on_user_tier_change"],
                                                  ["hostile.other", "on_user_tier_truncate"]])
        self.hostile("ALTER TRIGGER on_user_tier_change ON hostile.other RENAME TO keep_row; "
                     "ALTER TRIGGER on_user_tier_truncate ON hostile.other RENAME TO keep_trunc")
        self.pg.sql(f"SELECT fly._enqueue_reconcile('{U_A}', 'present', 'pro', 'manual')")
        self.pg.sql("SELECT fly.detach_tier_trigger()")
        self.assertEqual(self.pg_fly_triggers(), [])
        # The owner, with no pg_fly privilege used, can neither provision nor tear everyone down.
        self.hostile(f"INSERT INTO hostile.other VALUES ('{U_C}', 'pro'); TRUNCATE hostile.other")
        self.assertEqual(self.queued(), {(U_A, "present")})

    def test_a_locked_table_does_not_block_detach_and_execute_is_taken_back(self):
        self.attach_partitioned()
        self.assertIn("hostile=X", self.pg.value(
            "SELECT proacl::text FROM pg_proc WHERE oid = 'fly.on_user_tier_change()'::regprocedure"))
        # The owner, now holding EXECUTE, puts pg_fly's trigger on another table and keeps that table locked.
        self.hostile("CREATE TRIGGER stay AFTER INSERT ON hostile.other "
                     "FOR EACH ROW EXECUTE FUNCTION fly.on_user_tier_change('user_id', 'tier')")
        command = [os.path.join(PG_BIN, "psql"), "-X", "-q", "-h", self.pg.workdir, "-p", str(self.pg.port),
                   "-U", "hostile", "-d", self.pg.database, "-c",
                   "BEGIN; LOCK hostile.other IN ACCESS SHARE MODE; SELECT pg_sleep(60)"]
        locker = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.pg.workdir,
                                  user="postgres" if os.geteuid() == 0 else None)
        self.addCleanup(locker.wait)
        self.addCleanup(locker.kill)
        self.assertTrue(self.pg.wait_for("SELECT count(*) = 1 FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                                         "WHERE c.relname = 'other' AND l.granted", timeout=30))
        started = time.monotonic()
        result = self.pg.psql("SELECT fly.detach_tier_trigger()")
        self.assertLess(time.monotonic() - started, 30, "detach waited for the owner's lock")
        self.assertIn('could not remove trigger "stay"', result.stderr)
        # The attached table's triggers are gone, and so is the owner's EXECUTE.
        self.assertEqual(self.pg_fly_triggers(), [["hostile.other", "stay"]])
        self.assertNotIn("hostile=X", self.pg.value(
            "SELECT coalesce(proacl::text, '') FROM pg_proc WHERE oid = 'fly.on_user_tier_change()'::regprocedure"))
        locker.kill()
        locker.wait()
        self.pg.sql("DROP TRIGGER stay ON hostile.other")

    def test_the_hint_for_unusable_user_ids_runs_no_owner_code_as_a_superuser(self):
        self.hostile("CREATE TABLE hostile.tsubs (user_id text, tier text); "
                     "CREATE INDEX ON hostile.tsubs (tier) WHERE hostile.imm('y', 'hint') = 'y'; "
                     "INSERT INTO hostile.tsubs VALUES ('not-a-uuid', 'pro')")
        self.pg.sql("SELECT fly.attach_tier_trigger('hostile.tsubs', 'user_id', 'tier')")
        result = self.pg.psql("SELECT * FROM fly.onboard_existing_users(true)")
        hints = [line.split("Find them with: ", 1)[1] for line in result.stderr.splitlines()
                 if "Find them with: " in line]
        self.assertEqual(len(hints), 1, result.stderr)
        # A superuser runs the hint's query as it is.
        found = self.pg.sql(hints[0])
        self.assertEqual(self.pg.sql("SELECT route, who FROM hostile.marks WHERE superuser"), [])
        self.assertNotIn("hostile", hints[0])
        self.assertEqual(found, [["not-a-uuid", "pro"]])
        self.assertEqual(self.pg.value("SELECT has_function_privilege('public', 'fly.unusable_subscriptions()', "
                                       "'EXECUTE')"), "f")

    def test_owner_code_cannot_call_pg_flys_functions_on_a_superusers_behalf(self):
        self.hostile(f"""
            CREATE TABLE hostile.spoofs (result text);
            CREATE FUNCTION hostile.spoof() RETURNS boolean LANGUAGE plpgsql AS $$
            BEGIN
                BEGIN
                    PERFORM fly.deprovision_user_app('{U_C}');
                    INSERT INTO hostile.spoofs VALUES ('called');
                EXCEPTION WHEN OTHERS THEN
                    INSERT INTO hostile.spoofs VALUES (SQLSTATE || ' ' || SQLERRM);
                END;
                BEGIN  -- no app needs the image: it would only record a rollout "started by" the superuser
                    PERFORM fly.start_image_rollout('registry.fly.io/vyx-app:spoofed');
                    INSERT INTO hostile.spoofs VALUES ('called');
                EXCEPTION WHEN OTHERS THEN
                    INSERT INTO hostile.spoofs VALUES (SQLSTATE || ' ' || SQLERRM);
                END;
                RETURN true;
            END $$;
            CREATE TABLE hostile.rsubs (user_id uuid, tier text);
            INSERT INTO hostile.rsubs VALUES ('{U_A}', 'pro');
            ALTER TABLE hostile.rsubs ENABLE ROW LEVEL SECURITY;
            ALTER TABLE hostile.rsubs FORCE ROW LEVEL SECURITY;
            CREATE POLICY everything ON hostile.rsubs USING (hostile.spoof())""")
        self.pg.sql("SELECT fly.attach_tier_trigger('hostile.rsubs', 'user_id', 'tier'); "
                    "GRANT EXECUTE ON FUNCTION fly.start_image_rollout(text, integer, integer, interval) TO hostile")
        self.assertEqual(self.pg.sql("SELECT user_id, tier, queued FROM fly.onboard_existing_users(true)"),
                         [[U_A, "pro", "f"]])
        self.assertEqual(self.pg.sql("SELECT id, started_by FROM fly.image_rollouts"), [])
        spoofs = [row[0] for row in self.pg.sql("SELECT DISTINCT result FROM hostile.spoofs")]
        self.assertEqual(len(spoofs), 1, spoofs)
        self.assertTrue(spoofs[0].startswith("42501 pg_fly's functions cannot be called within a "
                                             "security-restricted operation"), spoofs)
        self.assertEqual(self.queued(), set())

    def test_a_child_added_while_the_table_is_read_is_not_read(self):
        # A file the owner may not read; an administrator made a foreign table of it and gave it to the owner.
        path = os.path.join(self.pg.workdir, "foreign.csv")
        with open(path, "w") as f:
            f.write(f"{U_C},pro\n")
        if os.geteuid() == 0:
            subprocess.run(["chown", "postgres:", path], check=True)
        self.pg.sql("CREATE EXTENSION IF NOT EXISTS file_fdw; "
                    "CREATE SERVER IF NOT EXISTS files FOREIGN DATA WRAPPER file_fdw; "
                    "CREATE FOREIGN TABLE hostile.ft (user_id uuid, tier text) SERVER files "
                    f"OPTIONS (filename '{path}', format 'csv'); ALTER FOREIGN TABLE hostile.ft OWNER TO hostile")
        # The owner's policy, folded while pg_fly's read is planned (after pg_fly checked the table), makes the
        # foreign table a child of the subscription table.
        self.hostile(f"""
            CREATE FUNCTION hostile.do_graft() RETURNS void LANGUAGE plpgsql AS $$
            BEGIN
                IF session_user <> current_user AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_inherits i
                        WHERE i.inhrelid = 'hostile.ft'::pg_catalog.regclass) THEN
                    ALTER TABLE hostile.ft INHERIT hostile.csubs;
                    RAISE WARNING 'PGFLY-GRAFTED';
                END IF;
            END $$;
            CREATE FUNCTION hostile.graft() RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
            BEGIN
                PERFORM hostile.do_graft();
                RETURN true;
            END $$;
            CREATE TABLE hostile.csubs (user_id uuid, tier text);
            -- With a child already there the planner expands the table's children after folding the policy.
            CREATE TABLE hostile.csubs_kid () INHERITS (hostile.csubs);
            INSERT INTO hostile.csubs VALUES ('{U_A}', 'pro');
            ALTER TABLE hostile.csubs ENABLE ROW LEVEL SECURITY;
            ALTER TABLE hostile.csubs FORCE ROW LEVEL SECURITY;
            CREATE POLICY everything ON hostile.csubs USING (hostile.graft())""")
        self.pg.sql("SELECT fly.attach_tier_trigger('hostile.csubs', 'user_id', 'tier')")
        try:
            # The user is only in the file.
            result = self.pg.psql(f"SELECT fly.provision_user_app('{U_C}')", check=False)
            self.assertIn("PGFLY-GRAFTED", result.stderr)  # the owner's code did make the file a child
            self.assertIn(f"user {U_C} has no subscription in hostile.csubs", result.stderr)
            self.assertEqual(self.queued(), set())
        finally:
            self.as_hostile("ALTER TABLE hostile.ft NO INHERIT hostile.csubs")  # if the call committed it


class WorkerSearchPathTest(unittest.TestCase):
    """A database owner who is not a superuser sets its database's search_path to its own schema, with an `=`
    for text and a domain named text: the worker (a superuser) must not run their functions."""

    @classmethod
    def setUpClass(cls):
        cls.sim = Simulator()
        cls.addClassCleanup(cls.sim.stop)
        cls.pg = Cluster(cls.sim.url, settings={"fly.request_timeout": "'5s'", "fly.max_attempts": "3",
                                                "fly.alert_after_attempts": "2", "fly.rate_limits": "off"})
        cls.addClassCleanup(cls.pg.destroy)

    def test_the_database_owners_search_path_does_not_reach_the_worker(self):
        self.pg.sql(f"""
            CREATE ROLE dbowner LOGIN; ALTER DATABASE {self.pg.database} OWNER TO dbowner;
            SET ROLE dbowner;
            CREATE SCHEMA dbowner;
            CREATE TABLE dbowner.marks (who name, superuser boolean);
            CREATE FUNCTION dbowner.mark() RETURNS void LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO dbowner.marks SELECT current_user, r.rolsuper FROM pg_catalog.pg_roles r
                 WHERE r.rolname OPERATOR(pg_catalog.=) current_user;
            END $$;
            CREATE FUNCTION dbowner.text_eq(text, text) RETURNS boolean LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM dbowner.mark();
                RETURN $1 OPERATOR(pg_catalog.=) $2;
            END $$;
            CREATE OPERATOR dbowner.= (LEFTARG = text, RIGHTARG = text, FUNCTION = dbowner.text_eq);
            CREATE FUNCTION dbowner.check_text(pg_catalog.text) RETURNS boolean LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM dbowner.mark();
                RETURN true;
            END $$;
            CREATE DOMAIN dbowner.text AS pg_catalog.text CHECK (dbowner.check_text(VALUE));
            ALTER DATABASE {self.pg.database} SET search_path = dbowner, pg_catalog;
            RESET ROLE""")
        # The worker reads the database's settings when it connects: restart it.
        self.pg.stop(check=True)
        self.pg.start()
        self.sim.configure(faults=[{"endpoint": "*", "always": True, "kind": "status", "status": 503}])
        self.pg.sql(f"SELECT fly._enqueue_reconcile('{U_A}', 'present', 'pro', 'manual')")
        self.assertTrue(self.pg.wait_for(
            "SELECT count(*) > 0 FROM fly.user_fly_app_events "
            "WHERE event_type OPERATOR(pg_catalog.=) 'alert_raised'::pg_catalog.text", 120), self.pg.server_log()[-3000:])
        self.assertEqual(self.pg.sql("SELECT who FROM dbowner.marks WHERE superuser"), [])
        self.assertEqual(self.pg.value("SELECT rolsuper FROM pg_roles WHERE rolname OPERATOR(pg_catalog.=) "
                                       "'dbowner'::name"), "f")


if __name__ == "__main__":
    unittest.main(verbosity=2)

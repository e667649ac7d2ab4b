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


class HostileOwnerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.sim = Simulator()
        cls.addClassCleanup(cls.sim.stop)
        # No token: the worker stays idle, so the queue and app rows stay as the calls leave them.
        cls.pg = Cluster(cls.sim.url, token="")
        cls.addClassCleanup(cls.pg.destroy)
        cls.pg.sql("CREATE ROLE hostile LOGIN; CREATE SCHEMA hostile AUTHORIZATION hostile; "
                   "GRANT USAGE ON SCHEMA fly TO hostile; "
                   "GRANT EXECUTE ON FUNCTION fly.provision_user_app(uuid), fly.deprovision_user_app(uuid), "
                   "fly.retry_user_app(uuid), fly.get_user_fly_app_status(uuid), fly.provision_user_app(), "
                   "fly.onboard_existing_users(boolean) TO hostile")
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
        self.pg.sql("TRUNCATE fly.reconcile_queue, fly.user_fly_app_events, fly.user_fly_apps")
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
        self.pg.sql("TRUNCATE fly.reconcile_queue, fly.user_fly_app_events, fly.user_fly_apps")
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


if __name__ == "__main__":
    unittest.main(verbosity=2)

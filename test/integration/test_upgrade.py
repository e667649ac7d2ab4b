"""ALTER EXTENSION pg_fly UPDATE from the first released version (0.1.0, tag v0.1.0) keeps every row, and leaves
a schema identical to a fresh CREATE EXTENSION pg_fly, which runs the current version's own standalone script
(src/sql/pg_fly--X.Y.Z.sql), not the chain of upgrade scripts. The schemas are compared through the catalogs
(pg_dump leaves an extension's objects out), and so are the rows and sequences the scripts make, so every future
release's standalone and upgrade scripts are held to the same standard."""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Cluster, Simulator  # noqa: E402

FIRST_RELEASE = "0.1.0"

# One line per fact about the extension's objects, free of OIDs and of data: its members, the tables pg_dump
# keeps, and for schema fly every relation, column, constraint, index, trigger, function, view, sequence, type,
# policy, comment and privilege.
DESCRIBE_SCHEMA = r"""
WITH ext AS (SELECT oid, extversion, extconfig, extcondition FROM pg_extension WHERE extname = 'pg_fly'),
members AS (SELECT classid, objid, objsubid FROM pg_depend
            WHERE refclassid = 'pg_extension'::regclass AND refobjid = (SELECT oid FROM ext) AND deptype = 'e'),
fly AS (SELECT 'fly'::regnamespace AS nsp),
rels AS (SELECT c.* FROM pg_class c, fly WHERE c.relnamespace = fly.nsp),
procs AS (SELECT p.* FROM pg_proc p, fly WHERE p.pronamespace = fly.nsp
          OR p.oid IN (SELECT objid FROM members WHERE classid = 'pg_proc'::regclass)),
facts(line) AS (
    SELECT 'member ' || pg_describe_object(classid, objid, objsubid) FROM members
    UNION ALL
    SELECT 'config ' || c::regclass::text || ' where ' || coalesce(cond, '')
      FROM ext, unnest(ext.extconfig, ext.extcondition) AS u(c, cond)
    UNION ALL
    SELECT 'schema fly owner=' || nspowner::regrole || ' acl=' || coalesce(nspacl::text, '')
      FROM pg_namespace, fly WHERE oid = fly.nsp
    UNION ALL
    SELECT format('relation %s kind=%s persistence=%s owner=%s options=%s acl=%s rls=%s,%s', oid::regclass, relkind,
                  relpersistence, relowner::regrole, reloptions, relacl, relrowsecurity, relforcerowsecurity)
      FROM rels
    UNION ALL
    SELECT format('column %s #%s %s %s notnull=%s default=%s identity=%s generated=%s collation=%s acl=%s',
                  a.attrelid::regclass, row_number() OVER (PARTITION BY a.attrelid ORDER BY a.attnum), a.attname,
                  format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid), a.attidentity,
                  a.attgenerated, a.attcollation::regcollation, a.attacl)
      FROM pg_attribute a JOIN rels c ON c.oid = a.attrelid
      LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
     WHERE a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    SELECT format('constraint %s %s %s deferrable=%s,%s', con.conrelid::regclass, con.conname,
                  pg_get_constraintdef(con.oid), con.condeferrable, con.condeferred)
      FROM pg_constraint con, fly WHERE con.connamespace = fly.nsp
    UNION ALL
    SELECT 'index ' || pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN rels c ON c.oid = i.indexrelid
    UNION ALL
    SELECT 'trigger ' || pg_get_triggerdef(t.oid) || ' enabled=' || t.tgenabled::text
      FROM pg_trigger t JOIN rels c ON c.oid = t.tgrelid WHERE NOT t.tgisinternal
    UNION ALL
    SELECT format('function %s kind=%s owner=%s acl=%s %s', p.oid::regprocedure, p.prokind, p.proowner::regrole,
                  p.proacl, CASE WHEN p.prokind <> 'a' THEN pg_get_functiondef(p.oid) END)
      FROM procs p
    UNION ALL
    SELECT 'view ' || oid::regclass || ' ' || pg_get_viewdef(oid) FROM rels WHERE relkind IN ('v', 'm')
    UNION ALL
    SELECT format('sequence %s %s start=%s increment=%s max=%s min=%s cache=%s cycle=%s', s.seqrelid::regclass,
                  format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, s.seqmax, s.seqmin, s.seqcache,
                  s.seqcycle)
      FROM pg_sequence s JOIN rels c ON c.oid = s.seqrelid
    UNION ALL
    SELECT format('type %s %s %s owner=%s acl=%s', t.oid::regtype, t.typtype,
                  (SELECT string_agg(enumlabel, ',' ORDER BY enumsortorder) FROM pg_enum WHERE enumtypid = t.oid),
                  t.typowner::regrole, t.typacl)
      FROM pg_type t, fly WHERE t.typnamespace = fly.nsp AND t.typrelid = 0 AND t.typcategory <> 'A'
    UNION ALL
    SELECT format('policy %s.%s %s %s %s roles=%s using=%s check=%s', schemaname, tablename, policyname, permissive,
                  cmd, roles, qual, with_check)
      FROM pg_policies WHERE schemaname = 'fly'
    UNION ALL
    SELECT 'comment ' || pg_describe_object(d.classoid, d.objoid, d.objsubid) || ': ' || d.description
      FROM pg_description d
     WHERE (d.classoid = 'pg_class'::regclass AND d.objoid IN (SELECT oid FROM rels))
        OR (d.classoid = 'pg_proc'::regclass AND d.objoid IN (SELECT oid FROM procs))
        OR (d.classoid, d.objoid) IN (SELECT classid, objid FROM members)
        OR (d.classoid = 'pg_extension'::regclass AND d.objoid = (SELECT oid FROM ext))
    UNION ALL
    SELECT format('default privileges for %s in %s on %s: %s', defaclrole::regrole,
                  CASE defaclnamespace WHEN 0 THEN 'all schemas' ELSE defaclnamespace::regnamespace::text END, defaclobjtype, defaclacl)
      FROM pg_default_acl
    UNION ALL
    SELECT format('event trigger %s on %s enabled=%s tags=%s function=%s owner=%s', evtname, evtevent, evtenabled,
                  evttags, evtfoid::regprocedure, evtowner::regrole)
      FROM pg_event_trigger
    UNION ALL
    SELECT 'initial privileges ' || pg_describe_object(classoid, objoid, objsubid) || ' ' || initprivs::text
      FROM pg_init_privs WHERE privtype = 'e'
)
SELECT replace(line, E'\n', '\n') FROM facts ORDER BY 1
"""

# Columns that ALTER TABLE ... ADD COLUMN ... DEFAULT gave a stored default for the rows already there
# (atthasmissing). The upgrade scripts, 0.1.0's own included, add columns that way; the standalone script creates
# every table whole, so a fresh install that ran the chain of scripts has such columns, and one that ran the
# standalone script has none.
ADDED_COLUMNS = """
SELECT a.attrelid::regclass || '.' || a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
 WHERE c.relnamespace = 'fly'::regnamespace AND a.atthasmissing ORDER BY 1
"""

# The rows the scripts seed (default policies, prices, the secrets digest key) and every sequence's state, free of
# what cannot be equal: timestamps are only checked to be set, the per-database key only to be there and long enough.
DESCRIBE_SEEDED_DATA = r"""
DO $$
DECLARE
    t record;
    cols text;
BEGIN
    CREATE TEMP TABLE seeded(line text);
    FOR t IN SELECT c.oid::regclass AS rel, c.relkind FROM pg_class c
              WHERE c.relnamespace = 'fly'::regnamespace AND c.relkind IN ('r', 'S') ORDER BY c.relname LOOP
        IF t.relkind = 'S' THEN
            EXECUTE format('INSERT INTO seeded SELECT %L || '' last_value='' || last_value || '' is_called='' '
                           '|| is_called FROM %s', 'sequence ' || t.rel, t.rel);
            CONTINUE;
        END IF;
        SELECT string_agg(CASE WHEN t.rel = 'fly.secrets_digest_key'::regclass AND a.attname = 'key'
                               THEN format('length(%I) >= 32', a.attname)
                               WHEN a.atttypid IN ('timestamptz'::regtype, 'date'::regtype)
                               THEN format('%I IS NOT NULL', a.attname)
                               ELSE format('%I', a.attname) END, ', ' ORDER BY a.attnum)
          INTO cols FROM pg_attribute a WHERE a.attrelid = t.rel AND a.attnum > 0 AND NOT a.attisdropped;
        EXECUTE format('INSERT INTO seeded SELECT %L || '' '' || row(%s)::text FROM %s', 'row ' || t.rel, cols, t.rel);
    END LOOP;
END $$;
SELECT line FROM seeded ORDER BY 1;
"""

USERS = ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "3ca132d2-1111-4b2a-9e0f-2a3b4c5d6e7f",
         "82ea28ab-2222-4c3b-8f10-3b4c5d6e7f80", "0aca198e-3333-4d4c-a021-4c5d6e7f8091"]

# What a 0.1.0 installation holds after some use: a custom tier and price, an attached subscription table, queued
# work, apps in every status with their events, and a reported orphan.
FIRST_RELEASE_DATA = f"""
CREATE TABLE public.user_subscriptions (user_id uuid PRIMARY KEY, tier text NOT NULL);
SELECT fly.attach_tier_trigger('public.user_subscriptions', 'user_id', 'tier');
INSERT INTO fly.tier_policies (tier, dedicated_app, cpu_kind, cpus, memory_mb, region)
    VALUES ('team', true, 'performance', 1, 2048, 'ams');
UPDATE fly.tier_policies SET memory_mb = 512 WHERE tier = 'elite';
INSERT INTO fly.region_price_multipliers VALUES ('ams', 1.0500);
INSERT INTO public.user_subscriptions VALUES ('{USERS[0]}', 'pro'), ('{USERS[1]}', 'team'), ('{USERS[2]}', 'free'),
    ('{USERS[3]}', 'elite');
INSERT INTO fly.user_fly_apps (user_id, tier, fly_app_name, fly_app_id, fly_org_slug, fly_machine_id, status,
                               health_status, region, cpu_kind, cpus, memory_mb, image, secrets_version, attempts,
                               provisioned_at, last_health_check_at)
    VALUES ('{USERS[0]}', 'pro', 'vyx-user-0aca198e', 'app-1', 'personal', '1c8dd060c078e7', 'active', 'healthy',
            'sjc', 'shared', 1, 256, 'registry.fly.io/vyx-app:v1', 3, 0, now(), now());
INSERT INTO fly.user_fly_apps (user_id, tier, fly_app_name, fly_org_slug, status, region, deleted_at)
    VALUES ('{USERS[2]}', 'pro', 'vyx-user-82ea28ab', 'personal', 'deleted', 'sjc', now());
INSERT INTO fly.user_fly_apps (user_id, tier, fly_app_name, name_attempt, fly_org_slug, status, region, attempts,
                               last_error, pending_machine_operation, pending_machine_since)
    VALUES ('{USERS[3]}', 'elite', 'vyx-user-3ca132d2-9f1e', 1, 'personal', 'failed', 'sjc', 5,
            'list_machines: HTTP 500 (internal server error)', '4-2', now());
INSERT INTO fly.user_fly_app_events (fly_app_id, user_id, event_type, status, details)
    SELECT id, user_id, e.type, status, jsonb_build_object('app_name', fly_app_name, 'n', e.n)
      FROM fly.user_fly_apps, (VALUES ('provision_requested', 1), ('app_created', 2), ('machine_created', 3),
                                      ('provision_completed', 4)) AS e(type, n);
INSERT INTO fly.orphan_apps (fly_app_name, fly_org_slug, fly_app_id, delete_requested)
    VALUES ('vyx-user-deadbeef', 'personal', 'app-9', true);
"""


class UpgradeTest(unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.sim = Simulator()
        cls.pg = Cluster(cls.sim.url)

    @classmethod
    def tearDownClass(cls):
        cls.pg.destroy()
        cls.sim.stop()

    def run_sql(self, database, sql):
        return self.pg.psql(sql, database=database).stdout.splitlines()

    def new_database(self, name, version=None):
        self.pg.psql(f"CREATE DATABASE {name}", database="postgres")
        self.addCleanup(self.pg.psql, f"DROP DATABASE {name}", database="postgres")
        self.run_sql(name, "CREATE EXTENSION pg_fly" + (f" VERSION '{version}'" if version else ""))
        self.assertEqual(self.run_sql(name, "SELECT extversion FROM pg_extension WHERE extname = 'pg_fly'"),
                         [version or self.default_version()])

    def default_version(self):
        return self.pg.value("SELECT default_version FROM pg_available_extensions WHERE name = 'pg_fly'")

    def table_contents(self, database, columns=None):
        """Every table of schema fly as sorted row texts, over the given columns (default: all of them now)."""
        columns = columns or self.table_columns(database)
        return {table: self.run_sql(database, f"SELECT row({', '.join(names)})::text FROM fly.{table} ORDER BY 1")
                for table, names in columns.items()}

    def assert_same_facts(self, database, query, fresh):
        """The query's lines in the database equal the fresh install's; a failure names only the lines that differ
        (a fresh install holds some 700 facts)."""
        updated = self.run_sql(database, query)
        if updated == fresh:
            return
        only_fresh = sorted(set(fresh) - set(updated))
        only_updated = sorted(set(updated) - set(fresh))
        self.fail(f"{database} (updated) and a fresh install differ:\n"
                  + "".join(f"  fresh install only: {line}\n" for line in only_fresh)
                  + "".join(f"  {database} only: {line}\n" for line in only_updated)
                  + ("" if only_fresh or only_updated else "  the same facts, repeated or in another order\n"))

    def table_columns(self, database):
        columns = {}
        for line in self.run_sql(database, "SELECT c.relname, a.attname FROM pg_class c JOIN pg_attribute a ON "
                                           "a.attrelid = c.oid WHERE c.relnamespace = 'fly'::regnamespace AND "
                                           "c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped "
                                           "ORDER BY c.relname, a.attnum"):
            table, column = line.split("\t")
            columns.setdefault(table, []).append(column)
        return columns

    def test_update_from_the_first_release_keeps_the_data_and_equals_a_fresh_install(self):
        # The fresh install is the current version's standalone script; the update runs the upgrade scripts.
        default = self.default_version()
        path = self.pg.value(f"SELECT path FROM pg_extension_update_paths('pg_fly') "
                             f"WHERE source = '{FIRST_RELEASE}' AND target = '{default}'")
        self.assertTrue(path, f"no update path from {FIRST_RELEASE} to {default}")
        self.new_database("from_first_release", FIRST_RELEASE)
        self.run_sql("from_first_release", FIRST_RELEASE_DATA)
        columns_before = self.table_columns("from_first_release")
        contents_before = self.table_contents("from_first_release")
        self.assertEqual(len(contents_before["user_fly_app_events"]), 12)
        self.assertEqual(len(contents_before["reconcile_queue"]), 3)
        sequences_before = self.run_sql("from_first_release", "SELECT last_value FROM fly.user_fly_apps_id_seq "
                                                              "UNION ALL SELECT last_value FROM "
                                                              "fly.user_fly_app_events_id_seq")
        # The new library on the old schema (no fly.tier_waits yet): a tier without a policy is still an error.
        result = self.pg.psql(f"UPDATE public.user_subscriptions SET tier = 'platinum' WHERE user_id = '{USERS[0]}'",
                              database="from_first_release", check=False)
        self.assertIn('tier "platinum" has no policy in fly.tier_policies', result.stderr)

        self.run_sql("from_first_release", "ALTER EXTENSION pg_fly UPDATE")
        self.assertEqual(self.run_sql("from_first_release",
                                      "SELECT extversion FROM pg_extension WHERE extname = 'pg_fly'"), [default])
        self.assertEqual(self.table_contents("from_first_release", columns_before), contents_before)
        self.assertEqual(self.run_sql("from_first_release", "SELECT last_value FROM fly.user_fly_apps_id_seq "
                                                            "UNION ALL SELECT last_value FROM "
                                                            "fly.user_fly_app_events_id_seq"), sequences_before)
        # What was attached and configured still works: a tier change queues its user, the functions answer.
        self.run_sql("from_first_release", f"UPDATE public.user_subscriptions SET tier = 'free' "
                                           f"WHERE user_id = '{USERS[0]}'")
        self.run_sql("from_first_release", "SELECT fly.fold_intents()")  # the worker's fold, at once
        self.assertEqual(self.run_sql("from_first_release", f"SELECT desired FROM fly.reconcile_queue "
                                                            f"WHERE user_id = '{USERS[0]}'"), ["absent"])
        self.assertEqual(self.run_sql("from_first_release", f"SELECT fly_app_name, status FROM "
                                                            f"fly.get_user_fly_app_status('{USERS[0]}')"),
                         ["vyx-user-0aca198e\tactive"])
        # Updated, the same change succeeds and the user waits for the tier's policy.
        self.run_sql("from_first_release", f"UPDATE public.user_subscriptions SET tier = 'platinum' "
                                           f"WHERE user_id = '{USERS[0]}'")
        self.assertEqual(self.run_sql("from_first_release", "SELECT user_id, tier, reason FROM fly.needs_attention"),
                         [f"{USERS[0]}\tplatinum\tunknown_tier"])

        # A plain CREATE EXTENSION runs the current version's standalone script, not the chain from 0.1.0.
        self.new_database("fresh")
        self.assertEqual(self.run_sql("fresh", ADDED_COLUMNS), [],
                         f"CREATE EXTENSION pg_fly ran upgrade scripts: is src/sql/pg_fly--{default}.sql installed?")
        self.assertIn("fly.tier_policies.fallback_regions", self.run_sql("from_first_release", ADDED_COLUMNS))
        fresh = self.run_sql("fresh", DESCRIBE_SCHEMA)
        self.assertGreater(len(fresh), 100)
        self.assert_same_facts("from_first_release", DESCRIBE_SCHEMA, fresh)

        # Every earlier version (installed as it was released, then updated) ends with the same schema, the same
        # seeded rows and the same sequences as a fresh install.
        fresh_data = self.run_sql("fresh", DESCRIBE_SEEDED_DATA)
        self.assertIn("row fly.secrets_digest_key (t,t)", fresh_data)
        self.assertIn("row fly.tier_policies (pro,t,shared,1,256,,t,{})", fresh_data)
        self.assertIn("sequence fly.user_fly_apps_id_seq last_value=1 is_called=false", fresh_data)
        versions = self.run_sql("postgres", "SELECT version FROM pg_available_extension_versions "
                                            "WHERE name = 'pg_fly' ORDER BY version")
        self.assertIn(FIRST_RELEASE, versions)
        for version in versions:
            if version == default:
                continue
            with self.subTest(version=version):
                database = "updated_from_" + version.replace(".", "_")
                self.new_database(database, version)
                self.run_sql(database, "ALTER EXTENSION pg_fly UPDATE")
                self.assert_same_facts(database, DESCRIBE_SCHEMA, fresh)
                self.assert_same_facts(database, DESCRIBE_SEEDED_DATA, fresh_data)

    def test_update_keeps_each_onboarding_grant_with_its_grantor(self):
        # The update replaces fly.onboard_existing_users; grants made on it before, through a chain of grant
        # options, come back with the same grantors, so they still depend on them.
        roles = ["i14_op1", "i14_op2", "i14_op3"]
        self.run_sql("postgres", "".join(f"DROP ROLE IF EXISTS {r}; CREATE ROLE {r};" for r in roles))
        self.addCleanup(self.pg.psql, "".join(f"DROP ROLE IF EXISTS {r};" for r in reversed(roles)),
                        database="postgres", check=False)
        self.new_database("grants_kept", FIRST_RELEASE)
        function = "fly.onboard_existing_users(boolean)"
        self.run_sql("grants_kept", f"""
            GRANT USAGE ON SCHEMA fly TO i14_op1, i14_op2;
            GRANT EXECUTE ON FUNCTION {function} TO i14_op1 WITH GRANT OPTION;
            SET ROLE i14_op1;
            GRANT EXECUTE ON FUNCTION {function} TO i14_op2 WITH GRANT OPTION;
            SET ROLE i14_op2;
            GRANT EXECUTE ON FUNCTION {function} TO i14_op3;
            RESET ROLE;""")
        acl = (f"SELECT a.grantor::regrole, a.grantee::regrole, a.privilege_type, a.is_grantable "
               f"FROM pg_proc p, aclexplode(p.proacl) a WHERE p.oid = '{function}'::regprocedure ORDER BY 1, 2")
        before = self.run_sql("grants_kept", acl)
        self.assertIn("i14_op1\ti14_op2\tEXECUTE\tt", before)
        self.assertIn("i14_op2\ti14_op3\tEXECUTE\tf", before)
        oid_before = self.run_sql("grants_kept", f"SELECT '{function}'::regprocedure::oid")

        self.run_sql("grants_kept", "ALTER EXTENSION pg_fly UPDATE")
        self.assertNotEqual(self.run_sql("grants_kept", f"SELECT '{function}'::regprocedure::oid"), oid_before)
        self.assertEqual(self.run_sql("grants_kept", acl), before)
        # They depend on their grantors again: taking op1's grant option takes op2's and op3's grants with it.
        self.run_sql("grants_kept", f"REVOKE EXECUTE ON FUNCTION {function} FROM i14_op1 CASCADE")
        self.assertEqual([line for line in self.run_sql("grants_kept", acl) if "i14_op" in line], [])


if __name__ == "__main__":
    unittest.main(verbosity=2)

"""pg_fly's main job, end to end, on a throwaway PostgreSQL with pg_fly preloaded: the four acceptance tests of the
edge-function setup pg_fly replaces (upgrade a user, check the status, check the machine is that user's alone,
downgrade), then its admin monitoring query.

By default the Fly API is the project's simulator on loopback. With FLY_API_TOKEN and FLY_IMAGE set (and
optionally FLY_ORG_SLUG, FLY_API_URL, FLY_REGION) the same steps run against the real Fly Machines API.
"""

import json
import os
import sys
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test", "integration"))
from harness import TEST_TOKEN, Cluster, Simulator  # noqa: E402

ADA = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"


def say(text):
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def wait(pg, condition, what, timeout=180):
    started = time.monotonic()
    if not pg.wait_for(condition, timeout=timeout, interval=0.1):
        print(pg.table("SELECT * FROM fly.pending_work"))
        raise SystemExit(f"timed out waiting for {what}")
    print(f"({what}: {time.monotonic() - started:.2f} s)")


def change_tier(pg, tier, status, what):
    """Changes ADA's tier as the application would, and waits until her app reaches `status`."""
    print(f"UPDATE user_subscriptions SET tier = '{tier}' WHERE user_id = '{ADA}';")
    pg.sql(f"UPDATE user_subscriptions SET tier = '{tier}' WHERE user_id = '{ADA}'")
    wait(pg, f"SELECT EXISTS (SELECT 1 FROM fly.user_fly_apps WHERE user_id = '{ADA}' AND status = '{status}')",
         what)


def fly_get(url, token, path):
    scheme = "FlyV1" if token.startswith(("FlyV1 ", "fm1r_", "fm1a_", "fm2_")) else "Bearer"
    token = token[len("FlyV1 "):] if token.startswith("FlyV1 ") else token
    request = urllib.request.Request(url + path, headers={"Authorization": f"{scheme} {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read().decode())


def main():
    real_token = os.environ.get("FLY_API_TOKEN", "")
    sim = None
    if real_token:
        if not os.environ.get("FLY_IMAGE"):
            raise SystemExit("FLY_IMAGE must name the image to run when FLY_API_TOKEN is set")
        api_url = os.environ.get("FLY_API_URL", "https://api.machines.dev")
        token = real_token
        settings = {"fly.image": f"'{os.environ['FLY_IMAGE']}'",
                    "fly.org_slug": f"'{os.environ.get('FLY_ORG_SLUG', 'personal')}'",
                    "fly.default_region": f"'{os.environ.get('FLY_REGION', 'sjc')}'"}
        say(f"Fly API: {api_url} (real token from FLY_API_TOKEN)")
    else:
        sim = Simulator(config={"boot_delay_ms": 300, "latency": {"*": {"fixed_ms": 20, "jitter_ms": 10}}})
        api_url, token, settings = sim.url, TEST_TOKEN, {}
        say(f"Fly API: the project's simulator at {api_url} (set FLY_API_TOKEN and FLY_IMAGE for the real one)")
    pg = Cluster(api_url, settings, token=token)
    try:
        say("A throwaway PostgreSQL with pg_fly preloaded")
        pg.wait_for("SELECT pid IS NOT NULL AND token_source <> 'none' FROM fly.worker_status()", timeout=30)
        print(pg.table("SELECT extversion AS pg_fly, current_setting('server_version') AS postgres, "
                       "current_setting('fly.api_url') AS api_url, current_setting('fly.image') AS image "
                       "FROM pg_extension WHERE extname = 'pg_fly'"))
        print(pg.table("SELECT pid, token_source FROM fly.worker_status()"))
        pg.sql("CREATE TABLE user_profiles (id uuid PRIMARY KEY, email text NOT NULL)")
        pg.sql("CREATE TABLE user_subscriptions (user_id uuid PRIMARY KEY REFERENCES user_profiles (id), "
               "tier text NOT NULL DEFAULT 'free')")
        pg.sql("SELECT fly.attach_tier_trigger('public.user_subscriptions', 'user_id', 'tier')")
        pg.sql(f"INSERT INTO user_profiles VALUES ('{ADA}', 'ada@example.com'), "
               "('b1ffcd88-8d1a-4ef8-bb6d-6bb9bd380a22', 'bob@example.com')")
        pg.sql(f"INSERT INTO user_subscriptions VALUES ('{ADA}', 'free'), "
               "('b1ffcd88-8d1a-4ef8-bb6d-6bb9bd380a22', 'free')")
        print(pg.table("SELECT u.email, s.tier FROM user_subscriptions s JOIN user_profiles u ON u.id = s.user_id"))

        say("Test 1: upgrade a user to Pro")
        change_tier(pg, "pro", "active", "app active")
        print(pg.table(f"SELECT fly_app_name, status, region, fly_machine_id, cpu_kind, cpus, memory_mb "
                       f"FROM fly.user_fly_apps WHERE user_id = '{ADA}'"))
        print(pg.table(f"SELECT event_type, status, details FROM fly.user_fly_app_events "
                       f"WHERE user_id = '{ADA}' ORDER BY id"))

        say("Test 2: check the app's status")
        print(f"SELECT * FROM get_user_fly_app_status('{ADA}');")
        print(pg.table(f"SELECT fly_app_name, fly_machine_id, status, health_status, region, tier, pending_action "
                       f"FROM fly.get_user_fly_app_status('{ADA}')"))

        say("Test 3: trader isolation (the machine's environment, as Fly reports it)")
        app = pg.value(f"SELECT fly_app_name FROM fly.user_fly_apps WHERE user_id = '{ADA}' AND deleted_at IS NULL")
        for machine in fly_get(api_url, token, f"/v1/apps/{app}/machines"):
            env = machine["config"].get("env", {})
            print(f"machine {machine['id']} state={machine['state']} RUN_MODE={env.get('RUN_MODE')} "
                  f"USER_ID={env.get('USER_ID')}")
        if sim:
            print("health endpoint:", json.dumps(sim.control("GET", f"apps/{app}/health")))

        say("Test 4: downgrade the user to Free")
        change_tier(pg, "free", "deleted", "app deleted")
        print(pg.table(f"SELECT fly_app_name, status, deleted_at IS NOT NULL AS deleted_at_set "
                       f"FROM fly.user_fly_apps WHERE user_id = '{ADA}'"))
        print(pg.table(f"SELECT event_type, status FROM fly.user_fly_app_events WHERE user_id = '{ADA}' "
                       f"ORDER BY id"))
        if sim:
            print("apps left on Fly:", list(sim.state()["apps"]))

        say("Admin monitoring: provision success rate (the edge-function setup's own query, unchanged)")
        print(pg.table("SET search_path = public, fly; SELECT COUNT(*) FILTER (WHERE event_type = "
                       "'provision_completed') as success, COUNT(*) FILTER (WHERE event_type = 'provision_failed') "
                       "as failed, ROUND(COUNT(*) FILTER (WHERE event_type = 'provision_completed') * 100.0 / "
                       "NULLIF(COUNT(*), 0), 2) as success_rate_pct FROM user_fly_app_events WHERE event_type IN "
                       "('provision_completed', 'provision_failed')"))
        say("Done: pg_fly provisioned and tore down a dedicated app from two tier changes")
    finally:
        pg.destroy()
        if sim:
            sim.stop()


if __name__ == "__main__":
    main()

"""Rate-limited throughput: 300 users provisioned while the simulator enforces Fly's documented limits. Prints the
machine, apps per second achieved / the limit's ceiling (target >= 0.90), the number of 429s (target 0), and
the batching of the edge-function setup pg_fly replaces (5 users every 10 s; see docs/architecture.md) run for
real on a sample, side by side.

    sudo python3 bench/rate_limited_throughput.py [--users 300] [--old-users 50]

The ceiling: creating an app is limited to 1 request/s (burst 3) per organization (the simulator scopes
create-app to the org, as Fly does not say), and every app needs one, so no client can provision more than
1 app/s for long. pg_fly onboards the users with fly.provision_user_app() (what the old setup's migration script did) and
its worker paces itself. The old setup's batching is then replayed with pg_fly doing each user's provisioning:
5 users at a time, wait until they are active, pause 10 s. Its time for all users is projected from the
sample as batches x (mean batch time) + pauses.
"""

import argparse
import math
import statistics
import time

from bench_common import (SUBSCRIPTIONS_DDL, Cluster, Simulator, count_by_status, epoch, fail, fly_requests,
                          print_machine, user_uuid, verdict)

TARGET_RATIO = 0.90
CEILING_APPS_PER_S = 1.0  # create app: 1 request/s per organization
OLD_BATCH = 5
OLD_PAUSE_S = 10


def check_apps_on_fly(sim, users_expected):
    apps = sim.state()["apps"]
    if len(apps) != users_expected:
        fail(f"{len(apps)} apps on the simulator, expected {users_expected}")
    doubles = [name for name, app in apps.items() if len(app["machines"]) != 1]
    if doubles:
        fail(f"apps without exactly one machine: {doubles[:5]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--old-users", "--seed-users", dest="old_users", type=int, default=50,
                        help="users provisioned with the old setup's batching (a multiple of 5; 300 replays all)")
    args = parser.parse_args()

    sim = Simulator(config={"boot_delay_ms": 200, "rate_limits": {"mode": "fly"},
                            "latency": {"*": {"fixed_ms": 20, "jitter_ms": 10}}})
    pg = Cluster(sim.url, {"fly.rate_limits": "on", "fly.health_check_interval": "0"})
    try:
        print_machine(pg)
        pg.sql(SUBSCRIPTIONS_DDL)
        users = [user_uuid(n + 1) for n in range(args.users)]
        old_users = [user_uuid(args.users + n + 1) for n in range(args.old_users)]
        # Existing paying customers, there before pg_fly: the trigger is attached afterwards.
        pg.sql("INSERT INTO user_subscriptions (user_id, tier) VALUES " +
               ",".join(f"('{u}', 'pro')" for u in users) + "," + ",".join(f"('{u}', 'free')" for u in old_users))
        pg.sql("SELECT fly.attach_tier_trigger()")
        print(f"simulator: Fly's limits (create app 1/s burst 3 per org; 1/s burst 3 per app or machine), "
              f"20-30 ms per call, machines start after 200 ms; pg_fly: fly.rate_limits on, "
              f"fly.max_concurrency {pg.value('SHOW fly.max_concurrency')}", flush=True)

        # pg_fly: every user queued at once, the worker paces itself.
        started = epoch(pg, "SELECT clock_timestamp()")
        queued = int(pg.value("SELECT fly.provision_user_app()"))
        if queued != args.users:
            fail(f"onboarding queued {queued} users, expected {args.users}")
        if not pg.wait_for(f"SELECT count(*) = {args.users} FROM fly.user_fly_apps WHERE status = 'active'",
                           timeout=args.users * 5 + 60, interval=0.5):
            fail(f"onboarding did not finish: {count_by_status(pg)}")
        finished = epoch(pg, "SELECT max(created_at) FROM fly.user_fly_app_events "
                             "WHERE event_type = 'provision_completed'")
        elapsed = finished - started
        check_apps_on_fly(sim, args.users)
        requests = fly_requests(sim)
        rejected = sum(1 for r in requests if r["status"] == 429)
        rejected_total = sim.control("GET", "stats")["rate_limited"]
        creates = [r["t_wall"] for r in requests if r["endpoint"] == "create_app"]
        rate = args.users / elapsed
        ratio = rate / CEILING_APPS_PER_S
        # With an idle start, burst 3 then 1/s: the best any client can do for the last create-app call.
        best_last_create = max(0, args.users - 3) / CEILING_APPS_PER_S
        print(f"pg_fly onboarding {args.users} users: {elapsed:.1f} s, {rate:.3f} apps/s; {len(requests)} requests; "
              f"create-app calls spanned {creates[-1] - creates[0]:.1f} s (the limit allows no less than "
              f"{best_last_create:.0f} s)", flush=True)

        # The old setup's batching, for real, on fresh users.
        time.sleep(5)  # let the org's create-app bucket refill, as after any pause
        mark = sim.requests(since=10**12)["last_seq"]
        batch_times = []
        old_started = time.monotonic()
        for first in range(0, args.old_users, OLD_BATCH):
            batch = old_users[first:first + OLD_BATCH]
            if first:
                time.sleep(OLD_PAUSE_S)
            batch_started = time.monotonic()
            pg.sql("UPDATE user_subscriptions SET tier = 'pro' WHERE user_id IN (" +
                   ",".join(f"'{u}'" for u in batch) + ")")
            in_list = ",".join(f"'{u}'" for u in batch)
            if not pg.wait_for(f"SELECT count(*) = {len(batch)} FROM fly.user_fly_apps "
                               f"WHERE status = 'active' AND user_id IN ({in_list})", timeout=120, interval=0.05):
                fail(f"an old-style batch did not finish: {count_by_status(pg)}")
            batch_times.append(time.monotonic() - batch_started)
        old_elapsed = time.monotonic() - old_started
        check_apps_on_fly(sim, args.users + args.old_users)
        old_rejected = sum(1 for r in fly_requests(sim, since=mark) if r["status"] == 429)
        old_rate = args.old_users / old_elapsed
        batches = math.ceil(args.users / OLD_BATCH)
        projected = batches * statistics.mean(batch_times) + (batches - 1) * OLD_PAUSE_S
        nominal = (batches - 1) * OLD_PAUSE_S
        sample = "all" if args.old_users >= args.users else "a sample of"
        print(f"old setup's batching, run for real on {sample} {args.old_users} users ({len(batch_times)} batches): "
              f"{old_elapsed:.1f} s, {old_rate:.3f} apps/s, batches took {statistics.mean(batch_times):.1f} s "
              f"on average (+10 s pause each); {old_rejected} x 429", flush=True)

        print("\nresult:")
        print(f"  pg_fly: {rate:.3f} apps/s / ceiling {CEILING_APPS_PER_S:g} app/s = {ratio:.3f} "
              f"(target >= {TARGET_RATIO:.2f}: {verdict(ratio >= TARGET_RATIO)}); "
              f"429s: {rejected} (simulator's count {rejected_total}; target 0: {verdict(rejected_total == 0)})")
        print(f"  old setup's batching for {args.users} users: at least {nominal} s in pauses alone "
              f"({OLD_BATCH / OLD_PAUSE_S:g} users/s); projected from the run {projected:.0f} s "
              f"({args.users / projected:.3f} apps/s, {args.users / projected / CEILING_APPS_PER_S:.2f} of the "
              f"ceiling); pg_fly took {elapsed:.0f} s, {projected / elapsed:.1f}x faster")
    finally:
        pg.destroy()
        sim.stop()


if __name__ == "__main__":
    main()

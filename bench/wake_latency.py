"""Wake latency: from the commit of a tier change to the first request arriving at the Fly API simulator, p50 and
p99 over 1,000 changes (target: p99 under 5 ms). Prints the machine and the figures.

    sudo python3 bench/wake_latency.py [--changes 1000] [--users 50]

Changes are made one at a time by one long-lived session: a user's tier flips (free -> pro provisions, pro ->
free tears down), and the next change waits until the worker has finished, so each figure is the wake-up path
(commit -> latch -> claim -> request), not time spent queueing behind other work. The commit's time is
PostgreSQL's commit timestamp (track_commit_timestamp) and the arrival's is the simulator's t_wall: both are the
host's wall clock. The changes run twice: with PostgreSQL's default durability, where the latency includes the
tier change's own WAL flush and that of the worker's claim, and with fsync off, which leaves pg_fly's path.
Fly's limits are off on both sides: 1,000 changes in a few minutes would otherwise wait for create-app's
1 request/s per organization, which the rate-limited throughput benchmark measures.
"""

import argparse
import statistics

from bench_common import (SUBSCRIPTIONS_DDL, Cluster, Session, Simulator, fail, fly_requests, percentile,
                          print_machine, set_setting, user_uuid, verdict)

TARGET_P99_MS = 5.0


def touches_app(request, app):
    body = request.get("body")
    return f"/apps/{app}" in request["path"] or (isinstance(body, dict) and body.get("app_name") == app)


def run_changes(pg, sim, session, users, apps, changes):
    """Makes the changes one at a time; returns (latency in ms, direction, ms until the worker's first step was
    recorded) for each."""
    results = []
    tiers = {user: "free" for user in users}
    for i in range(changes):
        user = users[i % len(users)]
        tiers[user] = "pro" if tiers[user] == "free" else "free"
        mark = sim.requests(since=10**12)["last_seq"]
        committed = session.value(
            f"UPDATE user_subscriptions SET tier = '{tiers[user]}' WHERE user_id = '{user}';"
            f"SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin)) FROM user_subscriptions "
            f"WHERE user_id = '{user}'")
        if not session.wait_for("SELECT NOT EXISTS (SELECT 1 FROM fly.pending_work)", timeout=30):
            fail(f"change {i + 1} ({user} to {tiers[user]}) was not worked off within 30 s: "
                 f"{pg.sql('SELECT desired, attempts, last_error FROM fly.reconcile_queue')}")
        arrived = fly_requests(sim, since=mark)
        if not arrived:
            fail(f"change {i + 1} ({user} to {tiers[user]}) reached the simulator with no request")
        first = arrived[0]
        if not touches_app(first, apps[user]):
            fail(f"change {i + 1}: the first request after it was {first['method']} {first['path']}, "
                 f"not about {apps[user]}")
        # The *_requested event's time is the start of the worker's first write for the change (now()).
        recorded = session.value(f"SELECT extract(epoch FROM min(created_at)) FROM fly.user_fly_app_events "
                                 f"WHERE user_id = '{user}' AND created_at >= to_timestamp({committed})")
        if recorded is None or recorded == "":
            fail(f"change {i + 1} ({user} to {tiers[user]}) left no event")
        results.append(((first["t_wall"] - float(committed)) * 1000,
                        "provision" if tiers[user] == "pro" else "deprovision",
                        (float(recorded) - float(committed)) * 1000))
    return results


def summarize(label, latencies):
    values = [ms for ms, _, _ in latencies]
    p99 = percentile(values, 0.99)
    print(f"  {label}: p50 {percentile(values, 0.50):.2f} ms, p99 {p99:.2f} ms, max {max(values):.2f} ms, "
          f"mean {statistics.mean(values):.2f} ms over {len(values)} changes "
          f"(target p99 < {TARGET_P99_MS:g} ms: {verdict(p99 < TARGET_P99_MS)})")
    for direction in ("provision", "deprovision"):
        part = [ms for ms, kind, _ in latencies if kind == direction]
        print(f"      {direction:11}: p50 {percentile(part, 0.50):.2f} ms, p99 {percentile(part, 0.99):.2f} ms "
              f"({len(part)} changes; first request "
              f"{'create app' if direction == 'provision' else 'the teardown lookup'})")
    to_step = [ms for _, _, ms in latencies]
    print(f"      of which commit -> the worker's first step recorded (claimed, loaded, writing): "
          f"p50 {percentile(to_step, 0.50):.2f} ms, p99 {percentile(to_step, 0.99):.2f} ms")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=1000)
    parser.add_argument("--users", type=int, default=50)
    args = parser.parse_args()

    sim = Simulator(config={"boot_delay_ms": 0, "rate_limits": {"mode": "off"}})
    pg = Cluster(sim.url, {"fly.rate_limits": "off", "fly.health_check_interval": "0", "fly.poll_interval": "'10s'",
                           "track_commit_timestamp": "on"})
    session = None
    try:
        print_machine(pg)
        pg.sql(SUBSCRIPTIONS_DDL)
        pg.sql("SELECT fly.attach_tier_trigger()")
        users = [user_uuid(n + 1) for n in range(args.users)]
        pg.sql("INSERT INTO user_subscriptions (user_id) VALUES " + ",".join(f"('{u}')" for u in users))
        apps = dict(pg.sql("SELECT user_id, fly.app_name_for(user_id) FROM user_subscriptions"))
        session = Session(pg)
        print(f"{args.changes} tier changes, one at a time, over {args.users} users; simulator with no latency and "
              f"boot delay 0; Fly's limits off", flush=True)

        results = {}
        for durability, fsync in (("durable", "on"), ("fsync off", "off")):
            set_setting(pg, "fsync", fsync)
            set_setting(pg, "synchronous_commit", fsync)
            wakes = int(pg.value("SELECT commit_wakes FROM fly.worker_status()"))
            results[durability] = run_changes(pg, sim, session, users, apps, args.changes)
            wakes = int(pg.value("SELECT commit_wakes FROM fly.worker_status()")) - wakes
            if wakes < args.changes * 0.9:
                fail(f"{durability}: only {wakes} of {args.changes} changes woke the worker at commit")
            # Every user flipped an even number of times ends where it started: free, with no app.
            leftover = sim.state()["apps"]
            if args.changes % (2 * args.users) == 0 and leftover:
                fail(f"{durability}: {len(leftover)} apps left on the simulator after the flips")
            print(f"  {durability}: {wakes} commit wake-ups of the worker", flush=True)

        print("\nresult (commit -> first request at the simulator):")
        for durability, latencies in results.items():
            summarize(durability, latencies)
    finally:
        if session is not None:
            session.close()
        pg.destroy()
        sim.stop()


if __name__ == "__main__":
    main()

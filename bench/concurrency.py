"""Concurrency: 500 users provisioned with the simulator answering every call after 100 ms and no rate limits,
for fly.max_concurrency 64, 16 and 1. Prints the machine, the elapsed time against the sequential bound (the
calls the simulator received x 100 ms) and the speedup for each.

    sudo python3 bench/concurrency.py [--users 500] [--latency-ms 100] [--concurrency 64,16,1]

With 1 the run takes minutes (500 users x 4 calls x 100 ms); --users shrinks it for a quick try.
"""

import argparse

from bench_common import (SUBSCRIPTIONS_DDL, Cluster, Simulator, count_by_status, cpu_seconds, epoch, fail,
                          fly_requests, print_machine, set_setting, user_uuid, worker_pid)


def peak_in_flight(requests):
    """The most requests the simulator was answering at once, from each request's arrival and duration."""
    edges = sorted([(r["t_mono"], 1) for r in requests] +
                   [(r["t_mono"] + r["duration_ms"] / 1000, -1) for r in requests])
    current = peak = 0
    for _, change in edges:
        current += change
        peak = max(peak, current)
    return peak


def provision(pg, sim, users, concurrency, latency_ms):
    set_setting(pg, "fly.max_concurrency", str(concurrency))
    sim.control("POST", "reset")
    in_list = ",".join(f"'{u}'" for u in users)
    worker = worker_pid(pg)
    cpu = cpu_seconds(worker)
    started = float(pg.value("WITH added AS (INSERT INTO user_subscriptions (user_id, tier) VALUES " +
                             ",".join(f"('{u}', 'pro')" for u in users) + " RETURNING clock_timestamp() AS at) "
                             "SELECT extract(epoch FROM max(at)) FROM added"))
    if not pg.wait_for(f"SELECT count(*) = {len(users)} FROM fly.user_fly_apps "
                       f"WHERE status = 'active' AND user_id IN ({in_list})",
                       timeout=len(users) * 10 * latency_ms / 1000 + 120, interval=0.2):
        fail(f"fly.max_concurrency {concurrency}: provisioning did not finish: {count_by_status(pg)}")
    finished = epoch(pg, f"SELECT max(created_at) FROM fly.user_fly_app_events "
                         f"WHERE event_type = 'provision_completed' AND user_id IN ({in_list})")
    apps = sim.state()["apps"]
    if len(apps) != len(users) or any(len(app["machines"]) != 1 for app in apps.values()):
        fail(f"fly.max_concurrency {concurrency}: {len(apps)} apps on the simulator for {len(users)} users")
    requests = fly_requests(sim)
    if any(r["duration_ms"] is None for r in requests):
        fail("the simulator is still answering requests after every user is active")
    return (finished - started, len(requests), cpu_seconds(worker) - cpu, peak_in_flight(requests),
            len({r["conn"] for r in requests}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--latency-ms", type=float, default=100)
    parser.add_argument("--concurrency", default="64,16,1", help="fly.max_concurrency values, in the order run")
    args = parser.parse_args()
    levels = [int(level) for level in args.concurrency.split(",")]

    sim = Simulator(config={"boot_delay_ms": 0, "rate_limits": {"mode": "off"},
                            "latency": {"*": {"fixed_ms": args.latency_ms, "jitter_ms": 0}}})
    pg = Cluster(sim.url, {"fly.rate_limits": "off", "fly.health_check_interval": "0"})
    try:
        print_machine(pg)
        pg.sql(SUBSCRIPTIONS_DDL)
        pg.sql("SELECT fly.attach_tier_trigger()")
        print(f"{args.users} users provisioned per run (inserted as pro in one transaction); simulator: "
              f"{args.latency_ms:g} ms per call, machines started at once, no rate limits; fly.rate_limits off",
              flush=True)
        results = []
        for run, concurrency in enumerate(levels):
            # Fresh users each run: the simulator is emptied, and earlier rows stay as they are.
            users = [user_uuid(run * args.users + n + 1) for n in range(args.users)]
            elapsed, calls, worker_cpu, peak, connections = provision(pg, sim, users, concurrency, args.latency_ms)
            sequential = calls * args.latency_ms / 1000
            results.append((concurrency, elapsed, calls, sequential))
            # The worker is one process: when its CPU time nears the elapsed time, it is the limit, not Fly.
            print(f"  fly.max_concurrency {concurrency:3}: {elapsed:7.1f} s for {calls} calls "
                  f"({calls / args.users:.1f} per user); sequential bound {sequential:.1f} s; "
                  f"speedup {sequential / elapsed:.1f}x; worker CPU {worker_cpu:.1f} s; at most {peak} requests "
                  f"at once at the simulator, over {connections} connections", flush=True)

        print("\nresult (elapsed vs calls x latency):")
        for concurrency, elapsed, calls, sequential in results:
            print(f"  fly.max_concurrency {concurrency:3}: {elapsed:7.1f} s vs {sequential:6.1f} s sequential: "
                  f"speedup {sequential / elapsed:5.1f}x ({sequential / elapsed / concurrency * 100:.0f} % of "
                  f"{concurrency}x), {args.users / elapsed:.1f} users/s")
    finally:
        pg.destroy()
        sim.stop()


if __name__ == "__main__":
    main()

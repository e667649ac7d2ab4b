"""One health pass over N active apps (default 10,000) with the simulator answering after 20 ms, against the
issue-16 target of 5 s for 10,000 apps, and how it compares with checking them one at a time. Prints the
machine, the pass time and its ratio to the target, the Fly requests per app, the worker's memory and the
concurrency speedup. The simulator speaks HTTP/1.1: the worker keeps one keep-alive connection per check slot.

    sudo python3 bench/health_sweep.py [--apps 10000] [--latency-ms 20] [--concurrency 64]

Needs pg_fly installed (sudo scripts/test.sh or make install). Only loopback is contacted.
"""

import argparse
import json
import time
import urllib.request
import uuid

from bench_common import (TEST_TOKEN, Cluster, Simulator, copy_in, cpu_seconds, fail, memory_kb, print_machine, verdict,
                          worker_pid)

TARGET_SECONDS_PER_10K = 5.0


def fly(sim, method, path, body):
    request = urllib.request.Request(sim.url + path, data=json.dumps(body).encode(), method=method,
                                     headers={"Authorization": f"Bearer {TEST_TOKEN}",
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read().decode() or "null")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", type=int, default=10000)
    parser.add_argument("--latency-ms", type=float, default=20)
    parser.add_argument("--concurrency", type=int, default=64, help="fly.health_check_concurrency")
    args = parser.parse_args()

    sim = Simulator(config={"boot_delay_ms": 0, "rate_limits": {"mode": "off"}, "request_log_cap": 1000})
    pg = Cluster(sim.url, {"fly.health_check_interval": "0", "fly.health_check_concurrency": str(args.concurrency),
                           "fly.rate_limits": "on"})
    try:
        print_machine(pg)
        print(f"setting up {args.apps} apps, each with a started machine ...", flush=True)
        rows = []
        for i in range(args.apps):
            user = str(uuid.UUID(int=(0xBE7C << 64) + i, version=4))
            name = f"bench-{i:06d}"
            fly(sim, "POST", "/v1/apps", {"name": name, "app_name": name, "org_slug": "personal"})
            machine = fly(sim, "POST", f"/v1/apps/{name}/machines",
                          {"region": "sjc", "config": {"image": "registry.fly.io/bench:1",
                                                       "env": {"RUN_MODE": "user_dedicated", "USER_ID": user},
                                                       "metadata": {"pg_fly_user_id": user}}})
            rows.append((user, "pro", name, "personal", machine["id"], "active", "sjc"))
        copy_in(pg, "fly.user_fly_apps (user_id, tier, fly_app_name, fly_org_slug, fly_machine_id, status, region)",
                rows)
        sim.configure(latency={"*": {"fixed_ms": args.latency_ms, "jitter_ms": 0}})

        pid = worker_pid(pg)
        passes = []
        for label in ("first pass (every app's health changes: unknown -> healthy, one durable event each)",
                      "second pass (health unchanged, no events: commits without waiting for the WAL flush)"):
            mark = pg.value("SELECT now()::text")
            before = sim.control("GET", "stats")
            memory_before = memory_kb(pid)
            cpu_before = (cpu_seconds(pid), cpu_seconds(sim.process.pid))
            started = time.monotonic()
            pg.sql("SELECT fly.check_fly_apps_health()")
            if not pg.wait_for("SELECT count(*) = 0 FROM fly.user_fly_apps WHERE last_health_check_at IS NULL "
                               f"OR last_health_check_at < '{mark}'", timeout=3600, interval=0.05):
                fail("the health pass did not finish")
            elapsed = time.monotonic() - started
            memory_after = memory_kb(pid)
            cpu = (cpu_seconds(pid) - cpu_before[0], cpu_seconds(sim.process.pid) - cpu_before[1])
            stats = sim.control("GET", "stats")
            counts = {name: item["count"] - before["by_endpoint"].get(name, {}).get("count", 0)
                      for name, item in stats["by_endpoint"].items()}
            requests = sum(counts.values())
            healthy = pg.value("SELECT count(*) FROM fly.user_fly_apps WHERE health_status = 'healthy'")
            if int(healthy) != args.apps:
                fail(f"only {healthy} of {args.apps} apps were found healthy")
            per_10k = elapsed * 10000 / args.apps
            print(f"{label}:")
            print(f"  {args.apps} apps at {args.latency_ms:g} ms per call, fly.health_check_concurrency "
                  f"{args.concurrency}: {elapsed:.2f} s ({args.apps / elapsed:.0f} apps/s); {healthy} healthy")
            print(f"  time for 10,000 apps: {per_10k:.2f} s; ratio to the {TARGET_SECONDS_PER_10K:g} s target: "
                  f"{per_10k / TARGET_SECONDS_PER_10K:.2f} ({verdict(per_10k < TARGET_SECONDS_PER_10K)})")
            print(f"  Fly requests: {requests} ({requests / args.apps:.2f} per app: "
                  + ", ".join(f"{name} {count}" for name, count in sorted(counts.items()) if count)
                  + f"); simulator connections open: {stats['open_connections']}")
            print(f"  CPU during the pass: worker {cpu[0]:.1f} s, simulator {cpu[1]:.1f} s (2 cores shared with "
                  "PostgreSQL)")
            print("  worker memory before / after the pass (kB): "
                  + ", ".join(f"{name} {memory_before.get(name)} / {memory_after.get(name)}"
                              for name in ("VmRSS", "VmHWM", "RssAnon")))
            passes.append(elapsed)
        elapsed = passes[0]
        sequential = args.apps * args.latency_ms / 1000
        print(f"sequential bound (apps x latency): {sequential:.1f} s; speedup {sequential / elapsed:.1f}x; "
              f"default interval 300 s: the pass takes {elapsed / 300 * 100:.1f} % of it")
    finally:
        pg.destroy()
        sim.stop()


if __name__ == "__main__":
    main()

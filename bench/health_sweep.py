"""One health pass over N active apps (default 10,000) with the simulator answering after 20 ms, and how it
compares with checking them one at a time. Prints the machine, the pass time and the concurrency speedup.

    sudo python3 bench/health_sweep.py [--apps 10000] [--latency-ms 20] [--concurrency 16]

Needs pg_fly installed (sudo scripts/test.sh or make install). Only loopback is contacted.
"""

import argparse
import json
import time
import urllib.request
import uuid

from bench_common import TEST_TOKEN, Cluster, Simulator, copy_in, fail, print_machine


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
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()

    sim = Simulator(config={"boot_delay_ms": 0, "rate_limits": {"mode": "off"}, "request_log_cap": 1000})
    pg = Cluster(sim.url, {"fly.health_check_interval": "0", "fly.max_concurrency": str(args.concurrency),
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
                                                       "env": {"RUN_MODE": "user_dedicated", "USER_ID": user}}})
            rows.append((user, "pro", name, "personal", machine["id"], "active", "sjc"))
        copy_in(pg, "fly.user_fly_apps (user_id, tier, fly_app_name, fly_org_slug, fly_machine_id, status, region)",
                rows)
        sim.configure(latency={"*": {"fixed_ms": args.latency_ms, "jitter_ms": 0}})

        started = time.monotonic()
        pg.sql("SELECT fly.check_fly_apps_health()")
        if not pg.wait_for("SELECT count(*) = 0 FROM fly.user_fly_apps WHERE last_health_check_at IS NULL",
                           timeout=3600, interval=0.2):
            fail("the health pass did not finish")
        elapsed = time.monotonic() - started
        healthy = pg.value("SELECT count(*) FROM fly.user_fly_apps WHERE health_status = 'healthy'")
        if int(healthy) != args.apps:
            fail(f"only {healthy} of {args.apps} apps were found healthy")
        sequential = args.apps * args.latency_ms / 1000
        print(f"health pass over {args.apps} apps at {args.latency_ms:g} ms per call, fly.max_concurrency "
              f"{args.concurrency}: {elapsed:.1f} s ({args.apps / elapsed:.0f} apps/s); {healthy} healthy")
        print(f"sequential bound (apps x latency): {sequential:.1f} s; speedup {sequential / elapsed:.1f}x; "
              f"default interval 300 s: the pass takes {elapsed / 300 * 100:.1f} % of it")
    finally:
        pg.destroy()
        sim.stop()


if __name__ == "__main__":
    main()

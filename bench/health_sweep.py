"""One health pass over N active apps (default 10,000) with the simulator answering after 20 ms, and how it
compares with checking them one at a time. Prints the machine, the pass time and the concurrency speedup.

    sudo python3 bench/health_sweep.py [--apps 10000] [--latency-ms 20] [--concurrency 16]

Needs pg_fly installed (sudo scripts/test.sh or make install). Only loopback is contacted.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import urllib.request
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test", "integration"))
from harness import PG_BIN, TEST_TOKEN, Cluster, Simulator  # noqa: E402


def machine_description():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} CPUs ({cpu}), {platform.system()} {platform.release()}"


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
        print(f"machine: {machine_description()}; PostgreSQL {pg.value('SHOW server_version')}")
        print(f"setting up {args.apps} apps, each with a started machine ...", flush=True)
        rows = []
        for i in range(args.apps):
            user = str(uuid.UUID(int=(0xBE7C << 64) + i, version=4))
            name = f"bench-{i:06d}"
            fly(sim, "POST", "/v1/apps", {"name": name, "app_name": name, "org_slug": "personal"})
            machine = fly(sim, "POST", f"/v1/apps/{name}/machines",
                          {"region": "sjc", "config": {"image": "registry.fly.io/bench:1",
                                                       "env": {"RUN_MODE": "user_dedicated", "USER_ID": user}}})
            rows.append(f"{user}\tpro\t{name}\tpersonal\t{machine['id']}\tactive\tsjc")
        data = "\n".join(rows) + "\n"
        load = subprocess.run(
            [os.path.join(PG_BIN, "psql"), "-X", "-q", "-h", pg.workdir, "-p", str(pg.port), "-U", "postgres", "-d", pg.database, "-c",
             "COPY fly.user_fly_apps (user_id, tier, fly_app_name, fly_org_slug, fly_machine_id, status, region) "
             "FROM STDIN"],
            input=data, text=True, capture_output=True, cwd=pg.workdir,
            user="postgres" if os.geteuid() == 0 else None)
        if load.returncode != 0:
            raise SystemExit(load.stderr)
        sim.configure(latency={"*": {"fixed_ms": args.latency_ms, "jitter_ms": 0}})

        started = time.monotonic()
        pg.sql("SELECT fly.check_fly_apps_health()")
        if not pg.wait_for("SELECT count(*) = 0 FROM fly.user_fly_apps WHERE last_health_check_at IS NULL",
                           timeout=3600, interval=0.2):
            raise SystemExit("the health pass did not finish")
        elapsed = time.monotonic() - started
        healthy = pg.value("SELECT count(*) FROM fly.user_fly_apps WHERE health_status = 'healthy'")
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

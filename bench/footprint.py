"""Footprint: the pg_fly worker's CPU time over 60 s idle, and its memory before and after 10,000 operations (5,000
users provisioned, then torn down; no rate limits, no simulated latency). Prints the machine and the figures.

    sudo python3 bench/footprint.py [--users 5000] [--idle-seconds 60]

The worker is found through pg_stat_activity (backend_type 'pg_fly worker'); CPU time is utime + stime from
/proc/<pid>/stat, memory VmRSS, VmHWM and RssAnon from /proc/<pid>/status. RssAnon is the worker's private
memory, where a leak would show; VmRSS also counts the shared buffers it has touched, which grows with any
database work and is shared with every backend. Settings are production's defaults (fly.poll_interval 10 s,
health checks every 5 minutes) apart from the simulator's URL.
"""

import argparse
import time

from bench_common import (SUBSCRIPTIONS_DDL, Cluster, Simulator, copy_in, count_by_status, cpu_seconds, fail,
                          memory_kb, print_machine, user_uuid, worker_pid)


def idle_cpu(pg, pid, seconds):
    """CPU seconds the worker used while nothing was queued, and how often it woke."""
    before = pg.sql("SELECT timer_wakes, iterations FROM fly.worker_status()")[0]
    cpu = cpu_seconds(pid)
    time.sleep(seconds)
    cpu = cpu_seconds(pid) - cpu
    after = pg.sql("SELECT timer_wakes, iterations FROM fly.worker_status()")[0]
    return cpu, int(after[0]) - int(before[0]), int(after[1]) - int(before[1])


def show_memory(label, figures):
    print(f"  {label:38}: VmRSS {figures['VmRSS'] / 1024:6.1f} MB, VmHWM {figures['VmHWM'] / 1024:6.1f} MB, "
          f"RssAnon {figures['RssAnon'] / 1024:5.1f} MB, RssShmem {figures['RssShmem'] / 1024:6.1f} MB", flush=True)


def wait_for_status(pg, status, count, timeout):
    if not pg.wait_for(f"SELECT count(*) = {count} FROM fly.user_fly_apps WHERE status = '{status}'",
                       timeout=timeout, interval=0.5):
        fail(f"{count} apps did not reach '{status}' within {timeout} s: {count_by_status(pg)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=5000, help="users provisioned, then torn down")
    parser.add_argument("--idle-seconds", type=int, default=60)
    args = parser.parse_args()

    sim = Simulator(config={"boot_delay_ms": 0, "rate_limits": {"mode": "off"}, "request_log_cap": 1000})
    pg = Cluster(sim.url, {"fly.rate_limits": "off", "fly.poll_interval": "'10s'"})
    try:
        print_machine(pg)
        pg.sql(SUBSCRIPTIONS_DDL)
        pg.sql("SELECT fly.attach_tier_trigger()")
        pid = worker_pid(pg)
        time.sleep(2)  # past the worker's start-up
        print(f"worker pid {pid}; idle for {args.idle_seconds} s ...", flush=True)
        idle_before = idle_cpu(pg, pid, args.idle_seconds)
        memory_before = memory_kb(pid)

        cpu = cpu_seconds(pid)
        started = time.monotonic()
        copy_in(pg, "user_subscriptions (user_id, tier)", [(user_uuid(n + 1), "pro") for n in range(args.users)])
        wait_for_status(pg, "active", args.users, timeout=args.users)
        provisioned_at = time.monotonic()
        memory_provisioned = memory_kb(pid)
        pg.sql("UPDATE user_subscriptions SET tier = 'free'")
        wait_for_status(pg, "deleted", args.users, timeout=args.users)
        busy_seconds = time.monotonic() - started
        busy_cpu = cpu_seconds(pid) - cpu
        memory_after = memory_kb(pid)
        if sim.state()["apps"]:
            fail(f"{len(sim.state()['apps'])} apps left on the simulator")
        operations = 2 * args.users
        print(f"{operations} operations in {busy_seconds:.0f} s ({args.users} provisioned in "
              f"{provisioned_at - started:.0f} s, then torn down); worker CPU {busy_cpu:.1f} s, "
              f"{busy_cpu / operations * 1000:.2f} ms per operation", flush=True)

        print(f"idle again for {args.idle_seconds} s ...", flush=True)
        idle_after = idle_cpu(pg, pid, args.idle_seconds)
        if worker_pid(pg) != pid:
            fail("the worker restarted during the run")

        print("\nresult:")
        for label, (seconds, timer_wakes, iterations) in (("idle, fresh", idle_before),
                                                          (f"idle, after {operations} operations", idle_after)):
            print(f"  CPU {label:32}: {seconds:.2f} s over {args.idle_seconds} s = "
                  f"{seconds / args.idle_seconds * 100:.2f} % of one core ({timer_wakes} timer wake-ups, "
                  f"{iterations} loop passes)")
        show_memory("memory before", memory_before)
        show_memory(f"memory after {args.users} provisioned", memory_provisioned)
        show_memory(f"memory after {operations} operations", memory_after)
        growth = (memory_after["RssAnon"] - memory_before["RssAnon"]) / 1024
        print(f"  private memory (RssAnon) grew {growth:+.1f} MB over {operations} operations")
    finally:
        pg.destroy()
        sim.stop()


if __name__ == "__main__":
    main()

"""Trigger overhead: pgbench updating tiers in user_subscriptions with and without pg_fly's trigger, on the same
server in the same run, in alternating rounds. Prints the machine, tps both ways and their ratio (target >= 0.90).

    sudo python3 bench/trigger_overhead.py [--users 10000] [--rounds 3] [--seconds 10] [--clients 4,2]

Each client count is measured: 4 clients on this 2-vCPU machine make it CPU-bound (more clients than cores),
2 leave it flush-bound; the worse ratio is the figure (targets: >= 0.90 with 4 clients, >= 0.95 with 2).
Three workloads, each measured with and without the trigger:
- "free <-> pro": a random user's tier toggles between free and pro (every change queues work, as in issue 16's
  measurement).
- "policy change": a random user's tier moves to one of the two other tiers of free/pro/elite. Two changes in
  three change the policy (free <-> pro/elite), so the trigger queues work (and wakes the worker when it waits for
  work it could start, not while Fly's rate limits hold it back); the worker
  runs as in production (Fly's limits on), provisioning and tearing down apps at the simulator meanwhile.
- "same policy": a random pro/elite user (with a live app row) flips between pro and elite, which have equal
  policies: the trigger only relabels the tier on the app row and wakes nobody.
Rounds go with/without/without/with/... so that a drift in the machine's speed weighs on both sides alike.
Both workloads run twice: with PostgreSQL's default durability (each commit waits for its WAL flush, as in
production), then with fsync and synchronous_commit off, which leaves only the CPU cost (the worst case).
"""

import argparse
import os
import statistics

from bench_common import (PG_BIN, SUBSCRIPTIONS_DDL, Cluster, Simulator, copy_in, cpu_seconds, fail,
                          print_machine, run_as_postgres, set_setting, user_uuid, verdict, worker_pid)

# Issue 16: >= 0.90 of no trigger when CPU-bound (4 clients), >= 0.95 when flush-bound (2 clients).
TARGETS = {4: 0.90, 2: 0.95}


def target_for(clients):
    return TARGETS.get(clients, 0.90 if clients > 2 else 0.95)


TOGGLE = """\\set uid random(1, :users)
UPDATE user_subscriptions SET tier = CASE tier WHEN 'free' THEN 'pro' ELSE 'free' END
 WHERE user_id = lpad(to_hex(:uid::bigint), 32, '0')::uuid;
"""

POLICY_CHANGE = """\\set uid random(1, :users)
\\set step random(1, 2)
UPDATE user_subscriptions
   SET tier = (ARRAY['free', 'pro', 'elite'])[(array_position(ARRAY['free', 'pro', 'elite'], tier) + :step - 1) % 3 + 1]
 WHERE user_id = lpad(to_hex(:uid::bigint), 32, '0')::uuid;
"""

SAME_POLICY = """\\set uid random(:users + 1, 2 * :users)
UPDATE user_subscriptions SET tier = CASE tier WHEN 'pro' THEN 'elite' ELSE 'pro' END
 WHERE user_id = lpad(to_hex(:uid::bigint), 32, '0')::uuid;
"""


def pgbench(pg, script, args, clients):
    result = run_as_postgres(pg, [os.path.join(PG_BIN, "pgbench"), "-n", "-M", "prepared", "-h", pg.workdir,
                                  "-p", str(pg.port), "-U", "postgres", "-c", str(clients), "-j",
                                  str(min(clients, 2)), "-T", str(args.seconds), "-D", f"users={args.users}",
                                  "-f", script, pg.database])
    if result.returncode != 0:
        fail(f"pgbench: {result.stderr.strip()[-2000:]}")
    for line in result.stdout.splitlines():
        if line.startswith("tps = ") and "without initial connection time" in line:
            return float(line.split()[2])
    fail(f"no tps in pgbench's output:\n{result.stdout}")


def wake_counters(pg):
    """(commits that queued work, of those the ones that woke the worker): a commit wakes the worker only while it
    waits for work it could start, not while Fly's rate limits hold it back."""
    row = pg.sql("SELECT work_commits, wakes_sent FROM fly.worker_status()")[0]
    return int(row[0]), int(row[1])


def relabelled_since(pg, since, first_user):
    pg.sql("SELECT fly.fold_intents()")  # the worker folds the trigger's log within 200 ms; at once here
    return int(pg.value(f"SELECT count(*) FROM fly.user_fly_apps WHERE updated_at >= '{since}' "
                        f"AND user_id >= '{first_user}'"))


def measure(pg, name, script, args, worker, durability, clients):
    """Alternating rounds; returns the tps lists with and without the trigger."""
    tps = {True: [], False: []}
    for round_number in range(args.rounds):
        # with, without, without, with, ...: a linear drift cancels out over each pair of rounds
        order = (True, False) if round_number % 2 == 0 else (False, True)
        for with_trigger in order:
            attached = pg.value("SELECT EXISTS (SELECT 1 FROM fly.tier_source)") == "t"
            if with_trigger and not attached:
                pg.sql("SELECT fly.attach_tier_trigger()")
            elif attached and not with_trigger:
                pg.sql("SELECT fly.detach_tier_trigger()")
            pg.sql("CHECKPOINT")
            commits, wakes = wake_counters(pg)
            since = pg.value("SELECT now()")
            worker_cpu = cpu_seconds(worker)
            value = pgbench(pg, script, args, clients)
            worker_cpu = cpu_seconds(worker) - worker_cpu
            counted = wake_counters(pg)
            committed, woken = counted[0] - commits, counted[1] - wakes
            relabelled = relabelled_since(pg, since, user_uuid(args.users + 1))
            # The trigger must have done its job in the rounds with it, and nothing in the rounds without.
            did_work = relabelled > 0 if name == "same policy" else committed > 0
            if did_work != with_trigger:
                fail(f"{name}, {'with' if with_trigger else 'without'} trigger: {committed} commits queued work, "
                     f"{relabelled} app rows relabelled")
            tps[with_trigger].append(value)
            print(f"  -c{clients} {durability:10} {name:13} round {round_number + 1} "
                  f"{'with   ' if with_trigger else 'without'} trigger: "
                  f"{value:8.0f} tps  ({committed} commits queued work, worker woken {woken}x, "
                  f"worker CPU {worker_cpu:.1f} s)", flush=True)
    return tps


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10000, help="users per workload")
    parser.add_argument("--rounds", type=int, default=3, help="rounds with and rounds without the trigger")
    parser.add_argument("--seconds", type=int, default=10, help="length of one pgbench run")
    parser.add_argument("--clients", default="4,2",
                        help="pgbench client counts, comma-separated (threads: at most 2)")
    args = parser.parse_args()
    client_counts = [int(c) for c in args.clients.split(",")]

    sim = Simulator(config={"boot_delay_ms": 200, "rate_limits": {"mode": "fly"},
                            "latency": {"*": {"fixed_ms": 20, "jitter_ms": 10}}, "request_log_cap": 1000})
    # The same-policy users' app rows exist only in the database: health checks would find their apps missing
    # on Fly and recreate them, which is not what this benchmark measures.
    pg = Cluster(sim.url, {"fly.poll_interval": "'10s'", "fly.health_check_interval": "0"})
    try:
        print_machine(pg)
        pg.sql(SUBSCRIPTIONS_DDL)
        # Loaded before the trigger is attached: users 1..N are free (the policy-change workload), users
        # N+1..2N are pro with a live app row each (the same-policy workload).
        free = range(1, args.users + 1)
        paid = range(args.users + 1, 2 * args.users + 1)
        copy_in(pg, "user_subscriptions (user_id, tier)",
                [(user_uuid(n), "free") for n in free] + [(user_uuid(n), "pro") for n in paid])
        copy_in(pg, "fly.user_fly_apps (user_id, tier, fly_app_name, fly_org_slug, fly_machine_id, status, region)",
                [(user_uuid(n), "pro", f"bench-{n}", "personal", f"{n:014x}", "active", "sjc") for n in paid])
        pg.sql("VACUUM ANALYZE")
        scripts = {}
        for name, text in (("free <-> pro", TOGGLE), ("policy change", POLICY_CHANGE), ("same policy", SAME_POLICY)):
            scripts[name] = os.path.join(pg.workdir, name.replace(" ", "_") + ".sql")
            with open(scripts[name], "w") as f:
                f.write(text)
        worker = worker_pid(pg)
        print(f"pgbench: {args.clients} clients, {args.seconds} s per run, {args.rounds} runs with and "
              f"{args.rounds} without the trigger per workload, {args.users} users per workload; "
              f"worker running, Fly's limits on", flush=True)

        # PostgreSQL's default durability is what production runs, and what the target is about: every commit
        # waits for its WAL flush. fsync off leaves only the CPU cost: the trigger's worst case.
        results = {}
        for durability, fsync in (("durable", "on"), ("fsync off", "off")):
            set_setting(pg, "fsync", fsync)
            set_setting(pg, "synchronous_commit", fsync)
            for clients in client_counts:
                # Same policy first: the other workloads leave a backlog the worker keeps working on.
                for name in ("same policy", "free <-> pro", "policy change"):
                    results[(clients, durability, name)] = measure(pg, name, scripts[name], args, worker,
                                                                   durability, clients)
        queued = pg.value("SELECT count(*) FROM fly.reconcile_queue")
        print(f"queue after the run: {queued} users waiting for the worker (paced by Fly's limits)")

        print("\nresult (mean tps over the rounds):")
        for (clients, durability, name), tps in results.items():
            with_trigger, without = statistics.mean(tps[True]), statistics.mean(tps[False])
            ratio = with_trigger / without
            # The targets are about default durability; fsync off is reported for the CPU cost alone.
            target = target_for(clients)
            met = verdict(ratio >= target) if durability == "durable" else "reported"
            print(f"  -c{clients} {durability:10} {name:13}: with trigger {with_trigger:7.0f} tps, "
                  f"without {without:7.0f} tps; ratio {ratio:.3f} (target >= {target:.2f}: {met}); "
                  f"per update {1e6 * clients / with_trigger - 1e6 * clients / without:+.0f} us; "
                  f"spread with {min(tps[True]):.0f}-{max(tps[True]):.0f}, "
                  f"without {min(tps[False]):.0f}-{max(tps[False]):.0f}")
        # The figure to report is the worse of the CPU-bound and the flush-bound case, each against its target.
        durable = [(statistics.mean(tps[True]) / statistics.mean(tps[False]), clients, name)
                   for (clients, durability, name), tps in results.items() if durability == "durable"]
        misses = [(ratio - target_for(clients), ratio, clients, name) for ratio, clients, name in durable]
        worst = min(misses)
        print(f"worst at default durability: {worst[3]} with {worst[2]} clients, ratio {worst[1]:.3f} "
              f"(target {target_for(worst[2]):.2f}: {verdict(worst[0] >= 0)})")
    finally:
        pg.destroy()
        sim.stop()


if __name__ == "__main__":
    main()

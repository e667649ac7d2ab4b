"""100,000 users: the worker's claim pass with 100,000 and with 1,000 users queued (side by side, and the ratio),
a health pass over 100,000 active apps with the worker's memory, and the events table after 1,000,000 events,
before and after the worker's retention pass (fly.event_retention).

    sudo python3 bench/scale.py [--users 100000] [--apps 100000] [--events 1000000] [--repeat 25]

100,000 new paying users arrive in one COPY into the subscription table, so the trigger queues them all with one
run_after (what made 0.2.0's claim sort the whole backlog); later all but 1,000 of the unclaimed items are
deleted. The claim pass is the worker's own SQL (read from src/pgfly_queue_store.cpp): the claim of up to
fly.max_concurrency items and the look at the queue that follows it every pass, each timed with EXPLAIN ANALYZE
in a transaction that is rolled back, while the worker itself works through the queue (fly.rate_limits on, the
simulator enforcing Fly's limits). 0.2.0's claim and look (one index on run_after, a sort and a count of the
whole queue) are timed the same way for comparison. The health pass and the events use apps seeded on the
simulator and copied into fly.user_fly_apps, as bench/health_sweep.py does. Needs pg_fly installed (sudo
scripts/test.sh or make install). Only loopback is contacted. Takes about 5 minutes on 2 cores.
"""

import argparse
import os
import re
import statistics
import time
import uuid

from bench_common import (SUBSCRIPTIONS_DDL, Cluster, Session, Simulator, copy_in, cpu_seconds, fail, memory_kb,
                          print_machine, user_uuid, verdict, worker_pid)

QUEUE_STORE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src", "pgfly_queue_store.cpp")
# A claim pass may take at most this much longer with 100 times the backlog.
TARGET_RATIO = 2.0
LEASE_SECONDS = 600

# 0.2.0's claim and look at the queue (pgfly_queue_store.cpp before issue 16), with its index on run_after.
OLD_INDEX = "CREATE INDEX bench_old_due ON fly.reconcile_queue (run_after)"
OLD_CLAIM = (
    "WITH due AS (SELECT user_id FROM fly.reconcile_queue WHERE run_after <= now() "
    "AND (claimed_at IS NULL OR lease_until < now()) AND NOT (user_id = ANY ($3::uuid[])) "
    "ORDER BY run_after, user_id LIMIT $1::int4 FOR UPDATE SKIP LOCKED) "
    "UPDATE fly.reconcile_queue q SET claimed_at = now(), lease_until = now() + make_interval(secs => $2::float8), "
    "attempts = q.attempts + 1, updated_at = now() FROM due WHERE q.user_id = due.user_id "
    "RETURNING q.user_id, q.desired, q.tier, q.generation, q.attempts, q.alerted")
OLD_SUMMARY = (
    "SELECT count(*) FILTER (WHERE run_after <= now()), EXTRACT(EPOCH FROM min(CASE WHEN claimed_at IS NULL "
    "THEN run_after ELSE lease_until END) - now()) FROM fly.reconcile_queue")


def worker_sql(name):
    """The statement the worker keeps in the constant `name` of pgfly_queue_store.cpp (its string literals)."""
    with open(QUEUE_STORE) as f:
        text = re.sub(r"^\s*//.*$", "", f.read(), flags=re.M)  # comment lines between the literals
    found = re.search(r"\b" + name + r"\s*=\s*((?:\s*\"(?:[^\"\\]|\\.)*\")+)\s*;", text)
    if not found:
        fail(f"{name} not found in {QUEUE_STORE}")
    return "".join(re.findall(r"\"((?:[^\"\\]|\\.)*)\"", found.group(1)))


def timed(session, statement, repeat):
    """Execution times (ms) of EXPLAIN ANALYZE `statement`, each in a transaction rolled back; and the last plan."""
    times = []
    plan = []
    for _ in range(repeat):
        session.sql("BEGIN")
        plan = [row[0] for row in session.sql(f"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) {statement}")]
        session.sql("ROLLBACK")
        line = next((p for p in plan if p.startswith("Execution Time:")), None)
        if line is None:
            fail(f"no execution time in {plan}")
        times.append(float(line.split()[2]))
    return times, plan


def indexes_used(plan):
    used = sorted(set(re.findall(r"(?:Index|Index Only) Scan (?:Backward )?using (\w+)", "\n".join(plan))))
    scans = "seq scan, " if any("Seq Scan" in p for p in plan) else ""
    sorts = "sort, " if any(p.strip().startswith("Sort") for p in plan) else ""
    return f"{scans}{sorts}indexes: {', '.join(used) or 'none'}"


def measure_queue(pg, session, label, repeat, concurrency, figures):
    queued = int(pg.value("SELECT count(*) FROM fly.reconcile_queue"))
    pid = worker_pid(pg)
    cpu_before, wall_before = cpu_seconds(pid), time.monotonic()
    statements = {
        "claim": f"EXECUTE bench_claim({concurrency}, {LEASE_SECONDS}, '{{}}')",
        "next due": "EXECUTE bench_next_due",
        "due count (at most 1/s)": "EXECUTE bench_due",
    }
    row = {"queued": queued}
    for name, statement in statements.items():
        times, plan = timed(session, statement, repeat)
        row[name] = (statistics.median(times), max(times), indexes_used(plan))
    # 0.2.0's pair, with its index, in one transaction rolled back (the worker's writes wait meanwhile).
    session.sql("BEGIN")
    session.sql(OLD_INDEX)
    for name, statement in (("0.2.0 claim", f"EXECUTE bench_old_claim({concurrency}, {LEASE_SECONDS}, '{{}}')"),
                            ("0.2.0 summary", "EXECUTE bench_old_summary")):
        times = []
        for _ in range(max(3, repeat // 5)):
            session.sql("SAVEPOINT s")
            plan = [r[0] for r in session.sql(f"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) {statement}")]
            session.sql("ROLLBACK TO SAVEPOINT s")
            times.append(float(next(p for p in plan if p.startswith("Execution Time:")).split()[2]))
        row[name] = (statistics.median(times), max(times), indexes_used(plan))
    session.sql("ROLLBACK")
    time.sleep(max(0.0, 5 - (time.monotonic() - wall_before)))
    row["worker cpu"] = (cpu_seconds(pid) - cpu_before) / (time.monotonic() - wall_before) * 100
    row["memory"] = memory_kb(pid)
    figures[label] = row
    print(f"{queued} queued: " + "; ".join(
        f"{name} median {row[name][0]:.3f} ms (max {row[name][1]:.3f}; {row[name][2]})"
        for name in statements) + f"; worker {row['worker cpu']:.1f} % of a core", flush=True)


def claim_part(args):
    sim = Simulator(config={"boot_delay_ms": 200, "rate_limits": {"mode": "fly"},
                            "latency": {"*": {"fixed_ms": 20, "jitter_ms": 10}}})
    pg = Cluster(sim.url, {"fly.rate_limits": "on", "fly.health_check_interval": "0", "fly.event_retention": "0"})
    session = None
    try:
        print_machine(pg)
        concurrency = int(pg.value("SHOW fly.max_concurrency"))
        pg.sql(SUBSCRIPTIONS_DDL)
        pg.sql("SELECT fly.attach_tier_trigger()")
        # New paying users, all in one transaction: every item shares one run_after, the case that made 0.2.0's
        # claim sort the whole backlog.
        started = time.monotonic()
        copy_in(pg, "user_subscriptions (user_id, tier)", ((user_uuid(n + 1), "pro") for n in range(args.users)))
        print(f"{args.users} new paying users queued by the trigger in one COPY ({time.monotonic() - started:.1f} s)",
              flush=True)
        session = Session(pg)
        session.sql("PREPARE bench_claim AS " + worker_sql("kClaim"))
        session.sql("PREPARE bench_next_due AS " + worker_sql("kNextDue"))
        session.sql("PREPARE bench_due AS " + worker_sql("kDue"))
        session.sql("PREPARE bench_old_claim AS " + OLD_CLAIM)
        session.sql("PREPARE bench_old_summary AS " + OLD_SUMMARY)
        session.sql("VACUUM ANALYZE fly.reconcile_queue")
        figures = {}
        measure_queue(pg, session, "large", args.repeat, concurrency, figures)
        # The same queue with all but 1,000 of its unclaimed items gone (those users are simply not provisioned).
        pg.sql("DELETE FROM fly.reconcile_queue WHERE user_id IN (SELECT user_id FROM fly.reconcile_queue "
               "WHERE claimed_at IS NULL ORDER BY user_id DESC OFFSET 1000)")
        session.sql("VACUUM ANALYZE fly.reconcile_queue")
        measure_queue(pg, session, "small", args.repeat, concurrency, figures)
        return figures
    finally:
        if session:
            session.close()
        pg.destroy()
        sim.stop()


def sizes(pg):
    row = pg.sql("SELECT count(*), pg_total_relation_size('fly.user_fly_app_events'), "
                 "pg_relation_size('fly.user_fly_app_events'), pg_indexes_size('fly.user_fly_app_events'), "
                 "(SELECT count(*) FROM fly.user_fly_apps) FROM fly.user_fly_app_events")[0]
    return [int(v) for v in row]


def mb(n):
    return f"{n / 1024 / 1024:.0f} MB"


def health_and_events_part(args):
    sim = Simulator(config={"boot_delay_ms": 0, "rate_limits": {"mode": "off"}, "request_log_cap": 1000})
    pg = Cluster(sim.url, {"fly.health_check_interval": "0", "fly.max_concurrency": str(args.concurrency),
                           "fly.rate_limits": "on", "fly.event_retention": "0"})
    result = {}
    try:
        print(f"seeding {args.apps} apps, each with a started machine, on the simulator ...", flush=True)
        started = time.monotonic()
        rows = []
        for i in range(args.apps):
            user = str(uuid.UUID(int=(0x5CA1E << 64) + i, version=4))
            name = f"scale-{i:06d}"
            seeded = sim.control("POST", "seeded_apps", {"name": name, "org": "personal", "machines": [
                {"region": "sjc", "env": {"RUN_MODE": "user_dedicated", "USER_ID": user}}]})
            rows.append((user, "pro", name, "personal", seeded["machines"][0]["id"], "active", "sjc"))
        copy_in(pg, "fly.user_fly_apps (user_id, tier, fly_app_name, fly_org_slug, fly_machine_id, status, region)",
                rows)
        pg.sql("ANALYZE fly.user_fly_apps")
        print(f"  seeded in {time.monotonic() - started:.0f} s", flush=True)

        pid = worker_pid(pg)
        memory_before = memory_kb(pid)
        cpu_before = cpu_seconds(pid)
        started = time.monotonic()
        pg.sql("SELECT fly.check_fly_apps_health()")
        if not pg.wait_for("SELECT count(*) = 0 FROM fly.user_fly_apps WHERE last_health_check_at IS NULL",
                           timeout=3600, interval=0.5):
            fail("the health pass did not finish")
        elapsed = time.monotonic() - started
        healthy = int(pg.value("SELECT count(*) FROM fly.user_fly_apps WHERE health_status = 'healthy'"))
        if healthy != args.apps:
            fail(f"only {healthy} of {args.apps} apps were found healthy")
        result["health"] = (elapsed, cpu_seconds(pid) - cpu_before, memory_before, memory_kb(pid))
        print(f"health pass over {args.apps} apps (fly.max_concurrency {args.concurrency}): {elapsed:.1f} s, "
              f"worker CPU {result['health'][1]:.1f} s", flush=True)

        # Events spread over 180 days, and a tenth of the apps deleted 120 days ago: half of the events and those
        # apps are older than the default retention.
        started = time.monotonic()
        per_app = max(1, args.events // args.apps)
        pg.sql("INSERT INTO fly.user_fly_app_events (fly_app_id, user_id, event_type, status, details, created_at) "
               "SELECT a.id, a.user_id, 'health_changed', 'active', '{\"health\": \"healthy\"}', "
               f"now() - ((i - 1) * 180 / {per_app} + a.id % (180 / {per_app} + 1)) * interval '1 day' "
               f"FROM fly.user_fly_apps a, generate_series(1, {per_app}) AS i")
        deleted = args.apps // 10
        pg.sql("UPDATE fly.user_fly_apps SET status = 'deleted', deleted_at = now() - interval '120 days' "
               f"WHERE id IN (SELECT id FROM fly.user_fly_apps ORDER BY id LIMIT {deleted})")
        pg.sql("VACUUM ANALYZE fly.user_fly_app_events")
        pg.sql("VACUUM ANALYZE fly.user_fly_apps")
        before = sizes(pg)
        old = int(pg.value("SELECT count(*) FROM fly.user_fly_app_events WHERE created_at < now() - interval '90 days'"))
        print(f"{before[0]} events written in {time.monotonic() - started:.0f} s ({old} older than 90 days); "
              f"{deleted} apps deleted 120 days ago", flush=True)

        cpu_before = cpu_seconds(pid)
        started = time.monotonic()
        pg.sql("ALTER SYSTEM SET fly.event_retention = '90d'")
        pg.reload()
        if not pg.wait_for("SELECT NOT EXISTS (SELECT 1 FROM fly.user_fly_app_events "
                           "WHERE created_at < now() - interval '90 days') AND NOT EXISTS (SELECT 1 FROM "
                           "fly.user_fly_apps WHERE deleted_at < now() - interval '90 days')",
                           timeout=1800, interval=0.5):
            fail("the retention pass did not finish")
        elapsed = time.monotonic() - started
        cpu = cpu_seconds(pid) - cpu_before
        after = sizes(pg)
        pg.sql("VACUUM fly.user_fly_app_events")
        vacuumed = sizes(pg)
        free = int(pg.value("SELECT count(*) FROM fly.user_fly_app_events"))
        result["events"] = (before, after, vacuumed, elapsed, cpu, old, deleted, free)
        return result
    finally:
        pg.destroy()
        sim.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100000, help="users queued (the claim part)")
    parser.add_argument("--apps", type=int, default=100000, help="active apps (the health and events part)")
    parser.add_argument("--events", type=int, default=1000000)
    parser.add_argument("--repeat", type=int, default=25, help="timings of each statement")
    parser.add_argument("--concurrency", type=int, default=16, help="fly.max_concurrency of the health pass")
    args = parser.parse_args()
    if args.users < 2000 or args.apps < 10:
        fail("--users at least 2000, --apps at least 10")

    figures = claim_part(args)
    result = health_and_events_part(args)

    print("\nresult:")
    small, large = figures["small"], figures["large"]
    print(f"  {'statement (median ms)':<26} {small['queued']:>10} queued {large['queued']:>10} queued   ratio")
    for name in ("claim", "next due", "due count (at most 1/s)", "0.2.0 claim", "0.2.0 summary"):
        print(f"  {name:<26} {small[name][0]:>17.3f} {large[name][0]:>17.3f}   {large[name][0] / small[name][0]:.2f}"
              f"   ({large[name][2]})")
    claim_pass = [row["claim"][0] + row["next due"][0] for row in (small, large)]
    ratio = claim_pass[1] / claim_pass[0]
    print(f"  claim pass (claim + next due): {claim_pass[0]:.3f} ms vs {claim_pass[1]:.3f} ms, ratio {ratio:.2f} "
          f"(target <= {TARGET_RATIO:g}: {verdict(ratio <= TARGET_RATIO)}); worker "
          f"{small['worker cpu']:.1f} % vs {large['worker cpu']:.1f} % of a core while onboarding")
    elapsed, cpu, memory_before, memory_after = result["health"]
    print(f"  health pass over {args.apps} active apps: {elapsed:.1f} s ({args.apps / elapsed:.0f} apps/s), worker "
          f"CPU {cpu:.1f} s; worker memory before/after: VmRSS {memory_before.get('VmRSS')}/"
          f"{memory_after.get('VmRSS')} kB, RssAnon {memory_before.get('RssAnon')}/{memory_after.get('RssAnon')} kB, "
          f"VmHWM {memory_after.get('VmHWM')} kB")
    before, after, vacuumed, elapsed, cpu, old, deleted, left = result["events"]
    print(f"  events table with {before[0]} events: {mb(before[1])} in all ({mb(before[2])} heap, "
          f"{mb(before[3])} indexes)")
    print(f"  retention pass (fly.event_retention 90d, the worker's batches of 1,000): {old} events and "
          f"{before[4] - after[4]} of {deleted} deleted apps removed in {elapsed:.1f} s, worker CPU {cpu:.1f} s; "
          f"{left} events left; size after {mb(after[1])} ({mb(after[2])} heap, {mb(after[3])} indexes), "
          f"after VACUUM {mb(vacuumed[1])} ({mb(vacuumed[2])} heap, {mb(vacuumed[3])} indexes)")


if __name__ == "__main__":
    main()

"""Helpers shared by the benchmarks: the machine they ran on, a long-lived psql session, loading subscriptions,
waiting for the worker, the worker's /proc figures and the target lines every benchmark prints.

A benchmark exits non-zero when its setup is broken (the worker never finished, a client failed, the simulator
saw nothing); a missed target is a result, printed as MISSED, not an error.
"""

import os
import platform
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test", "integration"))
from harness import PG_BIN, TEST_TOKEN, Cluster, Polling, Simulator  # noqa: E402

# What the benchmarks import from here, the harness's classes included (they come through this module).
__all__ = ["PG_BIN", "TEST_TOKEN", "Cluster", "Polling", "Simulator", "SUBSCRIPTIONS_DDL", "machine_description",
           "print_machine", "fail", "verdict", "percentile", "user_uuid", "run_as_postgres", "copy_in", "Session",
           "set_setting", "wait_until_settled", "epoch", "count_by_status", "fly_requests", "worker_pid",
           "cpu_seconds", "memory_kb"]

SUBSCRIPTIONS_DDL = "CREATE TABLE user_subscriptions (user_id uuid PRIMARY KEY, tier text NOT NULL DEFAULT 'free')"


def machine_description():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} CPUs ({cpu}), {platform.system()} {platform.release()}"


def print_machine(pg):
    # The machine is shared: the load average says whether others were busy when the numbers were taken.
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"machine: {machine_description()}; PostgreSQL {pg.value('SHOW server_version')}; "
          f"load average {load}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)


def fail(message):
    """Ends the benchmark with a non-zero status: the setup is broken, the figures would mean nothing."""
    print(f"FAILED: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def verdict(met):
    return "met" if met else "MISSED"


def percentile(values, fraction):
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * fraction // 1))
    return ordered[int(rank) - 1]


def user_uuid(n):
    """The n-th benchmark user: the same uuid as lpad(to_hex(n), 32, '0')::uuid in SQL, which pgbench uses."""
    return str(uuid.UUID(int=n))


def run_as_postgres(pg, command, **kwargs):
    return subprocess.run(command, capture_output=True, text=True, cwd=pg.workdir,
                          user="postgres" if os.geteuid() == 0 else None, **kwargs)


def copy_in(pg, table_and_columns, rows):
    """COPY rows (tuples of strings) into a table, far faster than INSERT statements for thousands of rows."""
    data = "".join("\t".join(row) + "\n" for row in rows)
    result = run_as_postgres(pg, [os.path.join(PG_BIN, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                                  "-h", pg.workdir, "-p", str(pg.port), "-U", "postgres", "-d", pg.database,
                                  "-c", f"COPY {table_and_columns} FROM STDIN"], input=data)
    if result.returncode != 0:
        fail(f"COPY into {table_and_columns}: {result.stderr.strip()}")


class Session(Polling):
    """One psql process kept open, so that a thousand small statements do not cost a thousand connections."""

    # Benchmarks measure latencies: look often.
    poll_interval = 0.01

    def __init__(self, pg):
        command = [os.path.join(PG_BIN, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-F", "\t",
                   "-h", pg.workdir, "-p", str(pg.port), "-U", "postgres", "-d", pg.database]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, cwd=pg.workdir, bufsize=1,
                                        user="postgres" if os.geteuid() == 0 else None)
        self.count = 0

    def sql(self, sql):
        """Rows of the statements' output, as lists of strings."""
        self.count += 1
        marker = f"__bench_done_{self.count}__"
        self.process.stdin.write(sql.rstrip().rstrip(";") + ";\n\\echo " + marker + "\n")
        self.process.stdin.flush()
        rows = []
        for line in self.process.stdout:
            line = line.rstrip("\n")
            if line == marker:
                return rows
            if line:
                rows.append(line.split("\t"))
        fail(f"psql session ended: {self.process.stderr.read().strip()}\nSQL: {sql}")

    def close(self):
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=10)
        self.process.stdout.close()
        self.process.stderr.close()


def set_setting(pg, name, value):
    """Sets a reloadable setting server-wide (the worker included) and waits until it is in force."""
    pg.sql(f"ALTER SYSTEM SET {name} = '{value}'")
    pg.reload()
    if not pg.wait_for(f"SELECT current_setting('{name}') = '{value}'", timeout=10):
        fail(f"{name} did not take the value {value}")


def wait_until_settled(pg, what, timeout):
    """Waits until the queue is empty; fails the benchmark if the worker does not get there."""
    if not pg.wait_for("SELECT NOT EXISTS (SELECT 1 FROM fly.pending_work)", timeout=timeout, interval=0.05):
        pending = pg.sql("SELECT desired, attempts, last_error FROM fly.reconcile_queue LIMIT 3")
        fail(f"{what}: the queue did not drain within {timeout:.0f} s; e.g. {pending}")


def epoch(pg, sql):
    """A query's timestamp as seconds since the epoch: the server's clock, which the simulator's t_wall shares."""
    return float(pg.value(f"SELECT extract(epoch FROM ({sql}))"))


def count_by_status(pg):
    return dict((status, int(n)) for status, n in pg.sql("SELECT status, count(*) FROM fly.user_fly_apps GROUP BY 1"))


def fly_requests(sim, since=0):
    """The simulator's log of Fly API calls after `since` (control calls are not logged)."""
    page = sim.requests(since)
    if page["oldest_seq"] is not None and page["oldest_seq"] > since + 1:
        fail(f"the simulator's request log dropped entries (cap {page['log_cap']}): raise request_log_cap")
    return page["requests"]


def worker_pid(pg):
    if not pg.wait_for("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE backend_type = 'pg_fly worker')",
                       timeout=10):
        fail("no pg_fly worker in pg_stat_activity")
    return int(pg.value("SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_fly worker'"))


def cpu_seconds(pid):
    """User + system CPU time of a process, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the command name: state is field 3, utime 14 and stime 15 (1-based, see proc(5)).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_kb(pid):
    """VmRSS, VmHWM, RssAnon, RssFile and RssShmem of a process, in kB, from /proc/<pid>/status."""
    figures = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                figures[name] = int(rest.split()[0])
    return figures

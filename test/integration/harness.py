"""Real components for pg_fly's integration tests, demo and benchmarks: a throwaway PostgreSQL cluster run as
the postgres user (initdb refuses root) with pg_fly preloaded, and the Fly API simulator on loopback.

Everything the server reads or writes lives in a temporary folder the postgres user owns, because the
checkout may sit where that user cannot enter.
"""

import atexit
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIMULATOR = os.path.join(REPO_ROOT, "test", "flysim", "flysim.py")
PG_MAJOR = os.environ.get("PG_MAJOR", "15")


def _pg_bin():
    """The server's programs: PG_BIN, else PG_CONFIG's bindir (as every script selects the server), else 15's."""
    if os.environ.get("PG_BIN"):
        return os.environ["PG_BIN"]
    if os.environ.get("PG_CONFIG"):
        return subprocess.run([os.environ["PG_CONFIG"], "--bindir"], check=True, capture_output=True,
                              text=True).stdout.strip()
    return f"/usr/lib/postgresql/{PG_MAJOR}/bin"


PG_BIN = _pg_bin()
TEST_TOKEN = "test-token"


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# What this process started and has not stopped (key -> how to stop it). A run killed by its time limit (SIGTERM,
# turned into KeyboardInterrupt so that unittest stops) stops them at exit instead of leaving servers behind.
_running = {}


def _stop_leftovers():
    for stop in list(_running.values()):
        try:
            stop()
        except Exception:
            pass


def _terminated(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


atexit.register(_stop_leftovers)
signal.signal(signal.SIGTERM, _terminated)


def _as_postgres(command, cwd=None, **kwargs):
    """Runs a PostgreSQL program as the postgres user, from a folder that user can enter (the checkout may be in
    root's home, and pg_ctl refuses to work from a current directory it cannot read)."""
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--"] + command
    return subprocess.run(command, check=True, capture_output=True, text=True, cwd=cwd or tempfile.gettempdir(),
                          **kwargs)


class Simulator:
    """The Fly API simulator as a subprocess on 127.0.0.1."""

    def __init__(self, config=None, seed=1):
        self.workdir = tempfile.mkdtemp(prefix="pg_fly-sim.")
        config = dict(config or {})
        config.setdefault("seed", seed)
        config.setdefault("boot_delay_ms", 50)
        config.setdefault("rate_limits", {"mode": "off"})
        config_path = os.path.join(self.workdir, "config.json")
        with open(config_path, "w") as f:
            json.dump(config, f)
        self.stderr = open(os.path.join(self.workdir, "stderr.log"), "w")
        self.process = subprocess.Popen([sys.executable, SIMULATOR, "--port", "0", "--config", config_path],
                                        stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        line = self.process.stdout.readline()
        if not line.startswith("FLYSIM_LISTENING"):
            raise RuntimeError("simulator did not start: " + line)
        self.port = int(line.strip().split("port=")[1])
        self.url = f"http://127.0.0.1:{self.port}"
        _running[("simulator", id(self))] = self.stop

    def control(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + "/__flysim/" + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read().decode()
            return json.loads(text) if text else None

    def state(self):
        return self.control("GET", "state")

    def requests(self, since=0):
        return self.control("GET", f"requests?since={since}")

    def configure(self, **changes):
        return self.control("POST", "config", changes)

    def stop(self):
        _running.pop(("simulator", id(self)), None)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process.stdout.close()
        self.stderr.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _children(pid):
    """Processes whose parent is `pid` (read from /proc, so it works for any user's processes)."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(entry))
    return children


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Polling:
    """value() and wait_for() for anything with a sql() method that returns rows of strings: a Cluster, or the
    benchmarks' long-lived psql session."""

    # Seconds between two looks; a subclass may poll faster.
    poll_interval = 0.05

    def value(self, sql):
        rows = self.sql(sql)
        return rows[0][0] if rows else None

    def wait_for(self, sql, timeout=30.0, interval=None):
        """Polls until the query returns 't'; returns whether it did."""
        interval = self.poll_interval if interval is None else interval
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.value(sql) == "t":
                return True
            time.sleep(interval)
        return False


class Cluster(Polling):
    """A throwaway PostgreSQL with pg_fly preloaded, its worker pointed at `api_url`."""

    def __init__(self, api_url, settings=None, database="pgfly", token=TEST_TOKEN):
        self._make_workdir(database, token)
        _as_postgres([os.path.join(PG_BIN, "initdb"), "-D", self.datadir, "-A", "trust", "-U", "postgres",
                      "--no-sync", "-E", "UTF8", "--locale=C"])
        conf = {
            "port": str(self.port),
            "listen_addresses": "''",
            "unix_socket_directories": f"'{self.workdir}'",
            "shared_preload_libraries": "'pg_fly'",
            "fly.database_name": f"'{database}'",
            "fly.api_url": f"'{api_url}'",
            "fly.api_token_file": f"'{self.token_file}'",
            "fly.image": "'registry.fly.io/vyx-app:deployment-01K9Y194AA56A6SFHTTD64KQ7Y'",
            "fly.poll_interval": "'2s'",
            # The drift pass at start would queue the states tests arrange by hand; test_drift.py turns it on.
            "fly.drift_check_interval": "0",
            "fly.retry_base_delay": "'200ms'",
            "fly.retry_max_delay": "'2s'",
            "log_min_messages": "debug1",
            "fsync": "off",
            "timezone": "'UTC'",
        }
        conf.update(settings or {})
        self.write_settings(conf)
        self.start()
        self.psql(f"CREATE DATABASE {database}", database="postgres")
        self.sql("CREATE EXTENSION pg_fly")

    def _make_workdir(self, database, token):
        self.workdir = tempfile.mkdtemp(prefix="pg_fly-pg.")
        os.chmod(self.workdir, 0o755)
        self.datadir = os.path.join(self.workdir, "data")
        self.database = database
        self.port = _free_port()
        self.token_file = os.path.join(self.workdir, "fly_token")
        with open(self.token_file, "w") as f:
            f.write(token + "\n")
        os.chmod(self.token_file, 0o600)
        if os.geteuid() == 0:
            postgres = pwd.getpwnam("postgres")
            os.chown(self.workdir, postgres.pw_uid, postgres.pw_gid)
            os.chown(self.token_file, postgres.pw_uid, postgres.pw_gid)

    def standby(self, settings=None, token=TEST_TOKEN):
        """A streaming-replication standby of this cluster (pg_basebackup -R) in its own folder, started.
        It inherits this cluster's postgresql.conf; `settings` are appended to it."""
        replica = Cluster.__new__(Cluster)
        replica._make_workdir(self.database, token)
        _as_postgres([os.path.join(PG_BIN, "pg_basebackup"), "-h", self.workdir, "-p", str(self.port), "-U", "postgres",
                      "-D", replica.datadir, "-R", "-X", "stream", "-c", "fast", "--no-sync"])
        conf = {
            "port": str(replica.port),
            "unix_socket_directories": f"'{replica.workdir}'",
            "fly.api_token_file": f"'{replica.token_file}'",
            # Promoted, it must not wait for a standby of its own.
            "synchronous_standby_names": "''",
        }
        conf.update(settings or {})
        replica.write_settings(conf)
        replica.start()
        return replica

    def promote(self):
        _as_postgres([os.path.join(PG_BIN, "pg_ctl"), "-D", self.datadir, "-w", "-t", "60", "promote"])

    def postmaster_pid(self):
        with open(os.path.join(self.datadir, "postmaster.pid")) as f:
            return int(f.readline())

    def kill_postmaster(self, timeout=60.0):
        """kill -9 of the postmaster, the way a crash or the OOM killer ends it. Returns once its children (the
        worker among them) have noticed and exited, so that the server can be started again."""
        pid = self.postmaster_pid()
        children = _children(pid)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while any(_alive(child) for child in children + [pid]):
            if time.monotonic() > deadline:
                raise RuntimeError(f"children of the killed postmaster {pid} are still running")
            time.sleep(0.02)
        if os.path.exists(f"/proc/{pid}"):
            # A zombie nobody has reaped yet (some containers' init is slow to): it holds nothing, but a new
            # postmaster would take it for a live one and refuse its lock files.
            for lock in (os.path.join(self.datadir, "postmaster.pid"),
                         os.path.join(self.workdir, f".s.PGSQL.{self.port}.lock")):
                os.unlink(lock)

    def worker_pid(self):
        """The pg_fly worker's pid as pg_stat_activity shows it, or None."""
        pid = self.value("SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_fly worker'")
        return int(pid) if pid else None

    def write_settings(self, settings):
        with open(os.path.join(self.datadir, "postgresql.conf"), "a") as f:
            for name, value in settings.items():
                f.write(f"{name} = {value}\n")

    def start(self):
        _running[("server", self.datadir)] = lambda: self.stop("immediate")
        try:
            _as_postgres([os.path.join(PG_BIN, "pg_ctl"), "-D", self.datadir, "-l",
                          os.path.join(self.workdir, "server.log"), "-c", "-w", "-t", "60", "start"])
        except subprocess.CalledProcessError as e:
            raise RuntimeError(f"the server did not start: {e.stdout}{e.stderr}\n{self.server_log()[-3000:]}") from None

    def stop(self, mode="fast", check=False):
        _running.pop(("server", self.datadir), None)
        try:
            _as_postgres([os.path.join(PG_BIN, "pg_ctl"), "-D", self.datadir, "-m", mode, "-w", "stop"])
        except subprocess.CalledProcessError:
            if check:
                raise

    def destroy(self):
        self.stop("immediate")
        shutil.rmtree(self.workdir, ignore_errors=True)

    def server_log(self):
        with open(os.path.join(self.workdir, "server.log"), errors="replace") as f:
            return f.read()

    def psql(self, sql, database=None, check=True):
        command = [os.path.join(PG_BIN, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-F", "\t",
                   "-h", self.workdir, "-p", str(self.port), "-U", "postgres", "-d", database or self.database,
                   "-c", sql]
        result = subprocess.run(command, capture_output=True, text=True, cwd=self.workdir,
                                user="postgres" if os.geteuid() == 0 else None)
        if check and result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr.strip()}\nSQL: {sql}")
        return result

    def table(self, sql):
        """The query's result as psql prints it for people."""
        command = [os.path.join(PG_BIN, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-P", "footer=off",
                   "-h", self.workdir, "-p", str(self.port), "-U", "postgres", "-d", self.database, "-c", sql]
        result = subprocess.run(command, capture_output=True, text=True, check=True, cwd=self.workdir,
                                user="postgres" if os.geteuid() == 0 else None)
        return result.stdout.rstrip("\n")

    def sql(self, sql):
        """Rows of the last statement, as lists of strings (None for NULL is not distinguished from '')."""
        output = self.psql(sql).stdout
        return [line.split("\t") for line in output.splitlines() if line != ""]

    def reload(self):
        self.psql("SELECT pg_reload_conf()")

    def wait_worker_iterations(self, n, timeout=30.0, idle=False):
        """A barrier for tests that prove nothing happened: returns once the worker has started n more loop
        iterations than when it was called (fly.worker_status().iterations), and fails the test if that takes
        longer than `timeout` seconds.

        One iteration is one wake-up of the worker: it looks at the queue, starts what is due, takes the answers
        that came in, publishes its status and sleeps until a commit, an answer or a timer wakes it. A worker with
        nothing to do may sleep for fly.poll_interval, so the barrier wakes it itself, by pg_reload_conf(): SIGHUP
        sets its latch (it re-reads settings that did not change) and counts neither as a commit nor as a timer
        wake. An iteration counted after the call starts after everything committed before it, so n = 2 waits
        until a whole iteration has looked at that state.

        With idle, it also waits until a status published once the first of those iterations had ended shows no
        request in flight or held back (by the rate limiter or the breaker: not for a test whose breaker stays
        open): whatever the worker sent after the call has reached Fly and its answer was recorded."""
        deadline = time.monotonic() + timeout
        start = int(self.value("SELECT iterations FROM fly.worker_status()"))
        reached = start
        while reached < start + n:
            if time.monotonic() >= deadline:
                raise AssertionError(f"the worker ran {reached - start} of {n} more iterations within {timeout} s: "
                                     f"{self.sql('SELECT * FROM fly.worker_status()')}")
            self.reload()
            time.sleep(self.poll_interval)
            reached = int(self.value("SELECT iterations FROM fly.worker_status()"))
        # Read only now (worker_status() reads in_flight before iterations): the status the worker published when
        # iteration start + n - 1, the first to start after the call when n = 2, or a later one ended.
        if idle and not self.wait_for("SELECT in_flight = 0 AND rate_limited = 0 FROM fly.worker_status()",
                                      max(1.0, deadline - time.monotonic())):
            raise AssertionError(f"the worker still had requests in flight after {timeout} s: "
                                 f"{self.sql('SELECT * FROM fly.worker_status()')}")
        return reached

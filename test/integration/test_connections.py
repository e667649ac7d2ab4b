"""The worker's HTTP connections are file descriptors PostgreSQL accounts for: the worker reserves them
(AcquireExternalFD), opens no more than it reserved, and runs fewer users at once when fewer are available."""

import os
import re
import sys
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_provisioning import ProvisioningTestCase  # noqa: E402


def open_sockets(pid):
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:
            pass  # closed meanwhile
    return count


class ConnectionBudgetTest(ProvisioningTestCase):
    # Few descriptors for PostgreSQL (a third of them for external use) and a concurrency that would want many.
    cluster_settings = {"fly.request_timeout": "'10s'", "max_files_per_process": "100",
                        "fly.max_concurrency": "64", "fly.rate_limits": "off", "fly.health_check_interval": "0"}

    def test_connections_stay_within_the_reserved_descriptors(self):
        pattern = r"pg_fly worker: (\d+) file descriptors reserved, at most (\d+) connections"
        deadline = time.monotonic() + 30
        while not re.search(pattern, self.pg.server_log()) and time.monotonic() < deadline:
            time.sleep(0.1)
        log = self.pg.server_log()
        reserved = re.findall(pattern, log)
        self.assertTrue(reserved, "the worker logged no reservation")
        fds, connections = map(int, reserved[-1])
        self.assertLess(fds, 64 * 2 + 1)
        self.assertIn("instead of fly.max_concurrency = 64", log)
        # Every answer takes a while, so that requests pile up to whatever the worker allows.
        self.sim.configure(latency={"*": {"fixed_ms": 300, "jitter_ms": 0}})
        users = [str(uuid.UUID(int=0x5000 + i, version=4)) for i in range(60)]
        self.pg.sql("INSERT INTO user_subscriptions VALUES " + ",".join(f"('{u}', 'pro')" for u in users))
        pid = self.pg.worker_pid()
        most = 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            most = max(most, open_sockets(pid))
            if self.pg.value("SELECT count(*) FROM fly.user_fly_apps WHERE status = 'active'") == "60":
                break
            time.sleep(0.02)
        self.assertEqual(self.pg.value("SELECT count(*) FROM fly.user_fly_apps WHERE status = 'active'"), "60")
        self.assertGreater(most, 1)
        self.assertLessEqual(most, connections)
        self.assertEqual(self.pg.value("SELECT count(*) FROM fly.user_fly_app_events WHERE event_type LIKE "
                                       "'%attempt_failed'"), "0")


class ManyConnectionsTest(ProvisioningTestCase):
    # A concurrency that wants more descriptors than PostgreSQL grants: the
    # reservation takes what it can, and the worker's own wait must still get its descriptor.
    cluster_settings = {"fly.request_timeout": "'10s'", "fly.max_concurrency": "400", "fly.rate_limits": "off",
                        "fly.health_check_interval": "0"}

    def test_the_wait_never_runs_out_of_descriptors(self):
        self.assertTrue(self.pg.wait_for("SELECT iterations > 0 FROM fly.worker_status()", 30))
        users = [str(uuid.UUID(int=0x6000 + i, version=4)) for i in range(3)]
        start = time.monotonic()
        self.pg.sql("INSERT INTO user_subscriptions VALUES " + ",".join(f"('{u}', 'pro')" for u in users))
        self.assertTrue(self.pg.wait_for("SELECT count(*) = 3 FROM fly.user_fly_apps WHERE status = 'active'", 60))
        took = time.monotonic() - start
        # Each Fly answer is handled when it arrives, not at the next one-second timer after a failed wait (three
        # users took 5 s then; a time bound would be flaky on a loaded machine, the failed waits are not).
        failed = [line for line in self.pg.server_log().splitlines() if "Too many open files" in line]
        self.assertEqual(failed, [], "the worker's wait failed")
        print(f"\n  3 users provisioned in {took:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)

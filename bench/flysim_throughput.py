#!/usr/bin/env python3
"""Sustained request rate of the Fly API simulator (test/flysim/flysim.py) on loopback.

Starts the simulator as a subprocess (latency injection off, rate limits off, boot delay 0),
drives it from several client processes over keep-alive HTTP/1.1 connections for a bounded time,
and prints requests/s for GET machine and for create/delete machine cycles, with the simulator's
own CPU use (near 100% of one core means the simulator, not the clients, is the limit).

    python3 bench/flysim_throughput.py [--duration 5] [--clients 4] [--connections 1]
"""
import argparse
import json
import multiprocessing
import os
import platform
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIMULATOR = os.path.join(REPO, "test", "flysim", "flysim.py")
TOKEN = "test-token"
APP = "bench-app"
MACHINE_BODY = json.dumps({
    "region": "sjc",
    "config": {"image": "registry.fly.io/vyx-app:deployment-01K9Y194AA56A6SFHTTD64KQ7Y",
               "env": {"RUN_MODE": "user_dedicated", "USER_ID": "00000000-0000-0000-0000-000000000001"},
               "guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 256},
               "metadata": {"pg_fly_user_id": "00000000-0000-0000-0000-000000000001"}},
}).encode()


class Client:
    """Minimal keep-alive HTTP/1.1 client on a raw socket: cheap enough not to be the bottleneck."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        self.prefix = f"Host: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\n"

    def request(self, method, path, body=b""):
        head = f"{method} {path} HTTP/1.1\r\n{self.prefix}"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.sock.sendall((head + "\r\n").encode() + body)
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self.receive()
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        while len(rest) < length:
            rest += self.receive()
        self.buffer = rest[length:]
        return status, rest[:length]

    def receive(self):
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("simulator closed the connection")
        return data


def worker(port, scenario, machine_id, connections, start_at, stop_at, results, cpus):
    if cpus:
        os.sched_setaffinity(0, cpus)
    clients = [Client(port) for _ in range(connections)]
    requests = errors = 0
    latencies = []
    while time.time() < start_at:
        time.sleep(0.001)
    while True:
        now = time.perf_counter()
        if time.time() >= stop_at:
            break
        for client in clients:  # round-robin keeps every connection warm
            if scenario == "get_machine":
                status, _ = client.request("GET", f"/v1/apps/{APP}/machines/{machine_id}")
                requests += 1
                errors += status != 200
            else:
                status, body = client.request("POST", f"/v1/apps/{APP}/machines", MACHINE_BODY)
                requests += 1
                if status != 200:
                    errors += 1
                    continue
                new_id = json.loads(body)["id"]
                status, _ = client.request("DELETE", f"/v1/apps/{APP}/machines/{new_id}?force=true")
                requests += 1
                errors += status != 200
        if len(latencies) < 20000:
            latencies.append((time.perf_counter() - now) / len(clients))
    results.put((requests, errors, latencies))


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_scenario(port, server_pid, scenario, machine_id, clients, connections, duration, client_cpus):
    results = multiprocessing.Queue()
    start_at = time.time() + 0.5
    stop_at = start_at + duration
    procs = [multiprocessing.Process(target=worker, args=(port, scenario, machine_id, connections,
                                                          start_at, stop_at, results, client_cpus))
             for _ in range(clients)]
    for proc in procs:
        proc.start()
    time.sleep(max(0.0, start_at - time.time()))
    cpu_before = cpu_seconds(server_pid)
    gathered = [results.get(timeout=duration + 30) for _ in procs]
    cpu_used = cpu_seconds(server_pid) - cpu_before
    for proc in procs:
        proc.join()
    requests = sum(r[0] for r in gathered)
    errors = sum(r[1] for r in gathered)
    latencies = sorted(x for r in gathered for x in r[2])
    pct = (lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000) if latencies else (lambda q: 0)
    return {"requests": requests, "errors": errors, "rate": requests / duration,
            "server_cpu": cpu_used / duration, "p50_ms": pct(0.5), "p99_ms": pct(0.99)}


def cpu_model():
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per scenario (default 5)")
    parser.add_argument("--clients", type=int, default=4, help="client processes (default 4)")
    parser.add_argument("--connections", type=int, default=1, help="keep-alive connections per client (default 1)")
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs the simulator")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin the simulator to core 0 and the clients to the other cores")
    parser.add_argument("--request-log-cap", type=int, default=200000,
                        help="simulator request-log size (default 200000, the simulator's default)")
    args = parser.parse_args()

    # With 2+ cores the simulator gets core 0 and the clients the rest, so they do not steal its
    # CPU: the figure is then "one simulator on one core" rather than a scheduling lottery.
    cpus = sorted(os.sched_getaffinity(0))
    server_cpus, client_cpus = ({cpus[0]}, set(cpus[1:])) if len(cpus) > 1 and not args.no_pin else (None, None)
    server = subprocess.Popen(
        [args.python, SIMULATOR, "--port", "0", "--seed", "1", "--rate-limits", "off", "--boot-delay-ms", "0",
         "--request-log-cap", str(args.request_log_cap)],
        stdout=subprocess.PIPE, text=True)
    if server_cpus:
        os.sched_setaffinity(server.pid, server_cpus)
    try:
        line = server.stdout.readline().strip()
        if not line.startswith("FLYSIM_LISTENING port="):
            sys.exit(f"simulator did not start: {line!r}")
        port = int(line.split("=", 1)[1])
        setup = Client(port)
        status, _ = setup.request("POST", "/v1/apps", json.dumps({"name": APP, "org_slug": "personal"}).encode())
        assert status == 201, status
        status, body = setup.request("POST", f"/v1/apps/{APP}/machines", MACHINE_BODY)
        assert status == 200, status
        machine_id = json.loads(body)["id"]

        version = subprocess.run([args.python, "--version"], capture_output=True, text=True).stdout.strip()
        print(f"machine: nproc={os.cpu_count()} cpu={cpu_model()!r} simulator={version} "
              f"clients={args.clients}x{args.connections} connections, {args.duration:g}s per scenario, "
              f"latency injection off, rate limits off, request log cap {args.request_log_cap}, "
              f"simulator on cpus {sorted(server_cpus) if server_cpus else 'any'}, "
              f"clients on cpus {sorted(client_cpus) if client_cpus else 'any'}")
        for scenario, label in (("get_machine", "GET machine"), ("cycle", "create+delete machine")):
            r = run_scenario(port, server.pid, scenario, machine_id, args.clients, args.connections, args.duration,
                             client_cpus)
            extra = f", {r['rate'] / 2:,.0f} cycles/s" if scenario == "cycle" else ""
            print(f"{label:>22}: {r['rate']:,.0f} requests/s{extra} ({r['requests']:,} requests, "
                  f"{r['errors']} errors, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
                  f"simulator CPU {r['server_cpu'] * 100:.0f}% of one core)")
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()

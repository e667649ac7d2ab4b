#!/usr/bin/env python3
"""Fly Machines API simulator for pg_fly's tests, demo and benchmarks (Python 3 stdlib only).

    python3 test/flysim/flysim.py --port 0 --seed 42 [--config FILE.json] [--tokens TOKEN=ORG,...]

prints one line `FLYSIM_LISTENING port=<port>` once it listens on 127.0.0.1, then serves until
SIGTERM/SIGINT. In-process use (tests): `server, port = start_server(config)`, `server.shutdown()`.

One asyncio loop serves every connection through a small HTTP/1.1 parser (keep-alive, pipelining,
Content-Length or chunked bodies, Expect: 100-continue): http.server costs several times more CPU
per request, and a single thread keeps all simulated state lock-free. See README.md.
"""
import argparse
import asyncio
import collections
import email.utils
import http
import itertools
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from urllib.parse import parse_qs, unquote

# Sibling modules must import even when this file is loaded by path from elsewhere.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import flysim_model as model  # noqa: E402
import flysim_policy as policy  # noqa: E402

CONTROL_PREFIX = "/__flysim/"
MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 8 * 1024 * 1024
# A streamed answer waits while more than this is queued for a client that reads slowly (or not at all).
STREAM_BUFFER_BYTES = 1024 * 1024
REASONS = {status.value: status.phrase for status in http.HTTPStatus}
UNAUTHORIZED = model.error_reply(401, "Authenticate: token validation error")

# Fly API routes by path shape: odd segments after /v1/ are identifiers (app or org, machine).
ROUTES = {
    ("apps",): {"GET": "list_apps", "POST": "create_app"},
    ("apps", "*"): {"GET": "get_app", "DELETE": "delete_app"},
    ("apps", "*", "machines"): {"GET": "list_machines", "POST": "create_machine"},
    ("apps", "*", "machines", "*"): {"GET": "get_machine", "POST": "update_machine", "DELETE": "delete_machine"},
    ("apps", "*", "machines", "*", "stop"): {"POST": "stop_machine"},
    ("apps", "*", "machines", "*", "start"): {"POST": "start_machine"},
    ("apps", "*", "machines", "*", "wait"): {"GET": "wait_machine"},
    ("apps", "*", "secrets"): {"GET": "list_secrets", "POST": "set_secrets"},
    ("apps", "*", "ip_assignments"): {"GET": "list_ip_assignments", "POST": "assign_ip"},
    ("apps", "*", "ip_assignments", "*"): {"DELETE": "delete_ip_assignment"},
    ("orgs", "*", "machines"): {"GET": "list_org_machines"},
}
MACHINE_STATES = ("created", "starting", "started", "stopping", "stopped", "suspended", "failed",
                  "replacing", "destroying", "destroyed")

_date_cache = [0, ""]


def http_date():
    now = int(time.time())
    if now != _date_cache[0]:
        _date_cache[0], _date_cache[1] = now, email.utils.formatdate(now, usegmt=True)
    return _date_cache[1]


def route(method, path):
    """(endpoint, params) for a Fly API request, or ("unknown", Reply) for a 404/405."""
    segments = path.split("/")[2:] if path.startswith("/v1/") else None
    if segments:
        shape = tuple("*" if index % 2 else seg for index, seg in enumerate(segments))
        methods = ROUTES.get(shape)
        if methods is not None:
            endpoint = methods.get(method)
            if endpoint is None:
                allow = (("Allow", ", ".join(methods)),)
                return "unknown", model.Reply(405, b"Method Not Allowed\n", "text/plain; charset=utf-8", allow)
            ids = [unquote(s) if "%" in s else s for s in segments[1::2]]
            second = "ip" if len(segments) > 2 and segments[2] == "ip_assignments" else "machine"
            params = dict(zip(("org" if segments[0] == "orgs" else "app", second), ids))
            return endpoint, params
    # Fly's router answers unknown paths with Go's plain-text 404.
    return "unknown", model.Reply(404, b"404 page not found\n", "text/plain; charset=utf-8")


def token_of(authorization):
    """The token in `Bearer <t>`, `FlyV1 <t>` or the docs' `Bearer FlyV1 <t>`; None otherwise."""
    scheme, _, rest = authorization.partition(" ")
    scheme = scheme.lower()
    rest = rest.strip()
    if scheme == "bearer" and rest.startswith("FlyV1 "):
        rest = rest[6:].strip()
    elif scheme not in ("bearer", "flyv1"):
        return None
    return rest or None


def redact_authorization(value):
    scheme, _, rest = value.partition(" ")
    if scheme.lower() == "bearer" and rest.strip().startswith("FlyV1 "):
        return "Bearer FlyV1 <redacted>"
    return f"{scheme} <redacted>" if rest else "<redacted>"


def redact_secrets_body(body):
    """Secret values never reach the request log; names and null (unset) stay visible."""
    if isinstance(body, dict):
        out = dict(body)
        if isinstance(out.get("values"), dict):
            out["values"] = {k: (None if v is None else "<redacted>") for k, v in out["values"].items()}
        if "value" in out:
            out["value"] = "<redacted>"
        return out
    if body is None:
        return None
    return "<redacted: unparsable secrets body>"


def flat_query(query):
    return {k: v[0] if len(v) == 1 else v for k, v in query.items()}


class HttpConnection(asyncio.Protocol):
    """One client connection: parses requests in order and answers each exactly once."""

    def __init__(self, sim):
        self.sim = sim
        self.id = next(sim.connection_ids)
        self.transport = None
        self.buffer = bytearray()
        self.busy = False            # a request is being answered; later ones wait in the buffer
        self.processing = False      # inside process(): answers given synchronously loop there
        self.closed = False
        self.paused = False
        self.keep_alive = True
        self.continue_sent = False
        self.hang_timer = None
        self.stream_timer = None

    def connection_made(self, transport):
        self.transport = transport
        self.sim.connections.add(self)

    def connection_lost(self, exc):
        self.closed = True
        self.sim.connections.discard(self)
        if self.hang_timer:
            self.hang_timer.cancel()
        if self.stream_timer:
            self.stream_timer.cancel()

    def data_received(self, data):
        self.buffer += data
        if not self.busy:
            self.process()
        elif len(self.buffer) > MAX_BODY_BYTES and not self.paused:
            self.transport.pause_reading()
            self.paused = True

    def process(self):
        self.processing = True
        try:
            while not self.busy and not self.closed:
                request = self.parse()
                if request is None:
                    break
                self.busy = True
                try:
                    self.sim.handle(self, *request)
                except Exception:  # a simulator bug must answer, not kill the connection silently
                    traceback.print_exc()
                    self.fail(500, "flysim internal error (see simulator stderr)")
        finally:
            self.processing = False
        if self.paused and not self.busy and not self.closed:
            self.transport.resume_reading()
            self.paused = False

    def parse(self):
        buf = self.buffer
        while buf[:2] == b"\r\n":
            del buf[:2]
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEADER_BYTES:
                self.fail(431, "request headers too large")
            return None
        lines = buf[:end].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self.fail(400, "malformed request line")
            return None
        method, target, version = parts
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                self.fail(400, "malformed header line")
                return None
            name = name.strip().lower()
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        start = end + 4
        if "transfer-encoding" in headers:
            result = self.dechunk(start)
            if result is None:
                self.send_continue(headers)
                return None
            body, consumed = result
        else:
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                self.fail(400, "invalid Content-Length")
                return None
            if length > MAX_BODY_BYTES:
                self.fail(413, "request body too large")
                return None
            if len(buf) < start + length:
                self.send_continue(headers)
                return None
            body, consumed = bytes(buf[start:start + length]), start + length
        del buf[:consumed]
        self.continue_sent = False
        connection = headers.get("connection", "").lower()
        self.keep_alive = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
        return method, target, headers, body

    def dechunk(self, pos):
        buf = self.buffer
        body = bytearray()
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            try:
                size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
            except ValueError:
                self.fail(400, "malformed chunk size")
                return None
            pos = eol + 2
            if size == 0:
                end = buf.find(b"\r\n", pos)
                while end > pos:         # skip trailer lines up to the empty line
                    pos = end + 2
                    end = buf.find(b"\r\n", pos)
                return None if end < 0 else (bytes(body), end + 2)
            if len(buf) < pos + size + 2:
                return None
            body += buf[pos:pos + size]
            pos += size + 2
            if len(body) > MAX_BODY_BYTES:
                self.fail(413, "request body too large")
                return None

    def send_continue(self, headers):
        if not self.continue_sent and headers.get("expect", "").lower() == "100-continue":
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.continue_sent = True

    def fail(self, status, message):
        self.keep_alive = False
        self.send(model.error_reply(status, message), "flysim-protocol-error")

    def head(self, reply, request_id, framing, content_type):
        head = [f"HTTP/1.1 {reply.status} {REASONS.get(reply.status, 'Unknown')}\r\n"
                f"{framing}\r\nDate: {http_date()}\r\nFly-Request-Id: {request_id}\r\n"]
        if content_type:
            head.append(f"Content-Type: {reply.content_type}\r\n")
        for name, value in reply.headers:
            head.append(f"{name}: {value}\r\n")
        head.append("\r\n" if self.keep_alive else "Connection: close\r\n\r\n")
        return "".join(head).encode("latin-1")

    def send(self, reply, request_id):
        if isinstance(reply, model.StreamedReply):
            return self.stream(reply, request_id)
        if not self.closed:
            body = reply.body
            self.transport.write(self.head(reply, request_id, f"Content-Length: {len(body)}", bool(body)) + body)
        self.answered()

    def stream(self, reply, request_id):
        """The head at once, then the body piece by piece: paced by reply.interval_s, and held back while the
        client is not reading, so that a huge answer never sits in memory whole."""
        if self.closed:
            return
        chunked = reply.length is None
        framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {reply.length}"
        self.transport.write(self.head(reply, request_id, framing, True))
        pieces = iter(reply.chunks)
        loop = self.sim.loop

        def pump():
            self.stream_timer = None
            while not self.closed:
                if self.transport.get_write_buffer_size() > STREAM_BUFFER_BYTES:
                    self.stream_timer = loop.call_later(0.005, pump)
                    return
                piece = next(pieces, None)
                if piece is None:
                    if chunked:
                        self.transport.write(b"0\r\n\r\n")
                    self.answered()
                    return
                if not piece:
                    continue
                self.transport.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                if reply.interval_s > 0:
                    self.stream_timer = loop.call_later(reply.interval_s, pump)
                    return

        pump()

    def answered(self):
        """The current request is answered: close if asked to, else go on with the next one."""
        if not self.keep_alive and not self.closed:
            self.transport.close()
            self.closed = True
        self.busy = False
        if not self.processing and not self.closed and self.buffer:
            self.process()

    def reset(self):
        """Drop the connection with a TCP RST (SO_LINGER 0) instead of an answer."""
        if not self.closed:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()
            self.closed = True

    def hang(self, seconds):
        """Never answer; give up the connection after `seconds` (the client usually leaves first)."""
        if not self.closed:
            self.hang_timer = asyncio.get_running_loop().call_later(seconds, self.reset)


class Simulator:
    """Request pipeline (log, auth, faults, rate limits, latency), control API and counters."""

    def __init__(self, config, loop):
        self.loop = loop
        self.startup_config = config
        self.connection_ids = itertools.count(1)
        self.connections = set()
        self.world = None
        self.fresh_state(config)

    def fresh_state(self, config):
        if self.world is not None:
            self.world.close()
        seed = config["seed"]
        self.config = config
        self.world = model.FlyWorld(config, self.loop)
        self.latency = policy.Latency(seed)
        self.latency.configure(config["latency"])
        self.limiter = policy.RateLimiter()
        self.limiter.configure(config["rate_limits"])
        self.faults = policy.FaultInjector(seed)
        self.faults.configure(config["faults"])
        self.orgs_by_token = self.token_table(config["tokens"])
        self.log = collections.deque(maxlen=config["request_log_cap"])
        self.seq = 0
        self.counts = {}             # (endpoint, status or "reset"/"hang") -> n
        self.rate_limited = {}       # endpoint -> n answered 429 by the rate limiter
        self.faults_applied = {}     # fault kind -> n
        self.started = time.monotonic()

    @staticmethod
    def token_table(tokens):
        # A configured token also matches when written with or without a "FlyV1 " prefix.
        table = {}
        for token, org in tokens.items():
            bare = token[6:].strip() if token.startswith("FlyV1 ") else token
            table[bare] = org
        return table

    def reconfigure(self, patch):
        config = policy.merge_config(self.config, patch)
        if "latency" in patch:
            self.latency.configure(config["latency"])
        if "rate_limits" in patch:
            self.limiter.configure(config["rate_limits"])
        if "faults" in patch:
            self.faults.configure(config["faults"])
        if "tokens" in patch:
            self.orgs_by_token = self.token_table(config["tokens"])
        if config["request_log_cap"] != self.log.maxlen:
            self.log = collections.deque(self.log, maxlen=config["request_log_cap"])
        self.config = config
        self.world.config = config
        for name, org in config["foreign_apps"].items():
            if not self.world.name_taken(name):
                self.world.take_name(name, org)
        return config

    def close_connections(self):
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abort()

    # ----------------------------------------------------------------------------- pipeline

    def handle(self, conn, method, target, headers, body):
        arrival = time.monotonic()
        path, _, query_string = target.partition("?")
        if path.startswith(CONTROL_PREFIX):
            rest = path[len(CONTROL_PREFIX):].split("/")
            if not (method == "GET" and len(rest) == 3 and rest[0] == "apps" and rest[2] == "health"):
                return conn.send(self.control(method, rest, query_string, body), "flysim-control")
            endpoint, params = policy.APP_HEALTH, {"app": unquote(rest[1])}
        elif path == "/health" and headers.get("host", "").partition(":")[0].endswith(".fly.dev"):
            endpoint, params = policy.APP_HEALTH, {"app": headers["host"].partition(".")[0]}
        else:
            endpoint, params = route(method, path)
        query = parse_qs(query_string, keep_blank_values=True) if query_string else {}
        if body:
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = model.INVALID_JSON
        else:
            parsed = None

        org = None
        early = None
        authorization = headers.get("authorization")
        if endpoint == "unknown":
            early = params
        elif endpoint != policy.APP_HEALTH:
            token = token_of(authorization) if authorization else None
            org = self.orgs_by_token.get(token) if token else None
            if org is None:
                early = UNAUTHORIZED
        if authorization:
            headers["authorization"] = redact_authorization(authorization)

        self.seq += 1
        entry = None
        if self.log.maxlen:
            logged_body = parsed if parsed is not model.INVALID_JSON else body.decode("utf-8", "replace")
            if "/secrets" in path:
                logged_body = redact_secrets_body(logged_body)
            entry = {"seq": self.seq, "endpoint": endpoint, "method": method, "path": path,
                     "query": flat_query(query), "body": logged_body, "headers": headers, "conn": conn.id,
                     "t_mono": arrival, "t_wall": time.time(), "status": None, "fault": None,
                     "latency_ms": 0, "duration_ms": None}
            self.log.append(entry)

        delay_ms = self.latency.draw_ms(endpoint) if endpoint != "unknown" else 0.0
        fault = None
        if early is None:
            fault, extra_ms = self.faults.decide(endpoint, params.get("app"), method, path)
            delay_ms += extra_ms
            if fault is None and endpoint != policy.APP_HEALTH:
                retry_after = self.limiter.check(endpoint, policy.rate_limit_scope(endpoint, org, params), arrival)
                if retry_after is not None:
                    early = self.limiter.reply(retry_after)
                    self.rate_limited[endpoint] = self.rate_limited.get(endpoint, 0) + 1
        if entry is not None:
            entry["latency_ms"] = round(delay_ms, 3)
        call = model.Call(endpoint, params, query, parsed, org)
        job = (conn, call, entry, early, fault, arrival)
        if delay_ms > 0:
            self.loop.call_later(delay_ms / 1000, self.run, job)
        else:
            self.run(job)

    def run(self, job):
        conn, call, entry, early, fault, arrival = job
        if early is not None:
            return self.finish(job, early)
        if fault is not None and not fault.perform:
            return self.finish(job, fault.reply(None))
        try:
            result = self.world.dispatch(call)
        except model.ApiError as exc:
            result = exc.reply()
        except Exception as exc:  # a simulator bug must answer, not hang the client
            traceback.print_exc()
            result = model.error_reply(500, f"flysim internal error: {exc!r}")
        if isinstance(result, asyncio.Future):
            result.add_done_callback(
                lambda done: self.finish(job, fault.reply(done.result()) if fault else done.result()))
        else:
            self.finish(job, fault.reply(result) if fault else result)

    def finish(self, job, reply):
        conn, call, entry, early, fault, arrival = job
        if reply is model.RESET:
            outcome = "reset"
            conn.reset()
        elif reply is policy.HANG:
            outcome = "hang"
            conn.hang(fault.hang_seconds(self.config["hang_cap_s"]))
        else:
            outcome = reply.status
            conn.send(reply, f"flysim{entry['seq'] if entry else self.seq:010d}-sjc")
        key = (call.endpoint, outcome)
        self.counts[key] = self.counts.get(key, 0) + 1
        if fault is not None:
            self.faults_applied[fault.kind] = self.faults_applied.get(fault.kind, 0) + 1
        if entry is not None:
            entry["status"] = outcome if isinstance(outcome, int) else None
            entry["fault"] = fault.kind if fault is not None else None
            entry["duration_ms"] = round((time.monotonic() - arrival) * 1000, 3)

    # ----------------------------------------------------------------------------- control API

    def control(self, method, rest, query_string, body):
        query = parse_qs(query_string)
        try:
            data = json.loads(body) if body else {}
        except ValueError:
            return model.error_reply(400, "control request body is not valid JSON")
        try:
            return self.control_route(method, rest, query, data)
        except policy.ConfigError as exc:
            return model.error_reply(400, f"invalid config: {exc}")
        except model.ApiError as exc:
            return exc.reply()

    def control_route(self, method, rest, query, data):
        world = self.world
        head = rest[0]
        if method == "GET" and rest == ["state"]:
            state = world.state_json()
            state["orgs"] = sorted(set(self.orgs_by_token.values()) | set(self.config["foreign_apps"].values()))
            state["faults"] = [rule.to_json() for rule in self.faults.rules]
            return model.json_reply(200, state)
        if method == "GET" and rest == ["requests"]:
            return model.json_reply(200, self.requests_json(query))
        if method == "GET" and rest == ["stats"]:
            return model.json_reply(200, self.stats_json())
        if rest == ["config"] and method in ("GET", "POST"):
            config = self.reconfigure(data) if method == "POST" else self.config
            return model.json_reply(200, self.public_config(config))
        if method == "POST" and rest == ["reset"]:
            self.fresh_state(policy.normalize_config(data) if data else self.startup_config)
            return model.json_reply(200, {"ok": True, "config": self.public_config(self.config)})
        if method == "POST" and rest == ["foreign_apps"]:
            return model.json_reply(200, self.take_foreign_names(data))
        if method == "POST" and rest == ["seeded_apps"]:
            return model.json_reply(200, world.seed_app(data))
        if head == "apps" and len(rest) == 3 and rest[2] == "health" and method == "POST":
            return model.json_reply(200, self.set_app_checks(self.control_app(rest[1]), data.get("checks")))
        if method == "GET" and rest == ["reachable"]:
            return model.json_reply(200, world.reachable(self.control_app(query.get("from", [""])[-1]),
                                                         self.control_app(query.get("to", [""])[-1])))
        if head == "apps" and len(rest) == 2 and method == "DELETE":
            world.delete_app_now(self.control_app(rest[1]))
            return model.json_reply(200, {"ok": True})
        if head == "machines" and len(rest) == 4 and rest[3] == "state" and method == "POST":
            machine = world.find_machine(self.control_app(rest[1]), rest[2], include_destroyed=False)
            state = data.get("state")
            if state not in MACHINE_STATES:
                raise model.ApiError(400, f"state must be one of {', '.join(MACHINE_STATES)}")
            world.force_state(machine, state)
            return model.json_reply(200, world.machine_json(machine))
        if head == "secrets" and len(rest) == 2 and method == "GET":
            app = self.control_app(rest[1])
            reveal = query.get("reveal", ["0"])[-1] in ("1", "true")
            secrets = {n: (app.secret_values[n] if reveal else meta["digest"]) for n, meta in app.secrets.items()}
            return model.json_reply(200, {"app": app.name, "version": app.secrets_version,
                                          "revealed": reveal, "secrets": secrets})
        return model.error_reply(404, f"no control endpoint {method} {CONTROL_PREFIX}{'/'.join(rest)}")

    def control_app(self, name):
        app = self.world.apps.get(unquote(name))
        if app is None:
            raise model.ApiError(404, f'Could not find App "{unquote(name)}"')
        return app

    def set_app_checks(self, app, status):
        if status not in model.CHECK_STATUSES:
            raise model.ApiError(400, f"checks must be one of {', '.join(model.CHECK_STATUSES)}")
        app.check_status = status
        changed = model.rfc3339(millis=True)
        for machine in app.machines.values():
            machine.checks_changed_at = changed
        return {"app": app.name, "checks": status}

    def take_foreign_names(self, data):
        names = data.get("names")
        org = data.get("org", "foreign-org")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or not isinstance(org, str):
            raise model.ApiError(400, 'body must be {"names": [app names], "org": "org-slug"}')
        already = [name for name in names if self.world.name_taken(name)]
        taken = [name for name in names if name not in already]
        self.reconfigure({"foreign_apps": {name: org for name in taken}})
        return {"taken": taken, "already_taken": already, "org": org}

    def public_config(self, config):
        out = dict(config)
        out["tokens"] = {f"<token {index} redacted>": org for index, org in enumerate(config["tokens"].values(), 1)}
        return out

    def requests_json(self, query):
        try:
            since = int(query.get("since", ["0"])[-1])
            limit = int(query.get("limit", ["0"])[-1])
        except ValueError:
            raise model.ApiError(400, "since and limit must be integers") from None
        endpoint = query.get("endpoint", [None])[-1]
        picked = []
        for entry in reversed(self.log):
            if entry["seq"] <= since:
                break
            if endpoint is None or entry["endpoint"] == endpoint:
                picked.append(entry)
        picked.reverse()
        if limit > 0:
            picked = picked[:limit]
        return {"requests": picked, "last_seq": self.seq, "log_cap": self.log.maxlen,
                "oldest_seq": self.log[0]["seq"] if self.log else None}

    def stats_json(self):
        by_endpoint = {}
        by_status = {}
        for (endpoint, outcome), count in self.counts.items():
            item = by_endpoint.setdefault(endpoint, {"count": 0, "by_status": {}})
            item["count"] += count
            item["by_status"][str(outcome)] = item["by_status"].get(str(outcome), 0) + count
            by_status[str(outcome)] = by_status.get(str(outcome), 0) + count
        for endpoint, count in self.rate_limited.items():
            by_endpoint[endpoint]["rate_limited"] = count
        return {"total": sum(self.counts.values()), "requests_received": self.seq, "by_endpoint": by_endpoint,
                "by_status": by_status, "rate_limited": sum(self.rate_limited.values()),
                "faults": dict(self.faults_applied), "open_connections": len(self.connections),
                "uptime_s": round(time.monotonic() - self.started, 3)}


# --------------------------------------------------------------------------------- entry points

class SimServer:
    """A simulator running on its own loop thread, for tests in the same process."""

    def __init__(self, config):
        self.config = policy.normalize_config(config or {})
        self.loop = None
        self.thread = None
        self.sim = None
        self.port = None
        self.url = None

    def start(self, port=0):
        ready = threading.Event()
        failure = []

        def run():
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            try:
                self.sim = Simulator(self.config, self.loop)
                server = self.loop.run_until_complete(listen(self.sim, port))
            except Exception as exc:  # reported to the starting thread
                failure.append(exc)
                ready.set()
                return
            self.port = server.sockets[0].getsockname()[1]
            self.url = f"http://127.0.0.1:{self.port}"
            ready.set()
            try:
                self.loop.run_forever()
            finally:
                server.close()
                self.sim.close_connections()
                self.sim.world.close()
                self.loop.run_until_complete(asyncio.sleep(0))
                self.loop.close()

        self.thread = threading.Thread(target=run, name="flysim", daemon=True)
        self.thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    def shutdown(self):
        if self.thread is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)


async def listen(sim, port):
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: HttpConnection(sim), "127.0.0.1", port, backlog=1024)


def start_server(config=None, port=0):
    """Start a simulator on a daemon thread; returns (server, port). Stop it with shutdown(server)."""
    server = SimServer(config).start(port)
    return server, server.port


def shutdown(server):
    server.shutdown()


def parse_tokens(text):
    tokens = {}
    for item in text.split(","):
        token, sep, org = item.strip().partition("=")
        if not sep or not token or not org:
            raise argparse.ArgumentTypeError(f"expected TOKEN=ORG, got {item!r}")
        tokens[token] = org
    return tokens


def build_arg_parser():
    parser = argparse.ArgumentParser(description="Fly Machines API simulator (loopback only).")
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: pick a free one)")
    parser.add_argument("--seed", type=int, help="seed for ids, jitter and fault decisions (default 0)")
    parser.add_argument("--config", help="JSON config file (see README.md)")
    parser.add_argument("--tokens", type=parse_tokens,
                        help="TOKEN=ORG[,TOKEN=ORG...]; replaces the default test-token/other-token mapping")
    parser.add_argument("--boot-delay-ms", type=int, help="time from create/start to state started")
    parser.add_argument("--rate-limits", choices=("off", "fly", "custom"), help="rate-limit mode")
    parser.add_argument("--foreign-app", action="append", default=[], metavar="NAME",
                        help="pre-take NAME for org foreign-org (repeatable)")
    parser.add_argument("--request-log-cap", type=int, help="request-log entries kept (default 200000)")
    return parser


def config_from_args(args):
    config = {}
    if args.config:
        with open(args.config, encoding="utf-8") as handle:
            config = json.load(handle)
    if args.seed is not None:
        config["seed"] = args.seed
    if args.tokens:
        config["tokens"] = args.tokens
    if args.boot_delay_ms is not None:
        config["boot_delay_ms"] = args.boot_delay_ms
    if args.rate_limits:
        config.setdefault("rate_limits", {})["mode"] = args.rate_limits
    if args.foreign_app:
        foreign = config.get("foreign_apps") or {}
        if isinstance(foreign, list):
            foreign = {name: "foreign-org" for name in foreign}
        foreign.update((name, "foreign-org") for name in args.foreign_app)
        config["foreign_apps"] = foreign
    if args.request_log_cap is not None:
        config["request_log_cap"] = args.request_log_cap
    return policy.normalize_config(config)


async def serve_forever(config, port):
    loop = asyncio.get_running_loop()
    sim = Simulator(config, loop)
    server = await listen(sim, port)
    print(f"FLYSIM_LISTENING port={server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    server.close()
    sim.close_connections()
    sim.world.close()


def main(argv=None):
    args = build_arg_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except (OSError, ValueError) as exc:
        print(f"flysim: {exc}", file=sys.stderr)
        return 2
    asyncio.run(serve_forever(config, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())

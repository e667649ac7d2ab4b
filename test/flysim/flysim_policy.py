"""Configuration, latency, rate limits and fault injection for the Fly API simulator.

All randomness is seeded and drawn in request-arrival order, so a given seed and request sequence
always yields the same jitter and the same fault decisions.
"""
import copy
import json
import math
import random
import re

from flysim_model import RESET, Reply, StreamedReply, json_reply

# The Fly API endpoints the simulator serves; these names are used in config, stats and the log.
ENDPOINTS = (
    "create_app", "list_apps", "get_app", "delete_app",
    "list_machines", "create_machine", "get_machine", "update_machine", "delete_machine",
    "stop_machine", "start_machine", "wait_machine",
    "list_secrets", "set_secrets", "list_org_machines",
    "list_ip_assignments", "assign_ip", "delete_ip_assignment",
)
# The simulated user app's own /health endpoint; not part of Fly's API, so "*" never matches it.
APP_HEALTH = "app_health"
KNOWN_ENDPOINTS = frozenset(ENDPOINTS) | {APP_HEALTH}

# What a rate limit is counted against: Fly scopes limits per action and per app or machine.
# Org-level calls (no app in the path) are counted per org; delete_app too (100/min per org).
ORG_SCOPED = frozenset({"create_app", "list_apps", "delete_app", "list_org_machines"})
APP_SCOPED = frozenset({"get_app", "list_machines", "create_machine", "list_secrets", "set_secrets",
                        "list_ip_assignments", "assign_ip", "delete_ip_assignment"})

# Fly's documented limits (docs/fly-api.md): 1 req/s with burst 3 per action; get machine 5/s
# burst 10; app deletions 100 per minute.
FLY_RATE_LIMITS = {endpoint: {"rate": 1.0, "burst": 3} for endpoint in ENDPOINTS}
FLY_RATE_LIMITS["get_machine"] = {"rate": 5.0, "burst": 10}
FLY_RATE_LIMITS["delete_app"] = {"rate": 100 / 60, "burst": 100}

DEFAULT_CONFIG = {
    "seed": 0,
    "tokens": {"test-token": "personal", "other-token": "other-org"},
    "foreign_apps": {},             # app name -> org slug; these names are taken from the start
    "boot_delay_ms": 200,           # created -> starting (half-way) -> started
    "stop_delay_ms": 50,            # stopping -> stopped
    "destroy_delay_ms": 0,          # destroying -> destroyed (0: at once)
    "name_reuse_delay_ms": 0,       # how long a deleted app's name stays taken
    "checks_pass_after_ms": 0,      # checks stay "warning" this long after a machine starts
    # Eventual consistency after create (README "Consistency after create"): for this long after its create,
    # calls under a new app answer 404 or 401 (app_invisible_status: 404, 401, or "alternate"), and a new
    # machine answers 404 to get/wait/start and is missing from its app's list.
    "app_visible_after_ms": 0,
    "app_invisible_status": 404,
    "machine_visible_after_ms": 0,
    # Capacity (README "Capacity"): a create in one of these regions answers 412 with status
    # "insufficient_capacity" and creates nothing.
    "no_capacity_regions": [],
    # Ambiguous creates (README "Ambiguous creates"): every create answers create_lands_late_status (408, 502,
    # 503 or 504) and its machine appears this long afterwards.
    "create_lands_late_ms": 0,
    "create_lands_late_status": 504,
    # Asynchronous app deletion (README "Deletion"): for this long after DELETE answers 202 the app is still
    # there (GET 200, create 422 name_taken, calls under it answer as before); then it goes with its machines.
    "app_delete_lag_ms": 0,
    "synthetic_check": True,        # give machines without configured checks one http check
    "unhealthy_images": [],         # machines running one of these images fail their checks (a bad deploy)
    # Reachable apps (README "IP assignments"): the app's own health endpoint answers only for an app with a public
    # IP whose started machine has services; otherwise the connection is reset, as for a name that does not resolve.
    "health_needs_service_and_ip": False,
    "default_region": "sjc",
    "latency": {},                  # endpoint or "*" -> {"fixed_ms": n, "jitter_ms": n}
    "rate_limits": {"mode": "fly", "retry_after": True, "actions": {}},
    "faults": [],
    "request_log_cap": 200000,
    "destroyed_retention": 100,     # destroyed machines kept per app (GET still answers them)
    "hang_cap_s": 300,
}

FAULT_KINDS = ("status", "status_after", "reset", "hang", "malformed_json", "html_500", "rate_limit", "latency",
               "huge_body", "deep_json", "invalid_utf8", "wrong_types", "redirect", "slow_body", "content_type")
_FAULT_FIELDS = {"endpoint", "app", "path_regex", "method", "nth", "probability", "always", "times", "kind",
                 "status", "body", "content_type", "headers", "retry_after", "delay_ms", "jitter_ms",
                 "hang_s", "perform", "bytes", "chunked", "depth", "mutation", "location", "drip_bytes", "drip_ms"}
# Kinds that disguise or slow down the real answer, so the real action runs first unless told otherwise.
_PERFORMS_BY_DEFAULT = ("status_after", "malformed_json", "invalid_utf8", "wrong_types", "slow_body", "content_type")

# Hostile answers (kinds huge_body ... content_type): what a broken proxy or a malicious endpoint could send.
HUGE_BODY_BYTES = 50 * 1024 * 1024
DEEP_JSON_DEPTH = 100000
MUTATIONS = ("string_for_object", "array_for_string", "null_ids", "number_ids")
INVALID_UTF8 = b"\xff\xfe\xc3\x28"   # bytes no UTF-8 text contains: 0xff, 0xfe, a lead byte without its tail
_HUGE_PIECE_BYTES = 64 * 1024

DEFAULT_ERROR_TEXT = {
    400: "bad request", 401: "Authenticate: token validation error", 403: "unauthorized", 404: "not found",
    408: "deadline_exceeded: request timed out", 409: "conflict", 412: "failed_precondition",
    422: "Validation failed", 429: "rate limit exceeded", 500: "internal server error",
    502: "bad gateway", 503: "service unavailable", 504: "gateway timeout",
}

HTML_500 = (b"<!DOCTYPE html>\n<html><head><title>500 Internal Server Error</title></head>\n"
            b"<body><h1>Internal Server Error</h1><p>Something went wrong.</p></body></html>\n")

# Sentinels for faults that do not answer at all (RESET comes from the model: an unreachable app answers so too).
HANG = object()


class ConfigError(ValueError):
    pass


def _require(condition, message):
    if not condition:
        raise ConfigError(message)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_endpoint(name, where, allow_star=True):
    _require(name in KNOWN_ENDPOINTS or (allow_star and name == "*"),
             f"{where}: unknown endpoint {name!r} (known: {', '.join(sorted(KNOWN_ENDPOINTS))}, *)")


def normalize_config(raw):
    """Fill defaults and check a configuration dict; raise ConfigError naming the bad key."""
    _require(isinstance(raw, dict), "config must be a JSON object")
    unknown = sorted(set(raw) - set(DEFAULT_CONFIG))
    _require(not unknown, f"unknown config key(s): {', '.join(unknown)}")
    config = copy.deepcopy(DEFAULT_CONFIG)
    config.update(copy.deepcopy(raw))
    _require(isinstance(config["seed"], int), "seed must be an integer")
    for key in ("boot_delay_ms", "stop_delay_ms", "destroy_delay_ms", "name_reuse_delay_ms",
                "checks_pass_after_ms", "hang_cap_s", "app_visible_after_ms", "machine_visible_after_ms",
                "create_lands_late_ms", "app_delete_lag_ms"):
        _require(_is_number(config[key]) and config[key] >= 0, f"{key} must be a number >= 0")
    for key in ("request_log_cap", "destroyed_retention"):
        _require(isinstance(config[key], int) and config[key] >= 0, f"{key} must be an integer >= 0")
    _require(config["app_invisible_status"] in (404, 401, "alternate"),
             "app_invisible_status must be 404, 401 or \"alternate\"")
    _require(isinstance(config["default_region"], str), "default_region must be a string")
    _require(isinstance(config["no_capacity_regions"], list)
             and all(isinstance(r, str) for r in config["no_capacity_regions"]),
             "no_capacity_regions must be a list of region codes")
    _require(config["create_lands_late_status"] in (408, 502, 503, 504),
             "create_lands_late_status must be 408, 502, 503 or 504")
    _require(isinstance(config["synthetic_check"], bool), "synthetic_check must be a boolean")
    _require(isinstance(config["health_needs_service_and_ip"], bool), "health_needs_service_and_ip must be a boolean")
    _require(isinstance(config["unhealthy_images"], list) and all(isinstance(i, str) for i in config["unhealthy_images"]),
             "unhealthy_images must be a list of image strings")
    tokens = config["tokens"]
    _require(isinstance(tokens, dict) and all(isinstance(k, str) and k and isinstance(v, str) and v
                                              for k, v in tokens.items()),
             "tokens must map token strings to org slugs")
    foreign = config["foreign_apps"]
    if isinstance(foreign, list):
        foreign = {name: "foreign-org" for name in foreign}
    _require(isinstance(foreign, dict) and all(isinstance(v, str) for v in foreign.values()),
             "foreign_apps must be a list of names or a map name -> org slug")
    config["foreign_apps"] = foreign
    _require(isinstance(config["latency"], dict), "latency must be an object")
    for endpoint, spec in config["latency"].items():
        _check_endpoint(endpoint, "latency")
        _require(isinstance(spec, dict) and set(spec) <= {"fixed_ms", "jitter_ms"}
                 and all(_is_number(v) and v >= 0 for v in spec.values()),
                 f"latency[{endpoint!r}] must be {{\"fixed_ms\": n, \"jitter_ms\": n}}")
    limits = config["rate_limits"]
    _require(isinstance(limits, dict) and set(limits) <= {"mode", "retry_after", "actions"},
             "rate_limits must be {mode, retry_after, actions}")
    limits.setdefault("mode", "fly")
    limits.setdefault("retry_after", True)
    limits.setdefault("actions", {})
    _require(limits["mode"] in ("off", "fly", "custom"), "rate_limits.mode must be off, fly or custom")
    _require(isinstance(limits["retry_after"], bool), "rate_limits.retry_after must be a boolean")
    for endpoint, spec in limits["actions"].items():
        _check_endpoint(endpoint, "rate_limits.actions", allow_star=False)
        _require(spec is None or (isinstance(spec, dict) and set(spec) == {"rate", "burst"}
                                  and _is_number(spec["rate"]) and spec["rate"] > 0
                                  and _is_number(spec["burst"]) and spec["burst"] >= 1),
                 f"rate_limits.actions[{endpoint!r}] must be null or {{\"rate\": r > 0, \"burst\": b >= 1}}")
    _require(isinstance(config["faults"], list), "faults must be a list")
    for index, rule in enumerate(config["faults"]):
        FaultRule(rule, index)  # validates
    return config


def merge_config(current, patch):
    """Apply a partial run-time update: latency and rate_limits.actions merge per key (null
    removes), foreign_apps adds names, faults replaces the whole list, the rest replaces."""
    _require(isinstance(patch, dict), "config must be a JSON object")
    _require("seed" not in patch, "seed can only be changed by POST /__flysim/reset")
    merged = copy.deepcopy(current)
    for key, value in patch.items():
        if key == "latency" and isinstance(value, dict):
            for endpoint, spec in value.items():
                if spec is None:
                    merged["latency"].pop(endpoint, None)
                else:
                    merged["latency"][endpoint] = spec
        elif key == "rate_limits" and isinstance(value, dict):
            for sub, sub_value in value.items():
                if sub == "actions" and isinstance(sub_value, dict):
                    merged["rate_limits"]["actions"].update(sub_value)
                else:
                    merged["rate_limits"][sub] = sub_value
        elif key == "foreign_apps":
            names = {n: "foreign-org" for n in value} if isinstance(value, list) else value
            _require(isinstance(names, dict), "foreign_apps must be a list of names or a map name -> org slug")
            merged["foreign_apps"].update(names)
        else:
            merged[key] = value
    return normalize_config(merged)


class Latency:
    """Per-endpoint fixed delay plus seeded uniform jitter; "*" covers the Fly endpoints."""

    def __init__(self, seed):
        self.rng = random.Random(f"{seed}/latency")
        self.table = {}

    def configure(self, table):
        self.table = table

    def draw_ms(self, endpoint):
        spec = self.table.get(endpoint)
        if spec is None and endpoint != APP_HEALTH:
            spec = self.table.get("*")
        if not spec:
            return 0.0
        jitter = spec.get("jitter_ms", 0)
        return spec.get("fixed_ms", 0) + (self.rng.uniform(0, jitter) if jitter > 0 else 0.0)


def rate_limit_scope(endpoint, org, params):
    if endpoint in ORG_SCOPED:
        return org
    if endpoint in APP_SCOPED:
        return params["app"]
    return params.get("machine")


class RateLimiter:
    """Token buckets per (action, scope), refilled from time.monotonic()."""

    def __init__(self):
        self.limits = {}
        self.retry_after = True
        self.buckets = {}

    def configure(self, settings):
        mode = settings["mode"]
        limits = {} if mode == "off" else dict(FLY_RATE_LIMITS)
        if mode == "custom":
            for endpoint, spec in settings["actions"].items():
                if spec is None:
                    limits.pop(endpoint, None)
                else:
                    limits[endpoint] = spec
        self.limits = {e: (float(s["rate"]), float(s["burst"])) for e, s in limits.items()}
        self.retry_after = settings["retry_after"]
        self.buckets = {}

    def check(self, endpoint, scope, now):
        """None if allowed, else the whole seconds until the next request would be allowed."""
        limit = self.limits.get(endpoint)
        if limit is None:
            return None
        rate, burst = limit
        key = (endpoint, scope)
        bucket = self.buckets.get(key)
        if bucket is None:
            self.buckets[key] = [burst - 1.0, now]
            return None
        tokens = min(burst, bucket[0] + (now - bucket[1]) * rate)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return None
        bucket[0] = tokens
        return max(1, math.ceil((1.0 - tokens) / rate))

    def reply(self, retry_after):
        headers = (("Retry-After", str(retry_after)),) if self.retry_after else ()
        return json_reply(429, {"error": "rate limit exceeded"}, headers)


class FaultRule:
    """One fault-injection rule: a matcher, a trigger (nth / probability / always) and a kind."""

    def __init__(self, spec, index):
        where = f"faults[{index}]"
        _require(isinstance(spec, dict), f"{where} must be an object")
        unknown = sorted(set(spec) - _FAULT_FIELDS)
        _require(not unknown, f"{where}: unknown field(s) {', '.join(unknown)}")
        self.spec = spec
        self.kind = spec.get("kind")
        _require(self.kind in FAULT_KINDS, f"{where}.kind must be one of {', '.join(FAULT_KINDS)}")
        endpoints = spec.get("endpoint", "*")
        endpoints = [endpoints] if isinstance(endpoints, str) else endpoints
        _require(isinstance(endpoints, list) and endpoints, f"{where}.endpoint must be a name or a list of names")
        for name in endpoints:
            _check_endpoint(name, where)
        self.endpoints = None if "*" in endpoints else frozenset(endpoints)
        self.app = spec.get("app")
        self.method = spec.get("method")
        try:
            self.path_re = re.compile(spec["path_regex"]) if spec.get("path_regex") else None
        except re.error as exc:
            raise ConfigError(f"{where}.path_regex: {exc}") from None
        triggers = [k for k in ("nth", "probability", "always") if k in spec]
        _require(len(triggers) <= 1, f"{where}: use only one of nth, probability, always")
        nth = spec.get("nth")
        if isinstance(nth, int):
            nth = [nth]
        _require(nth is None or (isinstance(nth, list) and all(isinstance(n, int) and n >= 1 for n in nth)),
                 f"{where}.nth must be a 1-based index or a list of them")
        self.nth = frozenset(nth) if nth else None
        self.probability = spec.get("probability")
        _require(self.probability is None or (_is_number(self.probability) and 0 <= self.probability <= 1),
                 f"{where}.probability must be between 0 and 1")
        self.times = spec.get("times")
        _require(self.times is None or (isinstance(self.times, int) and self.times >= 0),
                 f"{where}.times must be an integer >= 0")
        self.status = spec.get("status")
        if self.kind in ("status", "status_after") or self.status is not None:
            _require(isinstance(self.status, int) and not isinstance(self.status, bool) and 100 <= self.status <= 599,
                     f"{where}.status must be an HTTP status code for kind {self.kind}")
        self.check_hostile_fields(spec, where)
        self.retry_after = spec.get("retry_after")
        _require(self.retry_after is None or (isinstance(self.retry_after, int) and self.retry_after >= 0),
                 f"{where}.retry_after must be an integer number of seconds")
        for key in ("delay_ms", "jitter_ms", "hang_s"):
            _require(spec.get(key) is None or (_is_number(spec[key]) and spec[key] >= 0),
                     f"{where}.{key} must be a number >= 0")
        headers = spec.get("headers") or {}
        _require(isinstance(headers, dict), f"{where}.headers must be an object")
        self.headers = tuple((str(k), str(v)) for k, v in headers.items())
        self.perform = spec.get("perform", self.kind in _PERFORMS_BY_DEFAULT)
        _require(isinstance(self.perform, bool), f"{where}.perform must be a boolean")
        self.calls = 0   # requests this rule matched
        self.fired = 0   # times it was applied

    def check_hostile_fields(self, spec, where):
        kind = self.kind
        for key, minimum in (("bytes", 2), ("depth", 1), ("drip_bytes", 1)):
            value = spec.get(key)
            _require(value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= minimum),
                     f"{where}.{key} must be an integer >= {minimum}")
        _require(spec.get("drip_ms") is None or (_is_number(spec["drip_ms"]) and spec["drip_ms"] >= 0),
                 f"{where}.drip_ms must be a number >= 0")
        _require(isinstance(spec.get("chunked", False), bool), f"{where}.chunked must be a boolean")
        if kind == "wrong_types":
            _require(spec.get("mutation") in MUTATIONS, f"{where}.mutation must be one of {', '.join(MUTATIONS)}")
        if kind == "redirect":
            _require(isinstance(spec.get("location"), str) and spec["location"] != "",
                     f"{where}.location must be the URL to redirect to")
            _require(self.status is None or 300 <= self.status <= 399, f"{where}.status must be a 3xx for a redirect")
        if kind == "content_type":
            _require(isinstance(spec.get("content_type"), str), f"{where}.content_type must be a string")

    def matches(self, endpoint, app, method, path):
        if self.endpoints is None:
            if endpoint == APP_HEALTH:
                return False
        elif endpoint not in self.endpoints:
            return False
        if self.app is not None and app != self.app:
            return False
        if self.method is not None and method != self.method.upper():
            return False
        return self.path_re is None or self.path_re.search(path) is not None

    def triggers(self, rng):
        """Count this matching request and say whether the fault would apply to it."""
        self.calls += 1
        if self.nth is not None:
            hit = self.calls in self.nth
        elif self.probability is not None:
            hit = rng.random() < self.probability
        else:
            hit = True
        return hit and (self.times is None or self.fired < self.times)

    def delay_ms(self, rng):
        jitter = self.spec.get("jitter_ms") or 0
        return (self.spec.get("delay_ms") or 0) + (rng.uniform(0, jitter) if jitter else 0.0)

    def reply(self, performed):
        """The answer this fault gives; `performed` is the real answer when the action ran."""
        kind = self.kind
        if kind == "reset":
            return RESET
        if kind == "hang":
            return HANG
        if kind == "html_500":
            return Reply(500, HTML_500, "text/html; charset=utf-8", self.headers)
        if kind == "malformed_json":
            body = performed.body if performed is not None and len(performed.body) > 2 else b'{"id":"trunc'
            return Reply(200, body[:len(body) // 2], "application/json", self.headers)
        if kind == "rate_limit":
            headers = self.headers
            if self.retry_after is not None:
                headers = headers + (("Retry-After", str(self.retry_after)),)
            return json_reply(429, {"error": "rate limit exceeded"}, headers)
        if kind in ("huge_body", "deep_json", "invalid_utf8", "wrong_types", "redirect", "slow_body", "content_type"):
            return self.hostile_reply(performed)
        body = self.spec.get("body")
        if body is None:
            return json_reply(self.status, {"error": DEFAULT_ERROR_TEXT.get(self.status, "flysim injected fault")},
                              self.headers)
        if isinstance(body, str):
            return Reply(self.status, body.encode(), self.spec.get("content_type", "text/plain; charset=utf-8"),
                         self.headers)
        return json_reply(self.status, body, self.headers)

    def hostile_reply(self, performed):
        spec = self.spec
        kind = self.kind
        if kind == "huge_body":
            size = spec.get("bytes", HUGE_BODY_BYTES)
            length = None if spec.get("chunked") else size
            return StreamedReply(self.status or 200, _huge_json(size), "application/json", self.headers, length)
        if kind == "deep_json":
            depth = spec.get("depth", DEEP_JSON_DEPTH)
            return Reply(self.status or 200, b"[" * depth + b"]" * depth, "application/json", self.headers)
        if kind == "redirect":
            location = spec["location"]
            return Reply(self.status or 302, f'<a href="{location}">Found</a>.\n'.encode(), "text/html; charset=utf-8",
                         self.headers + (("Location", location),))
        # The rest disguise the real answer, or a stand-in when the action did not run.
        if performed is None:
            performed = json_reply(200, {"id": "flysim-stand-in", "state": "started"})
        status = self.status or performed.status
        headers = tuple(performed.headers) + self.headers
        if kind == "invalid_utf8":
            return Reply(status, _with_invalid_utf8(performed.body), "application/json", headers)
        if kind == "wrong_types":
            try:
                answer = json.loads(performed.body) if performed.body else None
            except ValueError:
                answer = None
            if answer is None:
                return Reply(status, performed.body, performed.content_type, headers)
            return Reply(status, json.dumps(mutate(answer, spec["mutation"]), separators=(",", ":")).encode(),
                         "application/json", headers)
        if kind == "content_type":
            return Reply(status, performed.body, spec["content_type"], headers)
        # slow_body: the head at once, then drip_bytes every drip_ms until the client gives up or all is sent.
        step = spec.get("drip_bytes", 1)
        body = performed.body
        pieces = (body[i:i + step] for i in range(0, len(body), step))
        return StreamedReply(status, pieces, performed.content_type, headers, len(body),
                             spec.get("drip_ms", 500) / 1000)

    def hang_seconds(self, hang_cap_s):
        return self.spec.get("hang_s") or hang_cap_s

    def to_json(self):
        return dict(self.spec, calls=self.calls, fired=self.fired)


def _huge_json(size):
    """A valid JSON object of exactly `size` bytes (at least its frame), in pieces."""
    head, tail = b'{"id":"flysim-huge","padding":"', b'"}'
    yield head
    left = max(0, size - len(head) - len(tail))
    while left > 0:
        piece = min(left, _HUGE_PIECE_BYTES)
        yield b"x" * piece
        left -= piece
    yield tail


def _with_invalid_utf8(body):
    """The answer with a string of invalid UTF-8 added as its first member or element."""
    text = bytes(body).strip()
    if text.startswith(b"{"):
        rest = text[1:].lstrip()
        return b'{"flysim_note":"' + INVALID_UTF8 + (b'"}' if rest == b"}" else b'",' + rest)
    if text.startswith(b"["):
        rest = text[1:].lstrip()
        return b'["' + INVALID_UTF8 + (b'"]' if rest == b"]" else b'",' + rest)
    return b'{"error":"' + INVALID_UTF8 + b'"}'


def mutate(answer, mutation):
    """The answer with its JSON types confused. string_for_object turns the objects one level below the top into
    their JSON text; array_for_string wraps every string value in an array; null_ids and number_ids replace every
    "id" member's value."""
    if mutation == "string_for_object":
        def wrap(value):
            return json.dumps(value, separators=(",", ":")) if isinstance(value, dict) else value
        if isinstance(answer, dict):
            return {key: wrap(value) for key, value in answer.items()}
        if isinstance(answer, list):
            return [wrap(value) for value in answer]
        return answer

    def walk(value, key=None):
        if isinstance(value, dict):
            return {k: walk(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        if key == "id" and mutation in ("null_ids", "number_ids"):
            return None if mutation == "null_ids" else 1234567890123
        if isinstance(value, str) and mutation == "array_for_string":
            return [value]
        return value
    return walk(answer)


class FaultInjector:
    def __init__(self, seed):
        self.rng = random.Random(f"{seed}/faults")
        self.rules = []

    def configure(self, specs):
        self.rules = [FaultRule(spec, index) for index, spec in enumerate(specs)]

    def decide(self, endpoint, app, method, path):
        """(first non-latency rule that fires or None, extra latency from latency rules)."""
        chosen = None
        extra_ms = 0.0
        for rule in self.rules:
            if not rule.matches(endpoint, app, method, path) or not rule.triggers(self.rng):
                continue
            if rule.kind == "latency":
                rule.fired += 1
                extra_ms += rule.delay_ms(self.rng)
            elif chosen is None:
                rule.fired += 1
                chosen = rule
        return chosen, extra_ms

"""Fly Machines API semantics: apps, machines, secrets and their state, one handler per endpoint.

Everything here runs on the simulator's single asyncio loop thread, so no locks are needed.
Identifiers come from a seeded RNG that is only drawn from while handling requests (never from
timers), so the same seed and request sequence always yield the same ids.
"""
import collections
import hashlib
import json
import random
import re
import time

import flysim_schemas as schemas

_encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class Reply:
    """An HTTP answer: status, body bytes, content type and extra headers."""

    __slots__ = ("status", "body", "content_type", "headers")

    def __init__(self, status, body=b"", content_type="application/json", headers=()):
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers


class StreamedReply:
    """An answer whose body goes out piece by piece: `chunks` yields bytes, `length` is the Content-Length
    (None: chunked transfer encoding), `interval_s` the pause after each piece."""

    __slots__ = ("status", "chunks", "content_type", "headers", "length", "interval_s")

    def __init__(self, status, chunks, content_type, headers=(), length=None, interval_s=0.0):
        self.status = status
        self.chunks = chunks
        self.content_type = content_type
        self.headers = headers
        self.length = length
        self.interval_s = interval_s


# No answer at all: the connection is reset (a fault, or an app nobody can reach).
RESET = object()


def json_reply(status, obj, headers=()):
    return Reply(status, _encode_json(obj).encode(), "application/json", headers)


def error_reply(http_status, message, **extra):
    """Fly's ErrorResponse shape; `extra` adds fields such as status="name_taken"."""
    return json_reply(http_status, dict(error=message, **extra))


# The text of a create refused for lack of capacity, as flyd words it.
NO_CAPACITY_TEXT = ("insufficient resources available to fulfill request: could not reserve resource for machine: "
                    "insufficient memory available to fulfill request")
# What an ambiguous create (create_lands_late_ms) answers.
LATE_CREATE_TEXT = {408: "deadline_exceeded: request timed out", 502: "bad gateway", 503: "service unavailable",
                    504: "gateway timeout"}


class ApiError(Exception):
    """Raised by handlers; becomes a Fly-style `{"error": ...}` answer."""

    def __init__(self, http_status, message, **extra):
        super().__init__(message)
        self.http_status = http_status
        self.extra = extra      # more body fields, e.g. status="name_taken"

    def reply(self):
        return error_reply(self.http_status, str(self), **self.extra)


_second_cache = [None, ""]  # strftime is slow next to everything else on the request path


def rfc3339(epoch=None, millis=False):
    epoch = time.time() if epoch is None else epoch
    second = int(epoch)
    if second != _second_cache[0]:
        _second_cache[0], _second_cache[1] = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    base = _second_cache[1]
    return f"{base}.{int(epoch * 1000) % 1000:03d}Z" if millis else base + "Z"


def sha256_hex(text):
    return hashlib.sha256(text.encode()).hexdigest()


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_ADJECTIVES = ("red", "wispy", "bold", "calm", "dark", "late", "proud", "quiet", "snowy", "young")
_NOUNS = ("sun", "river", "frost", "glade", "hill", "moon", "pine", "sea", "star", "wind")

APP_NAME_RE = re.compile(r"^[a-z][a-z0-9-]*$")
SECRET_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Machine states a client may wait for ("settled" = any of the persistent ones).
WAITABLE_STATES = {"started", "stopped", "suspended", "destroyed", "failed", "settled"}
SETTLED_STATES = frozenset({"created", "started", "stopped", "suspended", "failed", "destroyed"})
RUNNING_STATES = frozenset({"started", "starting", "replacing"})
STARTABLE_STATES = frozenset({"created", "stopped", "suspended", "failed"})
DESTROYABLE_STATES = frozenset({"created", "stopped", "suspended", "failed"})
CHECK_STATUSES = ("passing", "warning", "critical")


class IdSource:
    """Deterministic identifiers drawn from the seed; one RNG, used in request order only."""

    def __init__(self, seed):
        self.rng = random.Random(f"{seed}/ids")

    def _encode(self, alphabet, length):
        # One getrandbits call per id: much cheaper than a choice() per character.
        base = len(alphabet)
        value = self.rng.getrandbits(length * base.bit_length())
        out = []
        for _ in range(length):
            value, digit = divmod(value, base)
            out.append(alphabet[digit])
        return "".join(out)

    def hex(self, length):
        return f"{self.rng.getrandbits(4 * length):0{length}x}"

    def ulid(self):
        # ULID-shaped (26 Crockford chars, leading "01" like current timestamps) but fully seeded.
        return "01" + self._encode(_CROCKFORD, 24)

    def app_id(self):
        return self._encode("0123456789abcdefghijklmnopqrstuvwxyz", 16)

    def machine_name(self):
        return f"{self.rng.choice(_ADJECTIVES)}-{self.rng.choice(_NOUNS)}-{self.rng.randrange(1000, 10000)}"

    def private_ip(self):
        groups = self.rng.getrandbits(64)
        return f"fdaa:0:{groups >> 48:x}:a7b:{(groups >> 32) & 0xffff:x}:{(groups >> 16) & 0xffff:x}:" \
               f"{groups & 0xffff:x}:2"

    def number(self):
        return self.rng.randrange(100000, 10000000)


def event_id(seed, machine_id, index):
    # Derived, not drawn: events are also created by timers, whose timing must not shift the RNG.
    digest = hashlib.sha256(f"{seed}/{machine_id}/{index}".encode()).digest()
    return "01" + "".join(_CROCKFORD[b % 32] for b in digest[:24])


def image_ref(image):
    """Split `registry/repo:tag[@sha256:digest]` the way Fly reports it in `image_ref`."""
    rest, _, digest = image.partition("@")
    registry, _, repo = rest.partition("/") if "/" in rest and "." in rest.split("/")[0] else ("docker.io", "", rest)
    repository, _, tag = repo.rpartition(":") if ":" in repo else (repo, "", "latest")
    return {
        "registry": registry,
        "repository": repository,
        "tag": tag,
        "digest": digest or "sha256:" + sha256_hex(image),
        "labels": {},
    }


def check_names(config, synthetic):
    """Names Fly gives a machine's health checks: servicecheck-NN-<type>-<port>, then config.checks keys."""
    names = []
    for service in config.get("services") or ():
        port = service.get("internal_port", 0)
        for check in service.get("checks") or ():
            names.append(f"servicecheck-{len(names):02d}-{check.get('type', 'tcp')}-{port}")
    names.extend(sorted(config.get("checks") or ()))
    if not names and synthetic:
        services = config.get("services") or ()
        port = services[0].get("internal_port", 8080) if services else 8080
        names.append(f"servicecheck-00-http-{port}")
    return names


def guest_error(guest):
    """Fly's machine sizing rules (docs/fly-api.md); returns a message or None."""
    if not guest:
        return None
    kind = guest.get("cpu_kind", "shared")
    cpus = guest.get("cpus", 1)
    memory = guest.get("memory_mb", 256 if kind == "shared" else 2048 * cpus)
    low, high = (256 * cpus, 2048 * cpus) if kind == "shared" else (2048 * cpus, 8192 * cpus)
    if cpus < 1:
        return f"invalid config.guest.cpus {cpus}: must be at least 1"
    if memory % 256:
        return f"invalid config.guest.memory_mb {memory}: must be a multiple of 256"
    if not low <= memory <= high:
        return f"invalid config.guest.memory_mb {memory} for {cpus} {kind} cpu(s): must be {low}-{high}"
    return None


class Waiter:
    __slots__ = ("states", "future", "timer")

    def __init__(self, states, future):
        self.states = states
        self.future = future
        self.timer = None


class Machine:
    __slots__ = ("id", "app", "name", "region", "state", "instance_id", "private_ip", "config",
                 "image_ref", "created_at", "created_mono", "updated_at", "events", "event_count", "check_names",
                 "checks_changed_at", "started_mono", "update_seq", "timer", "waiters", "min_secrets_version")

    def __init__(self, app, machine_id, name, region, config, instance_id, private_ip, synthetic_check):
        now = rfc3339()
        self.id = machine_id
        self.app = app
        self.name = name
        self.region = region
        self.state = "created"
        self.instance_id = instance_id
        self.private_ip = private_ip
        self.created_at = now
        self.created_mono = time.monotonic()
        self.updated_at = now
        self.events = collections.deque(maxlen=20)
        self.event_count = 0
        self.started_mono = None
        self.update_seq = 0
        self.timer = None
        self.waiters = []
        self.checks_changed_at = rfc3339(millis=True)
        self.min_secrets_version = None  # from the create or last update request; not part of Fly's Machine
        self.set_config(config, synthetic_check)

    def set_config(self, config, synthetic_check):
        self.config = config
        self.image_ref = image_ref(config["image"])
        self.check_names = check_names(config, synthetic_check)


class App:
    __slots__ = ("name", "id", "org", "network", "created_at", "created_mono", "invisible_answers", "numeric_id",
                 "machines", "destroyed", "check_status", "secrets", "secret_values", "secrets_version", "ips",
                 "deletion")

    def __init__(self, name, app_id, org, network, numeric_id):
        self.name = name
        self.id = app_id
        self.org = org
        self.network = network
        self.numeric_id = numeric_id
        self.created_at = time.time()
        self.created_mono = time.monotonic()
        self.invisible_answers = 0  # answers given while not yet visible (app_invisible_status "alternate")
        self.machines = {}          # live machines, creation order
        self.destroyed = collections.OrderedDict()  # recently destroyed, still answer GET
        self.check_status = "passing"
        self.secrets = {}           # name -> {name, digest, created_at, updated_at}
        self.secret_values = {}     # name -> value; only the reveal endpoint and show_secrets expose it
        self.secrets_version = 0
        self.ips = []               # IPAssignment objects plus "type" and "network" (not shown by the API)
        self.deletion = None        # the timer of a deletion accepted but not finished (app_delete_lag_ms)


def bool_param(query, name):
    values = query.get(name)
    return bool(values) and values[-1].lower() in ("true", "1", "yes")


def one_param(query, name, default=None):
    values = query.get(name)
    return values[-1] if values else default


def young(created_mono, window_ms):
    """Whether something created at created_mono (time.monotonic()) is still within window_ms of its create."""
    return window_ms > 0 and (time.monotonic() - created_mono) * 1000 < window_ms


class Call:
    """One API request as the handlers see it."""

    __slots__ = ("endpoint", "params", "query", "body", "org")

    def __init__(self, endpoint, params, query, body, org):
        self.endpoint = endpoint
        self.params = params    # "app" / "org" and "machine" from the path
        self.query = query      # parse_qs: name -> list of values
        self.body = body        # parsed JSON, None, or INVALID_JSON
        self.org = org          # the token's org


INVALID_JSON = object()  # sentinel body: the request had a body that is not JSON


class FlyWorld:
    """The simulated platform: global app namespace, machines, secrets, and the API handlers."""

    def __init__(self, config, loop):
        self.config = config
        self.loop = loop
        self.seed = config["seed"]
        self.ids = IdSource(self.seed)
        self.apps = {}               # every app of every org: names are global on Fly
        self.name_released_at = {}   # deleted app name -> monotonic time it becomes free
        self.machine_ids = set()
        self.update_seq = 0
        self.ip_count = 0            # addresses handed out; a counter, so that the id RNG is not disturbed
        # Every accepted app deletion: whether force was asked and which machines were not stopped (tests check
        # that clients stop machines first, as Fly's docs ask).
        self.app_deletions = []
        self.handlers = {
            "create_app": self.create_app,
            "list_apps": self.list_apps,
            "get_app": self.get_app,
            "delete_app": self.delete_app,
            "list_machines": self.list_machines,
            "create_machine": self.create_machine,
            "get_machine": self.get_machine,
            "update_machine": self.update_machine,
            "delete_machine": self.delete_machine,
            "stop_machine": self.stop_machine,
            "start_machine": self.start_machine,
            "wait_machine": self.wait_machine,
            "list_secrets": self.list_secrets,
            "set_secrets": self.set_secrets,
            "list_org_machines": self.list_org_machines,
            "list_ip_assignments": self.list_ip_assignments,
            "assign_ip": self.assign_ip,
            "delete_ip_assignment": self.delete_ip_assignment,
            "app_health": self.app_health,
        }
        for name, org in config["foreign_apps"].items():
            self.take_name(name, org)

    def close(self):
        for app in self.apps.values():
            if app.deletion is not None:
                app.deletion.cancel()
            for machine in app.machines.values():
                if machine.timer:
                    machine.timer.cancel()

    # ----------------------------------------------------------------------------- dispatch

    def dispatch(self, call):
        schema = schemas.REQUEST_SCHEMAS.get(call.endpoint)
        if schema is not None:
            if call.body is INVALID_JSON:
                raise ApiError(400, "invalid request body: not valid JSON")
            if call.body is None and call.endpoint != "stop_machine":
                raise ApiError(400, "invalid request body: a JSON object is required")
            if call.body is not None:
                try:
                    schemas.validate(schema, call.body)
                except schemas.SchemaError as exc:
                    raise ApiError(400, f"invalid request body: {exc}") from None
        self.check_visible(call)
        return self.handlers[call.endpoint](call)

    # Calls that name an app (or a machine) but are not about creating it.
    UNDER_APP = frozenset({"get_app", "delete_app", "list_machines", "create_machine", "get_machine",
                           "update_machine", "delete_machine", "stop_machine", "start_machine", "wait_machine",
                           "list_secrets", "set_secrets", "list_ip_assignments", "assign_ip",
                           "delete_ip_assignment"})
    UNDER_MACHINE = frozenset({"get_machine", "wait_machine", "start_machine"})

    def check_visible(self, call):
        """Fly's reads lag its writes: a new app, or a new machine, is not found for a while (api-reference 2.1,
        6). Only the owner's calls are affected; another org's get the answers they would anyway."""
        if call.endpoint not in self.UNDER_APP:
            return
        app = self.apps.get(call.params.get("app"))
        if app is None or app.org != call.org:
            return
        if young(app.created_mono, self.config["app_visible_after_ms"]):
            status = self.config["app_invisible_status"]
            if status == "alternate":
                status = (404, 401)[app.invisible_answers % 2]
            app.invisible_answers += 1
            if status == 401:
                raise ApiError(401, "Authenticate: token validation error")
            raise ApiError(404, f'Could not find App "{app.name}"')
        if call.endpoint in self.UNDER_MACHINE:
            machine = app.machines.get(call.params.get("machine"))
            if machine is not None and young(machine.created_mono, self.config["machine_visible_after_ms"]):
                raise ApiError(404, "machine not found")

    # ----------------------------------------------------------------------------- lookups

    def org_info(self, slug):
        return {"name": slug.replace("-", " ").title(), "slug": slug,
                "internal_numeric_id": int(sha256_hex(slug)[:8], 16)}

    def name_taken(self, name):
        released = self.name_released_at.get(name)
        if released is not None and time.monotonic() >= released:
            del self.name_released_at[name]
            released = None
        return name in self.apps or released is not None

    def own_app(self, call):
        name = call.params["app"]
        app = self.apps.get(name)
        if app is None:
            raise ApiError(404, f'Could not find App "{name}"')
        if app.org != call.org:
            raise ApiError(403, "unauthorized")
        return app

    def find_machine(self, app, machine_id, include_destroyed=True):
        machine = app.machines.get(machine_id)
        if machine is None and include_destroyed:
            machine = app.destroyed.get(machine_id)
        if machine is None:
            raise ApiError(404, "machine not found")
        return machine

    def live_machine(self, call):
        """The machine a mutating call targets; destroyed machines answer 404 like Fly's."""
        return self.find_machine(self.own_app(call), call.params["machine"], include_destroyed=False)

    def require_org(self, call, slug):
        if not slug:
            raise ApiError(400, 'missing required parameter "org_slug"')
        if slug != call.org:
            raise ApiError(403, "unauthorized")

    # ----------------------------------------------------------------------------- JSON views

    def app_json(self, app):
        if not app.machines:
            status = "pending"
        elif all(m.state in ("stopped", "suspended") for m in app.machines.values()):
            status = "suspended"
        else:
            status = "deployed"
        return {
            "id": app.id,
            "name": app.name,
            "status": status,
            "organization": self.org_info(app.org),
            "network": app.network,
            "machine_count": len(app.machines),
            "volume_count": 0,
            "internal_numeric_id": app.numeric_id,
        }

    def checks_json(self, machine):
        if machine.state != "started":
            status, output = "critical", "machine is not running"
        elif machine.app.check_status != "passing":
            status = machine.app.check_status
            output = "connect: connection refused" if status == "critical" else "degraded"
        elif machine.config.get("image") in self.config["unhealthy_images"]:
            status, output = "critical", "connect: connection refused"
        elif (time.monotonic() - machine.started_mono) * 1000 < self.config["checks_pass_after_ms"]:
            status, output = "warning", "Waiting for status update"
        else:
            status, output = "passing", "Success"
        changed = machine.checks_changed_at
        return [{"name": n, "status": status, "output": output, "updated_at": changed}
                for n in machine.check_names]

    def machine_json(self, machine, summary=False):
        out = {
            "id": machine.id,
            "name": machine.name,
            "state": machine.state,
            "region": machine.region,
            "instance_id": machine.instance_id,
            "private_ip": machine.private_ip,
            "image_ref": machine.image_ref,
            "created_at": machine.created_at,
            "updated_at": machine.updated_at,
        }
        if not summary:
            out["config"] = machine.config
            out["events"] = list(machine.events)
            out["checks"] = self.checks_json(machine)
            out["host_status"] = "ok"
        return out

    def org_machine_json(self, machine, summary):
        out = {
            "app_name": machine.app.name,
            "id": machine.id,
            "name": machine.name,
            "state": machine.state,
            "region": machine.region,
            "private_ip": machine.private_ip,
            "version": machine.instance_id,
            "created_at": machine.created_at,
            "updated_at": machine.updated_at,
        }
        if not summary:
            config = machine.config
            out["config"] = {"guest": config.get("guest", {}), "image": config["image"],
                             "metadata": config.get("metadata", {})}
        return out

    def secret_list(self, app, with_values=False):
        out = []
        for name, meta in app.secrets.items():
            item = dict(meta)
            if with_values:
                item["value"] = app.secret_values[name]
            out.append(item)
        return out

    # ----------------------------------------------------------------------------- state machine

    def set_state(self, machine, state, event_type, source="flyd"):
        machine.state = state
        machine.updated_at = rfc3339()
        machine.checks_changed_at = rfc3339(millis=True)
        self.update_seq += 1
        machine.update_seq = self.update_seq
        if state == "started":
            machine.started_mono = time.monotonic()
        machine.event_count += 1
        machine.events.appendleft({
            "id": event_id(self.seed, machine.id, machine.event_count),
            "type": event_type,
            "status": state,
            "source": source,
            "timestamp": int(time.time() * 1000),
        })
        if machine.waiters:
            self.wake_waiters(machine)

    def wake_waiters(self, machine):
        still_waiting = []
        for waiter in machine.waiters:
            if machine.state in waiter.states:
                waiter.timer.cancel()
                if not waiter.future.done():
                    waiter.future.set_result(self.wait_ok(machine))
            else:
                still_waiting.append(waiter)
        machine.waiters = still_waiting

    def after(self, machine, delay_ms, action):
        """Run `action` after delay_ms (at once if 0), replacing any transition still pending."""
        if machine.timer:
            machine.timer.cancel()
            machine.timer = None
        if delay_ms <= 0:
            action()
        else:
            machine.timer = self.loop.call_later(delay_ms / 1000, action)

    def boot(self, machine, first_state, event_type):
        """first_state now (if given), then `starting` halfway through the boot delay, then `started`."""
        boot_ms = self.config["boot_delay_ms"]
        if first_state and boot_ms > 0:
            self.set_state(machine, first_state, event_type, "user")

        def started():
            machine.timer = None
            self.set_state(machine, "started", "start")

        def starting():
            self.set_state(machine, "starting", "start")
            self.after(machine, boot_ms / 2, started)

        if boot_ms <= 0:
            self.after(machine, 0, started)
        elif first_state == "starting":
            self.after(machine, boot_ms, started)
        else:
            self.after(machine, boot_ms / 2, starting)

    def stop(self, machine):
        def stopped():
            machine.timer = None
            self.set_state(machine, "stopped", "exit")

        self.set_state(machine, "stopping", "stop", "user")
        self.after(machine, self.config["stop_delay_ms"], stopped)

    def destroy(self, machine, app):
        if machine.timer:
            machine.timer.cancel()
            machine.timer = None
        app.machines.pop(machine.id, None)
        self.set_state(machine, "destroyed", "destroy", "user")
        app.destroyed[machine.id] = machine
        while len(app.destroyed) > self.config["destroyed_retention"]:
            app.destroyed.popitem(last=False)

    def seed_app(self, data):
        """Control API: an app with machines as another deployer left them (the previous system: env RUN_MODE and
        USER_ID, flyctl's metadata, none of pg_fly's), created directly in the state asked for."""
        name = data.get("name")
        org = data.get("org", "personal")
        machines = data.get("machines", [])
        if not isinstance(name, str) or not APP_NAME_RE.match(name) or not isinstance(org, str) \
                or not isinstance(machines, list) or not all(isinstance(m, dict) for m in machines):
            raise ApiError(400, 'body must be {"name": app, "org": slug, "machines": [{"env", "metadata", '
                                '"image", "guest", "region", "state"}]}')
        app = self.apps.get(name)
        if app is None:
            app = self.take_name(name, org)
        elif app.org != org:
            raise ApiError(409, f"app {name} belongs to org {app.org}")
        out = []
        for spec in machines:
            state = spec.get("state", "started")
            if state not in ("created", "started", "stopped", "suspended", "failed"):
                raise ApiError(400, "state must be one of created, started, stopped, suspended, failed")
            guest = spec.get("guest", {"cpu_kind": "shared", "cpus": 1, "memory_mb": 256})
            problem = guest_error(guest)
            if problem:
                raise ApiError(400, problem)
            config = {"image": spec.get("image", "registry.fly.io/vyx-app:deployment-01"), "guest": guest,
                      "env": dict(spec.get("env", {})), "restart": {"policy": "always"},
                      "metadata": dict(spec.get("metadata", {"fly_platform_version": "v2",
                                                              "fly_process_group": "app"}))}
            machine_id = self.ids.hex(14)
            while machine_id in self.machine_ids:
                machine_id = self.ids.hex(14)
            self.machine_ids.add(machine_id)
            machine = Machine(app, machine_id, self.ids.machine_name(), spec.get("region", self.config["default_region"]),
                              config, self.ids.ulid(), self.ids.private_ip(), self.config["synthetic_check"])
            machine.created_mono -= 3600  # long since visible in every list
            app.machines[machine_id] = machine
            self.set_state(machine, state, "launch", "user")
            out.append(self.machine_json(machine))
        return {"app": name, "org": app.org, "machines": out}

    def force_state(self, machine, state):
        """Control API: put a machine into `state` as if it happened on the host."""
        if machine.timer:
            machine.timer.cancel()
            machine.timer = None
        if state == "destroyed":
            self.destroy(machine, machine.app)
        else:
            self.set_state(machine, state, "exit" if state in ("stopped", "failed") else "start")

    def check_secrets_version(self, app, body):
        wanted = body.get("min_secrets_version")
        if wanted is not None and wanted > app.secrets_version:
            raise ApiError(400, f"min_secrets_version {wanted} is newer than the app's current secrets "
                                f"version {app.secrets_version}")

    # ----------------------------------------------------------------------------- apps

    def take_name(self, name, org):
        """Create an app directly (foreign orgs at start-up, control API)."""
        app = App(name, self.ids.app_id(), org, "default", self.ids.number())
        self.apps[name] = app
        return app

    def create_app(self, call):
        body = call.body
        name, alias = body.get("name"), body.get("app_name")
        if name and alias and name != alias:
            raise ApiError(400, f'invalid request body: "name" ({name}) and "app_name" ({alias}) differ')
        name = name or alias
        if not name:
            raise ApiError(400, 'invalid request body: missing required field "name" (or "app_name")')
        if body["org_slug"] != call.org:
            raise ApiError(403, "unauthorized")
        if len(name) >= 63 or not APP_NAME_RE.match(name):
            raise ApiError(422, "Validation failed: Name under 63 chars using numbers, lowercase letters and dashes")
        if self.name_taken(name):
            raise ApiError(422, "Validation failed: Name has already been taken", status="name_taken")
        app = self.take_name(name, call.org)
        app.network = body.get("network") or "default"
        if bool_param(call.query, "wait"):
            return json_reply(201, dict(self.app_json(app), created_at=int(app.created_at * 1000)))
        return json_reply(201, {"id": app.id, "created_at": int(app.created_at * 1000)})

    def list_apps(self, call):
        self.require_org(call, one_param(call.query, "org_slug"))
        apps = [self.app_json(a) for a in self.apps.values() if a.org == call.org]
        return json_reply(200, {"total_apps": len(apps), "apps": apps})

    def get_app(self, call):
        return json_reply(200, self.app_json(self.own_app(call)))

    def delete_app(self, call):
        app = self.own_app(call)
        self.app_deletions.append({
            "app": app.name, "force": bool_param(call.query, "force"), "t_mono": time.monotonic(),
            "machines_not_stopped": sorted(m.state for m in app.machines.values()
                                           if m.state not in ("created", "stopped", "suspended", "failed"))})
        lag_ms = self.config["app_delete_lag_ms"]
        if lag_ms <= 0:
            self.delete_app_now(app)
        elif app.deletion is None:
            # Fly deletes asynchronously (202): the app, its name and its machines stay until the lag ends.
            app.deletion = self.loop.call_later(lag_ms / 1000, lambda: self.finish_deletion(app))
        return Reply(202)

    def finish_deletion(self, app):
        app.deletion = None
        if self.apps.get(app.name) is app:
            self.delete_app_now(app)

    def delete_app_now(self, app):
        """Cascade like Fly: machines destroyed, secrets gone, name freed (optionally after a delay)."""
        if app.deletion is not None:
            app.deletion.cancel()
            app.deletion = None
        for machine in list(app.machines.values()):
            self.destroy(machine, app)
        del self.apps[app.name]
        delay_ms = self.config["name_reuse_delay_ms"]
        if delay_ms > 0:
            self.name_released_at[app.name] = time.monotonic() + delay_ms / 1000

    # ----------------------------------------------------------------------------- machines

    def list_machines(self, call):
        app = self.own_app(call)
        query = call.query
        machines = list(app.machines.values())
        if bool_param(query, "include_deleted"):
            machines += app.destroyed.values()
        states = {s for v in query.get("state", ()) for s in v.split(",") if s}
        region = one_param(query, "region")
        wanted_meta = [(k[9:], v[-1]) for k, v in query.items() if k.startswith("metadata.")]
        out = []
        for machine in machines:
            if young(machine.created_mono, self.config["machine_visible_after_ms"]):
                continue  # not in the replicated store the list reads yet
            if states and machine.state not in states:
                continue
            if region and machine.region != region:
                continue
            if wanted_meta:
                meta = machine.config.get("metadata") or {}
                if any(meta.get(k) != v for k, v in wanted_meta):
                    continue
            out.append(self.machine_json(machine, bool_param(query, "summary")))
        return json_reply(200, out)

    def create_machine(self, call):
        app = self.own_app(call)
        body = call.body
        config = body["config"]
        problem = guest_error(config.get("guest"))
        if problem:
            raise ApiError(400, problem)
        self.check_secrets_version(app, body)
        region = body.get("region") or self.config["default_region"]
        if region in self.config["no_capacity_regions"]:
            # Fly's ErrorResponse with status insufficient_capacity; the HTTP status is not documented (412 seen).
            raise ApiError(412, NO_CAPACITY_TEXT, status="insufficient_capacity")
        if self.config["create_lands_late_ms"] > 0:
            return self.create_machine_late(app, body)
        machine_id = self.ids.hex(14)
        while machine_id in self.machine_ids:
            machine_id = self.ids.hex(14)
        self.machine_ids.add(machine_id)
        machine = Machine(app, machine_id, body.get("name") or self.ids.machine_name(),
                          body.get("region") or self.config["default_region"], config,
                          self.ids.ulid(), self.ids.private_ip(), self.config["synthetic_check"])
        app.machines[machine_id] = machine
        machine.min_secrets_version = body.get("min_secrets_version")
        self.set_state(machine, "created", "launch", "user")
        out = self.machine_json(machine)
        if body.get("lease_ttl"):
            out["nonce"] = self.ids.hex(12)
        reply = json_reply(200, out)
        if not body.get("skip_launch"):
            self.boot(machine, None, "launch")
        return reply

    def new_machine(self, app, body):
        machine_id = self.ids.hex(14)
        while machine_id in self.machine_ids:
            machine_id = self.ids.hex(14)
        self.machine_ids.add(machine_id)
        return Machine(app, machine_id, body.get("name") or self.ids.machine_name(),
                       body.get("region") or self.config["default_region"], body["config"],
                       self.ids.ulid(), self.ids.private_ip(), self.config["synthetic_check"])

    def create_machine_late(self, app, body):
        """An ambiguous create: the answer is a timeout or a gateway's error, but the machine lands later."""
        machine = self.new_machine(app, body)

        def land():
            if self.apps.get(app.name) is not app:
                return  # the app was deleted meanwhile
            machine.created_mono = time.monotonic()
            app.machines[machine.id] = machine
            self.set_state(machine, "created", "launch", "user")
            if not body.get("skip_launch"):
                self.boot(machine, None, "launch")

        self.loop.call_later(self.config["create_lands_late_ms"] / 1000, land)
        status = self.config["create_lands_late_status"]
        raise ApiError(status, LATE_CREATE_TEXT[status])

    def get_machine(self, call):
        machine = self.find_machine(self.own_app(call), call.params["machine"])
        return json_reply(200, self.machine_json(machine))

    def update_machine(self, call):
        app = self.own_app(call)
        machine = self.find_machine(app, call.params["machine"], include_destroyed=False)
        body = call.body
        for field, current in (("name", machine.name), ("region", machine.region)):
            if body.get(field) not in (None, "", current):
                raise ApiError(400, f"{field} cannot be changed by an update (is {current!r})")
        expected = body.get("current_version")
        if expected and expected != machine.instance_id:
            raise ApiError(412, f"failed_precondition: machine version {machine.instance_id} "
                                f"does not match current_version {expected}")
        problem = guest_error(body["config"].get("guest"))
        if problem:
            raise ApiError(400, problem)
        self.check_secrets_version(app, body)
        was_running = machine.state in RUNNING_STATES
        machine.set_config(body["config"], self.config["synthetic_check"])
        machine.min_secrets_version = body.get("min_secrets_version")
        machine.instance_id = self.ids.ulid()
        if was_running and body.get("skip_launch"):
            self.stop(machine)
        elif was_running:
            self.set_state(machine, "replacing", "update", "user")
            self.boot(machine, None, "update")
        else:
            # Fly leaves a machine that was not started stopped after an update.
            self.set_state(machine, machine.state, "update", "user")
        return json_reply(200, self.machine_json(machine))

    def stop_machine(self, call):
        machine = self.live_machine(call)
        if machine.state in RUNNING_STATES:
            self.stop(machine)
        return json_reply(200, {"ok": True})

    def start_machine(self, call):
        machine = self.live_machine(call)
        previous = machine.state
        if previous not in STARTABLE_STATES:
            raise ApiError(412, f"failed_precondition: unable to start machine from current state: '{previous}'")
        self.boot(machine, "starting", "start")
        return json_reply(200, {"previous_state": previous, "migrated": False, "new_host": ""})

    def delete_machine(self, call):
        app = self.own_app(call)
        machine = self.find_machine(app, call.params["machine"], include_destroyed=False)
        forced = bool_param(call.query, "force") or bool_param(call.query, "kill")
        if machine.state not in DESTROYABLE_STATES and not forced:
            raise ApiError(412, "failed_precondition: unable to destroy machine, not currently stopped, "
                                "suspended, failed or created")
        delay_ms = self.config["destroy_delay_ms"]
        if delay_ms > 0:
            self.set_state(machine, "destroying", "destroy", "user")
        self.after(machine, delay_ms, lambda: self.destroy(machine, app))
        return json_reply(200, {"ok": True})

    def wait_ok(self, machine):
        return json_reply(200, {"ok": True, "state": machine.state,
                                "event_id": machine.events[0]["id"], "version": machine.instance_id})

    def wait_machine(self, call):
        machine = self.find_machine(self.own_app(call), call.params["machine"])
        wanted = [s for v in call.query.get("state", ["started"]) for s in v.split(",") if s] or ["started"]
        unknown = [s for s in wanted if s not in WAITABLE_STATES]
        if unknown:
            raise ApiError(400, f"invalid state {unknown[0]!r}: must be one of "
                                f"{', '.join(sorted(WAITABLE_STATES))}")
        states = set(wanted)
        if "settled" in states:
            states |= SETTLED_STATES
        raw_timeout = one_param(call.query, "timeout", "60")
        try:
            timeout = int(raw_timeout[:-1] if raw_timeout.endswith("s") else raw_timeout)
        except ValueError:
            raise ApiError(400, f"invalid timeout {raw_timeout!r}: must be an integer number of seconds") from None
        timeout = min(max(timeout, 1), 60)  # Fly blocks at most 60 s
        if machine.state in states:
            return self.wait_ok(machine)
        waiter = Waiter(frozenset(states), self.loop.create_future())
        machine.waiters.append(waiter)
        message = (f"deadline_exceeded: machine {machine.id} did not reach state "
                   f"{'|'.join(wanted)} within {timeout}s (current state: {{}})")

        def expire():
            if waiter in machine.waiters:
                machine.waiters.remove(waiter)
            if not waiter.future.done():
                waiter.future.set_result(error_reply(408, message.format(machine.state)))

        waiter.timer = self.loop.call_later(timeout, expire)
        return waiter.future

    # ----------------------------------------------------------------------------- secrets

    def list_secrets(self, call):
        app = self.own_app(call)
        return json_reply(200, {"secrets": self.secret_list(app, bool_param(call.query, "show_secrets"))})

    def set_secrets(self, call):
        app = self.own_app(call)
        values = call.body["values"]
        bad = [name for name in values if not SECRET_NAME_RE.match(name)]
        if bad:
            raise ApiError(400, f"invalid secret name {bad[0]!r}: use letters, digits and underscores")
        now = rfc3339()
        for name, value in values.items():
            if value is None:
                app.secrets.pop(name, None)
                app.secret_values.pop(name, None)
                continue
            created = app.secrets.get(name, {}).get("created_at", now)
            app.secrets[name] = {"name": name, "digest": sha256_hex(value), "created_at": created, "updated_at": now}
            app.secret_values[name] = value
        app.secrets_version += 1
        version = app.secrets_version
        return json_reply(200, {"secrets": self.secret_list(app), "version": version, "Version": version})

    # ----------------------------------------------------------------------------- IP assignments

    # Documentation ranges (RFC 5737, RFC 3849): nothing is ever reachable at them.
    IP_FORMATS = {
        "shared_v4": lambda n: f"192.0.2.{n % 254 + 1}",
        "v4": lambda n: f"198.51.100.{n % 254 + 1}",
        "egress_v4": lambda n: f"203.0.113.{n % 254 + 1}",
        "v6": lambda n: f"2001:db8:{n:x}::1",
        "egress_v6": lambda n: f"2001:db8:e:{n:x}::1",
        "private_v6": lambda n: f"fdaa:0:1:a7b:{n:x}::2",
    }
    PUBLIC_IP_TYPES = frozenset({"shared_v4", "v4", "v6"})

    @staticmethod
    def ip_json(entry):
        return {k: entry[k] for k in ("ip", "region", "shared", "egress", "service_name", "created_at")}

    def list_ip_assignments(self, call):
        app = self.own_app(call)
        return json_reply(200, {"ips": [self.ip_json(e) for e in app.ips]})

    def assign_ip(self, call):
        """Every request assigns a new address, even of a type the app has: whether Fly refuses or reuses a
        second shared IPv4 is not documented, and a client that does not list first must show up."""
        app = self.own_app(call)
        body = call.body
        kind = body["type"]
        if kind == "egress_pair":
            raise ApiError(400, "egress_pair is not simulated")
        network = body.get("network")
        if network and network != app.network:
            # The warm-pool blueprint: an IP for an app on its own network must name that network.
            raise ApiError(400, f"network {network!r} is not the app's network ({app.network!r})")
        self.ip_count += 1
        entry = {"ip": self.IP_FORMATS[kind](self.ip_count), "region": body.get("region") or "global",
                 "shared": kind == "shared_v4", "egress": kind.startswith("egress"),
                 "service_name": body.get("service_name") or "", "created_at": rfc3339(),
                 "type": kind, "network": network or app.network}
        app.ips.append(entry)
        return json_reply(200, self.ip_json(entry))

    def delete_ip_assignment(self, call):
        app = self.own_app(call)
        ip = call.params["ip"]
        for entry in app.ips:
            if entry["ip"] == ip:
                app.ips.remove(entry)
                return Reply(204)
        raise ApiError(404, f"IP address {ip} not found")

    def reachable(self, source, target):
        """Whether source's machines can reach target's over the private network (6PN): same org and same
        network (api-reference 2.1, `network`)."""
        return {"from": source.name, "to": target.name, "from_network": source.network,
                "to_network": target.network,
                "reachable": source.org == target.org and source.network == target.network}

    # ----------------------------------------------------------------------------- org listing

    def list_org_machines(self, call):
        slug = call.params["org"]
        self.require_org(call, slug)
        query = call.query
        include_deleted = bool_param(query, "include_deleted")
        states = {s for v in query.get("state", ()) for s in v.split(",") if s}
        region = one_param(query, "region")
        updated_after = one_param(query, "updated_after")
        cursor = one_param(query, "cursor")
        try:
            after_seq = int(cursor) if cursor else 0
            limit = min(max(int(one_param(query, "limit", "1000")), 1), 1000)
        except ValueError:
            raise ApiError(400, "invalid cursor or limit") from None
        candidates = []
        for app in self.apps.values():
            if app.org != slug:
                continue
            machines = list(app.machines.values())
            if include_deleted:
                machines += app.destroyed.values()
            for machine in machines:
                if machine.update_seq <= after_seq or (states and machine.state not in states):
                    continue
                if (region and machine.region != region) or (not cursor and updated_after
                                                             and machine.updated_at <= updated_after):
                    continue
                candidates.append(machine)
        candidates.sort(key=lambda m: m.update_seq)
        page = candidates[:limit]
        summary = bool_param(query, "summary")
        out = {"machines": [self.org_machine_json(m, summary) for m in page],
               "next_cursor": str(page[-1].update_seq) if len(candidates) > limit else "",
               "error_regions": []}
        if page:
            out["last_machine_id"] = page[-1].id
            out["last_updated_at"] = page[-1].updated_at
        return json_reply(200, out)

    # ----------------------------------------------------------------------------- the app itself

    def app_health(self, call):
        """What the user's backend image answers on /health (docs/architecture.md), from the first started
        machine's env."""
        name = call.params["app"]
        app = self.apps.get(name)
        if app is None:
            return error_reply(404, f'Could not find App "{name}"')
        machine = next((m for m in app.machines.values() if m.state == "started"), None)
        if self.config["health_needs_service_and_ip"] and not self.publicly_served(app, machine):
            return RESET  # {app}.fly.dev does not resolve, or Fly's proxy has nowhere to send the request
        if machine is None:
            return json_reply(503, {"status": "unavailable", "error": "no started machine"})
        env = machine.config.get("env") or {}
        try:
            trader_count = int(env.get("TRADER_COUNT", "0"))
        except ValueError:
            trader_count = 0
        if machine.config.get("image") in self.config["unhealthy_images"]:
            return json_reply(503, {"status": "unavailable", "error": "the image does not serve /health"})
        body = {"status": "ok" if app.check_status == "passing" else "unhealthy",
                "run_mode": env.get("RUN_MODE", "shared_backend"),
                "user_id": env.get("USER_ID"), "trader_count": trader_count}
        return json_reply(200 if app.check_status == "passing" else 503, body)

    def publicly_served(self, app, machine):
        """Fly's proxy routes <app>.fly.dev only to an app with a public IP, and only to a machine whose config
        has services with ports (api-reference 2.1 and 3.1)."""
        has_ip = any(entry["type"] in self.PUBLIC_IP_TYPES for entry in app.ips)
        services = (machine.config.get("services") or ()) if machine is not None else ()
        return has_ip and any(service.get("ports") for service in services)

    # ----------------------------------------------------------------------------- control API views

    def state_json(self):
        apps = {}
        for app in self.apps.values():
            # min_secrets_version is not in Fly's Machine object: the control API shows what the last create or
            # update asked for, so that tests can see which secrets version a machine runs with.
            machines = {m.id: dict(self.machine_json(m), min_secrets_version=m.min_secrets_version)
                        for m in app.machines.values()}
            machines.update((m.id, dict(self.machine_json(m), min_secrets_version=m.min_secrets_version))
                            for m in app.destroyed.values())
            apps[app.name] = {
                "id": app.id,
                "org": app.org,
                "network": app.network,
                "created_at": rfc3339(app.created_at),
                "status": self.app_json(app)["status"],
                "check_status": app.check_status,
                "ips": [dict(entry) for entry in app.ips],
                "secrets": {"version": app.secrets_version,
                            "names": {n: dict(meta) for n, meta in app.secrets.items()}},
                "machines": machines,
            }
        now = time.monotonic()
        return {
            "seed": self.seed,
            "now": rfc3339(millis=True),
            "apps": apps,
            "names_being_released": {n: int((t - now) * 1000) for n, t in self.name_released_at.items() if t > now},
            "apps_being_deleted": sorted(a.name for a in self.apps.values() if a.deletion is not None),
            "app_deletions": [dict(d) for d in self.app_deletions],
        }

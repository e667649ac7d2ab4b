"""Compact request-body schemas for the Fly Machines API endpoints the simulator serves.

Hand-written from Fly's OpenAPI spec and API docs (docs/fly-api.md names both). Each object schema
names the spec schema it mirrors, so a test can check every accepted field against the spec.
Validation is deliberately stricter than Fly (which ignores unknown fields): a client bug should
fail here, loudly, instead of being silently dropped by the real API.
"""


class SchemaError(ValueError):
    """A request body does not match its schema; the message names the offending field."""


class Scalar:
    """A JSON scalar of one or more types ('string', 'integer', 'number', 'boolean', 'null')."""

    def __init__(self, *types, enum=None):
        self.types = types
        self.enum = enum


class Opaque:
    """An object or array whose inside the simulator does not check (beyond its JSON type)."""

    def __init__(self, kind):
        self.kind = kind


class ArrayOf:
    def __init__(self, item):
        self.item = item


class MapOf:
    """An object with free-form keys whose values all follow one schema."""

    def __init__(self, value):
        self.value = value


class Obj:
    """An object with a closed set of fields; `spec_name` is the spec's schema name."""

    def __init__(self, spec_name, props, required=()):
        self.spec_name = spec_name
        self.props = props
        self.required = required


STRING = Scalar("string")
INTEGER = Scalar("integer")
NUMBER = Scalar("number")
BOOLEAN = Scalar("boolean")
STRINGS = ArrayOf(STRING)
ANY_OBJECT = Opaque("object")


def enum(*values):
    return Scalar("string", enum=values)


# Fields or types the simulator accepts although the spec does not list them, with the reason.
# The conformance test allows exactly these deviations and nothing else.
DOCUMENTED_EXTRAS = {
    ("CreateAppRequest", "app_name"): "the Apps docs and warm-pool blueprint send app_name; "
                                      "the spec and fly-go send name (docs/fly-api.md)",
    ("fly.MachineService", "autostop", "boolean"): "Fly's machine docs accept booleans and echo them",
    ("AppSecretsUpdateRequest", "values", "null"): "null unsets a secret (the spec's description)",
}

_HTTP_HEADER = Obj("fly.MachineHTTPHeader", {"name": STRING, "values": STRINGS})

_CHECK_FIELDS = {
    "type": enum("tcp", "http"),
    "port": INTEGER,
    "interval": STRING,
    "timeout": STRING,
    "grace_period": STRING,
    "method": STRING,
    "path": STRING,
    "protocol": STRING,
    "tls_server_name": STRING,
    "tls_skip_verify": BOOLEAN,
    "headers": ArrayOf(_HTTP_HEADER),
}

MACHINE_CHECK = Obj("fly.MachineCheck", dict(_CHECK_FIELDS, kind=enum("informational", "readiness")))
SERVICE_CHECK = Obj("fly.MachineServiceCheck", dict(_CHECK_FIELDS))

MACHINE_PORT = Obj("fly.MachinePort", {
    "port": INTEGER,
    "start_port": INTEGER,
    "end_port": INTEGER,
    "handlers": STRINGS,
    "force_https": BOOLEAN,
    "http_options": ANY_OBJECT,
    "tls_options": ANY_OBJECT,
    "proxy_proto_options": ANY_OBJECT,
})

MACHINE_SERVICE = Obj("fly.MachineService", {
    "protocol": enum("tcp", "udp"),
    "internal_port": INTEGER,
    "ports": ArrayOf(MACHINE_PORT),
    "autostart": BOOLEAN,
    "autostop": Scalar("string", "boolean"),
    "min_machines_running": INTEGER,
    "concurrency": Obj("fly.MachineServiceConcurrency", {
        "type": enum("connections", "requests"),
        "soft_limit": INTEGER,
        "hard_limit": INTEGER,
    }),
    "checks": ArrayOf(SERVICE_CHECK),
    "force_instance_key": STRING,
    "force_instance_description": STRING,
})

MACHINE_GUEST = Obj("fly.MachineGuest", {
    "cpu_kind": enum("shared", "performance"),
    "cpus": INTEGER,
    "memory_mb": INTEGER,
    "gpu_kind": STRING,
    "gpus": INTEGER,
    "kernel_args": STRINGS,
    "max_memory_mb": INTEGER,
    "host_dedication_id": STRING,
    "persist_rootfs": enum("never", "always", "restart"),
})

MACHINE_CONFIG = Obj("fly.MachineConfig", {
    "image": STRING,
    "env": MapOf(STRING),
    "metadata": MapOf(STRING),
    "guest": MACHINE_GUEST,
    "size": STRING,
    "services": ArrayOf(MACHINE_SERVICE),
    "checks": MapOf(MACHINE_CHECK),
    "restart": Obj("fly.MachineRestart", {
        "policy": enum("no", "always", "on-failure", "spot-price"),
        "max_retries": INTEGER,
        "gpu_bid_price": NUMBER,
    }),
    "auto_destroy": BOOLEAN,
    "init": Obj("fly.MachineInit", {
        "exec": STRINGS,
        "entrypoint": STRINGS,
        "cmd": STRINGS,
        "tty": BOOLEAN,
        "swap_size_mb": INTEGER,
        "kernel_args": STRINGS,
    }),
    "mounts": ArrayOf(Obj("fly.MachineMount", {
        "volume": STRING,
        "path": STRING,
        "name": STRING,
        "size_gb": INTEGER,
        "encrypted": BOOLEAN,
        "extend_threshold_percent": INTEGER,
        "add_size_gb": INTEGER,
        "size_gb_limit": INTEGER,
    })),
    "files": ArrayOf(Obj("fly.File", {
        "guest_path": STRING,
        "raw_value": STRING,
        "secret_name": STRING,
        "image_config": STRING,
        "mode": INTEGER,
    })),
    "processes": ArrayOf(ANY_OBJECT),
    "stop_config": Obj("fly.StopConfig", {"signal": STRING, "timeout": STRING}),
    "dns": ANY_OBJECT,
    "metrics": Obj("fly.MachineMetrics", {"port": INTEGER, "path": STRING, "https": BOOLEAN}),
    "statics": ArrayOf(ANY_OBJECT),
    "standbys": STRINGS,
    "schedule": STRING,
    "rootfs": Obj("fly.MachineRootfs", {"persist": STRING, "size_gb": INTEGER}),
    "cache_drive": ANY_OBJECT,
    "spot": ANY_OBJECT,
    "containers": ArrayOf(ANY_OBJECT),
    "disable_machine_autostart": BOOLEAN,
}, required=("image",))

_MACHINE_REQUEST_FIELDS = {
    "config": MACHINE_CONFIG,
    "region": STRING,
    "name": STRING,
    "skip_launch": BOOLEAN,
    "skip_service_registration": BOOLEAN,
    "skip_secrets": BOOLEAN,
    "lease_ttl": INTEGER,
    "min_secrets_version": INTEGER,
}

CREATE_MACHINE_REQUEST = Obj("CreateMachineRequest", dict(_MACHINE_REQUEST_FIELDS), required=("config",))
UPDATE_MACHINE_REQUEST = Obj("UpdateMachineRequest",
                             dict(_MACHINE_REQUEST_FIELDS, current_version=STRING), required=("config",))

STOP_REQUEST = Obj("StopRequest", {
    "signal": enum("SIGHUP", "SIGINT", "SIGQUIT", "SIGKILL", "SIGUSR1", "SIGUSR2", "SIGTERM"),
    "timeout": STRING,
})

# `name` or `app_name` is required too; the handler checks that, since a schema cannot say "one of".
CREATE_APP_REQUEST = Obj("CreateAppRequest", {
    "name": STRING,
    "app_name": STRING,
    "org_slug": STRING,
    "network": STRING,
    "enable_subdomains": BOOLEAN,
}, required=("org_slug",))

ASSIGN_IP_REQUEST = Obj("assignIPRequest", {
    "type": enum("v4", "v6", "shared_v4", "private_v6", "egress_v4", "egress_v6", "egress_pair"),
    "region": STRING,
    "network": STRING,
    "org_slug": STRING,
    "service_name": STRING,
}, required=("type",))

APP_SECRETS_UPDATE_REQUEST = Obj("AppSecretsUpdateRequest",
                                 {"values": MapOf(Scalar("string", "null"))}, required=("values",))

# Endpoint name -> schema of its JSON body (None: no body expected, any body is ignored).
REQUEST_SCHEMAS = {
    "create_app": CREATE_APP_REQUEST,
    "create_machine": CREATE_MACHINE_REQUEST,
    "update_machine": UPDATE_MACHINE_REQUEST,
    "stop_machine": STOP_REQUEST,
    "set_secrets": APP_SECRETS_UPDATE_REQUEST,
    "assign_ip": ASSIGN_IP_REQUEST,
}


# Python type -> JSON type name; bool before int, since a bool is an int in Python.
_JSON_TYPES = ((type(None), "null"), (bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"),
               (list, "array"), (dict, "object"))


def json_type(value):
    for python_type, name in _JSON_TYPES:
        if isinstance(value, python_type):
            return name
    return type(value).__name__


def _type_ok(actual, allowed):
    return actual in allowed or (actual == "integer" and "number" in allowed)


def _where(path):
    return f'"{path}"' if path else "the request body"


def validate(schema, value, path=""):
    """Raise SchemaError if `value` does not match `schema`; `path` is the dotted field name."""
    actual = json_type(value)
    if isinstance(schema, Scalar):
        if not _type_ok(actual, schema.types):
            raise SchemaError(f"field {_where(path)} must be {' or '.join(schema.types)}, got {actual}")
        if schema.enum is not None and value is not None and value not in schema.enum:
            raise SchemaError(f"field {_where(path)} must be one of {', '.join(schema.enum)}, got {value!r}")
        return
    expected = "array" if isinstance(schema, ArrayOf) or getattr(schema, "kind", None) == "array" else "object"
    if actual != expected:
        raise SchemaError(f"field {_where(path)} must be {expected}, got {actual}")
    if isinstance(schema, ArrayOf):
        for index, item in enumerate(value):
            validate(schema.item, item, f"{path}[{index}]")
    elif isinstance(schema, MapOf):
        for key, item in value.items():
            validate(schema.value, item, f"{path}.{key}" if path else key)
    elif isinstance(schema, Obj):
        for key, item in value.items():
            sub = schema.props.get(key)
            if sub is None:
                where = f" in {path}" if path else ""
                raise SchemaError(f'unknown field "{key}"{where}')
            validate(sub, item, f"{path}.{key}" if path else key)
        for key in schema.required:
            if key not in value:
                raise SchemaError(f'missing required field "{path + "." if path else ""}{key}"')

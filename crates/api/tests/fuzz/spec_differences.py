"""schemathesis hooks of scripts/fuzz-api: the deliberate differences between
what midge answers and the official spec, applied to the spec in memory so
that everything else in those replies is still checked against it.

The first two are what Fly's servers send and fly-go reads;
crates/api/tests/conformance.rs lists them too. The third is midge's own:
the parts of a machine config it does not interpret are kept as sent.
"""

import schemathesis
from schemathesis.openapi.checks import JsonSchemaError

LEASE_OPERATIONS = [
    ("/v1/apps/{app_name}/machines/{machine_id}/lease", "get", "200"),
    ("/v1/apps/{app_name}/machines/{machine_id}/lease", "post", "201"),
]

# Volume fields the spec types as plain strings, which are `null` while unset
# (no machine is attached).
NULLABLE_VOLUME_FIELDS = ["attached_machine_id", "attached_alloc_id"]


@schemathesis.hook
def before_load_schema(context, raw_schema):
    schemas = raw_schema["components"]["schemas"]

    # The spec types the lease routes' reply as the flat Lease; the wire
    # format wraps it as {"status": "success", "data": Lease}.
    envelope = {
        "type": "object",
        "required": ["status", "data"],
        "properties": {
            "status": {"type": "string", "enum": ["success"]},
            "data": {"$ref": "#/components/schemas/Lease"},
        },
    }
    for path, method, status in LEASE_OPERATIONS:
        response = raw_schema["paths"][path][method]["responses"][status]
        response["content"]["application/json"]["schema"] = envelope

    volume = schemas["Volume"]["properties"]
    for field in NULLABLE_VOLUME_FIELDS:
        volume[field]["nullable"] = True


# The config fields midge interprets, per level (crates/types/src/config.rs):
# a name maps to the level below it, or to None when midge's own types fill
# the whole value. Every other field is kept verbatim, as the client sent it.
CONFIG_FIELDS = {
    "config": {
        "image": None,
        "env": None,
        "init": "init",
        "guest": "guest",
        "restart": "restart",
        "stop_config": None,
        "files": "file",
        "services": "service",
        "metadata": None,
        "mounts": "mount",
        "auto_destroy": None,
    },
    "init": {"exec": None, "entrypoint": None, "cmd": None, "tty": None},
    "guest": {"cpu_kind": None, "cpus": None, "memory_mb": None},
    "restart": {"policy": None, "max_retries": None},
    "file": {"guest_path": None, "raw_value": None, "secret_name": None, "mode": None},
    "service": {
        "protocol": None,
        "internal_port": None,
        "ports": "port",
        "autostart": None,
        "min_machines_running": None,
        "concurrency": None,
        "checks": "check",
    },
    "check": {
        "type": None,
        "interval": None,
        "timeout": None,
        "grace_period": None,
        "port": None,
        "method": None,
        "path": None,
        "protocol": None,
        "headers": None,
    },
    "port": {"port": None, "start_port": None, "end_port": None, "handlers": None},
    "mount": {
        "volume": None,
        "path": None,
        "name": None,
        "extend_threshold_percent": None,
        "add_size_gb": None,
        "size_gb_limit": None,
    },
}
# Where a machine's config sits in a reply (a machine, or one of its versions).
CONFIG_KEYS = {"config", "incomplete_config", "user_config"}


def kept_as_sent(instance_path):
    """Whether this place in a reply is a config field midge keeps verbatim."""
    path = list(instance_path)
    roots = [i for i, key in enumerate(path) if key in CONFIG_KEYS]
    if not roots:
        return False
    level = "config"
    for key in path[roots[0] + 1 :]:
        if isinstance(key, int):
            continue
        fields = CONFIG_FIELDS[level]
        if key not in fields:
            return True
        if fields[key] is None:
            return False
        level = fields[key]
    return False


@schemathesis.hook
def filter_failure(context, failure, case, response):
    # A machine config keeps what midge does not interpret as the client sent
    # it (so clients round-trip Fly fields midge lacks); such a value conforms
    # to the spec exactly as far as the request did.
    return not (isinstance(failure, JsonSchemaError) and kept_as_sent(failure.instance_path))

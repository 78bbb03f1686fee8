"""schemathesis hooks of scripts/fuzz-api: the deliberate differences between
what midge answers and the official spec, applied to the spec in memory so
that everything else in those replies is still checked against it.

Each is what Fly's servers send and fly-go reads; crates/api/tests/
conformance.rs lists the same differences.
"""

import schemathesis

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

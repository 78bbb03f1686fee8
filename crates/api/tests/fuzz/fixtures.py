"""What the API fuzzer needs around a running `midge up`: waiting until it
answers, the objects its requests aim at, and removing everything after.

Usage (MIDGE_FUZZ_URL and MIDGE_FUZZ_TOKEN in the environment):
    fixtures.py wait SECONDS
    fixtures.py seed DIR      writes DIR/<name>.dict, schemathesis dictionaries
    fixtures.py teardown      destroys every machine, volume and app
"""

import json
import os
import sys
import time

import requests

URL = os.environ["MIDGE_FUZZ_URL"]
TOKEN = os.environ["MIDGE_FUZZ_TOKEN"]
APP = "fuzz"
# Apps and machines only the fuzzer's deletes aim at, so the ones every
# other request aims at stay.
DOOMED_APPS = ["fuzz-doomed-1", "fuzz-doomed-2", "fuzz-doomed-3"]
IMAGE = "midge/shell:latest"
SLEEPER = {"image": IMAGE, "init": {"cmd": ["sleep", "3600"]}}

session = requests.Session()
session.headers["Authorization"] = f"Bearer {TOKEN}"


def call(method, path, body=None, expect=(200, 201, 202, 204)):
    reply = session.request(method, URL + path, json=body, timeout=60)
    if reply.status_code not in expect:
        raise SystemExit(f"{method} {path}: {reply.status_code} {reply.text}")
    return reply.json() if reply.content else None


def wait(seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if session.get(URL + "/v1/apps", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise SystemExit(f"midge up did not answer within {seconds} s")


def create_machine(app, name, **fields):
    return call(
        "POST", f"/v1/apps/{app}/machines", {"name": name, "config": SLEEPER, **fields}
    )


def seed(out_dir):
    for app in [APP, *DOOMED_APPS]:
        call("POST", "/v1/apps", {"name": app, "org_slug": "personal"})
    started = create_machine(APP, "fuzz-started")
    created = create_machine(APP, "fuzz-created", skip_launch=True)
    stopped = create_machine(APP, "fuzz-stopped")
    call("GET", f"/v1/apps/{APP}/machines/{stopped['id']}/wait?state=started&timeout=30")
    call("POST", f"/v1/apps/{APP}/machines/{stopped['id']}/stop")
    call("POST", f"/v1/apps/{APP}/machines/{started['id']}/metadata/role", {"value": "web"})
    doomed = [create_machine(APP, f"fuzz-doomed-{n}") for n in range(3)]
    volume = call("POST", f"/v1/apps/{APP}/volumes", {"name": "data", "size_gb": 1})
    call("POST", f"/v1/apps/{APP}/volumes/{volume['id']}/snapshots")
    doomed_volumes = [
        call("POST", f"/v1/apps/{APP}/volumes", {"name": "doomed", "size_gb": 1})
        for _ in range(2)
    ]
    dictionaries = {
        "apps": [APP],
        "doomed_apps": DOOMED_APPS,
        "machines": [m["id"] for m in (started, created, stopped)] + ["fuzz-started"],
        "doomed_machines": [m["id"] for m in doomed],
        "volumes": [volume["id"]],
        "doomed_volumes": [v["id"] for v in doomed_volumes],
        "metadata_keys": ["role"],
        "images": [IMAGE],
    }
    for name, values in dictionaries.items():
        with open(os.path.join(out_dir, f"{name}.dict"), "w") as file:
            file.writelines(json.dumps(value) + "\n" for value in values)


def teardown():
    apps = call("GET", "/v1/apps")["apps"]
    for app in apps:
        name = app["name"]
        # A held lease refuses even a forced destroy without its nonce.
        for machine in call("GET", f"/v1/apps/{name}/machines?include_leases=true"):
            nonce = (machine.get("lease") or {}).get("nonce")
            if nonce:
                session.delete(
                    f"{URL}/v1/apps/{name}/machines/{machine['id']}/lease",
                    headers={"fly-machine-lease-nonce": nonce},
                    timeout=60,
                )
        for volume in call("GET", f"/v1/apps/{name}/volumes"):
            if volume["state"] not in ("destroyed", "pending_destroy"):
                # A machine that mounts it goes with the app below; the
                # host cleanup takes what is left.
                call("DELETE", f"/v1/apps/{name}/volumes/{volume['id']}", expect=(200, 412))
        call("DELETE", f"/v1/apps/{name}?force=true", expect=(202, 404))
    left = call("GET", "/v1/apps")["apps"]
    if left:
        raise SystemExit(f"apps left after teardown: {[a['name'] for a in left]}")


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "wait":
        wait(float(args[0]))
    elif command == "seed":
        seed(args[0])
    elif command == "teardown":
        teardown()
    else:
        raise SystemExit(f"unknown command {command}")

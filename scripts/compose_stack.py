"""Shared by scripts/up and the test suite: run Compose (v2 plugin or v1) and wait for health.

Compose v1 has no `up --wait`, so waiting on the healthchecks is done here, the same way for both.
"""
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The stack the test suite runs: Galaxy and the bundled Slurm cluster (as COMPOSE_FILE in .env has
# them), and the suite's own Tool Shed, in a profile: built with the rest, started by its tests only.
TEST_COMPOSE_FILES = ["compose.yml", "compose.slurm.yml", "tests/compose.toolshed.yml"]
TEST_PROFILE = "toolshed"


class ComposeError(RuntimeError):
    pass


def compose_command():
    """`docker compose` (v2) where it exists, else `docker-compose` (v1)."""
    if shutil.which("docker") is None:
        raise ComposeError("docker is not installed: the stack needs a Docker engine")
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        raise ComposeError("the Docker engine does not answer (`docker info` fails)")
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise ComposeError("neither `docker compose` nor `docker-compose` is installed")


def free_port():
    """A TCP port free on the host's loopback, for a stack of its own (tests, bench)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prune_replaced_images():
    """Remove this project's images that a rebuild left untagged (not the build cache)."""
    subprocess.run(["docker", "image", "prune", "-f", "--filter", "label=io.scalable-galaxy.image"],
                   stdout=subprocess.DEVNULL, check=False)


def container_states(ids, skip_services=()):
    """{container name: state}; state is a health status, `exited-<code>`, or `running`. Containers
    of `skip_services` are left out."""
    if not ids:
        return {}
    out = subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True, check=True)
    states = {}
    for c in json.loads(out.stdout):
        if c["Config"]["Labels"].get("com.docker.compose.service") in skip_services:
            continue
        st = c["State"]
        if st["Status"] == "exited":
            state = f"exited-{st['ExitCode']}"
        elif st.get("Health"):
            state = st["Health"]["Status"]
        else:
            state = st["Status"]
        states[c["Name"].lstrip("/")] = state
    return states


def wait_healthy(list_container_ids, timeout, pause=3.0, skip_services=()):
    """Wait until every container is healthy (or running, without a healthcheck), and every
    one-shot has exited 0. Fails at once on a failed one-shot or an unhealthy container."""
    deadline = time.monotonic() + timeout
    while True:
        states = container_states(list_container_ids(), skip_services)
        failed = {n: s for n, s in states.items()
                  if s == "unhealthy" or (s.startswith("exited-") and s != "exited-0")}
        if failed:
            raise ComposeError(f"containers failed: {failed}")
        if states and all(s in ("healthy", "running", "exited-0") for s in states.values()):
            return states
        if time.monotonic() > deadline:
            raise ComposeError(f"not healthy after {timeout:.0f}s: {states}")
        time.sleep(pause)

"""Bring the compose stack up once per test session (pytest-docker), hand tests a Galaxy client.

The stack runs under its own compose project name and host port, so it never collides with a
stack a user is running, and is torn down with its volumes at the end. If Docker is missing the
session fails; it never skips.
"""
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests
from bioblend.galaxy import GalaxyInstance

ROOT = Path(__file__).resolve().parent.parent
# Galaxy's first start (database schema, toolbox) takes minutes on 2 cores.
STACK_TIMEOUT = float(os.environ.get("SG_TEST_STACK_TIMEOUT", "900"))


def compose_command():
    """`docker compose` (v2) where it exists, else `docker-compose` (v1): both must work."""
    if shutil.which("docker") is None:
        pytest.exit("docker is not installed: the end-to-end suite needs a Docker engine", 3)
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.exit("the Docker engine does not answer (`docker info` fails)", 3)
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return "docker compose"
    if shutil.which("docker-compose"):
        return "docker-compose"
    pytest.exit("neither `docker compose` nor `docker-compose` is installed", 3)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def docker_compose_command():
    return compose_command()


@pytest.fixture(scope="session")
def docker_compose_file():
    return str(ROOT / "compose.yml")


@pytest.fixture(scope="session")
def docker_compose_project_name():
    return f"sgtest{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def docker_setup():
    # Images only: starting the stack happens in `stack` below, where a failure still tears down.
    subprocess.run([str(ROOT / "scripts" / "prepare-build")], check=True)
    return ["build"]


@pytest.fixture(scope="session")
def docker_cleanup():
    return ["down -v --remove-orphans --timeout 20"]


class Stack:
    """The running stack: compose commands, its URL and a few helpers for tests."""

    def __init__(self, services, url):
        self.services = services
        self.url = url

    def compose(self, subcommand, timeout=None):
        return self.services._docker_compose.execute(subcommand).decode()

    def exec(self, service, command, index=1, user=None):
        as_user = f"--user {user} " if user else ""
        return self.compose(f"exec -T --index {index} {as_user}{service} {command}")

    def container_ids(self, service):
        return self.compose(f"ps -q {service}").split()

    def wait_healthy(self, timeout=STACK_TIMEOUT):
        """Wait until every container that has a healthcheck reports healthy (v1 has no --wait)."""
        deadline = time.monotonic() + timeout
        while True:
            states = container_states(self.container_ids(""))
            bad = {name: s for name, s in states.items() if s in ("exited", "dead", "unhealthy")
                   and not is_finished_one_shot(name, states)}
            if bad:
                raise RuntimeError(f"containers failed: {bad}")
            if all(s in ("healthy", "running-no-check", "exited-0") for s in states.values()):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"stack not healthy after {timeout:.0f}s: {states}")
            time.sleep(3)

    def dump(self):
        """Each service's state and the tail of its log: printed when something failed."""
        print(self.compose("ps -a"))
        print(self.compose("logs --no-color --tail 60"))


def container_states(ids):
    if not ids:
        return {}
    out = subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True, check=True)
    states = {}
    for c in json.loads(out.stdout):
        st = c["State"]
        if st["Status"] == "exited":
            state = "exited-0" if st["ExitCode"] == 0 else "exited"
        elif "Health" in st:
            state = st["Health"]["Status"]
        else:
            state = "running-no-check" if st["Running"] else st["Status"]
        states[c["Name"].lstrip("/")] = state
    return states


def is_finished_one_shot(name, states):
    return states[name] == "exited-0"


@pytest.fixture(scope="session")
def stack(docker_services, docker_compose_project_name):
    port = free_port()
    os.environ["GALAXY_PORT"] = f"127.0.0.1:{port}"
    s = Stack(docker_services, f"http://127.0.0.1:{port}")
    try:
        s.compose("up -d")
        s.wait_healthy()
        wait_for(lambda: requests.get(f"{s.url}/api/version", timeout=5).ok, 120, "Galaxy via nginx")
    except Exception:
        s.dump()
        raise
    yield s


def wait_for(check, timeout, what, pause=2):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as e:  # a service still starting answers with errors
            last = e
        time.sleep(pause)
    raise TimeoutError(f"{what} not ready after {timeout}s (last error: {last})")


@pytest.fixture(scope="session")
def admin(stack):
    """Admin access through the per-deployment bootstrap API key the init service generated."""
    key = stack.exec("web", "cat /var/lib/galaxy-secrets/admin_api_key").strip()
    return GalaxyInstance(stack.url, key=key)


def new_user(admin, stack):
    name = f"u{uuid.uuid4().hex[:10]}"
    user = admin.users.create_local_user(name, f"{name}@example.org", uuid.uuid4().hex)
    key = admin.users.get_or_create_user_apikey(user["id"])
    return GalaxyInstance(stack.url, key=key)


@pytest.fixture(scope="session")
def user(admin, stack):
    """A fresh ordinary user with an API key, created through the API."""
    return new_user(admin, stack)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and "stack" in item.fixturenames and call.when == "call":
        s = item.funcargs.get("stack")
        if s is not None:
            s.dump()

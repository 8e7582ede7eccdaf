"""Bring the compose stack up once per test session (pytest-docker), hand tests Galaxy clients.

The stack runs under its own compose project name and host port, so it never collides with a
stack a user is running, and is torn down with its volumes at the end. Without Docker the session
fails; it never skips. Each test sets the scale it needs (`stack.scale`); every test has a time
limit (pytest-timeout), and a test that fails or times out carries the stack's report.
"""
import collections
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
from bioblend.galaxy import GalaxyInstance

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from compose_stack import (  # noqa: E402
    TEST_COMPOSE_FILES, TEST_PROFILE, ComposeError, compose_command, free_port, prune_replaced_images,
    wait_healthy)
from helpers import (  # noqa: E402
    DEFAULT_QUOTA, JOB_LIMIT, STACK_TIMEOUT, TOOL_SHED, UPLOAD_LIMIT, create_user, docker, tear_down,
    wait_for)

# Modules in the order they change the stack: plain use first, then restarts, then scaling out,
# then a restore from backup in place of the stack.
# Galaxy alone (test_standalone) runs before the stack is up.
MODULE_ORDER = ["unit", "test_standalone", "test_foundation", "test_security", "test_front_door",
                "test_browser", "test_limits", "test_proxy", "test_celery", "test_health", "test_cluster",
                "test_scaling", "test_toolshed", "test_backup"]


def pytest_collection_modifyitems(items):
    def rank(item):
        path = item.nodeid.split("::")[0]
        return next((i for i, name in enumerate(MODULE_ORDER) if name in path), len(MODULE_ORDER))
    items.sort(key=rank)  # stable: tests keep their order inside a module


@pytest.fixture(scope="session")
def docker_compose_command():
    try:
        return " ".join(compose_command())
    except ComposeError as e:
        pytest.exit(f"end-to-end tests cannot run: {e}", returncode=3)


@pytest.fixture(scope="session")
def docker_compose_file():
    return [str(ROOT / name) for name in TEST_COMPOSE_FILES]


@pytest.fixture(scope="session")
def docker_compose_project_name():
    # SG_TEST_PROJECT: run against a stack already up under that name (while developing).
    return os.environ.get("SG_TEST_PROJECT") or f"sgtest{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def docker_setup():
    # Images only; the stack starts in `stack` below, where a failure still tears it down.
    # scripts/test builds them before pytest starts (its own phase, outside the time limits).
    if os.environ.get("SG_TEST_IMAGES_BUILT"):
        return []
    subprocess.run([str(ROOT / "scripts" / "prepare-build")], check=True)
    return [f"--profile {TEST_PROFILE} build"]


@pytest.fixture(scope="session")
def docker_cleanup():
    # The `stack` fixture tears the stack down itself (see tear_down).
    return []


# Services that run once per `up` and exit.
ONE_SHOTS = {"init", "migrate", "first-admin"}


class Stack:
    """The running stack: compose commands, its URL, and what a failing test prints."""

    def __init__(self, services, url, project):
        self.services = services
        self.url = url
        self.project = project

    def compose(self, subcommand):
        return self.services._docker_compose.execute(subcommand).decode()

    def exec(self, service, command, index=1):
        return self.compose(f"exec -T --index {index} {service} {command}")

    docker = staticmethod(docker)

    def published_services(self):
        """The services with a port published on the host."""
        ids = self.compose("ps -q").split()
        out = subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True,
                             check=True).stdout
        return {c["Config"]["Labels"]["com.docker.compose.service"] for c in json.loads(out)
                if any(c["HostConfig"].get("PortBindings") or {})}

    def addresses(self, service, network):
        """The addresses of every replica of `service` on `network` (compose's network name)."""
        ids = self.compose(f"ps -q {service}").split()
        out = subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True,
                             check=True).stdout
        return {net["IPAddress"] for c in json.loads(out)
                for name, net in c["NetworkSettings"]["Networks"].items()
                if name.endswith(f"_{network}")}

    def runs_exactly(self, replicas):
        """Every container of the project runs (one-shots: exited 0), and each service named in
        `replicas` has exactly that many containers."""
        out = self.docker(["ps", "-a", "--filter", f"label=com.docker.compose.project={self.project}",
                           "--filter", "label=com.docker.compose.oneoff=False",
                           "--format", '{{.Label "com.docker.compose.service"}} {{.Status}}'])
        containers = [line.split(" ", 1) for line in out.splitlines() if line.strip()]
        counts = collections.Counter(service for service, _ in containers)
        done = {s for s, status in containers if s in ONE_SHOTS and status.startswith("Exited (0)")}
        return (all(status.startswith("Up") or service in done for service, status in containers)
                and all(counts[service] == n for service, n in replicas.items()))

    def replicas(self, service):
        """How many replicas of `service` run."""
        return len(self.compose(f"ps -q {service}").split())

    def scale(self, web=1, runner=1, node=1, celery=1):
        """Bring the stack to exactly this scale (every service named: Compose resets the others)
        and wait until it is ready. A test calls it first, so it needs no earlier test's state."""
        want = {"web": web, "runner": runner, "node": node, "celery": celery}
        if not self.runs_exactly(want):  # else `up` would change nothing, and costs Compose ~10 s
            self.compose(" ".join(["up -d", *(f"--scale {s}={n}" for s, n in want.items())]))
        self.wait_ready()
        wait_for(lambda: self.exec("slurmctld", "sinfo -h -N -o %N").split()
                 == [f"node_{i}" for i in range(1, node + 1)], 120, f"Slurm's {node} node(s)")

    def wait_healthy(self, timeout=STACK_TIMEOUT):
        """The stack's containers healthy; the suite's Tool Shed, which its own tests wait for, aside
        (started with the stack, it must hold up neither the stack's start nor any other test)."""
        return wait_healthy(lambda: self.compose("ps -q").split(), timeout, skip_services={"toolshed"})

    def wait_ready(self):
        """Every container healthy and Galaxy answering through nginx."""
        self.wait_healthy()
        wait_for(lambda: requests.get(f"{self.url}/api/version", timeout=5).ok, 300, "Galaxy")

    def report(self):
        """Each service's state and the tail of its log."""
        return self.compose("ps -a") + "\n" + self.compose("logs --no-color --tail 60")


@pytest.fixture(scope="session")
def stack(docker_services, docker_compose_project_name, request):
    port = int(os.environ.get("SG_TEST_PORT") or free_port())
    os.environ["GALAXY_PORT"] = f"127.0.0.1:{port}"
    os.environ["GALAXY_HTTPS_PORT"] = f"127.0.0.1:{free_port()}"
    os.environ["GALAXY_URL"] = f"http://127.0.0.1:{port}"
    # Small enough that the tests can go over it quickly.
    os.environ["GALAXY_MAX_UPLOAD_SIZE"] = UPLOAD_LIMIT
    os.environ["GALAXY_DEFAULT_QUOTA"] = DEFAULT_QUOTA
    os.environ["GALAXY_USER_CONCURRENT_JOBS"] = str(JOB_LIMIT)
    os.environ["GALAXY_TOOL_SHEDS"] = f"https://toolshed.g2.bx.psu.edu/ {TOOL_SHED}/"
    s = Stack(docker_services, os.environ["GALAXY_URL"], docker_compose_project_name)
    prune_replaced_images()  # the images `build` just replaced
    started = time.monotonic()
    try:
        try:
            s.compose("up -d")
            if any("test_toolshed" in item.nodeid for item in request.session.items):
                # The suite's Tool Shed takes a minute or more to start: started with the stack, it
                # is ready when its tests come (they start it themselves too, and remove it).
                s.compose("up -d toolshed")
            s.wait_ready()
        except Exception:
            print(s.report())
            raise
        PHASES["stack up"] = time.monotonic() - started
        yield s
    finally:
        if not os.environ.get("SG_TEST_KEEP_STACK"):  # while developing: left up for the next run
            tear_down(s)


@pytest.fixture(scope="session")
def admin(stack):
    """Admin API access through the per-deployment bootstrap key the init service generated."""
    key = stack.exec("web", "cat /var/lib/galaxy-secrets/admin_api_key").strip()
    return GalaxyInstance(stack.url, key=key)


@pytest.fixture(scope="session")
def user(admin, stack):
    return create_user(admin, stack.url)


@pytest.fixture(scope="session")
def other_user(admin, stack):
    return create_user(admin, stack.url)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed end-to-end test (a timeout too) carries every service's state and log tail; a
    browser test also a screenshot (tests/test_browser.py)."""
    outcome = yield
    report = outcome.get_result()
    funcargs = getattr(item, "funcargs", {})
    stack = funcargs.get("stack")
    if report.failed and call.when in ("setup", "call") and stack is not None:
        try:
            report.sections.append(("compose services", stack.report()))
        except Exception as e:  # the report must not hide the failure it explains
            report.sections.append(("compose services", f"no report: {e!r}"))
    browser = funcargs.get("browser")
    if report.failed and call.when == "call" and browser is not None:
        try:
            report.sections.append(("browser", browser.failure_report(item.name)))
        except Exception as e:
            report.sections.append(("browser", f"no screenshot: {e!r}"))


# The time budget: how long each phase of the run took (scripts/test adds lint and build).
PHASES = {}
MODULE_TIMES = collections.defaultdict(float)
# Figures a test measured (e.g. the database's connection peak), printed at the end of the run.
FIGURES = {}


@pytest.fixture
def figure(request):
    """figure(text): a measured figure, shown under the test's name at the end of the run."""
    return lambda text: FIGURES.__setitem__(request.node.nodeid, text)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item):
    started = time.monotonic()
    yield
    MODULE_TIMES[item.nodeid.split("::")[0]] += time.monotonic() - started


def pytest_terminal_summary(terminalreporter):
    if not MODULE_TIMES:
        return
    terminalreporter.section("time per phase (a module's time includes the fixtures it starts)")
    for name, seconds in [*PHASES.items(), *MODULE_TIMES.items()]:
        terminalreporter.write_line(f"{seconds:8.0f} s  {name}")
    if FIGURES:
        terminalreporter.section("measured")
        for test, text in FIGURES.items():
            terminalreporter.write_line(f"{test}: {text}")

"""Shared by scripts/up and the test suite: run Compose (v2 plugin or v1) and wait for health.

Compose v1 has no `up --wait`, so waiting on the healthchecks is done here, the same way for both.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
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


# Images from small Dockerfiles of their own, with nothing of Galaxy's: they build while Galaxy's
# images do. Compose v1 builds one image after another; its builder, one step after another.
SIDE_SERVICES = ("postgres", "rabbitmq", "redis", "mariadb")
# The service that builds Galaxy's web image (compose.yml); the root Dockerfile's other images
# (runner, nginx, the suite's Tool Shed) are built on its stages, so after it.
WEB_IMAGE_SERVICE = "init"
# The root Dockerfile's first stages, which copy no file (Debian's packages and the images'
# metadata): they build without a context, while the wheelhouse is still being filled, into the
# cache the full build then uses.
WHEEL_FREE_STAGES = ("build-tools", "galaxy-base", "nginx-base")


def build_images(compose, prepare_build):
    """Build every image of `compose` (the command with its files and profiles), sooner than one
    `compose build` does on Compose v1, with the same result. The wheelhouse fills while the base
    image is made; then the root Dockerfile's stages that need no wheels and the side images
    build, their output in a log file (kept and named only if they fail); Galaxy's web image
    waits for the wheelhouse and those stages (a side image's failure shows once it is built);
    then the rest, together where Compose can (v1 with --parallel; v2 always does)."""
    fd, log = tempfile.mkstemp(prefix="scalable-galaxy-build-", suffix=".log")
    started, keep_log = [], False

    def start(command, **kwargs):
        # A session of its own: stopping it stops what it started too (pip, docker build).
        started.append(subprocess.Popen(command, cwd=ROOT, start_new_session=True, **kwargs))
        return started[-1]

    def wait(process, what):
        nonlocal keep_log
        if process.wait() != 0:
            keep_log = True
            tail = "".join(Path(log).read_text().splitlines(keepends=True)[-30:])
            raise ComposeError(f"{what} failed; the end of {log}:\n{tail}")

    try:
        with os.fdopen(fd, "w") as out:
            wheelhouse = start([str(prepare_build), "--no-base"])
            subprocess.run([str(prepare_build), "--no-wheels"], check=True)
            services = subprocess.run([*compose, "config", "--services"], capture_output=True,
                                      text=True, check=True, cwd=ROOT).stdout.split()
            side = [s for s in SIDE_SERVICES if s in services]
            # One target after another: the classic builder builds every stage before its target,
            # BuildKit only those the target needs.
            script = 'for target; do docker build -q --target "$target" - < Dockerfile || exit; done'
            stages = start(["sh", "-c", script, "sh", *WHEEL_FREE_STAGES], stdout=out,
                           stderr=subprocess.STDOUT)
            side_images = start([*compose, "build", *side], stdout=out,
                                stderr=subprocess.STDOUT) if side else None
            if wheelhouse.wait() != 0:
                raise ComposeError("filling the wheelhouse failed (scripts/prepare-build, above)")
            wait(stages, f"building the Dockerfile's stages {', '.join(WHEEL_FREE_STAGES)}")
            subprocess.run([*compose, "build", WEB_IMAGE_SERVICE], check=True, cwd=ROOT)
            if side_images:
                wait(side_images, f"building {', '.join(side)}")
    finally:
        for process in started:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                process.wait()
        if not keep_log:
            os.unlink(log)
    # v1 warns that --parallel "is ignored when building with COMPOSE_DOCKER_CLI_BUILD=1", yet
    # builds the services at once all the same (compose/project.py, 1.29).
    parallel = ["--parallel"] if compose[0] == "docker-compose" else []
    subprocess.run([*compose, "build", *parallel], check=True, cwd=ROOT)

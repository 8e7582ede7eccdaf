"""What the end-to-end tests share beyond fixtures: Galaxy calls through BioBlend or plain HTTP,
and the docker CLI. Imported by name (conftest.py is not: tests/unit has one of its own)."""
import os
import re
import subprocess
import time
import uuid

import requests
from bioblend.galaxy import GalaxyInstance

# Galaxy's first start (database schema, toolbox) takes minutes on 2 cores.
STACK_TIMEOUT = float(os.environ.get("SG_TEST_STACK_TIMEOUT", "900"))
# A job on 2 busy cores can wait minutes for its turn.
JOB_WAIT = 600
# GALAXY_MAX_UPLOAD_SIZE of the test stack: small enough to go over quickly.
UPLOAD_LIMIT = "64m"


def docker(command):
    """`docker <command>` (words split on spaces); its output."""
    return subprocess.run(["docker", *command.split()], capture_output=True, text=True,
                          check=True).stdout


def wait_for(check, timeout, what, pause=2.0):
    """Until check() is true; a check that raises counts as not yet (services still starting).
    The timeout's message shows check()'s last answer or error."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return
        except Exception as e:
            last = e
        time.sleep(pause)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s (last: {last!r})")


def create_user(admin, url):
    """A fresh ordinary user, created through the API, and a client holding its API key."""
    name = f"u{uuid.uuid4().hex[:10]}"
    user = admin.users.create_local_user(name, f"{name}@example.org", uuid.uuid4().hex)
    return GalaxyInstance(url, key=admin.users.get_or_create_user_apikey(user["id"]))


def upload(gi, history_id, content, file_type="txt"):
    """Paste `content` into a new dataset and wait until it is ready."""
    ds = gi.tools.paste_content(content, history_id, file_type=file_type)["outputs"][0]
    return gi.datasets.wait_for_dataset(ds["id"], maxwait=JOB_WAIT)


def run_and_wait(gi, history_id, tool_id, inputs, maxwait=JOB_WAIT):
    """Run a tool, wait for its job to end (in any state), return the job's full details."""
    job = gi.tools.run_tool(history_id, tool_id, inputs)["jobs"][0]
    return wait_for_job(gi, job["id"], maxwait)


def wait_for_job(gi, job_id, maxwait=JOB_WAIT):
    deadline = time.monotonic() + maxwait
    while time.monotonic() < deadline:
        job = gi.jobs.show_job(job_id, full_details=True)
        if job["state"] in ("ok", "error", "deleted", "failed", "skipped"):
            return job
        time.sleep(2)
    raise TimeoutError(f"job {job_id} still {job['state']} after {maxwait}s")


def log_in(url, email, password):
    """A browser-like session logged in with Galaxy's session cookie (no API key)."""
    session = requests.Session()
    session.get(f"{url}/login/start", timeout=30)  # starts the session the CSRF token belongs to
    token = session.get(f"{url}/context", timeout=30).json()["session_csrf_token"]
    r = session.post(f"{url}/user/login", timeout=30,
                     json={"login": email, "password": password, "session_csrf_token": token})
    assert r.ok, r.text
    return session


def nginx_upstreams(stack, marker):
    """The replica addresses nginx sent each logged request containing `marker` to."""
    log = stack.compose("logs --no-color nginx")
    return [m.group(1) for line in log.splitlines() if marker in line
            for m in [re.search(r"upstream=(\S+)", line)] if m]


def slurm_accounting(stack):
    """Slurm's own record of every job submitted today (sacct; finished jobs included, a requeued
    job once per run): [{"id", "name", "state", "node"}]. Galaxy names its jobs g<job id>_<tool>."""
    out = stack.exec("slurmctld", "sacct -X -D -n -P -a -S now-1days -o JobID,JobName,State,NodeList")
    keys = ("id", "name", "state", "node")
    return [dict(zip(keys, line.split("|"), strict=True)) for line in out.splitlines() if line.strip()]

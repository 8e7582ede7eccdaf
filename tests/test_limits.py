"""Limits that protect the site from one user: a disk quota, a number of jobs at once, and a
memory and process limit on every container, so a runaway job stops at its own node."""
import json
import subprocess
import uuid
from collections import Counter

import pytest

from helpers import (DEFAULT_QUOTA_BYTES, JOB_LIMIT, create_user, docker, install_site_tool,
                     upload, wait_for, wait_for_job)

pytestmark = pytest.mark.timeout(420)

# A tool of the site's own that holds a Slurm slot (sleep) or forks as many processes as it can
# up to a number (fork), then writes how many it started.
LOAD_TOOL = """<tool id="sg_load" name="Load" version="1.0.0" profile="22.05">
    <description>sleep, or fork many processes</description>
    <requirements>
        <resource type="timelimit">900</resource>
    </requirements>
    <command>python3 '$__tool_directory__/sg_load.py' '$action' '$amount' '$output'</command>
    <inputs>
        <param name="action" type="select">
            <option value="sleep">sleep (seconds)</option>
            <option value="fork">fork (processes)</option>
        </param>
        <param name="amount" type="integer" value="5" min="0"/>
    </inputs>
    <outputs>
        <data name="output" format="txt"/>
    </outputs>
</tool>
"""
LOAD_SCRIPT = """import os, signal, sys, time
action, amount, output = sys.argv[1], int(sys.argv[2]), sys.argv[3]
started = []
if action == "sleep":
    time.sleep(amount)
else:
    for _ in range(amount):
        try:
            pid = os.fork()
        except OSError:  # EAGAIN: no more processes for us
            break
        if pid == 0:
            signal.pause()
            os._exit(0)
        started.append(pid)
    for pid in started:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
with open(output, "w") as f:
    f.write(f"{len(started)}\\n")
"""
DISPATCHED = ("queued", "running")


@pytest.fixture(scope="module", autouse=True)
def one_of_each(stack):
    stack.scale(web=1, runner=1, node=1)


@pytest.fixture(scope="module")
def load_tool(stack, admin):
    install_site_tool(stack, admin, "sg_load", {"sg_load.xml": LOAD_TOOL, "sg_load.py": LOAD_SCRIPT})


def run_load(gi, history_id, action, amount):
    return gi.tools.run_tool(history_id, "sg_load", {"action": action, "amount": amount})["jobs"][0]["id"]


def test_every_user_starts_with_the_default_quota(admin):
    name = f"q{uuid.uuid4().hex[:8]}"
    account = admin.users.create_local_user(name, f"{name}@example.org", uuid.uuid4().hex)
    assert admin.users.show_user(account["id"])["quota_bytes"] == DEFAULT_QUOTA_BYTES


def test_a_user_over_quota_can_upload_nothing_more(stack, admin):
    gi = create_user(admin, stack.url)
    me = gi.users.get_current_user()
    admin.quotas.create_quota(f"small {me['username']}", "a user nearly out of space", "1KB", "=",
                              in_users=[me["id"]])
    assert admin.users.show_user(me["id"])["quota_bytes"] == 1000
    history = gi.histories.create_history("over quota")["id"]
    first = upload(gi, history, "x" * 2000 + "\n")  # usage 0 when it starts: it runs
    assert first["state"] == "ok"
    wait_for(lambda: gi.users.get_current_user()["total_disk_usage"] >= 2000, 60, "usage counted")
    second = gi.tools.paste_content("one more\n", history)
    job_id = second["jobs"][0]["id"]
    wait_for(lambda: gi.jobs.show_job(job_id)["state"] == "paused", 120, "the upload paused")
    assert gi.datasets.show_dataset(second["outputs"][0]["id"])["state"] == "paused"


@pytest.mark.parametrize("value", ["lots", "-5GB"])
def test_a_quota_that_is_no_size_stops_first_admin_naming_it(stack, value):
    image = stack.compose("images -q web").split()[0]
    run = subprocess.run(["docker", "run", "--rm", "--network", "none",
                          "-e", "GALAXY_ADMIN_EMAIL=admin@example.org",
                          "-e", f"GALAXY_DEFAULT_QUOTA={value}", image, "first-admin"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and f"GALAXY_DEFAULT_QUOTA={value!r} is malformed" in run.stderr, \
        (run.returncode, run.stderr[-500:])


def test_a_users_jobs_beyond_the_limit_wait_their_turn(stack, admin, load_tool):
    one, other = create_user(admin, stack.url), create_user(admin, stack.url)
    history = one.histories.create_history("many at once")["id"]
    jobs = [run_load(one, history, "sleep", 600) for _ in range(JOB_LIMIT + 1)]
    try:
        def states():
            return Counter("dispatched" if s in DISPATCHED else s
                           for s in (one.jobs.show_job(j)["state"] for j in jobs))
        wait_for(lambda: states()["dispatched"] == JOB_LIMIT, 300, f"{JOB_LIMIT} jobs dispatched")
        # Another user's job goes on meanwhile: the handler went past the waiting one.
        theirs = run_load(other, other.histories.create_history("mine")["id"], "sleep", 0)
        wait_for(lambda: other.jobs.show_job(theirs)["state"] in (*DISPATCHED, "ok"), 300,
                 "the other user's job dispatched")
        assert states() == {"dispatched": JOB_LIMIT, "new": 1}
        # One of theirs ends: the waiting one goes.
        one.jobs.cancel_job(jobs[0])
        wait_for(lambda: states() == {"dispatched": JOB_LIMIT, "deleted": 1}, 300,
                 "the waiting job dispatched")
    finally:
        for job_id in jobs:
            one.jobs.cancel_job(job_id)


def cgroup_limits(container):
    """The memory (bytes) and process limits the kernel applies to a container, read inside it
    (cgroup v1 or v2); None where there is none."""
    out = docker(["exec", container, "sh", "-c",
                  "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max 2>/dev/null || cat "
                  "/sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max"])
    memory, pids = out.split()
    unlimited = memory == "max" or int(memory) >= 2 ** 62  # v1 writes a huge number
    return (None if unlimited else int(memory)), (None if pids == "max" else int(pids))


def test_every_container_has_a_memory_and_process_limit(stack):
    # The running ones (the one-shots have done their work).
    services = {c["Id"]: c["Config"]["Labels"]["com.docker.compose.service"]
                for c in json.loads(docker(["inspect", *stack.compose("ps -q").split()]))
                if c["State"]["Running"]}
    ids = list(services)
    limits = {services[i]: cgroup_limits(i) for i in ids}
    assert [s for s, (memory, pids) in limits.items() if memory is None or pids is None] == []
    # A node's jobs together get what the node offers Slurm.
    node = stack.exec("slurmctld", "scontrol show node node_1")
    real_memory_mb = int(node.split("RealMemory=")[1].split()[0])
    assert limits["node"][0] == real_memory_mb * 1024 * 1024


def test_a_job_forking_without_end_stops_at_its_nodes_process_limit(stack, user, load_tool, figure):
    history = user.histories.create_history("fork bomb")["id"]
    job = wait_for_job(user, run_load(user, history, "fork", 3000))
    assert job["state"] == "ok", job
    output = next(iter(user.jobs.show_job(job["id"])["outputs"].values()))["id"]
    started = int(user.datasets.download_dataset(output).decode())
    _, node_pids = cgroup_limits(stack.compose("ps -q node").split()[0])
    figure(f"the job started {started} of the 3000 processes it asked for (node's limit {node_pids})")
    assert 100 < started < node_pids
    # The node is still there for the next job.
    after = wait_for_job(user, run_load(user, history, "sleep", 0))
    assert after["state"] == "ok"

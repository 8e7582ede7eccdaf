"""The Slurm side: per-tool destinations (TPV), compute nodes that scale, accounting that tells
why a job ended, jobs that survive restarts, and the switch to a site's own cluster."""
import base64
import os
import re
import time
from pathlib import Path

import pytest

from helpers import (JOB_WAIT, SLEEP_TOOL, container_of, install_site_tool, run_and_wait,
                     slurm_accounting, upload, wait_for_job)

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(420)


@pytest.fixture(scope="module", autouse=True)
def one_of_each(stack):
    stack.scale(web=1, runner=1, node=1)


@pytest.fixture(scope="module")
def sleep_tool(stack, admin, user):
    """sg_sleep in every web process and handler."""
    install_site_tool(stack, admin, "sg_sleep", {"sg_sleep.xml": SLEEP_TOOL})
    assert user.tools.show_tool("sg_sleep")["id"] == "sg_sleep"
    return "sg_sleep"


def sleep_jobs(gi, history_id, seconds, count):
    return [gi.tools.run_tool(history_id, "sg_sleep", {"seconds": seconds})["jobs"][0]["id"]
            for _ in range(count)]


def slurm_runs(stack, admin, job_ids):
    """For each Galaxy job: Slurm's records of the job name Galaxy gave it (one per run)."""
    external = {job_id: admin.jobs.show_job(job_id, full_details=True)["external_id"]
                for job_id in job_ids}
    records = slurm_accounting(stack, external.values())
    runs = {}
    for job_id in job_ids:
        name = next(r["name"] for r in records if r["id"] == external[job_id])
        runs[job_id] = [r for r in records if r["name"] == name]
    return runs


def test_uploads_run_in_the_handler_and_tools_on_slurm(stack, admin, user):
    history = user.histories.create_history("destinations")
    source = upload(user, history["id"], "a\tb\n", "tabular")
    upload_job = admin.jobs.show_job(user.datasets.show_dataset(source["id"])["creating_job"],
                                     full_details=True)
    metrics = {m["name"]: m["raw_value"] for m in admin.jobs.get_metrics(upload_job["id"])}
    assert metrics["hostname"].startswith(stack.exec("runner", "hostname").strip())
    job = run_and_wait(user, history["id"], "cat1", {"input1": {"src": "hda", "id": source["id"]}})
    assert job["state"] == "ok"
    details = admin.jobs.show_job(job["id"], full_details=True)
    assert re.fullmatch(r"\d+", details["external_id"])
    # TPV gave it cat1's resources from config/tpv.yml: half a GiB, one core.
    record = stack.exec("slurmctld", f"scontrol show job {details['external_id']}")
    assert "MinMemoryNode=512M" in record and "NumCPUs=1" in record


def test_nodes_scale_and_leave_cleanly(stack, user, sleep_tool):
    stack.scale(node=2)
    assert stack.exec("slurmctld", "sinfo -h -N -o %N").split() == ["node_1", "node_2"]
    history = user.histories.create_history("two nodes")
    # Four 20-second jobs on two 2-core nodes: both nodes must take some.
    jobs = [wait_for_job(user, job_id) for job_id in sleep_jobs(user, history["id"], 20, 4)]
    assert {job["state"] for job in jobs} == {"ok"}
    hosts = {user.datasets.download_dataset(job["outputs"]["output"]["id"]).decode().strip()
             for job in jobs}
    assert hosts == {stack.exec("node", "hostname", index=i).strip() for i in (1, 2)}
    # Scaling down: the node drains, leaves, and Slurm forgets it.
    stack.compose("up -d --scale node=1")
    assert stack.exec("slurmctld", "sinfo -h -N -o %N").split() == ["node_1"]


def test_job_over_its_time_limit_ends_with_a_clear_message(stack, admin, user, sleep_tool):
    history = user.histories.create_history("timeout")
    # sg_sleep declares a 60 s time limit; Slurm ends the job after that.
    job = wait_for_job(user, sleep_jobs(user, history["id"], 300, 1)[0])
    assert job["state"] == "error"
    # What the user sees on the output in the history: Galaxy's message for Slurm's TIMEOUT.
    output = user.datasets.show_dataset(job["outputs"]["output"]["id"])
    assert "ran longer than the maximum allowed job run time" in output["misc_info"]
    details = admin.jobs.show_job(job["id"], full_details=True)
    record = stack.exec("slurmctld", f"sacct -X -n -P -j {details['external_id']} -o State")
    assert record.strip() == "TIMEOUT"


@pytest.mark.parametrize("service", ["runner", "slurmctld"])
def test_jobs_survive_a_restart(stack, admin, user, sleep_tool, service):
    """runner: the handler comes back under its stable name and picks up its jobs; slurmctld:
    its state directory is a volume. Either way every job ends ok, and ran on Slurm once."""
    history = user.histories.create_history(f"{service} restart")
    # More 30-second jobs than the node has cores: some run, some wait in Slurm's queue.
    job_ids = sleep_jobs(user, history["id"], 30, 4)
    wait_until_on_slurm(admin, job_ids)
    stack.compose(f"restart {service}")
    jobs = [wait_for_job(user, job_id) for job_id in job_ids]
    assert [job["state"] for job in jobs] == ["ok"] * len(jobs)
    runs = slurm_runs(stack, admin, job_ids)
    assert all(len(r) == 1 and r[0]["state"] == "COMPLETED" for r in runs.values()), runs


@pytest.mark.timeout(600)
def test_job_on_a_killed_node_is_requeued_and_completes(stack, admin, user, sleep_tool):
    stack.scale(node=2)
    history = user.histories.create_history("node killed")
    # Short enough that a rerun (tool and metadata) fits sg_sleep's 60 s limit.
    job_id = sleep_jobs(user, history["id"], 25, 1)[0]
    wait_until_on_slurm(admin, [job_id])
    external = admin.jobs.show_job(job_id, full_details=True)["external_id"]
    record = stack.exec("slurmctld", f"scontrol show job {external}")
    node = re.search(r"\bNodeList=(node_\d+)", record).group(1)
    # The node dies and stays dead: Slurm must notice by itself (SlurmdTimeout: the node stops
    # answering), fail the job's run there and requeue it onto the other node.
    killed = container_of(stack, "node", int(node.split("_")[1]))
    stack.docker(f"kill {killed}")
    try:
        job = wait_for_job(user, job_id)
        runs = slurm_runs(stack, admin, [job_id])[job_id]
        assert job["state"] == "ok", job
        assert len(runs) == 2, runs
        assert runs[0]["node"] == node and runs[0]["state"] == "NODE_FAIL", runs
        assert runs[1]["node"] != node and runs[1]["state"] == "COMPLETED", runs
        # Still dead: the requeue was Slurm's doing, not the node coming back.
        assert stack.docker(f"inspect -f {{{{.State.Running}}}} {killed}").strip() == "false"
    finally:
        stack.scale(node=2)  # the killed node comes back and registers again


def wait_until_on_slurm(admin, job_ids, maxwait=JOB_WAIT):
    """Until every job is in Slurm's hands (queued there or running) and one of them runs."""
    deadline = time.monotonic() + maxwait
    while True:
        jobs = [admin.jobs.show_job(j, full_details=True) for j in job_ids]
        if all(job["external_id"] for job in jobs) and "running" in {j["state"] for j in jobs}:
            return
        assert time.monotonic() < deadline, "jobs did not reach Slurm"
        time.sleep(1)


def test_handler_can_use_a_sites_own_cluster(stack, user, tmp_path):
    """The external-cluster switch, with the bundled controller standing in for a site's."""
    site = tmp_path / "slurm-site"
    site.mkdir()
    (site / "slurm.conf").write_text(stack.exec("slurmctld", "cat /etc/slurm/slurm.conf"))
    key = base64.b64decode(stack.exec("slurmctld", "base64 -w0 /etc/munge/munge.key"))
    (site / "munge.key").write_bytes(key)
    # The stack's files plus the switch: the bundled controller stays up, as "the site's".
    os.environ["SLURM_SITE_DIR"] = str(site)
    try:
        stack.compose(f"-f {ROOT / 'compose.external-slurm.yml'} up -d --no-deps runner")
        stack.wait_healthy()
        # The handler authenticates with the site's key, and the bundled slurm.conf is hidden:
        # only the site's can be in use.
        assert "--key-file=/run/munge/site-munge.key" in stack.exec("runner", "ps -o args= -C munged")
        assert stack.exec("runner", "ls -A /etc/slurm").strip() == ""
        history = user.histories.create_history("site cluster")
        source = upload(user, history["id"], "site\n")
        job = run_and_wait(user, history["id"], "cat1",
                           {"input1": {"src": "hda", "id": source["id"]}})
        assert job["state"] == "ok"
        assert "submitting to the site's Slurm cluster" in stack.compose("logs --no-color runner")
    finally:
        del os.environ["SLURM_SITE_DIR"]
        stack.compose("up -d --no-deps runner")
        stack.wait_healthy()

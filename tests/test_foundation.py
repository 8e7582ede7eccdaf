"""End to end through nginx: users, histories, uploads, a job on a Slurm node, downloads,
failures, persistence across `down` + `up`."""
import re

import pytest
import requests
from bioblend import ConnectionError as GalaxyError

from helpers import JOB_WAIT, upload


def test_galaxy_answers_through_nginx(stack):
    r = requests.get(f"{stack.url}/api/version", timeout=10)
    assert r.json()["version_major"] == "26.1"
    # nginx answers, and it alone publishes a port.
    assert r.headers["Server"] == "nginx"
    assert stack.published_services() == {"nginx"}


def test_forwarded_headers_come_from_nginx_not_the_client(stack, user):
    # Galaxy builds absolute URLs (here: a TUS upload's Location) from X-Forwarded-Host; nginx
    # must overwrite what a client sends, or anyone could make Galaxy point links elsewhere.
    r = requests.post(f"{stack.url}/api/upload/resumable_upload/",
                      headers={"Tus-Resumable": "1.0.0", "Upload-Length": "5",
                               "x-api-key": user.key, "X-Forwarded-Host": "evil.example"},
                      timeout=10)
    location = r.headers.get("Location", "")
    assert location, (r.status_code, r.text)
    assert "evil.example" not in location
    assert location.startswith(stack.url), location


def test_upload_run_on_slurm_and_download(stack, admin, user):
    history = user.histories.create_history("foundation")
    content = "chr1\t100\t200\nchr2\t300\t400\n"
    source = upload(user, history["id"], content, "tabular")
    assert source["state"] == "ok"

    run = user.tools.run_tool(history["id"], "cat1", {"input1": {"src": "hda", "id": source["id"]}})
    output, job = run["outputs"][0], run["jobs"][0]
    assert user.datasets.wait_for_dataset(output["id"], maxwait=JOB_WAIT)["state"] == "ok"

    # Bytes through nginx are the bytes uploaded.
    assert user.datasets.download_dataset(output["id"]) == content.encode()

    # It ran on a Slurm compute node: Galaxy recorded Slurm's job id, and the host it ran on is
    # a node container, named in Slurm's own record of that job.
    details = admin.jobs.show_job(job["id"], full_details=True)
    slurm_id = details["external_id"]
    assert re.fullmatch(r"\d+", slurm_id), details
    record = stack.exec("slurmctld", f"scontrol show job {slurm_id}")
    node = re.search(r"\bNodeList=(\S+)", record).group(1)
    assert node.startswith("node_"), record
    assert "JobState=COMPLETED" in record
    metrics = {m["name"]: m["raw_value"] for m in admin.jobs.get_metrics(job["id"])}
    index = node.split("_")[1]
    assert metrics["hostname"] == stack.exec("node", "hostname", index=index).strip()


def test_web_runs_no_jobs(stack):
    # With job_conf's handling section web processes never become handlers or load runners;
    # the handler, attached to the pool, does.
    loads_runners = "will load all configured runner plugins"
    assert loads_runners not in stack.compose("logs --no-color web")
    assert f"Handler 'handler_1' {loads_runners}" in stack.compose("logs --no-color runner")


def test_failing_tool_ends_in_error_with_stderr(stack, user):
    history = user.histories.create_history("failure")
    source = upload(user, history["id"], "1\t2\n3\t4\n", "tabular")
    # Filter on column 5 of a two-column table: the tool's script raises IndexError.
    run = user.tools.run_tool(history["id"], "Filter1",
                              {"input": {"src": "hda", "id": source["id"]}, "cond": "c5>1"})
    output, job = run["outputs"][0], run["jobs"][0]
    with pytest.raises(Exception, match="error"):
        user.datasets.wait_for_dataset(output["id"], maxwait=JOB_WAIT)
    details = user.jobs.show_job(job["id"], full_details=True)
    assert details["state"] == "error"
    assert "IndexError" in details["tool_stderr"]


def test_user_cannot_read_another_users_dataset(user, other_user):
    history = user.histories.create_history("private")
    source = upload(user, history["id"], "private\n")
    with pytest.raises(GalaxyError):
        other_user.datasets.download_dataset(source["id"])


def test_data_survives_down_and_up(stack, user):
    """Last in this module on purpose: it restarts the whole stack (volumes kept)."""
    history = user.histories.create_history("persistent")
    source = upload(user, history["id"], "kept across restarts\n")
    stack.compose("down --timeout 30")
    stack.compose("up -d")
    stack.wait_ready()
    assert user.histories.show_history(history["id"])["name"] == "persistent"
    assert user.datasets.download_dataset(source["id"]) == b"kept across restarts\n"

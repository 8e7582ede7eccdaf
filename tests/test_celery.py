"""Galaxy's background tasks (Celery workers, RabbitMQ, Redis), used as a user would: through nginx,
with the features that need a task — downloads prepared in short-term storage and sent by nginx,
imports, hashes, page PDFs, purges — and what happens when a worker or the broker goes away."""
import base64
import hashlib
import io
import json
import re
import subprocess
import tarfile
import time
import uuid
import zipfile
import zlib

import pytest
import requests

from helpers import JOB_WAIT, cat_workflow, install_site_tool, upload, wait_for, wait_for_job

pytestmark = pytest.mark.timeout(600)

# A task a worker picks up at once finishes in seconds; allow for a busy 2-core machine.
TASK_WAIT = 180


def api(gi, method, path, **kwargs):
    """A call through nginx with the user's key; the response, whatever its status."""
    return requests.request(method, f"{gi.base_url}/api/{path}", timeout=60,
                            headers={"x-api-key": gi.key}, **kwargs)


def download_prepared(gi, path, body=None):
    """POST `path` (a prepare_*download endpoint), wait until the worker has written the file to
    short-term storage, download it. Returns (response, seconds until ready)."""
    r = api(gi, "POST", path, json=body or {})
    assert r.status_code == 200, r.text
    request_id = r.json()["storage_request_id"]
    started = time.monotonic()
    wait_for(lambda: api(gi, "GET", f"short_term_storage/{request_id}/ready").json() is True,
             TASK_WAIT, f"the download prepared by {path}")
    ready = time.monotonic() - started
    r = api(gi, "GET", f"short_term_storage/{request_id}")
    assert r.status_code == 200, r.text[:300]
    return r, ready


def wait_for_task(gi, task_id):
    """A task's final state as Galaxy reports it (its result backend is Redis)."""
    states = []
    wait_for(lambda: states.append(api(gi, "GET", f"tasks/{task_id}/state").json())
             or states[-1] in ("SUCCESS", "FAILURE"), TASK_WAIT, f"task {task_id}")
    return states[-1]


def test_a_history_exports_downloads_and_imports_back(stack, user, figure):
    stack.scale()
    history = user.histories.create_history("export me")
    texts = {"a.txt": "alpha\n" * 100, "b.tsv": "1\t2\n3\t4\n"}
    for name, text in texts.items():
        ds = upload(user, history["id"], text, file_type=name.split(".")[1])
        user.histories.update_dataset(history["id"], ds["id"], name=name)
    r, ready = download_prepared(user, f"histories/{history['id']}/prepare_store_download",
                                 {"model_store_format": "tar.gz"})
    figure(f"history archive ready {ready:.1f} s after the request")
    # Sent by nginx from short-term storage: nginx keeps X-Accel-Redirect to itself.
    assert "x-accel-redirect" not in {h.lower() for h in r.headers}
    archive = r.content
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        files = [tar.extractfile(m).read() for m in tar.getmembers() if m.name.startswith("datasets/")]
    assert sorted(files) == sorted(t.encode() for t in texts.values())

    # Back in as a new history, from the archive itself (a task too).
    before = {h["id"] for h in user.histories.get_histories()}
    r = api(user, "POST", "histories/from_store_async", json={
        "store_content_uri": "base64://" + base64.b64encode(archive).decode(),
        "model_store_format": "tar.gz"})
    assert r.status_code == 200, r.text
    assert wait_for_task(user, r.json()["id"]) == "SUCCESS"
    new = [h for h in user.histories.get_histories() if h["id"] not in before]
    assert len(new) == 1, new
    contents = user.histories.show_history(new[0]["id"], contents=True, details="all")
    got = {c["name"]: user.datasets.download_dataset(c["id"]) for c in contents}
    assert got == {name: text.encode() for name, text in texts.items()}


def test_a_collection_downloads_as_a_zip(stack, user):
    stack.scale()
    history = user.histories.create_history("zip me")
    texts = {"one": "first\n", "two": "second\n" * 50}
    elements = [{"name": name, "src": "hda",
                 "id": upload(user, history["id"], text)["id"]} for name, text in texts.items()]
    hdca = user.histories.create_dataset_collection(history["id"], {
        "collection_type": "list", "name": "pair of texts", "element_identifiers": elements})
    r, _ = download_prepared(user, f"dataset_collections/{hdca['id']}/prepare_download")
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        members = {name.rsplit("/", 1)[-1].rsplit(".", 1)[0]: z.read(name) for name in z.namelist()}
    assert members == {name: text.encode() for name, text in texts.items()}


def test_a_workflow_invocation_exports_as_an_ro_crate(stack, user):
    stack.scale()
    name = f"crate {uuid.uuid4().hex[:6]}"
    workflow = user.workflows.import_workflow_dict(cat_workflow(name))
    history = user.histories.create_history("invoke me")
    text = upload(user, history["id"], "to be copied\n")
    invocation = user.workflows.invoke_workflow(
        workflow["id"], inputs={"0": {"src": "hda", "id": text["id"]}}, history_id=history["id"])
    user.invocations.wait_for_invocation(invocation["id"], maxwait=JOB_WAIT)
    for step in user.invocations.show_invocation(invocation["id"])["steps"]:
        if step["job_id"]:
            assert wait_for_job(user, step["job_id"])["state"] == "ok"
    r, _ = download_prepared(user, f"invocations/{invocation['id']}/prepare_store_download",
                             {"model_store_format": "rocrate.zip"})
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        crate = json.loads(z.read("ro-crate-metadata.json"))
        datasets = [z.read(n) for n in z.namelist()
                    if n.startswith("datasets/") and not n.endswith("/")]
    graph = crate["@graph"]
    workflows = [e for e in graph if "ComputationalWorkflow" in str(e.get("@type"))]
    # The workflow itself (Galaxy's format) among its renderings (Galaxy's .html, format2, …).
    assert name in [w.get("name") for w in workflows], workflows
    # The input and cat1's copy of it.
    assert datasets == [b"to be copied\n"] * 2, datasets


def test_a_dataset_hash_is_the_sha256_of_its_bytes(stack, user):
    stack.scale()
    history = user.histories.create_history("hash me")
    ds = upload(user, history["id"], uuid.uuid4().hex * 1000)
    expected = hashlib.sha256(user.datasets.download_dataset(ds["id"])).hexdigest()
    r = api(user, "PUT", f"datasets/{ds['id']}/hash", json={"hash_function": "SHA-256"})
    assert r.status_code == 200, r.text
    assert wait_for_task(user, r.json()["id"]) == "SUCCESS"
    hashes = user.datasets.show_dataset(ds["id"])["hashes"]
    assert [(h["hash_function"], h["hash_value"]) for h in hashes] == [("SHA-256", expected)]


def test_a_page_exports_as_pdf(stack, user):
    stack.scale()
    slug = f"p{uuid.uuid4().hex[:8]}"
    r = api(user, "POST", "pages", json={
        "slug": slug, "title": "Report", "content_format": "markdown",
        "content": "# Results\n\nThe run went well.\n"})
    assert r.status_code == 200, r.text
    r, _ = download_prepared(user, f"pages/{r.json()['id']}/prepare_download")
    assert r.headers["content-type"] == "application/pdf"
    assert r.content.startswith(b"%PDF-") and r.content.rstrip().endswith(b"%%EOF")
    # A page object, in the clear or in one of the compressed object streams.
    streams = [zlib.decompress(m) for m in re.findall(rb"stream\r?\n(.*?)\r?\nendstream",
                                                      r.content, re.S) if m[:1] == b"x"]
    assert re.search(rb"/Type\s*/Page\b", b"".join([r.content, *streams]))


def test_purging_a_history_frees_its_files(stack, user, admin):
    stack.scale()
    history = user.histories.create_history("purge me")
    ds = upload(user, history["id"], "to be purged\n" * 1000)
    path = admin.datasets.show_dataset(ds["id"])["file_name"]
    stack.exec("web", f"test -f {path}")
    r = api(user, "DELETE", f"histories/{history['id']}", json={"purge": True})
    assert r.status_code == 200, r.text

    def gone():
        return stack.compose(f"exec -T web sh -c 'test -e {path} || echo gone'").strip() == "gone"
    wait_for(gone, TASK_WAIT, f"{path} removed")
    assert user.datasets.show_dataset(ds["id"])["purged"] is True


@pytest.mark.parametrize("service", ["rabbitmq", "redis"])
def test_with_a_task_server_down_tasks_fail_fast_and_work_again_once_it_is_back(stack, user,
                                                                                service):
    """The broker (rabbitmq) or the result store (redis) stopped: a request that needs a task
    fails at once with 503 naming it, one that needs none works; once it is back, the same
    request works, with no restart of anything else."""
    stack.scale()
    history = user.histories.create_history(f"{service} down")
    ds = upload(user, history["id"], "hash me later\n")
    stack.compose(f"stop {service}")
    try:
        assert api(user, "GET", f"histories/{history['id']}/contents").status_code == 200
        started = time.monotonic()
        r = api(user, "PUT", f"datasets/{ds['id']}/hash", json={"hash_function": "SHA-256"})
        took = time.monotonic() - started
        assert r.status_code == 503, r.text
        assert f"the {service} service" in r.json()["err_msg"], r.text
        assert r.headers["retry-after"] == "30" and took < 20, took
    finally:
        stack.compose(f"start {service}")
    stack.wait_ready()
    r = api(user, "PUT", f"datasets/{ds['id']}/hash", json={"hash_function": "SHA-256"})
    assert r.status_code == 200, r.text
    assert wait_for_task(user, r.json()["id"]) == "SUCCESS"


# What a worker logs when it has set a job's metadata (a failure logs "execution failed").
METADATA_DONE = "Successfully executed Celery task set_job_metadata"


def cat1_job(gi, history_id, dataset_id):
    return gi.tools.run_tool(history_id, "cat1",
                             {"input1": {"src": "hda", "id": dataset_id}})["jobs"][0]["id"]


def test_a_cluster_jobs_metadata_is_set_by_a_worker_not_in_the_job(stack, user, admin):
    """The Slurm job script no longer starts Galaxy's Python to set metadata (Slurm keeps a copy
    of each batch script); the output's metadata is set all the same, by a Celery task."""
    stack.scale()
    history = user.histories.create_history("warm metadata")
    source = upload(user, history["id"], "chr1\t100\t200\nchr2\t300\t400\n", file_type="tabular")
    tasks = stack.compose("logs --no-color celery").count(METADATA_DONE)
    job = wait_for_job(user, cat1_job(user, history["id"], source["id"]))
    assert job["state"] == "ok", job
    output = user.datasets.show_dataset(job["outputs"]["out_file1"]["id"])
    assert (output["metadata_columns"], output["metadata_data_lines"]) == (3, 2), output
    slurm_id = admin.jobs.show_job(job["id"], full_details=True)["external_id"]
    script = stack.exec("slurmctld", f"scontrol write batch_script {slurm_id} -")
    assert "tool_script.sh" in script  # the job's script, as Slurm ran it
    assert "metadata/set.py" not in script
    # Nor asks Slurm for its memory (the job has no munge credential): TPV tells it.
    metrics = {m["name"]: m["raw_value"] for m in admin.jobs.get_metrics(job["id"])}
    assert float(metrics["galaxy_memory_mb"]) == 512  # cat1's 0.5 GB in config/tpv.yml
    assert stack.compose("logs --no-color celery").count(METADATA_DONE) > tasks


def worker_log(container):
    """Everything a container has logged (Celery logs to stderr), across its restarts."""
    out = subprocess.run(["docker", "logs", container], capture_output=True, text=True, check=True)
    return out.stdout + out.stderr


def test_a_worker_killed_mid_task_leaves_no_job_stuck(stack, user, tmp_path):
    """The worker dies while it sets a finished job's metadata: the task was not acknowledged, so
    the restarted worker gets it again and the job ends ok."""
    stack.scale()
    history = user.histories.create_history("worker killed")
    # Enough lines (5 MB, a file upload) that setting the metadata takes the worker a moment.
    rows = tmp_path / "rows.tsv"
    rows.write_text("".join(f"chr{i % 22 + 1}\t{i}\t{i + 100}\tfeature{i}\n" for i in range(200_000)))
    source = user.tools.upload_file(str(rows), history["id"], file_type="tabular")["outputs"][0]
    user.datasets.wait_for_dataset(source["id"], maxwait=JOB_WAIT)
    worker = stack.compose("ps -q celery").split()[0]

    def tasks(event):
        """Ids of the metadata tasks the worker logged `event` (received, succeeded) for."""
        return re.findall(rf"galaxy\.set_job_metadata\[([0-9a-f-]+)\] {event}", worker_log(worker))
    for _ in range(3):
        seen = set(tasks("received"))  # a task delivered again later is not this job's
        job_id = cat1_job(user, history["id"], source["id"])
        wait_for(lambda s=seen: set(tasks("received")) - s, JOB_WAIT, "the metadata task", pause=0.2)
        task_id = (set(tasks("received")) - seen).pop()
        stack.exec("celery", "pkill -KILL -f 'celery --app galaxy.celery worker'")
        done_before = task_id in tasks("succeeded")  # read after the kill
        job = wait_for_job(user, job_id)
        assert job["state"] == "ok", job
        if not done_before:
            # Delivered again to the restarted worker, which set the metadata while the job
            # waited (the job's directory was still there for it).
            assert tasks("received").count(task_id) >= 2 and task_id in tasks("succeeded")
            break
    else:
        pytest.fail("every time, the task was done before the worker died")
    output = user.datasets.show_dataset(job["outputs"]["out_file1"]["id"])
    assert output["metadata_column_types"] == ["str", "int", "int", "str"], output
    stack.wait_ready()  # the worker is back, healthy


def test_a_jobs_galaxy_json_cannot_lead_the_worker_outside_its_directory(stack, admin, user):
    """A job's galaxy.json (provided metadata, legacy style) names files for the metadata step,
    which Galaxy joins to the job's directory unchecked, and which now runs as Galaxy's user in a
    worker. A job naming the site's tool list (with a datatype that rewrites its file), a way up
    and out, and an endless device gets no metadata task: the handler sets its output's metadata
    from its own list, the files are untouched, and the job ends ok."""
    stack.scale()
    target = "/srv/galaxy/config/local_tool_conf.xml"
    entries = [{"type": "new_primary_dataset", "filename": target, "ext": "velvet"},
               {"type": "new_primary_dataset", "filename": f"../../../../../..{target}", "ext": "velvet"},
               {"type": "new_primary_dataset", "filename": "/dev/urandom", "ext": "txt"}]
    lines = " ".join(f"'{json.dumps(e)}'" for e in entries)  # one shell word per line
    # No profile: Galaxy reads galaxy.json in the legacy style, one JSON object per line (and
    # joins the command's lines into one).
    tool_id = f"sg_provided_{uuid.uuid4().hex[:6]}"  # new each run: Galaxy caches tools by id
    tool = f"""<tool id="{tool_id}" name="Provided" version="1.0.0">
    <command><![CDATA[
printf '%s\\n' {lines} > galaxy.json &&
printf 'a\\tb\\n' > '$out'
    ]]></command>
    <inputs/>
    <outputs><data name="out" format="tabular"/></outputs>
</tool>
"""
    install_site_tool(stack, admin, tool_id, {f"{tool_id}.xml": tool})
    before = stack.exec("web", f"sha256sum {target}")
    history = user.histories.create_history("provided metadata")
    job = wait_for_job(user, user.tools.run_tool(history["id"], tool_id, {})["jobs"][0]["id"])
    assert job["state"] == "ok", job
    assert stack.exec("web", f"sha256sum {target}") == before
    output = user.datasets.show_dataset(job["outputs"]["out"]["id"])
    assert output["metadata_columns"] == 2, output  # set by the handler
    refused = "names /srv/galaxy/config/local_tool_conf.xml, ../../../../../../srv/galaxy/config"
    assert refused in stack.compose("logs --no-color runner")

"""Scale out live: web replicas behind nginx (no reload), several job handlers sharing the work."""
import collections
import os
import re
import uuid

import requests

from test_foundation import JOB_WAIT, upload

WEB_REPLICAS = 4
HANDLERS = 3
JOBS = 30


def upstreams(stack, marker):
    """The replica addresses nginx sent each logged request containing `marker` to."""
    log = stack.compose("logs --no-color nginx")
    return [m.group(1) for line in log.splitlines() if marker in line
            for m in [re.search(r"upstream=(\S+)", line)] if m]


def test_scaled_web_replicas_all_serve_requests(stack):
    stack.compose(f"up -d --scale web={WEB_REPLICAS}")
    stack.wait_ready()
    web_ips = stack.addresses("web")
    assert len(web_ips) == WEB_REPLICAS
    # Docker's DNS has the new replicas at once; nginx re-resolves every 5 s, without a reload.
    marker = f"spread-{uuid.uuid4().hex[:8]}"
    for i in range(300):
        assert requests.get(f"{stack.url}/api/version?{marker}={i}", timeout=30).ok
    served = collections.Counter(addr.split(":")[0] for addr in upstreams(stack, marker))
    assert set(served) == set(web_ips), served


def test_tus_upload_in_chunks_across_replicas(stack, user, tmp_path):
    assert len(stack.addresses("web")) >= 2
    data = os.urandom(1 << 20)
    path = tmp_path / "random.bin"
    path.write_bytes(data)
    history = user.histories.create_history("tus")
    out = user.tools.upload_file(str(path), history["id"], file_type="binary",
                                 chunk_size=64 * 1024)
    dataset = user.datasets.wait_for_dataset(out["outputs"][0]["id"], maxwait=JOB_WAIT)
    assert dataset["state"] == "ok"
    assert user.datasets.download_dataset(dataset["id"]) == data
    patches = [line for line in stack.compose("logs --no-color nginx").splitlines()
               if '"PATCH /api/upload/resumable_upload/' in line and "upstream=" in line]
    assert len(patches) >= 16
    chunk_servers = {re.search(r"upstream=(\S+)", line).group(1) for line in patches}
    assert len(chunk_servers) >= 2, chunk_servers


def test_jobs_are_shared_by_handlers_and_run_once(stack, admin, user):
    stack.compose(f"up -d --scale runner={HANDLERS}")
    stack.wait_ready()
    history = user.histories.create_history("many jobs")
    source = upload(user, history["id"], "a\tb\n")
    runs = [user.tools.run_tool(history["id"], "cat1",
                                {"input1": {"src": "hda", "id": source["id"]}})
            for _ in range(JOBS)]
    for run in runs:
        state = user.datasets.wait_for_dataset(run["outputs"][0]["id"], maxwait=JOB_WAIT)
        assert state["state"] == "ok"
    jobs = [admin.jobs.show_job(run["jobs"][0]["id"], full_details=True) for run in runs]
    # Exactly one Slurm job per Galaxy job: Slurm's own list agrees with Galaxy's record.
    slurm_ids = [job["external_id"] for job in jobs]
    assert len(set(slurm_ids)) == JOBS
    listed = stack.exec("slurmctld", "squeue -h -t all -o '%i|%j'").split()
    name_of = dict(line.split("|", 1) for line in listed)  # every Slurm job it still knows
    submissions = collections.Counter(name_of.values())  # job name: g<Galaxy job id>_<tool>
    for slurm_id in slurm_ids:
        assert submissions[name_of[slurm_id]] == 1, (slurm_id, name_of[slurm_id])
    # Every handler took some: the handler column of Galaxy's job table (the API hides it).
    galaxy_ids = [re.match(r"g(\d+)_", name_of[s]).group(1) for s in slurm_ids]
    query = f"select handler from job where id in ({','.join(galaxy_ids)})"
    rows = stack.exec("postgres", f'psql -U galaxy -d galaxy -At -c "{query}"').split()
    handlers = collections.Counter(rows)
    assert sum(handlers.values()) == JOBS
    assert set(handlers) == {f"handler_{i}" for i in range(1, HANDLERS + 1)}, handlers

"""Galaxy out of the box: the web image run by itself is one Galaxy process with SQLite that runs
its jobs with the local runner. Runs before the stack comes up, so it has the cores to itself."""
import pytest
from bioblend.galaxy import GalaxyInstance

from galaxy_alone import GalaxyAlone
from helpers import STACK_TIMEOUT, create_user, docker, run_and_wait, upload


@pytest.fixture(scope="module")
def alone(docker_services):  # docker_services: the images are built; the stack is not started
    with GalaxyAlone(timeout=STACK_TIMEOUT) as galaxy:
        yield galaxy


def test_galaxy_alone_runs_jobs_in_its_one_process(alone):
    admin = GalaxyInstance(alone.url, key=alone.admin)
    user = create_user(admin, alone.url)
    history = user.histories.create_history("alone")
    content = "chr1\t100\t200\n"
    source = upload(user, history["id"], content, "tabular")
    job = run_and_wait(user, history["id"], "cat1", {"input1": {"src": "hda", "id": source["id"]}})
    assert job["state"] == "ok", job
    assert user.datasets.download_dataset(job["outputs"]["out_file1"]["id"]) == content.encode()

    # The job ran here, in this container (the local runner), not on some cluster.
    metrics = {m["name"]: m["raw_value"] for m in admin.jobs.get_metrics(job["id"])}
    assert metrics["hostname"] == docker(f"exec {alone.name} hostname").strip()
    # SQLite on the data volume, one gunicorn worker beside its master, nothing else serving.
    docker(f"exec {alone.name} test -s /srv/galaxy/universe.sqlite")
    processes = docker(f"exec {alone.name} ps -eo args").splitlines()
    assert len([p for p in processes if "gunicorn" in p]) == 2, processes

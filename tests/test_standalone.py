"""Galaxy out of the box: the web image run by itself is one Galaxy process with SQLite that runs
its jobs with the local runner. Runs before the stack comes up, so it has the cores to itself."""
import subprocess
import uuid

import pytest
import requests
from bioblend.galaxy import GalaxyInstance

from compose_stack import free_port
from conftest import STACK_TIMEOUT, create_user, wait_for
from helpers import run_and_wait, upload

IMAGE = "scalable-galaxy-web:dev"


def docker(*args):
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def alone(docker_services):  # docker_services: the images are built; the stack is not started
    name, port, key = f"sgtest-alone-{uuid.uuid4().hex[:8]}", free_port(), uuid.uuid4().hex
    docker("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8080",
           "-e", f"GALAXY_CONFIG_OVERRIDE_BOOTSTRAP_ADMIN_API_KEY={key}", IMAGE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: requests.get(f"{url}/api/version", timeout=5).ok, STACK_TIMEOUT,
                 "Galaxy alone")
        yield name, url, GalaxyInstance(url, key=key)
    except Exception:
        print(subprocess.run(["docker", "logs", "--tail", "80", name], capture_output=True,
                             text=True).stderr)
        raise
    finally:
        subprocess.run(["docker", "rm", "-f", "-v", name], capture_output=True)


def test_galaxy_alone_runs_jobs_in_its_one_process(alone):
    name, url, admin = alone
    user = create_user(admin, url)
    history = user.histories.create_history("alone")
    content = "chr1\t100\t200\n"
    source = upload(user, history["id"], content, "tabular")
    job = run_and_wait(user, history["id"], "cat1", {"input1": {"src": "hda", "id": source["id"]}})
    assert job["state"] == "ok", job
    assert user.datasets.download_dataset(job["outputs"]["out_file1"]["id"]) == content.encode()

    # The job ran here, in this container (the local runner), not on some cluster.
    metrics = {m["name"]: m["raw_value"] for m in admin.jobs.get_metrics(job["id"])}
    assert metrics["hostname"] == docker("exec", name, "hostname").strip()
    # SQLite on the data volume, one gunicorn worker beside its master, nothing else serving.
    docker("exec", name, "test", "-s", "/srv/galaxy/universe.sqlite")
    processes = docker("exec", name, "ps", "-eo", "args").splitlines()
    assert len([p for p in processes if "gunicorn" in p]) == 2, processes

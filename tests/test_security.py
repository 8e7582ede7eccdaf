"""An attacker's job: a site tool, run by an ordinary user on a Slurm node, tries to take the
server over (tests/job_probe.py). Every attempt must fail, and the job itself still ends ok."""
import json
import subprocess
import uuid
from pathlib import Path

import pytest

from helpers import SITE_TOOLS, install_site_tool, upload, wait_for, wait_for_job

PROBE_TOOL = """<tool id="sg_probe" name="Probe" version="1.0.0" profile="22.05">
    <description>what a job can reach</description>
    <command>python3 '$__tool_directory__/sg_probe.py' '$targets' '$output'</command>
    <inputs>
        <param name="targets" type="data" format="txt"/>
    </inputs>
    <outputs>
        <data name="output" format="txt"/>
    </outputs>
</tool>
"""
GALAXY_JOB_UID = 1451
ENTRYPOINT_LIB = "/usr/local/lib/galaxy-entrypoint"

pytestmark = pytest.mark.timeout(420)


@pytest.fixture(scope="module", autouse=True)
def one_of_each(stack):
    stack.scale(web=1, runner=1, node=1)


@pytest.fixture(scope="module")
def probe_tool(stack, admin):
    probe = (Path(__file__).parent / "job_probe.py").read_text()
    install_site_tool(stack, admin, "sg_probe", {"sg_probe.xml": PROBE_TOOL, "sg_probe.py": probe})


def run_probe(gi, history_id, targets):
    """Start the probe with these targets; its Galaxy job id."""
    source = upload(gi, history_id, json.dumps(targets))
    return gi.tools.run_tool(history_id, "sg_probe",
                             {"targets": {"src": "hda", "id": source["id"]}})["jobs"][0]["id"]


def wait_running(gi, job_id):
    wait_for(lambda: gi.jobs.show_job(job_id)["state"] == "running", 300, f"job {job_id} running")


NOTHING = {"read": [], "write": [], "connect": [], "commands": {}, "watch_seconds": 0}


@pytest.fixture(scope="module")
def attack(stack, admin, user, other_user, probe_tool):
    """The probe's report, the probe's job, the other user's job it tried to cancel, and what a
    job must not learn: the value of every secret."""
    secret_files = stack.exec("web", f"python3 -c 'import sys; sys.path.insert(0, \"{ENTRYPOINT_LIB}\"); "
                                     "import settings; print(*settings.secret_paths())'").split()
    assert len(secret_files) >= 5, secret_files
    secret_values = [stack.exec("web", f"cat {path}").strip() for path in secret_files
                     if not path.endswith("munge.key")]
    # Another user's data, and a job of theirs running on the cluster at the same time.
    theirs = other_user.histories.create_history("victim")
    dataset = upload(other_user, theirs["id"], "someone else's data\n")
    dataset_path = admin.datasets.show_dataset(dataset["id"])["file_name"]
    victim_job = run_probe(other_user, theirs["id"], {**NOTHING, "watch_seconds": 60})
    wait_running(other_user, victim_job)
    victim_slurm_id = admin.jobs.show_job(victim_job, full_details=True)["external_id"]

    history = user.histories.create_history("attacker")
    targets = {
        "read": secret_files,
        "write": [
            dataset_path, "/srv/galaxy/objects",
            SITE_TOOLS, f"{SITE_TOOLS}/sg_probe.py", "/srv/galaxy/config/local_tool_conf.xml",
            "/srv/galaxy/tool_search_index", "/srv/galaxy/cache/compiled_templates",
            "/srv/galaxy/dependencies", "/srv/galaxy/tool-data",
            # A job directory made before Galaxy makes it would be the attacker's.
            "/srv/galaxy/jobs", "/srv/galaxy/jobs/000",
        ],
        "connect": ["postgres:5432", "mariadb:3306", "web:8080", "slurmdbd:6819",
                    "slurmctld:6817"],
        "commands": {
            "sbatch": ["sbatch", "--wrap", "true"],
            "squeue": ["squeue", "-a"],
            "scancel": ["scancel", victim_slurm_id],
        },
        # Long enough to see the other user's uploads run in the handler.
        "watch_seconds": 20,
    }
    job_id = run_probe(user, history["id"], targets)
    wait_running(user, job_id)
    for n in range(2):
        upload(other_user, theirs["id"], f"uploaded while the probe watches {n}\n")
    job = wait_for_job(user, job_id)
    assert job["state"] == "ok", job
    report = json.loads(user.datasets.download_dataset(job["outputs"]["output"]["id"]))
    return {"report": report, "job": job, "secret_files": secret_files,
            "secret_values": secret_values, "victim_job": victim_job}


def test_the_job_runs_on_a_node_as_the_job_user(stack, admin, attack):
    report = attack["report"]
    assert report["uid"] == GALAXY_JOB_UID
    # A site tool never runs in the handler: the probe ran on the compute node.
    assert report["host"] == stack.exec("node", "hostname").strip()
    assert report["host"] != stack.exec("runner", "hostname").strip()


def test_no_secret_file_is_readable(attack):
    report = attack["report"]
    assert set(report["read"]) == set(attack["secret_files"])
    assert {path: result for path, result in report["read"].items() if result == "done"} == {}


def test_no_credential_in_any_environment_the_job_can_read(attack):
    environments = attack["report"]["environments"]
    assert "/proc/self/environ" in environments  # its own, at least
    leaks = {path: [s[:4] + "…" for s in attack["secret_values"] if s in text]
             for path, text in environments.items()}
    assert {path: found for path, found in leaks.items() if found} == {}
    assert not [path for path, text in environments.items() if "DATABASE_CONNECTION" in text]


def test_nothing_of_galaxys_is_writable(attack):
    written = {path: result for path, result in attack["report"]["write"].items()
               if result == "done"}
    assert written == {}


def test_jobs_the_handler_runs_are_out_of_reach(attack, figure):
    """Galaxy's own tools (uploads) run in the handler as Galaxy's user: a node job that could
    change their scripts would run code as Galaxy. Other cluster jobs share the job user."""
    seen = attack["report"]["other_jobs"]
    handler_jobs = {path: r["write"] for path, r in seen.items() if r["group"] != "galaxy-job"}
    assert handler_jobs, f"no upload job seen while the probe watched: {seen}"
    assert {path: result for path, result in handler_jobs.items() if result == "done"} == {}
    shared = sorted(path for path, r in seen.items() if r["group"] == "galaxy-job")
    figure(f"handler job directories tried: {len(handler_jobs)}, none writable; "
           f"cluster job directories writable (shared job user): {len(shared)}")


def test_the_job_cannot_use_slurm(admin, user, other_user, attack):
    commands = attack["report"]["commands"]
    # No munge credential on a node: every Slurm command is refused.
    for name in ("sbatch", "squeue", "scancel"):
        assert commands[name]["status"] != 0, (name, commands[name])
        assert "munge" in commands[name]["output"].lower(), (name, commands[name])
    victim = wait_for_job(other_user, attack["victim_job"])
    assert victim["state"] == "ok", victim


def test_what_a_job_can_still_connect_to(attack, figure):
    """Not yet split by network (issue 11, networks by need): reported, not asserted."""
    reached = sorted(a for a, r in attack["report"]["connect"].items() if r == "done")
    figure(f"a job on a node can still connect to: {', '.join(reached) or 'none'}")


def test_init_brings_an_earlier_layout_over(stack):
    """A deployment made before the job user: the munge key next to Galaxy's secrets, job
    directories in the data volume. init moves both, as they are, and keeps every secret."""
    image = stack.compose("images -q init").split()[0]  # the init (web) image
    prefix = f"sgold{uuid.uuid4().hex[:8]}"
    mounts = [f"{prefix}-secrets:/var/lib/galaxy-secrets", f"{prefix}-data:/srv/galaxy",
              f"{prefix}-munge:/etc/munge", f"{prefix}-jobs:/srv/galaxy-jobs"]

    def run(*command, entrypoint="sh"):
        args = ["docker", "run", "--rm", "-u", "root", *(f"-v{m}" for m in mounts),
                "--entrypoint", entrypoint, image, *command]
        return subprocess.run(args, capture_output=True, text=True, check=True).stdout

    try:
        run("-c", "mkdir -p /srv/galaxy/jobs/000/7 && echo job-output > /srv/galaxy/jobs/000/7/out"
            " && head -c 1024 /dev/urandom > /var/lib/galaxy-secrets/munge.key"
            " && echo galaxy-secret > /var/lib/galaxy-secrets/id_secret"
            " && chown -R 1450:1450 /var/lib/galaxy-secrets /srv/galaxy"
            " && chmod 440 /var/lib/galaxy-secrets/*")
        key = run("-c", "sha256sum < /var/lib/galaxy-secrets/munge.key")
        run("init", entrypoint="/usr/local/lib/galaxy-entrypoint/entrypoint.py")
        assert run("-c", "sha256sum < /etc/munge/munge.key") == key  # the same key, moved
        assert run("-c", "stat -c '%U %a' /etc/munge/munge.key").split() == ["munge", "400"]
        secrets = run("-c", "ls -A /var/lib/galaxy-secrets").split()
        assert "munge.key" not in secrets and "id_secret" in secrets
        assert run("-c", "cat /var/lib/galaxy-secrets/id_secret").strip() == "galaxy-secret"
        moved = run("-c", "stat -c %U /srv/galaxy-jobs/000/7/out; cat /srv/galaxy-jobs/000/7/out")
        assert moved.split() == ["galaxy", "job-output"]
        assert run("-c", "ls -A /srv/galaxy/jobs").split() == []
    finally:
        subprocess.run(["docker", "volume", "rm", "-f", *(m.split(":")[0] for m in mounts)],
                       capture_output=True)

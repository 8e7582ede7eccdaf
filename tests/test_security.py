"""An attacker's job: a site tool, run by an ordinary user on a Slurm node, tries to take the
server over (tests/job_probe.py). Every attempt must fail, and the job itself still ends ok."""
import io
import json
import stat
import subprocess
import tarfile
import uuid
import zipfile
from pathlib import Path

import pytest
import requests

from helpers import SITE_TOOLS, docker, install_site_tool, upload, wait_for, wait_for_job

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


@pytest.fixture(scope="module")
def archive_uploads(stack, user):
    """The archives of test_an_archive_upload_cannot_reach_a_secret, uploaded at once (the
    handler unpacks them in parallel), each into its own history: {case: history id}."""
    started = {}
    for case, (kind, members, _) in ARCHIVES.items():
        history = user.histories.create_history(f"archive {case}")
        r = requests.post(f"{stack.url}/api/tools/fetch", headers={"x-api-key": user.key},
                          timeout=60, files={"files_0|file_data": (f"upload.{kind}",
                                                                   archive(kind, members))},
                          data={"history_id": history["id"], "targets": json.dumps([{
                              "destination": {"type": "hdas"}, "items_from": "archive",
                              "src": "files"}])})
        assert r.ok, r.text
        started[case] = (history["id"], r.json()["jobs"][0]["id"])
    for _, job_id in started.values():
        wait_for_job(user, job_id)
    return {case: history_id for case, (history_id, _) in started.items()}


def run_probe(gi, history_id, targets):
    """Start the probe with these targets; its Galaxy job id."""
    source = upload(gi, history_id, json.dumps(targets))
    return gi.tools.run_tool(history_id, "sg_probe",
                             {"targets": {"src": "hda", "id": source["id"]}})["jobs"][0]["id"]


def wait_running(gi, job_id):
    wait_for(lambda: gi.jobs.show_job(job_id)["state"] == "running", 300, f"job {job_id} running")


NOTHING = {"read": [], "write": [], "connect": [], "commands": {}, "watch_seconds": 0,
           "handler_jobs_wanted": 0, "plant": {}}


@pytest.fixture(scope="module")
def secret_files(stack):
    """Every secret file the deployment has, wherever it lives (settings.secret_paths)."""
    paths = stack.exec("web", f"python3 -c 'import sys; sys.path.insert(0, \"{ENTRYPOINT_LIB}\"); "
                              "import settings; print(*settings.secret_paths())'").split()
    assert len(paths) >= 5, paths
    return paths


@pytest.fixture(scope="module")
def attack(stack, admin, user, other_user, probe_tool, secret_files):
    """The probe's report, the probe's job, the other user's job it tried to cancel, and what a
    job must not learn: the value of every secret."""
    secret_values = [stack.exec(service, f"cat {path}").strip() for path in secret_files
                     for service in [SECRET_HOLDER.get(Path(path).name, "web")]
                     if not path.endswith("munge.key")]
    # Another user's data, and a job of theirs running on the cluster at the same time.
    theirs = other_user.histories.create_history("victim")
    dataset = upload(other_user, theirs["id"], "someone else's data\n")
    dataset_path = admin.datasets.show_dataset(dataset["id"])["file_name"]
    # Started first, it runs (or waits in Slurm's queue) while the attacker's job tries to cancel it.
    victim_job = run_probe(other_user, theirs["id"], {**NOTHING, "watch_seconds": 60})

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
        # By name and by every address the server has (a job could guess an address).
        "connect": servers_a_job_must_not_reach(stack) + ["slurmctld:6817"],
        "commands": {
            "sbatch": ["sbatch", "--wrap", "true"],
            "squeue": ["squeue", "-a"],
            "scancel": ["scancel", "--user=galaxy-job"],  # every Galaxy job
        },
        # Until it has seen an upload of the other user's run in the handler.
        "watch_seconds": 180, "handler_jobs_wanted": 1,
        # The tool's stdout and stderr (the job script writes them there) become links.
        "plant": {"../outputs/tool_stdout": "/var/lib/galaxy-secrets/admin_api_key",
                  "../outputs/tool_stderr": "/proc/self/environ"},
    }
    job_id = run_probe(user, history["id"], targets)
    wait_running(user, job_id)
    while user.jobs.show_job(job_id)["state"] == "running":
        upload(other_user, theirs["id"], "uploaded while the probe watches\n")
    job = wait_for_job(user, job_id)
    assert job["state"] == "ok", job
    report = json.loads(user.datasets.download_dataset(job["outputs"]["output"]["id"]))
    return {"report": report, "job": job, "secret_files": secret_files,
            "secret_values": secret_values, "victim_job": victim_job}


@pytest.mark.timeout(600)  # it carries the attack's setup (tool install, two jobs, uploads)
def test_the_job_runs_on_a_node_as_the_job_user(stack, admin, attack):
    report = attack["report"]
    assert report["uid"] == GALAXY_JOB_UID
    # A site tool never runs in the handler: the probe ran on the compute node.
    assert report["host"] == stack.exec("node", "hostname").strip()
    assert report["host"] != stack.exec("runner", "hostname").strip()


# The secrets each long-running service holds (compose.yml, compose.slurm.yml): what its role
# needs, nothing else. Read as root in each container.
SECRETS_HELD = {
    # Galaxy's own volume: admin_password too (first-admin's; admin_api_key is more already).
    "web": {"id_secret", "admin_api_key", "admin_password", "db_password", "broker_password",
            "results_password"},
    "runner": {"id_secret", "admin_api_key", "admin_password", "db_password", "broker_password",
               "results_password", "munge.key"},
    "celery": {"id_secret", "admin_api_key", "admin_password", "db_password", "broker_password",
               "results_password"},
    "celery-beat": {"broker_password"},
    "postgres": {"db_password"},
    "rabbitmq": {"broker_password"},
    "redis": {"results_password"},
    "mariadb": {"slurmdb_password"},
    "slurmdbd": {"slurmdb_password", "munge.key"},
    "slurmctld": {"munge.key"},
    "node": {"munge.key"},
    "nginx": set(),
}
SECRET_HOLDER = {"slurmdb_password": "slurmdbd"}


def test_each_service_holds_only_the_secrets_its_role_needs(stack, secret_files):
    held = {}
    for service in SECRETS_HELD:
        probe = "; ".join(f"[ -s {path} ] && echo {Path(path).name}" for path in secret_files)
        held[service] = set(stack.compose(f"exec -T -u root {service} sh -c '{probe}; true'").split())
    assert held == SECRETS_HELD


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


def test_links_the_job_leaves_reveal_nothing_to_its_user(user, attack):
    """The handler reads the job's stdout and stderr as Galaxy's user: had it followed the links
    the job left there, the secrets would be in the job's record, which its user can read."""
    job = user.jobs.show_job(attack["job"]["id"], full_details=True)
    record = "".join(str(job.get(k, "")) for k in ("tool_stdout", "tool_stderr", "stdout", "stderr"))
    assert [s[:4] for s in attack["secret_values"] if s in record] == []
    assert "DATABASE_CONNECTION" not in record and "GALAXY_CONFIG" not in record


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


def servers_a_job_must_not_reach(stack):
    servers = {"postgres": (5432, ["backend"]), "rabbitmq": (5672, ["backend"]),
               "redis": (6379, ["backend"]),
               "mariadb": (3306, ["accounting"]),
               "web": (8080, ["front", "backend"]), "slurmdbd": (6819, ["slurm-control", "accounting"])}
    return [f"{host}:{port}" for service, (port, networks) in servers.items()
            for host in [service, *(a for n in networks for a in stack.addresses(service, n))]]


def test_the_job_reaches_no_server_but_the_slurm_controller(stack, attack):
    """A node is on the cluster network only; the controller answers (slurmd needs it), but
    without a munge credential it serves nothing (test_the_job_cannot_use_slurm)."""
    connect = attack["report"]["connect"]
    assert {a for a, r in connect.items() if r == "done"} == {"slurmctld:6817"}, connect
    assert len(connect) >= 11  # each server by name and by at least one address


def test_init_brings_an_earlier_layout_over(stack):
    """A deployment made before the job user: every secret and the munge key in Galaxy's secrets
    volume, job directories in the data volume. init moves each to its own volume, as it is."""
    image = stack.compose("images -q init").split()[0]  # the init (web) image
    prefix = f"sgold{uuid.uuid4().hex[:8]}"
    mounts = [f"{prefix}-secrets:/var/lib/galaxy-secrets", f"{prefix}-data:/srv/galaxy",
              f"{prefix}-munge:/etc/munge", f"{prefix}-jobs:/srv/galaxy-jobs",
              f"{prefix}-db:/var/lib/galaxy-db-secret", f"{prefix}-slurmdb:/var/lib/slurmdb-secret"]
    earlier = {"id_secret": "galaxy-secret", "db_password": "db-secret",
               "slurmdb_password": "slurmdb-secret"}

    def run(*command, entrypoint="sh"):
        return docker(["run", "--rm", "-u", "root", *(f"-v{m}" for m in mounts),
                       "--entrypoint", entrypoint, image, *command])

    try:
        run("-c", "mkdir -p /srv/galaxy/jobs/000/7 && echo job-output > /srv/galaxy/jobs/000/7/out"
            " && head -c 1024 /dev/urandom > /var/lib/galaxy-secrets/munge.key"
            + "".join(f" && echo {v} > /var/lib/galaxy-secrets/{k}" for k, v in earlier.items())
            + " && chown -R 1450:1450 /var/lib/galaxy-secrets /srv/galaxy"
            " && chmod 440 /var/lib/galaxy-secrets/*")
        key = run("-c", "sha256sum < /var/lib/galaxy-secrets/munge.key")
        run("init", entrypoint="/usr/local/lib/galaxy-entrypoint/entrypoint.py")
        assert run("-c", "sha256sum < /etc/munge/munge.key") == key  # the same key, moved
        now = {"munge.key": "/etc/munge", "id_secret": "/var/lib/galaxy-secrets",
               "db_password": "/var/lib/galaxy-db-secret",
               "slurmdb_password": "/var/lib/slurmdb-secret"}
        owners = run("-c", "; ".join(f"stat -c '{name} %U %a' {d}/{name}" for name, d in now.items()))
        assert owners.splitlines() == ["munge.key munge 400", "id_secret galaxy 400",
                                       "db_password galaxy 400", "slurmdb_password root 400"]
        assert run("-c", "ls -A /var/lib/galaxy-secrets").split() == ["admin_api_key", "admin_password",
                                                                         "id_secret"]
        for name, value in earlier.items():
            assert run("-c", f"cat {now[name]}/{name}").strip() == value
        moved = run("-c", "stat -c %U /srv/galaxy-jobs/000/7/out; cat /srv/galaxy-jobs/000/7/out")
        assert moved.split() == ["galaxy", "job-output"]
        assert run("-c", "ls -A /srv/galaxy/jobs").split() == []
    finally:
        subprocess.run(["docker", "volume", "rm", "-f", *(m.split(":")[0] for m in mounts)],
                       capture_output=True)


def test_galaxys_database_role_is_no_superuser(stack):
    """Galaxy's password must not mean shell commands in the postgres container."""
    as_galaxy = ("PGPASSWORD=$(cat /var/lib/galaxy-db-secret/db_password) "
                 "psql -h localhost -U galaxy -d galaxy -Atc")
    assert stack.exec("postgres", f"sh -c '{as_galaxy} \"SELECT rolsuper, pg_get_userbyid(datdba) "
                                  "FROM pg_roles, pg_database WHERE rolname = current_user "
                                  "AND datname = current_database()\"'").split() == ["f|galaxy"]
    refused = stack.exec("postgres", f"sh -c '{as_galaxy} \"COPY (SELECT 1) TO PROGRAM "
                                     "\\$\\$id\\$\\$\" 2>&1; echo status=$?'")
    assert "must be superuser" in refused and "status=1" in refused, refused


def test_postgres_from_an_earlier_version_demotes_galaxys_role(stack):
    """Earlier versions bootstrapped the cluster as galaxy (a superuser PostgreSQL can't demote).
    On the next start the entrypoint makes postgres the superuser and galaxy a plain owner, with
    its password and every row kept."""
    image = stack.compose("images -q postgres").split()[0]
    volume = f"sgoldpg{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    earlier = (  # what the earlier entrypoint did, then a table of Galaxy's
        f"echo {password} > /tmp/pw && initdb --username=galaxy --pwfile=/tmp/pw "
        "--auth-local=trust --auth-host=scram-sha-256 >/dev/null"
        " && echo 'host all all all scram-sha-256' >> $PGDATA/pg_hba.conf"
        " && pg_ctl -w start >/dev/null && createdb -U galaxy galaxy"
        " && psql -q -U galaxy -d galaxy -c 'CREATE TABLE kept (id serial, x text)'"
        " -c \"INSERT INTO kept (x) VALUES ('history')\" && pg_ctl -w stop >/dev/null")

    container = None
    try:
        docker(["run", "--rm", "-u", "postgres", "-v", f"{volume}:/var/lib/postgresql/data",
                "--entrypoint", "sh", image, "-c", earlier])
        container = docker(["run", "-d", "-v", f"{volume}:/var/lib/postgresql/data",
                            "-e", "POSTGRES_USER=galaxy", "-e", "POSTGRES_DB=galaxy",
                            "-e", f"POSTGRES_PASSWORD={password}", image, "postgres"]).strip()
        wait_for(lambda: subprocess.run(["docker", "exec", container, "pg_isready", "-q", "-h",
                                         "localhost"]).returncode == 0, 60, "postgres")
        queries = ["SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
                   "SELECT x FROM kept",
                   "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 'kept'",
                   "SELECT rolname FROM pg_roles WHERE oid = 10"]  # the bootstrap superuser
        out = docker(["exec", "-e", f"PGPASSWORD={password}", container, "psql", "-h", "localhost",
                      "-U", "galaxy", "-d", "galaxy", "-At", *(f"-c{q}" for q in queries)])
        assert out.split() == ["f", "history", "galaxy", "postgres"]
        # Galaxy's password is Galaxy's alone: the superuser it used to be has none.
        refused = subprocess.run(["docker", "exec", "-e", f"PGPASSWORD={password}", container,
                                  "psql", "-h", "localhost", "-U", "postgres", "-c", "SELECT 1"],
                                 capture_output=True, text=True)
        assert refused.returncode == 2 and "password authentication failed" in refused.stderr
    finally:
        if container:
            subprocess.run(["docker", "rm", "-f", container], capture_output=True)
        subprocess.run(["docker", "volume", "rm", "-f", volume], capture_output=True)


def archive(kind, members):
    """A tar or zip archive in memory; members: (name, text) or (name, "->", link target)."""
    buffer = io.BytesIO()
    if kind == "tar":
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for name, *rest in members:
                info = tarfile.TarInfo(name)
                if rest[0] == "->":
                    info.type, info.linkname = tarfile.SYMTYPE, rest[1]
                    tar.addfile(info)
                else:
                    info.size = len(rest[0].encode())
                    tar.addfile(info, io.BytesIO(rest[0].encode()))
    else:
        with zipfile.ZipFile(buffer, "w") as zf:
            for name, *rest in members:
                if rest[0] == "->":  # a symlink entry: the target's path, with the link mode
                    info = zipfile.ZipInfo(name)
                    info.external_attr = (stat.S_IFLNK | 0o777) << 16
                    zf.writestr(info, rest[1])
                else:
                    zf.writestr(name, rest[0])
    return buffer.getvalue()


LINK_TO_A_SECRET = "/var/lib/galaxy-secrets/id_secret"
# case: (archive kind, members, what the upload imports: {dataset name: content})
ARCHIVES = {
    "tar-symlink": ("tar", [("a.txt", "a\n"), ("secret.txt", "->", LINK_TO_A_SECRET)], {}),
    "tar-dotdot": ("tar", [("a.txt", "a\n"), ("../../../../tmp/escaped.txt", "escaped\n")], {}),
    # zip has no symlinks: the entry is unpacked as a file holding the link's text.
    "zip-symlink": ("zip", [("a.txt", "a\n"), ("secret.txt", "->", LINK_TO_A_SECRET)],
                    {"a.txt": b"a\n", "secret.txt": LINK_TO_A_SECRET.encode()}),
    "zip-dotdot": ("zip", [("a.txt", "a\n"), ("../../../../tmp/escaped.txt", "escaped\n")], {}),
}


@pytest.mark.parametrize("case", ARCHIVES)
def test_an_archive_upload_cannot_reach_a_secret(stack, user, archive_uploads, case):
    """Archives are unpacked by the upload job, in the handler, as Galaxy's user (which can read
    the secrets): an archive with an entry pointing outside it is refused as a whole (nothing is
    imported, nothing written outside), a zip's link entry is just its own bytes."""
    datasets = user.histories.show_history(archive_uploads[case], contents=True)
    imported = {d["name"]: user.datasets.download_dataset(d["id"]) for d in datasets}
    assert imported == ARCHIVES[case][2]
    assert "escaped.txt" not in stack.exec("runner", "ls -A /tmp")

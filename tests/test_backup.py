"""Backup and restore (scripts/backup, scripts/restore), as an admin would use them on a running
site: a second backup of an unchanged site copies nothing; a damaged backup, one from another
schema, or a restore over live data is refused before anything is touched; and after `down -v`,
restore and `up`, the users, histories, datasets (byte for byte), workflows, API keys and
logins are back under the same ids, a job interrupted by the backup ends as an error that says
so, and new jobs run. The restored database is first taken back to Galaxy 26.0's schema, so
that `up` also proves the upgrade (issue 14): migrate upgrades it, then the same checks pass.
Runs last: it replaces the session's stack with its own restored copy."""
import hashlib
import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from helpers import cat_workflow, log_in, psql, run_and_wait, tear_down, upload

pytestmark = pytest.mark.timeout(900)

ROOT = Path(__file__).resolve().parent.parent


def run_script(stack, name, *args):
    """scripts/<name> on the test stack (its compose project); the finished process."""
    return subprocess.run([str(ROOT / "scripts" / name), *map(str, args)], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "COMPOSE_PROJECT_NAME": stack.project})


def backup(stack, folder):
    started = time.monotonic()
    run = run_script(stack, "backup", folder)
    assert run.returncode == 0, run.stderr
    snapshot = Path(run.stdout.strip().splitlines()[-1])
    return snapshot, json.loads((snapshot / "manifest.json").read_text()), time.monotonic() - started


def schema(stack):
    """The database's revision of Galaxy's schema (alembic's gxy branch)."""
    query = "select version_num from alembic_version"
    revisions = psql(stack, query).split()
    return next(r for r in revisions if r != "d4a650f47a3c")  # the other is the tsi branch's


def test_backup_refuses_a_folder_that_is_not_there(stack, tmp_path):
    missing = tmp_path / "missing"
    run = run_script(stack, "backup", missing)
    assert run.returncode == 1
    assert f"{missing} is not a folder" in run.stderr
    assert not missing.exists()


@pytest.fixture
def site(stack, admin):
    """A user with a password, an API key, a history with a dataset, a workflow and a logged-in
    session; and a job that has not ended (the handler is stopped while it is submitted)."""
    stack.scale()
    name = f"b{uuid.uuid4().hex[:10]}"
    email, password = f"{name}@example.org", uuid.uuid4().hex
    account = admin.users.create_local_user(name, email, password)
    key = admin.users.get_or_create_user_apikey(account["id"])
    from bioblend.galaxy import GalaxyInstance
    gi = GalaxyInstance(stack.url, key=key)
    history = gi.histories.create_history("kept by the backup")
    content = f"restored {uuid.uuid4()}\n" * 1000
    dataset = upload(gi, history["id"], content)
    workflow = gi.workflows.import_workflow_dict(cat_workflow(f"wf {name}"))
    session = log_in(stack.url, email, password)
    stack.compose("stop runner")
    pending = gi.tools.run_tool(history["id"], "cat1", {"input1": {"src": "hda", "id": dataset["id"]}})
    return {"gi": gi, "email": email, "session": session, "history": history["id"],
            "dataset": dataset["id"], "sha256": hashlib.sha256(content.encode()).hexdigest(),
            "workflow": workflow["id"], "pending_job": pending["jobs"][0]["id"],
            "pending_output": pending["outputs"][0]["id"]}


def test_backup_restore_and_upgrade_bring_the_site_back(stack, admin, site, tmp_path, figure):
    folder = tmp_path / "backups"
    folder.mkdir()
    first, manifest, first_seconds = backup(stack, folder)
    assert manifest["jobs_not_ended"] >= 1
    assert manifest["files"]["copied_bytes"] > 0
    second, again, second_seconds = backup(stack, folder)
    # Nothing changed in between: every file is linked from the first snapshot, none copied.
    assert again["files"]["copied_bytes"] == 0
    assert again["files"]["linked_bytes"] == again["files"]["bytes"] > 0
    assert again["files"]["linked_from"] == first.name

    # Refused before anything is touched: a damaged copy, another schema, live data.
    damaged = tmp_path / "damaged" / second.name
    shutil.copytree(second, damaged)
    index = [json.loads(line) for line in (damaged / "files.jsonl").read_text().splitlines()]
    victim = damaged / "files" / next(e["path"] for e in index
                                     if e["type"] == "f" and e["path"].startswith("objects/"))
    victim.chmod(0o600)
    data = bytearray(victim.read_bytes())
    data[0] ^= 1
    victim.write_bytes(data)
    run = run_script(stack, "restore", "--force", damaged)
    assert run.returncode == 1 and "is damaged" in run.stderr, run.stderr
    other = tmp_path / "other" / second.name
    shutil.copytree(second, other)
    (other / "manifest.json").chmod(0o600)
    older = {**again, "galaxy": {**again["galaxy"], "schema": ["9930b68c85af", "d4a650f47a3c"]}}
    (other / "manifest.json").write_text(json.dumps(older))
    run = run_script(stack, "restore", "--force", other)
    assert run.returncode == 1 and "these images expect schema" in run.stderr, run.stderr
    run = run_script(stack, "restore", folder)
    assert run.returncode == 1, run.stderr
    assert "holds a database and secrets and datasets already" in run.stderr, run.stderr
    # None of that touched the site.
    assert site["gi"].datasets.download_dataset(site["dataset"]) is not None

    tear_down(stack)
    started = time.monotonic()
    run = run_script(stack, "restore", folder)
    assert run.returncode == 0, run.stderr
    restore_seconds = time.monotonic() - started
    # The upgrade path: the restored database taken back to the previous release's schema with
    # Galaxy's own tool, then `up`, whose migrate one-shot upgrades it before any other Galaxy
    # process starts. Everything below then also proves the upgraded site.
    head = schema(stack)
    stack.compose("run --rm --no-deps migrate manage-db downgrade 26.0")
    assert schema(stack) == "9930b68c85af"  # Galaxy 26.0's (galaxy.model.migrations.dbrevisions)
    started = time.monotonic()
    stack.compose("up -d")
    stack.wait_ready()
    upgrade_seconds = time.monotonic() - started
    assert schema(stack) == head

    gi = site["gi"]  # the same API key
    assert gi.histories.show_history(site["history"])["name"] == "kept by the backup"
    data = gi.datasets.download_dataset(site["dataset"])
    assert hashlib.sha256(data).hexdigest() == site["sha256"]
    assert gi.workflows.show_workflow(site["workflow"])["name"].startswith("wf ")
    # The session cookie from before the backup is still a login.
    current = site["session"].get(f"{stack.url}/api/users/current", timeout=30).json()
    assert current.get("email") == site["email"], current
    # The job the backup caught unfinished: an error, whose output tells the user why.
    job = gi.jobs.show_job(site["pending_job"])
    assert job["state"] == "error"
    output = gi.datasets.show_dataset(site["pending_output"])
    assert output["state"] == "error"
    assert "a restore does not resume jobs: run it again" in output["misc_info"], output
    new = run_and_wait(gi, site["history"], "cat1", {"input1": {"src": "hda", "id": site["dataset"]}})
    assert new["state"] == "ok", new
    # The bootstrap key (a restored secret) is the admin's again.
    assert site["email"] in [u["email"] for u in admin.users.get_users()]
    figure(f"backup {first_seconds:.0f} s ({manifest['parts']['galaxy.dump']['bytes'] / 2**20:.1f} MiB "
           f"dump, {manifest['files']['bytes'] / 2**20:.1f} MiB in {manifest['files']['count']} files), "
           f"unchanged site again {second_seconds:.0f} s (0 bytes copied), restore {restore_seconds:.0f} s; "
           f"from 26.0's schema: up, migrate included, healthy in {upgrade_seconds:.0f} s")

"""Tools from a Tool Shed: a repository published to a real Tool Shed (the Galaxy release's own,
API only, tests/compose.toolshed.yml), installed by the admin through nginx with BioBlend as a site
would, in every web replica and handler without a restart, run on a Slurm node with its
requirement resolved offline (Galaxy's package layout in tool_dependency_dir), kept by a replica
that restarts, and uninstalled everywhere; and what an admin sees when an install can't be done."""
import io
import json
import re
import tarfile
import time
import uuid
from urllib.parse import unquote

import pytest
import requests
from bioblend import ConnectionError as BioblendConnectionError
from bioblend.toolshed import ToolShedInstance

from helpers import (TOOL_SHED, container_of, handler_toolbox_loads, run_and_wait, slurm_accounting,
                     upload, wait_for, write_file)

pytestmark = pytest.mark.timeout(300)

REPOSITORY = "sg_shout"
# Its requirement, resolved offline: Galaxy's package layout under tool_dependency_dir, where the
# galaxy_packages resolver finds <name>/<version>/env.sh (a site's own builds go there too).
PACKAGE = "/srv/galaxy/dependencies/sg_shout/1.0"
SHOUT_TOOL = """<tool id="sg_shout" name="Shout" version="0.1.0" profile="22.05">
    <description>a text in capitals</description>
    <requirements>
        <requirement type="package" version="1.0">sg_shout</requirement>
    </requirements>
    <command>sg_shout &lt; '$input' &gt; '$output'</command>
    <inputs>
        <param name="input" type="data" format="txt" label="Text"/>
    </inputs>
    <outputs>
        <data name="output" format="txt"/>
    </outputs>
    <tests>
        <test>
            <param name="input" value="hello.txt"/>
            <output name="output" file="HELLO.txt"/>
        </test>
    </tests>
    <help>Writes its input in capitals.</help>
</tool>
"""


def tarball(path, files):
    """A repository's content as the Tool Shed takes it: a gzipped tar of `files` (name: text)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


class Shed:
    """The suite's Tool Shed, reached from here at its container's address, and one repository
    owner's BioBlend client."""

    def __init__(self, stack):
        (address,) = stack.addresses("toolshed", "front")
        self.url = f"http://{address}:9009"
        self.bootstrap = {"x-api-key": stack.exec("toolshed", "cat /tmp/toolshed/admin_api_key").strip()}
        self.owner = f"owner{uuid.uuid4().hex[:6]}"
        password = uuid.uuid4().hex
        self.admin_post("users", {"email": f"{self.owner}@example.org", "username": self.owner,
                                  "password": password})
        self.category = self.admin_post("categories", {"name": f"Tests {self.owner}",
                                                       "description": "the suite's repositories"})["id"]
        self.gi = ToolShedInstance(self.url, email=f"{self.owner}@example.org", password=password)

    def admin_post(self, path, body):
        r = requests.post(f"{self.url}/api/{path}", json=body, headers=self.bootstrap, timeout=30)
        assert r.ok, (path, r.status_code, r.text)
        return r.json()

    def publish(self, name, files, tmp_path):
        """A new repository holding `files`; its newest installable revision (None if none)."""
        repository = self.gi.repositories.create_repository(name, f"{name}, for the tests",
                                                            category_ids=[self.category])
        self.gi.repositories.update_repository(repository["id"], tarball(tmp_path / f"{name}.tar.gz", files),
                                               commit_message="the tests' upload")
        revisions = self.gi.repositories.get_ordered_installable_revisions(name, self.owner)
        return revisions[-1] if revisions else None


@pytest.fixture(scope="module")
def shed(stack):
    """The Tool Shed, running for this module only, with one owner and category; two web replicas."""
    stack.scale(web=2, runner=1, node=1)
    stack.compose("up -d toolshed")
    try:
        wait_for(lambda: json.loads(stack.docker(f"inspect {container_of(stack, 'toolshed', 1)}"))[0]
                 ["State"]["Health"]["Status"] == "healthy", 180, "the Tool Shed")
        yield Shed(stack)
    finally:
        stack.compose("rm -sfv toolshed")


def tool_ids(stack, admin, index):
    """The tool ids web replica `index` has, asked directly (not through nginx)."""
    out = stack.exec("web", f"curl -fsS --max-time 20 -H 'x-api-key: {admin.key}' "
                     "'http://localhost:8080/api/tools?in_panel=false'", index=index)
    return {tool["id"] for tool in json.loads(out)}


def test_a_tool_shed_install_reaches_every_replica_runs_on_slurm_and_uninstalls(
        stack, admin, user, shed, tmp_path, figure):
    revision = shed.publish(REPOSITORY, {"sg_shout.xml": SHOUT_TOOL, "test-data/hello.txt": "hello shed\n",
                                         "test-data/HELLO.txt": "HELLO SHED\n"}, tmp_path)
    assert revision, "the Tool Shed made no installable revision of the repository"
    tool_id = f"toolshed:9009/repos/{shed.owner}/{REPOSITORY}/sg_shout/0.1.0"
    # The requirement, as a site builds one for Galaxy's package layout (the job runs it on a node,
    # where /srv/galaxy is read-only).
    stack.exec("web", f"mkdir -p {PACKAGE}/bin")
    write_file(stack, f"{PACKAGE}/env.sh", f"PATH={PACKAGE}/bin:$PATH\nexport PATH\n")
    write_file(stack, f"{PACKAGE}/bin/sg_shout", "#!/bin/sh\nexec tr '[:lower:]' '[:upper:]'\n")
    stack.exec("web", f"chmod 755 {PACKAGE}/bin/sg_shout")

    # The Tool Sheds the admin is offered: the main one and the site's own (GALAXY_TOOL_SHEDS).
    assert [unquote(shed["url"]) for shed in admin.make_get_request(f"{admin.url}/tool_shed").json()] == [
        "https://toolshed.g2.bx.psu.edu/", f"{TOOL_SHED}/"]

    reloads = handler_toolbox_loads(stack)
    started = time.monotonic()
    installed = admin.toolshed.install_repository_revision(
        TOOL_SHED, REPOSITORY, shed.owner, revision, install_tool_dependencies=False,
        install_repository_dependencies=False, install_resolver_dependencies=False,
        new_tool_panel_section_label="From the Tool Shed")
    install_seconds = time.monotonic() - started
    assert [(r["name"], r["status"]) for r in installed] == [(REPOSITORY, "Installed")], installed
    for index in (1, 2):
        wait_for(lambda i=index: tool_id in tool_ids(stack, admin, i), 120,
                 f"{tool_id} in web replica {index}")
    wait_for(lambda: handler_toolbox_loads(stack) > reloads, 120, "the handler's toolbox reloaded")
    everywhere_seconds = time.monotonic() - started
    # Where Galaxy keeps it: on the shared data.
    assert tool_id in stack.exec("web", "cat /srv/galaxy/config/shed_tool_conf.xml")
    assert "sg_shout.xml" in stack.exec(
        "web", f"find /srv/galaxy/shed_tools/toolshed/repos/{shed.owner}/{REPOSITORY} -name sg_shout.xml")

    history = user.histories.create_history("tool shed")
    text = upload(user, history["id"], "hello shed\n")
    job = run_and_wait(user, history["id"], tool_id, {"input": {"src": "hda", "id": text["id"]}})
    first_run_seconds = time.monotonic() - started
    assert job["state"] == "ok", job
    output = job["outputs"]["output"]["id"]
    assert user.datasets.download_dataset(output, use_default_filename=False) == b"HELLO SHED\n"
    slurm_id = admin.jobs.show_job(job["id"], full_details=True)["external_id"]
    (record,) = [r for r in slurm_accounting(stack, [slurm_id]) if r["id"] == slurm_id]
    assert record["state"] == "COMPLETED" and record["node"] == "node_1", record
    figure(f"install {install_seconds:.1f} s; in both web replicas and the handler "
           f"{everywhere_seconds:.1f} s after it began; first run ok on Slurm {first_run_seconds:.1f} s "
           "after it began")

    # A replica started afresh reads the installed tools from the shared data.
    stack.docker(f"restart {container_of(stack, 'web', 2)}")
    stack.wait_ready()
    assert tool_id in tool_ids(stack, admin, 2)

    admin.toolshed.uninstall_repository_revision(REPOSITORY, shed.owner, revision, TOOL_SHED,
                                                 remove_from_disk=True)
    for index in (1, 2):
        wait_for(lambda i=index: tool_id not in tool_ids(stack, admin, i), 120,
                 f"{tool_id} gone from web replica {index}")
    assert tool_id not in stack.exec("web", "cat /srv/galaxy/config/shed_tool_conf.xml")
    # Galaxy leaves the repository's empty folder, no file of it.
    assert stack.exec("web", f"find /srv/galaxy/shed_tools/toolshed/repos/{shed.owner} -type f") == ""
    r = requests.post(f"{stack.url}/api/tools", headers={"x-api-key": user.key}, timeout=60,
                      json={"history_id": history["id"], "tool_id": tool_id,
                            "inputs": {"input": {"src": "hda", "id": text["id"]}}})
    assert (r.status_code, r.json()["err_msg"]) == (400, "Tool not found."), r.text


def installed_repositories(admin):
    """Every repository Galaxy has a record of, uninstalled ones included, and its state."""
    return sorted((r["tool_shed"], r["name"], r["changeset_revision"], r["status"])
                  for r in admin.toolshed.get_repositories())


def install(stack, admin, tool_shed, name, owner, revision):
    """Galaxy's answer to the admin's install request, through nginx (what BioBlend sends)."""
    return requests.post(f"{stack.url}/api/tool_shed_repositories/new/install_repository_revision",
                         headers={"x-api-key": admin.key}, timeout=120,
                         json={"tool_shed_url": tool_shed, "name": name, "owner": owner,
                               "changeset_revision": revision, "new_tool_panel_section_label": "Refused"})


def test_an_install_that_cant_be_done_says_why_and_installs_nothing(stack, admin, shed, tmp_path):
    """A Tool Shed that can't be reached and a repository it doesn't have: Galaxy tells the admin
    and installs nothing. A tool whose XML is broken: the Tool Shed itself refuses it, and Galaxy
    won't install the revision it made of the upload."""
    toolbox = stack.exec("web", "cat /srv/galaxy/config/shed_tool_conf.xml")
    before = installed_repositories(admin)
    # A Tool Shed that is down: nothing answers at its address.
    unreachable = install(stack, admin, "http://toolshed:9010", "sg_shout", shed.owner,
                          "0123456789ab")
    # Galaxy's own answer (a 500: it names no better status for a Tool Shed that fails it).
    assert (unreachable.status_code, unreachable.json()["err_code"]) == (500, 500001), unreachable.text
    assert unreachable.json()["err_msg"].startswith(
        "Error attempting to retrieve installation information from tool shed "
        "http://toolshed:9010"), unreachable.text
    missing = install(stack, admin, TOOL_SHED, "no_such_repository", shed.owner, "0123456789ab")
    assert (missing.status_code, missing.json()["err_code"]) == (400, 400008), missing.text
    assert "No information is available for the requested repository revision" in missing.json()["err_msg"]
    assert "name: no_such_repository" in missing.json()["err_msg"]
    # The Tool Shed itself refuses a tool it can't read, saying so: the repository keeps the
    # upload, as a revision that can't be installed, and Galaxy won't install it.
    broken = "<tool id='sg_broken' name='Broken' version='0.1.0'><command>echo</command><inputs>"
    with pytest.raises(BioblendConnectionError) as refused:
        shed.publish("sg_broken", {"sg_broken.xml": broken}, tmp_path)
    assert "cannot be automatically installed" in refused.value.body, refused.value.body
    assert shed.gi.repositories.get_ordered_installable_revisions("sg_broken", shed.owner) == []
    named = re.search(r"\b([0-9a-f]{12})\b", refused.value.body)
    assert named, refused.value.body
    revision = named.group(1)
    broken_install = install(stack, admin, TOOL_SHED, "sg_broken", shed.owner, revision)
    assert (broken_install.status_code, broken_install.json()["err_code"]) == (400, 400008), \
        broken_install.text
    # Nothing installed, nothing in the toolbox.
    assert installed_repositories(admin) == before
    assert stack.exec("web", "cat /srv/galaxy/config/shed_tool_conf.xml") == toolbox
    assert not [tool_id for tool_id in tool_ids(stack, admin, 1) if f"/repos/{shed.owner}/" in tool_id]

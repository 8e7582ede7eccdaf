"""What the end-to-end tests share beyond fixtures: Galaxy calls through BioBlend or plain HTTP,
and the docker CLI. Imported by name (conftest.py is not: tests/unit has one of its own)."""
import base64
import collections
import json
import os
import re
import subprocess
import threading
import time
import uuid

import requests
from bioblend.galaxy import GalaxyInstance

# Galaxy's first start (database schema, toolbox) takes minutes on 2 cores.
STACK_TIMEOUT = float(os.environ.get("SG_TEST_STACK_TIMEOUT", "900"))
# A job on 2 busy cores can wait minutes for its turn.
JOB_WAIT = 600
# GALAXY_MAX_UPLOAD_SIZE of the test stack: small enough to go over quickly.
UPLOAD_LIMIT = "64m"
# GALAXY_DEFAULT_QUOTA of the test stack (Galaxy counts in powers of 1000), and
# GALAXY_USER_CONCURRENT_JOBS: no test needs more of either.
DEFAULT_QUOTA, DEFAULT_QUOTA_BYTES = "10GB", 10 ** 10
JOB_LIMIT = 4
# The suite's own Tool Shed (tests/compose.toolshed.yml) as Galaxy reaches it: the test stack
# lists it in GALAXY_TOOL_SHEDS beside the main one, as a site lists its own.
TOOL_SHED = "http://toolshed:9009"


def docker(command):
    """`docker <command>`: a string (words split on spaces) or a list of arguments; its output."""
    args = command.split() if isinstance(command, str) else command
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout


def tear_down(stack):
    """`down -v`, once more while the engine still holds a removed container's network endpoint
    ("has active endpoints": Docker 20.10 can release it a moment after the container is gone).
    Anything else, or an endpoint still held after a minute, fails the session with the network's
    remaining endpoints named."""
    down = "down -v --remove-orphans --timeout 30"
    deadline = time.monotonic() + 60
    while True:
        try:
            stack.compose(down)
            return
        except Exception as e:
            if "active endpoints" not in str(e) or time.monotonic() > deadline:
                held = docker(["network", "ls", "-q", "--filter", f"name={stack.project}_"]).split()
                endpoints = docker(["network", "inspect", "-f", "{{.Name}}: {{json .Containers}}",
                                    *held]) if held else ""
                raise RuntimeError(f"the stack did not come down: {e}\n{endpoints}") from e
            time.sleep(3)


def wait_for(check, timeout, what, pause=2.0):
    """Until check() is true; a check that raises counts as not yet (services still starting).
    The timeout's message shows check()'s last answer or error."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return
        except Exception as e:
            last = e
        time.sleep(pause)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s (last: {last!r})")


def create_user(admin, url):
    """A fresh ordinary user, created through the API, and a client holding its API key."""
    name = f"u{uuid.uuid4().hex[:10]}"
    user = admin.users.create_local_user(name, f"{name}@example.org", uuid.uuid4().hex)
    return GalaxyInstance(url, key=admin.users.get_or_create_user_apikey(user["id"]))


def upload(gi, history_id, content, file_type="txt"):
    """Paste `content` into a new dataset and wait until it is ready."""
    ds = gi.tools.paste_content(content, history_id, file_type=file_type)["outputs"][0]
    return gi.datasets.wait_for_dataset(ds["id"], maxwait=JOB_WAIT)


def run_and_wait(gi, history_id, tool_id, inputs, maxwait=JOB_WAIT):
    """Run a tool, wait for its job to end (in any state), return the job's full details."""
    job = gi.tools.run_tool(history_id, tool_id, inputs)["jobs"][0]
    return wait_for_job(gi, job["id"], maxwait)


def wait_for_job(gi, job_id, maxwait=JOB_WAIT):
    deadline = time.monotonic() + maxwait
    while time.monotonic() < deadline:
        job = gi.jobs.show_job(job_id, full_details=True)
        if job["state"] in ("ok", "error", "deleted", "failed", "skipped"):
            return job
        time.sleep(2)
    raise TimeoutError(f"job {job_id} still {job['state']} after {maxwait}s")


def log_in(url, email, password):
    """A browser-like session logged in with Galaxy's session cookie (no API key)."""
    session = requests.Session()
    session.get(f"{url}/login/start", timeout=30)  # starts the session the CSRF token belongs to
    token = session.get(f"{url}/context", timeout=30).json()["session_csrf_token"]
    r = session.post(f"{url}/user/login", timeout=30,
                     json={"login": email, "password": password, "session_csrf_token": token})
    assert r.ok, r.text
    return session


def nginx_upstreams(stack, marker):
    """The replica addresses nginx sent each logged request containing `marker` to."""
    log = stack.compose("logs --no-color nginx")
    return [m.group(1) for line in log.splitlines() if marker in line
            for m in [re.search(r"upstream=(\S+)", line)] if m]


def container_of(stack, service, index):
    """The container id of replica `index` of `service`."""
    ids = stack.compose(f"ps -q {service}").split()
    containers = json.loads(stack.docker(f"inspect {' '.join(ids)}"))
    return next(c["Id"] for c in containers
                if c["Config"]["Labels"]["com.docker.compose.container-number"] == str(index))


def psql(stack, query):
    """`query`'s rows from Galaxy's database, as psql prints them unaligned (-At), stripped."""
    return stack.exec("postgres", f'psql -U galaxy -d galaxy -At -c "{query}"').strip()


def slurm_accounting(stack, slurm_ids):
    """Slurm's own record of every job submitted today (sacct; finished jobs included, a requeued
    job once per run): [{"id", "name", "state", "node"}], once it holds each of `slurm_ids`
    (slurmctld sends its records to slurmdbd in the background: a job just ended may not be there
    yet). Slurm's job name is g<Galaxy's job id>."""
    keys = ("id", "name", "state", "node")
    taken = []

    def holds_them():
        out = stack.exec("slurmctld", "sacct -X -D -n -P -a -S now-1days -o JobID,JobName,State,NodeList")
        taken.append([dict(zip(keys, line.split("|"), strict=True))
                      for line in out.splitlines() if line.strip()])
        return set(slurm_ids) <= {r["id"] for r in taken[-1]}
    wait_for(holds_them, 60, f"Slurm's accounting of jobs {sorted(slurm_ids)}", pause=1)
    return taken[-1]


def write_file(stack, path, text):
    """Write `text` to `path` in the web container, as Galaxy's user."""
    encoded = base64.b64encode(text.encode()).decode()
    stack.exec("web", f"sh -c 'echo {encoded} | base64 -d > {path}'")


SITE_TOOLS = "/srv/galaxy/config/local_tools"


# A tool of the site's own (helpers.install_site_tool): it sleeps, then writes the host it ran
# on. Its timelimit (seconds) becomes Slurm's time limit.
SLEEP_TOOL = """<tool id="sg_sleep" name="Sleep" version="1.0.0" profile="22.05">
    <description>then write the host it ran on</description>
    <requirements>
        <resource type="timelimit">60</resource>
    </requirements>
    <command>sleep $seconds &amp;&amp; hostname &gt; '$output'</command>
    <inputs>
        <param name="seconds" type="integer" value="5" min="0"/>
    </inputs>
    <outputs>
        <data name="output" format="txt"/>
    </outputs>
</tool>
"""


def site_tool_conf(tool_id):
    """local_tool_conf.xml listing the one site tool `tool_id` (its file in SITE_TOOLS)."""
    return f"""<?xml version="1.0"?>
<toolbox tool_path="{SITE_TOOLS}" is_shed_conf="false">
    <section id="site_tools" name="Site tools">
        <tool file="{tool_id}.xml"/>
    </section>
</toolbox>
"""


def handler_toolbox_loads(stack):
    """How often the handlers have (re)loaded their toolbox: each queues a search index rebuild."""
    return stack.compose("logs --no-color runner").count(
        "Queuing async task rebuild_toolbox_search_index for handler_")


def install_site_tool(stack, admin, tool_id, files):
    """A tool of the site's own (config/galaxy.yml: local tools), added the way an admin would:
    `files` (name: text, `<tool_id>.xml` among them) in the site's tool folder, the tool listed
    in local_tool_conf.xml (replacing what it listed), and the toolbox reloaded. Returns once
    every handler and web replica has it."""
    for name, text in files.items():
        write_file(stack, f"{SITE_TOOLS}/{name}", text)
    write_file(stack, "/srv/galaxy/config/local_tool_conf.xml", site_tool_conf(tool_id))
    reloads = handler_toolbox_loads(stack)
    admin.make_put_request(f"{admin.url}/configuration/toolbox")
    wait_for(lambda: handler_toolbox_loads(stack) > reloads, 120, f"{tool_id} in the handler")
    # Each web replica reloads on its own, a little later or sooner than the handler.
    for index in range(1, stack.replicas("web") + 1):
        wait_for(lambda i=index: stack.exec("web", "curl -fs -o /dev/null -H "
                                            f"'x-api-key: {admin.key}' "
                                            f"http://localhost:8080/api/tools/{tool_id}", index=i)
                 is not None, 120, f"{tool_id} in web replica {index}")


def cat_workflow(name):
    """One input dataset, cat1 on it: a workflow in Galaxy's own (.ga) format."""
    return {
        "a_galaxy_workflow": "true", "format-version": "0.1", "name": name, "annotation": "",
        "tags": [], "steps": {
            "0": {"id": 0, "type": "data_input", "label": "text", "name": "Input dataset",
                  "tool_state": json.dumps({"optional": False}), "annotation": "",
                  "inputs": [{"name": "text", "description": ""}], "input_connections": {},
                  "outputs": [], "position": {"left": 0, "top": 0}, "workflow_outputs": []},
            "1": {"id": 1, "type": "tool", "tool_id": "cat1", "tool_version": "1.0.0",
                  "name": "Concatenate", "annotation": "", "label": "cat",
                  "tool_state": json.dumps({"input1": {"__class__": "ConnectedValue"},
                                            "queries": []}),
                  "input_connections": {"input1": {"id": 0, "output_name": "output"}},
                  "inputs": [], "outputs": [{"name": "out_file1", "type": "input"}],
                  "position": {"left": 200, "top": 0}, "post_job_actions": {},
                  "workflow_outputs": [{"output_name": "out_file1", "label": "copy"}]},
        }}


class Clients:
    """Threads each running `client()` from the start of a `with` block until its end (checking
    `running`)."""

    def __init__(self, clients):
        self.running = True
        self.threads = [threading.Thread(target=self.client) for _ in range(clients)]

    def client(self):
        raise NotImplementedError

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.running = False
        for t in self.threads:
            t.join()


class Load(Clients):
    """Clients sending requests through nginx until stopped; every answer is recorded, with
    when its request was sent (`answers`: (monotonic time, status or error))."""

    def __init__(self, url, headers, clients):
        self.url, self.headers, self.answers = url, headers, []
        super().__init__(clients)

    def client(self):
        with requests.Session() as session:
            while self.running:
                sent = time.monotonic()
                try:
                    result = session.get(self.url, headers=self.headers, timeout=60).status_code
                except requests.RequestException as e:
                    result = repr(e)
                self.answers.append((sent, result))

    @property
    def results(self):
        return [result for _, result in self.answers]

    def failures(self):
        return collections.Counter(r for r in self.results if r != 200)

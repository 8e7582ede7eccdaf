"""Scale out live: web replicas behind nginx (no reload), several job handlers sharing the work,
and a database sized for the fleet; and the faults of a scaled stack: a replica killed, every
handler restarted, handlers removed with jobs in flight. Each test scales the stack to what it
needs first; every test but the last keeps three handlers, and tests needing more web replicas
come before those needing fewer (starting a replica costs a minute; stopping one, seconds)."""
import collections
import os
import re
import time
import uuid
from urllib.parse import urlsplit

import pytest
import requests

from helpers import (JOB_WAIT, SLEEP_TOOL, Load, container_of, install_site_tool, log_in,
                     nginx_upstreams, psql, slurm_accounting, upload, wait_for, wait_for_job)

WEB_REPLICAS = 4
HANDLERS = 3
JOBS = 30

pytestmark = pytest.mark.timeout(420)


def test_scaled_web_replicas_all_serve_requests(stack):
    stack.scale(web=WEB_REPLICAS, runner=HANDLERS)
    web_ips = stack.addresses("web", "front")
    assert len(web_ips) == WEB_REPLICAS
    # Docker's DNS has the new replicas at once; nginx re-resolves every 5 s, without a reload.
    marker = f"spread-{uuid.uuid4().hex[:8]}"
    for i in range(300):
        assert requests.get(f"{stack.url}/api/version?{marker}={i}", timeout=30).ok
    served = collections.Counter(addr.split(":")[0] for addr in nginx_upstreams(stack, marker))
    assert set(served) == set(web_ips), served


def test_one_login_works_on_every_replica(stack, admin):
    stack.scale(web=WEB_REPLICAS, runner=HANDLERS)
    name = f"s{uuid.uuid4().hex[:8]}"
    admin.users.create_local_user(name, f"{name}@example.org", "session-password")
    session = log_in(stack.url, f"{name}@example.org", "session-password")
    marker = f"session-{uuid.uuid4().hex[:8]}"
    for i in range(40):
        r = session.get(f"{stack.url}/api/users/current?{marker}={i}", timeout=30)
        assert r.json().get("email") == f"{name}@example.org", r.text
    assert {a.split(":")[0] for a in nginx_upstreams(stack, marker)} == stack.addresses("web", "front")


def test_tus_upload_in_chunks_across_replicas(stack, user):
    stack.scale(web=WEB_REPLICAS, runner=HANDLERS)
    data = os.urandom(1 << 20)
    chunk = 64 * 1024
    key = {"x-api-key": user.key, "Tus-Resumable": "1.0.0"}
    created = requests.post(f"{stack.url}/api/upload/resumable_upload/", timeout=30,
                            headers={**key, "Upload-Length": str(len(data))})
    assert created.status_code == 201, created.text
    location = created.headers["Location"]
    for offset in range(0, len(data), chunk):
        r = requests.patch(location, data=data[offset:offset + chunk], timeout=60, headers={
            **key, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"})
        assert r.status_code == 204, r.text
    upload_id = location.rsplit("/", 1)[1]
    history = user.histories.create_history("tus")
    out = user.tools.post_to_fetch("random.bin", history["id"], upload_id, file_type="binary")
    dataset = user.datasets.wait_for_dataset(out["outputs"][0]["id"], maxwait=JOB_WAIT)
    assert user.datasets.download_dataset(dataset["id"]) == data
    # This upload's chunks (its id is in their path) were served by more than one replica.
    servers = nginx_upstreams(stack, f"PATCH {urlsplit(location).path} ")
    assert len(servers) == len(data) // chunk
    assert len(set(servers)) >= 2, servers


def test_killing_one_of_four_replicas_under_load_fails_no_request(stack, user, figure):
    """A web replica dies without warning (SIGKILL) while four clients read through nginx: nginx
    sends each request the dead replica had, or would get, to another (proxy_next_upstream, for
    idempotent requests) until it resolves the replica away, and no client sees an error."""
    stack.scale(web=WEB_REPLICAS, runner=HANDLERS)
    history = user.histories.create_history("one replica killed")
    marker = f"kill-{uuid.uuid4().hex[:8]}"
    url = f"{stack.url}/api/histories/{history['id']}/contents?{marker}=1"
    victim = container_of(stack, "web", 2)
    with Load(url, {"x-api-key": user.key}, clients=4) as load:
        wait_for(lambda: len(load.results) >= 50, 120, "load on four replicas", pause=0.5)
        stack.docker(f"kill {victim}")
        killed_after = len(load.results)
        wait_for(lambda: len(load.results) >= killed_after + 200, 180,
                 "200 requests after the kill", pause=0.5)
    assert stack.docker(f"inspect -f {{{{.State.Running}}}} {victim}").strip() == "false"
    assert not load.failures(), load.failures()
    retried = [a for a in nginx_upstreams(stack, marker) if a.endswith(",")]
    assert retried  # requests did meet the dead replica, and were answered by another
    figure(f"{len(load.results)} requests by 4 clients, one of 4 replicas killed after "
           f"{killed_after}: 0 failed, {len(retried)} sent on to another replica by nginx")


@pytest.mark.timeout(600)
def test_database_holds_seven_web_replicas_three_handlers_and_a_worker(stack, user, figure):
    web, workers = 7, 1
    stack.scale(web=web, runner=HANDLERS, celery=workers)
    max_connections = int(psql(stack, "show max_connections"))
    setting = {v: int(stack.exec("web", f"printenv {v}")) for v in
               ("GALAXY_WEB_WORKERS", "GALAXY_DB_POOL_SIZE", "GALAXY_DB_MAX_OVERFLOW")}
    # The README's formula: every Galaxy process (web workers, handlers, Celery workers, migrate)
    # at its pool's worst case, plus 10 for administration.
    processes = web * setting["GALAXY_WEB_WORKERS"] + HANDLERS + workers + 1
    bound = processes * (setting["GALAXY_DB_POOL_SIZE"] + setting["GALAXY_DB_MAX_OVERFLOW"])
    assert bound + 10 <= max_connections
    history = user.histories.create_history("fleet")
    url = f"{stack.url}/api/histories/{history['id']}/contents"
    samples = []
    count = "select count(*) from pg_stat_activity where datname='galaxy'"
    with Load(url, {"x-api-key": user.key}, clients=64) as load:
        # Sampled while 64 clients keep every replica busy, until 400 requests are answered.
        wait_for(lambda: samples.append(int(psql(stack, count)))
                 or len(load.results) >= 400, 300, "400 requests under load", pause=1)
    peak = max(samples)
    figure(f"{len(load.results)} requests by 64 clients, peak {peak} connections; "
           f"formula {bound} (+10), max_connections {max_connections}")
    assert not load.failures(), load.failures()
    # The measured peak is within what the formula provides for.
    assert peak <= bound, (peak, bound)
    logs = stack.compose("logs --no-color postgres web runner")
    assert "too many clients" not in logs and "remaining connection slots" not in logs


def test_scaling_down_under_load_fails_no_request(stack, user):
    stack.scale(web=WEB_REPLICAS, runner=HANDLERS)
    history = user.histories.create_history("under load")
    marker = f"down-{uuid.uuid4().hex[:8]}"
    url = f"{stack.url}/api/histories/{history['id']}/contents?{marker}=1"
    with Load(url, {"x-api-key": user.key}, clients=4) as load:
        wait_for(lambda: len(load.results) >= 50, 120, "load on four replicas", pause=0.5)
        stack.scale(web=2, runner=HANDLERS)  # gunicorn finishes what it has; nginx moves on
        remaining = stack.addresses("web", "front")
        assert len(remaining) == 2

        def nginx_moved_on():  # its last 30 answers all came from the two remaining replicas
            last = nginx_upstreams(stack, marker)[-30:]
            return len(last) == 30 and {a.split(":")[0] for a in last} <= remaining
        wait_for(nginx_moved_on, 120, "nginx using only the remaining replicas", pause=1)
    assert not load.failures(), load.failures()


def test_a_toolbox_reload_reaches_every_replica_through_the_broker(stack, admin):
    """A reload asked of one replica (through nginx) reaches every web replica and handler over
    Galaxy's control bus, which is RabbitMQ: each process consumes its own queue there, and
    PostgreSQL has no table of kombu's SQL transport (the bus no longer polls it)."""
    stack.scale(web=2, runner=HANDLERS)
    tool_id = f"sg_bus_{uuid.uuid4().hex[:6]}"
    # Returns once every web replica (asked directly) and a handler have the new tool.
    tool = f"""<tool id="{tool_id}" name="Bus" version="1.0.0">
    <command>echo ok &gt; '$out'</command>
    <inputs/>
    <outputs><data name="out" format="txt"/></outputs>
</tool>
"""
    install_site_tool(stack, admin, tool_id, {f"{tool_id}.xml": tool})
    rows = stack.exec("rabbitmq", "rabbitmqctl -q list_queues -p galaxy name consumers").split("\n")
    consumed = {name.split("@")[0] for name, consumers in (r.split() for r in rows if r.strip())
                if name.startswith("control.") and int(consumers) > 0}
    assert consumed == {"control.web_1.1", "control.web_2.1", "control.handler_1",
                        "control.handler_2", "control.handler_3"}, rows
    assert psql(stack, "select count(*) from pg_tables where tablename like 'kombu%'") == "0"


@pytest.mark.timeout(600)
def test_jobs_are_shared_by_handlers_and_run_once_when_all_restart(stack, admin, user, figure):
    """30 jobs over three handlers; with the queue still full, every handler restarts at once.
    Each handler takes up what it held when it starts again: every job ends ok, each ran on Slurm
    exactly once, and every handler took some."""
    stack.scale(web=2, runner=HANDLERS)
    history = user.histories.create_history("many jobs")
    source = upload(user, history["id"], "a\tb\n")
    runs = [user.tools.run_tool(history["id"], "cat1",
                                {"input1": {"src": "hda", "id": source["id"]}})
            for _ in range(JOBS)]

    def states():
        return collections.Counter(user.jobs.show_job(run["jobs"][0]["id"])["state"]
                                   for run in runs)
    wait_for(lambda: states()["ok"] >= 3, JOB_WAIT, "the first jobs done")
    waiting = JOBS - states()["ok"]
    query = "select distinct handler from job where state in ('new', 'queued', 'running')"
    holders = psql(stack, query).split()
    assert len(set(holders) & {f"handler_{i}" for i in range(1, HANDLERS + 1)}) >= 2, holders
    restarted = time.monotonic()
    stack.compose("restart runner")  # all three at once
    for run in runs:
        state = user.datasets.wait_for_dataset(run["outputs"][0]["id"], maxwait=JOB_WAIT)
        assert state["state"] == "ok"
    figure(f"{waiting} of {JOBS} jobs not done when all {HANDLERS} handlers restarted; all ok "
           f"{time.monotonic() - restarted:.0f} s after the restart")
    jobs = [admin.jobs.show_job(run["jobs"][0]["id"], full_details=True) for run in runs]
    # Exactly one Slurm job per Galaxy job: Slurm's own accounting agrees with Galaxy's record.
    slurm_ids = [job["external_id"] for job in jobs]
    assert len(set(slurm_ids)) == JOBS
    records = slurm_accounting(stack, slurm_ids)
    name_of = {r["id"]: r["name"] for r in records}
    submissions = collections.Counter(r["name"] for r in records)  # name: g<Galaxy job id>
    for slurm_id in slurm_ids:
        assert submissions[name_of[slurm_id]] == 1, (slurm_id, name_of[slurm_id])
    # Every handler took some: the handler column of Galaxy's job table (the API hides it).
    galaxy_ids = [re.fullmatch(r"g(\d+)", name_of[s]).group(1) for s in slurm_ids]
    query = f"select handler from job where id in ({','.join(galaxy_ids)})"
    rows = psql(stack, query).split()
    handlers = collections.Counter(rows)
    assert sum(handlers.values()) == JOBS
    assert set(handlers) == {f"handler_{i}" for i in range(1, HANDLERS + 1)}, handlers


@pytest.mark.timeout(600)
def test_jobs_of_handlers_removed_by_scaling_down_end_ok(stack, admin, user, figure):
    """`--scale runner=1` from three while the removed handlers hold jobs running on Slurm (and
    maybe claimed ones waiting): the handler left takes them over once they are gone
    (docker/stranded_jobs.py), and every job ends ok, run on Slurm once."""
    stack.scale(web=2, runner=HANDLERS)
    install_site_tool(stack, admin, "sg_sleep", {"sg_sleep.xml": SLEEP_TOOL})
    history = user.histories.create_history("handlers removed")
    # Longer than a removed handler's 10 s to stop: they are still running when it has gone.
    job_ids = [user.tools.run_tool(history["id"], "sg_sleep", {"seconds": 30})["jobs"][0]["id"]
               for _ in range(6)]
    removed = [f"handler_{i}" for i in range(2, HANDLERS + 1)]
    names = ", ".join(f"'{name}'" for name in removed)
    query = f"select state from job where handler in ({names}) and state in ('new', 'queued', 'running')"

    def held_by_removed():
        return psql(stack, query).split()
    wait_for(lambda: "running" in held_by_removed(), JOB_WAIT, f"a job running for {removed}",
             pause=0.5)
    removed_at = time.monotonic()
    stack.compose("up -d --scale web=2 --scale runner=1 --scale node=1 --scale celery=1")
    held = collections.Counter(held_by_removed())
    assert stack.replicas("runner") == 1 and held["running"] >= 1, held
    jobs = [wait_for_job(user, job_id, maxwait=JOB_WAIT + 300) for job_id in job_ids]
    figure(f"held by the removed handlers once they were gone: {dict(held)}; all {len(jobs)} "
           f"jobs' ends {time.monotonic() - removed_at:.0f} s after scaling down")
    assert [job["state"] for job in jobs] == ["ok"] * len(jobs), [job["state"] for job in jobs]
    assert re.search(r"handler_[23] is gone", stack.compose("logs --no-color runner"))
    external = [admin.jobs.show_job(job_id, full_details=True)["external_id"] for job_id in job_ids]
    records = slurm_accounting(stack, external)
    name_of = {r["id"]: r["name"] for r in records}
    submissions = collections.Counter(r["name"] for r in records)  # name: g<Galaxy job id>
    for slurm_id in external:
        assert submissions[name_of[slurm_id]] == 1, name_of[slurm_id]

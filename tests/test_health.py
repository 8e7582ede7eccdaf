"""The job handlers' health and upkeep. Health that means something (docker/health.py): a
handler is healthy only while its heartbeat in the database moves; a wedged one (stopped with
SIGSTOP: the process is there, `pgrep` finds it, it does nothing) turns unhealthy, its watchdog
ends it, the container's restart policy brings it back, and the jobs it held end `ok`. And no
job stranded (docker/stranded_jobs.py): one deleted before any handler claimed it ends
`deleted`. And a database restart costs the site a few 503s, no container restart and no job."""
import collections
import json
import time

import bioblend
import pytest
import requests

from helpers import JOB_WAIT, Clients, Load, psql, upload, wait_for, wait_for_job

pytestmark = pytest.mark.timeout(900)


def inspect(stack, service):
    cid = stack.compose(f"ps -q {service}").split()[0]
    return json.loads(stack.docker(["inspect", cid]))[0]


def test_a_wedged_handler_turns_unhealthy_restarts_and_its_jobs_end_ok(stack, user, figure):
    stack.scale()
    history = user.histories.create_history("held by a wedged handler")["id"]
    text = upload(user, history, "held\n")
    jobs = [user.tools.run_tool(history, "cat1", {"input1": {"src": "hda", "id": text["id"]}})
            ["jobs"][0]["id"] for _ in range(3)]
    # Claimed by the handler (handler_1): queued on Slurm or further.
    wait_for(lambda: all(user.jobs.show_job(j)["state"] in ("queued", "running", "ok") for j in jobs),
             JOB_WAIT, "the jobs claimed by the handler")
    before = inspect(stack, "runner")
    assert before["State"]["Health"]["Status"] == "healthy"

    stack.exec("runner", "pkill -STOP -f galaxy-main")
    stopped = time.monotonic()
    wait_for(lambda: inspect(stack, "runner")["State"]["Health"]["Status"] == "unhealthy", 180,
             "the wedged handler seen unhealthy", pause=5)
    unhealthy = time.monotonic() - stopped
    wait_for(lambda: inspect(stack, "runner")["RestartCount"] > before["RestartCount"], 180,
             "the wedged handler restarted", pause=5)
    restarted = time.monotonic() - stopped
    assert "heartbeat has not moved" in stack.compose("logs --no-color --tail 200 runner")
    stack.wait_ready()
    states = [wait_for_job(user, j)["state"] for j in jobs]
    assert states == ["ok"] * 3, states
    figure(f"SIGSTOP'd handler unhealthy after {unhealthy:.0f} s, restarted after {restarted:.0f} s, "
           f"its {len(jobs)} jobs ended ok {time.monotonic() - stopped:.0f} s after the stop")


def test_a_job_deleted_before_any_handler_claimed_it_ends_deleted(stack, user):
    stack.scale()
    history = user.histories.create_history("deleted before it was claimed")["id"]
    text = upload(user, history, "never run\n")
    stack.compose("stop runner")  # no handler to claim it
    try:
        job = user.tools.run_tool(history, "cat1", {"input1": {"src": "hda", "id": text["id"]}})
        job_id = job["jobs"][0]["id"]
        user.jobs.cancel_job(job_id)
        assert user.jobs.show_job(job_id)["state"] == "deleting"
    finally:
        stack.compose("start runner")
    wait_for(lambda: user.jobs.show_job(job_id)["state"] == "deleted", 300,
             "the deleted job ended by a handler")


def test_a_database_restart_under_load_needs_no_other_restart_and_loses_no_job(stack, user,
                                                                                figure):
    """PostgreSQL stops and starts again while clients read through nginx and jobs are submitted
    one after another (so some are being claimed, prepared, submitted to Slurm, run and finished
    as it goes). While it is away a request fails only with 503 naming it (Galaxy alone gives a
    bare 500); from 30 s after it is back every request succeeds; every Galaxy process beats
    again, and no other container restarted; every job Galaxy accepted ends ok."""
    stack.scale()
    history = user.histories.create_history("database restart")["id"]
    text = upload(user, history, "kept\n")
    ids = stack.compose("ps -q").split()
    started = {c["Id"]: (c["Name"], c["State"]["StartedAt"], c["RestartCount"])
               for c in json.loads(stack.docker(["inspect", *ids]))
               if c["State"]["Running"] and "postgres" not in c["Name"]}
    beating = psql(stack, f"select distinct server_name from worker_process where {FRESH}").split()
    url = f"{stack.url}/api/histories/{history}/contents"
    with Load(url, {"x-api-key": user.key}, clients=4) as load:
        wait_for(lambda: len(load.results) >= 20, 60, "load", pause=0.5)
        with Submitting(user, history, text["id"]) as submitted:
            wait_for(lambda: len(submitted.jobs) >= 4, 60, "the first jobs accepted", pause=0.5)
            away = time.monotonic()
            stack.compose("stop postgres")
            try:
                r = requests.get(url, headers={"x-api-key": user.key}, timeout=60)
                assert r.status_code == 503, r.text
                assert "the postgres service" in r.json()["err_msg"]
                assert r.headers["retry-after"] == "30"
            finally:
                stack.compose("start postgres")
            wait_for(lambda: "accepting" in stack.exec("postgres", "pg_isready -U galaxy -d galaxy"),
                     120, "PostgreSQL accepting connections", pause=0.5)
            back, back_at = time.monotonic(), psql(stack, "select timezone('utc', now())")
            accepted = len(submitted.jobs)
            wait_for(lambda: len(submitted.jobs) >= accepted + 4, 60, "jobs accepted again",
                     pause=0.5)
        wait_for(lambda: time.monotonic() > back + 45, 60, "45 s of load after the restart")
    failed = [(sent - back, result) for sent, result in load.answers if result != 200]
    # Each Galaxy process beats again (its heartbeat thread outlived the outage), as the
    # watchdog and the healthchecks require.
    wait_for(lambda: set(beating) <= set(psql(stack, "select server_name from worker_process "
                                                     f"where update_time > '{back_at}'").split()),
             120, f"a heartbeat from each of {beating} after the restart")
    figure(f"PostgreSQL away {back - away:.0f} s; {len(failed)} of {len(load.answers)} requests "
           f"failed, the last sent {max((t for t, _ in failed), default=0):.0f} s after it was "
           f"back; {len(beating)} Galaxy processes beat again, no other container restarted; "
           f"{len(submitted.jobs)} jobs accepted around it ({len(submitted.refused)} refused)")
    assert {result for _, result in failed} == {503}, failed
    assert all(t <= 30 for t, _ in failed), failed
    assert set(submitted.refused) <= {503}, submitted.refused
    after = {c["Id"]: (c["Name"], c["State"]["StartedAt"], c["RestartCount"])
             for c in json.loads(stack.docker(["inspect", *started]))}
    assert after == started
    states = collections.Counter(wait_for_job(user, j)["state"] for j in submitted.jobs)
    assert states == {"ok": len(submitted.jobs)}, states


class Submitting(Clients):
    """A client submitting cat1 jobs one after another, about one a second, until the block ends:
    `jobs`, the ids Galaxy accepted; `refused`, the status of each submission it refused."""

    def __init__(self, user, history, dataset):
        self.user, self.history, self.dataset = user, history, dataset
        self.jobs, self.refused = [], []
        super().__init__(clients=1)

    def client(self):
        while self.running:
            try:
                run = self.user.tools.run_tool(self.history, "cat1",
                                               {"input1": {"src": "hda", "id": self.dataset}})
                self.jobs.append(run["jobs"][0]["id"])
            except bioblend.ConnectionError as e:
                self.refused.append(e.status_code)
            time.sleep(1)  # pace, not a wait: a few dozen jobs in all


# A heartbeat written within the last minute and a half (Galaxy beats every minute).
FRESH = "update_time > timezone('utc', now()) - interval '90 seconds'"

"""The job handlers' health and upkeep. Health that means something (docker/health.py): a
handler is healthy only while its heartbeat in the database moves; a wedged one (stopped with
SIGSTOP: the process is there, `pgrep` finds it, it does nothing) turns unhealthy, its watchdog
ends it, the container's restart policy brings it back, and the jobs it held end `ok`. And no
job stranded (docker/stranded_jobs.py): one deleted before any handler claimed it ends
`deleted`."""
import json
import time

import pytest

from helpers import JOB_WAIT, upload, wait_for, wait_for_job

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

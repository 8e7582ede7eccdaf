"""Jobs no handler would ever finish, given to a live one (run by each handler's supervisor,
docker/entrypoint.py, every half minute). Galaxy 26.1's handlers (db-skip-locked) claim only
`new` jobs from the pool, and each takes up only jobs that carry its own name; two kinds of job
never match:

- A job deleted or stopped before any handler claimed it keeps the pool's tag as its handler
  (`_default_`, set by the web replica that created it) and is set to `deleting` or `stop` by
  the replica that deletes it: nothing ever finishes the deletion (`claim_deleted`).
- The jobs of a handler that is gone (`--scale runner=1` from 2 removes handler_2) wait for it
  to come back (`Adopter`). Once its heartbeat is stale and its container is not running for a
  minute, a live handler gives its `new` jobs back to the pool (any handler claims them), takes
  its deletions, resubmissions and active workflow invocations (taken up at once), and its
  queued, running and stopped jobs, which Galaxy takes up only when a handler starts
  (JobHandlerQueue's startup check): so the adopting handler then starts again, once no job of
  its own runs in it (`Adopter.adopt` says so; entrypoint.role_handler).

Every update matches on the handler's name, so each row moves once: when two live handlers run
this at the same moment, each gets some of the rows and the other matches nothing.
"""
import time
from contextlib import closing

# Galaxy's pool tag for jobs no handler has claimed (galaxy.web_stack.handlers), and the states a
# deletion or a stop leaves a job in until its handler acts (galaxy.model.Job.states).
UNCLAIMED = "_default_"
WAITING_FOR_A_HANDLER = ("deleting", "stop")
# Jobs a handler takes up only when it starts (JobHandlerQueue's startup check): dispatched to its
# runner, running on Slurm, or stopped and still to be finished by its runner.
HELD = ("queued", "running", "stopped")
# Jobs its queue takes up while it runs: waiting to be resubmitted.
RESUBMITTED = ("resubmitted",)
UNFINISHED = ("new", *HELD, *WAITING_FOR_A_HANDLER, *RESUBMITTED)
# Invocations a handler's workflow scheduler polls for (WorkflowInvocation.poll_active_workflow_ids).
ACTIVE_INVOCATION = ("new", "requires_materialization", "ready", "cancelling")
# A handler is gone once it has been seen gone (heartbeat stale, container not running) for this
# long: a restarting container is running again within seconds.
GONE_AFTER = 60
# Galaxy beats every 60 s (galaxy.model.database_heartbeat): a beat and a half.
STALE_AFTER = 90


def connect(url):
    import psycopg2
    return closing(psycopg2.connect(url, connect_timeout=5))


def claim_deleted(url, name):
    """Give this handler (`name`) the unclaimed jobs waiting to be deleted or stopped; how many."""
    with connect(url) as conn, conn, conn.cursor() as cur:
        cur.execute("UPDATE job SET handler = %s WHERE handler = %s AND state IN %s",
                    (name, UNCLAIMED, WAITING_FOR_A_HANDLER))
        return cur.rowcount


class Adopter:
    """Finds the handlers that are gone, and adopts their work. `running(name)`: whether that
    handler's container runs (True), or not (False), or None where that can't be known (then
    no handler is ever judged gone)."""

    def __init__(self, url, name, running):
        self.url, self.name, self.running = url, name, running
        self.gone_since = {}  # handler name: when first seen gone (monotonic)

    def gone(self, now=None):
        """The handlers, other than this one, that hold unfinished work and have been gone for
        GONE_AFTER seconds."""
        now = time.monotonic() if now is None else now
        with connect(self.url) as conn, conn, conn.cursor() as cur:
            # Only names the stack gives (handler_<replica number>): `running` can judge those.
            cur.execute(
                "SELECT handler FROM job WHERE state IN %(jobs)s AND handler ~ '^handler_[0-9]+$'"
                " UNION SELECT handler FROM workflow_invocation"
                " WHERE state IN %(invocations)s AND handler ~ '^handler_[0-9]+$'"
                " EXCEPT SELECT server_name FROM worker_process"
                " WHERE update_time > timezone('utc', now()) - %(stale)s * interval '1 second'",
                {"jobs": UNFINISHED, "invocations": ACTIVE_INVOCATION, "stale": STALE_AFTER})
            silent = {row[0] for row in cur.fetchall()} - {self.name}
        suspects = {h for h in silent if self.running(h) is False}
        self.gone_since = {h: self.gone_since.get(h, now) for h in suspects}
        return sorted(h for h, since in self.gone_since.items() if now - since >= GONE_AFTER)

    def adopt(self, gone):
        """Take over the work of handler `gone`: {what: how many}. Held jobs (key "held") come
        to this handler, which must start again for Galaxy to take them up."""
        moved = {}
        with connect(self.url) as conn, conn, conn.cursor() as cur:
            for what, table, new_handler, states in (
                    ("to the pool", "job", UNCLAIMED, ("new",)),
                    ("deletions", "job", self.name, WAITING_FOR_A_HANDLER),
                    ("resubmissions", "job", self.name, RESUBMITTED),
                    ("held", "job", self.name, HELD),
                    ("invocations", "workflow_invocation", self.name, ACTIVE_INVOCATION)):
                cur.execute(f"UPDATE {table} SET handler = %s WHERE handler = %s AND state IN %s",
                            (new_handler, gone, states))
                moved[what] = cur.rowcount
        self.gone_since.pop(gone, None)
        return moved

    def runs_local_jobs(self):
        """Whether a job runs in this handler itself (an upload, Galaxy's own tools): a restart
        would end it ("killed when Galaxy was restarted")."""
        with connect(self.url) as conn, conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM job WHERE handler = %s AND state IN ('queued', 'running')"
                        " AND job_runner_name LIKE 'local%%'", (self.name,))
            return cur.fetchone()[0] > 0

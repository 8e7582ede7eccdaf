"""Jobs no handler would ever finish, given to this one (run by each handler's supervisor,
docker/entrypoint.py, every half minute).

A job deleted or stopped before any handler claimed it keeps the pool's tag as its handler
(`_default_`, set by the web replica that created it) and is set to `deleting` or `stop` by the
replica that deletes it. Galaxy 26.1's handlers claim only `new` jobs from the pool (db-skip-
locked), and each finishes deletions only of jobs whose handler is its own name: so nothing ever
does, and the job stays `deleting` for ever. Naming a live handler hands it over; that handler's
stop queue then ends the job as Galaxy would (`deleted`, with its state history). Each row is
updated once: the first handler to run this takes it, the others match nothing.
"""
from contextlib import closing

# Galaxy's pool tag for jobs no handler has claimed (galaxy.web_stack.handlers), and the states a
# deletion or a stop leaves a job in until its handler acts (galaxy.model.Job.states).
UNCLAIMED = "_default_"
WAITING_FOR_A_HANDLER = ("deleting", "stop")


def claim_deleted(url, name):
    """Give this handler (`name`) the unclaimed jobs waiting to be deleted or stopped; how many."""
    import psycopg2
    with closing(psycopg2.connect(url, connect_timeout=5)) as conn, conn, conn.cursor() as cur:
        cur.execute("UPDATE job SET handler = %s WHERE handler = %s AND state IN %s",
                    (name, UNCLAIMED, WAITING_FOR_A_HANDLER))
        return cur.rowcount

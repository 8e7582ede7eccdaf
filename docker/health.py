"""Health that means something, for the Galaxy processes of the stack (web replicas, handlers).

Every Galaxy server process writes a heartbeat into the database once a minute (the
worker_process table, keyed by the container's host name; galaxy.model.database_heartbeat). A
process that is wedged, or has lost its database, stops writing it. So:

- the healthcheck (role `health`) is green only while this container's heartbeat is fresh, read
  through a connection of its own (so a replica that can't reach the database is unhealthy
  too), and, for a web replica, while gunicorn answers;
- Docker doesn't restart an unhealthy container, and the stack mounts no Docker socket for
  anything else to: so the handler role watches its own Galaxy process (`watch`) and ends it
  when its heartbeat stops while the database answers; the container's restart policy brings it
  back, and Galaxy's startup takes up the jobs it held.
"""
import socket
import threading
import time

from settings import log

# Galaxy beats every 60 s: a beat and a half.
STALE_AFTER = 90
# The watchdog ends a Galaxy whose beat has not moved for this long while the database answered.
RESTART_AFTER = 150
# A starting Galaxy writes its first beat once its app is built (minutes on a busy machine).
START_GRACE = 600
NOT_READ, DATABASE_AWAY = object(), object()


def last_beat(url):
    """(seconds since this container's latest heartbeat, its time), by this container's clock,
    which is the one Galaxy wrote it with; (None, None) if there is none. Raises if the database
    can't be reached."""
    from contextlib import closing
    from datetime import datetime, timezone

    import psycopg2
    with closing(psycopg2.connect(url, connect_timeout=5)) as conn, conn.cursor() as cur:
        cur.execute("SELECT max(update_time) FROM worker_process WHERE hostname = %s",
                    (socket.gethostname(),))
        at = cur.fetchone()[0]
    if at is None:
        return None, None
    # update_time is naive UTC (galaxy.util.now).
    return (datetime.now(timezone.utc).replace(tzinfo=None) - at).total_seconds(), at


def check(url, http=None):
    """The healthcheck: None if healthy, else why not."""
    if http:
        import urllib.request
        try:
            urllib.request.urlopen(http, timeout=10).close()
        except OSError as e:
            return f"gunicorn does not answer {http}: {e}"
    try:
        age, _ = last_beat(url)
    except Exception as e:
        return f"the database does not answer: {str(e).strip()}"
    if age is None:
        return "Galaxy has written no heartbeat yet (still starting?)"
    if age > STALE_AFTER:
        return f"Galaxy's last heartbeat is {age:.0f} s old (it writes one a minute): wedged?"
    return None


class Watchdog:
    """Judges Galaxy's heartbeat as read every half minute: wedged once it has not moved for
    RESTART_AFTER seconds of readings while the database answered. Until it first moves, a new
    process is given START_GRACE (a restarted container still holds its previous run's beat)."""

    def __init__(self, now):
        self.started = now
        self.first = NOT_READ  # the beat at our start
        self.seen, self.since = None, None  # the beat last seen, and since when it hasn't moved

    def wedged(self, at, now):
        """`at`: the beat read at `now` (our monotonic clock), or DATABASE_AWAY."""
        if at is DATABASE_AWAY:
            self.since = None  # not Galaxy's fault: judge again once the database answers
            return False
        if self.first is NOT_READ:
            self.first = at
        if at == self.first and now - self.started < START_GRACE:
            return False  # still starting: this run's first beat not written yet
        if at != self.seen or self.since is None:
            self.seen, self.since = at, now
            return False
        return now - self.since > RESTART_AFTER


def watch(process, url, name, chores=(), pause=30):
    """Wait for `process` (Galaxy) to end, and end it first if the Watchdog finds it wedged (an
    outage of the database is not Galaxy's fault, and it beats again within a minute once the
    database is back); run `chores` (callables) every round too. Its exit code."""
    def watchdog():
        judge = Watchdog(time.monotonic())
        while process.poll() is None:
            time.sleep(pause)
            for chore in chores:
                try:
                    chore()
                except Exception as e:  # the database away, most likely: next round
                    log(f"{getattr(chore, '__name__', chore)}: {e}")
            try:
                at = last_beat(url)[1]
            except Exception:
                at = DATABASE_AWAY
            if judge.wedged(at, time.monotonic()):
                log(f"{name}'s heartbeat has not moved for {time.monotonic() - judge.since:.0f} s "
                    "while the database answered: Galaxy is wedged; ending it so that the "
                    "container restarts")
                process.kill()
                return
    threading.Thread(target=watchdog, daemon=True).start()
    return process.wait()

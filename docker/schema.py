"""Galaxy's database schema: the revision this image's Galaxy expects, read from its migration
scripts without importing Galaxy (a fraction of a second), and a wait until the database is at
it. Only the migrate role creates or upgrades the schema; every other role that opens the
database waits here, so a process never starts against a schema it doesn't know (Compose orders
migrate first; a stack without that ordering, or a restore, relies on this wait)."""
import os
import re
import sysconfig
import time

from settings import fail, log, start_wait

# Galaxy's own migrations (its gxy branch; tsi is the Tool Shed install branch, unchanged).
VERSIONS = os.path.join(sysconfig.get_paths()["purelib"],
                        "galaxy/model/migrations/alembic/versions_gxy")


def revisions():
    """{revision: the revisions it follows} of every migration this Galaxy ships (a merge
    follows two)."""
    found = {}
    for name in os.listdir(VERSIONS):
        if name.endswith(".py"):
            with open(os.path.join(VERSIONS, name)) as f:
                text = f.read()
            revision = re.search(r'^revision = "(\w+)"', text, re.M)
            follows = re.search(r"^down_revision = (.*)$", text, re.M)
            if revision:
                found[revision.group(1)] = set(re.findall(r'"(\w+)"', follows.group(1) if follows else ""))
    return found


def expected_head():
    """The newest revision: the one no other migration revises."""
    known = revisions()
    heads = set(known) - set().union(*known.values())
    if len(heads) != 1:
        fail(f"Galaxy's migrations in {VERSIONS} have {len(heads)} heads; expected one")
    return heads.pop()


def database_revisions(url):
    """The revisions recorded in the database (alembic_version: one per branch); empty when
    Galaxy's schema was never created."""
    from contextlib import closing

    import psycopg2
    with closing(psycopg2.connect(url, connect_timeout=10)) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass('alembic_version') IS NOT NULL")
        if not cur.fetchone()[0]:
            return set()
        cur.execute("SELECT version_num FROM alembic_version")
        return {row[0] for row in cur.fetchall()}


def database_answers(url):
    try:
        database_revisions(url)
        return True
    except Exception:  # still starting, or unreachable
        return False


def wait_for_schema(url):
    """Return once the database's schema is the one this Galaxy expects. A schema newer than
    this Galaxy stops the container at once; an older or missing one is waited for (the migrate
    service upgrades it) for GALAXY_START_WAIT seconds, then stops it with the reason."""
    timeout_setting, timeout = start_wait()
    head = expected_head()
    known = revisions()
    deadline = time.monotonic() + timeout
    said = None
    while True:
        try:
            found = database_revisions(url)
            at = ", ".join(sorted(found)) or "nothing (an empty database)"
            problem = None if head in found else f"the schema is at {at}"
        except Exception as e:  # the database still starting, or unreachable
            found, problem = set(), f"the database does not answer ({str(e).strip()})"
        if problem is None:
            return
        newer = {rev for rev in found if rev not in known and not is_other_branch(rev)}
        if newer:
            fail(f"the database's schema ({', '.join(sorted(newer))}) is newer than this Galaxy's "
                 f"({head}): these images are older than the database; use the images it was "
                 "upgraded with, or restore a backup taken before the upgrade (README, Upgrades)")
        if time.monotonic() > deadline:
            fail(f"{problem}; this Galaxy needs schema {head}. The migrate service creates and "
                 f"upgrades it: `docker compose up migrate` shows why it didn't "
                 f"(waited {timeout} s, {timeout_setting})")
        if problem != said:
            log(f"waiting for Galaxy's schema {head}: {problem}")
            said = problem
        time.sleep(3)


def is_other_branch(revision):
    """Revisions of alembic branches other than Galaxy's (the Tool Shed install branch)."""
    tsi = os.path.join(os.path.dirname(VERSIONS), "versions_tsi")
    return any(name.startswith(revision) for name in os.listdir(tsi))

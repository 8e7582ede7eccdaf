#!/usr/bin/env python3
"""Entrypoint of the Galaxy images. The command names the role this container plays:

  web        gunicorn serving Galaxy (alone: SQLite + local runner; in the stack: never runs jobs)
  init       one-shot, as root: generate this deployment's secrets once, own the shared volume
  migrate    one-shot: create Galaxy's database schema, or upgrade it
  first-admin  one-shot: the admin's account (GALAXY_ADMIN_EMAIL) before anyone can register it;
               the default quota
  handler    Galaxy job handler (galaxy-main): TPV routes each job to Slurm or runs it locally
  celery     a Celery worker running Galaxy's background tasks (exports, PDFs, jobs' metadata)
  celery-beat  Celery beat: sends Galaxy's periodic housekeeping tasks (run exactly one)
  celery-ping  the celery role's healthcheck: its worker answers a ping through the broker
  schema-head  print the database schema revision this Galaxy expects (scripts/restore)
  manage-db  Galaxy's schema tool on the stack's database (e.g. `manage-db dbversion`)
  health     the healthcheck of the web and handler roles in the stack: a fresh heartbeat
  slurmctld  the Slurm controller                                      [runner image]
  slurmdbd   Slurm's accounting daemon (job records for sacct)         [runner image]
  node       a Slurm compute node (registers itself dynamically)       [runner image]

Anything else is executed as given (e.g. `bash`). Settings come from the environment; a missing
or malformed one stops the container at once with a message naming it. Each role waits (with a
timeout, GALAXY_START_WAIT) for what it needs: Compose starts things in order, Swarm doesn't.
The Slurm roles are in cluster.py, what all roles share in settings.py.
"""
import os
import secrets
import subprocess
import sys

import cluster
import health
import schema
import stranded_jobs
from settings import (DATA_DIR, SECRET_OWNERS, SECRETS_DIR, data_prepared, ensure_site_files,
                      fail, log, mount_points, new_secrets, port_answers, read_secret, replica_name,
                      replica_running, secret_path, setting, wait_until, write_once)

GALAXY_CONFIG = "/etc/galaxy/galaxy.yml"
# Where the init role mounts the jobs volume (elsewhere it is /srv/galaxy/jobs, over the data
# volume's jobs folder, which init must still see to move an older deployment's job directories).
JOBS_VOLUME = "/srv/galaxy-jobs"


def stack_environment():
    """Point Galaxy at PostgreSQL and this deployment's secrets (the compose stack)."""
    user = setting("POSTGRES_USER", "galaxy", r"[A-Za-z_][A-Za-z0-9_]*", "a PostgreSQL role name")
    db = setting("POSTGRES_DB", "galaxy", r"[A-Za-z_][A-Za-z0-9_]*", "a database name")
    host = setting("POSTGRES_HOST", pattern=r"[A-Za-z0-9.-]+", form="a host name")
    port = setting("POSTGRES_PORT", "5432", r"\d{1,5}", "a port number")
    # Each Galaxy process keeps POOL_SIZE connections open and may open MAX_OVERFLOW more for a
    # burst (opening one costs postgres a process and a password check): see README, Scaling.
    for option, default in (("POOL_SIZE", "10"), ("MAX_OVERFLOW", "5")):
        value = setting(f"GALAXY_DB_{option}", default, r"\d+", "a whole number")
        os.environ[f"GALAXY_CONFIG_OVERRIDE_DATABASE_ENGINE_OPTION_{option}"] = value
    # A pooled connection is tested before use: after PostgreSQL restarts, every connection in
    # every process's pool is dead, and without the test each would fail one request or job
    # update. Costs a round trip per checkout.
    os.environ["GALAXY_CONFIG_OVERRIDE_DATABASE_ENGINE_OPTION_POOL_PRE_PING"] = "true"
    password = read_secret("db_password")
    os.environ["GALAXY_CONFIG_OVERRIDE_DATABASE_CONNECTION"] = (
        f"postgresql://{user}:{password}@{host}:{port}/{db}")
    os.environ["GALAXY_CONFIG_OVERRIDE_ID_SECRET"] = read_secret("id_secret")
    # Handlers too check who is admin (workflow scheduling, job limits).
    os.environ["GALAXY_CONFIG_OVERRIDE_ADMIN_USERS"] = setting("GALAXY_ADMIN_EMAIL")


def server_environment():
    """What a Galaxy server process of the stack (web replica, handler) adds: the job
    configuration with the limits, and Celery (which brings the control bus). Returns once the
    database's schema is this Galaxy's."""
    stack_environment()
    wait_for_data()
    schema.wait_for_schema(os.environ["GALAXY_CONFIG_OVERRIDE_DATABASE_CONNECTION"])
    os.environ["GALAXY_CONFIG_OVERRIDE_JOB_CONFIG_FILE"] = job_config_with_limits()
    os.environ["GALAXY_CONFIG_OVERRIDE_TOOL_SHEDS_CONFIG_FILE"] = tool_sheds_config()
    celery_environment()


def wait_for_data():
    wait_until(f"the shared data {DATA_DIR}, prepared by the init service", data_prepared,
               "see the init service's log")


def broker_url():
    """RabbitMQ (the rabbitmq service): Celery's broker, and Galaxy's control bus, by which its
    processes tell each other about toolbox reloads and job locks (Galaxy's default would poll
    PostgreSQL through kombu's SQL transport)."""
    return f"pyamqp://galaxy:{read_secret('broker_password')}@rabbitmq:5672/galaxy"


def celery_environment(results=True):
    """Galaxy's background tasks on: RabbitMQ carries them (broker_url left unset is Galaxy's
    amqp_internal_connection), Redis keeps their results (the redis service) unless `results` is
    False (beat never reads one). celery_conf is a mapping, which GALAXY_CONFIG_OVERRIDE_* can't
    carry: it goes into this container's own copy of galaxy.yml (GALAXY_CONFIG_FILE)."""
    os.environ["GALAXY_CONFIG_OVERRIDE_AMQP_INTERNAL_CONNECTION"] = broker_url()
    backend = f"redis://:{read_secret('results_password')}@redis:6379/0" if results else "disabled"
    os.environ["GALAXY_CONFIG_FILE"] = galaxy_config_with(
        enable_celery_tasks=True,
        # Pages and reports as PDF: a task, rendered by WeasyPrint in the worker (Dockerfile).
        enable_beta_markdown_export=True,
        celery_conf={
            "result_backend": backend,
            # A day: a prepared download's state outlives any client that polls for it.
            "result_expires": 86400,
            # A task leaves the queue when it is done, not when it starts: a worker killed
            # mid-task (stopped past its grace period, out of memory) leaves it to another, as
            # its connection to the broker drops (and, in a prefork pool, when a child dies).
            "task_acks_late": True,
            "task_reject_on_worker_lost": True,
            # A worker takes one task per thread at a time, not a batch another worker could run.
            "worker_prefetch_multiplier": 1,
            "task_routes": {
                # Uploads stay jobs in the handler (as on usegalaxy.org): counted by the job
                # limits and routed by TPV, not run inside a worker (README, Background tasks).
                "galaxy.fetch_data": "disabled",
                "galaxy.set_job_metadata": "galaxy.external",
            },
        })


def galaxy_config_with(**options):
    """A copy of galaxy.yml with `options` added, readable by Galaxy's user only (it may hold a
    password); its path. config_dir stays /etc/galaxy, where Galaxy resolves relative paths."""
    import pwd
    import tempfile

    import yaml
    with open(GALAXY_CONFIG) as f:
        conf = yaml.safe_load(f)
    conf["galaxy"].setdefault("config_dir", os.path.dirname(GALAXY_CONFIG))
    conf["galaxy"].update(options)
    fd, path = tempfile.mkstemp(prefix="galaxy-", suffix=".yml")  # mode 0600
    if os.getuid() == 0:  # the handler writes it as root and runs Galaxy as galaxy
        galaxy = pwd.getpwnam("galaxy")
        os.fchown(fd, galaxy.pw_uid, galaxy.pw_gid)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(conf, f, sort_keys=False)
    return path


# What Galaxy offers for installs unless GALAXY_TOOL_SHEDS says otherwise (as Galaxy does alone).
MAIN_TOOL_SHED = "https://toolshed.g2.bx.psu.edu/"
TOOL_SHED_URL = r"https?://[A-Za-z0-9.-]+(:\d+)?(/[^\s\"<>&]*)?"


def tool_sheds_config():
    """GALAXY_TOOL_SHEDS (Tool Shed URLs, separated by spaces) as Galaxy's tool_sheds_conf.xml, in
    a file of this container's own; its path. Galaxy offers them in Admin > Install and Uninstall,
    and an install from a Tool Shed not listed there fails half-way (it looks the URL up there)."""
    value = setting("GALAXY_TOOL_SHEDS", MAIN_TOOL_SHED, rf"\s*{TOOL_SHED_URL}(\s+{TOOL_SHED_URL})*\s*",
                    "Tool Shed URLs (http:// or https://), separated by spaces")
    sheds = []
    for url in value.split():
        url = url.rstrip("/") + "/"
        name = "Galaxy Main Tool Shed" if url == MAIN_TOOL_SHED else url.split("/")[2]
        sheds.append(f'    <tool_shed name="{name}" url="{url}"/>\n')
    return container_file("galaxy-tool-sheds-", ".xml",
                          f'<?xml version="1.0"?>\n<tool_sheds>\n{"".join(sheds)}</tool_sheds>\n')


def container_file(prefix, suffix, text):
    """`text` in a new file of this container's own (never through a link), readable by Galaxy
    (the handler writes it as root and runs Galaxy as galaxy); its path."""
    import tempfile
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=suffix)
    os.fchmod(fd, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


# The stack's job configuration (in the images; Galaxy alone uses Galaxy's default). A site's
# own, named by GALAXY_CONFIG_OVERRIDE_JOB_CONFIG_FILE, replaces it.
STACK_JOB_CONF = "/etc/galaxy/stack/job_conf.yml"
# Galaxy's per-user limits: setting -> (job_conf limit, default).
JOB_LIMITS = {
    "GALAXY_USER_CONCURRENT_JOBS": ("registered_user_concurrent_jobs", "8"),
    "GALAXY_ANONYMOUS_CONCURRENT_JOBS": ("anonymous_user_concurrent_jobs", "2"),
}


def job_config_with_limits():
    """The job configuration with the limits from the environment added: a user's jobs beyond
    the limit stay new until one of theirs ends (queued and running ones count, on every
    handler). 0: no limit. A limit the configuration sets itself wins. Written to a file of
    this container's own (never through a link)."""
    import yaml
    source = os.environ.get("GALAXY_CONFIG_OVERRIDE_JOB_CONFIG_FILE") or STACK_JOB_CONF
    try:
        with open(source) as f:
            conf = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        fail(f"GALAXY_CONFIG_OVERRIDE_JOB_CONFIG_FILE={source!r} can't be read as YAML: {e}")
    limits = conf.setdefault("limits", [])
    own = {limit.get("type") for limit in limits}
    for name, (limit, default) in JOB_LIMITS.items():
        value = int(setting(name, default, r"\d+", "a whole number of jobs (0: no limit)"))
        if value and limit not in own:
            limits.append({"type": limit, "value": value})
    return container_file("galaxy-job-conf-", ".yml", yaml.safe_dump(conf, sort_keys=False))


def memory_limit():
    """This container's memory limit in bytes (cgroup v2 or v1), or None."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                value = f.read().strip()
        except OSError:
            continue
        return None if value == "max" or int(value) >= 2 ** 62 else int(value)
    return None


def standalone_environment():
    """Galaxy out of the box: SQLite on the data volume, a per-container id_secret."""
    path = os.path.join(DATA_DIR, ".id_secret")
    if not os.path.exists(path):
        write_once(path, secrets.token_hex(24))
    with open(path) as f:
        os.environ.setdefault("GALAXY_CONFIG_OVERRIDE_ID_SECRET", f.read().strip())
    ensure_site_files()


def upload_limit():
    """GALAXY_MAX_UPLOAD_SIZE in bytes; nginx applies the same setting to request bodies."""
    value = setting("GALAXY_MAX_UPLOAD_SIZE", "10g", r"[1-9]\d*[kmgKMG]?",
                    "a size like 10g, 512m or 1048576 (bytes)").lower()
    scale = {"k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}.get(value[-1], 1)
    return int(value.rstrip("kmg")) * scale


def public_subnet(route_table="/proc/net/route"):
    """The subnet of the network that carries our default route. A web replica joins the public
    network (nginx's; compose.yml: front) and the internal backend, and internal networks have
    no gateway: so this is the public network, without pinning its address range."""
    import ipaddress
    with open(route_table) as f:
        routes = [line.split() for line in f.readlines()[1:]]
    # Columns: interface, destination, gateway, flags, refcnt, use, metric, mask (hex, host order).
    default = next((r[0] for r in routes if r[1] == "00000000"), None)
    link = next((r for r in routes if r[0] == default and r[1] != "00000000"
                 and r[2] == "00000000"), None)
    if not link:
        fail("no default route, so no public network to trust forwarded headers from; set "
             "GALAXY_TRUSTED_PROXIES to the proxy's address or subnet")
    address, mask = (ipaddress.IPv4Address(int(h, 16).to_bytes(4, "little")) for h in (link[1], link[7]))
    return str(ipaddress.IPv4Network(f"{address}/{mask}"))


def role_web():
    workers = setting("GALAXY_WEB_WORKERS", "1", r"[1-9]\d*", "a positive whole number")
    limit = memory_limit()
    if limit and limit < (int(workers) + 1) << 30:
        log(f"warning: {workers} gunicorn workers in {limit >> 20} MiB: each takes about 1 GiB, "
            "a large request more; raise GALAXY_WEB_MEMORY (README, Limits)")
    timeout = setting("GALAXY_WEB_TIMEOUT", "300", r"[1-9]\d*", "seconds, a whole number")
    os.environ["GALAXY_CONFIG_OVERRIDE_MAXIMUM_UPLOAD_FILE_SIZE"] = str(upload_limit())
    # Who may set X-Forwarded-*: GALAXY_TRUSTED_PROXIES (addresses or CIDRs, comma-separated);
    # in the stack, the public network nginx shares with us; alone, gunicorn's default (127.0.0.1).
    trusted = os.environ.get("GALAXY_TRUSTED_PROXIES")
    if os.environ.get("POSTGRES_HOST"):
        # Galaxy's app, with a clear answer when a task's servers are unreachable.
        app = "galaxy_stack.web:factory()"
        server_environment()
        trusted = trusted or public_subnet()
        log(f"trusting X-Forwarded-* headers from {trusted}")
        os.environ["GALAXY_CONFIG_OVERRIDE_SERVER_NAME"] = replica_name("web")
        if bootstrap_key_on():
            os.environ["GALAXY_CONFIG_OVERRIDE_BOOTSTRAP_ADMIN_API_KEY"] = read_secret("admin_api_key")
    else:
        log("no POSTGRES_HOST: Galaxy out of the box (SQLite, local job runner, one process)")
        app = "galaxy.webapps.galaxy.fast_factory:factory()"
        standalone_environment()
        workers = "1"
    os.execvp("gunicorn", [
        "gunicorn", app,
        "--worker-class", "galaxy.webapps.galaxy.workers.Worker",
        "--config", "python:galaxy.web_stack.gunicorn_config",
        "--bind", "0.0.0.0:8080", "--workers", workers, "--timeout", timeout,
        "--graceful-timeout", "30", "--preload", "--no-control-socket",
        # Only the proxy in front of us may tell us the client's scheme and address.
        *(["--forwarded-allow-ips", trusted] if trusted else []),
    ])


def role_init():
    """Create this deployment's secrets once, give each volume to the user that writes it, and
    bring a deployment made by an earlier version into this layout (nothing is lost)."""
    if os.getuid() != 0:
        fail("the init role runs as root (compose.yml: user: root) to set volume ownership")
    import pwd
    galaxy = pwd.getpwnam("galaxy")
    # Only into the secret volumes mounted here: slurmdb-secret comes with the bundled cluster
    # only (compose.slurm.yml), and under Swarm the secrets are Swarm's (scripts/swarm_stack.py).
    mounted = mount_points()
    generated = [os.path.basename(path) for path, make in new_secrets().items()
                 if os.path.dirname(path) in mounted
                 and place_secret(path, make, pwd.getpwnam(SECRET_OWNERS[os.path.dirname(path)]))]
    for path in (DATA_DIR, JOBS_VOLUME):
        os.makedirs(path, exist_ok=True)
        os.chown(path, galaxy.pw_uid, galaxy.pw_gid, follow_symlinks=False)
    # The shared volume's top level only: a recursive chown of a large data volume takes hours.
    for sub in ("objects", "tmp", "jobs", "tus", "config", "tool-data", "dependencies"):
        path = os.path.join(DATA_DIR, sub)
        os.makedirs(path, exist_ok=True)
        os.chown(path, galaxy.pw_uid, galaxy.pw_gid, follow_symlinks=False)
    move_job_directories()
    for path in ensure_site_files():
        os.chown(path, galaxy.pw_uid, galaxy.pw_gid, follow_symlinks=False)
    log(f"secrets: generated {', '.join(generated)}" if generated else
        "secrets: all present" if mounted & set(SECRET_OWNERS) else "secrets: none mounted here")


def place_secret(path, make, owner):
    """Create the secret at `path` once, readable by `owner` only. Earlier versions kept every
    secret in Galaxy's volume: one found there moves here (the deployment keeps its value).
    True if it was generated now."""
    old = os.path.join(SECRETS_DIR, os.path.basename(path))
    generated = False
    if old != path and os.path.isfile(old) and not os.path.exists(path):
        with os.fdopen(os.open(old, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:
            write_once(path, f.read())
        log(f"moved {old} to {path}")
    else:
        generated = write_once(path, make())
    if old != path and os.path.lexists(old):
        os.remove(old)
    for target, mode in ((os.path.dirname(path), 0o700), (path, 0o400)):
        # Through a descriptor opened without following links: the volumes are writable by
        # Galaxy's user, and this runs as root.
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            os.fchown(fd, owner.pw_uid, owner.pw_gid)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
    return generated


def move_job_directories():
    """Job directories have their own volume (JOBS_VOLUME here, /srv/galaxy/jobs in the other
    roles): what jobs write is kept apart from datasets. Earlier versions kept them in the data
    volume; those (e.g. failed jobs' directories kept for inspection) move over, as they are."""
    old = os.path.join(DATA_DIR, "jobs")
    for entry in sorted(os.listdir(old)):
        target = os.path.join(JOBS_VOLUME, entry)
        if os.path.exists(target):
            fail(f"both {old}/{entry} and the jobs volume's {entry} exist; move one away")
        # cp -a keeps owners and modes; then the old copy goes.
        subprocess.run(["cp", "-a", os.path.join(old, entry), target], check=True)
        subprocess.run(["rm", "-rf", os.path.join(old, entry)], check=True)
        log(f"moved job directories {old}/{entry} to the jobs volume")


def role_migrate():
    """Create the schema in an empty database or upgrade an older one (Galaxy's own code)."""
    stack_environment()
    url = os.environ["GALAXY_CONFIG_OVERRIDE_DATABASE_CONNECTION"]
    wait_until("the database (postgres)", lambda: schema.database_answers(url),
               "see the postgres service's log")
    from sqlalchemy import create_engine
    from galaxy.model.migrations import verify_databases
    engine = create_engine(url)
    verify_databases(engine, None, None, None, None, None, is_auto_migrate=True)
    engine.dispose()
    create_citation_cache(url)
    log("database schema is current")


def role_manage_db():
    """Galaxy's own schema tool (galaxy.model.migrations.dbscript, what Galaxy's manage_db.sh
    runs) on the stack's database: `docker compose run --rm --no-deps migrate manage-db
    dbversion`; `... manage-db downgrade 26.0` takes the schema back to that release's (README,
    Upgrades). The other Galaxy processes must be stopped first."""
    import argparse

    from galaxy.model.migrations.dbscript import ParserBuilder
    stack_environment()
    parser = argparse.ArgumentParser(prog="manage-db", description=role_manage_db.__doc__)
    parser.add_argument("--galaxy-config", dest="config", default=GALAXY_CONFIG)
    builder = ParserBuilder(parser)
    for add in (builder.add_upgrade_command, builder.add_downgrade_command,
                builder.add_version_command, builder.add_dbversion_command,
                builder.add_history_command, builder.add_show_command):
        add()
    args = parser.parse_args(sys.argv[2:])
    args.func(args)


def create_citation_cache(url):
    """Galaxy keeps its citation cache in the database (config/galaxy.yml), in a table Beaker
    creates when a process starts; two processes starting at once both try, and one dies of the
    duplicate (web and handler on a first start). So it is made here, before either starts."""
    import tempfile
    from types import SimpleNamespace

    from galaxy.managers.citations import DoiCache
    with tempfile.TemporaryDirectory() as locks:
        DoiCache(SimpleNamespace(
            citation_cache_type="ext:database", citation_cache_url=url,
            citation_cache_table_name="beaker_cache", citation_cache_schema_name=None,
            citation_cache_data_dir=None, citation_cache_lock_dir=locks))


def bootstrap_key_on():
    """GALAXY_BOOTSTRAP_API_KEY: whether admin_api_key is Galaxy's bootstrap admin key (admin
    access without a user, for scripts and the first admin's account)."""
    return setting("GALAXY_BOOTSTRAP_API_KEY", "true", "true|false", "true or false") == "true"


def role_first_admin():
    """One-shot: the account of GALAXY_ADMIN_EMAIL, made through Galaxy's API with the bootstrap
    key before nginx lets anyone in (compose.yml), so nobody can claim the admin's address by
    registering first. Its password is the admin_password secret. An existing account is kept.
    Then the default quota (GALAXY_DEFAULT_QUOTA), on every start."""
    import json
    import urllib.error
    import urllib.request
    email = setting("GALAXY_ADMIN_EMAIL", pattern=r"[^@\s]+@[^@\s]+\.[^@\s]+", form="an email address")
    quota = default_quota_setting()
    galaxy = "http://web:8080"  # any replica (compose.yml: backend network)
    # Left by an earlier deployment on these data (a database made anew, a restore): nginx must
    # wait for this run's word.
    if os.path.lexists(FIRST_ADMIN_DONE):
        os.remove(FIRST_ADMIN_DONE)
    if not bootstrap_key_on():
        log("GALAXY_BOOTSTRAP_API_KEY=false: the admin's account and the default quota are the "
            "admin's own business now (Admin > Users, Admin > Quotas)")
        return admin_account_made()
    wait_until(f"Galaxy at {galaxy}", lambda: port_answers("web", 8080), "see the web service's log")
    key = read_secret("admin_api_key")

    def call(path, body=None, exists_ok=False, method=None):
        request = urllib.request.Request(
            galaxy + path, data=body and json.dumps(body).encode(),
            method=method or ("POST" if body else "GET"),
            headers={"x-api-key": key, "content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.load(response)
        except urllib.error.HTTPError as e:
            answer = e.read().decode()[:300]
            if exists_ok and e.code == 400 and "already exists" in answer:
                return None
            fail(f"Galaxy answered {e.code} to {request.method} {path}: {answer}")
        except OSError as e:
            fail(f"can't reach Galaxy at {galaxy}: {e}")

    # "admin" unless another account has that public name.
    taken = {user["username"] for user in call("/api/users?f_name=admin")}
    username = "admin" if "admin" not in taken else f"admin-{secrets.token_hex(2)}"
    created = call("/api/users", {"username": username, "email": email,
                                  "password": read_secret("admin_password")}, exists_ok=True)
    if created is None:  # Galaxy compares addresses without case, deleted accounts included
        log(f"the admin account {email} exists; it keeps its password")
    else:
        log(f"made the admin account {email}; its password: "
            f"docker compose exec web cat {secret_path('admin_password')}")
    set_default_quota(call, quota)
    admin_account_made()


# Made once the admin's account exists; nginx lets nobody in before (nginx/entrypoint.py): under
# Compose it starts after first-admin anyway, under Swarm this is the order.
FIRST_ADMIN_DONE = os.path.join(DATA_DIR, "config", "first-admin.done")


def admin_account_made():
    write_once(FIRST_ADMIN_DONE, "the admin's account is made (first-admin)\n", 0o644)


# The quota first-admin keeps at GALAXY_DEFAULT_QUOTA: Galaxy's default for registered users.
DEFAULT_QUOTA = "Default (GALAXY_DEFAULT_QUOTA)"


def default_quota_setting():
    """GALAXY_DEFAULT_QUOTA, checked with Galaxy's own parser: a size or `unlimited`."""
    value = setting("GALAXY_DEFAULT_QUOTA", "250GB", form="a size like 250GB, 1TB, 500GiB, or unlimited")
    if value.lower() != "unlimited":
        from galaxy.util import size_to_bytes
        try:
            size_to_bytes(value)
        except ValueError:
            fail(f"GALAXY_DEFAULT_QUOTA={value!r} is malformed; expected a size like 250GB, 1TB, "
                 "500GiB, or unlimited")
    return value


def set_default_quota(call, amount):
    """Galaxy's default quota for registered users, made once and kept at `amount` on every
    start (users' and groups' own quotas, made by the admin, take precedence in Galaxy)."""
    ours = next((q for q in call("/api/quotas") if q["name"] == DEFAULT_QUOTA), None)
    if ours is None:
        made = call("/api/quotas", {
            "name": DEFAULT_QUOTA, "amount": amount, "operation": "=", "default": "registered",
            "description": "Every registered user's disk quota, from .env: change it there"},
            exists_ok=True)
        if made is None:  # listed among the deleted ones
            log(f"the quota {DEFAULT_QUOTA!r} was deleted in Galaxy; it stays deleted")
            return
    else:
        call(f"/api/quotas/{ours['id']}", {"amount": amount, "operation": "=",
                                           "default": "registered"}, method="PUT")
    log(f"every registered user's default quota: {amount}")


def role_handler():
    """A job handler. Starts as root only to run munged as the munge user, then runs Galaxy as
    galaxy; its Slurm commands run as galaxy-job (cluster.connect_to_cluster). This process stays,
    as Galaxy's watchdog (health.watch): Docker restarts no unhealthy container, so a Galaxy whose
    heartbeat stopped is ended here, and the container's restart policy starts it again. It also
    hands this handler the jobs deleted before any handler claimed them, and the work of handlers
    that are gone (stranded_jobs)."""
    import signal
    import time
    server_environment()
    name = replica_name("handler")
    cluster.connect_to_cluster()
    os.environ.update(HOME="/home/galaxy", USER="galaxy", LOGNAME="galaxy")
    galaxy = subprocess.Popen([
        "setpriv", "--reuid=galaxy", "--regid=galaxy", "--init-groups",
        "galaxy-main", "-c", os.environ["GALAXY_CONFIG_FILE"], "--server-name", name,
        "--attach-to-pool", "job-handlers", "--attach-to-pool", "workflow-schedulers",
    ])
    for sig in (signal.SIGTERM, signal.SIGINT):  # docker stop: Galaxy stops cleanly
        signal.signal(sig, lambda number, frame: galaxy.send_signal(number))
    url = os.environ["GALAXY_CONFIG_OVERRIDE_DATABASE_CONNECTION"]

    def claim_deleted():
        if stranded_jobs.claim_deleted(url, name):
            log("took over jobs deleted before any handler claimed them (docker/stranded_jobs.py)")
    adopter = stranded_jobs.Adopter(url, name, lambda other: replica_running(other.split("_")[-1]))
    restart = {"since": None}  # when held jobs were taken over, until Galaxy is restarted

    def adopt_gone_handlers():
        for gone in adopter.gone():
            moved = adopter.adopt(gone)
            log(f"{gone} is gone (no heartbeat, its container not running): took over its work "
                f"(docker/stranded_jobs.py): {moved}")
            if moved["held"] and restart["since"] is None:
                restart["since"] = time.monotonic()
        if restart["since"] is None:
            return
        # Galaxy takes up a handler's queued and running jobs only when it starts; a restart
        # ends the jobs running in the handler itself (uploads), so it waits for them (10 min
        # at most).
        if adopter.runs_local_jobs() and time.monotonic() - restart["since"] < 600:
            return
        log("ending Galaxy so that it starts again and takes up the queued and running jobs "
            "taken over")
        galaxy.terminate()
    sys.exit(health.watch(galaxy, url, name, chores=[claim_deleted, adopt_gone_handlers]))


def role_health():
    """Healthcheck of the web replicas and handlers of the stack (docker/health.py): this
    container's Galaxy heartbeat is fresh, read through a connection of our own; with a URL
    argument, that URL answers too (gunicorn)."""
    stack_environment()
    problem = health.check(os.environ["GALAXY_CONFIG_OVERRIDE_DATABASE_CONNECTION"],
                           http=sys.argv[2] if len(sys.argv) > 2 else None)
    if problem:
        fail(problem)


# Galaxy's queues: `celery` and galaxy.internal (its own tasks), galaxy.external (jobs' metadata).
CELERY_QUEUES = "celery,galaxy.internal,galaxy.external"
CELERY_BEAT_SCHEDULE = "/var/lib/galaxy-celery-beat/schedule"


def role_celery():
    """A Celery worker: threads in one warm process (Galaxy's app is built once per worker; each
    metadata task runs in a process forked from it)."""
    threads = setting("GALAXY_CELERY_CONCURRENCY", "2", r"[1-9]\d*", "a positive whole number")
    stack_environment()
    wait_for_data()
    schema.wait_for_schema(os.environ["GALAXY_CONFIG_OVERRIDE_DATABASE_CONNECTION"])
    celery_environment()
    os.execvp("celery", ["celery", "--app", "galaxy.celery", "worker", "--pool", "threads",
                         "--concurrency", threads, "--queues", CELERY_QUEUES, "--loglevel", "INFO"])


def role_celery_beat():
    """Celery beat: Galaxy's periodic tasks, from the same galaxy.yml the workers read. It never
    opens the database or a result: it only needs the broker."""
    celery_environment(results=False)
    # No pid file: a container restarted after a crash would find a stale one and refuse to start.
    os.execvp("celery", ["celery", "--app", "galaxy.celery", "beat", "--loglevel", "INFO",
                         "--schedule", CELERY_BEAT_SCHEDULE, "--pidfile="])


def role_celery_ping():
    """Healthcheck of the celery role: this container's worker answers a ping sent through the
    broker (it answers between tasks too: its control channel has its own thread). Celery
    without Galaxy: a fraction of a second, not a Galaxy import."""
    import socket

    from celery import Celery
    worker = f"celery@{socket.gethostname()}"
    replies = Celery(broker=broker_url()).control.ping(destination=[worker], timeout=10)
    if not replies:
        fail(f"{worker} did not answer a ping through the broker within 10 s")


def role_schema_head():
    """Print the schema revision this image's Galaxy expects (scripts/restore compares a
    backup's with it)."""
    print(schema.expected_head())


ROLES = {"web": role_web, "init": role_init, "migrate": role_migrate,
         "first-admin": role_first_admin, "handler": role_handler, "celery": role_celery,
         "celery-beat": role_celery_beat, "celery-ping": role_celery_ping,
         "schema-head": role_schema_head, "manage-db": role_manage_db, "health": role_health,
         "slurmctld": cluster.role_slurmctld, "slurmdbd": cluster.role_slurmdbd,
         "node": cluster.role_node}
CLUSTER_ROLES = ("handler", "slurmctld", "slurmdbd", "node")


def main(argv):
    if not argv:
        fail(f"no role given; expected one of: {', '.join(ROLES)}")
    role = ROLES.get(argv[0])
    if role is None:
        return os.execvp(argv[0], argv)
    if argv[0] in CLUSTER_ROLES and not os.environ.get("SLURM_CONF") \
            and not os.path.exists("/etc/slurm/slurm.conf"):
        fail(f"the {argv[0]} role needs the runner image (Dockerfile, target runner)")
    role()


if __name__ == "__main__":
    main(sys.argv[1:])

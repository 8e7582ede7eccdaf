#!/usr/bin/env python3
"""Entrypoint of the Galaxy images. The command names the role this container plays:

  web        gunicorn serving Galaxy (alone: SQLite + local runner; in the stack: never runs jobs)
  init       one-shot, as root: generate this deployment's secrets once, own the shared volume
  migrate    one-shot: create Galaxy's database schema, or upgrade it
  handler    Galaxy job handler (galaxy-main) submitting to Slurm      [runner image]
  slurmctld  the Slurm controller                                      [runner image]
  node       a Slurm compute node (registers itself dynamically)       [runner image]

Anything else is executed as given (e.g. `bash`). Settings come from the environment; a missing
or malformed one stops the container at once with a message naming it.
"""
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys

GALAXY_CONFIG = "/etc/galaxy/galaxy.yml"
DATA_DIR = "/srv/galaxy"
SECRETS_DIR = os.environ.get("GALAXY_SECRETS_DIR", "/var/lib/galaxy-secrets")
MUNGE_KEY = os.path.join(SECRETS_DIR, "munge.key")
# Files the init role creates once per deployment; each is read by the roles that need it.
SECRET_FILES = {
    "id_secret": lambda: secrets.token_hex(24),  # Galaxy's id cipher takes up to 56 chars
    "db_password": lambda: secrets.token_urlsafe(24),
    "admin_api_key": lambda: secrets.token_hex(16),
}


def fail(msg):
    print(f"galaxy-entrypoint: {msg}", file=sys.stderr, flush=True)
    sys.exit(2)


def log(msg):
    print(f"galaxy-entrypoint: {msg}", file=sys.stderr, flush=True)


def setting(name, default=None, pattern=None, form=None):
    """An environment setting, checked against `pattern` (a regex the whole value must match)."""
    value = os.environ.get(name, default)
    if value is None or value == "":
        fail(f"{name} is not set; expected {form or 'a value'}")
    if pattern and not re.fullmatch(pattern, value):
        fail(f"{name}={value!r} is malformed; expected {form}")
    return value


def read_secret(name):
    path = os.path.join(SECRETS_DIR, name)
    try:
        with open(path) as f:
            value = f.read().strip()
    except FileNotFoundError:
        fail(f"secret {path} is missing: the init service creates it (docker compose up runs it)")
    except PermissionError:
        fail(f"secret {path} is not readable by uid {os.getuid()}")
    if not value:
        fail(f"secret {path} is empty: remove it and run the init service again")
    return value


def replica_name(role):
    """A stable name for this replica: `<role>_<n>` from compose's container name.

    Docker's DNS answers a reverse lookup of our own address with the container name
    (project_service_3 with Compose v1, project-service-3 with v2); its trailing number is the
    replica index, which survives restarts and re-creation, unlike the container id.
    """
    explicit = os.environ.get("GALAXY_REPLICA_NAME")
    if explicit:
        return explicit
    fqdn = reverse_dns_name()
    match = re.match(r"[^.]*[-_](\d+)\.", fqdn)
    if not match:
        fail(f"cannot tell this replica's index from its DNS name {fqdn!r}; "
             "set GALAXY_REPLICA_NAME to a stable unique name")
    return f"{role}_{match.group(1)}"


def reverse_dns_name():
    """This container's name as Docker's DNS gives it (dnspython skips /etc/hosts)."""
    import dns.resolver  # part of Galaxy's venv
    try:
        address = socket.gethostbyname(socket.gethostname())
        return dns.resolver.resolve_address(address)[0].to_text()
    except Exception:
        return ""


def stack_environment():
    """Point Galaxy at PostgreSQL and this deployment's secrets (the compose stack)."""
    user = setting("POSTGRES_USER", "galaxy", r"[A-Za-z_][A-Za-z0-9_]*", "a PostgreSQL role name")
    db = setting("POSTGRES_DB", "galaxy", r"[A-Za-z_][A-Za-z0-9_]*", "a database name")
    host = setting("POSTGRES_HOST", pattern=r"[A-Za-z0-9.-]+", form="a host name")
    port = setting("POSTGRES_PORT", "5432", r"\d{1,5}", "a port number")
    for option in ("POOL_SIZE", "MAX_OVERFLOW"):
        name = f"GALAXY_DB_{option}"
        value = setting(name, "5" if option == "POOL_SIZE" else "10", r"\d+", "a whole number")
        os.environ[f"GALAXY_CONFIG_OVERRIDE_DATABASE_ENGINE_OPTION_{option}"] = value
    password = read_secret("db_password")
    os.environ["GALAXY_CONFIG_OVERRIDE_DATABASE_CONNECTION"] = (
        f"postgresql://{user}:{password}@{host}:{port}/{db}")
    os.environ["GALAXY_CONFIG_OVERRIDE_ID_SECRET"] = read_secret("id_secret")


def standalone_environment():
    """Galaxy out of the box: SQLite on the data volume, a per-container id_secret."""
    path = os.path.join(DATA_DIR, ".id_secret")
    if not os.path.exists(path):
        write_once(path, secrets.token_hex(24))
    with open(path) as f:
        os.environ.setdefault("GALAXY_CONFIG_OVERRIDE_ID_SECRET", f.read().strip())


def write_once(path, value, mode=0o400):
    """Create `path` with `value` unless it exists; never overwrite a secret."""
    if os.path.exists(path):
        return False
    tmp = f"{path}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    with os.fdopen(os.open(tmp, flags, mode), "wb" if isinstance(value, bytes) else "w") as f:
        f.write(value)
    os.rename(tmp, path)
    return True


def role_web():
    workers = setting("GALAXY_WEB_WORKERS", "1", r"[1-9]\d*", "a positive whole number")
    timeout = setting("GALAXY_WEB_TIMEOUT", "300", r"[1-9]\d*", "seconds, a whole number")
    if os.environ.get("POSTGRES_HOST"):
        stack_environment()
        os.environ["GALAXY_CONFIG_OVERRIDE_SERVER_NAME"] = replica_name("web")
        os.environ["GALAXY_CONFIG_OVERRIDE_ADMIN_USERS"] = setting("GALAXY_ADMIN_EMAIL")
        os.environ["GALAXY_CONFIG_OVERRIDE_BOOTSTRAP_ADMIN_API_KEY"] = read_secret("admin_api_key")
    else:
        log("no POSTGRES_HOST: Galaxy out of the box (SQLite, local job runner, one process)")
        standalone_environment()
        workers = "1"
    os.execvp("gunicorn", [
        "gunicorn", "galaxy.webapps.galaxy.fast_factory:factory()",
        "--worker-class", "galaxy.webapps.galaxy.workers.Worker",
        "--config", "python:galaxy.web_stack.gunicorn_config",
        "--bind", "0.0.0.0:8080", "--workers", workers, "--timeout", timeout,
        "--graceful-timeout", "30", "--preload", "--no-control-socket",
        # Only the proxy in front of us may tell us the client's scheme and address.
        "--forwarded-allow-ips", os.environ.get("GALAXY_TRUSTED_PROXIES", "*"),
    ])


def role_init():
    """Create this deployment's secrets once and give the volumes to the galaxy user."""
    if os.getuid() != 0:
        fail("the init role runs as root (compose.yml: user: root) to set volume ownership")
    import pwd
    galaxy = pwd.getpwnam("galaxy")
    for path in (SECRETS_DIR, DATA_DIR):
        os.makedirs(path, exist_ok=True)
        os.chown(path, galaxy.pw_uid, galaxy.pw_gid)
    os.chmod(SECRETS_DIR, 0o750)
    generated = [name for name, make in SECRET_FILES.items()
                 if write_once(os.path.join(SECRETS_DIR, name), make() + "\n", 0o440)]
    # munged wants a private key of at least 32 bytes, owned by the user it runs as.
    if write_once(MUNGE_KEY, secrets.token_bytes(1024)):
        generated.append("munge.key")
    for name in list(SECRET_FILES) + ["munge.key"]:
        os.chown(os.path.join(SECRETS_DIR, name), galaxy.pw_uid, galaxy.pw_gid)
    # The shared volume's top level only: a recursive chown of a large data volume takes hours.
    for sub in ("objects", "tmp", "jobs", "tus", "config", "tool-data", "dependencies"):
        path = os.path.join(DATA_DIR, sub)
        os.makedirs(path, exist_ok=True)
        os.chown(path, galaxy.pw_uid, galaxy.pw_gid)
    log(f"secrets: generated {', '.join(generated)}" if generated else "secrets: all present")


def role_migrate():
    """Create the schema in an empty database or upgrade an older one (Galaxy's own code)."""
    stack_environment()
    from sqlalchemy import create_engine
    from galaxy.model.migrations import verify_databases
    engine = create_engine(os.environ["GALAXY_CONFIG_OVERRIDE_DATABASE_CONNECTION"])
    verify_databases(engine, None, None, None, None, None, is_auto_migrate=True)
    engine.dispose()
    log("database schema is current")


def start_munged():
    if not os.path.exists(MUNGE_KEY):
        fail(f"{MUNGE_KEY} is missing: the init service creates it")
    munged = ["munged", f"--key-file={MUNGE_KEY}", "--num-threads=4"]
    if os.getuid() == 0:  # slurmctld and node roles: munged stays unprivileged, owner of the key
        munged = ["setpriv", "--reuid=galaxy", "--regid=galaxy", "--init-groups", *munged]
    subprocess.run(munged, check=True)


def role_handler():
    stack_environment()
    name = replica_name("handler")
    start_munged()
    os.execvp("galaxy-main", [
        "galaxy-main", "-c", GALAXY_CONFIG, "--server-name", name,
        "--attach-to-pool", "job-handlers", "--attach-to-pool", "workflow-schedulers",
    ])


def role_slurmctld():
    # Started as root only so munged can run as the key's owner; slurmctld drops to SlurmUser.
    start_munged()
    os.execvp("slurmctld", ["slurmctld", "-D", "-i"])


def role_node():
    start_munged()
    name = replica_name("node")
    cpus = setting("SLURM_NODE_CPUS", str(os.cpu_count()), r"[1-9]\d*", "a number of cores")
    memory = setting("SLURM_NODE_MEMORY_MB", "2048", r"[1-9]\d*", "MiB, a whole number")
    # Slurm 22.05 keeps a dynamic node's first address: a re-created node (new address) under
    # the same name must be forgotten first, or the controller sends its jobs to the old one.
    for change in (["update", f"nodename={name}", "state=down", "reason=re-registering"],
                   ["delete", f"nodename={name}"]):
        subprocess.run(["scontrol", *change], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    layout = f"CPUs={cpus} Sockets=1 CoresPerSocket={cpus} ThreadsPerCore=1"
    os.execvp("slurmd", ["slurmd", "-D", "-N", name, "-Z",
                         "--conf", f"{layout} RealMemory={memory}"])


ROLES = {"web": role_web, "init": role_init, "migrate": role_migrate, "handler": role_handler,
         "slurmctld": role_slurmctld, "node": role_node}


def main(argv):
    if not argv:
        fail(f"no role given; expected one of: {', '.join(ROLES)}")
    role = ROLES.get(argv[0])
    if role is None:
        return os.execvp(argv[0], argv)
    if argv[0] in ("handler", "slurmctld", "node") and shutil.which("slurmctld") is None:
        fail(f"the {argv[0]} role needs the runner image (Dockerfile.runner)")
    role()


if __name__ == "__main__":
    main(sys.argv[1:])

"""What every role of the Galaxy images shares: settings from the environment (checked, with a
clear message naming a missing or malformed one), the deployment's secrets, replica names."""
import os
import re
import secrets
import socket
import sys

DATA_DIR = "/srv/galaxy"
# Each secret is in the volume of the services that use it (compose.yml), so none sees another's:
SECRETS_DIR = "/var/lib/galaxy-secrets"  # Galaxy's own: its processes only
DB_SECRET_DIR = "/var/lib/galaxy-db-secret"  # the database password: Galaxy and PostgreSQL
SLURMDB_SECRET_DIR = "/var/lib/slurmdb-secret"  # Slurm's accounting password: slurmdbd, MariaDB
BROKER_SECRET_DIR = "/var/lib/galaxy-broker-secret"  # RabbitMQ's password: Galaxy and RabbitMQ
RESULTS_SECRET_DIR = "/var/lib/galaxy-results-secret"  # Redis's password: Galaxy and Redis
# The cluster's key, in its own volume: the Slurm roles and the handler mount it, nothing else.
MUNGE_KEY = "/etc/munge/munge.key"
# Who reads each secret folder's files: Galaxy's processes run as galaxy; PostgreSQL, RabbitMQ,
# Redis, MariaDB and slurmdbd read theirs as root, before they drop to their own user; munged runs
# as munge. (The init role under Compose, scripts/swarm_stack.py's Swarm secrets.)
SECRET_OWNERS = {SECRETS_DIR: "galaxy", DB_SECRET_DIR: "galaxy", BROKER_SECRET_DIR: "galaxy",
                 RESULTS_SECRET_DIR: "galaxy", SLURMDB_SECRET_DIR: "root",
                 os.path.dirname(MUNGE_KEY): "munge"}
# Files the init role creates once per deployment: name -> (directory, generator).
SECRET_FILES = {
    "id_secret": (SECRETS_DIR, lambda: secrets.token_hex(24)),  # Galaxy's id cipher: <= 56 chars
    "admin_api_key": (SECRETS_DIR, lambda: secrets.token_hex(16)),
    "admin_password": (SECRETS_DIR, lambda: secrets.token_urlsafe(15)),
    "db_password": (DB_SECRET_DIR, lambda: secrets.token_urlsafe(24)),
    "slurmdb_password": (SLURMDB_SECRET_DIR, lambda: secrets.token_urlsafe(24)),
    "broker_password": (BROKER_SECRET_DIR, lambda: secrets.token_urlsafe(24)),
    "results_password": (RESULTS_SECRET_DIR, lambda: secrets.token_urlsafe(24)),
}


def new_secrets():
    """{path: a function making that secret's new value} for every secret of a deployment: the
    init role writes them under Compose, scripts/swarm-deploy makes Swarm secrets of them."""
    wanted = {secret_path(name): lambda make=make: make() + "\n"
              for name, (_, make) in SECRET_FILES.items()}
    # munged wants a key of at least 32 bytes.
    wanted[MUNGE_KEY] = lambda: secrets.token_bytes(1024)
    return wanted


def secret_path(name):
    return os.path.join(SECRET_FILES[name][0], name)


def secret_paths():
    """Every secret file of a deployment (tests/test_security.py tries to read each one)."""
    return list(new_secrets())


def fail(msg):
    print(f"galaxy-entrypoint: {msg}", file=sys.stderr, flush=True)
    sys.exit(2)


def log(msg):
    print(f"galaxy-entrypoint: {msg}", file=sys.stderr, flush=True)


def start_wait():
    """(name, seconds): how long a role waits for what it needs, GALAXY_START_WAIT (600)."""
    name = "GALAXY_START_WAIT"
    if name not in os.environ and "GALAXY_SCHEMA_WAIT" in os.environ:
        name = "GALAXY_SCHEMA_WAIT"  # its earlier name, still read
    return name, int(setting(name, "600", r"\d+", "seconds, a whole number"))


def wait_until(what, ready, hint):
    """Return once `ready()` is true (asked every 3 s); after GALAXY_START_WAIT seconds, stop the
    container naming `what` it waited for and `hint` (where to look). Compose starts what a role
    needs first; Docker Swarm has no start order, and there this wait is the order (same code)."""
    import time
    timeout_setting, timeout = start_wait()
    deadline = time.monotonic() + timeout
    logged = False
    while not ready():
        if time.monotonic() > deadline:
            fail(f"gave up waiting for {what} after {timeout} s ({timeout_setting}): {hint}")
        if not logged:
            log(f"waiting for {what}")
            logged = True
        time.sleep(3)
    if logged:
        log(f"{what}: ready")


def port_answers(host, port):
    """Whether a TCP connection to host:port opens (within 3 s)."""
    try:
        socket.create_connection((host, port), timeout=3).close()
        return True
    except OSError:
        return False


def setting(name, default=None, pattern=None, form=None):
    """An environment setting, checked against `pattern` (a regex the whole value must match)."""
    value = os.environ.get(name, default)
    if value is None or value == "":
        fail(f"{name} is not set; expected {form or 'a value'}")
    if pattern and not re.fullmatch(pattern, value):
        fail(f"{name}={value!r} is malformed; expected {form}")
    return value


def read_secret(name):
    path = secret_path(name)
    try:
        with open(path) as f:
            value = f.read().strip()
    except FileNotFoundError:
        fail(f"secret {path} is missing: the init service creates it (docker compose up runs it; "
             "under Swarm, scripts/swarm-deploy)")
    except PermissionError:
        fail(f"secret {path} is not readable by uid {os.getuid()}")
    if not value:
        fail(f"secret {path} is empty: remove it and run the init service again")
    return value


def write_once(path, value, mode=0o400):
    """Create `path` with `value` unless it exists; never overwrite a secret."""
    if os.path.exists(path):
        return False
    tmp = f"{path}.tmp"
    # init writes as root into volumes Galaxy's user can write: never through a link put there.
    if os.path.lexists(tmp):
        os.unlink(tmp)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    with os.fdopen(os.open(tmp, flags, mode), "wb" if isinstance(value, bytes) else "w") as f:
        f.write(value)
    os.rename(tmp, path)
    return True


# The genome builds Galaxy offers as dbkeys (its pip install ships no list): the image's copy,
# put on the shared data once, where the site may replace it.
BUILDS_LIST = "/etc/galaxy/builds.txt"


def ensure_site_files():
    """The files on the shared data that Galaxy reads and the site may edit (config/galaxy.yml),
    each created once (an admin's edits are kept). Returns every path made or kept, for init to
    hand to Galaxy's user:
    - config/local_tool_conf.xml: the site's own tools, empty; Galaxy refuses to start without it;
    - config/shed_tool_conf.xml: tools installed from a Tool Shed, empty (Galaxy writes it on each
      install; made here so that every replica watches it from its first start);
    - tool-data/shared/ucsc/builds.txt: the genome builds (BUILDS_LIST), when the image has it."""
    config = os.path.join(DATA_DIR, "config")
    local_tools = os.path.join(config, "local_tools")
    shed_tools = os.path.join(DATA_DIR, "shed_tools")
    ucsc = os.path.join(DATA_DIR, "tool-data", "shared", "ucsc")
    for directory in (local_tools, shed_tools, ucsc):
        os.makedirs(inside_data_dir(directory), exist_ok=True)
    files = {
        # is_shed_conf="false": the site's own list, never where Galaxy writes an install.
        os.path.join(config, "local_tool_conf.xml"): toolbox_xml(local_tools, ' is_shed_conf="false"'),
        os.path.join(config, "shed_tool_conf.xml"): toolbox_xml(shed_tools),
    }
    if os.path.isfile(BUILDS_LIST):
        with open(BUILDS_LIST) as f:
            files[os.path.join(ucsc, "builds.txt")] = f.read()
    for path, content in files.items():
        write_once(inside_data_dir(path), content, 0o644)
    return [local_tools, shed_tools, os.path.dirname(os.path.dirname(ucsc)), os.path.dirname(ucsc),
            ucsc, *files]


def data_prepared():
    """Whether the init role has prepared the shared data (its site files are there): the roles
    that write there wait for it (Swarm has no start order)."""
    return all(os.path.exists(os.path.join(DATA_DIR, "config", name))
               for name in ("local_tool_conf.xml", "shed_tool_conf.xml"))


def mount_points():
    """The paths where something is mounted in this container (/proc/self/mountinfo)."""
    with open("/proc/self/mountinfo") as f:
        return {line.split()[4] for line in f}


def inside_data_dir(path):
    """`path`, unless it leads out of DATA_DIR: init writes there as root, in folders Galaxy's user
    may change, and must never follow a link it finds there."""
    real, data = os.path.realpath(path), os.path.realpath(DATA_DIR)
    if not real.startswith(data + os.sep):
        fail(f"{path} leads out of {DATA_DIR} (to {real}); remove the link and start again")
    return path


def toolbox_xml(tool_path, attributes=""):
    return f'<?xml version="1.0"?>\n<toolbox tool_path="{tool_path}"{attributes}>\n</toolbox>\n'


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


def replica_running(index):
    """Whether replica `index` of this container's service runs: Docker's DNS answers a
    container's name only while it runs. None where replicas aren't named by Compose
    (GALAXY_REPLICA_NAME)."""
    match = re.match(r"([^.]*[-_])\d+\.", reverse_dns_name())
    if os.environ.get("GALAXY_REPLICA_NAME") or not match:
        return None
    import dns.resolver
    try:
        dns.resolver.resolve(f"{match.group(1)}{index}", "A", lifetime=5)
        return True
    except dns.resolver.NXDOMAIN:  # Docker's DNS knows no such container
        return False
    except dns.exception.DNSException:  # no answer: can't tell
        return None


def reverse_dns_name():
    """This container's name as Docker's DNS gives it (dnspython skips /etc/hosts)."""
    import dns.resolver  # part of Galaxy's venv
    try:
        address = socket.gethostbyname(socket.gethostname())
        return dns.resolver.resolve_address(address)[0].to_text()
    except Exception:
        return ""

"""The Slurm roles of the runner image (slurmctld, slurmdbd, node) and the handler's side of the
cluster: munge authentication, the bundled cluster or a site's own."""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

from settings import MUNGE_KEY, fail, log, port_answers, read_secret, replica_name, setting, wait_until

BUNDLED_SLURM_CONF = "/etc/slurm/slurm.conf"
SLURMDBD_CONF = "/etc/slurm/slurmdbd.conf"
MUNGE_RUN_DIR = "/run/munge"
SITE_MUNGE_KEY = os.path.join(MUNGE_RUN_DIR, "site-munge.key")
MUNGE_SOCKET = os.path.join(MUNGE_RUN_DIR, "munge.socket.2")
SLURM_AS_JOB_USER = "/usr/local/lib/galaxy-entrypoint/slurm-as-job-user"


def start_munged(key=MUNGE_KEY, private=False, peer=None):
    """munged in the background as the munge user, the key's owner (the role starts as root).

    private: only root (slurmd, slurmstepd) may ask it for credentials, as on a compute node,
    where jobs must not talk to Slurm: a credential would let a job submit or cancel jobs.
    peer: the controller we submit jobs to. A credential carries its origin address, which
    slurmctld looks up in DNS for a job's submit host; from a container on several networks
    munged would pick any of its addresses, and a lookup of one slurmctld can't see takes longer
    than Slurm's message timeout (sbatch: "Socket timed out"). So: our address on the network we
    reach the controller by."""
    if os.getuid() != 0:
        fail("the Slurm roles start as root (compose: user: root) to run munged as munge")
    if not os.path.exists(key):
        fail(f"munge key {key} is missing: the init service creates it")
    origin = [f"--origin={address_toward(peer)}"] if peer else []
    subprocess.run(["setpriv", "--reuid=munge", "--regid=munge", "--init-groups",
                    "munged", f"--key-file={key}", "--num-threads=4", *origin], check=True)
    if private:
        # munged insists that its folder is open to all; the socket itself need not be.
        os.chmod(MUNGE_SOCKET, 0o700)


def address_toward(host, port=6817):
    """Our address on the network that reaches `host` (no packet is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, port))
            return s.getsockname()[0]
    except OSError as e:
        fail(f"cannot reach the Slurm host {host!r} ({e})")


def controller_host(conf):
    """The (first) controller a slurm.conf names: SlurmctldHost=name or name(address)."""
    with open(conf) as f:
        for line in f:
            match = re.match(r"\s*SlurmctldHost\s*=\s*([^\s(#]+)(?:\(([^)]+)\))?", line, re.I)
            if match:
                return match.group(2) or match.group(1)
    fail(f"{conf} names no SlurmctldHost")


def connect_to_cluster():
    """The handler talks to the bundled cluster, or to a site's own when SLURM_CONF names its
    slurm.conf (Slurm's own variable) and MUNGE_KEY_FILE its munge key. Galaxy's Slurm commands
    run as galaxy-job (docker/slurm-as-job-user, first in PATH)."""
    # Galaxy's Slurm plugin polls `squeue` and takes a job that left its list for a success (it
    # never reads sacct's answer). Listing finished jobs too (Slurm keeps them MinJobAge) lets it
    # see TIMEOUT, FAILED or NODE_FAIL, and then ask sacct why.
    os.environ["SQUEUE_STATES"] = "all"
    os.environ["PATH"] = f"{SLURM_AS_JOB_USER}:{os.environ['PATH']}"
    conf = os.environ.get("SLURM_CONF")
    if not conf:
        host = controller_host(BUNDLED_SLURM_CONF)
        # munged needs the controller's address (its name resolves once it runs, under Swarm).
        wait_until(f"slurmctld ({host})", lambda: port_answers(host, 6817),
                   "see the slurmctld service's log")
        start_munged(peer=host)
        wait_for_controller()
        return
    key = setting("MUNGE_KEY_FILE", form="the path of the site cluster's munge key")
    for path in (conf, key):
        if not os.access(path, os.R_OK):
            fail(f"{path} is missing or not readable: the site's Slurm cluster needs its "
                 "slurm.conf and munge key there (see README, external cluster)")
    # munged insists on a private key owned by the user it runs as: use a copy of ours.
    shutil.copyfile(key, SITE_MUNGE_KEY)
    shutil.chown(SITE_MUNGE_KEY, "munge", "munge")
    os.chmod(SITE_MUNGE_KEY, 0o400)
    start_munged(SITE_MUNGE_KEY, peer=controller_host(conf))
    log(f"submitting to the site's Slurm cluster ({conf})")


def wait_for_controller():
    wait_until("slurmctld", lambda: scontrol("ping"), "see the slurmctld service's log")


def role_slurmctld():
    # slurmctld drops to SlurmUser (slurm) by itself.
    start_munged()
    wait_until("slurmdbd", lambda: port_answers("slurmdbd", 6819), "see the slurmdbd service's log")
    os.execvp("slurmctld", ["slurmctld", "-D", "-i"])


def role_slurmdbd():
    """Slurm's accounting daemon: keeps every job's record (sacct) in the mariadb service."""
    start_munged()
    host = setting("SLURMDB_HOST", "mariadb", r"[A-Za-z0-9.-]+", "a host name")
    wait_until(f"the accounting database ({host})", lambda: port_answers(host, 3306),
               f"see the {host} service's log")
    # Holds a password: readable by slurmdbd's user only (slurmdbd refuses anything else).
    with open(os.open(SLURMDBD_CONF, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(f"""AuthType=auth/munge
DbdHost={socket.gethostname()}
SlurmUser=slurm
StorageType=accounting_storage/mysql
StorageHost={host}
StorageUser=slurm
StoragePass={read_secret("slurmdb_password")}
StorageLoc=slurm_acct_db
PidFile=/run/slurm/slurmdbd.pid
""")
    shutil.chown(SLURMDBD_CONF, "slurm", "slurm")
    os.execvp("slurmdbd", ["slurmdbd", "-D"])


def scontrol(*args):
    return subprocess.run(["scontrol", *args], capture_output=True, text=True).returncode == 0


def role_node():
    """A compute node: registers itself with slurmctld (dynamic node) under its replica's name,
    and on `docker compose stop` or scale-down leaves the cluster cleanly."""
    start_munged(private=True)
    name = replica_name("node")
    cpus = setting("SLURM_NODE_CPUS", str(os.cpu_count()), r"[1-9]\d*", "a number of cores")
    memory = setting("SLURM_NODE_MEMORY_MB", "2048", r"[1-9]\d*", "MiB, a whole number")
    drain = int(setting("SLURM_NODE_DRAIN_SECONDS", "60", r"\d+", "seconds, a whole number"))
    wait_for_controller()
    # Slurm 22.05 keeps a dynamic node's first address: a re-created node (new address) under
    # the same name must be forgotten first, or the controller sends its jobs to the old one.
    scontrol("update", f"nodename={name}", "state=down", "reason=re-registering")
    scontrol("delete", f"nodename={name}")
    layout = f"CPUs={cpus} Sockets=1 CoresPerSocket={cpus} ThreadsPerCore=1"
    # Its own session: the stop signal is ours to handle; slurmd keeps serving running jobs.
    slurmd = subprocess.Popen(["slurmd", "-D", "-N", name, "-Z",
                               "--conf", f"{layout} RealMemory={memory}"], start_new_session=True)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    while slurmd.poll() is None and not stopping:
        time.sleep(1)
    if stopping:
        leave_cluster(name, slurmd, drain)
        sys.exit(0)
    sys.exit(f"slurmd ended by itself (exit status {slurmd.returncode})")


def leave_cluster(name, slurmd, drain_seconds):
    """Let running jobs finish (up to `drain_seconds`), then remove this node from Slurm.

    Jobs still running after that are requeued by Slurm when the node goes down, so they run
    again on another node rather than being lost."""
    log(f"leaving the cluster: draining {name} (up to {drain_seconds}s for its jobs)")
    scontrol("update", f"nodename={name}", "state=drain", "reason=node container stopping")
    deadline = time.monotonic() + drain_seconds
    while time.monotonic() < deadline and subprocess.run(
            ["squeue", "-h", "-w", name, "-o", "%i"], capture_output=True, text=True).stdout.strip():
        time.sleep(2)
    scontrol("update", f"nodename={name}", "state=down", "reason=node container stopped")
    slurmd.terminate()
    slurmd.wait()
    removed = scontrol("delete", f"nodename={name}")
    log(f"{name} {'removed from' if removed else 'could not be removed from'} the cluster")

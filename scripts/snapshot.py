"""What scripts/backup and scripts/restore share: the layout of a backup, its manifest and file
index, and the containers they run their tools in.

A backup folder holds one snapshot per run, DIR/<UTC time>/, each complete on its own:

  manifest.json       Galaxy's version and schema, when, and each part's size and SHA-256
  galaxy.dump         the database (pg_dump's custom format)
  secrets.tar         the deployment's secrets (ids, sessions, passwords: keep it private)
  slurm-accounting.sql  Slurm's job records (bundled cluster only)
  files.jsonl         one line per file, folder or link of the shared data: owner, mode, size,
                      time, SHA-256
  files/              those files; a file unchanged since the previous snapshot is a hard link
                      to its copy there (so a second backup of an unchanged site copies nothing)

A snapshot is written under <time>.partial and renamed when complete: restore never takes a
partial one. Everything is readable by the backup's owner only.
"""
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

from compose_stack import ROOT, compose_command

FORMAT = "scalable-galaxy-backup/1"
MANIFEST = "manifest.json"
INDEX = "files.jsonl"
FILES = "files"
# Shared data that is not backed up: job directories (the jobs volume, and an earlier version's
# folder in the data volume), temporary files, unfinished uploads, caches and the tool search
# index (Galaxy remakes them).
NOT_BACKED_UP = ("jobs", "tmp", "tus", "cache", "object_store_cache", "container_cache",
                 "tool_search_index")
# Where each secret volume is mounted in the init service (docker/settings.py), which mounts them
# all: the helper containers take its volumes (`--volumes-from`) rather than naming volumes.
SECRET_PATHS = ("var/lib/galaxy-secrets", "var/lib/galaxy-db-secret", "var/lib/galaxy-broker-secret",
                "var/lib/galaxy-results-secret", "var/lib/slurmdb-secret", "etc/munge")
DATA = "/srv/galaxy"
# Job states a job leaves by itself (paused jobs wait for their user): the jobs a backup catches
# unfinished, which a restore ends (scripts/restore).
JOBS_NOT_ENDED = ("new", "queued", "running", "upload", "waiting", "resubmitted", "stop")
CHUNK = 1 << 20


def say(msg):
    print(f"[{Path(sys.argv[0]).name}] {msg}", file=sys.stderr, flush=True)


def die(msg):
    say(msg)
    sys.exit(1)


def compose(*args, capture=True, **kwargs):
    """A compose command on the deployment of this checkout (.env: project, files)."""
    run = subprocess.run([*compose_command(), *args], cwd=ROOT, text=True, check=False,
                         capture_output=capture, **kwargs)
    if run.returncode:
        die(f"`compose {' '.join(args)}` failed: {(run.stderr or '').strip()[-800:]}")
    return run.stdout if capture else ""


def container(service, running=True):
    """The id of `service`'s first container (exited ones too unless `running`), or None."""
    ids = compose("ps", "-q", service) if running else compose("ps", "-a", "-q", service)
    ids = ids.split()
    if running:
        ids = [i for i in ids if docker_out("inspect", "-f", "{{.State.Running}}", i).strip() == "true"]
    return ids[0] if ids else None


def docker_out(*args):
    run = subprocess.run(["docker", *args], capture_output=True, text=True)
    if run.returncode:
        die(f"`docker {' '.join(args[:3])} ...` failed: {run.stderr.strip()[-800:]}")
    return run.stdout


def mounts(init, *paths, readonly=True):
    """The volumes the init service mounts at these paths (it mounts every secret volume and the
    shared data), as docker run's --volume values, read-only unless told otherwise."""
    found = json.loads(docker_out("inspect", "-f", "{{json .Mounts}}", init))
    return [f"{m['Name']}:{m['Destination']}{':ro' if readonly else ''}" for m in found
            if m["Type"] == "volume" and m["Destination"].lstrip("/") in paths]


def helper(init, command, volumes=(), user="galaxy", caps=(), stdin=None, stdout=subprocess.PIPE):
    """Run `command` in a throwaway container of the init service's image with only `volumes`,
    as `user` with only the capabilities `caps`, and no network; its Popen. Galaxy's user reads
    the shared data (where users' jobs and tools write, links included), never with a secret
    mounted beside it; root reads or writes the secrets, which belong to several users."""
    image = docker_out("inspect", "-f", "{{.Config.Image}}", init).strip()
    return subprocess.Popen(
        ["docker", "run", "--rm", "-i", "--network", "none", "--user", user, "--cap-drop", "ALL",
         *(f"--cap-add={cap}" for cap in caps), "--security-opt", "no-new-privileges",
         "--memory", "512m", "--pids-limit", "64", "--workdir", "/",
         *(f"--volume={v}" for v in volumes), "--entrypoint", command[0], image, *command[1:]],
        stdin=stdin, stdout=stdout)


class Progress:
    """`what: 1.20/3.00 GiB (40%), 95 MiB/s, 19 s left`, redrawn once a second on a terminal."""

    def __init__(self, what, total):
        self.what, self.total, self.done = what, total, 0
        self.started = self.shown = time.monotonic()

    def add(self, n):
        self.done += n
        now = time.monotonic()
        if now - self.shown >= 1:
            self.shown = now
            self.show(now)

    def show(self, now=None, end=""):
        elapsed = max((now or time.monotonic()) - self.started, 1e-3)
        rate = self.done / elapsed
        of = f"/{size(self.total)} ({100 * self.done / self.total:.0f}%)" if self.total else ""
        left = f", {(self.total - self.done) / rate:.0f} s left" if rate and self.total > self.done else ""
        print(f"\r[{Path(sys.argv[0]).name}] {self.what}: {size(self.done)}{of}, "
              f"{size(rate)}/s{left}   ", end=end, file=sys.stderr, flush=True)

    def finish(self):
        if self.done:
            self.show(end="\n")


def size(n):
    """Bytes for people: 512 B, 3.2 MiB, 1.07 GiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.{2 if unit == 'GiB' else 1}f} {unit}"
    return f"{n:.0f} B"


def sha256_file(path, progress=None):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            if progress:
                progress.add(len(chunk))
    return h.hexdigest()


def inside(root, path):
    """root/path, refusing a name that would lead out of root."""
    target = (root / path).resolve()
    if target != root and root not in target.parents:
        die(f"refusing {path!r}: it leads outside the backup")
    return root / path


def read_manifest(snapshot):
    path = snapshot / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        die(f"{snapshot} is not a complete backup: {path} can't be read ({e})")
    if manifest.get("format") != FORMAT:
        die(f"{path} is not a Scalable Galaxy backup of this format ({manifest.get('format')!r}, "
            f"expected {FORMAT!r})")
    return manifest


def read_index(snapshot):
    with open(snapshot / INDEX) as f:
        return [json.loads(line) for line in f]


def snapshots(root):
    """The complete snapshots under a backup folder, oldest first."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.endswith(".partial")
                  and (p / MANIFEST).is_file())

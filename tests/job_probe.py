"""An attacker's tool job (tests/test_security.py installs it as a site tool): tries what a user's
job could do to the server and writes what happened, as JSON, to its output. It leaves no trace
where it succeeds: files it opens for writing are opened for appending and get nothing, files it
creates it removes."""
import glob
import grp
import json
import os
import socket
import subprocess
import sys
import time


def attempt(action, *args):
    """"done", or the error that stopped it (e.g. "PermissionError: Permission denied")."""
    try:
        action(*args)
        return "done"
    except OSError as e:
        return f"{type(e).__name__}: {e.strerror or e}"


def read(path):
    with open(path, "rb") as f:
        f.read(1)


def write(path):
    if os.path.isdir(path):
        created = os.path.join(path, f".probe-{os.getpid()}")
        os.close(os.open(created, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(created)
    else:
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND))


def connect(address):
    host, port = address.rsplit(":", 1)
    socket.create_connection((host, int(port)), timeout=5).close()


def run(command):
    try:
        p = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except OSError as e:
        return {"status": None, "output": str(e)}
    return {"status": p.returncode, "output": (p.stdout + p.stderr)[-400:]}


def environments():
    """Every process environment this job can read, its own included."""
    found = {}
    for path in ["/proc/self/environ", *glob.glob("/proc/[0-9]*/environ")]:
        try:
            with open(path, "rb") as f:
                found[path] = f.read().decode(errors="replace")
        except OSError:
            pass
    return found


def other_job_directories(own, seconds, handler_jobs_wanted):
    """Job directories that exist, or appear, until `handler_jobs_wanted` directories of jobs the
    handler runs (not group galaxy-job) were seen, or `seconds` passed: each one's group, and
    whether this job could create a file in it."""
    seen = {}
    deadline = time.monotonic() + seconds
    while True:
        for path in glob.glob("/srv/galaxy/jobs/*/*"):
            if path in seen or os.path.realpath(path) == own:
                continue
            try:
                group = grp.getgrgid(os.stat(path).st_gid).gr_name
            except OSError:
                continue  # already cleaned up
            seen[path] = {"group": group, "write": attempt(write, path)}
        handler_jobs = sum(1 for r in seen.values() if r["group"] != "galaxy-job")
        if time.monotonic() > deadline or handler_jobs >= handler_jobs_wanted > 0:
            return seen
        time.sleep(0.2)


def main(targets_path, output_path):
    with open(targets_path) as f:
        targets = json.load(f)
    own = os.path.realpath(os.path.join(os.getcwd(), os.pardir))  # the tool runs in <job>/working
    report = {
        "uid": os.getuid(),
        "host": socket.gethostname(),
        "read": {path: attempt(read, path) for path in targets["read"]},
        "write": {path: attempt(write, path) for path in targets["write"]},
        "connect": {address: attempt(connect, address) for address in targets["connect"]},
        "commands": {name: run(command) for name, command in targets["commands"].items()},
        "environments": environments(),
        "other_jobs": other_job_directories(own, targets["watch_seconds"],
                                            targets["handler_jobs_wanted"]),
    }
    with open(output_path, "w") as f:
        json.dump(report, f)
    # Left for the handler, which reads these files after the job, as Galaxy's user.
    for name, target in targets["plant"].items():
        os.unlink(name)
        os.symlink(target, name)


if __name__ == "__main__":
    main(*sys.argv[1:])

#!/usr/bin/python3
"""A tool job's directory around its run on a compute node, as root: Slurm's Prolog opens it to
the job's user (galaxy-job), Slurm's Epilog takes it back before Galaxy's handler reads it
(config/slurm.conf; docker/slurm-node/).

Galaxy's handler runs as galaxy, which can read Galaxy's secrets, and after a job it reads files
in the job's directory: stdout, stderr, outputs, metadata. A job that left a symbolic link there
(outputs/tool_stdout -> /var/lib/galaxy-secrets/admin_api_key, or -> /proc/self/environ) would
have the handler read the secret into the job's record, which the job's user can then fetch. So
after the run the directory goes back to galaxy with no write access for anyone else (leftover
processes of the job included), and every entry that is neither a plain file nor a directory
becomes an empty file: Galaxy then finishes the job as one with empty output (it fails a job
whose tool_stdout is missing). Slurm reports the job finished only once the Epilog is done.

Works on open file descriptors (never follows a link), and never fails: a failing Prolog or
Epilog would drain the node. A directory it can't identify is left alone, and logged.
"""
import grp
import os
import pwd
import re
import stat
import subprocess
import sys

JOBS = "/srv/galaxy/jobs/"
NOFOLLOW = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK


def job_directory(job_id):
    """The Galaxy job directory of Slurm job `job_id` (Galaxy's stdout file is in it)."""
    out = subprocess.run(["/usr/bin/scontrol", "show", "job", job_id], capture_output=True,
                         text=True, timeout=60).stdout
    match = re.search(r"^\s*StdOut=(\S+)$", out, re.M)
    path = os.path.dirname(match.group(1)) if match else ""
    # Named without links, so nothing the job made can point it elsewhere.
    if path.startswith(JOBS) and os.path.realpath(path) == path:
        return path
    return None


def visit(dir_fd, on_directory, on_entry):
    """on_directory(fd) for this directory first, then its entries (listed afterwards)."""
    on_directory(dir_fd)
    for entry in os.scandir(dir_fd):
        info = entry.stat(follow_symlinks=False)
        if stat.S_ISDIR(info.st_mode):
            fd = os.open(entry.name, NOFOLLOW | os.O_DIRECTORY, dir_fd=dir_fd)
            try:
                visit(fd, on_directory, on_entry)
            finally:
                os.close(fd)
        else:
            on_entry(dir_fd, entry.name, info)


def with_file(dir_fd, name, action):
    """action(fd) on a plain file, opened without following a link."""
    fd = os.open(name, NOFOLLOW, dir_fd=dir_fd)
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            action(fd)
    finally:
        os.close(fd)


def open_for_job(fd):
    """Prolog: the job's user may write here (group galaxy-job, setgid directories)."""
    job_group = grp.getgrnam("galaxy-job").gr_gid

    def directory(d):
        os.fchown(d, -1, job_group)
        os.fchmod(d, 0o2775)

    def entry(d, name, info):
        if stat.S_ISREG(info.st_mode):
            with_file(d, name, lambda f: (os.fchown(f, -1, job_group),
                                          os.fchmod(f, stat.S_IMODE(info.st_mode) | 0o020)))
    visit(fd, directory, entry)


def take_back(fd):
    """Epilog: Galaxy's again, read-only to everyone else; links, fifos and the like emptied."""
    galaxy = pwd.getpwnam("galaxy")

    def directory(d):
        os.fchown(d, galaxy.pw_uid, galaxy.pw_gid)
        os.fchmod(d, 0o755)

    def entry(d, name, info):
        if stat.S_ISREG(info.st_mode):
            with_file(d, name, lambda f: (os.fchown(f, galaxy.pw_uid, galaxy.pw_gid),
                                          os.fchmod(f, stat.S_IMODE(info.st_mode) & 0o755)))
        else:
            os.unlink(name, dir_fd=d)
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644,
                             dir_fd=d))
            os.chown(name, galaxy.pw_uid, galaxy.pw_gid, dir_fd=d, follow_symlinks=False)
    visit(fd, directory, entry)


def main(action):
    job_id = os.environ.get("SLURM_JOB_ID", "")
    try:
        path = job_directory(job_id)
        if path is None:
            print(f"job_directory {action}: job {job_id} has no Galaxy job directory", file=sys.stderr)
            return
        fd = os.open(path, NOFOLLOW | os.O_DIRECTORY)
        try:
            {"open": open_for_job, "close": take_back}[action](fd)
        finally:
            os.close(fd)
    except Exception as e:  # never drain the node for this
        print(f"job_directory {action}: job {job_id}: {e!r}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1])

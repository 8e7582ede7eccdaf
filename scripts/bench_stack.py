"""The compose stack scripts/bench measures, under a project name and port of its own, removed
with its volumes on exit (the web image alone, the baseline, is galaxy_alone.py)."""
import os
import subprocess
import sys
import time
import uuid

from bioblend.galaxy import GalaxyInstance

from compose_stack import ROOT, compose_command, free_port, wait_healthy
from galaxy_alone import wait_galaxy


def say(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def new_user(url, admin_key):
    """A fresh user with an API key, as a BioBlend client."""
    admin = GalaxyInstance(url, key=admin_key)
    name = f"bench{uuid.uuid4().hex[:6]}"
    user = admin.users.create_local_user(name, f"{name}@example.org", uuid.uuid4().hex)
    return GalaxyInstance(url, key=admin.users.get_or_create_user_apikey(user["id"]))


class Stack:
    """The compose stack (COMPOSE_FILE from .env: Galaxy + the bundled cluster)."""

    def __init__(self, **settings):
        self.project = f"sgbench{uuid.uuid4().hex[:6]}"
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.env = {**os.environ, "GALAXY_PORT": f"127.0.0.1:{port}", "GALAXY_URL": self.url,
                    "GALAXY_HTTPS_PORT": f"127.0.0.1:{free_port()}",
                    **settings}
        self.base = [*compose_command(), "-p", self.project]

    def compose(self, *args, files=None, capture=False):
        files = [arg for f in files for arg in ("-f", str(ROOT / f))] if files else []
        return subprocess.run([*self.base, *files, *args], cwd=ROOT, env=self.env, check=True,
                              capture_output=capture, text=True,
                              **({} if capture else {"stdout": subprocess.DEVNULL})).stdout

    def up(self, *args, files=None):
        self.compose("up", "-d", *args, files=files)
        wait_healthy(lambda: self.compose("ps", "-q", capture=True).split(), 900)
        wait_galaxy(self.url)
        time.sleep(6)  # nginx re-resolves the web replicas every 5 s

    def admin_key(self):
        return self.compose("exec", "-T", "web", "cat", "/var/lib/galaxy-secrets/admin_api_key",
                            capture=True).strip()

    def volume(self, name):
        return f"{self.project}_{name}"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        say(f"removing {self.project}")
        subprocess.run([*self.base, "down", "-v", "--timeout", "20"], cwd=ROOT, env=self.env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def table(title, columns, rows):
    """Print rows (lists matching `columns`) under a title, aligned."""
    widths = [max(len(str(c)), *(len(str(r[i])) for r in rows)) for i, c in enumerate(columns)]
    print(f"\n{title}\n")
    print("  ".join(str(c).rjust(w) if i else str(c).ljust(w)
                    for i, (c, w) in enumerate(zip(columns, widths, strict=True))))
    for row in rows:
        print("  ".join(str(v).rjust(w) if i else str(v).ljust(w)
                        for i, (v, w) in enumerate(zip(row, widths, strict=True))))

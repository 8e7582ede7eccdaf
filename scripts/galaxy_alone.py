"""The web image run by itself (Galaxy out of the box: one process, SQLite, the local job
runner, no proxy) on a free loopback port: what the standalone test checks and the bench's
baseline. The container is removed, with its anonymous volumes, on exit."""
import secrets
import subprocess
import time
import uuid

import requests

from compose_stack import free_port

WEB_IMAGE = "scalable-galaxy-web:dev"


def wait_galaxy(url, timeout=900):
    """Until Galaxy at `url` answers /api/version; TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/api/version", timeout=5).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(2)
    raise TimeoutError(f"Galaxy at {url} did not answer within {timeout:.0f}s")


class GalaxyAlone:
    """`with GalaxyAlone() as g:` Galaxy answering at g.url; g.admin is its bootstrap admin key."""

    def __init__(self, timeout=900):
        self.name = f"sg-alone-{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin = secrets.token_hex(16)
        self.timeout = timeout

    def __enter__(self):
        subprocess.run(["docker", "run", "-d", "--name", self.name, "-p",
                        f"127.0.0.1:{self.port}:8080", "-e",
                        f"GALAXY_CONFIG_OVERRIDE_BOOTSTRAP_ADMIN_API_KEY={self.admin}",
                        WEB_IMAGE], check=True, stdout=subprocess.DEVNULL)
        try:
            wait_galaxy(self.url, self.timeout)
        except BaseException as e:  # __exit__ is not called when __enter__ fails: remove it here
            log = subprocess.run(["docker", "logs", "--tail", "80", self.name],
                                 capture_output=True, text=True)
            self.__exit__()
            raise TimeoutError(f"{e}; its log ends:\n{log.stdout}{log.stderr}") from e
        return self

    def __exit__(self, *exc):
        subprocess.run(["docker", "rm", "-f", "-v", self.name], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)

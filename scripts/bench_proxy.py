"""What the proxy takes off Galaxy. (1) A 1 GiB dataset downloaded through X-Accel-Redirect
(Galaxy authorises, nginx sends), served by Galaxy itself (X-Accel off), and sent by nginx as a
plain static file (the practical limit). (2) API latency while 20 deliberately slow uploads are
in flight, against idle, with nginx buffering the upload bodies."""
import os
import re
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import requests

from bench_api import wrk
from bench_stack import Stack, new_user, say, table
from compose_stack import free_port

STATIC_CONF = """pid /tmp/nginx.pid;
error_log stderr warn;
events {}
http {
    sendfile on;
    tcp_nopush on;
    access_log off;
    client_body_temp_path /tmp/body;
    proxy_temp_path /tmp/proxy;
    fastcgi_temp_path /tmp/fastcgi;
    uwsgi_temp_path /tmp/uwsgi;
    scgi_temp_path /tmp/scgi;
    server {
        listen 8080;
        location /objects/ { alias /srv/galaxy/objects/; }
    }
}
"""
XACCEL_OFF = """services:
  web:
    environment:
      GALAXY_CONFIG_OVERRIDE_NGINX_X_ACCEL_REDIRECT_BASE: ""
"""
SLOW_UPLOADS = 20


def download_seconds(url, headers, runs=3):
    """Median wall time of downloading `url` whole (curl, bytes discarded)."""
    times = []
    for _ in range(runs):
        out = subprocess.run(["curl", "-sf", "-o", "/dev/null", "-w", "%{time_total} %{size_download}",
                              *[a for k, v in headers.items() for a in ("-H", f"{k}: {v}")], url],
                             capture_output=True, text=True, check=True).stdout.split()
        times.append(float(out[0]))
    return statistics.median(times), int(out[1])


def big_dataset(stack, gi, size):
    history = gi.histories.create_history("bench downloads")
    with tempfile.NamedTemporaryFile(dir=Path.home()) as f:
        for _ in range(size // (64 << 20)):
            f.write(os.urandom(64 << 20))
        f.flush()
        out = gi.tools.upload_file(f.name, history["id"], file_type="binary", chunk_size=64 << 20)
    return gi.datasets.wait_for_dataset(out["outputs"][0]["id"], maxwait=1800)


def file_path(stack, gi, dataset_id):
    """The dataset's file on the shared volume, as Galaxy names it in its X-Accel answer."""
    head = stack.compose("exec", "-T", "web", "curl", "-s", "-D", "-", "-o", "/dev/null", "-H",
                         f"x-api-key: {gi.key}",
                         f"http://localhost:8080/api/datasets/{dataset_id}/display", capture=True)
    return re.search(r"(?im)^x-accel-redirect: /_x_accel_redirect(/\S+)", head).group(1)


def wait_answering(url, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.head(url, timeout=2)
            return
        except requests.RequestException:
            time.sleep(0.2)
    raise SystemExit(f"[bench] the static nginx at {url} did not answer within {timeout}s")


def static_seconds(stack, path):
    port = free_port()
    with tempfile.NamedTemporaryFile("w", suffix=".conf") as conf:
        conf.write(STATIC_CONF)
        conf.flush()
        os.chmod(conf.name, 0o644)
        name = f"{stack.project}-static"
        subprocess.run(["docker", "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8080",
                        "-v", f"{stack.volume('galaxy-data')}:/srv/galaxy:ro",
                        "-v", f"{conf.name}:/etc/nginx/static.conf:ro", "--entrypoint", "nginx",
                        "scalable-galaxy-nginx:dev", "-c", "/etc/nginx/static.conf", "-g",
                        "daemon off;"], check=True, stdout=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}{path.replace('/srv/galaxy', '')}"
        try:
            wait_answering(url)
            return download_seconds(url, {})
        finally:
            subprocess.run(["docker", "rm", "-f", name], stdout=subprocess.DEVNULL)


def downloads(args):
    with Stack() as stack:
        stack.up()
        gi = new_user(stack.url, stack.admin_key())
        say("proxy: uploading the 1 GiB dataset")
        dataset = big_dataset(stack, gi, 1 << 30)
        url = f"{stack.url}/api/datasets/{dataset['id']}/display"
        key = {"x-api-key": gi.key}
        say("proxy: downloads")
        results = {"X-Accel-Redirect (nginx sends)": download_seconds(url, key)}
        results["nginx static file (the limit)"] = static_seconds(stack, file_path(stack, gi,
                                                                                   dataset["id"]))
        with tempfile.NamedTemporaryFile("w", suffix=".yml") as override:
            override.write(XACCEL_OFF)
            override.flush()
            stack.up("--no-deps", "web", files=["compose.yml", "compose.slurm.yml", override.name])
            results["Galaxy sends it (X-Accel off)"] = download_seconds(url, key)
    app = results["Galaxy sends it (X-Accel off)"][0]
    rows = [[name, f"{seconds:.2f}", f"{size / seconds / 2**20:.0f}", f"{app / seconds:.2f}x"]
            for name, (seconds, size) in results.items()]
    table("Downloading a 1 GiB dataset through the stack (median of 3, one client)",
          ["how", "seconds", "MiB/s", "vs Galaxy"], rows)
    xaccel, static = results["X-Accel-Redirect (nginx sends)"][0], results[
        "nginx static file (the limit)"][0]
    print(f"\nX-Accel / app-served: {app / xaccel:.1f}x faster;  X-Accel / static: "
          f"{static / xaccel:.2f}x the static speed")


class SlowUpload(threading.Thread):
    """A client sending a resumable-upload chunk at `rate` bytes/s: the body nginx buffers."""

    def __init__(self, url, key, size, rate):
        super().__init__(daemon=True)
        self.url, self.key, self.size, self.rate = url, key, size, rate
        self.status = None

    def run(self):
        created = requests.post(f"{self.url}/api/upload/resumable_upload/", timeout=30, headers={
            "Tus-Resumable": "1.0.0", "Upload-Length": str(self.size), "x-api-key": self.key})
        target = urlsplit(created.headers["Location"])
        with socket.create_connection((target.hostname, target.port), timeout=120) as s:
            s.sendall((f"PATCH {target.path} HTTP/1.1\r\nHost: {target.netloc}\r\n"
                       f"Tus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\nx-api-key: {self.key}\r\n"
                       "Content-Type: application/offset+octet-stream\r\n"
                       f"Content-Length: {self.size}\r\nConnection: close\r\n\r\n").encode())
            piece = self.rate // 10
            for _ in range(0, self.size, piece):
                s.sendall(b"\0" * piece)
                time.sleep(0.1)
            self.status = s.recv(64).split(b" ")[1].decode()


def slow_uploads(args):
    with Stack() as stack:
        stack.up()
        gi = new_user(stack.url, stack.admin_key())
        target = f"{stack.url}/api/users/current"
        wrk(target, gi.key, 4, 5)  # warm-up
        idle = wrk(target, gi.key, 4, 20)
        # 4 MiB at 128 KiB/s each: 32 s of trickling bodies, longer than the measurement.
        uploads = [SlowUpload(stack.url, gi.key, 4 << 20, 128 << 10) for _ in range(SLOW_UPLOADS)]
        for u in uploads:
            u.start()
        time.sleep(3)
        loaded = wrk(target, gi.key, 4, 20)
        for u in uploads:
            u.join()
    finished = sum(u.status == "204" for u in uploads)
    rows = [["idle", f"{idle['p50']:.1f}", f"{idle['p99']:.1f}", f"{idle['rps']:.0f}", "1.00x"],
            [f"{SLOW_UPLOADS} slow uploads in flight", f"{loaded['p50']:.1f}",
             f"{loaded['p99']:.1f}", f"{loaded['rps']:.0f}", f"{loaded['p50'] / idle['p50']:.2f}x"]]
    table(f"GET /api/users/current, 4 clients, 20 s, web=1, while {SLOW_UPLOADS} clients upload "
          f"at 128 KiB/s ({finished} of them completed)",
          ["", "p50 ms", "p99 ms", "req/s", "p50 vs idle"], rows)


def run(args):
    downloads(args)
    slow_uploads(args)

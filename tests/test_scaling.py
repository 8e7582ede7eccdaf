"""Scale out live: web replicas behind nginx (no reload), several job handlers sharing the work,
and a database sized for the fleet. Last in the suite: it leaves many replicas running."""
import collections
import os
import re
import threading
import time
import uuid

import requests

from helpers import JOB_WAIT, log_in, nginx_upstreams, slurm_accounting, upload

WEB_REPLICAS = 4
HANDLERS = 3
JOBS = 30


def test_scaled_web_replicas_all_serve_requests(stack):
    stack.compose(f"up -d --scale web={WEB_REPLICAS}")
    stack.wait_ready()
    web_ips = stack.addresses("web")
    assert len(web_ips) == WEB_REPLICAS
    # Docker's DNS has the new replicas at once; nginx re-resolves every 5 s, without a reload.
    marker = f"spread-{uuid.uuid4().hex[:8]}"
    for i in range(300):
        assert requests.get(f"{stack.url}/api/version?{marker}={i}", timeout=30).ok
    served = collections.Counter(addr.split(":")[0] for addr in nginx_upstreams(stack, marker))
    assert set(served) == set(web_ips), served


def test_one_login_works_on_every_replica(stack, admin):
    name = f"s{uuid.uuid4().hex[:8]}"
    admin.users.create_local_user(name, f"{name}@example.org", "session-password")
    session = log_in(stack.url, f"{name}@example.org", "session-password")
    marker = f"session-{uuid.uuid4().hex[:8]}"
    for i in range(40):
        r = session.get(f"{stack.url}/api/users/current?{marker}={i}", timeout=30)
        assert r.json().get("email") == f"{name}@example.org", r.text
    assert {a.split(":")[0] for a in nginx_upstreams(stack, marker)} == stack.addresses("web")


def test_tus_upload_in_chunks_across_replicas(stack, user, tmp_path):
    assert len(stack.addresses("web")) >= 2
    data = os.urandom(1 << 20)
    path = tmp_path / "random.bin"
    path.write_bytes(data)
    history = user.histories.create_history("tus")
    out = user.tools.upload_file(str(path), history["id"], file_type="binary",
                                 chunk_size=64 * 1024)
    dataset = user.datasets.wait_for_dataset(out["outputs"][0]["id"], maxwait=JOB_WAIT)
    assert dataset["state"] == "ok"
    assert user.datasets.download_dataset(dataset["id"]) == data
    patches = [line for line in stack.compose("logs --no-color nginx").splitlines()
               if '"PATCH /api/upload/resumable_upload/' in line and "upstream=" in line]
    assert len(patches) >= 16
    chunk_servers = {re.search(r"upstream=(\S+)", line).group(1) for line in patches}
    assert len(chunk_servers) >= 2, chunk_servers


class Load:
    """Clients sending requests through nginx until stopped; every answer is recorded."""

    def __init__(self, url, headers, clients):
        self.url, self.headers, self.results = url, headers, []
        self.running = True
        self.threads = [threading.Thread(target=self.client) for _ in range(clients)]

    def client(self):
        with requests.Session() as session:
            while self.running:
                try:
                    self.results.append(session.get(self.url, headers=self.headers,
                                                    timeout=60).status_code)
                except requests.RequestException as e:
                    self.results.append(repr(e))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.running = False
        for t in self.threads:
            t.join()

    def failures(self):
        return collections.Counter(r for r in self.results if r != 200)


def test_scaling_down_under_load_fails_no_request(stack, user):
    history = user.histories.create_history("under load")
    url = f"{stack.url}/api/histories/{history['id']}/contents"
    with Load(url, {"x-api-key": user.key}, clients=4) as load:
        time.sleep(5)
        stack.compose("up -d --scale web=2")  # gunicorn finishes what it has; nginx moves on
        time.sleep(10)
    assert len(stack.addresses("web")) == 2
    assert len(load.results) > 50
    assert not load.failures(), load.failures()


def test_jobs_are_shared_by_handlers_and_run_once(stack, admin, user):
    stack.compose(f"up -d --scale web=2 --scale runner={HANDLERS}")
    stack.wait_ready()
    history = user.histories.create_history("many jobs")
    source = upload(user, history["id"], "a\tb\n")
    runs = [user.tools.run_tool(history["id"], "cat1",
                                {"input1": {"src": "hda", "id": source["id"]}})
            for _ in range(JOBS)]
    for run in runs:
        state = user.datasets.wait_for_dataset(run["outputs"][0]["id"], maxwait=JOB_WAIT)
        assert state["state"] == "ok"
    jobs = [admin.jobs.show_job(run["jobs"][0]["id"], full_details=True) for run in runs]
    # Exactly one Slurm job per Galaxy job: Slurm's own accounting agrees with Galaxy's record.
    slurm_ids = [job["external_id"] for job in jobs]
    assert len(set(slurm_ids)) == JOBS
    records = slurm_accounting(stack)
    name_of = {r["id"]: r["name"] for r in records}
    submissions = collections.Counter(r["name"] for r in records)  # name: g<Galaxy job id>_<tool>
    for slurm_id in slurm_ids:
        assert submissions[name_of[slurm_id]] == 1, (slurm_id, name_of[slurm_id])
    # Every handler took some: the handler column of Galaxy's job table (the API hides it).
    galaxy_ids = [re.match(r"g(\d+)_", name_of[s]).group(1) for s in slurm_ids]
    query = f"select handler from job where id in ({','.join(galaxy_ids)})"
    rows = stack.exec("postgres", f'psql -U galaxy -d galaxy -At -c "{query}"').split()
    handlers = collections.Counter(rows)
    assert sum(handlers.values()) == JOBS
    assert set(handlers) == {f"handler_{i}" for i in range(1, HANDLERS + 1)}, handlers


def test_database_holds_eight_web_replicas_and_three_handlers(stack, user):
    stack.compose(f"up -d --scale web=8 --scale runner={HANDLERS}")
    stack.wait_ready()
    assert len(stack.addresses("web")) == 8
    psql = "psql -U galaxy -d galaxy -At -c"
    max_connections = int(stack.exec("postgres", f"{psql} 'show max_connections'"))
    pool = sum(int(stack.exec("web", f"printenv {v}")) for v in
               ("GALAXY_DB_POOL_SIZE", "GALAXY_DB_MAX_OVERFLOW"))
    assert max_connections >= (8 + HANDLERS) * pool  # the README's formula, at its worst case
    history = user.histories.create_history("fleet")
    url = f"{stack.url}/api/histories/{history['id']}/contents"
    peak = 0
    with Load(url, {"x-api-key": user.key}, clients=64) as load:
        for _ in range(10):
            time.sleep(2)
            peak = max(peak, int(stack.exec(
                "postgres", f"{psql} \"select count(*) from pg_stat_activity where datname='galaxy'\"")))
    assert len(load.results) > 200
    assert not load.failures(), load.failures()
    logs = stack.compose("logs --no-color postgres web runner")
    assert "too many clients" not in logs and "remaining connection slots" not in logs
    print(f"{len(load.results)} requests, peak {peak} of {max_connections} connections")

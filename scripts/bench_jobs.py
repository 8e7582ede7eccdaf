"""Small jobs through the stack's Slurm path (handler → sbatch → a compute node), side by side:
with each job's outputs' metadata set in the job itself by a Python started for it (how the stack
ran before Celery: `before`), and by a warm Celery worker once the job is done (config/tpv.yml:
`after`, which also tells a Slurm job its memory). Per configuration: one cat1 alone and one
small upload, submit→ok (medians of 3), then `--jobs` cat1 with `--in-flight` submitted at a
time (wall, p50, p95), and the CPU seconds every container of the stack spent on them, per job."""
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

from bench_stack import Stack, new_user, say, table
from compose_stack import ROOT


# Job states a job doesn't leave.
ENDED = ("ok", "error", "deleted")


def wait_ok(gi, job_id):
    while (state := gi.jobs.show_job(job_id)["state"]) not in ENDED:
        time.sleep(0.25)
    return state


def run_jobs(gi, history_id, source_id, count, in_flight):
    """Run `count` cat1 jobs keeping `in_flight` submitted at a time; (wall s, [submit→ok s])."""
    pending, latencies, failed = {}, [], 0
    started = time.monotonic()
    submitted = 0
    while submitted < count or pending:
        while submitted < count and len(pending) < in_flight:
            job = gi.tools.run_tool(history_id, "cat1",
                                    {"input1": {"src": "hda", "id": source_id}})["jobs"][0]
            pending[job["id"]] = time.monotonic()
            submitted += 1
        time.sleep(0.25)
        for job_id, t0 in list(pending.items()):
            state = gi.jobs.show_job(job_id)["state"]
            if state in ENDED:
                latencies.append(time.monotonic() - t0)
                failed += state != "ok"
                del pending[job_id]
    if failed:
        say(f"jobs: {failed} of {count} jobs did not end ok")
    return time.monotonic() - started, latencies


def upload_seconds(gi, history_id):
    started = time.monotonic()
    out = gi.tools.paste_content("chr1\t100\t200\n", history_id, file_type="tabular")
    assert wait_ok(gi, out["jobs"][0]["id"]) == "ok"
    return time.monotonic() - started


def cpu_seconds(stack):
    """CPU time every container of the stack has used so far, read from its own cgroup (v1
    counts nanoseconds, v2 microseconds)."""
    total = 0.0
    for cid in stack.compose("ps", "-q", capture=True).split():
        v1 = "/sys/fs/cgroup/cpuacct/cpuacct.usage"
        out = subprocess.run(["docker", "exec", cid, "sh", "-c",
                              f"if [ -f {v1} ]; then echo ns $(cat {v1}); else echo us"
                              " $(sed -n 's/^usage_usec //p' /sys/fs/cgroup/cpu.stat); fi"],
                             capture_output=True, text=True).stdout.split()
        if len(out) == 2:
            total += int(out[1]) / (1e9 if out[0] == "ns" else 1e6)
    return total


def metadata_in_the_job(workdir):
    """A compose override that gives the handlers the stack's job routing as it was before Celery
    (as a site's own job conf): every job sets its outputs' metadata itself, and a Slurm job asks
    Slurm for its memory."""
    tpv = yaml.safe_load((ROOT / "config" / "tpv.yml").read_text())
    slurm = tpv["destinations"]["slurm"]
    slurm.pop("env")
    slurm["params"].pop("metadata_strategy")
    slurm["params"]["embed_metadata_in_job"] = True
    tpv["destinations"]["local"]["params"].pop("metadata_strategy")
    job_conf = yaml.safe_load((ROOT / "config" / "job_conf.yml").read_text())
    job_conf["execution"]["environments"]["tpv_dispatcher"]["tpv_config_files"] = [
        "/etc/galaxy/bench/tpv.yml"]
    (workdir / "tpv.yml").write_text(yaml.safe_dump(tpv))
    (workdir / "job_conf.yml").write_text(yaml.safe_dump(job_conf))
    workdir.chmod(0o755)  # Galaxy reads these as its own user in the runner
    override = workdir / "compose.bench.yml"
    override.write_text(yaml.safe_dump({"services": {"runner": {
        "environment": {"GALAXY_CONFIG_OVERRIDE_JOB_CONFIG_FILE": "/etc/galaxy/bench/job_conf.yml"},
        "volumes": [f"{workdir}:/etc/galaxy/bench:ro"]}}}))
    return override


def measure(stack, args):
    gi = new_user(stack.url, stack.admin_key())
    history = gi.histories.create_history("bench jobs")["id"]
    source = gi.tools.paste_content("chr1\t100\t200\n", history, file_type="tabular")
    source = gi.datasets.wait_for_dataset(source["outputs"][0]["id"], maxwait=600)["id"]
    run_jobs(gi, history, source, 4, args.in_flight)  # warm-up: the first job loads the tool
    alone = statistics.median(run_jobs(gi, history, source, 1, 1)[1][0] for _ in range(3))
    upload = statistics.median(upload_seconds(gi, history) for _ in range(3))
    cpu = cpu_seconds(stack)
    wall, latencies = run_jobs(gi, history, source, args.jobs, args.in_flight)
    cpu = cpu_seconds(stack) - cpu
    return alone, upload, wall, latencies, cpu / args.jobs


def run(args):
    results = {}
    with tempfile.TemporaryDirectory(prefix="sg-bench-") as tmp:
        override = metadata_in_the_job(Path(tmp))
        for name, files in (("metadata in the job (before)", ["compose.yml", "compose.slurm.yml",
                                                              str(override)]),
                            ("metadata in Celery (after)", None)):
            with Stack() as stack:
                say(f"jobs: {name}")
                stack.up(files=files)
                results[name] = measure(stack, args)
    before_wall = next(iter(results.values()))[2]
    rows = []
    for name, (alone, upload, wall, latencies, cpu) in results.items():
        q = statistics.quantiles(latencies, n=20)
        rows.append([name, f"{alone:.1f}", f"{upload:.1f}", f"{wall:.0f}",
                     f"{statistics.median(latencies):.1f}", f"{q[18]:.1f}", f"{cpu:.1f}",
                     f"{wall / before_wall:.2f}x"])
    table(f"cat1 through Slurm; {args.jobs} jobs with {args.in_flight} in flight at a time",
          ["metadata", "1 job s", "upload s", "wall s", "p50 s", "p95 s", "CPU s/job",
           "wall vs before"], rows)

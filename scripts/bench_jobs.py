"""Small jobs through the stack's Slurm path (handler → sbatch → a compute node) against the local
runner of Galaxy alone (one process, jobs as its own subprocesses): the same tool (cat1) on the
same input, a fixed number of jobs in flight, wall time for all and submit → ok per job."""
import statistics
import time

from bench_stack import Stack, new_user, say, table
from galaxy_alone import GalaxyAlone


def run_jobs(gi, count, in_flight):
    """Run `count` cat1 jobs keeping `in_flight` submitted at a time; (wall s, [submit→ok s])."""
    history = gi.histories.create_history("bench jobs")
    source = gi.tools.paste_content("chr1\t100\t200\n", history["id"], file_type="tabular")
    source = gi.datasets.wait_for_dataset(source["outputs"][0]["id"], maxwait=600)
    pending, latencies, failed = {}, [], 0
    started = time.monotonic()
    submitted = 0
    while submitted < count or pending:
        while submitted < count and len(pending) < in_flight:
            job = gi.tools.run_tool(history["id"], "cat1",
                                    {"input1": {"src": "hda", "id": source["id"]}})["jobs"][0]
            pending[job["id"]] = time.monotonic()
            submitted += 1
        time.sleep(0.25)
        for job_id, t0 in list(pending.items()):
            state = gi.jobs.show_job(job_id)["state"]
            if state in ("ok", "error", "deleted"):
                latencies.append(time.monotonic() - t0)
                failed += state != "ok"
                del pending[job_id]
    if failed:
        say(f"jobs: {failed} of {count} jobs did not end ok")
    return time.monotonic() - started, latencies


def run(args):
    results = {}
    with Stack() as stack:
        stack.up()
        say(f"jobs: {args.jobs} through Slurm")
        gi = new_user(stack.url, stack.admin_key())
        run_jobs(gi, 4, args.in_flight)  # warm-up: the first job of a handler loads the tool
        results["Slurm (handler → node)"] = run_jobs(gi, args.jobs, args.in_flight)
    with GalaxyAlone() as alone:
        say(f"jobs: {args.jobs} through Galaxy alone's local runner")
        gi = new_user(alone.url, alone.admin)
        run_jobs(gi, 4, args.in_flight)
        results["local runner (Galaxy alone)"] = run_jobs(gi, args.jobs, args.in_flight)
    local_wall = results["local runner (Galaxy alone)"][0]
    rows = []
    for name, (wall, latencies) in results.items():
        q = statistics.quantiles(latencies, n=20)
        rows.append([name, f"{wall:.0f}", f"{statistics.median(latencies):.1f}", f"{q[18]:.1f}",
                     f"{wall / local_wall:.2f}x"])
    table(f"{args.jobs} cat1 jobs, {args.in_flight} in flight at a time",
          ["path", "wall s", "p50 submit→ok s", "p95 s", "wall vs local"], rows)

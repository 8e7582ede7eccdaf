"""API throughput and latency through nginx with web=1, 2, 4 replicas, and Galaxy alone (one
process, SQLite, no proxy) as the baseline: the same requests on the same data, load from wrk."""
import re
import subprocess

from bench_stack import Stack, new_user, say, table
from galaxy_alone import GalaxyAlone

# Authenticated reads: what the Galaxy client asks most (a history's contents, polled while
# jobs run) and a light one (who am I).
ENDPOINTS = {"history contents": "/api/histories/{history}/contents",
             "current user": "/api/users/current"}


def wrk(url, key, connections, seconds):
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency",
                          "-H", f"x-api-key: {key}", url], capture_output=True, text=True,
                         check=True).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)

    def ms(p):
        value, unit = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50": ms(50), "p99": ms(99), "errors": int(errors.group(1)) if errors else 0}


def seed(gi):
    """A history of five small datasets: the data every configuration reads."""
    history = gi.histories.create_history("bench")
    for i in range(5):
        gi.tools.paste_content(f"row {i}\n", history["id"])
    return history["id"]


def measure(url, gi, history, connections, seconds):
    results = {}
    for name, path in ENDPOINTS.items():
        target = url + path.format(history=history)
        wrk(target, gi.key, connections, 5)  # warm-up
        results[name] = wrk(target, gi.key, connections, seconds)
    return results


def run(args):
    results = {}
    with Stack() as stack:
        gi = history = None
        for n in [int(x) for x in args.replicas.split(",")]:
            say(f"api: web={n}")
            stack.up("--scale", f"web={n}")
            if gi is None:
                gi = new_user(stack.url, stack.admin_key())
                history = seed(gi)
            results[f"web={n} (nginx)"] = measure(stack.url, gi, history, args.connections,
                                                  args.seconds)
    say("api: Galaxy alone")
    with GalaxyAlone() as alone:
        gi = new_user(alone.url, alone.admin)
        results["Galaxy alone (SQLite)"] = measure(alone.url, gi, seed(gi), args.connections,
                                                   args.seconds)
    for endpoint in ENDPOINTS:
        base = results.get("web=1 (nginx)", {}).get(endpoint)
        rows = [[name, f"{r[endpoint]['rps']:.1f}", f"{r[endpoint]['p50']:.0f}",
                 f"{r[endpoint]['p99']:.0f}", r[endpoint]["errors"],
                 f"{r[endpoint]['rps'] / base['rps']:.2f}x" if base else "-"]
                for name, r in results.items()]
        table(f"GET {endpoint} with an API key: {args.connections} concurrent clients, "
              f"{args.seconds}s each", ["configuration", "req/s", "p50 ms", "p99 ms", "errors",
                                        "vs web=1"], rows)

#!/usr/bin/env python3
"""What running each query in a worker process costs: the same queries over HTTP against two
servers on copies of one demo world, one with `[query] isolation = "process"` (the default), one
with `"in-process"`, asked in turn. Prints the median and 90th-percentile wall time of each query
on each server, their ratio, each server's peak resident memory, and what the workers waiting
for the next query hold of their own and how many were started.

    python3 bench/query/isolation.py target/release/kith [--customers 5000] [--runs 21]

Standard library only. The demo world is generated once into a temporary directory.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

QUERIES = [
    ("constant (SELECT 1)", "SELECT 1"),
    ("count of events", "SELECT count(*) FROM events"),
    (
        "revenue by event",
        "SELECT event, count(*) AS n, sum(revenue) AS revenue FROM events GROUP BY event ORDER BY n DESC",
    ),
    (
        "one user's events",
        "SELECT message_id, event, timestamp FROM events WHERE user_id = 'u-42' ORDER BY timestamp",
    ),
    ("profiles", "SELECT count(*) FROM profiles"),
    ("1,000 rows out", "SELECT message_id, type, event, timestamp FROM events LIMIT 1000"),
]


def kith(binary, *args):
    return subprocess.run(
        [binary, *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def start(binary, data_dir, config):
    process = subprocess.Popen(
        [binary, "--config", config, "serve", "--data-dir", data_dir, "--listen", "127.0.0.1:0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "KITH_LOG": "warn"},
    )
    for line in process.stderr:
        found = re.search(r"listening on (http://\S+)", line)
        if found:
            return process, found.group(1)
    sys.exit(f"the server on {data_dir} did not start")


def ask(base, key, sql):
    request = urllib.request.Request(
        base + "/v1/query",
        data=json.dumps({"sql": sql}).encode(),
        headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"},
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request) as answer:
        body = answer.read()
    took = time.perf_counter() - started
    json.loads(body)
    return took


def wait_for_queries(base, key):
    """Until the server at `base` answers a query (it loads the demo world first)."""
    while True:
        try:
            ask(base, key, "SELECT 1")
            return
        except Exception:
            time.sleep(0.5)


def peak_resident_mib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) >> 10
    return 0


def workers_of(pid):
    """The live child processes of `pid` (a server's query workers)."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == str(pid) and fields[0] != "Z":
            children.append(int(entry))
    return children


def anonymous_resident_mib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) >> 10
    return 0


def metric(base, series):
    with urllib.request.urlopen(base + "/metrics") as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith(series + " ") or line.startswith(series + "{"):
                return float(line.split()[-1])
    return 0.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kith")
    parser.add_argument("--customers", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()
    binary = os.path.abspath(args.kith)
    work = tempfile.mkdtemp(prefix="kith-isolation-")
    servers = []
    try:
        world = os.path.join(work, "process")
        print(f"generating a demo world of {args.customers} customers ...", file=sys.stderr)
        kith(binary, "demo", "generate", "--customers", str(args.customers), "--into", world)
        shutil.copytree(world, os.path.join(work, "in-process"))
        for isolation in ("process", "in-process"):
            data_dir = os.path.join(work, isolation)
            config = os.path.join(work, isolation + ".toml")
            with open(config, "w") as file:
                file.write(f'[query]\nisolation = "{isolation}"\n')
            key = kith(binary, "key", "create", "--data-dir", data_dir, "--scope", "read")
            process, base = start(binary, data_dir, config)
            servers.append((isolation, process, base, key))
        events = None
        for isolation, _, base, key in servers:
            wait_for_queries(base, key)
        request = urllib.request.Request(
            servers[0][2] + "/v1/query",
            data=json.dumps({"sql": "SELECT count(*) FROM events"}).encode(),
            headers={"Authorization": "Bearer " + servers[0][3]},
        )
        with urllib.request.urlopen(request) as answer:
            events = json.loads(answer.read())["rows"][0][0]
        print(f"{events:,} events; {args.runs} runs of each query on each server, in turn\n")
        print(f"{'query':<22} {'worker p50 ms':>14} {'p90':>7} {'in-process p50':>15} {'p90':>7} {'ratio p50':>10}")
        for name, sql in QUERIES:
            times = {isolation: [] for isolation, *_ in servers}
            for isolation, _, base, key in servers:
                ask(base, key, sql)  # warm-up
            for _ in range(args.runs):
                for isolation, _, base, key in servers:
                    times[isolation].append(ask(base, key, sql) * 1000)
            row = []
            for isolation in ("process", "in-process"):
                values = sorted(times[isolation])
                row.append((statistics.median(values), values[int(len(values) * 0.9) - 1]))
            ratio = row[0][0] / row[1][0]
            print(
                f"{name:<22} {row[0][0]:>14.1f} {row[0][1]:>7.1f} {row[1][0]:>15.1f} {row[1][1]:>7.1f} {ratio:>10.2f}"
            )
        print()
        for isolation, process, *_ in servers:
            print(f"peak resident memory of the server ({isolation}): {peak_resident_mib(process.pid)} MiB")
        _, process, base, _ = servers[0]
        waiting = workers_of(process.pid)
        held = ", ".join(f"{anonymous_resident_mib(pid)} MiB" for pid in waiting)
        started = int(metric(base, "kith_query_workers_started_total"))
        print(f"workers waiting: {len(waiting)}, holding of their own {held or '-'}; started in all: {started}")
    finally:
        for _, process, *_ in servers:
            process.kill()
            process.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

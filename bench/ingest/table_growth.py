#!/usr/bin/env python3
"""How the event table's footprint and flush time evolve while a server runs for a while.

Starts `kith serve` on a fresh data directory with a short flush interval, sends a small batch
every 100 ms (so nearly every 200 ms flusher tick commits), and every `--every` seconds prints
the Delta log's entries, the table's Parquet files and bytes on disk, and the mean flush time
over the last interval (from /metrics). Only the standard library; run it with any Python 3.

    python3 bench/ingest/table_growth.py --kith target/release/kith --minutes 6
"""

import argparse
import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
import uuid


def metric_sum_count(base, name):
    text = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
    values = {}
    for suffix in ("sum", "count"):
        m = re.search(r"^%s_%s\{table=\"events\"\} (\S+)$" % (name, suffix), text, re.M)
        values[suffix] = float(m.group(1)) if m else 0.0
    return values["sum"], values["count"]


def metric_value(base, name):
    """The events table's value of a counter, or None where the server has no such metric."""
    text = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
    m = re.search(r"^%s\{table=\"events\"\} (\S+)$" % name, text, re.M)
    return float(m.group(1)) if m else None


def table_footprint(table):
    log = os.path.join(table, "_delta_log")
    entries = len(os.listdir(log)) if os.path.isdir(log) else 0
    files, size = 0, 0
    for root, _, names in os.walk(table):
        for name in names:
            size += os.path.getsize(os.path.join(root, name))
            if name.endswith(".parquet") and "_delta_log" not in root:
                files += 1
    return entries, files, size


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kith", default="target/release/kith")
    parser.add_argument("--minutes", type=float, default=6)
    parser.add_argument("--every", type=float, default=30, help="seconds between reports")
    parser.add_argument("--port", type=int, default=18931)
    parser.add_argument("--replaced-files-kept-minutes", type=int,
                        help="[tables] replaced_files_kept_minutes for the server (default: its own)")
    args = parser.parse_args()

    data = tempfile.mkdtemp(prefix="kith-growth-")
    try:
        key = subprocess.run(
            [args.kith, "key", "create", "--data-dir", data, "--scope", "ingest", "--source", "web"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
        command = [args.kith, "serve", "--data-dir", data, "--listen", "127.0.0.1:%d" % args.port,
                   "--flush-interval-ms", "50"]
        if args.replaced_files_kept_minutes is not None:
            config = os.path.join(data, "kith.toml")
            with open(config, "w") as f:
                f.write("[tables]\nreplaced_files_kept_minutes = %d\n" % args.replaced_files_kept_minutes)
            command += ["--config", config]
        server = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "KITH_LOG": "warn"},
        )
        base = "http://127.0.0.1:%d" % args.port
        for _ in range(300):
            try:
                urllib.request.urlopen(base + "/readyz", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        auth = "Basic " + base64.b64encode((key + ":").encode()).decode()
        stop = threading.Event()
        sent = [0]

        def send():
            while not stop.is_set():
                batch = [{"type": "track", "event": "Product Viewed", "userId": "u%d" % (sent[0] % 500),
                          "messageId": str(uuid.uuid4()), "properties": {"sku": "sku-%d" % i, "price": 199.0}}
                         for i in range(10)]
                request = urllib.request.Request(
                    base + "/v1/batch", data=json.dumps({"batch": batch}).encode(),
                    headers={"Authorization": auth, "Content-Type": "application/json"})
                urllib.request.urlopen(request, timeout=30).read()
                sent[0] += len(batch)
                time.sleep(0.1)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        table = os.path.join(data, "tables", "events")
        print("| minute | log entries | data files | table MiB | MiB compaction rewrote | flushes in interval"
              " | mean flush ms |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        started = time.time()
        last_sum, last_count = metric_sum_count(base, "kith_lake_flush_seconds")
        while time.time() - started < args.minutes * 60:
            time.sleep(args.every)
            total, count = metric_sum_count(base, "kith_lake_flush_seconds")
            flushes = count - last_count
            mean_ms = 1000 * (total - last_sum) / flushes if flushes else float("nan")
            last_sum, last_count = total, count
            entries, files, size = table_footprint(table)
            # Only servers from session 27 on count what compaction rewrites.
            rewritten = metric_value(base, "kith_lake_compacted_bytes_total")
            rewritten = "–" if rewritten is None else "%.1f" % (rewritten / 2**20)
            print("| %.1f | %d | %d | %.2f | %s | %d | %.1f |" % (
                (time.time() - started) / 60, entries, files, size / 2**20, rewritten, flushes, mean_ms),
                flush=True)
        stop.set()
        sender.join(timeout=30)
        server.terminate()
        server.wait(timeout=60)
        print("events sent: %d" % sent[0])
    finally:
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()

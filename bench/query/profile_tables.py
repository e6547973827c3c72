#!/usr/bin/env python3
"""What querying the profile tables costs: `profiles` is built from every profile's view for each
query that reads it, `profile_identities` from the identity graph alone. Two `kith` binaries (a
change and the one before it) serve copies of one demo world in turn, each asked the same
queries; prints the median wall time of each query on each, and their ratio.

    python3 bench/query/profile_tables.py NEW_KITH OLD_KITH [--customers 50000] [--runs 7]

Standard library only; the demo world is generated once (by NEW_KITH) into a temporary
directory. Each binary's server runs alone, so neither takes CPU from the other.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile

from isolation import ask, kith, start, wait_for_queries

QUERIES = [
    ("count of profiles", "SELECT count(*) FROM profiles"),
    ("count of identities", "SELECT count(*) FROM profile_identities"),
    (
        "profiles by identifiers",
        "SELECT identifier_count, count(*) FROM profiles p JOIN profile_identities i "
        "USING (profile_id) GROUP BY identifier_count ORDER BY identifier_count",
    ),
]


def timings(binary, data_dir, work, runs):
    """Median ms of each query against `binary` serving `data_dir`."""
    config = os.path.join(work, "kith.toml")
    open(config, "w").close()
    key = kith(binary, "key", "create", "--data-dir", data_dir, "--scope", "read")
    process, base = start(binary, data_dir, config)
    try:
        wait_for_queries(base, key)
        medians = []
        for _, sql in QUERIES:
            ask(base, key, sql)  # warm-up
            medians.append(statistics.median(ask(base, key, sql) * 1000 for _ in range(runs)))
        return medians
    finally:
        process.kill()
        process.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kith")
    parser.add_argument("before")
    parser.add_argument("--customers", type=int, default=50000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    binaries = [os.path.abspath(args.kith), os.path.abspath(args.before)]
    work = tempfile.mkdtemp(prefix="kith-profile-tables-")
    try:
        world = os.path.join(work, "world")
        print(f"generating a demo world of {args.customers} customers ...", file=sys.stderr)
        kith(binaries[0], "demo", "generate", "--customers", str(args.customers), "--into", world)
        results = []
        for n, binary in enumerate(binaries):
            data_dir = os.path.join(work, f"copy-{n}")
            shutil.copytree(world, data_dir)
            results.append(timings(binary, data_dir, work, args.runs))
            shutil.rmtree(data_dir, ignore_errors=True)
        print(f"{args.customers} customers; median of {args.runs} runs of each query\n")
        print(f"{'query':<26} {'new ms':>9} {'before ms':>10} {'ratio':>7}")
        for (name, _), new, before in zip(QUERIES, *results):
            print(f"{name:<26} {new:>9.0f} {before:>10.0f} {new / before:>7.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

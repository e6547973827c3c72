#!/usr/bin/env python3
"""fdatasync latency of the journal's write pattern, appending to a new file against writing
over blocks a file already has (what reusing retired segment files gives the journal).

Usage: python3 bench/ingest/fsync_latency.py [DIR]   (DIR: a directory on the disk to measure;
default: a temporary directory). Writes 400 chunks of 150 KiB (about one group commit each).
"""
import os
import sys
import tempfile
import time

CHUNKS = 400
CHUNK_BYTES = 150 * 1024


def measure(directory, overwrite):
    path = os.path.join(directory, "fsync-latency.bin")
    fd = os.open(path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY)
    try:
        if overwrite:
            os.write(fd, b"\0" * (CHUNKS * CHUNK_BYTES))
            os.fsync(fd)
            os.lseek(fd, 0, os.SEEK_SET)
        data = os.urandom(CHUNK_BYTES)
        latencies = []
        for _ in range(CHUNKS):
            os.write(fd, data)
            start = time.perf_counter()
            os.fdatasync(fd)
            latencies.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        os.remove(path)
    latencies.sort()
    return (
        latencies[CHUNKS // 2] * 1e3,
        latencies[int(CHUNKS * 0.9)] * 1e3,
        sum(latencies) / CHUNKS * 1e3,
    )


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()
    print(f"fdatasync after each {CHUNK_BYTES // 1024} KiB write, {CHUNKS} writes, in {directory}")
    for run in (1, 2):
        for label, overwrite in (("appending to a new file", False), ("writing over written blocks", True)):
            p50, p90, mean = measure(directory, overwrite)
            print(f"run {run}  {label:<28} p50 {p50:.2f} ms  p90 {p90:.2f} ms  mean {mean:.2f} ms")


if __name__ == "__main__":
    main()

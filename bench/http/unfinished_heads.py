#!/usr/bin/env python3
"""Memory a `kith serve` holds while many HTTP/1.1 clients are each part-way through a request head.

Starts the given binary on a fresh data directory, opens CONNECTIONS connections that each send
a `GET /healthz` head with a cookie making it HEAD_BYTES long (default 390,000) without the blank
line that ends it, holds them HOLD_SECS (default 5), and prints the server's resident memory
(VmRSS) and peak (VmHWM) before and while they are held, with how many had been answered (a head
over the server's limit is answered 431 at once) by then.

    python3 bench/http/unfinished_heads.py target/release/kith 1500
"""
import os
import socket
import sys
import time

from kith_server import KithServer
from receiving_bodies import answer_so_far, memory_mb


def main():
    binary, connections = sys.argv[1], int(sys.argv[2])
    server = KithServer(binary, "")
    try:
        before = memory_mb(server.process.pid)
        length = int(os.environ.get("HEAD_BYTES", "390000"))
        start = b"GET /healthz HTTP/1.1\r\nHost: kith\r\nCookie: c="
        head = (start + b"c" * length)[:length]
        held = []
        for _ in range(connections):
            stream = socket.create_connection(("127.0.0.1", server.port))
            try:
                stream.sendall(head)
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused for its size before all of it was sent
            held.append(stream)
        time.sleep(float(os.environ.get("HOLD_SECS", "5")))
        during = memory_mb(server.process.pid)
        answered = {}
        for stream in held:
            try:
                status = answer_so_far(stream)[:12].decode(errors="replace") or "none"
            except (ConnectionResetError, OSError):
                status = "reset"
            answered[status] = answered.get(status, 0) + 1
        print(
            f"{binary}: {connections} heads of {length:,} bytes, unfinished, held: "
            f"RSS {before[0]:.0f} MB before, {during[0]:.0f} MB while held "
            f"(peak {during[1]:.0f} MB); answers so far: {answered}"
        )
        for stream in held:
            stream.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()

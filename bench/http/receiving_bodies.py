#!/usr/bin/env python3
"""Memory a `kith serve` holds while many clients are each part-way through sending a batch.

Starts the given binary on a fresh data directory, opens CONNECTIONS connections that each
send a `/v1/batch` head announcing 400,000 bytes and then SENT_BYTES (default 390,000) of
them, holds them HOLD_SECS (default 5), and prints the server's resident memory (VmRSS) and
peak (VmHWM) before and while they are held, with how many were answered 429 by then, then
its resident memory AFTER_SECS (default 3) after the connections closed.

    python3 bench/http/receiving_bodies.py target/release/kith 1500 [max_receiving_mb]
"""
import os
import socket
import sys
import time
import base64

from kith_server import KithServer


def memory_mb(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def answer_so_far(stream):
    """What the server has answered on `stream` by now, without waiting."""
    try:
        return stream.recv(64, socket.MSG_DONTWAIT)
    except BlockingIOError:
        return b""


def main():
    binary, connections = sys.argv[1], int(sys.argv[2])
    budget = sys.argv[3] if len(sys.argv) > 3 else None
    server = KithServer(binary, f"max_receiving_mb = {budget}\n" if budget else "")
    port, key = server.port, server.write_key
    try:
        before = memory_mb(server.process.pid)
        auth = base64.b64encode(f"{key}:".encode()).decode()
        head = (
            f"POST /v1/batch HTTP/1.1\r\nHost: kith\r\nAuthorization: Basic {auth}\r\n"
            f"Content-Type: application/json\r\nContent-Length: 400000\r\n\r\n"
        ).encode()
        sent = int(os.environ.get("SENT_BYTES", "390000"))
        body = (b'{"batch": [' + b" " * sent)[:sent]
        held = []
        for _ in range(connections):
            stream = socket.create_connection(("127.0.0.1", port))
            stream.sendall(head + body)
            held.append(stream)
        time.sleep(float(os.environ.get("HOLD_SECS", "5")))
        during = memory_mb(server.process.pid)
        refused = sum(1 for stream in held if answer_so_far(stream).startswith(b"HTTP/1.1 429"))
        print(
            f"{binary}: {connections} bodies, {sent:,} of 400,000 bytes sent, held"
            f"{'' if budget is None else f', max_receiving_mb = {budget}'}: "
            f"RSS {before[0]:.0f} MB before, {during[0]:.0f} MB while held "
            f"(peak {during[1]:.0f} MB); {refused} answered 429"
        )
        for stream in held:
            stream.close()
        after_secs = float(os.environ.get("AFTER_SECS", "3"))
        time.sleep(after_secs)
        after = memory_mb(server.process.pid)
        print(f"  RSS {after_secs:g} s after the connections closed: {after[0]:.0f} MB")
    finally:
        server.stop()


if __name__ == "__main__":
    main()

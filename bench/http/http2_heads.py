#!/usr/bin/env python3
"""Memory a `kith serve` holds for HTTP/2 request heads whose bodies never come.

Opens CONNECTIONS h2c (prior knowledge) connections; on each, as many streams as the server
allows at once (200), each a `POST /v1/batch` head announcing a 1,000-byte body that is never
sent, so every request waits for its body. Each head holds about HEAD_BYTES (default 16,000,
hyper's 16 KiB limit) of decoded headers, made of either:

  refs     one small header added to HPACK's table, then referred to again and again (a byte
           each): little sent, many header entries held
  literal  one large header value

Prints the server's resident memory before and 3 s after, and the heads refused.

    python3 bench/http/http2_heads.py target/release/kith 60 refs [max_receiving_mb]
"""
import base64
import os
import re
import socket
import sys
import time
import urllib.request

from kith_server import KithServer
from receiving_bodies import memory_mb

STREAMS = 200
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(kind, flags, stream, payload):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def integer(flags, prefix, value):
    """An HPACK integer with a `prefix`-bit prefix."""
    most = (1 << prefix) - 1
    if value < most:
        return bytes([flags | value])
    out, value = [flags | most], value - most
    while value >= 128:
        out.append(value % 128 | 0x80)
        value //= 128
    return bytes(out + [value])


def literal(name, value, indexed=False):
    """A header with a new name; added to the table when `indexed`."""
    name, value = name.encode(), value.encode()
    return (b"\x40" if indexed else b"\x00") + integer(0, 7, len(name)) + name \
        + integer(0, 7, len(value)) + value


def head_block(key, mode, size, first):
    auth = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
    # POST, http, then `:path` and `:authority` as literals not added to the table (so that the
    # table's newest entry stays the one below).
    block = b"\x83\x86\x04" + integer(0, 7, 9) + b"/v1/batch" + b"\x01\x04kith" \
        + literal("authorization", auth) + literal("content-type", "application/json") \
        + literal("content-length", "1000")
    # HPACK counts each header as its name and value and 32 bytes.
    room = size - 400
    if mode == "literal":
        return block + literal("x-padding", "p" * (room - 41))
    # The first stream adds `a:` to the table (index 62, the newest entry); every reference
    # after counts 33 bytes.
    entry = literal("a", "", indexed=True) if first else b""
    return block + entry + integer(0x80, 7, 62) * (room // 33 - (1 if first else 0))


def main():
    binary, connections, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    budget = sys.argv[4] if len(sys.argv) > 4 else None
    size = int(os.environ.get("HEAD_BYTES", "16000"))
    server = KithServer(binary, f"max_receiving_mb = {budget}\n" if budget else "")
    try:
        pid = server.process.pid
        before = memory_mb(pid)
        held = []
        for c in range(connections):
            stream = socket.create_connection(("127.0.0.1", server.port))
            request = PREFACE + frame(0x4, 0, 0, b"") + frame(0x4, 0x1, 0, b"")
            for i in range(STREAMS):
                block = head_block(server.write_key, mode, size, first=(i == 0))
                # END_HEADERS, not END_STREAM: the body is still to come.
                request += frame(0x1, 0x4, 2 * i + 1, block)
            stream.sendall(request)
            held.append(stream)
        time.sleep(3)
        during = memory_mb(pid)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics").read().decode()
        refused = re.search(r"^kith_http_heads_over_budget_total (\S+)", metrics, re.M)
        print(
            f"{binary}: {connections} connections x {STREAMS} heads of ~{size:,} bytes ({mode})"
            f"{'' if budget is None else f', max_receiving_mb = {budget}'}: RSS {before[0]:.0f} MB"
            f" before, {during[0]:.0f} MB while held, "
            f"{(during[0] - before[0]) * 1024 / connections:.0f} KB a connection; "
            f"heads refused: {refused.group(1) if refused else 0}"
        )
        for stream in held:
            stream.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Whether a `kith serve` started with few open files keeps writing its tables while clients
hold every connection it may serve.

Starts the binary under `prlimit --nofile=FILES:FILES` (default 256) with
`idle_connection_secs = 10`, posts a 200-event batch every half second on one kept-alive
connection for 14 s, opens 300 connections that send nothing after the fourth batch, and
prints the batches acknowledged, the events the table holds at the end, the flush and accept
errors (`/metrics`), and the panics in the server's log.

    python3 bench/http/open_files.py target/release/kith [FILES]
"""
import base64
import http.client
import json
import socket
import sys
import time

from kith_server import KithServer


def request(connection, method, path, headers, body=None):
    connection.request(method, path, body=body, headers=headers)
    answer = connection.getresponse()
    return answer.status, answer.read()


def metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.split()[-1])
    return 0.0


def main():
    binary = sys.argv[1]
    files = sys.argv[2] if len(sys.argv) > 2 else "256"
    server = KithServer(binary, "idle_connection_secs = 10\n",
                        wrapper=("prlimit", f"--nofile={files}:{files}"))
    port, write_key, read_key = server.port, server.write_key, server.read_key
    try:
        ingest = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        auth = {"Authorization": "Basic " + base64.b64encode(f"{write_key}:".encode()).decode(),
                "Content-Type": "application/json"}
        acknowledged, silent, started, batch = 0, [], time.time(), 0
        while time.time() - started < 14:
            if batch == 4:
                silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(300)]
            events = [{"type": "track", "userId": "u", "event": "Siege",
                       "messageId": f"siege-{batch}-{i}", "properties": {"p": "x" * 200}}
                      for i in range(200)]
            status, _ = request(ingest, "POST", "/v1/batch", auth,
                                json.dumps({"batch": events}))
            acknowledged += status == 200
            batch += 1
            time.sleep(0.5)
        for stream in silent:
            stream.close()
        time.sleep(12)  # the connections still waiting are accepted and closed
        reader = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        _, answer = request(reader, "POST", "/v1/query",
                            {"Authorization": f"Bearer {read_key}",
                             "Content-Type": "application/json"},
                            json.dumps({"sql": "SELECT count(*) FROM events"}))
        stored = json.loads(answer)["rows"][0][0]
        _, metrics = request(reader, "GET", "/metrics", {})
        metrics = metrics.decode()
        with open(server.log_path) as log:
            panics = log.read().count("panicked")
        print(
            f"{binary} with {files} open files: {acknowledged} of {batch} batches acknowledged, "
            f"{stored} events stored; flush errors {metric(metrics, 'kith_lake_flush_errors_total'):.0f}, "
            f"accept errors {metric(metrics, 'kith_http_accept_errors_total'):.0f}, "
            f"waits at the connection limit {metric(metrics, 'kith_http_connections_at_limit_total'):.0f}, "
            f"panics in the log {panics}"
        )
    finally:
        server.stop()


if __name__ == "__main__":
    main()

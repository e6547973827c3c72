"""The resident memory one API call takes on a server holding the demo world.

    python3 bench/profiles/call_memory.py BINARY DEMO_DATA_DIR CALL [BODY]

CALL is `fit/MODEL` (POST /v1/models/MODEL/fit with BODY, then waits for the run to end),
`analytics/KIND` (POST /v1/analytics/KIND with BODY), `query` (POST /v1/query with BODY) or
`get/PATH?QUERY` (GET /v1/PATH?QUERY with a read key).
Starts `BINARY serve` on a copy of DEMO_DATA_DIR (loaded with `kith demo generate --into`),
samples the server's resident memory every 20 ms while the call runs, and prints the memory
before, the most seen, 5 s after, and how long it took.

    python3 bench/profiles/call_memory.py target/release/kith /tmp/demo20k fit/preferences \\
        '{"property": "properties.product_id"}'
    python3 bench/profiles/call_memory.py target/release/kith /tmp/demo20k \\
        'get/profiles/duplicates?min_score=0.01&limit=1000'
"""
import json
import sys
import time

from server_memory import DemoServer, PeakSampler


def run(server, call, body):
    kind, _, name = call.partition("/")
    if kind == "fit":
        status, answer = server.call("POST", f"/v1/models/{name}/fit", server.admin_key, body)
        if status != 202:
            return status, answer
        while True:
            time.sleep(0.1)
            _, model = server.call("GET", f"/v1/models/{name}", server.read_key)
            if model["job"]["state"] != "running":
                return 200, model["job"]
    if kind == "analytics":
        return server.call("POST", f"/v1/analytics/{name}", server.read_key, body)
    if kind == "query":
        return server.call("POST", "/v1/query", server.read_key, body)
    if kind == "get":
        return server.call("GET", f"/v1/{name}", server.read_key)
    raise SystemExit(f"CALL must be fit/MODEL, analytics/KIND, query or get/PATH, not {call}")


def main():
    binary, demo, call = sys.argv[1:4]
    body = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    server = DemoServer(binary, demo)
    try:
        before = server.rss_mb()
        with PeakSampler(server) as peak:
            started = time.time()
            status, answer = run(server, call, body)
            took = time.time() - started
        time.sleep(5)
        shown = json.dumps(answer)
        print(f"{call} {json.dumps(body)}: {status} in {took:.1f} s; server RSS {before:.0f} MB "
              f"before, at most {peak.most:.0f} MB, {server.rss_mb():.0f} MB 5 s after | "
              f"{shown[:120]}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()

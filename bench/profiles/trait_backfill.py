"""What declaring computed traits through the API costs a server holding the demo world.

    python3 bench/profiles/trait_backfill.py BINARY [DECLARATIONS] [DEMO_DATA_DIR]

Loads the demo world (5,000 customers, about 345,000 events) with `BINARY demo generate --into`
unless DEMO_DATA_DIR names one already loaded, copies it, starts `BINARY serve` on the copy,
declares DECLARATIONS computed traits at once (default 5) and waits until every one is `ready`,
sampling the server's resident memory every 20 ms. Prints the memory before, the most seen while
the traits' pasts were computed, how long they took, and the memory 5 s later. Each trait's past
is read from every stored event, so this is where a server's memory grows with the data it
holds.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def call(port, method, path, key, body=None):
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=600) as answer:
        return answer.status, json.loads(answer.read())


def main():
    binary = os.path.abspath(sys.argv[1])
    declarations = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    work = tempfile.mkdtemp(prefix="kith-bench-traits-")
    demo = sys.argv[3] if len(sys.argv) > 3 else None
    if demo is None:
        demo = os.path.join(work, "demo")
        subprocess.run([binary, "demo", "generate", "--customers", "5000", "--into", demo],
                       check=True, stdout=subprocess.DEVNULL)
    data = os.path.join(work, "data")
    shutil.copytree(demo, data)
    admin = subprocess.run([binary, "key", "create", "--data-dir", data, "--scope", "admin"],
                           check=True, capture_output=True, text=True).stdout.strip()
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    server = subprocess.Popen([binary, "serve", "--data-dir", data, "--listen", f"127.0.0.1:{port}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1):
                    break
            except OSError:
                time.sleep(0.1)
        time.sleep(2)
        before = rss_mb(server.pid)
        most = [before]
        sampling = threading.Event()

        def sample():
            while not sampling.is_set():
                most[0] = max(most[0], rss_mb(server.pid))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        started = time.time()
        answers = []
        declaring = [
            threading.Thread(target=lambda n=n: answers.append(call(
                port, "POST", "/v1/computed-traits", admin,
                {"name": f"revenue_{n}", "kind": "sum", "event": "Order Completed",
                 "property": "revenue"})[0]))
            for n in range(declarations)
        ]
        for thread in declaring:
            thread.start()
        for thread in declaring:
            thread.join()
        while True:
            _, listed = call(port, "GET", "/v1/computed-traits", admin)
            if all(t["status"] == "ready" for t in listed["computed_traits"]):
                break
            time.sleep(0.05)
        took = time.time() - started
        sampling.set()
        sampler.join()
        time.sleep(5)
        print(f"{declarations} traits declared (answers {sorted(answers)}): ready in {took:.1f} s; "
              f"server RSS {before:.0f} MB before, at most {most[0]:.0f} MB while computing, "
              f"{rss_mb(server.pid):.0f} MB 5 s after")
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

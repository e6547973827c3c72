"""Shared by the memory scripts in bench/profiles: a `kith serve` on a copy of a loaded demo
world, calls to it, and its resident memory sampled while something runs."""
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request


def rss_mb(pid):
    """A process's resident memory (VmRSS) in MB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class DemoServer:
    """`binary serve` on a copy of `demo` (a data directory holding a loaded demo world), or of a
    world it generates with `binary demo generate --into` when `demo` is None. Holds an admin
    and a read key; `kith.toml` postpones the scheduled model runs so they do not run meanwhile.
    `stop()` ends the server and removes the copy."""

    def __init__(self, binary, demo=None, customers=5000):
        self.binary = os.path.abspath(binary)
        self.work = tempfile.mkdtemp(prefix="kith-bench-memory-")
        if demo is None:
            demo = os.path.join(self.work, "demo")
            subprocess.run([self.binary, "demo", "generate", "--customers", str(customers),
                            "--into", demo], check=True, stdout=subprocess.DEVNULL)
        data = os.path.join(self.work, "data")
        shutil.copytree(demo, data)
        self.admin_key, self.read_key = (
            subprocess.run([self.binary, "key", "create", "--data-dir", data, "--scope", scope],
                           check=True, capture_output=True, text=True).stdout.strip()
            for scope in ("admin", "read"))
        config = os.path.join(self.work, "kith.toml")
        with open(config, "w") as toml:
            toml.write("[models]\nfirst_check_after_secs = 86400\n")
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.process = subprocess.Popen(
            [self.binary, "serve", "--data-dir", data, "--listen", f"127.0.0.1:{self.port}",
             "--config", config],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(6000):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1):
                    break
            except OSError:
                if self.process.poll() is not None:
                    raise SystemExit(f"{self.binary} serve ended with {self.process.returncode}")
                time.sleep(0.1)
        else:
            self.stop()
            raise SystemExit("the server was not ready within ten minutes")
        # Start-up's own peak settles first.
        time.sleep(2)

    def call(self, method, path, key, body=None):
        """(status, parsed JSON answer) of one call."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=900) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as refused:
            return refused.code, json.loads(refused.read())

    def rss_mb(self):
        return rss_mb(self.process.pid)

    def stop(self):
        self.process.terminate()
        self.process.wait()
        shutil.rmtree(self.work, ignore_errors=True)


class PeakSampler:
    """The most resident memory `server` holds while the `with` block runs (every 20 ms)."""

    def __init__(self, server):
        self.server = server
        self.most = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample)

    def _sample(self):
        while not self._done.is_set():
            self.most = max(self.most, self.server.rss_mb())
            time.sleep(0.02)

    def __enter__(self):
        self.most = self.server.rss_mb()
        self._thread.start()
        return self

    def __exit__(self, *_):
        self._done.set()
        self._thread.join()

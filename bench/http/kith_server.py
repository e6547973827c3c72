"""A `kith serve` on a fresh data directory, for the scripts in bench/http."""
import os
import socket
import subprocess
import tempfile
import time


class KithServer:
    """Creates an ingest key (source `bench`) and a read key, writes `config` as kith.toml and
    starts `binary serve` on a free loopback port, behind `wrapper` (such as `prlimit ...`).
    The server's log is `self.log_path`; `stop()` ends it."""

    def __init__(self, binary, config="", wrapper=()):
        work = tempfile.mkdtemp(prefix="kith-bench-http-")
        data = os.path.join(work, "data")
        self.write_key = self._key(binary, data, "--scope", "ingest", "--source", "bench")
        self.read_key = self._key(binary, data, "--scope", "read")
        config_path = os.path.join(work, "kith.toml")
        with open(config_path, "w") as toml:
            toml.write(config)
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.log_path = os.path.join(work, "server.log")
        self.process = subprocess.Popen(
            [*wrapper, binary, "serve", "--data-dir", data,
             "--listen", f"127.0.0.1:{self.port}", "--config", config_path],
            stdout=subprocess.DEVNULL, stderr=open(self.log_path, "w"),
        )
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        time.sleep(1)

    @staticmethod
    def _key(binary, data, *scope):
        return subprocess.run(
            [binary, "key", "create", "--data-dir", data, *scope],
            check=True, capture_output=True, text=True,
        ).stdout.strip()

    def stop(self):
        self.process.terminate()
        self.process.wait()

"""A kvtier-server child process for the Python tests (free ports, temp RocksDB dir)."""
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """Starts $KVTIER_SERVER_BIN on 127.0.0.1 and waits for /readyz."""

    def __init__(self, extra_flags=()):
        binary = os.environ.get("KVTIER_SERVER_BIN")
        if not binary:
            raise RuntimeError("set KVTIER_SERVER_BIN to the kvtier-server binary")
        self.dir = tempfile.mkdtemp(prefix="kvtier-pytest-")
        self.grpc_port = free_port()
        self.http_port = free_port()
        self.log = open(os.path.join(self.dir, "server.log"), "wb")
        self.proc = subprocess.Popen(
            [binary, f"--listen=127.0.0.1:{self.grpc_port}", f"--http_port={self.http_port}",
             "--ucx_port=0", "--memory_capacity=512MiB", f"--data_dir={self.dir}/db",
             *extra_flags],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kvtier-server exited: see {self.dir}/server.log")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/readyz",
                                            timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("kvtier-server not ready after 30 s")

    @property
    def endpoint(self):
        return f"127.0.0.1:{self.grpc_port}"

    def metrics(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

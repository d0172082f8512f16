"""Fixtures for the oslo.messaging driver: a real etcd, oslo servers in their own processes,
and the `grpc` driver made loadable through its entry point.

The entry point: until pyproject.toml declares `[project.entry-points."oslo.messaging.drivers"]
grpc = ...` (and the package is reinstalled), stevedore cannot find the driver. `_entry_points()`
then writes a throwaway `*.dist-info` that declares it into a temp dir on `sys.path` (and on
`PYTHONPATH`, for the server processes). Once the real entry point is installed it does nothing,
and can be deleted.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import pathlib
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("oslo_messaging")
pytest.importorskip("oslo_config")

from grpcrpc.testing.etcd import EtcdServer

ROOT = pathlib.Path(__file__).resolve().parents[2]

_ENTRY_POINTS = """\
[oslo.messaging.drivers]
grpc = grpcrpc.oslo.driver:GrpcDriver

[oslo.config.opts]
grpcrpc.oslo = grpcrpc.oslo.options:list_opts
"""


def _entry_points() -> str | None:
    if any(ep.name == "grpc" for ep in importlib.metadata.entry_points(group="oslo.messaging.drivers")):
        return None
    shim = tempfile.mkdtemp(prefix="grpcrpc-oslo-entry-points-")
    info = pathlib.Path(shim, "grpcrpc_oslo_test_entry_points-0.dist-info")
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: grpcrpc-oslo-test-entry-points\nVersion: 0\n")
    (info / "entry_points.txt").write_text(_ENTRY_POINTS)
    sys.path.insert(0, shim)
    importlib.invalidate_caches()
    return shim


SHIM = _entry_points()
# Server processes and the eventlet/functional runs import the repo and see the shim.
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    p for p in (SHIM, str(ROOT), os.environ.get("PYTHONPATH")) if p))


@pytest.fixture(scope="session", autouse=True)
def _remove_shim() -> Iterator[None]:
    yield
    if SHIM is not None:
        shutil.rmtree(SHIM, ignore_errors=True)


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    """One etcd per test module; each test uses its own topics."""
    with EtcdServer() as server:
        yield server


def grpc_url(etcd: EtcdServer, **query: Any) -> str:
    """A grpc:// URL for `etcd`, with test-friendly options (loopback, short leases)."""
    options = {"bind_host": "127.0.0.1", "lease_ttl": 5, "stop_grace": 5} | query
    return f"grpc://{etcd.endpoint}/?" + "&".join(f"{k}={v}" for k, v in options.items())


class ServerProcess:
    """`python -m tests.oslo.server_main URL TOPIC SERVER [--eventlet]` (or another `module`
    taking its arguments), stopped gracefully (stdin closed: oslo's stop/wait, then transport
    cleanup) or killed."""

    def __init__(self, *args: str, module: str = "tests.oslo.server_main") -> None:
        self.args = [sys.executable, "-m", module, *args]
        self.proc: subprocess.Popen[str] | None = None
        self.lines: queue.Queue[str] = queue.Queue()
        self.address = ""
        # Shown when the process fails; closed by the `servers` fixture.
        self.stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115

    def start(self, timeout: float = 60.0) -> ServerProcess:
        """Start and wait for "READY <address>"."""
        self.start_process()
        self.address = self.wait_line("READY", timeout).split()[1]
        return self

    def start_process(self) -> None:
        self.proc = subprocess.Popen(self.args, cwd=ROOT, env=ENV, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def wait_line(self, prefix: str, timeout: float) -> str:
        try:
            while True:
                line = self.lines.get(timeout=timeout)
                if line.startswith(prefix):
                    return line
        except queue.Empty:
            code = self.proc.poll() if self.proc else None
            pytest.fail(f"no {prefix!r} from {self.args[3:]} within {timeout}s (exit {code})\n"
                        f"{self.stderr_tail()}")

    def stderr_tail(self, lines: int = 40) -> str:
        self.stderr.flush()
        self.stderr.seek(0)
        return "\n".join(self.stderr.read().splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> int:
        """Graceful: the server finishes what it accepted, withdraws, and exits."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else 0
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"server {self.args[3:]} did not stop within {timeout}s")

    def kill(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    """Server processes a test starts; killed at teardown if still running."""
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.kill()
        server.stderr.close()


def start_servers(started: list[ServerProcess], url: str, topic: str, names: list[str],
                  *extra: str) -> list[ServerProcess]:
    """Start servers concurrently (each process spends a second importing oslo)."""
    new = [ServerProcess(url, topic, name, *extra) for name in names]
    threads = [threading.Thread(target=server.start) for server in new]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    started.extend(new)
    for server in new:
        assert server.address, f"server {server.args[3:]} did not start"
    return new


@pytest.fixture(scope="session")
def rabbit() -> Iterator[Any]:
    """A private RabbitMQ node (own name, ports and dirs; never the system broker), for the
    bridge-mode tests; each test takes a vhost of its own. Skips when rabbitmq-server is not
    installed (`make test` installs it)."""
    from grpcrpc.testing.rabbit import RabbitServer, rabbitmq_installed

    if not rabbitmq_installed():
        pytest.skip("rabbitmq-server is not installed (make test installs it)")
    with RabbitServer() as server:
        yield server


def bridge_url(etcd: EtcdServer, rabbit_url: str, **query: Any) -> str:
    """`grpc_url` in bridge mode: `rabbit_transport_url` set to `rabbit_url`."""
    from urllib.parse import quote

    return grpc_url(etcd, rabbit_transport_url=quote(rabbit_url, safe=""), **query)

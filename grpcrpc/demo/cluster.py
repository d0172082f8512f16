"""The demo's processes: one etcd per AZ, and schedulers, computes and broadcasters as workers.

Everything here is a real process on loopback ports: etcd from Debian's package (through
`grpcrpc.testing.etcd.EtcdServer`), and each grpcrpc server started with `subprocess` as
`python -m grpcrpc.demo.worker ROLE NAME` (never a fork: this process has loaded grpc). A
`Cluster` knows how to start them, kill one, and stop them all — in order, with deadlines, and
whatever happened before.

>>> Plan(computes={"az1": 2, "az2": 1}).names("compute")
[('az1', 'compute-az1-1'), ('az1', 'compute-az1-2'), ('az2', 'compute-az2-1')]
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpcrpc.discovery.base import Resolver, RoutingTable
from grpcrpc.discovery.etcd import EtcdConfig
from grpcrpc.testing.etcd import EtcdServer

__all__ = ["Cluster", "Plan", "Worker", "health"]

_PACKAGE_ROOT = str(pathlib.Path(__file__).resolve().parent.parent.parent)


@dataclass(frozen=True, slots=True)
class Plan:
    """How many of each service run in each AZ."""

    azs: tuple[str, ...] = ("az1", "az2")
    computes: Mapping[str, int] = field(default_factory=lambda: {"az1": 2, "az2": 2})
    ttl: int = 3

    def names(self, role: str) -> list[tuple[str, str]]:
        """(az, server name) of every process of `role`, in start order."""
        if role == "compute":
            return [(az, f"compute-{az}-{i}") for az in self.azs
                    for i in range(1, self.computes.get(az, 0) + 1)]
        short = {"scheduler": "scheduler", "broadcaster": "bcast"}[role]
        return [(az, f"{short}-{az}") for az in self.azs]


@dataclass(slots=True)
class Worker:
    """One grpcrpc server process of the demo."""

    role: str
    name: str
    az: str
    log_path: str
    proc: subprocess.Popen[bytes]

    @property
    def topic(self) -> str:
        return "grpcrpc.broadcaster" if self.role == "broadcaster" else self.role

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = pathlib.Path(self.log_path).read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def health(address: str, service: str = "", timeout: float = 2.0) -> str:
    """The gRPC health status of `service` at `address` ("SERVING", "NOT_SERVING", or why
    there was no answer)."""
    with grpc.insecure_channel(address) as channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            return f"{exc.code().name}"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))


def _changed_from(seen: RoutingTable) -> Callable[[RoutingTable], bool]:
    return lambda table: table is not seen


class Cluster:
    """Starts and stops the demo's processes; `close()` is safe to call at any point."""

    def __init__(self, plan: Plan, collector: str = "", *, verbose: bool = False) -> None:
        self.plan = plan
        self.collector = collector  # host:port of the OTLP collector the workers export to
        self.verbose = verbose
        self.workdir = tempfile.mkdtemp(prefix="grpcrpc-demo-")
        self.etcds: dict[str, EtcdServer] = {}
        self.workers: list[Worker] = []

    # -- etcd ---------------------------------------------------------------------------

    def start_etcd(self, az: str) -> EtcdServer:
        etcd = EtcdServer(name=f"etcd-{az}")
        self.etcds[az] = etcd  # before start(): close() must remove its temp dir either way
        return etcd.start()

    def etcd_config(self, az: str) -> EtcdConfig:
        # A short request timeout: the demo stops an etcd on purpose and must not hang on it.
        return EtcdConfig([self.etcds[az].endpoint], timeout=2.0)

    # -- workers ------------------------------------------------------------------------

    def _env(self, az: str, name: str) -> dict[str, str]:
        # The user's own grpcrpc and OpenTelemetry settings (a config file, TLS, a sampler)
        # must not leak into the demo's processes: each gets exactly what the demo needs.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("GRPCRPC_", "OTEL_"))}
        env.update({
            "GRPCRPC_ETCD_ENDPOINTS": self.etcds[az].endpoint,
            "GRPCRPC_AZ": az,
            "GRPCRPC_LEASE_TTL": str(self.plan.ttl),
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{self.collector}",
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_BSP_SCHEDULE_DELAY": "100",  # ms: spans reach the tree promptly
            "OTEL_TRACES_SAMPLER": "parentbased_always_on",
            "OTEL_RESOURCE_ATTRIBUTES": f"service.instance.id={name},cloud.availability_zone={az}",
            "PYTHONPATH": os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p),
        })
        return env

    def spawn(self, role: str, name: str, az: str) -> Worker:
        """Start one worker process (it registers in its AZ's etcd by itself)."""
        log_path = os.path.join(self.workdir, f"{name}.log")
        args = [sys.executable, "-m", "grpcrpc.demo.worker", role, name]
        if self.verbose:
            args.append("--verbose")
        with open(log_path, "wb") as log:
            # stdin is a pipe that only this process holds: the worker exits when it closes.
            proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                                    env=self._env(az, name), start_new_session=True)
        worker = Worker(role, name, az, log_path, proc)
        self.workers.append(worker)
        return worker

    def worker(self, name: str) -> Worker:
        return next(w for w in self.workers if w.name == name)

    def wait_registered(self, resolver: Resolver, timeout: float,
                        progress: Callable[[Worker, str, float], None]) -> list[Worker]:
        """Wait until every worker's endpoint is in `resolver`'s table, calling
        `progress(worker, address, seconds)` as each appears; returns the ones that never did
        (a worker that exits is reported at once, with its log)."""
        start = time.monotonic()
        deadline = start + timeout
        waiting = list(self.workers)
        while waiting and time.monotonic() < deadline:
            table = resolver.table
            for w in list(waiting):
                found = [e for e in table.endpoints
                         if e.az == w.az and e.topic == w.topic and e.server == w.name]
                if found:
                    waiting.remove(w)
                    progress(w, found[0].address, time.monotonic() - start)
                elif not w.alive:
                    return [w]
            if waiting:  # wake on the next table, or check the processes again in a moment
                resolver.wait_for(_changed_from(table), 0.2)
        return waiting

    def kill(self, worker: Worker) -> None:
        """SIGKILL: a crash. Nothing is withdrawn; its lease expires by itself."""
        if worker.alive:
            worker.proc.send_signal(signal.SIGKILL)
        worker.proc.wait()

    # -- the end ------------------------------------------------------------------------

    def close(self, timeout: float = 8.0) -> tuple[int, int]:
        """Stop every worker (SIGTERM: they withdraw from etcd and flush their spans; SIGKILL
        after `timeout`), then every etcd, and remove the temp dirs. Returns (workers stopped,
        workers that had to be killed)."""
        running = [w for w in self.workers if w.alive]
        for w in running:
            w.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        killed = 0
        for w in running:
            try:
                w.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
                killed += 1
        for w in self.workers:
            if w.proc.stdin is not None:
                w.proc.stdin.close()
        for etcd in self.etcds.values():
            etcd.close()
        if not self.verbose:  # --verbose keeps the workers' logs for reading afterwards
            shutil.rmtree(self.workdir, ignore_errors=True)
        return len(running), killed

"""Part 6, the same storm against RabbitMQ: oslo.messaging `rabbit://` RPC servers of topic
`compute` (as many as `--rabbit-servers`), a caller sending calls and casts to them by server
name, and the broker stopped and started again under that load: the time until every server's
queue has its consumer back, and calls failed, hung and lost.

The broker is a private node of Debian's `rabbitmq-server` (its own name, ports and temp dir;
a system broker is never touched), installed with apt-get when missing on a full run.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid

from bench.scale.procs import Worker, close_all, start_all
from bench.scale.region import Options, wait_until
from bench.scale.report import Part, sec

LIB_BIN = "/usr/lib/rabbitmq/bin"  # Debian's /usr/sbin wrappers `su` away from our HOME


def _tool(name: str) -> str | None:
    path = os.path.join(LIB_BIN, name)
    return path if os.access(path, os.X_OK) else shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """A private RabbitMQ node in the foreground, as this process's child (stopped by PID)."""

    def __init__(self) -> None:
        self.port, self.dist_port = _free_port(), _free_port()
        self.node = f"grpcrpc-scale-{uuid.uuid4().hex[:8]}@localhost"
        self.workdir = tempfile.mkdtemp(prefix="grpcrpc-scale-rabbit-")
        with open(os.path.join(self.workdir, "rabbitmq.conf"), "w") as f:
            f.write("loopback_users = none\ndisk_free_limit.absolute = 10MB\n"
                    "log.console = true\nlog.console.level = warning\nlog.file = false\n")
        with open(os.path.join(self.workdir, "enabled_plugins"), "w") as f:
            f.write("[].\n")
        w = self.workdir
        self.env = dict(
            os.environ, HOME=w, RABBITMQ_NODENAME=self.node, RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port), RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=f"{w}/mnesia", RABBITMQ_LOG_BASE=f"{w}/log",
            RABBITMQ_CONFIG_FILE=f"{w}/rabbitmq.conf",
            RABBITMQ_ADVANCED_CONFIG_FILE=f"{w}/advanced.config",
            RABBITMQ_ENABLED_PLUGINS_FILE=f"{w}/enabled_plugins",
            RABBITMQ_PLUGINS_EXPAND_DIR=f"{w}/plugins-expand", RABBITMQ_PID_FILE=f"{w}/pid",
            RABBITMQ_CONF_ENV_FILE=f"{w}/rabbitmq-env.conf",
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="+sbwt none +sbwtdcpu none +sbwtdio none")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"rabbit://guest:guest@127.0.0.1:{self.port}/"

    def start(self, timeout: float = 180.0) -> float:
        t0 = time.monotonic()
        server = _tool("rabbitmq-server")
        assert server is not None
        with open(os.path.join(self.workdir, "console.log"), "ab") as log:
            self.proc = subprocess.Popen([server], env=self.env, cwd=self.workdir, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        up = wait_until(lambda: self._port_open() and self.ctl("ping") is not None, timeout, 0.3)
        if up is None:
            raise RuntimeError(f"RabbitMQ node {self.node} did not start in {timeout:.0f} s")
        return time.monotonic() - t0

    def _port_open(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def ctl(self, *args: str) -> str | None:
        tool = _tool("rabbitmq-diagnostics" if args[0] == "ping" else "rabbitmqctl")
        if tool is None:
            return None
        try:
            done = subprocess.run([tool, "-q", "-n", self.node, *args], env=self.env,
                                  capture_output=True, timeout=60, check=False)
        except subprocess.TimeoutExpired:
            return None
        return done.stdout.decode(errors="replace") if done.returncode == 0 else None

    def consumers(self) -> dict[str, int]:
        out = self.ctl("list_queues", "--no-table-headers", "name", "consumers") or ""
        result = {}
        for line in out.splitlines():
            parts = line.split("\t")
            if len(parts) == 2 and parts[1].isdigit():
                result[parts[0]] = int(parts[1])
        return result

    def stop(self, timeout: float = 120.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def installed() -> bool:
    return _tool("rabbitmq-server") is not None


def install() -> None:
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "rabbitmq-server"], check=True,
                   env=env, stdout=subprocess.DEVNULL)


def run(o: Options) -> Part:
    n = o.rabbit_servers
    part = Part("rabbit", f"6. the same storm against RabbitMQ: {n:,} oslo rabbit:// servers")
    if not installed():
        if o.smoke:
            part.row("skipped", "rabbitmq-server is not installed", "", "a full run installs it")
            return part
        install()
    broker = Broker()
    workers: list[Worker] = []
    try:
        part.row("broker cold start", sec(broker.start()), "", f"private node {broker.node}")
        workers = [Worker("rabbit-servers", url=broker.url, first=first,
                          count=min(o.rabbit_per_process, n - first))
                   for first in range(0, n, o.rabbit_per_process)]
        start_all(workers)
        load = Worker("rabbit-load", url=broker.url, servers=n, threads=8,
                      timeout=o.call_timeout)
        workers.append(load)
        load.wait_ready()

        def consumers_back() -> bool:
            queues = broker.consumers()
            return sum(queues.get(f"compute.hv{i:05d}", 0) > 0 for i in range(n)) == n

        part.check(wait_until(consumers_back, 120, 1.0) is not None,
                   "not every rabbit server consumed its queue before the storm")
        load.ask("start", rate=o.load_rate)
        time.sleep(2.0)  # traffic before the fault
        t0 = time.monotonic()
        broker.stop()
        stopped = time.monotonic() - t0
        time.sleep(2 * o.ttl)  # the same outage as etcd's: 2 x TTL
        started = time.monotonic()
        broker.start()
        up = time.monotonic() - started
        back = wait_until(consumers_back, max(300.0, n * 0.5), 1.0)
        recovered = None if back is None else time.monotonic() - started
        time.sleep(2.0)  # traffic after recovery
        stats = load.ask("stop", timeout=o.call_timeout + 120)
        received = {"calls": set(), "casts": set()}  # type: dict[str, set[str]]
        for w in workers[:-1]:
            rec = w.ask("receipts")
            received["calls"] |= set(rec["calls"])
            received["casts"] |= set(rec["casts"])
        lost = sum(k not in received["casts"] for k in stats["ok"]["cast"])
        failed = sum(stats["failed"].values())
        part.row(f"broker stopped {2 * o.ttl} s, restarted: every consumer back", sec(recovered),
                 "", f"broker up again in {up:.1f} s (stopping took {stopped:.1f} s)")
        part.row("calls+casts failed / hung / casts lost",
                 f"{failed} / {stats['hung']} / {lost}", "(incumbent: measured, not a target)",
                 f"{len(stats['ok']['call'])} calls + {len(stats['ok']['cast'])} casts ok, "
                 f"longest {stats['longest']:.1f} s; {stats['failed'] or ''}")
        part.check(recovered is not None, "the rabbit servers' consumers never all came back")
        part.data.update(servers=n, recovered_s=recovered, broker_up_s=up, failed=stats["failed"],
                         hung=stats["hung"], lost=lost)
    finally:
        close_all(workers)
        broker.close()
    return part

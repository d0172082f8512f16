"""A private RabbitMQ for tests and benchmarks: Debian's `rabbitmq-server` as a node of its own.

Everything the node owns is in a temp dir (Mnesia, logs, config, plugins file, Erlang cookie via
`HOME`) and it listens on free loopback ports (AMQP and Erlang distribution), under a node name
of its own: a system broker on the same machine, or another test's, is never touched. The node
runs in the foreground as this process's child, so it is stopped by its PID, never by name.

>>> rabbit = RabbitServer().start()                             # doctest: +SKIP
>>> rabbit.add_vhost("nova")                                     # doctest: +SKIP
'rabbit://guest:guest@127.0.0.1:41234/nova'
>>> rabbit.queues("nova")                                        # doctest: +SKIP
{'compute': (0, 4), 'compute.host1': (0, 1)}
>>> rabbit.close()                                               # doctest: +SKIP
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
import weakref

from grpcrpc.testing._procs import end_process, free_port, log_tail

__all__ = ["RabbitError", "RabbitServer", "rabbitmq_installed"]

# Debian's /usr/sbin wrappers `su` to the rabbitmq user (losing the private HOME, hence the
# private cookie); the scripts they wrap take the environment as given.
_LIB_BIN = "/usr/lib/rabbitmq/bin"


class RabbitError(RuntimeError):
    """The broker would not start, or a rabbitmqctl command failed."""


def rabbitmq_installed() -> bool:
    """Whether Debian's rabbitmq-server is here (`make test` installs it when missing)."""
    return _tool("rabbitmq-server") is not None


def _tool(name: str) -> str | None:
    path = os.path.join(_LIB_BIN, name)
    if os.access(path, os.X_OK):
        return path
    return shutil.which(name)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class RabbitServer:
    """One RabbitMQ node on 127.0.0.1 with its state in a temp dir removed on `close()`.

    Args:
        start_timeout: seconds `start()` waits for the AMQP port and `ping`.
        cpus: CPUs to pin the broker to (`taskset`), e.g. a benchmark's server core.

    Attributes: `port` (AMQP), `url` (an oslo.messaging transport URL for the `/` vhost,
    user guest), `node` (the Erlang node name).
    """

    def __init__(self, *, start_timeout: float = 90.0, cpus: str | None = None) -> None:
        server = _tool("rabbitmq-server")
        if server is None:
            raise RabbitError("rabbitmq-server is not installed (apt-get install rabbitmq-server)")
        self._server_bin = server
        self.start_timeout = start_timeout
        self.cpus = cpus
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"grpcrpc-{uuid.uuid4().hex[:10]}@localhost"
        self.workdir = tempfile.mkdtemp(prefix="grpcrpc-rabbit-")
        self.log_path = os.path.join(self.workdir, "console.log")
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer = weakref.finalize(self, end_process, None, self.workdir)
        with open(os.path.join(self.workdir, "rabbitmq.conf"), "w") as f:
            f.write("loopback_users = none\n"
                    "disk_free_limit.absolute = 10MB\n"
                    "log.console = true\nlog.console.level = warning\n"
                    "log.file = false\n")
        with open(os.path.join(self.workdir, "enabled_plugins"), "w") as f:
            f.write("[].\n")

    @property
    def env(self) -> dict[str, str]:
        """The environment the node and its CLI tools (`rabbitmqctl`) share."""
        w = self.workdir
        return dict(
            os.environ,
            HOME=w,  # the Erlang cookie: private to this node and its tools
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=os.path.join(w, "mnesia"),
            RABBITMQ_LOG_BASE=os.path.join(w, "log"),
            RABBITMQ_CONFIG_FILE=os.path.join(w, "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=os.path.join(w, "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=os.path.join(w, "enabled_plugins"),
            RABBITMQ_PLUGINS_EXPAND_DIR=os.path.join(w, "plugins-expand"),
            RABBITMQ_PID_FILE=os.path.join(w, "rabbit.pid"),
            RABBITMQ_CONF_ENV_FILE=os.path.join(w, "rabbitmq-env.conf"),
            # Erlang's schedulers busy-wait by default: on a shared machine, CPU taken from
            # everything else.
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="+sbwt none +sbwtdcpu none +sbwtdio none",
        )

    @property
    def url(self) -> str:
        return self.vhost_url("/")

    def vhost_url(self, vhost: str) -> str:
        """`rabbit://guest:guest@127.0.0.1:<port>/<vhost>` ('/' is the default vhost)."""
        path = "" if vhost == "/" else vhost
        return f"rabbit://guest:guest@127.0.0.1:{self.port}/{path}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> RabbitServer:
        """Start the node; returns once it answers `ping` and accepts AMQP connections."""
        if self.running:
            return self
        cmd = [self._server_bin]
        if self.cpus and shutil.which("taskset"):
            cmd = ["taskset", "-c", self.cpus, *cmd]
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(cmd, env=self.env, cwd=self.workdir, stdout=log,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True)
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, end_process, self._proc, self.workdir)
        deadline = time.monotonic() + self.start_timeout
        # The node answers ping a moment before its AMQP listener accepts connections.
        while not (_port_open(self.port) and self._ping()):
            if self._proc.poll() is not None:
                raise RabbitError(f"rabbitmq-server exited while starting:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RabbitError(f"RabbitMQ not up after {self.start_timeout}s:\n"
                                  f"{self.log_tail()}")
            time.sleep(0.3)  # polling with a deadline
        return self

    def _ping(self) -> bool:
        tool = _tool("rabbitmq-diagnostics")
        if tool is None:
            return True
        try:
            done = subprocess.run([tool, "-q", "-n", self.node, "ping"], env=self.env,
                                  capture_output=True, timeout=30, check=False)
        except subprocess.TimeoutExpired:
            return False
        return done.returncode == 0

    def rabbitmqctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run `rabbitmqctl -n <this node> ARGS...`; its stdout. `RabbitError` on failure."""
        tool = _tool("rabbitmqctl")
        if tool is None:
            raise RabbitError("rabbitmqctl is not installed")
        try:
            done = subprocess.run([tool, "-q", "-n", self.node, *args], env=self.env,
                                  capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise RabbitError(f"rabbitmqctl {' '.join(args)} timed out") from exc
        if done.returncode != 0:
            raise RabbitError(f"rabbitmqctl {' '.join(args)} failed ({done.returncode}): "
                              f"{done.stderr.decode(errors='replace').strip()}")
        return done.stdout.decode(errors="replace")

    def add_vhost(self, vhost: str) -> str:
        """Create `vhost` with full rights for guest; its transport URL."""
        self.rabbitmqctl("add_vhost", vhost)
        self.rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        return self.vhost_url(vhost)

    def delete_vhost(self, vhost: str) -> None:
        self.rabbitmqctl("delete_vhost", vhost)

    def queues(self, vhost: str = "/") -> dict[str, tuple[int, int]]:
        """{queue name: (messages, consumers)} of a vhost, from `rabbitmqctl list_queues`."""
        out = self.rabbitmqctl("list_queues", "-p", vhost, "--no-table-headers",
                               "name", "messages", "consumers")
        result = {}
        for line in out.splitlines():
            parts = line.split("\t")
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                result[parts[0]] = (int(parts[1]), int(parts[2]))
        return result

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the node gracefully (SIGTERM to its process group), then kill if it lingers."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def close(self) -> None:
        """Stop the node and remove its temp dir (idempotent)."""
        self.stop()
        self._finalizer()

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    def __enter__(self) -> RabbitServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RabbitServer {self.node} :{self.port} {'running' if self.running else 'stopped'}>"

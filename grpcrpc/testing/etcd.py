"""A real etcd for tests and demos: Debian's `etcd` on free loopback ports in a temp dir.

etcd starts in well under a second, so tests use the real thing rather than a mock; this module
runs it as a child process (`subprocess`, never a fork: grpc may already be loaded), waits for it
to report healthy, and lets a test stop, kill, restart and wipe it to play an operator's day.

>>> with EtcdServer() as etcd:                      # doctest: +SKIP
...     etcd.etcdctl("put", "/grpcrpc/x", "1")
...     print(etcd.etcdctl("get", "--print-value-only", "/grpcrpc/x").strip())
1

`EtcdCluster` runs several members as one cluster (a leader to kill, a quorum to lose), and
`EtcdProxy` runs `etcd grpc-proxy` (the same binary) in front of it:

>>> with EtcdCluster(3) as cluster, EtcdProxy(cluster.endpoints) as proxy:   # doctest: +SKIP
...     cluster.leader().kill()                     # the others elect a new one
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Sequence

from grpcrpc.testing._procs import end_process, free_port, log_tail

__all__ = ["EtcdCluster", "EtcdError", "EtcdProxy", "EtcdServer"]


class EtcdError(RuntimeError):
    """etcd (or etcdctl) did not do what a test asked: it would not start, or a command failed."""


class EtcdServer:
    """One etcd member on 127.0.0.1, its data in a temp dir that is removed on `close()`.

    The ports stay the same across `stop()`/`start()`, so clients reconnect to the same
    address, as they would to a restarted production member.

    >>> etcd = EtcdServer().start()                   # doctest: +SKIP
    >>> etcd.endpoint                                  # doctest: +SKIP
    '127.0.0.1:40123'
    >>> etcd.kill(); etcd.start(); etcd.wipe(); etcd.close()   # doctest: +SKIP

    Args:
        name: the member name (`--name`).
        start_timeout: seconds `start()` waits for `/health` before raising `EtcdError`.
        auth_token_ttl: `--auth-token-ttl` in seconds (how long an idle simple token lives).
        tls: serve clients over TLS and require a client certificate: a CA, a server and a
            client certificate are made with `openssl` in the temp dir (`ca_file`,
            `cert_file`, `key_file` are the client's).
        extra_args: more command-line flags for etcd.
        initial_cluster: `--initial-cluster` when this is one member of an `EtcdCluster`
            (default: a cluster of this member alone); `client_port`/`peer_port` then come
            from the cluster too.
        data_root: where the temp dir goes (default: the system's temp dir); e.g. a tmpfs,
            to keep the WAL's fsyncs off a disk other work shares.
    """

    def __init__(
        self,
        *,
        name: str = "grpcrpc-test",
        start_timeout: float = 15.0,
        auth_token_ttl: int | None = None,
        tls: bool = False,
        extra_args: Sequence[str] = (),
        etcd_bin: str = "etcd",
        etcdctl_bin: str = "etcdctl",
        initial_cluster: str | None = None,
        client_port: int | None = None,
        peer_port: int | None = None,
        data_root: str | None = None,
    ) -> None:
        self.name = name
        self.start_timeout = start_timeout
        self.auth_token_ttl = auth_token_ttl
        self.extra_args = tuple(extra_args)
        self.etcd_bin = shutil.which(etcd_bin) or etcd_bin
        self.etcdctl_bin = shutil.which(etcdctl_bin) or etcdctl_bin
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        self.initial_cluster = initial_cluster
        self.workdir = tempfile.mkdtemp(prefix="grpcrpc-etcd-", dir=data_root)
        self.data_dir = os.path.join(self.workdir, "data")
        self.log_path = os.path.join(self.workdir, "etcd.log")
        self.user: tuple[str, str] | None = None
        self.tls = tls
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer = weakref.finalize(self, end_process, None, self.workdir)
        if tls:
            self._make_certs()

    def _make_certs(self) -> None:
        def openssl(*args: str) -> None:
            subprocess.run(["openssl", *args], cwd=self.workdir, check=True, capture_output=True,
                           stdin=subprocess.DEVNULL, timeout=30)

        # The X.509 extensions a strict verifier requires (Python 3.13's default SSL context
        # sets VERIFY_X509_STRICT): a CA marked as one, allowed to sign certificates, with a
        # key identifier; leaves that name their issuer's key, their uses and their addresses.
        key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        openssl("req", "-x509", *key, "-days", "2", "-subj", "/CN=grpcrpc-test-ca",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                "-addext", "subjectKeyIdentifier=hash",
                "-keyout", "ca.key", "-out", "ca.pem")
        with open(os.path.join(self.workdir, "san.ext"), "w") as f:
            f.write("basicConstraints=critical,CA:FALSE\n"
                    "keyUsage=critical,digitalSignature\n"
                    "extendedKeyUsage=serverAuth,clientAuth\n"
                    "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                    "subjectKeyIdentifier=hash\n"
                    "authorityKeyIdentifier=keyid,issuer\n")
        for name in ("server", "client"):
            openssl("req", *key, "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                    "-out", f"{name}.csr")
            openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                    "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", f"{name}.pem")

    @property
    def ca_file(self) -> str:
        return os.path.join(self.workdir, "ca.pem")

    @property
    def cert_file(self) -> str:
        """The client certificate (TLS only)."""
        return os.path.join(self.workdir, "client.pem")

    @property
    def key_file(self) -> str:
        return os.path.join(self.workdir, "client.key")

    # -- addresses ------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """`127.0.0.1:<client port>`, the form `EtcdConfig(endpoints=[...])` takes."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.endpoint}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> EtcdServer:
        """Start etcd from the current data dir (empty the first time); returns once healthy."""
        if self.running:
            return self
        self.spawn()
        self._wait_healthy()
        return self

    def spawn(self) -> None:
        """Start the etcd process without waiting for it to be healthy (a cluster's members
        must all be started before any of them is: health needs a quorum)."""
        if self.running:
            return
        peer = f"http://127.0.0.1:{self.peer_port}"
        args = [
            self.etcd_bin,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.url}",
            f"--advertise-client-urls={self.url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster={self.initial_cluster or f'{self.name}={peer}'}",
            "--initial-cluster-state=new",
            "--logger=zap",
            "--log-level=warn",
        ]
        if self.auth_token_ttl is not None:
            args.append(f"--auth-token-ttl={self.auth_token_ttl}")
        if self.tls:
            w = self.workdir
            args += [f"--cert-file={w}/server.pem", f"--key-file={w}/server.key",
                     f"--trusted-ca-file={w}/ca.pem", "--client-cert-auth"]
        args.extend(self.extra_args)
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL)
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, end_process, self._proc, self.workdir)

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        delay = 0.01
        while True:
            if self._proc is None or self._proc.poll() is not None:
                raise EtcdError(f"etcd exited while starting:\n{self.log_tail()}")
            if self._healthy():
                return
            if time.monotonic() > deadline:
                self.kill()
                raise EtcdError(f"etcd not healthy after {self.start_timeout}s:\n{self.log_tail()}")
            time.sleep(delay)  # polling with a deadline, not a fixed wait
            delay = min(delay * 2, 0.1)

    def wait_healthy(self) -> None:
        """Wait (up to `start_timeout`) until this member reports healthy; `EtcdError` if not."""
        self._wait_healthy()

    def _get(self, path: str, timeout: float) -> bytes:
        context = None
        if self.tls:
            context = ssl.create_default_context(cafile=self.ca_file)
            context.load_cert_chain(self.cert_file, self.key_file)
        with urllib.request.urlopen(f"{self.url}{path}", timeout=timeout,
                                    context=context) as resp:
            return bytes(resp.read())

    def _healthy(self) -> bool:
        try:
            return bool(json.loads(self._get("/health", 1.0)).get("health") == "true")
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Stop etcd gracefully (SIGTERM), as an operator's restart does; the data stays."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)  # a paused etcd cannot act on SIGTERM
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """Kill etcd at once (SIGKILL): a crash. The data dir stays as the crash left it."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def pause(self) -> None:
        """Freeze etcd (SIGSTOP): it accepts connections but answers nothing, like a member
        behind a partition. `resume()` lets it go on."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)

    def restart(self) -> EtcdServer:
        """Stop, then start again from the same data dir."""
        self.stop()
        return self.start()

    def wipe(self, start: bool = True) -> None:
        """Lose everything: stop etcd, delete its data dir, and (by default) start it empty."""
        self.kill()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.user = None
        if start:
            self.start()

    def close(self) -> None:
        """Kill etcd and remove the temp dir (idempotent)."""
        self._finalizer()

    def __enter__(self) -> EtcdServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- tools ----------------------------------------------------------------------------

    def etcdctl(self, *args: str, check: bool = True, timeout: float = 10.0) -> str:
        """Run `ETCDCTL_API=3 etcdctl --endpoints=<this etcd> ARGS...`; returns its stdout.

        Raises `EtcdError` with etcdctl's stderr when it fails (unless `check=False`).
        """
        cmd = [self.etcdctl_bin, f"--endpoints={self.url}", "--dial-timeout=2s",
               f"--command-timeout={max(1, int(timeout))}s"]
        if self.user is not None:
            cmd.append(f"--user={self.user[0]}:{self.user[1]}")
        if self.tls:
            cmd += [f"--cacert={self.ca_file}", f"--cert={self.cert_file}", f"--key={self.key_file}"]
        env = dict(os.environ, ETCDCTL_API="3")
        try:
            done = subprocess.run([*cmd, *args], env=env, capture_output=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired as exc:
            raise EtcdError(f"etcdctl {' '.join(args)} timed out after {timeout}s") from exc
        if check and done.returncode != 0:
            raise EtcdError(f"etcdctl {' '.join(args)} failed ({done.returncode}): "
                            f"{done.stderr.decode(errors='replace').strip()}")
        return done.stdout.decode(errors="replace")

    def enable_auth(self, user: str = "root", password: str = "secret") -> None:
        """Turn on etcd authentication with one user (`root` has every permission)."""
        if user != "root":
            self.etcdctl("user", "add", f"root:{password}")
        self.etcdctl("user", "add", f"{user}:{password}")
        if user != "root":
            self.etcdctl("user", "grant-role", user, "root")
        self.etcdctl("auth", "enable")
        self.user = (user, password)

    def revision(self) -> int:
        """The current revision of the store."""
        out = json.loads(self.etcdctl("endpoint", "status", "-w", "json"))
        return int(out[0]["Status"]["header"]["revision"])

    def metrics(self) -> str:
        """The Prometheus text of `/metrics` (lease renewals, gRPC counters, ...)."""
        return self._get("/metrics", 30.0).decode()  # a busy etcd is slow to render it

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<EtcdServer {self.endpoint} {state}>"


class EtcdCluster:
    """`size` etcd members on loopback ports forming one cluster, each in its own temp dir.

    >>> cluster = EtcdCluster(3).start()              # doctest: +SKIP
    >>> cluster.endpoints                             # doctest: +SKIP
    ['127.0.0.1:40123', '127.0.0.1:40125', '127.0.0.1:40127']
    >>> cluster.leader().kill(); cluster.stop(); cluster.start(); cluster.close()  # doctest: +SKIP
    """

    def __init__(self, size: int = 3, *, name: str = "grpcrpc-m", start_timeout: float = 30.0,
                 extra_args: Sequence[str] = (), data_root: str | None = None) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one member")
        ports = [(free_port(), free_port()) for _ in range(size)]
        initial = ",".join(f"{name}{i}=http://127.0.0.1:{peer}"
                           for i, (_, peer) in enumerate(ports))
        self.members = [
            EtcdServer(name=f"{name}{i}", start_timeout=start_timeout, extra_args=extra_args,
                       initial_cluster=initial, client_port=client, peer_port=peer,
                       data_root=data_root)
            for i, (client, peer) in enumerate(ports)
        ]

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def start(self) -> EtcdCluster:
        """Start every member that is not running; returns once all are healthy."""
        for member in self.members:
            member.spawn()
        for member in self.members:
            member.wait_healthy()
        return self

    def stop(self) -> None:
        """Stop every member gracefully (the data stays): the whole cluster is down."""
        for member in self.members:
            member.stop()

    def leader(self, timeout: float = 10.0) -> EtcdServer:
        """The member that is leader now (waits for an election, up to `timeout`)."""
        deadline = time.monotonic() + timeout
        while True:
            for member in self.members:
                if not member.running:
                    continue
                try:
                    status = json.loads(member.etcdctl("endpoint", "status", "-w", "json",
                                                       timeout=5.0))[0]["Status"]
                except (EtcdError, ValueError, LookupError):
                    continue
                if status.get("leader") and status["leader"] == status["header"]["member_id"]:
                    return member
            if time.monotonic() > deadline:
                raise EtcdError(f"no leader among {self.endpoints} after {timeout}s")
            time.sleep(0.1)  # polling with a deadline

    def close(self) -> None:
        for member in self.members:
            member.close()

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class EtcdProxy:
    """`etcd grpc-proxy start` on a free loopback port, in front of `endpoints`: it coalesces
    watches and lease keepalives of many clients into a few streams to the cluster.

    `endpoint` is where clients connect; `metrics()` reads the proxy's own `/metrics`.
    """

    def __init__(self, endpoints: Sequence[str], *, start_timeout: float = 15.0,
                 etcd_bin: str = "etcd") -> None:
        self.cluster_endpoints = list(endpoints)
        self.start_timeout = start_timeout
        self.etcd_bin = shutil.which(etcd_bin) or etcd_bin
        self.port = free_port()
        self.metrics_port = free_port()
        self.workdir = tempfile.mkdtemp(prefix="grpcrpc-etcd-proxy-")
        self.log_path = os.path.join(self.workdir, "proxy.log")
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer = weakref.finalize(self, end_process, None, self.workdir)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self) -> EtcdProxy:
        args = [self.etcd_bin, "grpc-proxy", "start",
                f"--endpoints={','.join(self.cluster_endpoints)}",
                f"--listen-addr={self.endpoint}",
                f"--metrics-addr=http://127.0.0.1:{self.metrics_port}",
                f"--data-dir={os.path.join(self.workdir, 'data')}"]
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL)
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, end_process, self._proc, self.workdir)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._proc.poll() is not None:
                raise EtcdError(f"etcd grpc-proxy exited while starting:\n{self._log_tail()}")
            try:
                self.metrics()
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                    return self
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                self.close()
                raise EtcdError(f"etcd grpc-proxy not up after {self.start_timeout}s")
            time.sleep(0.05)  # polling with a deadline

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=30.0) as resp:
            return bytes(resp.read()).decode()

    def _log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> EtcdProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

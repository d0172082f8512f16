"""A real etcd for tests and demos: Debian's `etcd` on free loopback ports in a temp dir.

etcd starts in well under a second, so tests use the real thing rather than a mock; this module
runs it as a child process (`subprocess`, never a fork: grpc may already be loaded), waits for it
to report healthy, and lets a test stop, kill, restart and wipe it to play an operator's day.

>>> with EtcdServer() as etcd:                      # doctest: +SKIP
...     etcd.etcdctl("put", "/grpcrpc/x", "1")
...     print(etcd.etcdctl("get", "--print-value-only", "/grpcrpc/x").strip())
1
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

__all__ = ["EtcdError", "EtcdServer"]


class EtcdError(RuntimeError):
    """etcd (or etcdctl) did not do what a test asked: it would not start, or a command failed."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _end(proc: subprocess.Popen[bytes] | None, workdir: str | None) -> None:
    # Also run by weakref.finalize at exit: it must not depend on the EtcdServer object.
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()
    if workdir is not None:
        shutil.rmtree(workdir, ignore_errors=True)


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
    ) -> None:
        self.name = name
        self.start_timeout = start_timeout
        self.auth_token_ttl = auth_token_ttl
        self.extra_args = tuple(extra_args)
        self.etcd_bin = shutil.which(etcd_bin) or etcd_bin
        self.etcdctl_bin = shutil.which(etcdctl_bin) or etcdctl_bin
        self.client_port = _free_port()
        self.peer_port = _free_port()
        self.workdir = tempfile.mkdtemp(prefix="grpcrpc-etcd-")
        self.data_dir = os.path.join(self.workdir, "data")
        self.log_path = os.path.join(self.workdir, "etcd.log")
        self.user: tuple[str, str] | None = None
        self.tls = tls
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer = weakref.finalize(self, _end, None, self.workdir)
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
        peer = f"http://127.0.0.1:{self.peer_port}"
        args = [
            self.etcd_bin,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.url}",
            f"--advertise-client-urls={self.url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster={self.name}={peer}",
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
        self._finalizer = weakref.finalize(self, _end, self._proc, self.workdir)
        self._wait_healthy()
        return self

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
        try:
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-lines:]).decode(errors="replace")
        except OSError:
            return "(no log)"

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<EtcdServer {self.endpoint} {state}>"

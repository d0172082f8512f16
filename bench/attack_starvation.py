"""One peer starving everyone (issue 15, defects 3-7): each attack against a real server
process while a legitimate `RPCClient` keeps calling it, with what it cost.

The attackers never use grpcrpc's client: raw grpcio generic calls with hand-built protobuf
bytes, raw TCP sockets, and a hand-written HTTP/2 client (frames over a socket) that announces
a window of 0 and never opens it. The server runs in its own process (so its RSS and its log
are its own); the grpcrpc it imports is whatever `PYTHONPATH` points at, so the same script
measures the code before and after a change:

    git archive bbacc7a | tar -x -C /tmp/before
    PYTHONPATH=/tmp/before .venv/bin/python bench/attack_starvation.py    # before
    .venv/bin/python bench/attack_starvation.py                           # after
    .venv/bin/python bench/attack_starvation.py --attack batch --seconds 10

Each row: server RSS growth (peak during the attack, over the baseline), the legitimate
client's failures and p99 latency during the attack, the server log's growth, and what the
attacker got back. tests/security/test_starvation.py runs the same attacks, smaller, as
regression tests.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import pathlib
import resource
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

LEGIT_TOKEN = "legit-token-0123456789abcdef"
GREEDY_TOKEN = "greedy-token-0123456789abcd"  # an authorised but greedy peer
TOPIC = "victim"
STREAM = "/grpcrpc.v1.Transport/Stream"
BATCHES = "/grpcrpc.v1.Transport/Batches"
UNARY = "/grpcrpc.v1.Transport/Unary"

# -- the server process -------------------------------------------------------------------


class Api:
    """The victim's endpoints: a quick plain function (what the legitimate client calls, so
    it needs the thread pool like any other), a slow one (what a greedy peer casts), and a
    coroutine echo."""

    def echo(self, ctxt: Any, x: Any = None) -> Any:
        return x

    def slow(self, ctxt: Any, seconds: float = 0.5) -> None:
        time.sleep(min(float(seconds), 2.0))

    async def aecho(self, ctxt: Any, x: Any = None) -> Any:
        return x

    async def blob(self, ctxt: Any, n: int = 0) -> str:
        return "x" * min(int(n), 100_000)


def _serve(config: dict[str, Any]) -> None:
    """Run the victim (in the child process): write its address to the port file, then wait
    for stdin to close."""
    if config.get("nofile"):
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (int(config["nofile"]), hard))
    import logging

    logging.basicConfig(filename=config["log"], level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    from grpcrpc import Limits, RPCServer, Target
    from grpcrpc.auth import ServerAuth, Tokens

    auth = None
    if config.get("auth", True):
        auth = ServerAuth(tokens=Tokens({LEGIT_TOKEN: "legit", GREEDY_TOKEN: "greedy"}))
    limits = Limits(**config.get("limits", {}))

    async def main() -> None:
        server = RPCServer(Target(topic=TOPIC, server="v"), [Api()], auth=auth, limits=limits)
        await server.start()
        pathlib.Path(config["port_file"]).write_text(server.address)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await server.stop(1.0)

    asyncio.run(main())


@dataclass
class Victim:
    """A server process: its address, pid and log file."""

    proc: subprocess.Popen[bytes]
    address: str
    log: pathlib.Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_mb(self) -> float:
        try:
            for line in pathlib.Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def log_bytes(self) -> int:
        try:
            return self.log.stat().st_size
        except OSError:
            return 0

    def open_fds(self) -> int:
        try:
            return len(os.listdir(f"/proc/{self.pid}/fd"))
        except OSError:
            return -1

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self) -> Victim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_victim(workdir: str | os.PathLike[str], *, limits: dict[str, Any] | None = None,
                 auth: bool = True, nofile: int | None = None,
                 env: dict[str, str] | None = None) -> Victim:
    """Start a victim server process (spawned, never forked: see NOTES.md) and wait for it."""
    d = pathlib.Path(workdir)
    d.mkdir(parents=True, exist_ok=True)
    port_file, log = d / "address", d / "server.log"
    port_file.unlink(missing_ok=True)
    config = {"port_file": str(port_file), "log": str(log), "limits": limits or {},
              "auth": auth, "nofile": nofile}
    here = pathlib.Path(__file__).resolve()
    code = (f"import sys, json; sys.path.insert(1, {str(here.parent)!r}); "
            f"import attack_starvation as a; a._serve(json.loads(sys.argv[1]))")
    # cwd: the work dir, so that the grpcrpc imported is the one PYTHONPATH names (or the
    # installed one), never whatever sits in the current directory.
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(config)], cwd=d,
                            stdin=subprocess.PIPE, env={**os.environ, **(env or {})})
    deadline = time.monotonic() + 30
    while not port_file.exists() or not port_file.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"victim server did not start (exit {proc.poll()})")
        time.sleep(0.05)
    return Victim(proc, port_file.read_text(), log)


# -- hand-built protobuf bytes ------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def envelope_bytes(msg_id: str, method: str, *, topic: str = TOPIC, args: bytes = b"",
                   cast: bool = False, timeout_ms: int = 0) -> bytes:
    """A grpcrpc envelope written field by field (envelope.proto): id=1, target=2 (topic=2),
    method=3, args=4 (json=1), cast=5, timeout_ms=9."""
    out = _field(1, msg_id.encode()) + _field(2, _field(2, topic.encode()))
    out += _field(3, method.encode())
    if args:
        out += _field(4, _field(1, args))
    if cast:
        out += b"\x28\x01"
    if timeout_ms:
        out += b"\x48" + _varint(timeout_ms)
    return out


def batch_bytes(envelopes: list[bytes]) -> bytes:
    """An EnvelopeBatch: repeated Envelope envelopes = 1."""
    return b"".join(_field(1, e) for e in envelopes)


def reply_code(data: bytes) -> str:
    """What one reply says: 'result', 'accepted', or the failure code's name."""
    from grpcrpc.generated.v1 import envelope_pb2 as pb

    reply = pb.Reply.FromString(data)
    outcome = reply.WhichOneof("outcome")
    if outcome == "failure":
        return pb.ErrorCode.Name(reply.failure.code)
    return str(outcome)


def batch_reply_codes(data: bytes) -> list[str]:
    from grpcrpc.generated.v1 import transport_pb2 as tpb

    return [reply_code(r.SerializeToString()) for r in tpb.ReplyBatch.FromString(data).replies]


# -- a hand-written HTTP/2 client that never opens its window -----------------------------

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA, _HEADERS, _RST, _SETTINGS, _PING, _GOAWAY, _WINDOW = 0, 1, 3, 4, 6, 7, 8


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(
        ">I", stream) + payload


def _hpack_literal(name: str, value: str) -> bytes:
    """A header as an HPACK literal without indexing, new name, no Huffman coding."""
    def string(s: str) -> bytes:
        raw = s.encode()
        if len(raw) < 127:
            return bytes([len(raw)]) + raw
        n, out = len(raw) - 127, bytearray([127])
        while n >= 128:
            out.append((n & 0x7F) | 0x80)
            n >>= 7
        out.append(n)
        return bytes(out) + raw
    return b"\x00" + string(name) + string(value)


class NonReadingPeer:
    """An HTTP/2 client over a raw socket: it tells the server its stream windows are 0 and
    never sends a WINDOW_UPDATE, so the server can never send it a reply; it does read the
    socket (to follow the server's flow control for what it sends, and to ACK SETTINGS and
    PINGs, as any client must), but never a byte of DATA is let through to it."""

    def __init__(self, address: str, path: str, token: str | None) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.sock.settimeout(None)
        self._cond = threading.Condition()
        self._conn_window = 65535
        self._stream_window = 65535
        self._initial = 65535
        self.closed: str = ""
        self.rst: int | None = None
        self._send(_PREFACE + _frame(_SETTINGS, 0, 0, struct.pack(">HI", 0x4, 0)))
        headers = [(":method", "POST"), (":scheme", "http"), (":path", path),
                   (":authority", address), ("content-type", "application/grpc"),
                   ("te", "trailers")]
        if token:
            headers.append(("authorization", f"Bearer {token}"))
        block = b"".join(_hpack_literal(k, v) for k, v in headers)
        self._send(_frame(_HEADERS, 0x4, 1, block))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _read(self) -> None:
        buf = b""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    self._close("server closed the connection")
                    return
                buf += chunk
                while len(buf) >= 9:
                    length = int.from_bytes(buf[:3], "big")
                    if len(buf) < 9 + length:
                        break
                    kind, flags = buf[3], buf[4]
                    stream = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
                    payload, buf = buf[9:9 + length], buf[9 + length:]
                    self._on_frame(kind, flags, stream, payload)
        except OSError as err:
            self._close(f"socket error: {err}")

    def _on_frame(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        with self._cond:
            if kind == _SETTINGS and not flags & 1:
                for i in range(0, len(payload), 6):
                    ident, value = struct.unpack(">HI", payload[i:i + 6])
                    if ident == 0x4:
                        self._stream_window += value - self._initial
                        self._initial = value
                self._send(_frame(_SETTINGS, 1, 0, b""))
            elif kind == _WINDOW:
                inc = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
                if stream == 0:
                    self._conn_window += inc
                else:
                    self._stream_window += inc
            elif kind == _PING and not flags & 1:
                self._send(_frame(_PING, 1, 0, payload))
            elif kind == _RST and stream == 1:
                self.rst = int.from_bytes(payload[:4], "big")
                self.closed = self.closed or f"stream reset (error {self.rst})"
            elif kind == _GOAWAY:
                self.closed = self.closed or "GOAWAY"
            elif kind == _HEADERS and stream == 1 and flags & 1:
                self.closed = self.closed or "the server ended the stream"
            self._cond.notify_all()

    def _close(self, why: str) -> None:
        with self._cond:
            self.closed = self.closed or why
            self._cond.notify_all()

    def send_message(self, data: bytes, timeout: float) -> bool:
        """One gRPC message as DATA frames, within the server's windows; False if the server
        stopped taking data (its windows stayed shut for `timeout`) or the stream ended."""
        msg = b"\x00" + struct.pack(">I", len(data)) + data
        deadline = time.monotonic() + timeout
        while msg:
            with self._cond:
                while not self.closed and min(self._conn_window, self._stream_window) <= 0:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._cond.wait(left)
                if self.closed:
                    return False
                n = min(len(msg), 16384, self._conn_window, self._stream_window)
                self._conn_window -= n
                self._stream_window -= n
            self._send(_frame(_DATA, 0, 1, msg[:n]))
            msg = msg[n:]
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


# -- the legitimate client ----------------------------------------------------------------


@dataclass
class Legit:
    """A grpcrpc RPCClient calling `echo` in a loop (a few threads) for as long as it runs;
    `fresh`: a new client (so a new connection) for every call, as new clients would."""

    address: str
    threads: int = 2
    timeout: float = 10.0
    fresh: bool = False
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Legit:
        from grpcrpc import RPCClient, Target, TransportOptions
        from grpcrpc.discovery import StaticResolver
        from grpcrpc.discovery.base import Endpoint

        resolver = StaticResolver([Endpoint(self.address, TOPIC, "v")])

        def new_client() -> RPCClient:
            return RPCClient(resolver, Target(topic=TOPIC), timeout=self.timeout,
                             options=TransportOptions(token=LEGIT_TOKEN))
        self._new_client = new_client
        self.client = new_client()
        self.client.call({}, "echo", x=0)  # connected before the attack starts
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(i,), daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def _run(self, i: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            t0 = time.monotonic()
            client = self._new_client() if self.fresh else self.client
            try:
                assert client.call({}, "echo", x=n) == n
                self.latencies.append(time.monotonic() - t0)
            except Exception as err:  # every failure is what we measure
                self.latencies.append(time.monotonic() - t0)
                self.failures.append(f"{type(err).__name__}: {err}"[:200])
            finally:
                if self.fresh:
                    client.close()
            self._stop.wait(0.02)

    def stop(self) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(self.timeout + 5)
        self.client.close()

    def p99(self) -> float:
        if not self.latencies:
            return float("nan")
        s = sorted(self.latencies)
        return s[min(len(s) - 1, int(len(s) * 0.99))]


# -- the attacks --------------------------------------------------------------------------


def _raw_channel(address: str, *, separate: bool = True) -> Any:
    import grpc

    opts = [("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20)]
    if separate:
        opts.append(("grpc.use_local_subchannel_pool", 1))
    return grpc.insecure_channel(address, options=opts)


def _status(err: Exception) -> str:
    code = getattr(err, "code", lambda: None)()
    details = (getattr(err, "details", lambda: "")() or "")[:90]
    return f"{code.name if code else type(err).__name__}: {details}"


def attack_batch(victim: Victim, seconds: float) -> collections.Counter[str]:
    """Defect 3: one 4 MB Batches message of tiny envelopes, no credentials."""
    envs, size, i = [], 0, 0
    while size < 4 * 1024 * 1024 - 64:
        e = envelope_bytes(f"{i:x}", "echo")
        envs.append(e)
        size += len(e) + 2
        i += 1
    data = batch_bytes(envs)
    while len(data) > 4 * 1024 * 1024 - 16:
        envs.pop()
        data = batch_bytes(envs)
    got: collections.Counter[str] = collections.Counter()
    channel = _raw_channel(victim.address)
    call = channel.stream_stream(BATCHES)(iter([data]), timeout=max(seconds, 5))
    try:
        for raw in call:
            got.update(batch_reply_codes(raw))
    except Exception as err:
        got[_status(err)] += 1
    got[f"sent {len(envs)} envelopes in one message"] += 0
    channel.close()
    return got


def attack_noread(victim: Victim, seconds: float, total_mb: float = 20.0) -> collections.Counter[str]:
    """Defect 4: an authorised client that announces a window of 0 and sends calls in
    batches on one Batches stream; each call asks for a 20 KB answer (~450 times its size)."""
    got: collections.Counter[str] = collections.Counter()
    peer = NonReadingPeer(victim.address, BATCHES, GREEDY_TOKEN)
    arg = b'{"n":20000}'
    sent, deadline, n = 0, time.monotonic() + seconds, 0
    try:
        while sent < total_mb * 1024 * 1024 and time.monotonic() < deadline:
            envs = []
            for _ in range(1000):
                n += 1
                envs.append(envelope_bytes(f"{n:x}", "blob", args=arg))
            msg = batch_bytes(envs)
            if not peer.send_message(msg, timeout=max(0.1, deadline - time.monotonic())):
                break
            sent += len(msg)
    finally:
        got[f"sent {sent / 1e6:.1f} MB ({n} calls)"] += 1
        got[f"stream: {peer.closed or 'open, server stopped reading'}"] += 1
        peer.close()
    return got


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed this socket (whatever it sent before is read and dropped)."""
    sock.setblocking(False)
    try:
        while True:
            if sock.recv(65536) == b"":
                return True
    except BlockingIOError:
        return False
    except OSError:  # reset
        return True


def attack_idle(victim: Victim, seconds: float, count: int = 1124) -> collections.Counter[str]:
    """Defect 5: TCP connections that send nothing."""
    got: collections.Counter[str] = collections.Counter()
    host, port = victim.address.rsplit(":", 1)
    socks = []
    for _ in range(count):
        try:
            s = socket.create_connection((host, int(port)), timeout=2)
            socks.append(s)
        except OSError as err:
            got[f"connect failed: {err.__class__.__name__}"] += 1
    got[f"{len(socks)} sockets opened"] += 1
    time.sleep(seconds)
    closed = sum(closed_by_server(s) for s in socks)
    for s in socks:
        s.close()
    got[f"{closed} closed by the server after {seconds:.0f}s"] += 1
    return got


def attack_unary_flood(victim: Victim, seconds: float, in_flight: int = 2000,
                       connections: int = 4) -> collections.Counter[str]:
    """Defect 6: `in_flight` Unary calls kept in flight over a few connections."""
    import grpc
    import grpc.aio

    got: collections.Counter[str] = collections.Counter()

    async def main() -> None:
        md = (("authorization", f"Bearer {GREEDY_TOKEN}"),)
        opts = [("grpc.use_local_subchannel_pool", 1)]
        channels = [grpc.aio.insecure_channel(victim.address, options=opts)
                    for _ in range(connections)]
        stop = time.monotonic() + seconds

        async def worker(i: int) -> None:
            unary = channels[i % connections].unary_unary(UNARY)
            n = 0
            while time.monotonic() < stop:
                n += 1
                data = envelope_bytes(f"{i}-{n}", "echo", args=b'{"x":1}')
                try:
                    got[reply_code(await unary(data, metadata=md, timeout=10))] += 1
                except grpc.aio.AioRpcError as err:
                    got[_status(err)] += 1
        await asyncio.gather(*(worker(i) for i in range(in_flight)))
        for c in channels:
            await c.close()

    asyncio.run(main())
    return got


def attack_greedy(victim: Victim, seconds: float, in_flight: int = 256) -> collections.Counter[str]:
    """Defect 7: an authorised peer on one connection casting a slow plain function."""
    got: collections.Counter[str] = collections.Counter()
    stop = time.monotonic() + seconds
    lock = threading.Lock()
    channel = _raw_channel(victim.address)
    unary = channel.unary_unary(UNARY)
    md = (("authorization", f"Bearer {GREEDY_TOKEN}"),)

    def worker(i: int) -> None:
        n = 0
        while time.monotonic() < stop:
            n += 1
            data = envelope_bytes(f"g{i}-{n}", "slow", args=b'{"seconds":0.5}', cast=True)
            try:
                code = reply_code(unary(data, metadata=md, timeout=10))
            except Exception as err:
                code = _status(err)
            with lock:
                got[code] += 1
            if code != "accepted":
                time.sleep(0.05)  # refused: try again shortly, as a greedy client would
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(in_flight)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 15)
    channel.close()
    return got


# name: (what it is, the attack, the victim's arguments, the legitimate client's arguments)
ATTACKS: dict[str, tuple[str, Callable[..., collections.Counter[str]], dict[str, Any],
                         dict[str, Any]]] = {
    "batch": ("3: one 4 MB Batches message, unauthenticated", attack_batch, {}, {}),
    "noread": ("4: Batches peer with HTTP/2 window 0, 20 MB of calls", attack_noread, {}, {}),
    "idle": ("5: 1,124 idle TCP connections (server soft nofile 1,024), new clients",
             attack_idle, {"nofile": 1024}, {"fresh": True, "timeout": 5.0}),
    "unary": ("6: 2,000 Unary calls in flight over 4 connections, new clients",
              attack_unary_flood, {}, {"fresh": True}),
    "greedy": ("7: one authorised connection casting a 0.5 s method, 256 in flight",
               attack_greedy, {}, {}),
}


@dataclass
class Row:
    attack: str
    rss_growth_mb: float
    legit_calls: int
    legit_failures: int
    legit_p99_s: float
    log_growth_mb: float
    attacker_got: dict[str, int]
    first_failure: str = ""
    baseline_p99_s: float = 0.0  # the legitimate client's p99 in the 2 s before the attack


def _sample_rss(victim: Victim, stop: threading.Event, peak: list[float]) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], victim.rss_mb())
        stop.wait(0.1)


def run_attack(name: str, seconds: float, workdir: str) -> Row:
    title, attack, victim_args, legit_args = ATTACKS[name]
    with start_victim(pathlib.Path(workdir) / name, **victim_args) as victim:
        legit = Legit(victim.address, **legit_args).start()
        time.sleep(2.0)  # a baseline: how loaded the machine is without the attack
        base_rss, base_log = victim.rss_mb(), victim.log_bytes()
        baseline_p99 = legit.p99()
        legit.latencies.clear()
        stop, peak = threading.Event(), [base_rss]
        sampler = threading.Thread(target=_sample_rss, args=(victim, stop, peak), daemon=True)
        sampler.start()
        try:
            got = attack(victim, seconds)
            time.sleep(1.0)
        finally:
            stop.set()
            sampler.join()
            legit.stop()
        return Row(title, round(peak[0] - base_rss, 1), len(legit.latencies),
                   len(legit.failures), round(legit.p99(), 3),
                   round((victim.log_bytes() - base_log) / 1e6, 2), dict(got),
                   legit.failures[0] if legit.failures else "", round(baseline_p99, 3))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attack", choices=[*ATTACKS, "all"], default="all")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--json", help="write the rows here too")
    args = parser.parse_args(argv)
    import grpcrpc

    print(f"grpcrpc from {pathlib.Path(grpcrpc.__file__).parent}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name in ATTACKS if args.attack == "all" else [args.attack]:
            row = run_attack(name, args.seconds, d)
            rows.append(row)
            print(json.dumps(row.__dict__), flush=True)
    print()
    print("| attack | server RSS growth | legit calls / failures | legit p99 (baseline) | "
          "log growth | attacker got |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        got = ", ".join(f"{k} x{v}" if v else k for k, v in
                        sorted(r.attacker_got.items(), key=lambda kv: -kv[1])[:5])
        print(f"| {r.attack} | {r.rss_growth_mb:+.0f} MB | {r.legit_calls} / "
              f"{r.legit_failures} | {r.legit_p99_s:.2f} s ({r.baseline_p99_s:.2f} s) | "
              f"{r.log_growth_mb:.1f} MB | {got} |")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps([r.__dict__ for r in rows], indent=1))


if __name__ == "__main__":
    if "PYTHONPATH" not in os.environ:  # else: measure the grpcrpc it names
        sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
    main()

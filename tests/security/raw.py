"""An attacker's tools, and a legitimate caller to watch while they are used.

The attacker never uses grpcrpc's client: protobuf bytes built from the generated message
classes go over grpcio generic calls (no serializers), and capture servers are a plain grpcio
server and raw TCP listeners. `LegitLoad` is a real grpcrpc `RPCClient` that keeps calling
meanwhile and records what it saw. Shared by the tests in this directory and by
`bench/attack_authz.py` (which runs them against other checkouts of grpcrpc too, so nothing
here imports grpcrpc's own modules beyond the generated messages).
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from concurrent import futures
from typing import Any, TypeVar

import grpc

from grpcrpc.generated.v1 import broadcaster_pb2 as bpb
from grpcrpc.generated.v1 import envelope_pb2 as pb
from grpcrpc.generated.v1 import transport_pb2 as tpb

T = TypeVar("T")

UNARY = "/grpcrpc.v1.Transport/Unary"
STREAM = "/grpcrpc.v1.Transport/Stream"
BATCHES = "/grpcrpc.v1.Transport/Batches"
FANOUT = "/grpcrpc.v1.Broadcaster/Fanout"


def envelope(msg_id: str, topic: str, method: str, *, cast: bool = False, fanout: bool = False,
             cancel: bool = False, exchange: str = "", server: str = "", az: str = "",
             headers: Mapping[str, str] | None = None) -> pb.Envelope:
    """An envelope as an attacker writes it: every field chosen, nothing checked."""
    env = pb.Envelope(id=msg_id, method=method, cast=cast, fanout=fanout, cancel=cancel,
                      target=pb.Target(topic=topic, exchange=exchange, server=server, az=az),
                      args=pb.Payload(json=b"{}"), context=b"{}")
    if headers:
        env.headers.update(headers)
    return env


def fanout_request(env: pb.Envelope, targets: Iterable[tuple[str, str]] = (),
                   depth: int = 0) -> bytes:
    return bpb.FanoutRequest(
        envelope=env, depth=depth,
        targets=[bpb.FanoutTarget(address=a, server=s) for a, s in targets],
    ).SerializeToString()


class Raw:
    """A raw grpcio channel to one address, presenting `token` if given."""

    def __init__(self, address: str, token: str | None = None) -> None:
        self.channel = grpc.insecure_channel(address)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def unary(self, env: pb.Envelope | bytes, timeout: float = 10) -> pb.Reply:
        data = env if isinstance(env, bytes) else env.SerializeToString()
        raw = self.channel.unary_unary(UNARY)(data, timeout=timeout, metadata=self.metadata)
        return pb.Reply.FromString(raw)

    def stream(self, envs: Sequence[pb.Envelope], timeout: float = 10) -> list[pb.Reply]:
        call = self.channel.stream_stream(STREAM)
        raws = call(iter([e.SerializeToString() for e in envs]), timeout=timeout,
                    metadata=self.metadata)
        return [pb.Reply.FromString(r) for r in raws]

    def batches(self, batches: Sequence[Sequence[pb.Envelope]], timeout: float = 30
                ) -> list[pb.Reply]:
        call = self.channel.stream_stream(BATCHES)
        data = [tpb.EnvelopeBatch(envelopes=list(b)).SerializeToString() for b in batches]
        raws = call(iter(data), timeout=timeout, metadata=self.metadata)
        return [r for raw in raws for r in tpb.ReplyBatch.FromString(raw).replies]

    def fanout(self, request: bytes, timeout: float = 30) -> pb.FanoutReport:
        raw = self.channel.unary_unary(FANOUT)(request, timeout=timeout, metadata=self.metadata)
        return pb.FanoutReport.FromString(raw)

    def close(self) -> None:
        self.channel.close()


def outcome(reply: pb.Reply) -> str:
    """'result', 'accepted', or the failure code's name."""
    kind = reply.WhichOneof("outcome")
    if kind == "failure":
        return pb.ErrorCode.Name(reply.failure.code)
    return kind or "none"


class CaptureServer:
    """A plain grpcio server that answers nothing and records every call's metadata: where a
    dialler's credentials would land."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, tuple[tuple[str, str], ...]]] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(grpc.GenericRpcHandler):
            def service(self, details: Any) -> None:
                with outer._lock:
                    outer.seen.append((details.method, tuple(details.invocation_metadata)))
                return None  # UNIMPLEMENTED to the caller

        self._server = grpc.server(futures.ThreadPoolExecutor(2), handlers=[Handler()])
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{self.port}"
        self._server.start()

    def credentials(self) -> list[str]:
        with self._lock:
            return [v for _, md in self.seen for k, v in md if k == "authorization"]

    def close(self) -> None:
        self._server.stop(0)


class Listeners:
    """Raw TCP listeners that count the connections anyone opens to them."""

    def __init__(self, n: int) -> None:
        self.sockets = []
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            s.listen(64)
            s.setblocking(False)
            self.sockets.append(s)
        self.addresses = [f"127.0.0.1:{s.getsockname()[1]}" for s in self.sockets]

    def accepted(self) -> int:
        n = 0
        for s in self.sockets:
            while True:
                try:
                    conn, _ = s.accept()
                except (BlockingIOError, InterruptedError):
                    break
                conn.close()
                n += 1
        return n

    def close(self) -> None:
        for s in self.sockets:
            s.close()


class LoopThread:
    """An event loop in a background thread, for async servers beside blocking test code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class LegitLoad:
    """A legitimate caller calling `call()` over and over in a thread while an attack runs:
    records each call's latency and every failure."""

    def __init__(self, call: Callable[[], Any], expect: Any, pause: float = 0.01) -> None:
        self._call, self._expect, self._pause = call, expect, pause
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.perf_counter()
            try:
                result = self._call()
            except Exception as err:  # every failure is what this load is here to count
                self.failures.append(f"{type(err).__name__}: {str(err)[:200]}")
            else:
                if result != self._expect:
                    self.failures.append(f"wrong result {result!r}")
            self.latencies.append(time.perf_counter() - t0)
            self._stop.wait(self._pause)

    def __enter__(self) -> LegitLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(30)

    @property
    def worst(self) -> float:
        return max(self.latencies, default=0.0)

    @property
    def p99(self) -> float:
        if len(self.latencies) < 2:
            return self.worst
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[98]

    def check(self, min_calls: int = 1) -> None:
        """The legitimate caller kept working: no failure, no call taking 2 s or more."""
        assert not self.failures, self.failures[:5]
        assert len(self.latencies) >= min_calls, f"only {len(self.latencies)} legit calls"
        assert self.worst < 2.0, f"a legitimate call took {self.worst:.2f}s"

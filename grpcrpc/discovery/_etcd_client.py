"""Sessions with etcd: the one place, with `_etcd_errors` (which maps their exceptions to
`EtcdFailure`s), that knows the etcd client library (`pyetcd`, from etcd-sdk-python) and grpc.
Everything above speaks in `Session` and `Connection` methods and those failures; a pyetcd or
grpc exception never leaves these two modules.

>>> Backoff(base=0.1, cap=2.0).next() <= 0.1
True
"""

from __future__ import annotations

import collections
import functools
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import grpc
import pyetcd
from pyetcd import etcdrpc
from pyetcd import events as pyetcd_events
from pyetcd import exceptions as pyetcd_exc
from pyetcd import transactions as pyetcd_txn

from grpcrpc.discovery._etcd_errors import (
    AuthFailed,
    Compacted,
    EtcdFailure,
    LeaseNotFound,
    TooLarge,
    Unavailable,
    failure,
    mapped,
)
from grpcrpc.exceptions import DiscoveryUnavailable

if TYPE_CHECKING:
    from grpcrpc.discovery.etcd import EtcdConfig

__all__ = [
    "AuthFailed",
    "Backoff",
    "Compacted",
    "Connection",
    "DiscoveryUnavailable",
    "EtcdFailure",
    "LeaseNotFound",
    "Page",
    "Session",
    "TooLarge",
    "Unavailable",
    "WatchEvents",
    "make_client",
    "prefix_end",
]

# How long pyetcd skips an endpoint that failed. Its default (300 s) would keep a single-member
# cluster unusable for five minutes after a restart; our own backoff spaces the retries out.
_ENDPOINT_RETRY_S = 1.0

_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    # Pings notice a dead or partitioned etcd on a silent watch stream, every
    # `EtcdConfig.keepalive_time` (added per client). etcd refuses pings more often than its
    # --grpc-keepalive-min-time (5 s), and pings without a stream (so none here).
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    # grpc's own reconnect backoff grows to 120 s: cap it, or a restarted etcd stays unseen.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    # A fresh channel must not inherit another channel's backed-off connection to etcd.
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.max_receive_message_length", 32 * 1024 * 1024),
]


P = ParamSpec("P")
R = TypeVar("R")


def _limited(fn: Callable[P, R]) -> Callable[P, R]:
    """A request that waits its turn when the session allows only so many at once."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        slots = args[0]._slots  # type: ignore[attr-defined]
        if slots is None:
            return fn(*args, **kwargs)
        timeout = args[0].timeout  # type: ignore[attr-defined]
        if not slots.acquire(timeout=timeout):
            raise Unavailable(f"no turn for an etcd request within {timeout:.1f}s: "
                              f"the connection's requests in flight are all waiting")
        try:
            return fn(*args, **kwargs)
        finally:
            slots.release()

    return wrapper


def prefix_end(prefix: bytes) -> bytes:
    """The range end that covers every key starting with `prefix`."""
    return bytes(pyetcd.utils.prefix_range_end(prefix))


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()


def make_client(config: EtcdConfig, timeout: float | None = None) -> Any:
    """A connected pyetcd `MultiEndpointEtcd3Client` for `config` (authenticated if a user is
    set); fails over between `config.endpoints`. Raises `EtcdFailure`."""
    creds = None
    if config.tls:
        try:
            creds = grpc.ssl_channel_credentials(
                _read(config.ca_file), _read(config.key_file), _read(config.cert_file)
            )
        except OSError as exc:  # retried like an outage: the file may be on its way
            raise Unavailable(f"cannot read a TLS file: {exc}") from exc
    endpoints = []
    for address in config.endpoints:
        host, _, port = address.rpartition(":")  # an IPv6 host keeps its brackets for grpc
        endpoints.append(pyetcd.Endpoint(
            host, int(port), secure=config.tls, creds=creds,
            time_retry=_ENDPOINT_RETRY_S, opts=[
                *_CHANNEL_OPTIONS,
                ("grpc.keepalive_time_ms", int(config.keepalive_time * 1000))],
        ))
    try:
        client = pyetcd.MultiEndpointEtcd3Client(
            endpoints=endpoints, timeout=timeout or config.timeout, user=config.user,
            password=config.password, failover=True,
        )
    except (grpc.RpcError, pyetcd_exc.Etcd3Exception) as exc:
        for ep in endpoints:
            ep.close()
        raise failure(exc) from exc
    if not config.tls:
        # grpc refuses call credentials on a plaintext channel; the token still travels in
        # the metadata pyetcd adds to every call.
        client.call_credentials = None
    # etcd then fails requests and ends watches on a member cut off from its leader, so we
    # fail over instead of following a watch that went silent (clientv3's WithRequireLeader).
    client.metadata = (*(client.metadata or ()), ("hasleader", "true"))
    return client


class _LeaseIs(pyetcd_txn.BaseCompare):  # type: ignore[misc]
    """The LEASE comparison pyetcd lacks: `key` is held by lease `value`."""

    def build_compare(self, compare: Any) -> None:
        compare.target = etcdrpc.Compare.LEASE
        compare.lease = int(self.value)


@dataclass(frozen=True, slots=True)
class Page:
    kvs: list[tuple[bytes, bytes]]
    more: bool
    revision: int
    leases: list[int] = field(default_factory=list)  # the lease of each key in kvs (0: none)


@dataclass(frozen=True, slots=True)
class WatchEvents:
    """One watch response: (is_put, key, value) in order, and the store revision it reflects."""

    events: list[tuple[bool, bytes, bytes]]
    revision: int


class Session:
    """One client connection to a cluster, with typed requests that raise only `EtcdFailure`.

    Thread-safe for requests; watch callbacks run on pyetcd's watch thread.
    """

    def __init__(self, config: EtcdConfig, timeout: float | None = None,
                 max_in_flight: int | None = None) -> None:
        self.config = config
        self.timeout = timeout or config.timeout
        # Each request in flight is a thread in grpc's blocking API, which wakes it five times
        # a second until the answer: many registries on one connection wait their turn instead.
        self._slots = threading.BoundedSemaphore(max_in_flight) if max_in_flight else None
        self._client = make_client(config, self.timeout)
        self._keepalive: _KeepAliveStream | None = None
        self._keepalive_lock = threading.Lock()

    @_limited
    @mapped
    def grant(self, ttl: int) -> tuple[int, int]:
        """A new lease: (id, granted TTL). etcd may raise a too-short TTL to its minimum."""
        lease = self._client.lease(ttl)
        return int(lease.id), int(lease.ttl)

    def keepalive(self, lease_id: int, timeout: float | None = None) -> int:
        """Renew the lease on this session's keepalive stream; returns the TTL, <= 0 when etcd
        no longer has the lease.

        One long-lived stream carries the renewals of every lease of the session (as etcd's
        own clientv3 does): a stream per renewal costs etcd about twice the CPU, and a stream
        per lease costs a process that holds many leases a grpc thread each.
        """
        stream = self._keepalive
        if stream is None or not stream.alive:
            # A unary call first: it checks the lease, and through pyetcd's error handling it
            # fails over to another endpoint when this one is down (a raw stream would not).
            ttl = self.time_to_live(lease_id)
            if ttl <= 0:
                return ttl
            with self._keepalive_lock:
                stream = self._keepalive
                if stream is None or not stream.alive:
                    stream = self._keepalive = _KeepAliveStream(self._client, self.timeout)
        return stream.renew(lease_id, timeout or self.timeout)

    @_limited
    @mapped
    def time_to_live(self, lease_id: int) -> int:
        """The lease's remaining TTL (-1: etcd does not have it)."""
        return int(self._client.get_lease_info(lease_id).TTL)

    @_limited
    @mapped
    def revoke(self, lease_id: int) -> None:
        self._client.revoke_lease(lease_id)

    @_limited
    @mapped
    def put(self, key: bytes, value: bytes, lease_id: int) -> None:
        self._client.put(key, value, lease=lease_id)

    @_limited
    @mapped
    def get(self, key: bytes) -> tuple[bytes, int] | None:
        """(value, lease id) of `key`, or None when it does not exist."""
        value, meta = self._client.get(key)
        return None if meta is None else (bytes(value), int(meta.lease_id))

    @_limited
    @mapped
    def delete_if_lease(self, key: bytes, lease_id: int) -> bool:
        """Delete `key` only while it is held by `lease_id`: never someone else's key."""
        ok, _ = self._client.transaction(
            compare=[_LeaseIs(key) == lease_id],
            success=[self._client.transactions.delete(key)],
            failure=[],
        )
        return bool(ok)

    @_limited
    @mapped
    def range_page(self, start: bytes, end: bytes, limit: int, revision: int | None) -> Page:
        kwargs: dict[str, Any] = {"limit": limit}
        if revision is not None:
            kwargs["revision"] = revision
        resp = self._client.get_range_response(start, end, **kwargs)
        return Page([(bytes(kv.key), bytes(kv.value)) for kv in resp.kvs], bool(resp.more),
                    int(resp.header.revision), [int(kv.lease) for kv in resp.kvs])

    @mapped
    def watch_prefix(self, prefix: bytes, start_revision: int,
                     sink: Callable[[WatchEvents | EtcdFailure], None]) -> int:
        """Watch `prefix` from `start_revision`; `sink` gets each response, or one failure after
        which the watch is over. Returns the watch id."""

        def callback(item: Any) -> None:
            if isinstance(item, BaseException) or item is None:
                sink(failure(item) if item is not None else Unavailable("watch stream ended"))
                return
            events = [
                (isinstance(ev, pyetcd_events.PutEvent), bytes(ev.key), bytes(ev.value))
                for ev in item.events
            ]
            sink(WatchEvents(events, int(item.header.revision)))

        return int(self._client.add_watch_prefix_callback(prefix, callback,
                                                          start_revision=start_revision))

    @mapped
    def cancel_watch(self, watch_id: int) -> None:
        self._client.cancel_watch(watch_id)

    def close(self) -> None:
        """Close the channels (ends any watch: its sink gets one last failure)."""
        if self._keepalive is not None:
            self._keepalive.close()
            self._keepalive = None
        self._client.close()


class Connection:
    """The session that every registry given this connection uses (public as
    `grpcrpc.discovery.etcd.EtcdConnection`): one channel to the cluster and one keepalive stream
    for all their leases, as etcd's clientv3 shares one client. At most `max_in_flight` of their
    requests (grants, puts, reads) are in flight at once; the others wait their turn, within
    their timeout. Made on first use; after an authentication failure the next user makes a
    fresh one (a new token)."""

    def __init__(self, config: EtcdConfig, timeout: float | None = None,
                 max_in_flight: int = 4, renewal_tick: float = 0.5) -> None:
        self.config = config
        self.timeout = timeout or config.timeout
        self.max_in_flight = max_in_flight
        self.renewal_tick = renewal_tick
        self._phase = random.uniform(0, renewal_tick)
        self._lock = threading.Lock()
        self._session: Session | None = None
        self._closed = False

    def renewal_time(self, now: float, interval: float) -> float:
        """When a lease renewed at `now` is renewed next: `interval` later, moved back to this
        connection's last tick (`renewal_tick` s apart, a random phase per connection) so
        that the renewals of its leases travel together and wake its threads once."""
        t = now + interval
        if not self.renewal_tick or interval <= 2 * self.renewal_tick:
            return t
        return t - (t - self._phase) % self.renewal_tick

    def session(self) -> Session:
        with self._lock:
            if self._closed:
                raise Unavailable("the etcd connection is closed")
            if self._session is None:
                self._session = Session(self.config, self.timeout, self.max_in_flight)
            return self._session

    def discard(self, session: Session) -> None:
        """`session` failed authentication: close it; the next `session()` makes another."""
        with self._lock:
            if self._session is session:
                self._session = None
        session.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            session, self._session = self._session, None
        if session is not None:
            session.close()


class _Renewal:
    """One renewal waiting for its answer."""

    __slots__ = ("answered", "failure", "ttl")

    def __init__(self) -> None:
        self.answered = threading.Event()
        self.ttl = 0
        self.failure: EtcdFailure | None = None


class _KeepAliveStream:
    """A LeaseKeepAlive stream held open for every lease of a session: a request per renewal,
    and one reader thread that hands each answer (it names its lease) to the renewal waiting
    for it. A renewal that is not answered in time ends the stream if nothing else was answered
    meanwhile either, for `patience` seconds (a silent stream is dead, or as good as: the next
    renewal opens a new one after a unary check that fails over); when the stream ends, every
    waiting renewal fails."""

    def __init__(self, client: Any, patience: float) -> None:
        self.alive = True
        self._patience = patience
        self._lock = threading.Lock()
        self._waiting: dict[int, collections.deque[_Renewal]] = {}
        self._last_answer = time.monotonic()
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        try:
            self._call = client.leasestub.LeaseKeepAlive(
                iter(self._requests.get, None),
                credentials=client.call_credentials, metadata=client.metadata)
        except (grpc.RpcError, pyetcd_exc.Etcd3Exception, ValueError) as exc:
            raise failure(exc) from exc
        threading.Thread(target=self._read, name="grpcrpc-etcd-keepalive", daemon=True).start()

    def renew(self, lease_id: int, timeout: float) -> int:
        renewal = _Renewal()
        sent = time.monotonic()
        with self._lock:
            if not self.alive:
                raise Unavailable("keepalive stream ended")
            self._waiting.setdefault(lease_id, collections.deque()).append(renewal)
            self._requests.put(etcdrpc.LeaseKeepAliveRequest(ID=lease_id))
        if not renewal.answered.wait(timeout):
            with self._lock:
                waiting = self._waiting.get(lease_id)
                if waiting is not None and renewal in waiting:
                    waiting.remove(renewal)
                    if not waiting:
                        del self._waiting[lease_id]
                # Silent since before this request, and for a whole session timeout: a
                # starved process answers late, and ending the stream of every lease on it
                # would only add a storm of new streams to its troubles.
                silent = (self._last_answer < sent and
                          time.monotonic() - self._last_answer >= self._patience)
            if not renewal.answered.is_set():  # else answered as we gave up: it holds
                if silent:
                    self.close()
                raise Unavailable(f"no keepalive answer within {timeout:.1f}s")
        if renewal.failure is not None:
            raise renewal.failure
        return renewal.ttl

    def _read(self) -> None:
        ended: EtcdFailure = Unavailable("keepalive stream ended")
        try:
            for answer in self._call:
                with self._lock:
                    self._last_answer = time.monotonic()
                    waiting = self._waiting.get(int(answer.ID))
                    renewal = waiting.popleft() if waiting else None
                    if waiting is not None and not waiting:
                        del self._waiting[int(answer.ID)]
                if renewal is not None:
                    renewal.ttl = int(answer.TTL)
                    renewal.answered.set()
        except grpc.RpcError as exc:
            ended = (Unavailable("keepalive stream closed")
                     if exc.code() == grpc.StatusCode.CANCELLED else failure(exc))
        except Exception as exc:  # the reader must never die without failing its waiters
            ended = failure(exc)
        with self._lock:
            self.alive = False
            waiting_all, self._waiting = self._waiting, {}
        for waiting in waiting_all.values():
            for renewal in waiting:
                renewal.failure = ended
                renewal.answered.set()

    def close(self) -> None:
        self.alive = False
        self._requests.put(None)  # ends the request iterator grpc's thread is blocked on
        self._call.cancel()  # the reader sees CANCELLED and fails whoever still waits


class Backoff:
    """Capped exponential backoff with full jitter, so that thousands of clients that lost etcd
    at the same moment come back spread over the whole window, not as one wave.

    >>> b = Backoff(base=0.1, cap=1.0)
    >>> all(0 < b.next() <= 1.0 for _ in range(20))
    True
    """

    def __init__(self, base: float = 0.1, cap: float = 5.0, factor: float = 2.0) -> None:
        self.base = base
        self.cap = max(cap, base)
        self.factor = factor
        self.failures = 0

    def next(self) -> float:
        ceiling = min(self.cap, self.base * self.factor ** min(self.failures, 32))
        self.failures += 1
        return random.uniform(min(self.base, ceiling) / 2, ceiling)

    def reset(self) -> None:
        self.failures = 0

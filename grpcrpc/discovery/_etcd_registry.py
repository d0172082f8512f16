"""`EtcdRegistry`: a server's endpoints in etcd under one lease that is kept alive for ever.

The lease's life, in one thread: grant → put every key under it → renew at TTL/3. A renewal that
fails is retried with jittered backoff for as long as it takes; a lease etcd no longer has
(expired in an outage, revoked by an operator, etcd restarted from an empty data dir) is replaced
by a new one and every key is put again; after any failure the keys are read back before they
are trusted. A key is only ever written under the current lease, so a dead lease never holds one.

>>> from grpcrpc.discovery.etcd import EtcdConfig
>>> EtcdRegistry(EtcdConfig(), ttl=10).registered       # nothing announced, no lease yet
False
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from grpcrpc.discovery import _etcd_client as ec
from grpcrpc.discovery.base import Endpoint, Registry, split_address

if TYPE_CHECKING:
    from grpcrpc.discovery.etcd import EtcdConfig

__all__ = ["EtcdRegistry"]

log = logging.getLogger("grpcrpc.discovery.etcd")


class EtcdRegistry(Registry):
    """Announces a server's endpoints in etcd, under one lease kept alive for ever.

    One lease per registry (share one registry between the servers of a process), TTL `ttl`
    seconds, renewed every TTL/3 by a daemon thread on its connection's keepalive stream. A
    registry makes its own connection to etcd unless given one: registries that share an
    `EtcdConnection` share its channel and one keepalive stream for all their leases (a process
    that must hold many leases: a host's agents in one process, a simulated region). When a renewal
    fails, the thread retries with jittered, capped exponential backoff (`max_backoff`, default
    min(5 s, TTL/2)) and never gives up; when etcd says the lease is gone (expired during an
    outage, revoked by an operator, etcd restarted empty) it grants a new lease and puts every
    key again; after any failure it also reads the keys back and re-puts the ones missing or
    held by another lease. Keys are only ever written under the current lease.

    `announce()` returns once the key is stored, or after `config.timeout` if etcd does not
    answer (the thread keeps trying). `registered` is True only while every announced key that
    etcd has held is stored under a live lease (renewed within its TTL), and at least one has
    been: a key still waiting for its first write is not an outage, so announcing one more
    server on a shared registry does not make its siblings look unregistered meanwhile.

    `add_listener(callback)` calls `callback(registered: bool)` at once with the current state,
    then from the registry's thread on every change (quick, must not block: an asyncio server
    hands it to its loop with `loop.call_soon_threadsafe`); it returns a remover. `close()`
    revokes the lease, which deletes all its keys at once.

    >>> registry = EtcdRegistry(EtcdConfig(["127.0.0.1:2379"]), ttl=10)     # doctest: +SKIP
    >>> remove = registry.add_listener(lambda ok: print("registered:", ok))  # doctest: +SKIP
    registered: False
    >>> RPCServer(Target(topic="compute"), [Manager()], registry=registry)   # doctest: +SKIP
    """

    def __init__(self, config: EtcdConfig, ttl: float = 10.0, *,
                 max_backoff: float | None = None,
                 connection: ec.Connection | None = None) -> None:
        if ttl < 1:
            raise ValueError("ttl must be at least 1 second")
        if connection is not None and connection.config != config:
            raise ValueError("the connection is to another etcd config than the registry's")
        self.config = config
        self.ttl = round(ttl)  # etcd counts whole seconds
        self._op_timeout = min(config.timeout, max(1.0, ttl / 3))
        self._owns_connection = connection is None
        self._connection = connection or ec.Connection(config, self._op_timeout, renewal_tick=0)
        self._max_backoff = max_backoff or min(5.0, max(0.5, ttl / 2))
        self._cond = threading.Condition()
        self._desired: dict[bytes, bytes] = {}  # what should be in etcd: key -> value
        self._stored: dict[bytes, bytes] = {}  # what is, under the current lease
        self._confirmed: set[bytes] = set()  # desired keys etcd has held at least once
        self._lease: int | None = None
        self._granted = self.ttl
        self._deadline = 0.0  # monotonic time by which the lease expires unless renewed
        self._next_renewal = 0.0
        self._verify = False  # read keys back before trusting them again
        self._kick = False
        self._closed = False
        self._notified = False  # the state listeners were last told
        self._telling = threading.RLock()  # listeners hear changes one at a time, in order
        self._listeners: list[Callable[[bool], None]] = []
        self._session: ec.Session | None = None
        self._thread: threading.Thread | None = None

    # -- public API ---------------------------------------------------------------------

    def announce(self, endpoint: Endpoint) -> None:
        key, value = self.config.key(endpoint).encode(), endpoint.to_json()
        with self._cond:
            if self._closed:
                raise RuntimeError("registry is closed")
            self._desired[key] = value
            self._wake()
            if not self._cond.wait_for(lambda: self._stored.get(key) == value or self._closed,
                                       self.config.timeout):
                log.warning("etcd has not confirmed %s yet; registering in the background",
                            key.decode())

    def withdraw(self, endpoint: Endpoint) -> None:
        key = self.config.key(endpoint).encode()
        with self._cond:
            self._confirmed.discard(key)
            if self._desired.pop(key, None) is None or self._closed:
                return
            self._wake()
            self._cond.wait_for(lambda: key not in self._stored or self._closed,
                                self.config.timeout)

    @property
    def registered(self) -> bool:
        with self._cond:
            return self._is_registered()

    def reached_at(self) -> tuple[str, ...]:
        """etcd's hosts (servers announce an address on the network that reaches them)."""
        return tuple(split_address(e)[0] for e in self.config.endpoints)

    @property
    def lease_id(self) -> int | None:
        """The current lease (`etcdctl lease revoke {lease_id:x}` is what operators type)."""
        return self._lease

    def add_listener(self, callback: Callable[[bool], None]) -> Callable[[], None]:
        """Call `callback(registered)` now and on every change; returns a remover."""
        with self._telling:  # so the first call cannot overtake a change being told
            with self._cond:
                self._listeners.append(callback)
            self._call(callback, self._notified)

        def remove() -> None:
            with self._cond:
                if callback in self._listeners:
                    self._listeners.remove(callback)

        return remove

    def wait_registered(self, timeout: float) -> bool:
        """Block until `registered` is True (or `timeout`); returns it."""
        with self._cond:
            return self._cond.wait_for(self._is_registered, timeout)

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(self._op_timeout * 3)
        lease = self._lease
        if lease is not None:
            try:
                self._connection.session().revoke(lease)
                log.info("revoked etcd lease %x", lease)
            except ec.LeaseNotFound:
                pass  # expired already: its keys are gone
            except ec.EtcdFailure as exc:
                log.warning("could not revoke etcd lease %x (%s): its keys expire within %ds",
                            lease, exc, self._granted)
        if self._owns_connection:
            self._connection.close()
        with self._cond:
            self._lease, self._session = None, None
            self._stored.clear()
            self._confirmed.clear()
        self._publish_state()

    def __enter__(self) -> EtcdRegistry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the keepalive thread -----------------------------------------------------------

    def _wake(self) -> None:
        # Called with the lock held.
        self._kick = True
        self._cond.notify_all()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="grpcrpc-etcd-registry",
                                            daemon=True)
            self._thread.start()

    def _is_registered(self) -> bool:
        if self._closed or self._lease is None or time.monotonic() >= self._deadline:
            return False
        # Keys never written yet are left out (a new announcement is not an outage), unless
        # nothing has been written at all. A key whose value is being replaced still counts
        # as held by the old value.
        stored, confirmed = self._stored, self._confirmed
        if self._desired and not any(k in stored or k in confirmed for k in self._desired):
            return False
        return all(k in stored for k in self._desired if k in confirmed)

    def _run(self) -> None:
        backoff = ec.Backoff(base=0.1, cap=self._max_backoff)
        failing_since: float | None = None
        last_failure: type[Exception] | None = None
        while True:
            with self._cond:
                if self._closed:
                    return
                self._kick = False
            self._publish_state()  # a lease that ran out while we waited is news now
            try:
                self._cycle()
            except Exception as exc:
                # Never a thread that dies quietly: anything unexpected is logged and retried.
                delay = backoff.next()
                if not isinstance(exc, ec.EtcdFailure):
                    log.exception("etcd registry: unexpected error; retrying")
                elif isinstance(exc, ec.LeaseNotFound):
                    log.warning("etcd registry: %s; granting a new lease for %d key(s)", exc,
                                len(self._desired))
                elif failing_since is None or type(exc) is not last_failure:
                    log.warning("etcd registry: %s; retrying", exc)  # once per kind of trouble
                else:
                    log.debug("etcd registry still failing: %s", exc)
                last_failure = type(exc)
                if failing_since is None:
                    failing_since = time.monotonic()
                if isinstance(exc, ec.AuthFailed) and self._session is not None:
                    self._connection.discard(self._session)  # the next one authenticates afresh
                    self._session = None
                delay = self._before_the_lease_ends(delay)
            else:
                if failing_since is not None:
                    log.info("etcd registry recovered after %.1fs: %d key(s) under lease %x",
                             time.monotonic() - failing_since, len(self._stored),
                             self._lease or 0)
                    failing_since = None
                backoff.reset()
                delay = self._next_renewal - time.monotonic()
            self._publish_state()
            with self._cond:
                if self._closed:
                    return
                if self._is_registered():
                    # Wake at the lease's deadline too, to report it lost if renewals fail.
                    delay = min(delay, self._deadline - time.monotonic())
                if self._desired != self._stored and failing_since is None:
                    delay = 0.0
                if not self._kick and delay > 0:
                    self._cond.wait(delay)

    def _cycle(self) -> None:
        """One round: renew (or grant) the lease, then make etcd hold exactly `_desired`."""
        session = self._session = self._connection.session()
        now = time.monotonic()
        try:
            if self._lease is None:
                lease, granted = session.grant(self.ttl)
                with self._cond:
                    self._lease, self._granted, self._stored = lease, granted, {}
                    self._deadline = now + granted
                    self._next_renewal = self._connection.renewal_time(now, granted / 3)
                    self._verify = False  # a new lease holds nothing yet
                log.info("granted etcd lease %x (ttl %ds)", lease, granted)
            elif now >= self._next_renewal or self._verify:
                # Never wait for an answer past the lease's end: its loss must be told then.
                left = self._deadline - now
                if left <= 0 and session.time_to_live(self._lease) <= 0:
                    # Never renew an expired lease on the shared stream: etcd holds a stream's
                    # renewal of an expired lease until it has revoked it (at most ~1,000
                    # leases/s), and every other lease's renewal waits behind it.
                    raise ec.LeaseNotFound(f"lease {self._lease:x} expired")
                wait = min(self._op_timeout, max(0.05, left)) if left > 0 else None
                ttl = session.keepalive(self._lease, wait)
                if ttl <= 0:
                    raise ec.LeaseNotFound(f"lease {self._lease:x} expired or was revoked")
                with self._cond:
                    self._deadline = now + ttl
                    self._next_renewal = self._connection.renewal_time(now, self._granted / 3)
            lease = self._lease
            assert lease is not None
            if self._verify:
                self._read_back(session, lease)
            self._sync(session, lease)
        except ec.LeaseNotFound:
            with self._cond:
                self._lease, self._stored, self._deadline = None, {}, 0.0
            raise
        except ec.EtcdFailure:
            self._verify = True
            raise

    def _before_the_lease_ends(self, delay: float) -> float:
        """The retry delay, shortened while the lease still lives: a quarter of what is left of
        it at most, so that a renewal still has tries left before the end. A full backoff
        draw (up to `max_backoff`, 5 s) could otherwise sleep through the last seconds of a
        10 s lease while a new etcd leader was elected (its keys live on: etcd extends every
        lease at an election, but this registry would have told its server it was gone).
        Past the end, the plain backoff spreads the storm of a cluster coming back."""
        with self._cond:
            left = self._deadline - time.monotonic() if self._lease is not None else 0.0
        return min(delay, max(0.1, left / 4)) if left > 0 else delay

    def _read_back(self, session: ec.Session, lease: int) -> None:
        # After a failure the keys may be gone (etcd restored from an old snapshot, wiped) or
        # held by another lease: trust only what etcd shows under ours.
        for key in list(self._stored):
            held = session.get(key)
            if held is None or held[1] != lease or held[0] != self._stored.get(key):
                with self._cond:
                    self._stored.pop(key, None)
                log.warning("%s was missing from etcd after recovery: putting it again",
                            key.decode())
        self._verify = False

    def _sync(self, session: ec.Session, lease: int) -> None:
        with self._cond:
            desired = dict(self._desired)
            stale = [k for k in self._stored if k not in desired]
        for key, value in desired.items():
            if self._stored.get(key) != value:
                session.put(key, value, lease)
                with self._cond:
                    self._stored[key] = value
                    self._cond.notify_all()
            with self._cond:
                if key in self._desired:  # not withdrawn meanwhile
                    self._confirmed.add(key)
        for key in stale:
            session.delete_if_lease(key, lease)
            with self._cond:
                self._stored.pop(key, None)
                self._cond.notify_all()

    def _publish_state(self) -> None:
        with self._telling:
            with self._cond:
                state = self._is_registered()
                if state == self._notified:
                    return
                self._notified = state
                listeners = list(self._listeners)
                self._cond.notify_all()
            # Going down is news unless we chose it (close()).
            level = logging.INFO if state or self._closed else logging.WARNING
            log.log(level, "etcd registration is %s", "up" if state else "down")
            for callback in listeners:
                self._call(callback, state)

    @staticmethod
    def _call(callback: Callable[[bool], None], state: bool) -> None:
        try:
            callback(state)
        except Exception:
            log.exception("registry listener %r failed", callback)


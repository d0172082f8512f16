"""Choosing one endpoint among the candidates: pure logic, shared by the sync and async clients.

The default is the power of two choices on outstanding requests: compare two candidates and
take the one with fewer requests in flight from this client. It sends less to a slow server
without any coordination between clients. One of the two is the topic's next in turn and the
other is drawn at random, and a tie goes to the one in turn: equally loaded servers take turns
(what RabbitMQ's consumers of one queue do, and what oslo.messaging's own tests expect), while a
busier one is passed over. An endpoint whose connection failed is *ejected*: left out of picking
until its backoff passes, long before etcd notices its lease expired.

>>> eps = [Endpoint("127.0.0.1:1", "t", "a"), Endpoint("127.0.0.1:2", "t", "b")]
>>> b = Balancer("p2c")
>>> [b.pick(eps).server for _ in range(4)]     # nothing in flight: they take turns
['a', 'b', 'a', 'b']
>>> b.begin("127.0.0.1:1")                      # one call in flight on a ...
>>> [b.pick(eps).server for _ in range(2)]     # ... so b, the less busy, gets the next ones
['b', 'b']
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Literal

from grpcrpc.discovery.base import Endpoint

__all__ = ["Balancer", "Ejections", "Policy"]

Policy = Literal["p2c", "random", "round_robin"]


class Ejections:
    """Addresses left out of picking after a connection failure, each until its backoff passes.

    Backoff doubles with every consecutive failure (base → cap) and is reset by a success.
    """

    def __init__(
        self, base: float = 0.5, cap: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._base = base
        self._cap = cap
        self._clock = clock
        self._until: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._lock = threading.Lock()

    def eject(self, address: str) -> float:
        """Record a connection failure; returns how long the address stays out."""
        with self._lock:
            n = self._failures.get(address, 0) + 1
            self._failures[address] = n
            delay = min(self._cap, self._base * float(2 ** (n - 1)))
            delay *= random.uniform(0.8, 1.2)  # jitter: clients do not return in step
            self._until[address] = self._clock() + delay
            return delay

    def restore(self, address: str) -> None:
        """A success: the address is in good standing again."""
        if address in self._until or address in self._failures:
            with self._lock:
                self._until.pop(address, None)
                self._failures.pop(address, None)

    def is_ejected(self, address: str) -> bool:
        until = self._until.get(address)
        return until is not None and self._clock() < until

    def forget(self, keep: set[str]) -> None:
        """Drop state for addresses no longer in the routing table."""
        with self._lock:
            for addr in [a for a in self._until if a not in keep]:
                self._until.pop(addr, None)
                self._failures.pop(addr, None)


class Balancer:
    """Picks an endpoint; tracks outstanding requests per address for p2c."""

    def __init__(self, policy: Policy = "p2c", ejections: Ejections | None = None) -> None:
        if policy not in ("p2c", "random", "round_robin"):
            raise ValueError(f"unknown balancing policy {policy!r}")
        self.policy = policy
        self.ejections = ejections or Ejections()
        self._outstanding: dict[str, int] = {}
        # Whose turn it is, per topic: one shared counter would let two topics picked in
        # alternation send every message of each to the same server.
        self._turns: dict[tuple[str, str, str], itertools.count[int]] = {}

    def pick(self, candidates: Sequence[Endpoint], exclude: frozenset[str] = frozenset()) -> Endpoint:
        """One of `candidates`, skipping ejected addresses (unless all are) and `exclude`."""
        if not candidates:
            raise ValueError("no candidates")
        if len(candidates) == 1 and not exclude:
            return candidates[0]  # ejected or not, it is the only one to try
        eligible = [
            e for e in candidates
            if e.address not in exclude and not self.ejections.is_ejected(e.address)
        ]
        if not eligible:
            # Everything is ejected: trying one beats failing without trying.
            eligible = [e for e in candidates if e.address not in exclude] or list(candidates)
        n = len(eligible)
        if n == 1:
            return eligible[0]
        if self.policy == "random":
            return random.choice(eligible)
        turn = self._turn(eligible[0]) % n
        if self.policy == "round_robin":
            return eligible[turn]
        other = random.randrange(n - 1)
        if other >= turn:
            other += 1
        a, b = eligible[turn], eligible[other]
        load = self._outstanding
        return b if load.get(b.address, 0) < load.get(a.address, 0) else a

    def _turn(self, first: Endpoint) -> int:
        key = (first.az, first.exchange, first.topic)
        turns = self._turns.get(key)
        if turns is None:
            # setdefault: two threads starting a topic at once share one counter.
            turns = self._turns.setdefault(key, itertools.count())
        return next(turns)

    def begin(self, address: str) -> None:
        """A request to `address` started (the GIL makes this increment atomic enough: a lost
        update skews one comparison, never correctness)."""
        self._outstanding[address] = self._outstanding.get(address, 0) + 1

    def end(self, address: str) -> None:
        n = self._outstanding.get(address, 0) - 1
        if n <= 0:
            self._outstanding.pop(address, None)
        else:
            self._outstanding[address] = n

    def outstanding(self, address: str) -> int:
        return self._outstanding.get(address, 0)


"""The message an endpoint is serving, and how long its caller still waits: one budget per chain.

While a server runs an endpoint for an envelope, that envelope (its id, method, cast flag and
deadline) is ambient: a context variable set by the server around the endpoint, and copied into
the thread pool with a plain-function endpoint. Every call or cast a client makes while it is set
waits at most what remains of that deadline (`effective_timeout`) and carries the rest on in its
own envelope, so a chain of services shares the first caller's budget and gives up with it — as
gRPC's deadline propagation does between Go services. A thread cannot be cancelled; the deadline
is what stops the work it would start.

A cast's endpoint has no deadline: its sender only waited for the server to accept it.

>>> remaining_time() is None        # not serving a message here
True
>>> effective_timeout(60.0, 2.5)    # a nested call waits at most what its caller has left
2.5
"""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass

from grpcrpc.exceptions import MessagingTimeout

__all__ = [
    "Incoming",
    "current_message",
    "effective_timeout",
    "remaining_time",
    "reset_current_message",
    "set_current_message",
]


@dataclass(frozen=True, slots=True)
class Incoming:
    """The envelope being served: what `current_message()` returns inside an endpoint.

    `deadline` is on the `time.monotonic()` clock of this process (None: the caller waits for
    ever, or the message is a cast).

    >>> Incoming("4f2a-1", "select_destinations", cast=False, deadline=None).remaining()
    """

    id: str
    method: str
    cast: bool
    deadline: float | None

    @classmethod
    def received(cls, msg_id: str, method: str, *, cast: bool, timeout_ms: int,
                 now: float | None = None) -> Incoming:
        """An envelope that arrived `now` with `timeout_ms` left to its caller (0: no deadline).
        A cast gets no deadline: nobody waits for what its endpoint does."""
        if cast or not timeout_ms:
            return cls(msg_id, method, cast, None)
        start = time.monotonic() if now is None else now
        return cls(msg_id, method, cast, start + timeout_ms / 1000)

    def remaining(self, now: float | None = None) -> float | None:
        """Seconds until the deadline (negative once it has passed); None without a deadline."""
        if self.deadline is None:
            return None
        return self.deadline - (time.monotonic() if now is None else now)


_CURRENT: contextvars.ContextVar[Incoming | None] = contextvars.ContextVar(
    "grpcrpc_current_message", default=None)


def current_message() -> Incoming | None:
    """The message the calling endpoint is serving (None outside an endpoint).

    Its `id` is the envelope id that the caller's and the server's trace spans show.

    >>> class Scheduler:
    ...     def select_destinations(self, ctxt, spec):
    ...         log.info("serving %s", current_message().id)   # doctest: +SKIP
    """
    return _CURRENT.get()


def remaining_time() -> float | None:
    """Seconds the caller of the message being served still waits; None when there is no
    deadline (outside an endpoint, in a cast's endpoint, or a caller without a timeout).

    Negative once the caller has given up: long work can stop early, and every call or cast
    made from the endpoint fails at once with `MessagingTimeout` without being sent.

    >>> import grpcrpc
    >>> class Compute:
    ...     def resize(self, ctxt, instance):
    ...         for step in plan(instance):                                 # doctest: +SKIP
    ...             left = grpcrpc.remaining_time()
    ...             if left is not None and left <= 0:
    ...                 raise grpcrpc.MessagingTimeout("the caller gave up")
    ...             step()
    >>> grpcrpc.remaining_time() is None
    True
    """
    incoming = _CURRENT.get()
    return None if incoming is None else incoming.remaining()


def effective_timeout(own: float | None, remaining: float | None, what: str = "message"
                      ) -> float | None:
    """How long a call or cast may wait: the smaller of its `own` timeout and what `remaining`
    of the deadline it inherits (either None: no bound from that side).

    Raises `MessagingTimeout` when nothing remains: the message must not be sent at all.

    >>> effective_timeout(None, 3.0), effective_timeout(5.0, None), effective_timeout(None, None)
    (3.0, 5.0, None)
    >>> effective_timeout(5.0, -0.1)
    Traceback (most recent call last):
    ...
    grpcrpc.exceptions.MessagingTimeout: message: the deadline it inherits has passed; not sent
    """
    if remaining is None:
        return own
    if remaining <= 0:
        raise MessagingTimeout(f"{what}: the deadline it inherits has passed; not sent")
    return remaining if own is None else min(own, remaining)


def set_current_message(incoming: Incoming | None) -> contextvars.Token[Incoming | None]:
    """Make `incoming` the ambient message of the calling context; undo with
    `reset_current_message(token)` in the same context.

    grpcrpc's server does this around every endpoint. Code that runs endpoints on threads of its
    own (the oslo.messaging driver: oslo's executor) does it in the thread that runs one.

    >>> token = set_current_message(Incoming("id-1", "ping", cast=False, deadline=None))
    >>> current_message().id
    'id-1'
    >>> reset_current_message(token)
    >>> current_message() is None
    True
    """
    return _CURRENT.set(incoming)


def reset_current_message(token: contextvars.Token[Incoming | None]) -> None:
    """Undo `set_current_message` (see there)."""
    _CURRENT.reset(token)

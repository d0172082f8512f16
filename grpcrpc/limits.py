"""`Limits`: the bounds on what callers can make a server hold — threads, queues, slots per
connection, envelope and header sizes, unsent reply bytes, connections. One place, so that the
servicer, the host and the configuration read the same numbers (docs/security.md says what each
one stops).
"""

from __future__ import annotations

from dataclasses import dataclass

from grpcrpc import envelope as ev
from grpcrpc.admission import Admission

__all__ = ["Limits"]


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what callers can make a server hold.

    >>> Limits(threads=4, queue=16).sync_capacity
    20
    """

    threads: int = 16  # plain-function endpoints running at once
    queue: int = 256  # plain-function calls waiting for a thread
    coroutines: int = 1024  # coroutine endpoints running at once
    stream_in_flight: int = 1024  # calls in flight on one envelope stream
    # Envelopes one connection may have admitted at once (all its streams and unary calls):
    # one peer at its limit gets OVERLOADED, and the rest of the server stays for the others.
    per_connection: int = 256
    # HTTP/2 streams one connection may open at once (a blocking client's unary calls are one
    # stream each, so this bounds its threads' calls in flight per connection, and what one
    # connection can queue in gRPC core ahead of everyone else's calls).
    streams_per_connection: int = 100
    max_message_size: int = 4 * 1024 * 1024
    # What one envelope may carry, checked before anything acts on it (INVALID_ENVELOPE):
    # every string field (id, method, exchange, topic, server, namespace, version, az, header
    # names), one header value, and all headers together, in characters.
    max_name: int = ev.MAX_NAME
    max_header_value: int = ev.MAX_HEADER_VALUE
    max_header_bytes: int = ev.MAX_HEADER_BYTES
    # The most of the thread pool (threads + queue), and of the coroutine slots, that one
    # connection may hold while others hold some: the rest stays for them however greedy one
    # peer is (and the last eighth for connections holding little). Queued plain-function
    # calls are taken round-robin by connection.
    connection_share: float = 0.5
    # Envelopes in one `Batches` message: a batch over this is refused whole, unparsed.
    # (grpcrpc's clients write batches of at most 64 KiB, far fewer envelopes than this.)
    batch_envelopes: int = 4096
    # Reply bytes queued for one stream, and for all streams of one connection, that the peer
    # has not taken yet (HTTP/2 flow control): over either, the server stops reading that
    # stream until the peer reads, so a peer that never reads cannot make replies pile up.
    stream_unsent_bytes: int = 4 * 1024 * 1024
    connection_unsent_bytes: int = 16 * 1024 * 1024
    # Connections: how many at once (fewer if the file descriptor limit, raised to its hard
    # limit at start, leaves less room); seconds a new connection may take to speak HTTP/2;
    # seconds one may sit with no call before the server closes it (GOAWAY: a client
    # reconnects when it next needs to); optionally seconds one may live at all, then seconds
    # of grace for what is still in flight on it (None: no age limit, as streams are long-lived).
    max_connections: int = 10_000
    handshake_timeout: float = 10.0
    idle_timeout: float = 300.0
    max_connection_age: float | None = None
    max_connection_age_grace: float = 30.0

    def admission(self) -> Admission:
        """The per-connection accounting of these limits."""
        return Admission(per_connection=self.per_connection, sync_capacity=self.sync_capacity,
                         coroutines=self.coroutines, share=self.connection_share,
                         connection_unsent=self.connection_unsent_bytes)

    @property
    def sync_capacity(self) -> int:
        return self.threads + self.queue

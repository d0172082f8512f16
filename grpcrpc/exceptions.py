"""Every error grpcrpc raises, under one root.

```
GrpcrpcError
 ├── MessagingTimeout          the deadline passed with no answer
 ├── RemoteError               the endpoint raised (type, message and traceback of the remote side)
 ├── NoSuchMethod              no endpoint of the server has the method
 ├── UnsupportedVersion        no endpoint speaks the requested namespace/version
 ├── VersionCapError           the client's version cap forbids the version asked (not sent)
 ├── NoEndpoints               nothing is registered for the target (in the AZs allowed)
 ├── DiscoveryUnavailable      etcd could not be reached when discovery started
 ├── Unauthorized              the server refused the caller
 ├── InvalidEnvelope           a message that is not a valid envelope (either direction)
 ├── Overloaded                the server's queue is full; the message was not accepted
 ├── MessageTooLarge           a message over the size limit; it was not sent
 ├── SerializationError        arguments or a result that cannot be serialised
 ├── DeliveryError             the connection failed after the message may have left the client
 ├── ClientClosed              the client was closed
 └── ServerError               a server could not start (address in use, bad TLS files, ...)
      └── NoAdvertiseAddress    a wildcard bind and no address other hosts can dial: set advertise_host
```

gRPC and etcd errors are mapped to these at one boundary (`grpcrpc._errors`); a `grpc.RpcError`
never escapes the public API.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ClientClosed",
    "DeliveryError",
    "DiscoveryUnavailable",
    "GrpcrpcError",
    "InvalidEnvelope",
    "MessageTooLarge",
    "MessagingTimeout",
    "NoAdvertiseAddress",
    "NoEndpoints",
    "NoSuchMethod",
    "Overloaded",
    "RemoteError",
    "SerializationError",
    "ServerError",
    "Unauthorized",
    "UnsupportedVersion",
    "VersionCapError",
]


class GrpcrpcError(Exception):
    """Root of every grpcrpc error.

    >>> try:
    ...     raise NoEndpoints("compute")
    ... except GrpcrpcError as exc:
    ...     print(type(exc).__name__)
    NoEndpoints
    """


class MessagingTimeout(GrpcrpcError):
    """No answer within the call's timeout (oslo.messaging's name)."""


class RemoteError(GrpcrpcError):
    """The remote endpoint raised an exception that is not re-raised as its own type.

    >>> err = RemoteError("KeyError", "'host1'", ["Traceback ...", "KeyError: 'host1'"])
    >>> err.exc_type, err.value
    ('KeyError', "'host1'")
    """

    def __init__(
        self,
        exc_type: str | None = None,
        value: str | None = None,
        traceback: Sequence[str] | None = None,
    ) -> None:
        self.exc_type = exc_type
        self.value = value
        self.traceback = list(traceback or ())
        tb = "\n".join(self.traceback)
        message = f"Remote error: {exc_type} {value}"
        if tb:
            message += f"\n{tb}"
        super().__init__(message)


class NoSuchMethod(GrpcrpcError):
    """The server has no endpoint method by that name (in the namespace and version asked)."""

    def __init__(self, method: str) -> None:
        self.method = method
        super().__init__(f"Endpoint does not support RPC method {method}")


class UnsupportedVersion(GrpcrpcError):
    """No endpoint of the server implements the requested namespace and version."""

    def __init__(self, version: str, method: str | None = None) -> None:
        self.version = version
        self.method = method
        where = f" for method {method}" if method else ""
        super().__init__(f"Endpoint does not support RPC version {version}{where}")


class VersionCapError(GrpcrpcError):
    """The target's version is above the client's `version_cap`; nothing was sent (oslo's
    `RPCVersionCapError`)."""


class NoEndpoints(GrpcrpcError):
    """Nothing is registered for the target in the availability zones the client may use."""


class DiscoveryUnavailable(GrpcrpcError):
    """etcd could not be reached in time. Raised when discovery starts (`EtcdResolver.start()`,
    `connect()`) only: once running, discovery retries in the background and never raises."""


class Unauthorized(GrpcrpcError):
    """The server refused the caller (no detail is given that would help an attacker)."""


class InvalidEnvelope(GrpcrpcError):
    """A message that is not a valid grpcrpc envelope or reply."""


class Overloaded(GrpcrpcError):
    """The server's dispatch queue is full: the message was not accepted and will not run."""


class MessageTooLarge(GrpcrpcError):
    """A message exceeds the configured maximum size; it was not sent."""


class SerializationError(GrpcrpcError):
    """Arguments (at the caller) or a result (at the server) that cannot be serialised."""


class DeliveryError(GrpcrpcError):
    """The connection failed after the message may have reached the server.

    grpcrpc never resends such a message: it may have been delivered, and delivering it twice
    is worse than reporting the doubt to the caller.
    """


class ClientClosed(GrpcrpcError):
    """The client (or its transport) was closed."""


class ServerError(GrpcrpcError):
    """A server could not start or serve: address in use, no free port in range, bad TLS files."""


class NoAdvertiseAddress(ServerError):
    """A server bound to a wildcard address found no address of this host that the hosts of its
    registry can reach (only loopback, or etcd's name does not resolve): set `advertise_host`."""

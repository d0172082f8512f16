"""The one place where gRPC's errors become grpcrpc's (see `grpcrpc.exceptions`)."""

from __future__ import annotations

import grpc

from grpcrpc import exceptions as exc

__all__ = ["NOT_ACCEPTED", "map_rpc_error", "never_sent", "tls_refused"]

# A grpcrpc service that refuses a request before acting on it (a stopping broadcaster) says so
# with UNAVAILABLE and this marker in the details: the caller may send it elsewhere.
NOT_ACCEPTED = "grpcrpc: not accepted"

# gRPC core fails an RPC with UNAVAILABLE and one of these when it could not open a connection:
# the request was never written to any transport, so sending it elsewhere cannot deliver it twice.
# Any other UNAVAILABLE (reset, GOAWAY, socket closed) may come after the server got the message.
_CONNECT_FAILURES = (
    "failed to connect",
    "connections to all backends failing",
    "connection refused",
    "dns resolution failed",
    "name resolution failure",
    "empty address list",
)


def never_sent(error: grpc.RpcError) -> bool:
    """True when the failed RPC provably never left this client (connection could not open)."""
    code = error.code() if hasattr(error, "code") else None
    if code != grpc.StatusCode.UNAVAILABLE:
        return False
    details = (error.details() or "").lower() if hasattr(error, "details") else ""
    return NOT_ACCEPTED in details or any(marker in details for marker in _CONNECT_FAILURES)


def tls_refused(details: str) -> bool:
    """On a TLS channel, whether a failed connection was the TLS handshake refusing us.

    gRPC does not surface TLS alerts: a server that rejects our client certificate (untrusted,
    expired) just closes the connection during setup ("Socket closed"), and a server we do not
    trust shows as "Tls handshake failed". Either way nothing was sent.
    """
    d = details.lower()
    return "handshake" in d or "certificate" in d or "socket closed" in d


def map_rpc_error(error: grpc.RpcError, what: str) -> exc.GrpcrpcError:
    """A grpcrpc exception for a failed gRPC call; `what` names the call (method @ address)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else "") or ""
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return exc.MessagingTimeout(f"{what}: timed out")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        if "larger than max" in details:
            return exc.MessageTooLarge(f"{what}: {details}")
        return exc.Overloaded(f"{what}: {details}")
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return exc.Unauthorized(f"{what}: not authorized")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return exc.InvalidEnvelope(f"{what}: {details}")
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return exc.InvalidEnvelope(f"{what}: the peer is not a grpcrpc server ({details})")
    if never_sent(error):
        return exc.NoEndpoints(f"{what}: cannot connect ({details})")
    if "error code 7" in details:
        # HTTP/2 REFUSED_STREAM: over the server's concurrent-stream limit, and guaranteed not
        # processed — the server was too busy to take it, which is what Overloaded says.
        return exc.Overloaded(f"{what}: the server refused the stream (too many in flight on "
                              f"this connection)")
    return exc.DeliveryError(f"{what}: {code.name if code else 'UNKNOWN'}: {details}")

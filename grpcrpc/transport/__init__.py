"""Transports: connections, envelope streams, endpoint choice and safe retries.

`SyncTransport` serves `RPCClient`, `AsyncTransport` serves `AsyncRPCClient`; the routing
decisions both make live once in `grpcrpc.transport.base`.
"""

from grpcrpc.transport.aio import AsyncTransport
from grpcrpc.transport.base import TransportOptions
from grpcrpc.transport.sync import SyncTransport

__all__ = ["AsyncTransport", "SyncTransport", "TransportOptions"]

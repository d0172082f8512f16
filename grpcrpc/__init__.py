"""grpcrpc: brokerless RPC — call, cast and fanout over gRPC, discovered through etcd.

>>> from grpcrpc import RPCClient, RPCServer, Target
"""

import logging

from grpcrpc.client import UNSET, AsyncRPCClient, RPCClient
from grpcrpc.credentials import ClientTLS, ServerTLS
from grpcrpc.deadline import Incoming, current_message, remaining_time
from grpcrpc.discovery import Endpoint, MemoryDiscovery, StaticResolver
from grpcrpc.exceptions import (
    ClientClosed,
    DeliveryError,
    DiscoveryUnavailable,
    GrpcrpcError,
    InvalidEnvelope,
    MessageTooLarge,
    MessagingTimeout,
    NoAdvertiseAddress,
    NoEndpoints,
    NoSuchMethod,
    Overloaded,
    RemoteError,
    SerializationError,
    ServerError,
    Unauthorized,
    UnsupportedVersion,
    VersionCapError,
)
from grpcrpc.fanout import Failed, FanoutReport
from grpcrpc.limits import Limits
from grpcrpc.serializer import NoOpSerializer, Serializer
from grpcrpc.server import RPCServer, ServerThread
from grpcrpc.target import Target
from grpcrpc.transport import AsyncTransport, SyncTransport, TransportOptions

__version__ = "0.1.0"

# A library logs; the application decides whether anything is printed.
logging.getLogger("grpcrpc").addHandler(logging.NullHandler())

__all__ = [
    "UNSET",
    "AsyncRPCClient",
    "AsyncTransport",
    "ClientClosed",
    "ClientTLS",
    "DeliveryError",
    "DiscoveryUnavailable",
    "Endpoint",
    "Failed",
    "FanoutReport",
    "GrpcrpcError",
    "Incoming",
    "InvalidEnvelope",
    "Limits",
    "MemoryDiscovery",
    "MessageTooLarge",
    "MessagingTimeout",
    "NoAdvertiseAddress",
    "NoEndpoints",
    "NoOpSerializer",
    "NoSuchMethod",
    "Overloaded",
    "RPCClient",
    "RPCServer",
    "RemoteError",
    "SerializationError",
    "Serializer",
    "ServerError",
    "ServerTLS",
    "ServerThread",
    "StaticResolver",
    "SyncTransport",
    "Target",
    "TransportOptions",
    "Unauthorized",
    "UnsupportedVersion",
    "VersionCapError",
    "__version__",
    "current_message",
    "remaining_time",
]

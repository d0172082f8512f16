"""The oslo.messaging driver: `transport_url = grpc://etcd1:2379,etcd2:2379/?az=nova`.

The only place in grpcrpc that imports oslo.messaging (install the `oslo` extra). See
docs/oslo.md for moving a service, and `grpcrpc.oslo.options` for the `[oslo_messaging_grpc]`
options.

>>> from grpcrpc.oslo import GrpcDriver, list_opts
>>> GrpcDriver.__name__, list_opts()[0][0]
('GrpcDriver', 'oslo_messaging_grpc')
"""

from __future__ import annotations

from grpcrpc.oslo.driver import GrpcDriver, GrpcDriverError, NotificationsNotSupported
from grpcrpc.oslo.options import list_opts

__all__ = ["GrpcDriver", "GrpcDriverError", "NotificationsNotSupported", "list_opts"]

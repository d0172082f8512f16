"""An oslo.messaging RPC server on the grpc:// transport, in its own process.

Usage: python -m tests.oslo.server_main URL TOPIC SERVER [--eventlet]

Prints "READY <address>" once serving; stops gracefully (oslo's stop and wait, then the
transport's cleanup) when stdin is closed, then prints "STOPPED". With --eventlet the process
is monkey-patched first and serves with oslo's eventlet executor.
"""

from __future__ import annotations

import sys

if "--eventlet" in sys.argv:
    import eventlet

    eventlet.monkey_patch()

import oslo_messaging
from oslo_config import cfg

from tests.oslo.endpoints import Endpoint


class Forbidden(Exception):
    """Raised from a module no client allows: arrives as oslo's RemoteError."""


class Extra:
    def forbidden(self, ctxt: dict[str, object]) -> None:
        raise Forbidden("not for you")


def main() -> None:
    url, topic, name = sys.argv[1:4]
    executor = "eventlet" if "--eventlet" in sys.argv else "threading"
    transport = oslo_messaging.get_rpc_transport(cfg.CONF, url=url)
    server = oslo_messaging.get_rpc_server(
        transport, oslo_messaging.Target(topic=topic, server=name), [Endpoint(name), Extra()],
        executor=executor)
    server.start()
    listener = server.listener._poll_style_listener  # the driver's GrpcListener
    print("READY", listener.address, flush=True)
    if executor == "eventlet":
        # A plain read would block the hub, and with it every green thread of the server.
        from eventlet import tpool

        tpool.execute(sys.stdin.read)
    else:
        sys.stdin.read()  # until the test closes it
    server.stop()
    server.wait()
    transport.cleanup()
    print("STOPPED", flush=True)


if __name__ == "__main__":
    main()

"""TLS settings for servers and clients, read from PEM files once at start.

>>> ClientTLS(ca_file=None).verify
True
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

import grpc

from grpcrpc.exceptions import ServerError

__all__ = ["ClientTLS", "ServerTLS"]


def _read(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return pathlib.Path(path).read_bytes()
    except OSError as exc:
        raise ServerError(f"cannot read {what} {path}: {exc.strerror}") from None


@dataclass(frozen=True, slots=True)
class ServerTLS:
    """A server's certificate and key; with `client_ca_file`, clients must present a certificate
    signed by that CA (mTLS).

    >>> tls = ServerTLS(cert_file="server.pem", key_file="server.key", client_ca_file="ca.pem")
    """

    cert_file: str
    key_file: str
    client_ca_file: str | None = None

    def credentials(self) -> grpc.ServerCredentials:
        cert = _read(self.cert_file, "server certificate")
        key = _read(self.key_file, "server key")
        ca = _read(self.client_ca_file, "client CA")
        try:
            return grpc.ssl_server_credentials(
                [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
            )
        except (ValueError, TypeError, RuntimeError) as exc:
            raise ServerError(f"invalid server TLS material: {exc}") from None


@dataclass(frozen=True, slots=True)
class ClientTLS:
    """How a client verifies servers (`ca_file`; None: the system roots) and, for mTLS, the
    certificate it presents.

    >>> tls = ClientTLS(ca_file="ca.pem", cert_file="client.pem", key_file="client.key")
    """

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify: bool = True

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file, "CA"),
            private_key=_read(self.key_file, "client key"),
            certificate_chain=_read(self.cert_file, "client certificate"),
        )

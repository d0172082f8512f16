"""The `[oslo_messaging_grpc]` options, and what a `grpc://` transport URL means.

```
transport_url = grpc://[user:password@]etcd1:2379,etcd2:2379/[prefix][?option=value&...]
```

- hosts are the etcd endpoints (port 2379 when omitted), user and password etcd's credentials;
- the path is the key prefix in etcd (default `grpcrpc`, i.e. keys under `/grpcrpc/v1/...`);
- any option of the group can be given in the query and wins over the config file, as with the
  rabbit driver (`?az=nova&lease_ttl=10`); an unknown name fails the transport at creation.

>>> from oslo_config import cfg
>>> import oslo_messaging
>>> conf = cfg.ConfigOpts()
>>> url = oslo_messaging.TransportURL.parse(conf, "grpc://etcd1,etcd2:2380/cloud1?az=nova")
>>> settings = Settings.from_conf(register(conf, url), url)
>>> settings.etcd.endpoints, settings.etcd.prefix, settings.az
(('etcd1:2379', 'etcd2:2380'), '/cloud1', 'nova')
"""

from __future__ import annotations

import copy
import json
import pathlib
from dataclasses import dataclass
from typing import Any

from oslo_config import cfg
from oslo_messaging._drivers import common as rpc_common

from grpcrpc.auth import ACL, ServerAuth, Tokens
from grpcrpc.credentials import ClientTLS, ServerTLS
from grpcrpc.discovery.base import DEFAULT_AZ
from grpcrpc.discovery.etcd import EtcdConfig
from grpcrpc.host import hostport
from grpcrpc.transport.base import DEFAULT_MAX_MESSAGE, TransportOptions

__all__ = [
    "GROUP",
    "GRPC_OPTS",
    "Settings",
    "etcd_config",
    "list_opts",
    "parse_port_range",
    "register",
    "server_auth",
]

GROUP = "oslo_messaging_grpc"
DEFAULT_PREFIX = "/grpcrpc"
ETCD_PORT = 2379

_GROUP_HELP = (
    "Options of the grpc:// oslo.messaging driver: RPC over gRPC straight between services, "
    "discovered through etcd. The transport URL names the etcd cluster; these say how servers "
    "listen and announce themselves, and how clients route.")

GRPC_OPTS: list[cfg.Opt] = [
    cfg.StrOpt("bind_host", default="0.0.0.0", sample_default="0.0.0.0",
               help="Address an RPC server listens on."),
    cfg.StrOpt("port_range",
               help="Ports an RPC server may listen on, 'low:high' (for firewalled hosts). "
                    "Unset: an ephemeral port chosen by the kernel."),
    cfg.StrOpt("advertise_host",
               help="Address announced to clients, when it differs from bind_host (NAT, "
                    "a wildcard bind_host). Unset: bind_host, or for a wildcard the address "
                    "this host uses toward etcd (loopback only when etcd is on loopback; a "
                    "server that finds none refuses to start and says to set this)."),
    cfg.IntOpt("lease_ttl", default=30, min=1,
               help="Seconds an RPC server's etcd lease lives without renewal (renewed every "
                    "third of it). A crashed server disappears from routing after this at the "
                    "latest; clients notice broken connections much sooner."),
    cfg.StrOpt("az", default=DEFAULT_AZ,
               help="Availability zone of this process: servers announce themselves in it and "
                    "clients send to it first."),
    cfg.ListOpt("fallback_azs", default=[],
                help="AZs a client sends to, in order, when its own has no server for a topic "
                     "(they must be registered in the etcd cluster of the transport URL)."),
    cfg.BoolOpt("use_broadcaster", default=True,
                help="Hand fanout casts to a broadcaster of the AZ (grpcrpc broadcaster), which "
                     "delivers to every server and reports who got it."),
    cfg.BoolOpt("client_fanout_fallback", default=True,
                help="When no broadcaster is reachable, deliver a fanout from the client itself "
                     "(else the fanout fails)."),
    cfg.IntOpt("max_message_size", default=DEFAULT_MAX_MESSAGE, min=1024,
               help="Largest message (request or reply) in bytes, on both ends."),
    cfg.IntOpt("max_in_flight", default=1024, min=1,
               help="Messages an RPC server holds at once (queued for the executor or running). "
                    "Beyond it, new ones are refused and callers retry elsewhere."),
    cfg.FloatOpt("cast_timeout", default=30.0, min=0.1,
                 help="Seconds a cast may wait for a server to accept it, including waiting for "
                      "one to register (there is no broker queue to hold it meanwhile)."),
    cfg.FloatOpt("cast_accept_timeout", default=5.0, min=0.1,
                 help="Seconds a cast waits for the server it was sent to to accept it, within "
                      "cast_timeout: a frozen server then fails the cast (it may have arrived) "
                      "instead of blocking its caller."),
    cfg.FloatOpt("stop_grace", default=10.0, min=0,
                 help="Seconds a stopping RPC server lets messages it accepted finish."),
    cfg.FloatOpt("keepalive_interval", default=20.0, min=1,
                 help="Seconds between HTTP/2 pings on an idle connection: how fast a client "
                      "notices a dead server or a partition during a long call (this is what "
                      "stands in for call_monitor_timeout heartbeats)."),
    cfg.StrOpt("balancer", default="p2c", choices=["p2c", "round_robin", "random"],
               help="How a client picks one server of a topic."),
    cfg.BoolOpt("tls_enabled", default=False,
                help="Use TLS between clients and servers."),
    cfg.StrOpt("tls_cert_file", help="Certificate (PEM) this process serves with (and, with "
                                     "tls_require_client_cert, presents as a client)."),
    cfg.StrOpt("tls_key_file", help="Private key (PEM) of tls_cert_file."),
    cfg.StrOpt("tls_ca_file", help="CA (PEM) that signs the servers' (and clients') "
                                   "certificates. Unset: the system roots."),
    cfg.BoolOpt("tls_require_client_cert", default=False,
                help="Mutual TLS: servers require a client certificate signed by tls_ca_file, "
                     "and clients present tls_cert_file."),
    cfg.StrOpt("auth_token", secret=True,
               help="Bearer token this process presents when it sends (to servers that check "
                    "tokens)."),
    cfg.StrOpt("auth_tokens_file",
               help="Servers accept only callers presenting one of these bearer tokens: "
                    "'identity token' lines (or a JSON object token -> identity). With "
                    "tls_require_client_cert, a verified client certificate is accepted too. "
                    "Neither set: servers accept any caller that reaches their port."),
    cfg.StrOpt("auth_acl_file",
               help="JSON list of rules {identity, ops, topics, methods} saying which "
                    "identity may call, cast or fanout what; anything else is denied. Needs "
                    "auth_tokens_file or tls_require_client_cert."),
    cfg.StrOpt("etcd_ca_file", help="CA (PEM) to verify etcd; setting it turns TLS to etcd on."),
    cfg.StrOpt("etcd_cert_file", help="Client certificate (PEM) for etcd."),
    cfg.StrOpt("etcd_key_file", help="Private key (PEM) of etcd_cert_file."),
    cfg.FloatOpt("etcd_timeout", default=5.0, min=0.1,
                 help="Seconds each etcd request may take."),
    cfg.FloatOpt("etcd_keepalive_time", default=10.0, min=1.0,
                 help="Seconds between pings on a silent etcd connection; 300 or more "
                      "through etcd 3.4's grpc-proxy (it drops connections that ping more "
                      "often)."),
    cfg.StrOpt("rabbit_transport_url", secret=True,
               help="Bridge mode, for moving a running cloud off RabbitMQ one process at a "
                    "time: the rabbit:// URL this process used before. Its RPC servers then "
                    "also consume their RabbitMQ queues (through oslo.messaging's rabbit "
                    "driver), and it sends each message over gRPC when the target is "
                    "registered in etcd, else over RabbitMQ. Unset: gRPC only."),
    cfg.FloatOpt("bridge_restart_wait", default=30.0, min=0,
                 help="Bridge mode: seconds a message waits for a server that just left etcd "
                      "(probably restarting) to come back on gRPC, or to be heard consuming "
                      "its RabbitMQ queue, before it is published to RabbitMQ anyway."),
]


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """The options for `oslo-config-generator` (the `oslo.config.opts` entry point).

    >>> [group for group, _ in list_opts()]
    ['oslo_messaging_grpc']
    """
    return [(GROUP, copy.deepcopy(GRPC_OPTS))]


def register(conf: Any, url: Any) -> Any:
    """Register the group on `conf` and return a view in which the URL's query wins."""
    # A new OptGroup each time: oslo.config copies it shallowly, so a shared one would share
    # its options' overrides between ConfigOpts objects.
    group = cfg.OptGroup(GROUP, title="gRPC transport (grpcrpc)", help=_GROUP_HELP)
    conf.register_group(group)
    conf.register_opts(GRPC_OPTS, group=group)
    return rpc_common.ConfigOptsProxy(conf, url, GROUP)


def parse_port_range(value: str | None) -> tuple[int, int] | None:
    """'49152:49407' (or '49152-49407') -> (49152, 49407); None or '' -> None.

    >>> parse_port_range("9000-9010")
    (9000, 9010)
    """
    if not value:
        return None
    sep = ":" if ":" in value else "-"
    low, _, high = value.partition(sep)
    try:
        lo, hi = int(low), int(high or low)
    except ValueError:
        raise ValueError(f"port_range {value!r}: expected 'low:high'") from None
    if not 0 < lo <= hi < 65536:
        raise ValueError(f"port_range {value!r}: expected 0 < low <= high < 65536")
    return lo, hi


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the driver needs, read once from the config and the transport URL."""

    etcd: EtcdConfig
    az: str
    fallback_azs: tuple[str, ...]
    bind_host: str
    port_range: tuple[int, int] | None
    advertise_host: str | None
    lease_ttl: int
    max_in_flight: int
    max_message_size: int
    cast_timeout: float
    stop_grace: float
    transport: TransportOptions
    server_tls: ServerTLS | None
    server_auth: ServerAuth | None
    rabbit_url: str | None = None  # bridge mode (see grpcrpc.oslo._routing)
    restart_wait: float = 30.0

    @classmethod
    def from_conf(cls, conf: Any, url: Any, default_exchange: str | None = None) -> Settings:
        """`conf` as returned by `register` (so the URL's query overrides apply)."""
        g = conf[GROUP]
        az = g.az or DEFAULT_AZ
        fallback = tuple(a for a in (g.fallback_azs or ()) if a and a != az)
        client_tls = server_tls = None
        rabbit_url = (g.rabbit_transport_url or "").strip() or None
        if rabbit_url and rabbit_url.split(":", 1)[0].split("+")[0] not in ("rabbit", "kombu"):
            raise ValueError("rabbit_transport_url must be a rabbit:// URL")
        if g.tls_enabled:
            mutual = bool(g.tls_require_client_cert)
            client_tls = ClientTLS(ca_file=g.tls_ca_file,
                                   cert_file=g.tls_cert_file if mutual else None,
                                   key_file=g.tls_key_file if mutual else None)
            if g.tls_cert_file and g.tls_key_file:
                server_tls = ServerTLS(g.tls_cert_file, g.tls_key_file,
                                       g.tls_ca_file if mutual else None)
        options = TransportOptions(
            az=az,
            fallback_azs=fallback,
            exchange=default_exchange or "openstack",
            balancer=g.balancer,
            max_message_size=g.max_message_size,
            tls=client_tls,
            keepalive_ms=int(g.keepalive_interval * 1000),
            # In bridge mode a fanout goes over gRPC only to the servers that do not listen on
            # RabbitMQ; a broadcaster would reach every registered server.
            use_broadcaster=g.use_broadcaster and not rabbit_url,
            client_fanout_fallback=g.client_fanout_fallback,
            token=g.auth_token or None,
            cast_accept_timeout=g.cast_accept_timeout,
        )
        return cls(
            etcd=etcd_config(url, g),
            az=az,
            fallback_azs=fallback,
            bind_host=g.bind_host,
            port_range=parse_port_range(g.port_range),
            advertise_host=g.advertise_host or None,
            lease_ttl=g.lease_ttl,
            max_in_flight=g.max_in_flight,
            max_message_size=g.max_message_size,
            cast_timeout=g.cast_timeout,
            stop_grace=g.stop_grace,
            transport=options,
            server_tls=server_tls,
            server_auth=server_auth(g),
            rabbit_url=rabbit_url,
            restart_wait=g.bridge_restart_wait,
        )


def server_auth(group: Any) -> ServerAuth | None:
    """Who servers accept (tokens, client certificates) and what each may do (the ACL)."""
    tokens = Tokens.from_file(group.auth_tokens_file) if group.auth_tokens_file else None
    mtls = bool(group.tls_enabled and group.tls_require_client_cert)
    acl = None
    if group.auth_acl_file:
        rules = json.loads(pathlib.Path(group.auth_acl_file).read_text())
        if not isinstance(rules, list):
            raise ValueError(f"{group.auth_acl_file}: expected a JSON list of rules")
        acl = ACL.from_rules(rules)
    if tokens is None and not mtls:
        if acl is not None:
            raise ValueError("auth_acl_file needs auth_tokens_file or tls_require_client_cert")
        return None
    return ServerAuth(tokens=tokens, mtls=mtls, acl=acl)


def etcd_config(url: Any, group: Any) -> EtcdConfig:
    """The etcd cluster a transport URL names: hosts, credentials and key prefix."""
    endpoints, user, password = [], None, None
    for host in url.hosts:
        if not host.hostname:
            continue
        endpoints.append(hostport(host.hostname, host.port or ETCD_PORT))
        # oslo puts credentials on each host; the first one given is the cluster's.
        if user is None and host.username:
            user, password = host.username, host.password or ""
    if not endpoints:
        raise ValueError("a grpc:// transport URL needs at least one etcd host "
                         "(grpc://etcd1:2379,etcd2:2379/)")
    vhost = (url.virtual_host or "").strip("/")
    return EtcdConfig(
        endpoints=endpoints,
        prefix=f"/{vhost}" if vhost else DEFAULT_PREFIX,
        ca_file=group.etcd_ca_file,
        cert_file=group.etcd_cert_file,
        key_file=group.etcd_key_file,
        user=user,
        password=password,
        timeout=group.etcd_timeout,
        keepalive_time=group.etcd_keepalive_time,
    )

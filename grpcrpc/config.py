"""One configuration model for the library, the CLI and the broadcaster.

Values come from, in order of precedence: arguments given in code (or on the command line), a
TOML file, `GRPCRPC_*` environment variables, then the defaults below. Every value is validated
when the configuration is built, with an error naming the option and where it came from.
`docs/configuration.md` is generated from `OPTIONS` (a test keeps it from drifting).

>>> cfg = Config.load(overrides={"az": "az1"}, environ={"GRPCRPC_LEASE_TTL": "30"})
>>> cfg.az, cfg.lease_ttl, cfg.source("lease_ttl")
('az1', 30.0, 'environment variable GRPCRPC_LEASE_TTL')
"""

from __future__ import annotations

import os
import pathlib
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from grpcrpc.credentials import ClientTLS, ServerTLS
from grpcrpc.discovery.base import DEFAULT_AZ, DEFAULT_EXCHANGE, split_address

if TYPE_CHECKING:
    from grpcrpc.discovery.etcd import EtcdConfig
    from grpcrpc.transport.base import TransportOptions

__all__ = ["OPTIONS", "Config", "ConfigError", "Option", "render_markdown"]


class ConfigError(ValueError):
    """A configuration value that is missing, of the wrong type, or out of range."""


def _str_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError("expected a list of strings (or a comma-separated string)")


def _port_range(value: Any) -> tuple[int, int] | None:
    if value in (None, ""):
        return None
    if isinstance(value, str):
        lo, sep, hi = value.partition("-")
        if not sep:
            raise ValueError("expected LOW-HIGH, e.g. 41000-41999")
        value = [lo, hi]
    lo_i, hi_i = (int(v) for v in value)
    if not 0 < lo_i <= hi_i < 65536:
        raise ValueError("expected 1 <= LOW <= HIGH <= 65535")
    return (lo_i, hi_i)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _positive(kind: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def parse(value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("expected a number")
        v = kind(value)
        if v <= 0:
            raise ValueError("must be positive")
        return v
    return parse


def _optional_positive(value: Any) -> float | None:
    if value is None or value == "":
        return None
    return float(_positive(float)(value))


def _fraction(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number")
    v = float(value)
    if not 0 < v <= 1:
        raise ValueError("expected a fraction, 0 < x <= 1")
    return v


def _optional_str(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value or "/" in value:
        raise ValueError("expected a non-empty name without '/'")
    return value


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return str(value)
    return parse


def _etcd_endpoints(value: Any) -> tuple[str, ...]:
    endpoints = _str_list(value)
    if not endpoints:
        raise ValueError("at least one etcd endpoint is needed")
    for ep in endpoints:
        split_address(ep.split("://", 1)[-1])
    return endpoints


@dataclass(frozen=True, slots=True)
class Option:
    name: str
    default: Any
    parse: Callable[[Any], Any]
    help: str
    section: str

    @property
    def env(self) -> str:
        return "GRPCRPC_" + self.name.upper()


OPTIONS: tuple[Option, ...] = (
    Option("etcd_endpoints", ("127.0.0.1:2379",), _etcd_endpoints,
           "etcd cluster of this AZ: host:port list (http:// or https:// accepted).", "discovery"),
    Option("etcd_prefix", "/grpcrpc", str,
           "Key prefix for everything grpcrpc writes in etcd.", "discovery"),
    Option("etcd_user", None, _optional_str, "etcd user (etcd authentication).", "discovery"),
    Option("etcd_password", None, _optional_str, "etcd password.", "discovery"),
    Option("etcd_ca_file", None, _optional_str, "CA bundle to verify etcd (turns TLS on).",
           "discovery"),
    Option("etcd_cert_file", None, _optional_str, "Client certificate for etcd (mTLS).",
           "discovery"),
    Option("etcd_key_file", None, _optional_str, "Client key for etcd (mTLS).", "discovery"),
    Option("etcd_keepalive_time", 10.0, _positive(float),
           "Seconds between pings on a silent etcd connection; 300 or more through etcd 3.4's "
           "grpc-proxy (it drops connections that ping more often).", "discovery"),
    Option("az", DEFAULT_AZ, _name, "This process's availability zone.", "discovery"),
    Option("fallback_azs", (), _str_list,
           "AZs a client may use, in order, when its own has no server of a topic.", "discovery"),
    Option("lease_ttl", 10.0, _positive(float),
           "Seconds a server's registration outlives its last keepalive.", "discovery"),
    Option("exchange", DEFAULT_EXCHANGE, _name, "Default exchange of targets.", "routing"),
    Option("balancer", "p2c", _choice("p2c", "random", "round_robin"),
           "How a client picks one server: p2c (fewest outstanding of two, turns when equal), "
           "random, round_robin.",
           "routing"),
    Option("timeout", 60.0, _positive(float), "Default call timeout in seconds.", "routing"),
    Option("cast_accept_timeout", 5.0, _positive(float),
           "Seconds a cast waits for the server it went to to accept it (within its timeout); "
           "past it the cast fails with MessagingTimeout instead of blocking its caller.",
           "routing"),
    Option("probe_after", 1.0, _positive(float),
           "Seconds a connection with messages in flight may stay silent before it is probed "
           "(a health check on the same connection).", "routing"),
    Option("probe_timeout", 2.0, _positive(float),
           "Seconds a probe may go unanswered before the server counts as frozen: what is in "
           "flight on it fails with DeliveryError and it is ejected.", "routing"),
    Option("use_broadcaster", True, _bool, "Send fanouts through a broadcaster of the AZ.",
           "fanout"),
    Option("client_fanout_fallback", True, _bool,
           "With no broadcaster reachable, the client fans out itself (else NoEndpoints).",
           "fanout"),
    Option("bind_host", "127.0.0.1", str, "Address servers bind to.", "server"),
    Option("port_range", None, _port_range,
           "LOW-HIGH: servers take a free port in this range (default: any free port).", "server"),
    Option("advertise_host", None, _optional_str,
           "Host clients dial, when it differs from bind_host. Unset with a wildcard bind_host: "
           "this host's address toward etcd (loopback only if etcd is on loopback).", "server"),
    Option("threads", 16, _positive(int), "Threads for plain-function endpoints, per server.",
           "server"),
    Option("queue", 256, _positive(int),
           "Calls that may wait for a thread before callers get Overloaded.", "server"),
    Option("max_message_size", 4 * 1024 * 1024, _positive(int),
           "Largest message in bytes, both directions.", "server"),
    Option("max_name", 255, _positive(int),
           "Longest string field of an envelope (id, method, exchange, topic, server, namespace, "
           "version, az, header name), in characters; longer is refused as InvalidEnvelope.",
           "server"),
    Option("max_header_value", 8192, _positive(int),
           "Longest envelope header value (W3C baggage's own maximum), in characters.", "server"),
    Option("max_header_bytes", 16384, _positive(int),
           "Most characters in all of an envelope's header names and values together.",
           "server"),
    Option("connection_share", 0.5, _fraction,
           "Most of the thread pool (threads + queue), and of coroutine slots, one connection may "
           "hold while others hold some; queued calls are taken round-robin by connection.",
           "limits"),
    Option("batch_envelopes", 4096, _positive(int),
           "Envelopes in one Batches message; a larger batch is refused whole, unparsed.",
           "limits"),
    Option("stream_unsent_bytes", 4 * 1024 * 1024, _positive(int),
           "Reply bytes queued for one stream that its peer has not read; over it, the server "
           "stops reading that stream until the peer reads.", "limits"),
    Option("connection_unsent_bytes", 16 * 1024 * 1024, _positive(int),
           "The same bound for all streams of one connection together.", "limits"),
    Option("max_connections", 10_000, _positive(int),
           "Connections a server holds at once (fewer if the file descriptor limit, raised to "
           "its hard limit at start, leaves less room: it keeps 256 for itself).", "limits"),
    Option("handshake_timeout", 10.0, _positive(float),
           "Seconds a new connection may take to speak HTTP/2 (and finish TLS) before it is "
           "closed.", "limits"),
    Option("idle_timeout", 300.0, _positive(float),
           "Seconds a connection may sit with no call before the server closes it (GOAWAY; "
           "clients reconnect when they next need to).", "limits"),
    Option("max_connection_age", None, _optional_positive,
           "Seconds a connection may live at all (default: no limit; streams are long-lived).",
           "limits"),
    Option("max_connection_age_grace", 30.0, _positive(float),
           "Seconds of grace after max_connection_age for calls still in flight.", "limits"),
    Option("tls_cert_file", None, _optional_str, "Server certificate (turns TLS on).", "tls"),
    Option("tls_key_file", None, _optional_str, "Server private key.", "tls"),
    Option("tls_client_ca_file", None, _optional_str,
           "CA that client certificates must chain to (turns mTLS on).", "tls"),
    Option("tls_ca_file", None, _optional_str,
           "CA that clients verify servers with (turns TLS on for clients).", "tls"),
    Option("tls_client_cert_file", None, _optional_str, "Client certificate (mTLS).", "tls"),
    Option("tls_client_key_file", None, _optional_str, "Client private key (mTLS).", "tls"),
)

_BY_NAME = {o.name: o for o in OPTIONS}


class Config:
    """Validated settings; attribute access by option name (`cfg.az`, `cfg.lease_ttl`).

    Build it with `Config.load(...)`, never by hand, so that every value is checked.
    """

    def __init__(self, values: Mapping[str, Any], sources: Mapping[str, str]) -> None:
        self._values = dict(values)
        self._sources = dict(sources)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def source(self, name: str) -> str:
        """Where the value of `name` came from (for `grpcrpc doctor` and error messages)."""
        return self._sources[name]

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        overrides: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Config:
        """Read `path` (TOML; `GRPCRPC_CONFIG` names one when `path` is None), the environment
        and `overrides` (None values in `overrides` mean "not given")."""
        env = os.environ if environ is None else environ
        file_values: dict[str, Any] = {}
        file_name = str(path) if path is not None else env.get("GRPCRPC_CONFIG")
        if file_name:
            file_values = _read_toml(file_name)
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        for key in given:
            if key not in _BY_NAME:
                raise ConfigError(f"unknown option {key!r}")
        for opt in OPTIONS:
            if opt.name in given:
                raw, where = given[opt.name], "argument"
            elif opt.name in file_values:
                raw, where = file_values[opt.name], f"{file_name}"
            elif opt.env in env:
                raw, where = env[opt.env], f"environment variable {opt.env}"
            else:
                values[opt.name], sources[opt.name] = opt.default, "default"
                continue
            try:
                values[opt.name] = opt.parse(raw)
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"{opt.name} (from {where}): {exc}") from None
            sources[opt.name] = where
        config = cls(values, sources)
        config._check()
        return config

    def _check(self) -> None:
        pairs = (("tls_cert_file", "tls_key_file"), ("tls_client_cert_file", "tls_client_key_file"),
                 ("etcd_cert_file", "etcd_key_file"), ("etcd_user", "etcd_password"))
        for a, b in pairs:
            if (self._values[a] is None) != (self._values[b] is None):
                raise ConfigError(f"{a} and {b} go together")
        if self._values["tls_client_ca_file"] and not self._values["tls_cert_file"]:
            raise ConfigError("tls_client_ca_file needs tls_cert_file and tls_key_file")

    # -- what the library takes -----------------------------------------------------------

    def etcd_config(self) -> EtcdConfig:
        from grpcrpc.discovery.etcd import EtcdConfig

        v = self._values
        return EtcdConfig(v["etcd_endpoints"], prefix=v["etcd_prefix"], ca_file=v["etcd_ca_file"],
                          cert_file=v["etcd_cert_file"], key_file=v["etcd_key_file"],
                          user=v["etcd_user"], password=v["etcd_password"],
                          keepalive_time=v["etcd_keepalive_time"])

    def transport_options(self) -> TransportOptions:
        from grpcrpc.transport.base import TransportOptions

        v = self._values
        tls = None
        if v["tls_ca_file"] or v["tls_client_cert_file"]:
            tls = ClientTLS(v["tls_ca_file"], v["tls_client_cert_file"], v["tls_client_key_file"])
        return TransportOptions(
            az=v["az"], fallback_azs=v["fallback_azs"], exchange=v["exchange"],
            balancer=v["balancer"], max_message_size=v["max_message_size"], tls=tls,
            use_broadcaster=v["use_broadcaster"], client_fanout_fallback=v["client_fanout_fallback"],
            cast_accept_timeout=v["cast_accept_timeout"], probe_after=v["probe_after"],
            probe_timeout=v["probe_timeout"],
        )

    def server_tls(self) -> ServerTLS | None:
        v = self._values
        if not v["tls_cert_file"]:
            return None
        return ServerTLS(v["tls_cert_file"], v["tls_key_file"], v["tls_client_ca_file"])

    def server_args(self) -> dict[str, Any]:
        """Keyword arguments for `RPCServer` (and, less `limits`, the broadcaster)."""
        from grpcrpc.limits import Limits

        v = self._values
        return {
            "host": v["bind_host"], "port_range": v["port_range"],
            "advertise_host": v["advertise_host"], "az": v["az"], "tls": self.server_tls(),
            "limits": Limits(
                threads=v["threads"], queue=v["queue"], max_message_size=v["max_message_size"],
                max_name=v["max_name"], max_header_value=v["max_header_value"],
                max_header_bytes=v["max_header_bytes"],
                connection_share=v["connection_share"], batch_envelopes=v["batch_envelopes"],
                stream_unsent_bytes=v["stream_unsent_bytes"],
                connection_unsent_bytes=v["connection_unsent_bytes"],
                max_connections=v["max_connections"],
                handshake_timeout=v["handshake_timeout"], idle_timeout=v["idle_timeout"],
                max_connection_age=v["max_connection_age"],
                max_connection_age_grace=v["max_connection_age_grace"]),
        }


def _read_toml(path: str) -> dict[str, Any]:
    try:
        data = tomllib.loads(pathlib.Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    # Options may sit at the top level or under a [grpcrpc] table.
    table = data.get("grpcrpc", data)
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [grpcrpc] must be a table")
    unknown = sorted(k for k in table if k not in _BY_NAME and k != "grpcrpc")
    if unknown:
        raise ConfigError(f"{path}: unknown option(s) {', '.join(unknown)}")
    return {k: v for k, v in table.items() if k in _BY_NAME}


def render_markdown() -> str:
    """docs/configuration.md, from the model."""
    lines = [
        "# Configuration",
        "",
        "<!-- Generated from grpcrpc/config.py by `python -m grpcrpc.config`; a test checks it. -->",
        "",
        "One model serves the library, the `grpcrpc` CLI and the broadcaster. Precedence, highest",
        "first: arguments in code or on the command line; a TOML file (`--config FILE` or",
        "`GRPCRPC_CONFIG`; options at the top level or under `[grpcrpc]`); `GRPCRPC_*` environment",
        "variables; the defaults below. Values are validated at start: a bad one stops the",
        "process with an error that names the option and where it came from.",
        "",
        "```toml",
        "[grpcrpc]",
        'etcd_endpoints = ["10.0.0.1:2379", "10.0.0.2:2379"]',
        'az = "az1"',
        'fallback_azs = ["az2"]',
        "lease_ttl = 30",
        'port_range = "41000-41999"',
        "```",
        "",
    ]
    section = ""
    for opt in OPTIONS:
        if opt.section != section:
            section = opt.section
            lines += [f"## {section}", "", "| option | environment | default | meaning |",
                      "|---|---|---|---|"]
        default = ", ".join(opt.default) if isinstance(opt.default, tuple) else opt.default
        shown = "—" if default in (None, "") else f"`{default}`"
        lines.append(f"| `{opt.name}` | `{opt.env}` | {shown} | {opt.help} |")
        nxt = OPTIONS.index(opt) + 1
        if nxt == len(OPTIONS) or OPTIONS[nxt].section != section:
            lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    pathlib.Path(__file__).resolve().parent.parent.joinpath(
        "docs", "configuration.md").write_text(render_markdown())

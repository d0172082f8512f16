"""The transport URL and `[oslo_messaging_grpc]` options, without sockets."""

from __future__ import annotations

import pathlib
import subprocess
import sys
from typing import Any

import oslo_messaging
import pytest
from oslo_config import cfg

from grpcrpc.oslo import list_opts, options
from tests.oslo.conftest import ENV


def settings(url: str, **overrides: Any) -> options.Settings:
    conf = cfg.ConfigOpts()
    conf([], project="test")
    parsed = oslo_messaging.TransportURL.parse(conf, url)
    proxied = options.register(conf, parsed)
    for name, value in overrides.items():
        conf.set_override(name, value, group=options.GROUP)
    return options.Settings.from_conf(proxied, parsed, "nova")


def test_url_maps_to_etcd_and_az() -> None:
    s = settings("grpc://alice:s3cret@etcd1:2379,etcd2,[fd00::3]:2381/cloud1?az=nova")
    assert s.etcd.endpoints == ("etcd1:2379", "etcd2:2379", "[fd00::3]:2381")
    assert (s.etcd.user, s.etcd.password) == ("alice", "s3cret")
    assert s.etcd.prefix == "/cloud1"
    assert s.az == "nova" and s.transport.az == "nova"
    assert s.transport.exchange == "nova"


def test_defaults() -> None:
    s = settings("grpc://127.0.0.1/")
    assert s.etcd.prefix == "/grpcrpc" and s.etcd.user is None
    assert s.az == "default" and s.fallback_azs == ()
    assert s.port_range is None and s.bind_host == "0.0.0.0"
    assert s.lease_ttl == 30 and s.transport.use_broadcaster and s.transport.client_fanout_fallback
    assert s.server_tls is None and s.transport.tls is None


def test_query_overrides_the_config_file() -> None:
    s = settings("grpc://etcd1/?fallback_azs=az2,az3&port_range=9000:9010&lease_ttl=10"
                 "&use_broadcaster=false&balancer=round_robin", az="az1", lease_ttl=60)
    assert s.az == "az1" and s.fallback_azs == ("az2", "az3")
    assert s.port_range == (9000, 9010)
    assert s.lease_ttl == 10
    assert not s.transport.use_broadcaster
    assert s.transport.balancer == "round_robin"


def test_unknown_query_option_fails_at_once() -> None:
    with pytest.raises(cfg.NoSuchOptError):
        settings("grpc://etcd1/?no_such_option=1")


def test_tls_settings() -> None:
    s = settings("grpc://etcd1/", tls_enabled=True, tls_cert_file="/c.pem",
                 tls_key_file="/k.pem", tls_ca_file="/ca.pem", tls_require_client_cert=True,
                 etcd_ca_file="/etcd-ca.pem")
    assert s.server_tls is not None and s.server_tls.client_ca_file == "/ca.pem"
    assert s.transport.tls is not None and s.transport.tls.cert_file == "/c.pem"
    assert s.etcd.tls and s.etcd.ca_file == "/etcd-ca.pem"


@pytest.mark.parametrize("value", ["9000", "9000:8000", "0:10", "a:b"])
def test_port_range(value: str) -> None:
    if value == "9000":
        assert options.parse_port_range(value) == (9000, 9000)
    else:
        with pytest.raises(ValueError):
            options.parse_port_range(value)


def test_no_etcd_host() -> None:
    with pytest.raises(ValueError, match="etcd host"):
        settings("grpc:///")


def test_list_opts_for_the_config_generator() -> None:
    [(group, opts)] = list_opts()
    assert group == "oslo_messaging_grpc"
    names = {o.name for o in opts}
    assert {"bind_host", "port_range", "advertise_host", "lease_ttl", "az", "fallback_azs",
            "tls_cert_file", "use_broadcaster", "client_fanout_fallback",
            "max_message_size"} <= names
    assert opts is not options.GRPC_OPTS  # a copy: the generator may mutate it


def test_oslo_config_generator_lists_the_group() -> None:
    generator = "import sys; from oslo_config.generator import main; sys.exit(main())"
    done = subprocess.run([sys.executable, "-c", generator, "--namespace", "grpcrpc.oslo"],
                          env=ENV, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "[oslo_messaging_grpc]" in done.stdout
    assert "#lease_ttl = 30" in done.stdout and "#port_range = <None>" in done.stdout


def test_auth_settings(tmp_path: pathlib.Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("conductor conductor-token-0123456789\n")
    acl = tmp_path / "acl.json"
    acl.write_text('[{"identity": "conductor", "topics": ["scheduler"]}]')
    s = settings("grpc://etcd1/", auth_tokens_file=str(tokens), auth_acl_file=str(acl),
                 auth_token="my-token-0123456789")
    assert s.server_auth is not None and s.server_auth.tokens is not None
    assert s.server_auth.allows("conductor", "call", "scheduler", "select_destinations")
    assert not s.server_auth.allows("conductor", "call", "compute", "build")
    assert s.transport.token == "my-token-0123456789"
    assert "my-token" not in repr(s.transport)
    assert settings("grpc://etcd1/").server_auth is None
    with pytest.raises(ValueError, match="needs auth_tokens_file"):
        settings("grpc://etcd1/", auth_acl_file=str(acl))

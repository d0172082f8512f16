import pathlib

import pytest

from grpcrpc.config import OPTIONS, Config, ConfigError, render_markdown

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_defaults() -> None:
    cfg = Config.load(environ={})
    assert cfg.az == "default" and cfg.lease_ttl == 10.0 and cfg.port_range is None
    assert all(cfg.source(o.name) == "default" for o in OPTIONS)


def test_precedence_code_then_file_then_env(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "grpcrpc.toml"
    path.write_text('[grpcrpc]\naz = "from-file"\nlease_ttl = 20\nfallback_azs = ["b", "c"]\n')
    env = {"GRPCRPC_AZ": "from-env", "GRPCRPC_LEASE_TTL": "30", "GRPCRPC_TIMEOUT": "5",
           "GRPCRPC_PORT_RANGE": "41000-41010"}
    cfg = Config.load(path, overrides={"az": "from-code", "balancer": None}, environ=env)
    assert cfg.az == "from-code" and cfg.source("az") == "argument"
    assert cfg.lease_ttl == 20.0 and cfg.source("lease_ttl") == str(path)
    assert cfg.timeout == 5.0 and cfg.source("timeout") == "environment variable GRPCRPC_TIMEOUT"
    assert cfg.port_range == (41000, 41010) and cfg.fallback_azs == ("b", "c")
    assert cfg.balancer == "p2c"  # None in overrides means "not given"


def test_config_file_from_environment(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('etcd_endpoints = "10.0.0.1:2379,10.0.0.2:2379"\n')
    cfg = Config.load(environ={"GRPCRPC_CONFIG": str(path)})
    assert cfg.etcd_endpoints == ("10.0.0.1:2379", "10.0.0.2:2379")
    assert cfg.etcd_config().endpoints == ("10.0.0.1:2379", "10.0.0.2:2379")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GRPCRPC_LEASE_TTL": "soon"}, "lease_ttl .from environment variable GRPCRPC_LEASE_TTL."),
        ({"GRPCRPC_LEASE_TTL": "-1"}, "must be positive"),
        ({"GRPCRPC_PORT_RANGE": "9-3"}, "port_range"),
        ({"GRPCRPC_BALANCER": "fastest"}, "expected one of p2c, random, round_robin"),
        ({"GRPCRPC_USE_BROADCASTER": "maybe"}, "expected true or false"),
        ({"GRPCRPC_ETCD_ENDPOINTS": "nohost"}, "etcd_endpoints"),
        ({"GRPCRPC_AZ": "a/b"}, "without '/'"),
        ({"GRPCRPC_TLS_CERT_FILE": "x.pem"}, "tls_cert_file and tls_key_file go together"),
        ({"GRPCRPC_ETCD_USER": "u"}, "etcd_user and etcd_password go together"),
    ],
)
def test_validation_names_the_option_and_source(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Config.load(environ=env)


def test_bad_files(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        Config.load(tmp_path / "missing.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("az = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Config.load(bad, environ={})
    bad.write_text('azz = "x"\n')
    with pytest.raises(ConfigError, match="unknown option"):
        Config.load(bad, environ={})
    with pytest.raises(ConfigError, match="unknown option"):
        Config.load(overrides={"nope": 1}, environ={})


def test_builders() -> None:
    cfg = Config.load(overrides={"az": "az1", "fallback_azs": ["az2"], "threads": 4,
                                 "tls_ca_file": "ca.pem"}, environ={})
    opts = cfg.transport_options()
    assert opts.az == "az1" and opts.fallback_azs == ("az2",) and opts.tls is not None
    args = cfg.server_args()
    assert args["az"] == "az1" and args["limits"].threads == 4 and args["tls"] is None


def test_docs_are_generated_from_the_model() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert doc == render_markdown(), "run `python -m grpcrpc.config` to regenerate the docs"
    for opt in OPTIONS:
        assert f"`{opt.env}`" in doc


def test_envelope_bounds_default_to_the_servers_own() -> None:
    from grpcrpc import Limits

    limits = Config.load(environ={}).server_args()["limits"]
    assert (limits.max_name, limits.max_header_value, limits.max_header_bytes) == (
        Limits().max_name, Limits().max_header_value, Limits().max_header_bytes)
    env = Config.load(environ={"GRPCRPC_MAX_HEADER_VALUE": "1024"}).server_args()["limits"]
    assert env.max_header_value == 1024

import pytest

import grpcrpc
from grpcrpc import RPCClient, StaticResolver, Target, VersionCapError
from grpcrpc.envelope import Envelope


@pytest.fixture
def client() -> RPCClient:
    return RPCClient(StaticResolver([]), Target(topic="sched", version="1.2"), timeout=7)


def test_prepare_changes_only_what_is_given(client: RPCClient) -> None:
    p = client.prepare(server="h1")
    assert p.target.server == "h1" and p.timeout == 7 and p is not client
    assert client.target.server is None
    assert client.prepare(timeout=None).timeout is None  # None is a value, not "not given"
    assert client.prepare().timeout == 7
    assert p.transport is client.transport


def test_prepare_validates(client: RPCClient) -> None:
    with pytest.raises(ValueError, match="invalid version"):
        client.prepare(version="x")
    with pytest.raises(ValueError, match="topic"):
        client.prepare(topic=None)
    with pytest.raises(ValueError, match="timeout"):
        client.prepare(timeout=0)


def test_version_cap(client: RPCClient) -> None:
    capped = client.prepare(version_cap="1.1")
    assert not capped.can_send_version()
    assert capped.can_send_version("1.0")
    with pytest.raises(VersionCapError):
        capped.call({}, "m")
    assert client.prepare(version_cap="1.5").can_send_version()


def test_envelope_carries_target_and_timeout(client: RPCClient) -> None:
    prepared = client.prepare(server="h1", namespace="ns")
    data = prepared._envelope({"user": "u"}, "m", prepared._dict_args({}, {"x": 1}), cast=True,
                              msg_id="i", exchange="nova", headers={"traceparent": "t"},
                              timeout=prepared._timeout_now("m"))
    env = Envelope.FromString(data)
    assert (env.target.topic, env.target.server, env.target.namespace) == ("sched", "h1", "ns")
    assert env.target.exchange == "nova" and env.cast and env.timeout_ms == 7000
    assert dict(env.headers) == {"traceparent": "t"}


def test_unserialisable_argument_fails_before_sending(client: RPCClient) -> None:
    with pytest.raises(grpcrpc.SerializationError):
        client.call({}, "m", when=object())
    with pytest.raises(grpcrpc.SerializationError):
        client.call(object(), "m")


def test_no_endpoints_is_named(client: RPCClient) -> None:
    with pytest.raises(grpcrpc.NoEndpoints, match="no endpoints for topic sched"):
        client.call({}, "m")


def test_public_names_exported_once() -> None:
    # Their order is ruff's (RUF022, checked by `make lint`).
    assert len(set(grpcrpc.__all__)) == len(grpcrpc.__all__)
    for name in grpcrpc.__all__:
        assert hasattr(grpcrpc, name), name
    errors = {n for n, v in vars(grpcrpc.exceptions).items()
              if isinstance(v, type) and issubclass(v, grpcrpc.GrpcrpcError)}
    assert errors == set(grpcrpc.exceptions.__all__)
    assert errors <= set(grpcrpc.__all__)
    for name in grpcrpc.exceptions.__all__:
        assert issubclass(getattr(grpcrpc.exceptions, name), grpcrpc.GrpcrpcError)

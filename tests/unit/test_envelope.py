import json

import pytest

from grpcrpc import envelope as ev
from grpcrpc import exceptions as exc
from grpcrpc.target import Target


class CustomError(Exception):
    pass


class NeedsTwoArgs(Exception):
    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}/{b}")


def _env(**changes: object) -> ev.Envelope:
    env = ev.build_envelope("id1", Target(topic="t", version="1.2"), "m", b"{}", b"{}")
    for k, v in changes.items():
        setattr(env, k, v)
    return env


def test_build_and_parse_roundtrip() -> None:
    env = ev.build_envelope(
        "id1", Target(topic="compute", server="h1", namespace="ns", version="1.3", az="az1"),
        "build", ev.encode_json({"a": 1}), ev.encode_json({"user": "u"}),
        cast=True, headers={"traceparent": "00-x"}, timeout_ms=1500, exchange="nova",
    )
    back = ev.parse_envelope(env.SerializeToString())
    assert back.target.exchange == "nova" and back.target.server == "h1"
    assert back.cast and not back.fanout and back.timeout_ms == 1500
    assert json.loads(back.args.json) == {"a": 1}
    assert dict(back.headers) == {"traceparent": "00-x"}


def test_target_exchange_wins_over_default() -> None:
    env = ev.build_envelope("i", Target(topic="t", exchange="mine"), "m", b"{}", b"{}",
                            exchange="default")
    assert env.target.exchange == "mine"


@pytest.mark.parametrize("data", [b"\xff\xff\xff", b"\x0a\xff", b"garbage that is not protobuf"])
def test_parse_garbage_is_invalid_envelope(data: bytes) -> None:
    with pytest.raises(exc.InvalidEnvelope):
        ev.parse_envelope(data)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"id": ""}, "no id"),
        ({"method": ""}, "no method"),
        ({"id": "x" * 300}, "id too long"),
    ],
)
def test_validate_rejects_missing_fields(change: dict[str, object], message: str) -> None:
    with pytest.raises(exc.InvalidEnvelope, match=message):
        ev.validate_envelope(_env(**change))


def test_validate_rejects_missing_topic_and_bad_version() -> None:
    env = _env()
    env.target.topic = ""
    with pytest.raises(exc.InvalidEnvelope, match="no target topic"):
        ev.validate_envelope(env)
    env = _env()
    env.target.version = "one"
    with pytest.raises(exc.InvalidEnvelope, match="invalid version"):
        ev.validate_envelope(env)


def test_cancel_envelope_needs_only_an_id() -> None:
    ev.validate_envelope(ev.Envelope(id="x", cancel=True))


def test_encode_json_names_the_problem() -> None:
    with pytest.raises(exc.SerializationError, match="not JSON-serialisable"):
        ev.encode_json({"when": object()})
    with pytest.raises(exc.SerializationError):
        ev.encode_json({"nan": float("nan")})


def test_ids_are_unique() -> None:
    new = ev.id_factory()
    assert len({new() for _ in range(1000)}) == 1000
    assert new() != ev.id_factory()()


def _roundtrip(error: BaseException, allowed: frozenset[str] = frozenset()) -> BaseException:
    try:
        raise error
    except BaseException as caught:
        failure = ev.failure_from_exception(caught)
    return ev.exception_from_failure(
        ev.Failure.FromString(failure.SerializeToString()), "m", "1.0", allowed
    )


def test_builtin_exceptions_are_rebuilt_as_their_type() -> None:
    err = _roundtrip(KeyError("host1"))
    assert type(err) is KeyError and err.args == ("host1",)
    assert any("KeyError" in line for line in err.remote_traceback)  # type: ignore[attr-defined]


def test_allowed_module_rebuilds_its_type_and_others_become_remote_error() -> None:
    allowed = _roundtrip(CustomError("x"), frozenset({__name__}))
    assert type(allowed) is CustomError
    remote = _roundtrip(CustomError("x"))
    assert isinstance(remote, exc.RemoteError)
    assert remote.exc_type == "CustomError" and remote.value == "x"
    assert any("CustomError" in line for line in remote.traceback)


class WithKwargs(Exception):
    """Shaped like oslo's and nova's exceptions: format values in `kwargs`."""

    def __init__(self, message: str = "", **kwargs: object) -> None:
        super().__init__(message)
        self.kwargs = kwargs


def test_an_exceptions_kwargs_travel_and_rebuild_it() -> None:
    failure = ev.failure_from_exception(WithKwargs("no host", code=404, host="h1"))
    assert json.loads(failure.kwargs_json) == {"code": 404, "host": "h1"}
    assert not any("kwargs" in line for line in failure.traceback)
    err = _roundtrip(WithKwargs("no host", code=404, host="h1"), frozenset({__name__}))
    assert type(err) is WithKwargs and err.args == ("no host",)
    assert err.kwargs == {"code": 404, "host": "h1"}
    # Not JSON: it still travels, and is rebuilt from its args alone.
    failure = ev.failure_from_exception(WithKwargs("x", when=object()))
    assert failure.kwargs_json == b"" and failure.args_json == b'["x"]'
    # An exception without kwargs sends none.
    assert ev.failure_from_exception(KeyError("k")).kwargs_json == b""


def test_unsafe_or_unbuildable_types_fall_back_to_remote_error() -> None:
    assert isinstance(_roundtrip(NeedsTwoArgs("a", "b"), frozenset({__name__})), exc.RemoteError)
    failure = ev.Failure(code=ev.ErrorCode.REMOTE, exc_type="SystemExit", module="builtins",
                         message="bye", args_json=b"[1]")
    assert isinstance(ev.exception_from_failure(failure, "m", "", frozenset()), exc.RemoteError)
    failure = ev.Failure(code=ev.ErrorCode.REMOTE, exc_type="path", module="os", message="x")
    assert isinstance(ev.exception_from_failure(failure, "m", "", frozenset({"os"})),
                      exc.RemoteError)


def test_grpcrpc_codes_map_to_named_errors() -> None:
    cases = {
        ev.ErrorCode.NO_SUCH_METHOD: exc.NoSuchMethod,
        ev.ErrorCode.UNSUPPORTED_VERSION: exc.UnsupportedVersion,
        ev.ErrorCode.OVERLOADED: exc.Overloaded,
        ev.ErrorCode.INVALID_ENVELOPE: exc.InvalidEnvelope,
        ev.ErrorCode.UNAUTHORIZED: exc.Unauthorized,
        ev.ErrorCode.EXPIRED: exc.MessagingTimeout,
        ev.ErrorCode.SERIALIZATION: exc.SerializationError,
    }
    for code, cls in cases.items():
        err = ev.exception_from_failure(ev.Failure(code=code, message="m"), "meth", "1.2",
                                        frozenset())
        assert type(err) is cls, code


def test_a_fanout_must_be_a_cast() -> None:
    with pytest.raises(exc.InvalidEnvelope, match="fanout envelope must be a cast"):
        ev.validate_envelope(_env(fanout=True))
    ev.validate_envelope(_env(fanout=True, cast=True))
    assert [ev.operation(_env(**c)) for c in ({}, {"cast": True},
                                              {"cast": True, "fanout": True})] == [
        "call", "cast", "fanout"]


@pytest.mark.parametrize("field", ["exchange", "server", "az", "namespace", "version"])
def test_every_target_field_is_bounded(field: str) -> None:
    env = _env()
    setattr(env.target, field, "1" * 256)
    with pytest.raises(exc.InvalidEnvelope, match="target field too long"):
        ev.validate_envelope(env)
    ev.validate_envelope(_env(), max_name=255)
    with pytest.raises(exc.InvalidEnvelope, match="too long"):
        ev.validate_envelope(_env(), max_name=1)


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"baggage": "v" * 8193}, "longer than 8192"),
        ({f"h{i}": "v" * 8000 for i in range(3)}, "in all"),
        ({"k" * 256: "v"}, "header name longer"),
        ({"baggage": "a=b," + " " * 16 + "c=d"}, "not a W3C trace header"),
        ({"tracestate": "a=b\t" + "\t " * 8}, "not a W3C trace header"),
        ({f"h{i}": "" for i in range(65)}, "more than 64 headers"),
    ],
)
def test_headers_are_bounded(headers: dict[str, str], message: str) -> None:
    env = _env()
    env.headers.update(headers)
    with pytest.raises(exc.InvalidEnvelope, match=message):
        ev.validate_envelope(env)


def test_ordinary_headers_pass() -> None:
    env = _env()
    env.headers.update({"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01",
                        "baggage": "user=alice, tenant = t1", "x-app": " " * 100})
    ev.validate_envelope(env)

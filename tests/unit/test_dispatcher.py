import pytest

from grpcrpc.dispatcher import Dispatcher
from grpcrpc.exceptions import NoSuchMethod, UnsupportedVersion
from grpcrpc.target import Target


class V13:
    target = Target(version="1.3")

    def select(self, ctxt: object) -> str:
        return "v13"

    def _private(self, ctxt: object) -> None:
        raise AssertionError("never dispatched")


class V2:
    target = Target(version="2.1")

    async def select(self, ctxt: object) -> str:
        return "v2"


class Baremetal:
    target = Target(namespace="baremetal", version="1.0")

    def select(self, ctxt: object) -> str:
        return "bm"


class Default:
    attr = 5

    def ping(self, ctxt: object) -> str:
        return "pong"


def test_version_and_namespace_rules() -> None:
    d = Dispatcher([V13(), V2(), Baremetal(), Default()])
    assert d.lookup(None, "1.2", "select").func({}) == "v13"
    h = d.lookup(None, "2.0", "select")
    assert h.is_async
    assert d.lookup("baremetal", None, "select").func({}) == "bm"
    assert d.lookup(None, None, "ping").func({}) == "pong"


def test_unsupported_version_when_no_endpoint_is_compatible() -> None:
    d = Dispatcher([V13(), V2()])
    with pytest.raises(UnsupportedVersion, match=r"1\.4"):
        d.lookup(None, "1.4", "select")
    with pytest.raises(UnsupportedVersion):
        d.lookup("nope", None, "select")


def test_no_such_method_for_unknown_private_and_non_callable() -> None:
    d = Dispatcher([V13(), Default()])
    for name in ("missing", "_private", "__init__", "attr", "target"):
        with pytest.raises(NoSuchMethod):
            d.lookup(None, "1.0", name)


def test_cache_is_bounded_and_misses_not_cached() -> None:
    d = Dispatcher([Default()])
    for i in range(50):
        with pytest.raises(NoSuchMethod):
            d.lookup(None, None, f"m{i}")
    assert len(d._cache) == 0
    d.lookup(None, None, "ping")
    assert len(d._cache) == 1


def test_needs_endpoints() -> None:
    with pytest.raises(ValueError, match="at least one endpoint"):
        Dispatcher([])


class TypedLike:
    """Shaped like a generated servicer subclass."""

    grpcrpc_message_types = {"declared": (object, object), "missing": (object, object)}

    def declared(self, ctxt: object, request: object) -> str:
        return "ok"

    def reset_all_state(self, ctxt: object) -> None:  # a helper, not part of the contract
        raise AssertionError("never dispatched")

    def missing(self, ctxt: object, request: object) -> None:
        raise AssertionError("never dispatched")

    missing.grpcrpc_unimplemented = True  # type: ignore[attr-defined]


def test_typed_servicers_expose_only_their_contract() -> None:
    d = Dispatcher([TypedLike()])
    assert d.lookup(None, None, "declared").request_type is object
    with pytest.raises(NoSuchMethod):
        d.lookup(None, None, "reset_all_state")
    with pytest.raises(NoSuchMethod):  # not overridden: refused up front, calls and casts alike
        d.lookup(None, None, "missing")

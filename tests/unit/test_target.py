import pytest

from grpcrpc.target import Target, parse_version, version_is_compatible


def test_target_is_frozen_and_replace_returns_new() -> None:
    t = Target(topic="compute")
    t2 = t.replace(server="host1")
    assert t.server is None and t2.server == "host1"
    with pytest.raises(AttributeError):
        t.topic = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "parsed"),
    [(None, (1, 0, 0)), ("", (1, 0, 0)), ("2", (2, 0, 0)), ("1.3", (1, 3, 0)), ("1.3.7", (1, 3, 7))],
)
def test_parse_version(text: str | None, parsed: tuple[int, int, int]) -> None:
    assert parse_version(text) == parsed


@pytest.mark.parametrize("bad", ["1.x", "a", "1..2", "1.2.3.4", "-1.0", " 1.0"])
def test_parse_version_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid version"):
        parse_version(bad)


@pytest.mark.parametrize(
    ("implemented", "requested", "ok"),
    [
        ("1.5", "1.3", True),
        ("1.3", "1.3", True),
        ("1.3", "1.4", False),
        ("2.0", "1.0", False),
        ("1.0", None, True),
        (None, "1.0", True),
        ("1.3.2", "1.3.1", True),
        ("1.3.0", "1.3.1", False),
    ],
)
def test_version_compat_follows_oslo(implemented: str, requested: str, ok: bool) -> None:
    assert version_is_compatible(implemented, requested) is ok

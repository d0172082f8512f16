"""`Target`: where a message goes, with oslo.messaging's meaning of each field."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["Target", "parse_version", "version_is_compatible"]


@dataclass(frozen=True, slots=True)
class Target:
    """Identifies a destination (client side) or what a server listens for (server side).

    A client needs `topic` (and may narrow it with `server`, `fanout`, `version`, `az`); a server
    needs `topic` and `server`. An endpoint object may carry its own `target` (namespace and
    version) to say which API it implements.

    >>> t = Target(topic="scheduler", version="1.3")
    >>> t.replace(server="host1").server
    'host1'
    """

    exchange: str | None = None
    topic: str | None = None
    namespace: str | None = None
    version: str | None = None
    server: str | None = None
    fanout: bool = False
    az: str | None = None

    def replace(self, **changes: Any) -> Target:
        """A copy with some fields changed (fields given as None are set to None)."""
        return dataclasses.replace(self, **changes)


def parse_version(version: str | None) -> tuple[int, int, int]:
    """'1.3' -> (1, 3, 0); None or '' -> (1, 0, 0). Raises ValueError on anything else.

    >>> parse_version("2.1.4")
    (2, 1, 4)
    """
    if not version:
        return (1, 0, 0)
    parts = version.split(".")
    if not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"invalid version {version!r}: expected 'major.minor[.revision]'")
    nums = [int(p) for p in parts] + [0] * (3 - len(parts))
    return (nums[0], nums[1], nums[2])


def version_is_compatible(implemented: str | None, requested: str | None) -> bool:
    """oslo's rule: same major, and the implemented minor (then revision) at least the requested.

    >>> version_is_compatible("1.5", "1.3"), version_is_compatible("2.0", "1.3")
    (True, False)
    """
    imp = parse_version(implemented)
    req = parse_version(requested)
    return imp[0] == req[0] and imp[1:] >= req[1:]

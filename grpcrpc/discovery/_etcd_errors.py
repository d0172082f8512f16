"""The failures of etcd requests, and the one mapping from pyetcd's and grpc's exceptions to them
(`_etcd_client` raises nothing else). They are internal: the registry and the resolver retry on
them, and only `DiscoveryUnavailable` (a `GrpcrpcError`) reaches callers.

```
EtcdFailure
 ├── Unavailable      no answer: down, partitioned, timed out, no endpoint left to fail over to
 ├── AuthFailed       the token expired or was refused: make a new session (re-authenticate)
 ├── LeaseNotFound    the lease is gone: expired, revoked by an operator, or etcd lost its data
 ├── Compacted        the revision asked for was compacted away: list again
 └── TooLarge         a response over the receive limit: ask for smaller pages
```

>>> failure(ValueError("odd")).__class__.__name__
'Unavailable'
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import grpc
from pyetcd import exceptions as pyetcd_exc

__all__ = [
    "AuthFailed",
    "Compacted",
    "EtcdFailure",
    "LeaseNotFound",
    "TooLarge",
    "Unavailable",
    "failure",
    "mapped",
]


class EtcdFailure(Exception):
    """An etcd request did not succeed (see the module docstring for the kinds)."""


class Unavailable(EtcdFailure):
    pass


class AuthFailed(EtcdFailure):
    pass


class LeaseNotFound(EtcdFailure):
    pass


class Compacted(EtcdFailure):
    pass


class TooLarge(EtcdFailure):
    pass


def failure(exc: BaseException) -> EtcdFailure:
    """Map a pyetcd or grpc exception to the tree above (the only mapping there is)."""
    if isinstance(exc, pyetcd_exc.RevisionCompactedError):
        # pyetcd leaves the message empty; only the attribute says where history starts.
        return Compacted(f"revision compacted (history starts at {exc.compacted_revision})")
    if isinstance(exc, grpc.RpcError):
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        details = str(exc.details()) if callable(getattr(exc, "details", None)) else str(exc)
        name = code.name if code is not None else "UNKNOWN"
        if code == grpc.StatusCode.UNAUTHENTICATED or code == grpc.StatusCode.PERMISSION_DENIED:
            return AuthFailed(f"{name}: {details}")
        if code == grpc.StatusCode.INVALID_ARGUMENT and (
            "auth" in details or "user name" in details
        ):
            return AuthFailed(f"{name}: {details}")
        if code == grpc.StatusCode.NOT_FOUND and "lease" in details:
            return LeaseNotFound(details)
        if code == grpc.StatusCode.OUT_OF_RANGE:  # a paged read at a compacted revision
            return Compacted(details)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return TooLarge(details)
        return Unavailable(f"{name}: {details}")
    if isinstance(exc, pyetcd_exc.NoServerAvailableError):
        return Unavailable("every etcd endpoint failed within the last second")
    if isinstance(exc, pyetcd_exc.Etcd3Exception):
        # pyetcd raises its own types from inside its grpc handler: the details are there.
        if isinstance(exc.__context__, grpc.RpcError):
            return failure(exc.__context__)
        return Unavailable(str(exc) or type(exc).__name__)
    return Unavailable(f"{type(exc).__name__}: {exc}")


P = ParamSpec("P")
R = TypeVar("R")


def mapped(fn: Callable[P, R]) -> Callable[P, R]:
    """A request whose pyetcd and grpc exceptions leave it as `EtcdFailure`s."""
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (grpc.RpcError, pyetcd_exc.Etcd3Exception) as exc:
            raise failure(exc) from exc
        except ValueError as exc:  # pyetcd: "Trying to use a failed node"
            raise Unavailable(str(exc)) from exc

    return wrapper

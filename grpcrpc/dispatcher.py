"""Finding the endpoint method for a message: oslo.messaging's dispatch rules, pure logic.

Each endpoint may carry a `target` attribute (a `Target` with `namespace` and `version`) saying
which API it implements; without one it implements the server's default (no namespace, "1.0").
A message is dispatched to the first endpoint whose namespace matches exactly and whose version
is compatible (same major, minor at least the requested) and that has the method. Methods whose
names start with `_` are never dispatched.

Typed endpoints (servicers generated from a .proto by `protoc-gen-grpcrpc`) declare
`grpcrpc_message_types = {"method": (RequestMessage, ResponseMessage)}`; their methods are called
as `method(ctxt, request)` with the request message, whichever way the caller sent it.

>>> class Scheduler:
...     target = Target(version="1.3")
...     def select_destinations(self, ctxt, spec):
...         return ["host1"]
>>> d = Dispatcher([Scheduler()])
>>> d.lookup(None, "1.2", "select_destinations").func({}, spec={})
['host1']
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from grpcrpc.exceptions import NoSuchMethod, UnsupportedVersion
from grpcrpc.target import Target, version_is_compatible

__all__ = ["Dispatcher", "Handler"]

_CACHE_MAX = 4096


@dataclass(frozen=True, slots=True)
class Handler:
    """A dispatchable method; `is_async` says await it on the loop.

    Dict-style: `func(ctxt, **kwargs)`. Typed (`request_type` set): `func(ctxt, request)`.
    """

    func: Callable[..., Any]
    is_async: bool
    endpoint: Any
    name: str
    request_type: type[Message] | None = None
    response_type: type[Message] | None = None


class Dispatcher:
    """Resolves (namespace, version, method) to a `Handler`, caching successful lookups."""

    def __init__(self, endpoints: Sequence[Any], default_target: Target | None = None) -> None:
        if not endpoints:
            raise ValueError("an RPC server needs at least one endpoint")
        self.endpoints = list(endpoints)
        self._default = default_target or Target()
        self._cache: dict[tuple[str | None, str | None, str], Handler] = {}

    def lookup(self, namespace: str | None, version: str | None, method: str) -> Handler:
        key = (namespace or None, version or None, method)
        found = self._cache.get(key)
        if found is not None:
            return found
        handler = self._find(key[0], key[1], method)
        # Only hits are cached, and only a bounded number: misses are what a hostile peer
        # can vary at will.
        if len(self._cache) < _CACHE_MAX:
            self._cache[key] = handler
        return handler

    def _find(self, namespace: str | None, version: str | None, method: str) -> Handler:
        found_compatible = False
        for endpoint in self.endpoints:
            target = getattr(endpoint, "target", None)
            if not isinstance(target, Target):
                target = self._default
            if (target.namespace or None) != namespace:
                continue
            if not version_is_compatible(target.version, version):
                continue
            found_compatible = True
            if method.startswith("_"):
                continue
            func = getattr(endpoint, method, None)
            if func is None or not callable(func) or isinstance(func, type):
                continue
            # A generated base marks the methods the author did not implement: refuse them
            # up front (calls and casts alike) rather than accept and fail later.
            if getattr(func, "grpcrpc_unimplemented", False):
                continue
            types = getattr(endpoint, "grpcrpc_message_types", None)
            if types is not None and method not in types:
                continue  # a typed servicer exposes its contract's methods, not its helpers
            req, resp = (types or {}).get(method, (None, None))
            return Handler(func, _is_async(func), endpoint, method, req, resp)
        if found_compatible:
            raise NoSuchMethod(method)
        raise UnsupportedVersion(version or "1.0", method)


def _is_async(func: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        getattr(func, "__call__", None)  # noqa: B004 - callable objects with async __call__
    )

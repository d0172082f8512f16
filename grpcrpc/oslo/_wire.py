"""What oslo.messaging's messages become on grpcrpc's wire, and back.

An oslo message `{"method", "args", "namespace", "version"}` travels as an ordinary grpcrpc
envelope: method and args as they are, namespace and version in the envelope's target, the
request context as its context. So a native grpcrpc client can call a service that runs the
oslo driver, and an oslo client can call a native grpcrpc server.

Failures go through oslo's own machinery: the server serialises the exception with
`serialize_remote_exception` and sends its parts (class, module, message, traceback, args) in
grpcrpc's `Failure`; the client rebuilds the same dict and hands it to
`deserialize_remote_exception` with the transport's `allowed_remote_exmods`, exactly as the
rabbit driver does; the client's failure mapper (`remote_failure`) hands it over. The
exception's `kwargs` (nova's exceptions carry their format values there) travel in
`Failure.kwargs_json`.

>>> data = {"class": "KeyError", "module": "builtins", "message": "'x'", "tb": [],
...         "args": ["x"], "kwargs": {"code": 404}}
>>> back = failure_data(ev.failure_from_exception(remote_exception(data, None)))
>>> back["class"], back["module"], back["args"], back["kwargs"], back["tb"]
('KeyError', 'builtins', ['x'], {'code': 404}, ["KeyError: 'x'"])
"""

from __future__ import annotations

import functools
import json
from types import TracebackType
from typing import Any

from oslo_serialization import jsonutils

from grpcrpc import envelope as ev
from grpcrpc.dispatcher import Dispatcher, Handler
from grpcrpc.serializer import Serializer

__all__ = [
    "CatchAllDispatcher",
    "PrimitiveSerializer",
    "RemoteFailure",
    "failure_data",
    "remote_exception",
    "remote_failure",
]

_REMOTE_POSTFIX = "_Remote"


class PrimitiveSerializer(Serializer):
    """Values as oslo's `jsonutils.dumps` would send them (datetimes, sets, bytes, ... become
    JSON primitives), so whatever the rabbit driver carries, this one carries.

    >>> PrimitiveSerializer().serialize_entity({}, {1, 2})
    [1, 2]
    """

    def serialize_entity(self, ctxt: Any, entity: Any) -> Any:
        return jsonutils.to_primitive(entity, convert_instances=False)

    def deserialize_entity(self, ctxt: Any, entity: Any) -> Any:
        return entity

    def serialize_context(self, ctxt: Any) -> dict[str, Any]:
        if ctxt is None:
            return {}
        primitive = jsonutils.to_primitive(ctxt, convert_instances=False)
        if not isinstance(primitive, dict):
            raise TypeError(f"a request context must serialise to a dict, not {type(ctxt)}")
        return primitive

    def deserialize_context(self, ctxt: dict[str, Any]) -> Any:
        return ctxt


# -- failures, server side ------------------------------------------------------------------


@functools.lru_cache(maxsize=512)
def _remote_class(name: str, module: str) -> type[Exception]:
    """An exception class that prints and pickles as `module.name` (what grpcrpc puts in the
    failure), standing in for a class this process may not even have."""

    def __str__(self: Exception) -> str:
        return str(getattr(self, "oslo_message", ""))

    return type(name, (Exception,), {"__module__": module, "__qualname__": name,
                                     "__str__": __str__})


def remote_exception(data: dict[str, Any], tb: TracebackType | None) -> Exception:
    """An exception for the grpcrpc servicer to send back: it carries exactly the parts of
    oslo's serialised failure `data` (with the original traceback object when there is one)."""
    cls = _remote_class(str(data.get("class") or "Exception"), str(data.get("module") or ""))
    args = data.get("args")
    error = cls(*(args if isinstance(args, list) else ()))
    error.oslo_message = str(data.get("message", ""))  # type: ignore[attr-defined]
    kwargs = data.get("kwargs")
    if kwargs and isinstance(kwargs, dict):
        # grpcrpc sends an exception's `kwargs` attribute in `Failure.kwargs_json`.
        error.kwargs = jsonutils.to_primitive(kwargs)  # type: ignore[attr-defined]
    return error.with_traceback(tb)


def failure_data(failure: ev.Failure) -> dict[str, Any]:
    """The dict `serialize_remote_exception` made on the server, rebuilt from a `Failure`."""
    lines = list(failure.traceback)
    kwargs: Any = {}
    if failure.kwargs_json:
        try:
            kwargs = json.loads(failure.kwargs_json)
        except ValueError:
            kwargs = {}
    try:
        args = json.loads(failure.args_json) if failure.args_json else [failure.message]
    except ValueError:
        args = [failure.message]
    name, module = failure.exc_type, failure.module
    # As serialize_remote_exception does: a re-raised remote exception is sent as the original.
    if name.endswith(_REMOTE_POSTFIX) and module.endswith(_REMOTE_POSTFIX):
        name, module = name[:-len(_REMOTE_POSTFIX)], module[:-len(_REMOTE_POSTFIX)]
    return {"class": name, "module": module, "message": failure.message, "tb": lines,
            "args": args if isinstance(args, list) else [failure.message],
            "kwargs": kwargs if isinstance(kwargs, dict) else {}}


class RemoteFailure(Exception):
    """Carries a remote failure from the loop to the caller, who rebuilds it with oslo's
    `deserialize_remote_exception` (in its own thread: that may import and log)."""

    def __init__(self, data: dict[str, Any]) -> None:
        super().__init__(data.get("class"))
        self.data = data


def remote_failure(failure: ev.Failure) -> RemoteFailure:
    """The driver's clients' failure mapper: an endpoint's failure comes back as
    `RemoteFailure`, for oslo to rebuild."""
    return RemoteFailure(failure_data(failure))


# -- dispatch ------------------------------------------------------------------------------


class CatchAllDispatcher(Dispatcher):
    """Every (namespace, version, method) goes to `sink.deliver(namespace, version, method,
    ctxt, **args)`: oslo's own dispatcher, behind the listener, picks the endpoint, so that
    version and namespace errors are oslo's (a `RemoteError` at the caller, as with rabbit)."""

    _MAX = 4096

    def __init__(self, sink: Any) -> None:
        super().__init__([sink])
        self._sink = sink
        self._handlers: dict[tuple[str | None, str | None, str], Handler] = {}

    def lookup(self, namespace: str | None, version: str | None, method: str) -> Handler:
        key = (namespace or None, version or None, method)
        handler = self._handlers.get(key)
        if handler is None:
            handler = Handler(functools.partial(self._sink.deliver, *key), True, self._sink,
                              method)
            # Bounded: the keys are what callers choose.
            if len(self._handlers) < self._MAX:
                self._handlers[key] = handler
        return handler


def oslo_message(namespace: str | None, version: str | None, method: str,
                 args: dict[str, Any]) -> dict[str, Any]:
    """The message dict oslo's RPC dispatcher reads (what `_make_message` built at the caller).

    >>> oslo_message(None, "1.3", "ping", {})
    {'method': 'ping', 'args': {}, 'version': '1.3'}
    """
    message: dict[str, Any] = {"method": method, "args": args}
    if namespace is not None:
        message["namespace"] = namespace
    if version is not None:
        message["version"] = version
    return message


def target_fields(target: Any, message: dict[str, Any], default_exchange: str | None
                  ) -> dict[str, Any]:
    """`prepare()` arguments for an oslo target and message."""
    return {
        "exchange": target.exchange or default_exchange,
        "topic": target.topic,
        "server": target.server or None,
        "fanout": bool(target.fanout),
        "namespace": message.get("namespace"),
        "version": message.get("version"),
    }


def describe(target: Any) -> str:
    """'compute.host1' / 'compute (fanout)' / 'compute', for error messages."""
    base: str = target.topic or "?"
    if target.fanout:
        return f"{base} (fanout)"
    return f"{base}.{target.server}" if target.server else base


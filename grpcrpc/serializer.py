"""The serializer hook, with oslo.messaging's shape.

A serializer turns rich objects (versioned objects, datetimes, ...) into JSON-able primitives before
sending and back after receiving; the transport then encodes the primitives as JSON.

>>> class Upper(NoOpSerializer):
...     def serialize_entity(self, ctxt, entity):
...         return entity.upper() if isinstance(entity, str) else entity
>>> Upper().serialize_entity({}, "x")
'X'
"""

from __future__ import annotations

import abc
from typing import Any

__all__ = ["NoOpSerializer", "Serializer"]


class Serializer(abc.ABC):
    """Base class for serializers (the same four methods as `oslo_messaging.Serializer`)."""

    @abc.abstractmethod
    def serialize_entity(self, ctxt: Any, entity: Any) -> Any:
        """Turn an argument or result into JSON-able primitives."""

    @abc.abstractmethod
    def deserialize_entity(self, ctxt: Any, entity: Any) -> Any:
        """Rebuild an argument or result from primitives."""

    @abc.abstractmethod
    def serialize_context(self, ctxt: Any) -> dict[str, Any]:
        """Turn a request context into a JSON-able dict."""

    @abc.abstractmethod
    def deserialize_context(self, ctxt: dict[str, Any]) -> Any:
        """Rebuild a request context from a dict."""


class NoOpSerializer(Serializer):
    """The default: values are sent as they are (they must be JSON-able); contexts are dicts."""

    def serialize_entity(self, ctxt: Any, entity: Any) -> Any:
        return entity

    def deserialize_entity(self, ctxt: Any, entity: Any) -> Any:
        return entity

    def serialize_context(self, ctxt: Any) -> dict[str, Any]:
        if ctxt is None:
            return {}
        if isinstance(ctxt, dict):
            return ctxt
        to_dict = getattr(ctxt, "to_dict", None)
        if callable(to_dict):
            result = to_dict()
            if isinstance(result, dict):
                return result
        raise TypeError(f"cannot serialise a context of type {type(ctxt).__name__}: give a dict")

    def deserialize_context(self, ctxt: dict[str, Any]) -> Any:
        return ctxt

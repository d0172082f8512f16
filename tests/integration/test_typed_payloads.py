"""Typed (protobuf) and dict-style peers interoperate: the envelope carries either form."""

from __future__ import annotations

from typing import Any

import pytest

import grpcrpc
from grpcrpc import Target
from grpcrpc.generated.v1 import envelope_pb2 as pb
from grpcrpc.testing import AsyncClientFor, ClientFor


class TypedEndpoint:
    """Shaped like a generated servicer: methods take and return messages."""

    grpcrpc_message_types = {"describe": (pb.Target, pb.FanoutReport)}

    def describe(self, ctxt: Any, request: pb.Target) -> pb.FanoutReport:
        assert isinstance(request, pb.Target)
        return pb.FanoutReport(targets=len(request.topic), delivered=len(request.server))


class DictEndpoint:
    def describe(self, ctxt: Any, topic: str, server: str = "") -> dict[str, int]:
        return {"targets": len(topic), "delivered": len(server)}


def test_typed_client_typed_server() -> None:
    with ClientFor(Target(topic="d"), [TypedEndpoint()]) as client:
        reply = client.call_message({}, "describe", pb.Target(topic="abc", server="xy"),
                                    pb.FanoutReport)
        assert isinstance(reply, pb.FanoutReport) and (reply.targets, reply.delivered) == (3, 2)


def test_dict_client_typed_server() -> None:
    with ClientFor(Target(topic="d"), [TypedEndpoint()]) as client:
        assert client.call({}, "describe", topic="abcd") == {"targets": 4}


def test_typed_client_dict_server() -> None:
    with ClientFor(Target(topic="d"), [DictEndpoint()]) as client:
        reply = client.call_message({}, "describe", pb.Target(topic="ab", server="x"),
                                    pb.FanoutReport)
        assert (reply.targets, reply.delivered) == (2, 1)


async def test_async_typed_and_wrong_types() -> None:
    async with AsyncClientFor(Target(topic="d"), [TypedEndpoint()]) as client:
        reply = await client.call_message({}, "describe", pb.Target(topic="a"), pb.FanoutReport)
        assert reply.targets == 1
        with pytest.raises(grpcrpc.InvalidEnvelope, match=r"expected grpcrpc\.v1\.Target"):
            await client.call_message({}, "describe", pb.Failure(message="x"), pb.FanoutReport)
        with pytest.raises(grpcrpc.InvalidEnvelope, match="does not fit"):
            await client.call({}, "describe", topic=["not", "a", "string"])
        with pytest.raises(grpcrpc.SerializationError, match="protobuf message"):
            await client.call_message({}, "describe", {"topic": "a"}, pb.FanoutReport)  # type: ignore[arg-type]
        assert await client.cast_message({}, "describe", pb.Target(topic="a")) is None

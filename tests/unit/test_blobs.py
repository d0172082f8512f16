"""Long strings as blobs beside the JSON (issue 18, part 3): the encoding and its refusals.
Interop with peers that predate blobs: tests/integration/test_blobs_interop.py."""

from __future__ import annotations

from typing import Any

import pytest

from grpcrpc import envelope as ev
from grpcrpc.exceptions import InvalidEnvelope, SerializationError
from grpcrpc.generated.v1 import envelope_pb2 as pb

LONG = "é" + "x" * ev.BLOB_CHARS  # not ASCII: its UTF-8 bytes are not its characters


@pytest.mark.parametrize("value", [
    LONG, {"a": 1, "big": LONG, "small": "s"}, {"big": LONG, "other": LONG + "y"},
    {"a": [LONG]}, [LONG], "short", None, 3, {}, {"a": "x" * (ev.BLOB_CHARS - 1)},
])
def test_round_trip(value: Any) -> None:
    payload = ev.json_payload(value, blobs=True)
    back = pb.Payload.FromString(payload.SerializeToString())
    assert ev.payload_value(back) == value


def test_what_goes_apart() -> None:
    whole = ev.json_payload(LONG, blobs=True)
    assert whole.json == b"" and not whole.blobs[0].HasField("key")
    assert whole.blobs[0].utf8 == LONG.encode()
    entry = ev.json_payload({"a": 1, "big": LONG}, blobs=True)
    assert entry.json == b'{"a":1}' and [b.key for b in entry.blobs] == ["big"]
    nested = ev.json_payload({"a": [LONG]}, blobs=True)  # only top-level entries go apart
    assert not nested.blobs


def test_without_blobs_it_is_the_plain_json() -> None:
    for value in (LONG, {"a": 1, "big": LONG}):
        payload = ev.json_payload(value)
        assert not payload.blobs and payload.json == ev.encode_json(value)


def test_lone_surrogate_is_a_serialization_error() -> None:
    with pytest.raises(SerializationError):
        ev.json_payload("\ud800" + LONG, blobs=True)
    with pytest.raises(SerializationError):
        ev.json_payload({"big": LONG + "\udfff"}, blobs=True)


@pytest.mark.parametrize("payload, why", [
    (pb.Payload(json=b'{"a":1}', blobs=[pb.Blob(utf8=b"x")]), "alone"),
    (pb.Payload(blobs=[pb.Blob(utf8=b"x"), pb.Blob(utf8=b"y")]), "alone"),
    (pb.Payload(json=b'{"a":1}', blobs=[pb.Blob(key="a", utf8=b"x")]), "twice"),
    (pb.Payload(json=b"[1]", blobs=[pb.Blob(key="a", utf8=b"x")]), "JSON object"),
    (pb.Payload(blobs=[pb.Blob(key="a", utf8=b"x"), pb.Blob(utf8=b"y")]), "without a key"),
    (pb.Payload(blobs=[pb.Blob(utf8=b"\xff\xfe")]), "not UTF-8"),
])
def test_bad_blobs_are_invalid_envelopes(payload: pb.Payload, why: str) -> None:
    with pytest.raises(InvalidEnvelope, match=why):
        ev.payload_value(payload, "args")


def test_typed_reader_of_a_json_payload_with_blobs() -> None:
    from google.protobuf import struct_pb2

    message = ev.payload_to_message(ev.json_payload({"fields": {}, "big": LONG}, blobs=True),
                                    struct_pb2.Struct)
    assert isinstance(message, struct_pb2.Struct)


def test_old_reader_of_a_reply_with_blobs_would_see_them_missing() -> None:
    """Why blobs go only to callers that ask: a reader that predates them sees no value."""
    reply = pb.Reply(id="1", result=ev.json_payload(LONG, blobs=True))
    assert reply.result.json == b""  # an old client would decode this as None


def test_blob_args_pack_and_unpack() -> None:
    packed = ev.blob_args({"n": 1, "big": LONG})
    assert packed is not None and packed.message.TypeName() == ev.BLOB_ARGS
    back = pb.Payload.FromString(packed.SerializeToString())
    assert ev.payload_to_python(back, "args") == {"n": 1, "big": LONG}
    assert ev.decode_json(ev.plain_args(back).json) == {"n": 1, "big": LONG}
    assert ev.blob_args({"n": 1, "s": "short"}) is None
    assert ev.blob_args({"nested": [LONG]}) is None  # only top-level strings go apart
    with pytest.raises(SerializationError):
        ev.blob_args({"big": LONG + "\udfff"})


def test_blob_args_to_a_typed_endpoint() -> None:
    from google.protobuf import struct_pb2

    packed = ev.blob_args({"fields": {}, "big": LONG})
    assert packed is not None
    assert isinstance(ev.payload_to_message(packed, struct_pb2.Struct, "args"), struct_pb2.Struct)


@pytest.mark.parametrize("inner, blobs", [
    (b"\xff\xff", [pb.Blob(key="a", utf8=b"x")]),  # not a protobuf message
    (pb.BlobArgs(json=b"[1]").SerializeToString(), [pb.Blob(key="a", utf8=b"x")]),  # not an object
    (pb.BlobArgs(json=b'{"a":1}').SerializeToString(), [pb.Blob(key="a", utf8=b"x")]),  # twice
    (b"", [pb.Blob(utf8=b"x")]),  # no key
    (b"", [pb.Blob(key="a", utf8=b"\xff")]),  # not UTF-8
])
def test_bad_blob_args_are_invalid_envelopes(inner: bytes, blobs: list[pb.Blob]) -> None:
    payload = pb.Payload(blobs=blobs)
    payload.message.type_url = "type.googleapis.com/" + ev.BLOB_ARGS
    payload.message.value = inner
    with pytest.raises(InvalidEnvelope):
        ev.payload_to_python(payload, "args")


def test_refused_blob_args_is_only_that_refusal() -> None:
    refusal = pb.Failure(code=pb.INVALID_ENVELOPE,
                         message=f"unknown message type {ev.BLOB_ARGS!r}")
    assert ev.refused_blob_args(refusal)
    assert not ev.refused_blob_args(pb.Failure(code=pb.INVALID_ENVELOPE, message="bad id"))
    assert not ev.refused_blob_args(pb.Failure(code=pb.REMOTE, message=ev.BLOB_ARGS))

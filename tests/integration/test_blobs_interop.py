"""Blobs against a real server, with peers that predate them: an envelope without
`blob_replies` (built and sent with raw grpcio) gets the plain JSON it reads."""

from __future__ import annotations

from typing import Any

import grpc

from grpcrpc import Target
from grpcrpc import envelope as ev
from grpcrpc.generated.v1 import envelope_pb2 as pb
from grpcrpc.testing import Cluster
from grpcrpc.transport.base import UNARY_METHOD

LONG = "é" + "x" * ev.BLOB_CHARS


class Echo:
    def echo(self, ctxt: Any, x: Any) -> Any:
        return x


def _raw_call(address: str, env: pb.Envelope) -> pb.Reply:
    with grpc.insecure_channel(address) as channel:
        raw = channel.unary_unary(UNARY_METHOD)(env.SerializeToString(), timeout=10)
    return pb.Reply.FromString(raw)


def _echo_envelope(args: pb.Payload, *, blob_replies: bool) -> pb.Envelope:
    env = ev.build_envelope("id-1", Target(topic="echo"), "echo", args, b"{}")
    env.blob_replies = blob_replies
    return env


def test_interop_with_the_old_path() -> None:
    """A caller that predates blobs (hand-built envelope, raw grpcio) gets plain JSON back; a
    caller that sets `blob_replies` gets the long string as a blob; a server reads blob args;
    and grpcrpc's own client round-trips the value either way."""
    with Cluster() as cluster:
        server = cluster.serve(Target(topic="echo", server="e1"), [Echo()])
        old = _raw_call(server.address,
                        _echo_envelope(pb.Payload(json=ev.encode_json({"x": LONG})),
                                       blob_replies=False))
        assert not old.result.blobs and ev.decode_json(old.result.json) == LONG
        new = _raw_call(server.address,
                        _echo_envelope(pb.Payload(json=ev.encode_json({"x": LONG})),
                                       blob_replies=True))
        assert new.result.blobs and new.result.json == b""
        assert ev.payload_value(new.result) == LONG
        blob_args = _raw_call(server.address,
                              _echo_envelope(ev.json_payload({"x": LONG}, blobs=True),
                                             blob_replies=False))
        assert ev.decode_json(blob_args.result.json) == LONG
        client = cluster.client(Target(topic="echo"))
        assert client.call({}, "echo", x=LONG) == LONG
        assert client.call({}, "echo", x={"k": LONG, "n": 1}) == {"k": LONG, "n": 1}
        assert client.call({}, "echo", x="short") == "short"

"""Blobs against a real server, with peers that predate them: an envelope without
`blob_replies` (built and sent with raw grpcio) gets the plain JSON it reads."""

from __future__ import annotations

import io
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from grpcrpc import Endpoint, RPCClient, StaticResolver, Target
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
        packed = ev.blob_args({"x": LONG})
        assert packed is not None
        packed_args = _raw_call(server.address, _echo_envelope(packed, blob_replies=False))
        assert ev.decode_json(packed_args.result.json) == LONG
        client = cluster.client(Target(topic="echo"))
        assert client.call({}, "echo", x=LONG) == LONG
        assert client._blob_args.on  # this server read them
        assert client.call({}, "echo", x={"k": LONG, "n": 1}) == {"k": LONG, "n": 1}
        assert client.call({}, "echo", x="short") == "short"


# main just before blobs (issue 18): the grpcrpc a not-yet-upgraded peer runs.
BEFORE_BLOBS = "8620146af60bf156273acccd5c7a7f87111e4702"
ROOT = pathlib.Path(__file__).resolve().parents[2]
OLD_SERVER = """
import asyncio
from grpcrpc import RPCServer, Target

class Echo:
    def echo(self, ctxt, x):
        return x

async def main():
    server = RPCServer(Target(topic="echo", server="old"), [Echo()])
    await server.start()
    print("ADDRESS", server.address, flush=True)
    await server.wait()

asyncio.run(main())
"""


@pytest.fixture
def old_server() -> Iterator[str]:
    """A server running grpcrpc as it was before blobs, in its own process."""
    if shutil.which("git") is None or subprocess.run(
            ["git", "cat-file", "-e", BEFORE_BLOBS], cwd=ROOT, capture_output=True).returncode:
        pytest.skip("the pre-blob commit is not in this checkout's history")
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "archive", BEFORE_BLOBS, "grpcrpc"], cwd=ROOT,
                                 capture_output=True, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tmp, filter="data")
        env = {**os.environ, "PYTHONPATH": tmp}
        proc = subprocess.Popen([sys.executable, "-c", OLD_SERVER], cwd=tmp, env=env,
                                stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().split()
            assert line and line[0] == "ADDRESS", line
            yield line[1]
        finally:
            proc.kill()
            proc.wait()


def test_blob_args_to_a_server_that_predates_them(old_server: str) -> None:
    """The old server refuses the call unrun; the client sends it again as plain JSON, gets
    the plain JSON reply, and sends no more blob args."""
    with RPCClient(StaticResolver([Endpoint(old_server, "echo", "old")]), Target(topic="echo"),
                   timeout=30) as client:
        assert client._blob_args.on
        assert client.call({}, "echo", x=LONG) == LONG
        assert not client._blob_args.on
        assert client.call({}, "echo", x=LONG) == LONG  # straight to plain JSON now
        assert client.prepare(timeout=20).call({}, "echo", x={"k": LONG}) == {"k": LONG}

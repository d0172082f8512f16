"""Version evolution with two generated versions of one schema, each peer in its own process.

1.0 has `get`; 1.1 adds `reserve` (since 1.1), a request field and a response field. The rules:
a 1.1 client calls `get` as 1.0 (so an old server serves it) and `reserve` as 1.1 (so an old
server answers UnsupportedVersion); a client capped at 1.0 refuses `reserve` before sending; old
and new messages read each other (unknown fields are kept, missing ones are defaults).
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.contracts.protoc import ROOT, protoc, write_protos

V1_0 = """
    syntax = "proto3";
    package evo.v1;
    import "grpcrpc/options.proto";

    message GetRequest { string name = 1; }
    message GetResponse { string name = 1; uint32 count = 2; }

    service Inventory {
      option (grpcrpc.service) = { topic: "inventory" version: "1.0" };
      rpc Get(GetRequest) returns (GetResponse);
    }
"""

V1_1 = """
    syntax = "proto3";
    package evo.v1;
    import "grpcrpc/options.proto";

    message GetRequest { string name = 1; bool verbose = 2; }
    message GetResponse { string name = 1; uint32 count = 2; string owner = 3; }
    message ReserveRequest { string name = 1; uint32 count = 2; }
    message ReserveResponse { bool ok = 1; }

    service Inventory {
      option (grpcrpc.service) = { topic: "inventory" version: "1.1" };
      rpc Get(GetRequest) returns (GetResponse);
      rpc Reserve(ReserveRequest) returns (ReserveResponse) {
        option (grpcrpc.method) = { since: "1.1" };
      }
    }
"""


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path]:
    """Each schema version generated into its own directory (a PYTHONPATH entry)."""
    root = tmp_path_factory.mktemp("evo")
    made = {}
    for version, source in (("1.0", V1_0), ("1.1", V1_1)):
        src, out = root / f"src-{version}", root / f"py-{version}"
        result = protoc(src, out, write_protos(src, {"evo/inventory.proto": source}), mypy=False)
        assert result.returncode == 0, result.stderr
        made[version] = out
    return made


def _env(path: pathlib.Path) -> dict[str, str]:
    return {"PYTHONPATH": f"{path}:{ROOT}", "PATH": "/usr/bin:/bin"}


@contextmanager
def server(path: pathlib.Path) -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.contracts.evo_peer", "serve"], cwd=ROOT,
                            env=_env(path), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline().split()
        assert line and line[0] == "ADDRESS", f"server did not start: {line}"
        yield line[1]
        proc.stdin.close()  # the server stops when its stdin closes
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def client(path: pathlib.Path, address: str) -> dict[str, Any]:
    result = subprocess.run([sys.executable, "-m", "tests.contracts.evo_peer", "client", address],
                            cwd=ROOT, env=_env(path), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def test_new_client_old_server(versions: dict[str, pathlib.Path]) -> None:
    with server(versions["1.0"]) as address:
        got = client(versions["1.1"], address)
    # get is as old as 1.0: served; the old server ignored `verbose` and sent no owner.
    assert got["get"] == {"name": "disk", "count": 4, "owner": "", "raw_has_owner": False}
    # reserve needs 1.1: the old server refuses it by version, not by a missing method.
    assert got["reserve"]["error"] == "UnsupportedVersion"
    assert got["reserve"]["message"] == "Endpoint does not support RPC version 1.1 for method reserve"


def test_old_client_new_server(versions: dict[str, pathlib.Path]) -> None:
    with server(versions["1.1"]) as address:
        got = client(versions["1.0"], address)
    # The new server reads the old request (verbose is false) and its answer's new field rides
    # along as an unknown field of the old client's message.
    assert got == {"client_version": "1.0",
                   "get": {"name": "disk", "count": 4, "owner": None, "raw_has_owner": True}}


def test_new_client_new_server(versions: dict[str, pathlib.Path]) -> None:
    with server(versions["1.1"]) as address:
        got = client(versions["1.1"], address)
    assert got["get"] == {"name": "disk", "count": 4, "owner": "verbose", "raw_has_owner": True}
    assert got["reserve"] == {"ok": True}
    assert got["capped_get"] == "disk"  # get (1.0) is within the cap
    assert got["capped_reserve"]["error"] == "VersionCapError"


def test_version_cap_refuses_before_sending(versions: dict[str, pathlib.Path]) -> None:
    # No endpoint at all: a message that was sent would fail with NoEndpoints. reserve never gets
    # that far: the cap stops it first, with a message that says what to do.
    got = client(versions["1.1"], "-")
    assert got["capped_get"]["error"] == "NoEndpoints"
    assert got["capped_reserve"] == {
        "error": "VersionCapError",
        "message": "inventory.reserve needs API version 1.1, above this client's version_cap 1.0: not sent",
    }

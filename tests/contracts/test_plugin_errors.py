"""A contract that cannot work is refused by protoc with a clear message, never a traceback."""

from __future__ import annotations

import pathlib

import pytest

from grpcrpc.plugin.main import snake_case
from tests.contracts.protoc import protoc, write_protos

HEADER = """
    syntax = "proto3";
    package bad.v1;
    import "google/protobuf/empty.proto";
    import "grpcrpc/options.proto";
    message Req { string name = 1; }
    message Resp { string name = 1; }
"""

CASES = {
    "cast_returns_message": (
        """
        service Hosts {
          option (grpcrpc.service) = { topic: "hosts" };
          rpc Reset(Req) returns (Resp) { option (grpcrpc.method) = { cast: true }; }
        }
        """,
        "bad/api.proto: service Hosts: rpc Reset is a cast, so it must return google.protobuf.Empty, "
        "not bad.v1.Resp",
    ),
    "missing_topic": (
        """
        service Hosts {
          rpc Get(Req) returns (Resp);
        }
        """,
        'bad/api.proto: service Hosts has no topic: add option (grpcrpc.service) = { topic: "..." }',
    ),
    "since_not_a_version": (
        """
        service Hosts {
          option (grpcrpc.service) = { topic: "hosts" version: "1.3" };
          rpc Get(Req) returns (Resp) { option (grpcrpc.method) = { since: "one.two" }; }
        }
        """,
        'bad/api.proto: service Hosts: rpc Get: since "one.two" is not a version: expected '
        '"major.minor", e.g. "1.3"',
    ),
    "since_newer_than_service": (
        """
        service Hosts {
          option (grpcrpc.service) = { topic: "hosts" version: "1.3" };
          rpc Get(Req) returns (Resp) { option (grpcrpc.method) = { since: "1.4" }; }
        }
        """,
        'bad/api.proto: service Hosts: rpc Get: since "1.4" is not within the service version "1.3" '
        "(same major, not newer)",
    ),
    "fanout_needs_cast": (
        """
        service Hosts {
          option (grpcrpc.service) = { topic: "hosts" };
          rpc Get(Req) returns (google.protobuf.Empty) {
            option (grpcrpc.method) = { fanout_allowed: true };
          }
        }
        """,
        "bad/api.proto: service Hosts: rpc Get: fanout_allowed needs cast: true (a fanout is one-way)",
    ),
    "reserved_name": (
        """
        service Hosts {
          option (grpcrpc.service) = { topic: "hosts" };
          rpc Prepare(Req) returns (Resp);
        }
        """,
        'bad/api.proto: service Hosts: rpc Prepare: "prepare" is reserved by the generated classes; '
        'set option (grpcrpc.method) = { name: "..." }',
    ),
    "streaming": (
        """
        service Hosts {
          option (grpcrpc.service) = { topic: "hosts" };
          rpc Watch(Req) returns (stream Resp);
        }
        """,
        "bad/api.proto: service Hosts: rpc Watch: streaming rpcs are not grpcrpc methods (call, cast, "
        "fanout)",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_refused_with_a_clear_message(case: str, tmp_path: pathlib.Path) -> None:
    body, message = CASES[case]
    protos = write_protos(tmp_path / "src", {"bad/api.proto": HEADER + body})
    result = protoc(tmp_path / "src", tmp_path / "out", protos, mypy=False)
    assert result.returncode != 0
    # protoc prints the plugin's error after the flag name, as it does for its own generators.
    assert f"--grpcrpc_out: {message}\n" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "out").rglob("*_grpcrpc.py"))


def test_every_error_of_a_run_is_reported(tmp_path: pathlib.Path) -> None:
    body = CASES["cast_returns_message"][0] + CASES["missing_topic"][0].replace("Hosts", "Other")
    protos = write_protos(tmp_path / "src", {"bad/api.proto": HEADER + body})
    result = protoc(tmp_path / "src", tmp_path / "out", protos, mypy=False)
    assert result.returncode != 0
    # One error per service: the author fixes them all in one round.
    assert "service Hosts: rpc Reset is a cast" in result.stderr
    assert "service Other has no topic" in result.stderr


def test_files_without_services_produce_nothing(tmp_path: pathlib.Path) -> None:
    protos = write_protos(tmp_path / "src", {"plain/types.proto": HEADER})
    result = protoc(tmp_path / "src", tmp_path / "out", protos, mypy=False)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "plain" / "types_pb2.py").exists()
    assert not (tmp_path / "out" / "plain" / "types_grpcrpc.py").exists()


def test_snake_case() -> None:
    assert snake_case("SelectDestinations") == "select_destinations"
    assert snake_case("GetHTTPHeaders") == "get_http_headers"
    assert snake_case("build_and_run_instance") == "build_and_run_instance"

"""What the plugin writes for less common layouts: clashing module names, nested messages, a proto
without a package directory, the `name` option. The modules must import and describe the contract."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

from tests.contracts.protoc import ROOT, protoc, write_protos

# A .proto comment with what could break a docstring: quotes, a backslash, triple quotes, a final quote.
COMMENT = 'Quotes and backslashes: "quoted", \\d+ and ' + '"' * 3 + ' are kept "'

PROTOS = {
    "a/common.proto": """
        syntax = "proto3";
        package a;
        message Thing { message Inner { string x = 1; } }
    """,
    "b/common.proto": """
        syntax = "proto3";
        package b;
        message Thing { string y = 1; }
    """,
    "svc/api.proto": """
        syntax = "proto3";
        package svc.v2;
        import "a/common.proto";
        import "b/common.proto";
        import "google/protobuf/empty.proto";
        import "grpcrpc/options.proto";

        service Api {
          option (grpcrpc.service) = { topic: "api" namespace: "admin" version: "2.4" };
          rpc GetThing(a.Thing.Inner) returns (b.Thing);
          rpc Poke(a.Thing) returns (google.protobuf.Empty) {
            option (grpcrpc.method) = { cast: true since: "2.3" };
          }
          rpc Legacy(b.Thing) returns (b.Thing) { option (grpcrpc.method) = { name: "legacyCall" }; }
        }
        service Second {
          option (grpcrpc.service) = { topic: "second" };
        }
    """,
    "flat.proto": """
        syntax = "proto3";
        import "google/protobuf/empty.proto";
        import "grpcrpc/options.proto";
        message Pong { string answer = 1; }
        // COMMENT
        service Flat {
          option (grpcrpc.service) = { topic: "flat" };
          rpc Ping(google.protobuf.Empty) returns (Pong);
        }
    """.replace("COMMENT", COMMENT),
}

PROBE = """
import inspect
import json
import flat_grpcrpc
from svc import api_grpcrpc

api = api_grpcrpc.API_CONTRACT
print(json.dumps({
    "service": api.service, "namespace": api.namespace, "version": api.version,
    "methods": {m.name: [m.request.DESCRIPTOR.full_name, m.response.DESCRIPTOR.full_name, m.since, m.cast]
                for m in api.methods},
    "target": [api_grpcrpc.ApiServicer.target.namespace, api_grpcrpc.ApiServicer.target.version],
    "second": [api_grpcrpc.SECOND_CONTRACT.version, list(api_grpcrpc.SECOND_CONTRACT.by_name)],
    "flat": [flat_grpcrpc.FLAT_CONTRACT.service, flat_grpcrpc.FLAT_CONTRACT.method("ping").since],
    "flat_doc": inspect.getdoc(flat_grpcrpc.FlatServicer).splitlines()[2],
    "all": sorted(api_grpcrpc.__all__),
}))
"""


def test_unusual_layouts_generate_importable_modules(tmp_path: pathlib.Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    result = protoc(src, out, write_protos(src, PROTOS), mypy=False)
    assert result.returncode == 0, result.stderr
    source = (out / "svc" / "api_grpcrpc.py").read_text()
    # Two modules named common_pb2: both get protoc's unambiguous aliases.
    assert "from a import common_pb2 as a_dot_common__pb2" in source
    assert "from b import common_pb2 as b_dot_common__pb2" in source
    assert "import flat_pb2" in (out / "flat_grpcrpc.py").read_text()
    probe = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60,
                           env={"PYTHONPATH": f"{out}:{ROOT}", "PATH": "/usr/bin:/bin"})
    assert probe.returncode == 0, probe.stderr
    got = json.loads(probe.stdout)
    assert got["service"] == "svc.v2.Api" and (got["namespace"], got["version"]) == ("admin", "2.4")
    assert got["methods"] == {
        "get_thing": ["a.Thing.Inner", "b.Thing", "2.0", False],
        "poke": ["a.Thing", "google.protobuf.Empty", "2.3", True],
        "legacyCall": ["b.Thing", "b.Thing", "2.0", False],
    }
    assert got["target"] == ["admin", "2.4"]
    assert got["second"] == ["1.0", []]
    assert got["flat"] == ["Flat", "1.0"]
    assert got["flat_doc"] == COMMENT
    assert got["all"] == ["API_CONTRACT", "ApiClient", "ApiServicer", "AsyncApiClient",
                          "AsyncSecondClient", "SECOND_CONTRACT", "SecondClient", "SecondServicer"]

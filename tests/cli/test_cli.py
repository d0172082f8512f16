"""The `grpcrpc` command line against a real etcd and a real `grpcrpc serve` process."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator

import pytest

from grpcrpc.cli import main
from grpcrpc.testing.etcd import EtcdServer

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def etcd(monkeypatch: pytest.MonkeyPatch) -> Iterator[EtcdServer]:
    with EtcdServer() as server:
        monkeypatch.setenv("GRPCRPC_ETCD_ENDPOINTS", server.endpoint)
        monkeypatch.setenv("GRPCRPC_LEASE_TTL", "5")
        yield server


@pytest.fixture
def echo_server(etcd: EtcdServer) -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, "-m", "grpcrpc.cli", "serve", "echo", "--server", "e1"],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT, env=dict(os.environ))
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("serving echo as e1 at "), line
        yield line.split()[-1]
    finally:
        proc.terminate()
        assert proc.wait(20) == 0  # SIGTERM: a clean stop


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_call_cast_fanout(echo_server: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "call", "echo", "echo", "--args", '{"value": {"a": [1, 2]}}',
                       "--output", "json")
    assert code == 0 and json.loads(out) == {"a": [1, 2]}
    assert run(capsys, "cast", "echo", "ping")[:2] == (0, "accepted\n")
    code, out, _ = run(capsys, "fanout", "echo", "ping", "--output", "json")
    assert code == 0 and json.loads(out) == {"targets": 1, "delivered": 1, "failures": []}
    code, _, err = run(capsys, "call", "echo", "fail", "--args", '{"message": "boom"}')
    assert code == 1 and "Error: the server raised RuntimeError: boom" in err


def test_endpoints_table_and_json(echo_server: str, etcd: EtcdServer,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "endpoints")
    assert code == 0
    header, row = out.splitlines()[:2]
    assert header.split()[:6] == ["AZ", "EXCHANGE", "TOPIC", "SERVER", "ADDRESS", "VERSION"]
    assert row.split()[2:5] == ["echo", "e1", echo_server]
    code, out, _ = run(capsys, "endpoints", "--topic", "echo", "--output", "json")
    [entry] = json.loads(out)
    assert entry["server"] == "e1" and entry["address"] == echo_server
    assert entry["key"].startswith("/grpcrpc/v1/endpoints/default/openstack/echo/e1/")
    assert 0 < int(entry["ttl"].rstrip("s")) <= 5
    code, out, _ = run(capsys, "endpoints", "--topic", "nothing")
    assert (code, out) == (0, "(none)\n")


def test_doctor(echo_server: str, etcd: EtcdServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "doctor")
    assert code == 0 and "all good" in out and "echo/e1" in out and "SERVING" in out
    etcd.etcdctl("put", "/grpcrpc/v1/endpoints/default/openstack/echo/zz/0", "{broken")
    code, out, _ = run(capsys, "doctor")
    assert code == 1 and "not a valid endpoint" in out and "1 problem(s) found" in out


def test_health_and_version(echo_server: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "health", echo_server)[:2] == (0, f"{echo_server} SERVING\n")
    code, out, _ = run(capsys, "version")
    assert code == 0 and out.startswith("grpcrpc")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["call", "echo", "ping", "--args", "[1]"], "--args must be a JSON object"),
        (["call", "echo", "ping", "--args", "{nope"], "--args is not JSON"),
        (["call", "echo", "ping", "--timeout", "0"], "--timeout must be positive"),
        (["call", "echo", "ping", "--etcd", "127.0.0.1:1"], "cannot reach etcd"),
        (["call", "echo", "ping", "--etcd", "not-an-address"], "etcd_endpoints (from argument)"),
        (["endpoints", "--etcd", "127.0.0.1:1"], "cannot read etcd"),
        (["health", "nothing"], "is not host:port"),
        (["call", "nobody", "ping"], "NoEndpoints: no endpoints for topic nobody"),
    ],
)
def test_user_errors_are_one_line(etcd: EtcdServer, capsys: pytest.CaptureFixture[str],
                                  argv: list[str], message: str) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 1 and err.startswith("Error: ") and message in err and "Traceback" not in err


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    with pytest.raises(SystemExit) as info:
        main(["call"])  # missing TOPIC METHOD: argparse's usage message, exit 2
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        main(["nonsense"])

"""oslo.messaging's own functional RPC tests, run against grpc:// with a real etcd.

They read `RPC_TRANSPORT_URL` (and skip without it) and monkey-patch eventlet on import, so
they run in a subprocess: `python -m pytest .../oslo_messaging/tests/functional/
test_functional.py -k "CallTestCase or CastTestCase"`. What is run and skipped, and why, is
listed in docs/oslo.md.

The URL is the driver's default, `grpc://<etcd>/`, plus `bind_host=127.0.0.1` so the test
servers listen on loopback only: what a user who sets nothing gets is what oslo's suite checks.
(`CastTestCase.test_server_in_group` casts one `sync` per server to the topic and expects each
server to get one, as RabbitMQ's turn-taking delivers; the default p2c balancer lets equally
loaded servers take turns.)

They run twice: on grpc:// alone, and in bridge mode (`rabbit_transport_url` set to a private
RabbitMQ vhost, the driver's other options at their defaults): every process of the suite is
then a bridge process, serving on both and sending calls and casts over gRPC, fanouts over
RabbitMQ.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import urllib.parse
import uuid
import xml.etree.ElementTree as ET

import oslo_messaging
import pytest

from grpcrpc.testing.etcd import EtcdServer
from tests.oslo.conftest import ENV

SUITE = pathlib.Path(oslo_messaging.__file__).parent / "tests" / "functional" / "test_functional.py"
CLASSES = ("CallTestCase", "CastTestCase")
# Skipped by oslo itself for any transport but rabbit:// (and amqp://).
RABBIT_ONLY = {"CallTestCase.test_mandatory_call", "CallTestCase.test_monitor_long_call"}


def outcomes(junit: pathlib.Path) -> dict[str, str]:
    result = {}
    for case in ET.parse(junit).iter("testcase"):
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}.{case.get('name')}"
        kinds = {child.tag for child in case}
        result[name] = ("failed" if kinds & {"failure", "error"} else
                        "skipped" if "skipped" in kinds else "passed")
    return result


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("mode", ["grpc", "bridge"])
def test_oslo_functional_rpc_tests(mode: str, etcd: EtcdServer, tmp_path: pathlib.Path,
                                   request: pytest.FixtureRequest) -> None:
    if not SUITE.exists():
        pytest.skip("this oslo.messaging wheel ships no functional tests")
    pytest.importorskip("oslotest")
    pytest.importorskip("eventlet")
    junit = tmp_path / "junit.xml"
    url = f"grpc://{etcd.endpoint}/?bind_host=127.0.0.1"
    if mode == "bridge":
        rabbit = request.getfixturevalue("rabbit")
        vhost = rabbit.add_vhost(f"functional-{uuid.uuid4().hex[:6]}")
        url += "&rabbit_transport_url=" + urllib.parse.quote(vhost, safe="")
    env = dict(ENV, RPC_TRANSPORT_URL=url)
    env.pop("NOTIFY_TRANSPORT_URL", None)
    # -c /dev/null: oslo's tests under pytest's defaults, not this repo's configuration.
    cmd = [sys.executable, "-m", "pytest", "-q", "-c", os.devnull, "--rootdir", str(tmp_path),
           "-p", "no:cacheprovider", "-W", "ignore", f"--junitxml={junit}", str(SUITE),
           "-k", " or ".join(CLASSES)]
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=840)
    assert junit.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    result = outcomes(junit)
    summary = {k: sorted(n for n, o in result.items() if o == k)
               for k in ("passed", "skipped", "failed")}
    print(f"oslo functional ({mode}): {len(summary['passed'])} passed, {len(summary['skipped'])} "
          f"skipped, {len(summary['failed'])} failed")
    assert summary["failed"] == [], done.stdout[-5000:]
    assert set(summary["skipped"]) == RABBIT_ONLY
    assert len(summary["passed"]) >= 11

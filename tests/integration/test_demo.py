"""`make demo` runs the same entry point; its printed steps are its contract.

The demo runs in a subprocess (`python -m grpcrpc.demo --quick`): it installs a global
OpenTelemetry provider and starts real processes (two etcds, seven grpcrpc servers), and
whatever it started must be gone when it returns.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

LIMIT = 60.0  # seconds: the promise for `make demo`, checked on the CI-sized run


def _run_demo() -> tuple[int, str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRPCRPC_", "OTEL_"))}
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "grpcrpc.demo", "--quick"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the demo cleans up on SIGTERM as on Ctrl-C
        out, _ = proc.communicate(timeout=20)
        pytest.fail(f"the demo took more than 90 s:\n{out}")
    return proc.returncode, out, time.monotonic() - start


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _subtree(lines: list[str], header: str) -> list[str]:
    """The lines indented under the first line containing `header`."""
    for i, line in enumerate(lines):
        if header in line:
            depth = len(line) - len(line.lstrip())
            below = []
            for nxt in lines[i + 1:]:
                if len(nxt) - len(nxt.lstrip()) <= depth:
                    break
                below.append(nxt)
            return below
    raise AssertionError(f"no line with {header!r}")


@pytest.mark.timeout(150)
def test_demo_runs_the_whole_product_and_cleans_up() -> None:
    rc, out, took = _run_demo()
    assert rc == 0, out
    assert took < LIMIT, f"the demo took {took:.1f} s\n{out}"
    lines = out.splitlines()

    for step in ("1. starting a cloud in 2 AZs", "2. what etcd holds: `grpcrpc endpoints --all-azs`",
                 "3. conductor -> scheduler (az1): call select_destinations",
                 "cast build_and_run_instance, directed with prepare(server=",
                 "5. conductor -> broadcaster (az1) -> every compute of az1: fanout",
                 "6. cross-AZ, explicitly", "7. SIGKILL compute-az1-1",
                 "8. stop az1's etcd: calls go on", "9. start az1's etcd again",
                 "10. what az1's etcd holds now", "11. the traces", "done in"):
        assert step in out, step
    assert "FAILED" not in out

    # Every process registered, and the endpoints tables list them per AZ.
    assert "[7/7]" in out
    assert out.count("AZ   EXCHANGE   TOPIC") == 3
    for name in ("scheduler-az1", "compute-az1-1", "compute-az1-2", "bcast-az1",
                 "scheduler-az2", "compute-az2-1", "bcast-az2"):
        assert re.search(rf"az\d  \S+ +\S+ +{name} +127\.0\.0\.1:\d+", out), name
    assert re.search(r"scheduler-az1 chose compute-az1-\d", out)
    assert re.search(r"compute-az1-\d\.get_instances\(\) -> \['vm-1'\]", out)
    assert re.search(r"scheduler-az2 chose compute-az2-1; build_and_run_instance\(vm-2\)", out)

    # Fanout reports: all of az1; then the dead compute failed; then gone with its lease.
    assert out.count("delivery report: 2 of 2 compute(s) accepted, 0 failed") == 1
    assert "delivery report: 1 of 2 compute(s) accepted, 1 failed" in out
    assert re.search(r"failed: compute-az1-1 \(127\.0\.0\.1:\d+\)", out)
    assert "delivery report: 1 of 1 compute(s) accepted, 0 failed" in out

    # Route around the crash; carry on through the etcd outage; register again after it.
    assert "0 failed once the client had seen the crash" in out
    calls = re.search(r"(\d+) calls in [\d.]+ s with etcd of az1 down: (\d+) ok, 0 failed", out)
    assert calls is not None and calls.group(1) == calls.group(2) and int(calls.group(1)) >= 50
    assert re.search(r'"" \(the whole server\) +NOT_SERVING', out)
    assert re.search(r'"grpcrpc\.v1\.Transport" +SERVING', out)
    assert "all 3 of az1's servers registered and SERVING again" in out

    # The trace of the fanout crosses three processes: conductor -> broadcaster -> each compute.
    fanout = _subtree(lines, "compute/update_available_resource fanout [producer]")
    assert "compute/update_available_resource broadcast [server]" in fanout[0]
    assert "grpcrpc-broadcaster@bcast-az1" in fanout[0]
    deliveries = _subtree(fanout, "broadcast [server]")
    assert len(deliveries) == 2
    assert {m.group(1) for d in deliveries if (m := re.search(r"nova-compute@(\S+)", d))
            } == {"compute-az1-1", "compute-az1-2"}
    assert all("update_available_resource process [consumer]" in d for d in deliveries)
    build = _subtree(lines, "conductor build_instances vm-1 [internal]")
    assert any("scheduler/select_destinations process [server]" in b and "nova-scheduler@" in b
               for b in build)
    assert any("compute/build_and_run_instance process [consumer]" in b and "nova-compute@" in b
               for b in build)

    # Everything it started is gone: every server process and both etcds.
    pids = {int(p) for p in re.findall(r"\(pid (\d+)\)", out) + re.findall(r" pid (\d+) ", out)}
    assert len(pids) == 2 + 7, pids
    assert not [p for p in pids if _alive(p)]
    assert re.search(r"cleaned up: 6 server process\(es\) stopped, 2 etcd\(s\) stopped", out)

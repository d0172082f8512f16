"""Rolling migration of a Nova-shaped fleet from RabbitMQ to gRPC and back, under load.

A real RabbitMQ (a private node) and a real etcd; a conductor, two schedulers and four
computes, each its own process through `get_rpc_server`/`get_rpc_client`
(`tests.oslo.fleet_main`), sending calls, directed casts and fanouts all the time. The fleet goes
through the procedure of docs/oslo.md by restarting its processes one at a time:

0. every process on `rabbit://`;
1. each process to `grpc://` with `rabbit_transport_url` (bridge);
2. each process to plain `grpc://`;
3. the RabbitMQ vhost deleted;

and back (rollback 3: vhost re-created; rollback 2: each process to bridge; rollback 1: each
to rabbit). In every phase: every call answered (none failed, none past its timeout), every
cast delivered exactly once, every fanout run exactly once by every server that was serving
when it was sent.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
import uuid

import pytest

from grpcrpc import cli
from grpcrpc.testing.etcd import EtcdServer
from tests.oslo.conftest import bridge_url, grpc_url
from tests.oslo.fleet import Fleet, analyse

# Senders before servers, as an operator might go (any order works: that is the point).
ORDER = ["conductor", "scheduler-0", "scheduler-1", "compute-0", "compute-1", "compute-2",
         "compute-3"]
SOAK = 4.0  # seconds of traffic at each steady state


def doctor(etcd: EtcdServer, rabbit_url: str) -> str:
    """`grpcrpc doctor --rabbit-url ...`: its migration lines."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cli.main(["doctor", "--etcd", etcd.endpoint, "--rabbit-url", rabbit_url])
    lines = [line for line in out.getvalue().splitlines() if "migration:" in line]
    print("\n".join(lines))
    return "\n".join(lines)


def _soak(seconds: float) -> None:
    # Traffic runs for a while at a steady state: a measured interval, not a wait for a state.
    time.sleep(seconds)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_rolling_migration_under_load(etcd: EtcdServer, rabbit: object, tmp_path: object) -> None:
    vhost = f"nova-{uuid.uuid4().hex[:6]}"
    rabbit_url = rabbit.add_vhost(vhost)  # type: ignore[attr-defined]
    # The driver's default lease TTL: the tests' short one (5 s) lapses on a loaded machine,
    # and a server whose registration lapses is, for a while, not in its callers' tables.
    urls = {"rabbit": rabbit_url, "bridge": bridge_url(etcd, rabbit_url, lease_ttl=30),
            "grpc": grpc_url(etcd, lease_ttl=30)}
    # GRPCRPC_MIGRATION_LOGS=<dir> keeps the fleet's logs there, for a look after the run.
    logdir = os.environ.get("GRPCRPC_MIGRATION_LOGS") or str(tmp_path)
    os.makedirs(logdir, exist_ok=True)
    fleet = Fleet(urls, logdir)
    phases: list[tuple[str, float, float]] = []
    current = ["", 0.0]

    def phase(name: str) -> None:
        now = time.time()
        if current[0]:
            phases.append((str(current[0]), float(current[1]), now))
        current[0], current[1] = name, now

    def move_all(kind: str) -> None:
        for name in ORDER:
            fleet.restart(name, kind)

    ok = False
    try:
        # Servers before the processes that send to them.
        fleet.start("rabbit", [*ORDER[1:], "conductor"])
        phase("0 all rabbit")
        _soak(SOAK)
        assert "step 1 (every process bridged) NOT complete" in doctor(etcd, rabbit_url)
        phase("1 to bridge")
        move_all("bridge")
        phase("1 done: all bridge")
        _soak(SOAK)
        seen = doctor(etcd, rabbit_url)
        assert "step 1 (every process bridged) complete: 0 rabbit-only" in seen
        assert "step 2 (rabbit_transport_url removed everywhere) NOT complete" in seen
        phase("2 to grpc")
        move_all("grpc")
        phase("2 done: all grpc")
        _soak(SOAK)
        seen = doctor(etcd, rabbit_url)
        assert "step 2 (rabbit_transport_url removed everywhere) complete" in seen
        assert "step 3 (retire the vhost) safe" in seen
        phase("3 vhost retired")
        rabbit.delete_vhost(vhost)  # type: ignore[attr-defined]
        _soak(SOAK)
        rabbit.add_vhost(vhost)  # type: ignore[attr-defined]
        phase("rollback 2: to bridge")
        move_all("bridge")
        phase("rollback 1: to rabbit")
        move_all("rabbit")
        phase("back on rabbit")
        _soak(SOAK)
        assert "step 1 (every process bridged) NOT complete" in doctor(etcd, rabbit_url)
        phase("")  # closes the last phase; what is sent from here on is not counted
        _soak(3.0)  # the last counted messages reach their servers
        fleet.stop_all()
        ok = True
    finally:
        if not ok:
            fleet.kill_all()
    stats = analyse(logdir, phases)
    report = {name: s.summary() for name, s in stats.items()}
    print("\nMIGRATION " + json.dumps(report, indent=1))
    problems = {name: s.errors[:10] for name, s in stats.items() if not s.perfect}
    assert not problems, json.dumps(problems, indent=1)
    for name, s in stats.items():
        assert s.calls > 0 and s.casts > 0 and s.fanouts > 0, f"{name}: no traffic"

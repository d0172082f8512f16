"""mypy (strict) checks code that uses the generated stubs: right uses pass, wrong ones are named."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[2]

GOOD = '''
from grpcrpc import FanoutReport, MemoryDiscovery
from grpcrpc.examples.nova import common_pb2, compute_pb2, scheduler_pb2
from grpcrpc.examples.nova.compute_grpcrpc import AsyncComputeClient, ComputeClient, ComputeFanoutClient
from grpcrpc.examples.nova.scheduler_grpcrpc import SchedulerClient, SchedulerServicer
from grpcrpc.plugin.runtime import serve


class Scheduler(SchedulerServicer):
    async def select_destinations(
        self, ctxt: object, request: scheduler_pb2.SelectDestinationsRequest
    ) -> scheduler_pb2.SelectDestinationsResponse:
        return scheduler_pb2.SelectDestinationsResponse()

    def update_aggregates(self, ctxt: object, request: scheduler_pb2.UpdateAggregatesRequest) -> None:
        pass


def conductor(discovery: MemoryDiscovery) -> list[str]:
    with SchedulerClient(discovery, timeout=10) as sched, ComputeClient(discovery) as compute:
        reply = sched.select_destinations({}, scheduler_pb2.SelectDestinationsRequest(instance_uuids=["i"]))
        hosts: list[str] = [d.hosts[0].service_host for d in reply.destinations]
        direct: ComputeClient = compute.prepare(server=hosts[0], timeout=5)
        direct.build_and_run_instance(
            {}, compute_pb2.BuildAndRunInstanceRequest(instance=common_pb2.Instance(uuid="i")))
        fanout: ComputeFanoutClient = compute.prepare(fanout=True)
        report: FanoutReport = fanout.update_available_resource(
            {}, compute_pb2.UpdateAvailableResourceRequest())
        assert report.ok
        return hosts


async def console(client: AsyncComputeClient) -> str:
    out = await client.prepare(server="c1").get_console_output({}, compute_pb2.GetConsoleOutputRequest())
    return out.output


server = serve(Scheduler(), server="sched1", registry=MemoryDiscovery())
'''

BAD = '''
from grpcrpc import MemoryDiscovery
from grpcrpc.examples.nova import compute_pb2, scheduler_pb2
from grpcrpc.examples.nova.compute_grpcrpc import ComputeClient
from grpcrpc.examples.nova.scheduler_grpcrpc import SchedulerClient, SchedulerServicer


class Scheduler(SchedulerServicer):
    def select_destinations(
        self, ctxt: object, request: scheduler_pb2.SelectDestinationsRequest
    ) -> compute_pb2.GetConsoleOutputResponse:
        return compute_pb2.GetConsoleOutputResponse()


def conductor(discovery: MemoryDiscovery) -> None:
    sched = SchedulerClient(discovery)
    compute = ComputeClient(discovery)
    sched.select_destinations({}, compute_pb2.GetConsoleOutputRequest())
    wrong: compute_pb2.GetConsoleOutputResponse = sched.select_destinations(
        {}, scheduler_pb2.SelectDestinationsRequest())
    compute.prepare(fanout=True).build_and_run_instance({}, compute_pb2.BuildAndRunInstanceRequest())
    compute.prepare(namespace="other")
'''


def test_mypy_checks_callers_of_the_stubs(tmp_path: pathlib.Path) -> None:
    (tmp_path / "good.py").write_text(textwrap.dedent(GOOD))
    (tmp_path / "bad.py").write_text(textwrap.dedent(BAD))
    # The repository's mypy settings (strict; stubs-less grpc ignored), run from its root so that
    # `grpcrpc` is this checkout; a private cache so that concurrent runs cannot interfere.
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "--strict",
         "--cache-dir", str(tmp_path / "cache"), "--no-error-summary", "--hide-error-context",
         str(tmp_path / "good.py"), str(tmp_path / "bad.py")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    errors = [re.sub(r"^.*?(good|bad)\.py:(\d+): ", r"\1:\2: ", line)
              for line in result.stdout.splitlines() if ": error:" in line]
    assert result.returncode == 1, result.stdout + result.stderr
    assert not [e for e in errors if e.startswith("good")], errors
    expected = [
        'Return type "GetConsoleOutputResponse" of "select_destinations" incompatible with return type '
        '"SelectDestinationsResponse | Awaitable[SelectDestinationsResponse]" in supertype',
        'Argument 2 to "select_destinations" of "SchedulerClient" has incompatible type '
        '"GetConsoleOutputRequest"; expected "SelectDestinationsRequest"  [arg-type]',
        'Incompatible types in assignment (expression has type "SelectDestinationsResponse", variable '
        'has type "GetConsoleOutputResponse")  [assignment]',
        '"ComputeFanoutClient" has no attribute "build_and_run_instance"  [attr-defined]',
        # The contract fixes the namespace: prepare() does not take one.
        'Unexpected keyword argument "namespace" for overloaded function "prepare" of "ComputeClient"',
    ]
    for message in expected:
        assert any(message in e for e in errors), f"missing {message!r} in:\n" + "\n".join(errors)
    assert len(errors) == len(expected), "\n".join(errors)

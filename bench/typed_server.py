"""Server process for bench_typed: `python -m bench.typed_server CORE`.

One process, pinned to CORE, runs two RPCServers on one loop: the generated Nova scheduler servicer
(typed) and a dict-style endpoint doing the same work, so both sides of the comparison share the
core, the loop and the limits. Prints "ADDRESS <typed> <dict>" once both serve.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from grpcrpc import Limits, RPCServer, Target
from grpcrpc.examples.nova import scheduler_pb2
from grpcrpc.examples.nova.scheduler_grpcrpc import SchedulerServicer
from grpcrpc.plugin.runtime import serve

DICT_TOPIC = "scheduler_dict"
LIMITS = Limits(coroutines=4096, stream_in_flight=4096)


class TypedScheduler(SchedulerServicer):
    async def select_destinations(
        self, ctxt: Any, request: scheduler_pb2.SelectDestinationsRequest
    ) -> scheduler_pb2.SelectDestinationsResponse:
        host = f"compute{request.spec.flavor.vcpus}"
        return scheduler_pb2.SelectDestinationsResponse(destinations=[
            scheduler_pb2.Destinations(hosts=[
                scheduler_pb2.Selection(service_host=f"{host}-{i}", nodename=uuid, cell_uuid="cell1")
                for i in range(3)
            ]) for uuid in request.instance_uuids
        ])


class DictScheduler:
    """The same work, written against the dict-style API."""

    target = Target(version="4.5")

    async def select_destinations(self, ctxt: Any, spec: dict[str, Any], instance_uuids: list[str],
                                  return_alternates: bool = False) -> dict[str, Any]:
        host = f"compute{spec['flavor']['vcpus']}"
        return {"destinations": [
            {"hosts": [{"service_host": f"{host}-{i}", "nodename": uuid, "cell_uuid": "cell1"}
                       for i in range(3)]}
            for uuid in instance_uuids
        ]}


async def main() -> None:
    typed = serve(TypedScheduler(), server="b1", limits=LIMITS)
    plain = RPCServer(Target(topic=DICT_TOPIC, server="b1", exchange="nova"), [DictScheduler()],
                      limits=LIMITS)
    await typed.start()
    await plain.start()
    print("ADDRESS", typed.address, plain.address, flush=True)
    await typed.wait()


if __name__ == "__main__":
    core = int(sys.argv[1])
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {core})
    asyncio.run(main())

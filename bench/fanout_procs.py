"""Processes for the fanout benchmark.

`python fanout_procs.py servers CORE COUNT PREFIX` — hosts COUNT RPCServers (topic "compute") in
one process; prints one JSON line with their endpoints, then serves until killed.
`python fanout_procs.py broadcaster CORE NAME PORT SPLIT TABLE.json` — a Broadcaster on PORT,
routing from the static table in TABLE.json, splitting topics larger than SPLIT; prints
"ADDRESS host:port".
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
from typing import Any

from grpcrpc import Limits, RPCServer, StaticResolver, Target
from grpcrpc.broadcaster import Broadcaster, BroadcasterOptions


class Compute:
    async def update(self, ctxt: Any, n: int) -> None:
        pass


async def host_servers(count: int, prefix: str) -> None:
    servers = [RPCServer(Target(topic="compute", server=f"{prefix}{i}"), [Compute()],
                         limits=Limits(threads=1, queue=1)) for i in range(count)]
    for s in servers:
        await s.start()
    print(json.dumps([dataclasses.asdict(s.endpoint) for s in servers if s.endpoint]), flush=True)
    await asyncio.Event().wait()


async def broadcaster(name: str, port: int, split: int, table: str) -> None:
    b = Broadcaster(StaticResolver.from_file(table), name=name, port=port,
                    options=BroadcasterOptions(split_threshold=split))
    await b.start()
    print("ADDRESS", b.address, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    kind, core = sys.argv[1], int(sys.argv[2])
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {core})
    if kind == "servers":
        asyncio.run(host_servers(int(sys.argv[3]), sys.argv[4]))
    else:
        asyncio.run(broadcaster(sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]))

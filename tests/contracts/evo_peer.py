"""One side of the version-evolution tests, run in its own process with one generated version of
the `evo` schema on PYTHONPATH (two versions of one schema cannot share a descriptor pool).

    python -m tests.contracts.evo_peer serve            prints "ADDRESS host:port", serves until stdin closes
    python -m tests.contracts.evo_peer client ADDRESS   prints what each step got, as JSON
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from evo import inventory_grpcrpc as gen  # type: ignore[import-not-found]
from evo import inventory_pb2 as pb  # type: ignore[import-not-found]

from grpcrpc import Endpoint, GrpcrpcError, StaticResolver
from grpcrpc.plugin.runtime import serve

HAS = set(pb.GetRequest.DESCRIPTOR.fields_by_name) | set(pb.GetResponse.DESCRIPTOR.fields_by_name)


class Inventory(gen.InventoryServicer):  # type: ignore[misc]
    def get(self, ctxt: Any, request: Any) -> Any:
        reply = pb.GetResponse(name=request.name, count=len(request.name))
        if "owner" in HAS:  # the new server fills the new field from the new request field
            reply.owner = "verbose" if request.verbose else "quiet"
        return reply

    def reserve(self, ctxt: Any, request: Any) -> Any:
        return pb.ReserveResponse(ok=request.count <= 3)


class OldInventory(gen.InventoryServicer):  # type: ignore[misc]
    """What a 1.0 server's code looks like: it knows nothing of reserve()."""

    get = Inventory.get


async def run_server() -> None:
    servicer = Inventory() if "reserve" in gen.INVENTORY_CONTRACT.by_name else OldInventory()
    server = serve(servicer, server="inv1")
    await server.start()
    print("ADDRESS", server.address, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until stdin closes
    await server.stop(grace=1.0)


def outcome(step: Any) -> Any:
    try:
        return step()
    except GrpcrpcError as err:
        return {"error": type(err).__name__, "message": str(err)}


def run_client(address: str) -> dict[str, Any]:
    resolver = StaticResolver([Endpoint(address, "inventory", "inv1")] if address != "-" else [])
    client = gen.InventoryClient(resolver, timeout=10)
    request = pb.GetRequest(name="disk", **({"verbose": True} if "verbose" in HAS else {}))

    def get() -> dict[str, Any]:
        reply = client.get({}, request)
        return {"name": reply.name, "count": reply.count, "owner": getattr(reply, "owner", None),
                # An old client keeps a new field it does not know as unknown bytes.
                "raw_has_owner": b"verbose" in reply.SerializeToString()
                or b"quiet" in reply.SerializeToString()}

    results: dict[str, Any] = {"client_version": gen.INVENTORY_CONTRACT.version, "get": outcome(get)}
    if "reserve" in gen.INVENTORY_CONTRACT.by_name:
        ask = pb.ReserveRequest(name="disk", count=2)
        results["reserve"] = outcome(lambda: {"ok": client.reserve({}, ask).ok})
        capped = client.prepare(version_cap="1.0")
        results["capped_reserve"] = outcome(lambda: {"ok": capped.reserve({}, ask).ok})
        results["capped_get"] = outcome(lambda: capped.get({}, request).name)
    client.close()
    return results


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        asyncio.run(run_server())
    else:
        print(json.dumps(run_client(sys.argv[2])))

"""A grpcrpc server in its own process, for tests that kill it.

Usage: python server_main.py TOPIC SERVER   — prints "ADDRESS host:port" once serving, and
"IN-CALL" when its `hang` or `nap` endpoint starts (so the test knows a call is in flight), and
"EXEC key" each time `record` runs.
"""

import asyncio
import os
import sys
import time

from grpcrpc import RPCServer, Target


class Endpoints:
    def hang(self, ctxt: dict[str, object]) -> None:
        print("IN-CALL", flush=True)
        import threading

        threading.Event().wait(600)  # hangs until the test kills this process

    async def ahang(self, ctxt: dict[str, object]) -> None:
        print("IN-CALL", flush=True)
        await asyncio.Event().wait()  # hangs until the test kills this process

    def echo(self, ctxt: dict[str, object], value: object) -> object:
        return value

    def whoami(self, ctxt: dict[str, object]) -> str:
        return sys.argv[2]

    def record(self, ctxt: dict[str, object], key: str, seconds: float = 0.0,
               blob: str = "") -> str:
        """Say on stdout that `key` runs here (one write: lines never interleave), so a test
        can count executions per server, even of a server it kills."""
        os.write(1, f"EXEC {key}\n".encode())
        time.sleep(seconds)
        return sys.argv[2]

    def nap(self, ctxt: dict[str, object], seconds: float) -> str:
        print("IN-CALL", flush=True)
        time.sleep(seconds)
        return sys.argv[2]


async def main() -> None:
    server = RPCServer(Target(topic=sys.argv[1], server=sys.argv[2]), [Endpoints()])
    await server.start()
    print("ADDRESS", server.address, flush=True)
    await server.wait()


if __name__ == "__main__":
    asyncio.run(main())

"""The cost of security: calls/s and p50 with TLS, mTLS and token auth, as ratios to plaintext.

One server process per mode on the server core (same endpoints), the client on the client core,
modes alternating within each repetition. Certificates are made with the openssl CLI in a temp
dir. Measured with the asyncio client: sequential calls, and 64 in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import subprocess
import sys
import tempfile
from typing import Any

from bench.common import SERVER_CORE, Series, call_profile, pin_client, print_table, run_async

MODES = ("plaintext", "tls", "mtls", "token")
TOKEN = "bench-token-0123456789abcdef"


def make_certs(d: pathlib.Path) -> None:
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=ca",
        "-keyout", "ca.key", "-out", "ca.pem")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout",
            f"{name}.key", "-out", f"{name}.csr")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", f"{name}.pem")


def serve(mode: str, certs: str) -> None:
    os.sched_setaffinity(0, {SERVER_CORE})
    from grpcrpc import Limits, RPCServer, ServerTLS, Target
    from grpcrpc.auth import ServerAuth, Tokens

    class Echo:
        async def echo(self, ctxt: Any, x: Any) -> Any:
            return x

    tls = None
    if mode in ("tls", "mtls"):
        tls = ServerTLS(f"{certs}/server.pem", f"{certs}/server.key",
                        f"{certs}/ca.pem" if mode == "mtls" else None)
    auth = None
    if mode == "token":
        auth = ServerAuth(tokens=Tokens({TOKEN: "bench"}))
    elif mode == "mtls":
        auth = ServerAuth(mtls=True)

    async def main() -> None:
        server = RPCServer(Target(topic="bench", server="b"), [Echo()], tls=tls, auth=auth,
                           limits=Limits(coroutines=4096, stream_in_flight=4096,
                                         per_connection=4096))
        await server.start()
        print("ADDRESS", server.address, flush=True)
        await server.wait()

    asyncio.run(main())


def measure(mode: str, address: str, certs: str, n: int) -> tuple[float, float, float]:
    from grpcrpc import AsyncRPCClient, ClientTLS, Endpoint, StaticResolver, Target, TransportOptions

    tls = None
    if mode == "tls":
        tls = ClientTLS(f"{certs}/ca.pem")
    elif mode == "mtls":
        tls = ClientTLS(f"{certs}/ca.pem", f"{certs}/client.pem", f"{certs}/client.key")
    opts = TransportOptions(tls=tls, token=TOKEN if mode == "token" else None)

    async def go() -> tuple[float, float, float]:
        resolver = StaticResolver([Endpoint(address, "bench", "b", tls=tls is not None)])
        async with AsyncRPCClient(resolver, Target(topic="bench"), timeout=10, options=opts) as c:
            r = await call_profile(lambda i: c.call({}, "echo", x=i), n)
        return r["p50"], r["seq"], r["c64"]

    return run_async(go())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.reps, args.calls = 1, 50
    pin_client()
    certs = tempfile.mkdtemp(prefix="grpcrpc-bench-pki-")
    make_certs(pathlib.Path(certs))
    me = [sys.executable, "-m", "bench.bench_security"]
    procs = {m: subprocess.Popen([*me, "--serve", m, certs], stdout=subprocess.PIPE, text=True)
             for m in MODES}
    results: dict[str, dict[str, Series]] = {m: {} for m in MODES}
    try:
        addresses = {}
        for m, proc in procs.items():
            assert proc.stdout is not None
            addresses[m] = proc.stdout.readline().split()[1]
        for rep in range(args.reps):
            print(f"repetition {rep + 1}/{args.reps} ...", flush=True)
            for m in MODES:
                p50, seq, c64 = measure(m, addresses[m], certs, args.calls)
                for k, v in (("p50", p50), ("seq", seq), ("c64", c64)):
                    results[m].setdefault(k, Series()).values.append(v)
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()
    base = results["plaintext"]
    rows = []
    for key, scenario, unit in (("p50", "call sequential, asyncio: p50", "ms"),
                                ("seq", "call sequential, asyncio: rate", "/s"),
                                ("c64", "call, 64 in flight, asyncio", "/s")):
        for m in MODES:
            rows.append((scenario, m, results[m][key], unit, None if m == "plaintext" else base[key],
                         key == "p50"))
    print_table(rows, section="security")


if __name__ == "__main__":
    if len(sys.argv) > 3 and sys.argv[1] == "--serve":
        serve(sys.argv[2], sys.argv[3])
    else:
        main()

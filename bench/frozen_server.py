"""A server that freezes under load, through oslo.messaging's API (issue 19, part 4).

Three oslo RPC servers of one topic (each its own process, threading executor) behind a
`grpc://` transport URL with the driver's defaults; eight threads call without pause and one
thread casts every 10 ms on a transport of its own (as another service would: its balancer does
not see the callers' calls stuck on the frozen server, so it keeps picking it). After a warm-up
one server is stopped (SIGSTOP: its connections stay open, nothing answers) for `--freeze`
seconds, then continued (SIGCONT), and the load runs a little longer. Printed: calls made and
failed (by exception), the longest call, the longest time a cast blocked its caller, casts
failed, calls completed while the server was frozen, and the longest gap without a completed
call.

    python -m bench.frozen_server [--freeze 15] [--warmup 5] [--after 5]
    python -m bench.frozen_server serve URL TOPIC SERVER      (a server process, used by the run)

To measure another checkout of grpcrpc (say the code before the fix), run this file from that
tree: copy it to `<tree>/bench/` and run `python -m bench.frozen_server` there — the servers and
the client import grpcrpc from the current directory, and each prints where it got it from.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import logging
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

from bench.bench_oslo import _entry_point_env

ROOT = pathlib.Path(__file__).resolve().parents[1]
CALLERS = 8
CAST_EVERY = 0.010


class Endpoint:
    def echo(self, ctxt: Any, x: Any) -> Any:
        return x

    def consume(self, ctxt: Any, x: Any) -> None:
        return None


def serve(url: str, topic: str, name: str) -> None:
    warnings.simplefilter("ignore")
    logging.basicConfig(level=logging.ERROR)
    import oslo_messaging
    from oslo_config import cfg

    import grpcrpc

    transport = oslo_messaging.get_rpc_transport(cfg.CONF, url=url)
    server = oslo_messaging.get_rpc_server(
        transport, oslo_messaging.Target(topic=topic, server=name), [Endpoint()],
        executor="threading")
    server.start()
    print("READY", pathlib.Path(grpcrpc.__file__).parent, flush=True)
    sys.stdin.read()
    server.stop()
    server.wait()
    transport.cleanup()


@contextlib.contextmanager
def servers(env: dict[str, str], url: str, topic: str, n: int) -> Iterator[list[subprocess.Popen[str]]]:
    procs = [subprocess.Popen([sys.executable, "-m", "bench.frozen_server", "serve", url, topic,
                               f"s{i}"], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for i in range(n)]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline().split()
            if line[:1] != ["READY"]:
                raise RuntimeError("a server did not start")
            print(f"server pid {proc.pid}: grpcrpc from {line[1]}", flush=True)
        yield procs
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)  # a stopped server must run to exit
            with contextlib.suppress(BrokenPipeError):
                assert proc.stdin is not None
                proc.stdin.close()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls = 0
        self.failed: collections.Counter[str] = collections.Counter()
        self.longest_call = 0.0
        self.casts = 0
        self.casts_failed: collections.Counter[str] = collections.Counter()
        self.longest_cast = 0.0
        self.completions: list[float] = []  # when each call completed


def run(url: str, env: dict[str, str], args: argparse.Namespace) -> None:
    import oslo_messaging
    from oslo_config import cfg

    import grpcrpc

    print(f"client: grpcrpc from {pathlib.Path(grpcrpc.__file__).parent}", flush=True)
    topic = f"frozen-{uuid.uuid4().hex[:6]}"
    transport = oslo_messaging.get_rpc_transport(cfg.CONF, url=url)
    client = oslo_messaging.get_rpc_client(transport, oslo_messaging.Target(topic=topic))
    cast_transport = oslo_messaging.get_rpc_transport(cfg.CONF, url=url)
    cast_client = oslo_messaging.get_rpc_client(cast_transport, oslo_messaging.Target(topic=topic))
    tally = Tally()
    stop = threading.Event()

    def caller() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                client.call({}, "echo", x=1)
                ok = True
            except Exception as exc:  # counted by type: that is the measurement
                ok = False
                name = type(exc).__name__
            took = time.monotonic() - started
            with tally.lock:
                tally.calls += 1
                tally.longest_call = max(tally.longest_call, took)
                if ok:
                    tally.completions.append(time.monotonic())
                else:
                    tally.failed[name] += 1

    def caster() -> None:
        i = 0
        while not stop.is_set():
            started = time.monotonic()
            try:
                cast_client.cast({}, "consume", x=i)
                name = ""
            except Exception as exc:  # counted by type: that is the measurement
                name = type(exc).__name__
            took = time.monotonic() - started
            with tally.lock:
                tally.casts += 1
                tally.longest_cast = max(tally.longest_cast, took)
                if name:
                    tally.casts_failed[name] += 1
            i += 1
            stop.wait(CAST_EVERY)

    try:
        with servers(env, url, topic, 3) as procs:
            pool = [threading.Thread(target=caller) for _ in range(CALLERS)]
            pool.append(threading.Thread(target=caster))
            for t in pool:
                t.start()
            try:
                time.sleep(args.warmup)  # the load runs meanwhile
                os.kill(procs[0].pid, signal.SIGSTOP)
                frozen_at = time.monotonic()
                try:
                    time.sleep(args.freeze)
                finally:
                    os.kill(procs[0].pid, signal.SIGCONT)
                thawed_at = time.monotonic()
                time.sleep(args.after)
            finally:
                stop.set()
                for t in pool:
                    t.join(120)
    finally:
        transport.cleanup()
        cast_transport.cleanup()
    done = sorted(tally.completions)
    during = sum(1 for t in done if frozen_at <= t < thawed_at)
    edges = [frozen_at, *(t for t in done if frozen_at <= t < thawed_at), thawed_at]
    gap = max(b - a for a, b in itertools.pairwise(edges))
    print(f"calls: {tally.calls}, failed: {sum(tally.failed.values())} {dict(tally.failed)}")
    print(f"longest call: {tally.longest_call:.2f} s")
    print(f"casts: {tally.casts}, failed: {sum(tally.casts_failed.values())} "
          f"{dict(tally.casts_failed)}")
    print(f"longest caster block: {tally.longest_cast:.2f} s")
    print(f"calls completed during the {args.freeze:g} s freeze: {during}; longest gap without "
          f"a completed call: {gap:.2f} s")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        serve(*argv[1:4])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--freeze", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--after", type=float, default=5.0)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    logging.basicConfig(level=logging.ERROR)
    env = _entry_point_env()
    from grpcrpc.testing.etcd import EtcdServer

    with EtcdServer() as etcd:
        run(f"grpc://{etcd.endpoint}/?bind_host=127.0.0.1", env, args)


if __name__ == "__main__":
    main()

"""oslo.messaging over RabbitMQ vs over grpc://, side by side: the same oslo-API workload.

Sequential call latency and rate, calls with 32 client threads, casts (counted when the server
consumed them) from 32 threads, fanout casts to 5, 10 and 100 servers (a rate: fanouts sent
back to back, counted when every server consumed every one), and the time one fanout takes to
reach every one of 10 and of 100 servers (RabbitMQ's fanout exchange vs grpc:// from the
client; each server notes when it consumed it, on the machine's monotonic clock). The 5
servers are 5 processes; the 10 and the 100 share one process, on one transport. Servers are
oslo RPC servers (threading executor) pinned to core 1, with the RabbitMQ broker; the client is
pinned to core 0. etcd (grpc://) is idle on the call path.
Repetitions alternate rabbit/grpc; ratios are grpc:// to rabbit://.

RabbitMQ is Debian's `rabbitmq-server`: when it is missing, a full run installs it with apt-get
(`--rabbitmq skip` to run grpc:// alone); `--smoke` uses it only if already installed. A broker
this run started is stopped at the end.

    python -m bench.bench_oslo [--smoke] [--reps N] [--rabbitmq auto|install|skip]
    python -m bench.bench_oslo serve URL TOPIC SERVER      (a server process, used by the run)
    python -m bench.bench_oslo serve-many URL TOPIC N      (N servers in one process)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import importlib.metadata
import logging
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from bench.common import CLIENT_CORE, SERVER_CORE, Series, busy_fraction, percentile, print_table
from bench.results import record

ROOT = pathlib.Path(__file__).resolve().parents[1]
THREADS = 32
FANOUT_SERVERS = 5
WIDE_FANOUTS = (10, 100)  # servers a fanout's delivery time is measured for


# -- the server processes ---------------------------------------------------------------------

class BenchEndpoint:
    def __init__(self) -> None:
        self.consumed = 0
        self._lock = threading.Lock()

    def echo(self, ctxt: Any, x: Any) -> Any:
        return x

    def consume(self, ctxt: Any, x: Any) -> None:
        with self._lock:
            self.consumed += 1

    def count(self, ctxt: Any) -> int:
        return self.consumed


def serve(url: str, topic: str, name: str) -> None:
    _pin(SERVER_CORE)
    # Quiet servers: deprecation notices and per-process warnings would bury the table.
    warnings.simplefilter("ignore")
    logging.basicConfig(level=logging.ERROR)
    import oslo_messaging
    from oslo_config import cfg

    transport = oslo_messaging.get_rpc_transport(cfg.CONF, url=url)
    server = oslo_messaging.get_rpc_server(
        transport, oslo_messaging.Target(topic=topic, server=name), [BenchEndpoint()],
        executor="threading")
    server.start()
    print("READY", flush=True)
    sys.stdin.read()
    server.stop()
    server.wait()
    transport.cleanup()


MANY_POOL = 4  # executor threads per server of a serve-many process


class Arrivals:
    """Shared by every server of a serve-many process: when each consumed fanout `seq`, and
    how many `consume` casts they consumed in all."""

    def __init__(self) -> None:
        self.times: dict[int, list[float]] = {}
        self.consumed = 0
        self._lock = threading.Lock()

    def consume(self, ctxt: Any, x: Any) -> None:
        with self._lock:
            self.consumed += 1

    def count(self, ctxt: Any) -> int:
        return self.consumed

    def mark(self, ctxt: Any, seq: int) -> None:
        now = time.monotonic()
        with self._lock:
            self.times.setdefault(seq, []).append(now)

    def arrivals(self, ctxt: Any, seq: int) -> list[float]:
        with self._lock:
            return list(self.times.get(seq, ()))


def serve_many(url: str, topic: str, count: str) -> None:
    """`count` oslo RPC servers of `topic` (w0, w1, ...) in one process, on one transport."""
    _pin(SERVER_CORE)
    warnings.simplefilter("ignore")
    logging.basicConfig(level=logging.ERROR)
    import oslo_messaging
    from oslo_config import cfg

    # oslo's threading executor (futurist) starts a thread per message until it has
    # `executor_thread_pool_size` (64) per server: 100 servers in one process grew ~4,800
    # threads within a few fanouts and then answered nothing for minutes, over RabbitMQ and
    # gRPC alike. A service runs one server per process; here each of the many gets 4.
    transport = oslo_messaging.get_rpc_transport(cfg.CONF, url=url)
    arrivals = Arrivals()
    servers = [oslo_messaging.get_rpc_server(
        transport, oslo_messaging.Target(topic=topic, server=f"w{i}"), [arrivals],
        executor="threading") for i in range(int(count))]
    for server in servers:
        server.start(override_pool_size=MANY_POOL)
    print("READY", flush=True)
    sys.stdin.read()
    for server in servers:
        server.stop()
    for server in servers:
        server.wait()
    transport.cleanup()


def _pin(core: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {core})


def _entry_point_env() -> dict[str, str]:
    """The environment for this run's processes. Until pyproject.toml declares the `grpc`
    driver entry point, a throwaway dist-info declaring it goes on PYTHONPATH (a no-op once
    the real one is installed)."""
    paths = [str(ROOT)]
    if not any(ep.name == "grpc"
               for ep in importlib.metadata.entry_points(group="oslo.messaging.drivers")):
        shim = tempfile.mkdtemp(prefix="bench-oslo-ep-")
        info = pathlib.Path(shim, "grpcrpc_oslo_bench_entry_points-0.dist-info")
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: grpcrpc-oslo-bench\n"
                                       "Version: 0\n")
        (info / "entry_points.txt").write_text(
            "[oslo.messaging.drivers]\ngrpc = grpcrpc.oslo.driver:GrpcDriver\n")
        sys.path.insert(0, shim)
        importlib.invalidate_caches()
        paths.insert(0, shim)
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        [*paths, *filter(None, [os.environ.get("PYTHONPATH")])]))


@contextlib.contextmanager
def servers(env: dict[str, str], url: str, topic: str, names: list[str],
            many: int = 0) -> Iterator[None]:
    """One process per name, or (`many`) one process with that many servers."""
    commands = ([["serve-many", url, topic, str(many)]] if many else
                [["serve", url, topic, n] for n in names])
    procs = [subprocess.Popen([sys.executable, "-m", "bench.bench_oslo", *command],
                              cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True) for command in commands]
    try:
        for proc in procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "READY":
                raise RuntimeError(f"a server for {url} did not start")
        yield
    finally:
        for proc in procs:
            with contextlib.suppress(BrokenPipeError):
                assert proc.stdin is not None
                proc.stdin.close()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# -- RabbitMQ, from Debian --------------------------------------------------------------------

def _install_rabbitmq() -> None:
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    print("installing rabbitmq-server from Debian ...", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "rabbitmq-server"], check=True,
                   env=env, stdout=subprocess.DEVNULL)


@contextlib.contextmanager
def rabbitmq(mode: str) -> Iterator[str | None]:
    """Yields the URL of a broker of this run's own (None: grpc:// only), stopped afterwards.

    A private node (`grpcrpc.testing.rabbit`: its own name, ports and directories), so a system
    broker, or another run's, is never touched.
    """
    if mode == "skip":
        yield None
        return
    from grpcrpc.testing.rabbit import RabbitServer, rabbitmq_installed

    if not rabbitmq_installed():
        if mode != "install":
            print("rabbitmq-server is not installed: running grpc:// only", flush=True)
            yield None
            return
        _install_rabbitmq()
    # On the server core, like the RPC servers: the broker is the incumbent's server side.
    with RabbitServer(cpus=str(SERVER_CORE)) as server:
        yield server.url


# -- the workload (the same oslo API calls for both transports) ---------------------------

def sequential(client: Any, n: int) -> tuple[float, float]:
    for i in range(min(50, n)):
        client.call({}, "echo", x=i)
    lat = []
    start = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        client.call({}, "echo", x=i)
        lat.append(time.perf_counter() - t)
    return percentile(lat, 0.5), n / (time.perf_counter() - start)


def threaded(send: Callable[[int], object], n: int) -> float:
    counter = iter(range(n))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            send(i)

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        for f in [pool.submit(worker) for _ in range(THREADS)]:
            f.result()
    return n / (time.perf_counter() - start)


def casts(client: Any, n: int) -> float:
    before = client.call({}, "count")
    start = time.perf_counter()
    threaded(lambda i: client.cast({}, "consume", x=i), n)
    _wait_count(lambda: client.call({}, "count"), before + n)
    return n / (time.perf_counter() - start)


def fanouts(client: Any, names: list[str], k: int) -> float:
    directed = [client.prepare(server=name) for name in names]
    before = [c.call({}, "count") for c in directed]
    fan = client.prepare(fanout=True)
    start = time.perf_counter()
    for i in range(k):
        fan.cast({}, "consume", x=i)
    for c, b in zip(directed, before, strict=True):
        _wait_count(lambda c=c: c.call({}, "count"), b + k)
    return k / (time.perf_counter() - start)


def wide_fanout_rate(client: Any, n: int, k: int) -> float:
    """Fanouts/s to the `n` servers of one serve-many process, until all consumed all `k`."""
    probe = client.prepare(server="w0")  # any server answers for the whole process
    before = probe.call({}, "count")
    fan = client.prepare(fanout=True)
    start = time.perf_counter()
    for i in range(k):
        fan.cast({}, "consume", x=i)
    _wait_count(lambda: probe.call({}, "count"), before + k * n)
    return k / (time.perf_counter() - start)


def wide_fanout(client: Any, n: int, k: int) -> float:
    """Median time from a fanout cast until the last of `n` servers consumed it."""
    probe = client.prepare(server="w0")
    fan = client.prepare(fanout=True)
    for seq in range(-3, 0):  # warm-up: connections to every server
        fan.cast({}, "mark", seq=seq)
        _wait_count(lambda seq=seq: len(probe.call({}, "arrivals", seq=seq)), n)
    took = []
    for seq in range(k):
        start = time.monotonic()
        fan.cast({}, "mark", seq=seq)
        _wait_count(lambda seq=seq: len(probe.call({}, "arrivals", seq=seq)), n)
        took.append(max(probe.call({}, "arrivals", seq=seq)) - start)
    return percentile(took, 0.5)


def _wait_count(read: Callable[[], int], target: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while read() < target:
        if time.monotonic() > deadline:
            raise RuntimeError(f"servers consumed fewer than {target} messages in {timeout}s")
        time.sleep(0.002)


def run_one(url: str, env: dict[str, str], args: argparse.Namespace) -> dict[str, float]:
    import oslo_messaging
    from oslo_config import cfg

    topic, fan_topic = f"bench-{uuid.uuid4().hex[:6]}", f"fan-{uuid.uuid4().hex[:6]}"
    names = [f"f{i}" for i in range(FANOUT_SERVERS)]
    if url.startswith("rabbit"):
        # Fair to the broker: a connection pool for every client thread (its default, 30, is
        # below the 32 threads and made callers wait for connections).
        from oslo_messaging._drivers import impl_rabbit

        cfg.CONF.register_opts(impl_rabbit.rabbit_opts, group="oslo_messaging_rabbit")
        cfg.CONF.set_override("rpc_conn_pool_size", 2 * THREADS, group="oslo_messaging_rabbit")
    transport = oslo_messaging.get_rpc_transport(cfg.CONF, url=url)
    result: dict[str, float] = {}
    try:
        client = oslo_messaging.get_rpc_client(
            transport, oslo_messaging.Target(topic=topic), timeout=60)
        with servers(env, url, topic, ["s1"]):
            result["p50"], result["seq"] = sequential(client, args.calls)
            result["threads"] = threaded(lambda i: client.call({}, "echo", x=i), args.calls * 3)
            result["casts"] = casts(client, args.casts)
        fan_client = oslo_messaging.get_rpc_client(
            transport, oslo_messaging.Target(topic=fan_topic), timeout=60)
        with servers(env, url, fan_topic, names):
            result["fanout"] = fanouts(fan_client, names, args.fanouts)
        for n in args.wide:
            wide_topic = f"wide-{uuid.uuid4().hex[:6]}"
            wide_client = oslo_messaging.get_rpc_client(
                transport, oslo_messaging.Target(topic=wide_topic), timeout=60)
            try:
                with servers(env, url, wide_topic, [], many=n):
                    result[f"wide{n}"] = wide_fanout(wide_client, n, args.wide_fanouts)
                    result[f"rate{n}"] = wide_fanout_rate(
                        wide_client, n, max(5, args.fanouts * FANOUT_SERVERS // n))
            except Exception as exc:  # one scenario must not lose the repetition's others
                print(f"!! {url.split(':')[0]}: fanout to {n} servers failed: "
                      f"{type(exc).__name__}: {exc}", flush=True)
    finally:
        transport.cleanup()
    return result


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        serve(*argv[1:4])
        return
    if argv[:1] == ["serve-many"]:
        serve_many(*argv[1:4])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--casts", type=int, default=5000)
    parser.add_argument("--fanouts", type=int, default=300)
    parser.add_argument("--wide-fanouts", type=int, default=20,
                        help=f"fanouts timed for each of {WIDE_FANOUTS} servers")
    parser.add_argument("--rabbitmq", choices=["auto", "install", "skip"], default="auto",
                        help="auto: install when missing, except with --smoke")
    parser.add_argument("--smoke", action="store_true", help="tiny counts: checks it runs")
    args = parser.parse_args(argv)
    args.wide = WIDE_FANOUTS
    if args.smoke:
        args.reps, args.calls, args.casts, args.fanouts = 1, 30, 100, 5
        args.wide, args.wide_fanouts = (3,), 2
    mode = "install" if args.rabbitmq == "auto" and not args.smoke else args.rabbitmq
    _pin(CLIENT_CORE)
    busy = busy_fraction()
    if busy > 0.15 and not args.smoke:
        print(f"warning: the machine was {busy:.0%} busy before the run; figures will be noisy")
    env = _entry_point_env()
    from grpcrpc.testing.etcd import EtcdServer

    s: dict[str, Series] = {}
    with rabbitmq(mode) as rabbit_url, EtcdServer() as etcd:
        grpc_url = f"grpc://{etcd.endpoint}/?bind_host=127.0.0.1"
        systems = ([("rabbit", rabbit_url)] if rabbit_url else []) + [("grpc", grpc_url)]
        for rep in range(args.reps):
            print(f"repetition {rep + 1}/{args.reps} ...", flush=True)
            for system, url in systems:  # interleaved, so drift hits both alike
                for key, value in run_one(url, env, args).items():
                    s.setdefault(f"{key}_{system}", Series()).values.append(value)
    print()
    rows = []
    for key, scenario, unit in (
        ("p50", "call sequential: p50", "ms"),
        ("seq", "call sequential: rate", "/s"),
        ("threads", f"call, {THREADS} client threads", "/s"),
        ("casts", f"cast, {THREADS} threads (consumed)", "/s"),
        ("fanout", f"fanout to {FANOUT_SERVERS} servers (all consumed)", "/s"),
        *((f"rate{n}", f"fanout to {n} servers (all consumed)", "/s") for n in args.wide),
        *((f"wide{n}", f"fanout reaches all {n} servers", "ms") for n in args.wide),
    ):
        ref = s.get(f"{key}_rabbit")
        if ref is not None:
            rows.append((scenario, "oslo rabbit://", ref, unit, None, unit == "ms"))
        if f"{key}_grpc" in s:
            rows.append((scenario, "oslo grpc://", s[f"{key}_grpc"], unit, ref, unit == "ms"))
    print_table(rows, section="oslo")
    record("oslo", "wide_fanout", {
        f"oslo {system}://": {str(n): s[f"wide{n}_{system}"].median for n in args.wide}
        for system in ("rabbit", "grpc") if all(f"wide{n}_{system}" in s for n in args.wide)})
    # Fanouts/s until every server consumed every one, by number of servers.
    record("oslo", "fanout_rate", {
        f"oslo {system}://": {str(n): s[key].median for n, key in (
            (FANOUT_SERVERS, f"fanout_{system}"), *((n, f"rate{n}_{system}") for n in args.wide))
            if key in s}
        for system in ("rabbit", "grpc")})


if __name__ == "__main__":
    main()

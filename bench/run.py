"""`make bench` (`python -m bench.run`): every benchmark, one table each, then the results as
JSON and a PNG in bench/results/.

`--smoke` runs each with tiny counts (the test suite does, to keep them working); smoke results
are not saved.
"""

from __future__ import annotations

import sys

from bench import (
    bench_core,
    bench_discovery,
    bench_fanout,
    bench_oslo,
    bench_security,
    bench_tracing,
    bench_typed,
    results,
)

SUITE = (
    ("grpcrpc vs raw grpcio", bench_core.main),
    ("fanout: client vs broadcasters", bench_fanout.main),
    ("tracing cost", bench_tracing.main),
    ("typed (protobuf) vs dict-style calls", bench_typed.main),
    ("security: TLS, mTLS, token vs plaintext", bench_security.main),
    ("discovery: etcd tables, watch delay, keepalives", bench_discovery.main),
    ("oslo.messaging API: grpc:// vs rabbit://", bench_oslo.main),
)


def main() -> None:
    args = sys.argv[1:]
    for i, (title, run) in enumerate(SUITE, 1):
        print(f"\n== [{i}/{len(SUITE)}] {title} ==", flush=True)
        # A smoke run never starts a broker: RabbitMQ is for the real comparison only.
        extra = ["--rabbitmq", "skip"] if run is bench_oslo.main and "--smoke" in args else []
        try:
            run([*args, *extra])
        except Exception as exc:  # one broken benchmark must not lose the others' results
            if "--smoke" in args:
                raise
            print(f"!! {title} failed: {type(exc).__name__}: {exc}", flush=True)
            results.record("failed", title, f"{type(exc).__name__}: {exc}")
    if "--smoke" in args:
        return
    path = results.save()
    png = results.plot(path)
    print(f"\nresults: {path}" + (f"\nplot:    {png}" if png else " (install the bench extra for the plot)"))


if __name__ == "__main__":
    main()

"""`make bench` (`python -m bench.run`): every benchmark, one table each.

`--smoke` runs each with tiny counts (the test suite does, to keep them working).
"""

from __future__ import annotations

import sys

from bench import bench_core, bench_fanout, bench_security, bench_tracing, bench_typed


def main() -> None:
    args = sys.argv[1:]
    print("== grpcrpc vs raw grpcio ==", flush=True)
    bench_core.main(args)
    print()
    print("== fanout: client vs broadcasters ==", flush=True)
    bench_fanout.main(args)
    print()
    print("== tracing cost ==", flush=True)
    bench_tracing.main(args)
    print()
    print("== typed (protobuf) vs dict-style calls ==", flush=True)
    bench_typed.main(args)
    print()
    print("== security: TLS, mTLS, token vs plaintext ==", flush=True)
    bench_security.main(args)


if __name__ == "__main__":
    main()

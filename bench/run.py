"""`make bench`: every benchmark, one table each. `--smoke` runs each with tiny counts."""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from bench import bench_core


def main() -> None:
    args = sys.argv[1:]
    print("== grpcrpc vs raw grpcio ==")
    bench_core.main(args)


if __name__ == "__main__":
    main()

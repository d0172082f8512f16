"""`grpcrpc version`."""

from __future__ import annotations

import argparse
from importlib.metadata import PackageNotFoundError, version


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    for dist in ("grpcrpc", "grpcio", "protobuf", "etcd-sdk-python", "opentelemetry-api"):
        try:
            print(f"{dist:20} {version(dist)}")
        except PackageNotFoundError:
            print(f"{dist:20} (not installed)")
    return 0

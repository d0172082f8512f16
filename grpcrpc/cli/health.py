"""`grpcrpc health ADDRESS`: a server's gRPC health status (exit 0 only when SERVING)."""

from __future__ import annotations

import argparse

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpcrpc.cli import CommandError
from grpcrpc.discovery.base import InvalidEndpoint, split_address


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("address", help="host:port of a grpcrpc server")
    parser.add_argument("--service", default="", help="service name (default: the whole server)")
    parser.add_argument("--timeout", type=float, default=5.0)


def run(args: argparse.Namespace) -> int:
    try:
        split_address(args.address)
    except InvalidEndpoint as exc:
        raise CommandError(str(exc)) from None
    with grpc.insecure_channel(args.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            resp = stub.Check(health_pb2.HealthCheckRequest(service=args.service),
                              timeout=args.timeout)
        except grpc.RpcError as exc:
            raise CommandError(f"{args.address}: {exc.code().name}: {exc.details()}") from None
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    print(f"{args.address} {status}")
    return 0 if resp.status == health_pb2.HealthCheckResponse.SERVING else 1

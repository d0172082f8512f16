"""`grpcrpc call|cast|fanout TOPIC METHOD --args JSON`: send one message from the shell."""

from __future__ import annotations

import argparse
import dataclasses
import json

from grpcrpc.cli import CommandError
from grpcrpc.cli._common import add_config_args, emit, load_config, parse_json_args, resolver
from grpcrpc.exceptions import GrpcrpcError
from grpcrpc.target import Target


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("topic")
    parser.add_argument("method")
    parser.add_argument("--args", default="{}", help="keyword arguments as a JSON object")
    parser.add_argument("--context", default="{}", help="request context as a JSON object")
    parser.add_argument("--server", help="send to this server only (not for fanout)")
    parser.add_argument("--exchange")
    parser.add_argument("--version", dest="api_version", help="API version the call needs")
    parser.add_argument("--target-az", help="send to this AZ (default: this client's)")
    parser.add_argument("--timeout", type=float, default=10.0)
    add_config_args(parser)


def run(args: argparse.Namespace) -> int:
    from grpcrpc.client import RPCClient

    kind = args.command
    if args.timeout <= 0:
        raise CommandError("--timeout must be positive")
    kwargs = parse_json_args(args.args)
    ctxt = parse_json_args(args.context)
    cfg = load_config(args)
    res = resolver(cfg, topics=None)
    target = Target(topic=args.topic, exchange=args.exchange, server=args.server,
                    version=args.api_version, az=args.target_az, fanout=kind == "fanout")
    try:
        with RPCClient(res, target, timeout=args.timeout, options=cfg.transport_options()) as c:
            if kind == "call":
                result = c.call(ctxt, args.method, **kwargs)
                print(json.dumps(result, indent=2 if args.output == "table" else None, default=str))
            elif kind == "cast":
                c.cast(ctxt, args.method, **kwargs)
                print("accepted")
            else:
                report = c.cast(ctxt, args.method, **kwargs)
                assert report is not None
                if args.output == "json":
                    print(json.dumps(dataclasses.asdict(report)))
                else:
                    print(f"delivered to {report.delivered} of {report.targets} server(s)")
                    emit(args, [dataclasses.asdict(f) for f in report.failures],
                         ["server", "address", "reason"]) if report.failures else None
                return 0 if report.ok else 1
    except GrpcrpcError as exc:
        raise CommandError(f"{type(exc).__name__}: {exc}") from None
    except Exception as exc:  # a remote exception re-raised as its own (builtin) type
        raise CommandError(f"the server raised {type(exc).__name__}: {exc}") from None
    finally:
        res.close()
    return 0

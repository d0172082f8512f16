"""`grpcrpc` — the operators' command line.

Each subcommand lives in its own module, imported only when it runs. A user error is printed as
`Error: ...` with a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

__all__ = ["CommandError", "main"]

# name -> (module, one-line help). Each module has `add_arguments(parser)` and `run(args)`.
COMMANDS: dict[str, tuple[str, str]] = {
    "endpoints": ("grpcrpc.cli.endpoints", "list what is registered (lease TTL left, version, age)"),
    "call": ("grpcrpc.cli.send", "call one server of a topic and print the result"),
    "cast": ("grpcrpc.cli.send", "cast to one server of a topic"),
    "fanout": ("grpcrpc.cli.send", "cast to every server of a topic and print the report"),
    "serve": ("grpcrpc.cli.serve", "run a small echo server (smoke tests, demos)"),
    "broadcaster": ("grpcrpc.cli.broadcaster", "run a fanout broadcaster for this AZ"),
    "health": ("grpcrpc.cli.health", "check a server's gRPC health status"),
    "doctor": ("grpcrpc.cli.doctor", "check etcd, leases, stale keys and endpoint health"),
    "version": ("grpcrpc.cli.version", "print the grpcrpc, grpcio and protobuf versions"),
}


class CommandError(Exception):
    """A user-facing failure: printed as `Error: <message>`, exit status 1."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="grpcrpc", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(COMMANDS[args.command][0])
    cmd_parser = argparse.ArgumentParser(prog=f"grpcrpc {args.command}",
                                         description=COMMANDS[args.command][1])
    module.add_arguments(cmd_parser)
    cmd_args = cmd_parser.parse_args(rest)
    cmd_args.command = args.command
    try:
        return int(module.run(cmd_args) or 0)
    except CommandError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # an operator sees a sentence, not a traceback (unless debugging)
        if os.environ.get("GRPCRPC_DEBUG"):
            raise
        print(f"Error: {type(exc).__name__}: {exc} (GRPCRPC_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

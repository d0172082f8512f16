"""`make demo`: grpcrpc end to end on one machine, as real processes.

Two availability zones, each with its own etcd; in each, a nova-scheduler, nova-computes and a
fanout broadcaster, every one a separate process registered in its AZ's etcd under a short
lease. The demo process plays nova-conductor: it calls `select_destinations`, casts
`build_and_run_instance` to the chosen compute, fans out `update_available_resource`, calls
across AZs; then it SIGKILLs a compute and shows calls routing around it, stops az1's etcd and
shows calls going on, and prints the trace of each operation across all the processes.

Modules: `run` (entry point and clean-up), `flow` (the steps), `cluster` (the processes),
`worker` (one server process), `services` (the Nova-shaped endpoints), `collector` (an
OTLP/gRPC trace collector and the trace trees), `console` (output and checks).

This module imports nothing heavy: each worker process imports the package too.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo (`--quick` for the CI-sized run); 0 when every step met its expectation."""
    from grpcrpc.demo.run import main as _main

    return _main(argv)

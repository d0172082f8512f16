"""`python -m grpcrpc.demo`: start everything, run the steps, print the traces, clean up.

Clean-up runs whatever happened — a failed step, an exception, Ctrl-C or SIGTERM: workers get
SIGTERM (they withdraw from etcd and flush their spans) and SIGKILL after a deadline, then the
etcds stop and their temp dirs go.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence

from grpcrpc.demo import faults
from grpcrpc.demo.cluster import Cluster
from grpcrpc.demo.collector import Collector, configure_conductor, user_endpoint
from grpcrpc.demo.console import Console, StepFailed, interrupts_as_keyboard_interrupt, no_interrupts
from grpcrpc.demo.flow import Demo, plan_for
from grpcrpc.exceptions import GrpcrpcError
from grpcrpc.testing.etcd import EtcdError

__all__ = ["main", "run"]


def run(*, quick: bool = False, verbose: bool = False, ttl: int = 3, console: Console | None = None) -> int:
    """Run the whole demo; 0 when every step met its expectation, 1 if not, 130 if interrupted.

    Tracing is installed in this process (OpenTelemetry allows one provider per process), so
    call it once per process: tests run it in a subprocess.
    """
    out = console or Console()
    started = time.monotonic()
    forward_to = user_endpoint()
    collector = Collector(forward_to=forward_to)
    cluster = Cluster(plan_for(quick, ttl), verbose=verbose)
    demo = Demo(out, cluster, collector, quick)
    provider = None
    stopped = killed = 0
    status = 1
    try:
        with interrupts_as_keyboard_interrupt():
            cluster.collector = collector.start()
            provider = configure_conductor(collector)
            demo.step_start()
            demo.step_endpoints()
            demo.step_build()
            demo.step_fanout()
            demo.step_cross_az()
            faults.crash_a_compute(demo)
            faults.etcd_outage(demo)
            demo.step_traces()
            status = 1 if out.failures else 0
    except KeyboardInterrupt:
        out.line("interrupted: stopping everything the demo started")
        status = 130
    except (StepFailed, GrpcrpcError, EtcdError) as exc:
        out.check(False, f"{type(exc).__name__}: {exc}")
    finally:
        with no_interrupts():
            demo.close()
            stopped, killed = cluster.close()
            if provider is not None:
                provider.shutdown()
            collector.stop()
    etcds = len(cluster.etcds)
    out.say(f"\ncleaned up: {stopped} server process(es) stopped"
            + (f" ({killed} killed after the deadline)" if killed else "")
            + f", {etcds} etcd(s) stopped and their data removed")
    if verbose:
        out.say(f"the workers' logs are in {cluster.workdir}")
    if forward_to and collector.forwarder is not None:
        out.say(f"spans also forwarded to {forward_to}: {collector.forwarder.sent} batches sent, "
                f"{collector.forwarder.failed} failed")
    took = time.monotonic() - started
    if status == 0:
        out.say(f"\ndone in {took:.1f} s: call, cast and fanout went straight from client to server, "
                f"around a crash and through an etcd outage, with no broker.")
    elif status == 1:
        out.say(f"\nFAILED after {took:.1f} s: " + "; ".join(out.failures))
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grpcrpc.demo",
                                     description="grpcrpc end to end: two AZs, each with its own etcd.")
    parser.add_argument("--quick", action="store_true",
                        help="the CI-sized run: fewer processes and calls")
    parser.add_argument("--verbose", action="store_true",
                        help="log at INFO (default: errors only) and keep the workers' logs")
    parser.add_argument("--ttl", type=int, default=3, help="lease TTL of every server, in seconds")
    args = parser.parse_args(argv)
    if args.ttl < 1:
        parser.error("--ttl must be at least 1")
    # Quiet by default: the demo stops an etcd on purpose, and the warnings grpcrpc logs then
    # are the demo's subject, printed as steps instead.
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return run(quick=args.quick, verbose=args.verbose, ttl=args.ttl)
